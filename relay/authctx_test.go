package relay

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// TestAuthCtx: the authenticator's context behaves as a WithDeadline one
// canceled at the answer, and makes no channel or timer unless asked.
func TestAuthCtx(t *testing.T) {
	t.Parallel()
	t.Run("answered at once", func(t *testing.T) {
		dl := time.Now().Add(time.Hour)
		a := &authCtx{deadline: dl}
		if d, ok := a.Deadline(); !ok || !d.Equal(dl) {
			t.Errorf("Deadline = %v, %v", d, ok)
		}
		if err := a.Err(); err != nil {
			t.Errorf("Err before the answer = %v", err)
		}
		a.finish()
		if err := a.Err(); err != context.Canceled {
			t.Errorf("Err after the answer = %v, want Canceled", err)
		}
		if a.real != nil {
			t.Error("a context was made though nobody asked for Done or Value")
		}
		select { // asked for after the answer: already closed
		case <-a.Done():
		default:
			t.Error("Done after the answer is open")
		}
	})
	t.Run("deadline", func(t *testing.T) {
		a := &authCtx{deadline: time.Now().Add(20 * time.Millisecond)}
		select {
		case <-a.Done():
		case <-time.After(testutil.Patience):
			t.Fatal("Done not closed at the deadline")
		}
		if err := a.Err(); err != context.DeadlineExceeded {
			t.Errorf("Err = %v, want DeadlineExceeded", err)
		}
		past := &authCtx{deadline: time.Now().Add(-time.Second)}
		if err := past.Err(); err != context.DeadlineExceeded {
			t.Errorf("Err past the deadline, no Done asked = %v", err)
		}
	})
	t.Run("Err does not change once set", func(t *testing.T) {
		late := &authCtx{deadline: time.Now().Add(-time.Millisecond)} // answered after the deadline
		errs := []error{late.Err()}
		late.finish()
		errs = append(errs, late.Err())
		<-late.Done()
		errs = append(errs, late.Err())
		for _, err := range errs {
			if err != context.DeadlineExceeded {
				t.Errorf("answered after the deadline: Err went %v", errs)
				break
			}
		}
		early := &authCtx{deadline: time.Now().Add(time.Second)} // answered before it
		early.finish()
		errs = []error{early.Err()}
		for time.Now().Before(early.deadline) { // past the deadline: what must not change Err
			time.Sleep(10 * time.Millisecond)
		}
		errs = append(errs, early.Err())
		<-early.Done()
		errs = append(errs, early.Err())
		for _, err := range errs {
			if err != context.Canceled {
				t.Errorf("answered before the deadline: Err went %v", errs)
				break
			}
		}
	})
	t.Run("children attach without goroutines", func(t *testing.T) {
		a := &authCtx{deadline: time.Now().Add(time.Hour)}
		before := runtime.NumGoroutine()
		var kids []context.Context
		for range 100 {
			k, cancel := context.WithTimeout(a, time.Hour)
			defer cancel()
			kids = append(kids, k)
		}
		ran := make(chan struct{})
		stop := context.AfterFunc(a, func() { close(ran) })
		defer stop()
		if n := runtime.NumGoroutine() - before; n >= 50 {
			t.Errorf("%d goroutines for 100 children", n)
		}
		a.finish()
		for _, k := range kids {
			select {
			case <-k.Done():
			case <-time.After(testutil.Patience):
				t.Fatal("a child outlived the answer")
			}
			if !errors.Is(k.Err(), context.Canceled) {
				t.Fatalf("child Err = %v", k.Err())
			}
		}
		select {
		case <-ran:
		case <-time.After(testutil.Patience):
			t.Fatal("AfterFunc did not run at the answer")
		}
	})
}

// ctxAuth reports the context each Authenticate got: "wait" waits for
// Done and answers AuthTimeout; every other token is valid at once.
type ctxAuth struct{ got chan error }

func (a ctxAuth) Authenticate(ctx context.Context, req AuthRequest, done func(AuthResult)) {
	if req.Token != "wait" {
		done(AuthNoError)
		a.got <- ctx.Err() // after the answer: canceled
		return
	}
	go func() {
		<-ctx.Done()
		a.got <- ctx.Err()
		done(AuthTimeout)
	}()
}

// TestAuthCtxThroughServer: a real server hands the authenticator a
// context with AuthTimeout's deadline, canceled once it has answered.
func TestAuthCtxThroughServer(t *testing.T) {
	t.Parallel()
	auth := ctxAuth{got: make(chan error, 1)}
	s := startServer(t, func(c *Config) {
		c.Auth = auth
		c.AuthTimeout = 200 * time.Millisecond
		c.RPCTimeout = time.Hour
	})
	for _, tc := range []struct {
		token, res string
		err        error
	}{
		{"ok", "AuthenticationErrorNoError", context.Canceled},
		{"wait", "AuthenticationErrorTimeout", context.DeadlineExceeded},
	} {
		r := dialRPC(t, "tcp://"+serverAddr(s))
		if res := authenticateRPC(t, r, authParams(tc.token, "", client.NewUUID(), "n")); res != tc.res {
			t.Errorf("%s: got %s, want %s", tc.token, res, tc.res)
		}
		select {
		case err := <-auth.got:
			if err != tc.err {
				t.Errorf("%s: ctx.Err() = %v, want %v", tc.token, err, tc.err)
			}
		case <-time.After(testutil.Patience):
			t.Fatalf("%s: the authenticator did not report", tc.token)
		}
		r.Close()
	}
}
