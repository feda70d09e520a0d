package relay

// containAuth beyond TestFaultInAnAuthenticator: a URL token, a
// subsystem's Conn.Authenticate (JSON-RPC and URL subscription), the
// auth context after a fault, a panic that comes after the connection
// has already ended, strict mode, and a panic under done.

import (
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// hookAuth is a Stateless authenticator whose Authenticate is f.
type hookAuth struct {
	f func(ctx context.Context, r AuthRequest, done func(AuthResult))
}

func (hookAuth) Stateless() {}

func (a hookAuth) Authenticate(ctx context.Context, r AuthRequest, done func(AuthResult)) {
	a.f(ctx, r, done)
}

// authFaultServer is a relay with the barriers on, as in production,
// whose authenticator is panickyAuth unless mutate says otherwise.
func authFaultServer(t *testing.T, logs io.Writer, mutate func(*Config), before func(*Server)) *Server {
	return startServerWith(t, func(c *Config) {
		c.Auth = panickyAuth{}
		c.Logger = faultLogger(t, logs)
		if mutate != nil {
			mutate(c)
		}
	}, func(s *Server) {
		s.faultsFatal = false
		if before != nil {
			before(s)
		}
	})
}

// expectOnlyFault waits until every socket of s is gone and checks that
// the one close was counted as internal_fault alone, and no
// authentication as answered.
func expectOnlyFault(t *testing.T, s *Server, faults uint64) {
	t.Helper()
	waitFor(t, func() bool { return s.stats.closes[reason.Fault].Get() == faults }, "the fault counted as internal_fault")
	waitFor(t, func() bool { return s.live.count() == 0 }, "every socket closed")
	var total uint64
	for r, c := range s.stats.closes {
		if n := c.Get(); n != 0 && reason.Reason(r) != reason.Fault {
			t.Errorf("also counted as %v: %d", reason.Reason(r), n)
		}
		total += c.Get()
	}
	if total != faults {
		t.Errorf("%d closes counted, want %d", total, faults)
	}
	if n := s.stats.authOK.Get() + s.stats.authFail.Get() + s.stats.authTimeout.Get(); n != 0 {
		t.Errorf("%d authentications counted as answered", n)
	}
	if n := s.reg.Len(); n != 0 {
		t.Errorf("the registry holds %d keys", n)
	}
	if n := s.stats.connsTCP.Get() + s.stats.connsWS.Get(); n != 0 {
		t.Errorf("%d connections still counted active", n)
	}
}

// expectSilentClose reads c to its end: closed, having been sent nothing
// (a faulted connection sends nothing more); who names it in failures.
func expectSilentClose(t *testing.T, c io.Reader, who string) {
	t.Helper()
	got, err := io.ReadAll(c)
	if err != nil && !isClosed(err) {
		t.Fatalf("%s: not closed: %v", who, err)
	}
	if len(got) > 0 {
		t.Errorf("%s was sent %q", who, got)
	}
}

// expectNoAnswer waits for r's answer: there must be none, only the
// close; who names it in failures.
func expectNoAnswer(t *testing.T, r *client.Raw, who string) {
	t.Helper()
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
	if p, err := r.Recv(); err == nil {
		t.Fatalf("%s got an answer: %s", who, p)
	} else if !isClosed(err) {
		t.Fatalf("%s: not closed: %v", who, err)
	}
}

// TestAuthFaultURLToken: a token in the WebSocket URL whose
// authenticator panics: the connection ends as internal_fault, and the
// client is sent nothing (no 101, no HTTP error: a faulted connection
// sends nothing more, as under feed's barrier), only the close.
func TestAuthFaultURLToken(t *testing.T) {
	logs := &testutil.Tail{}
	s := authFaultServer(t, logs, nil, nil)
	c := dialTCP(t, s)
	writeRaw(c, []byte("GET /?token=secret-fault-me&uuid=u&name=n HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
	expectSilentClose(t, c, "the faulted client")
	expectOnlyFault(t, s, 1)
	if !strings.Contains(logs.String(), "the authenticator panicked") {
		t.Errorf("no fault log:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "secret-fault-me") {
		t.Error("the log holds the token")
	}
	expectServes(t, s)
}

// TestAuthFaultSubsystem: a subsystem's Conn.Authenticate (a
// JSON-RPC method, and a URL subscription) whose Stateless authenticator
// panics: the connection ends as internal_fault, then is never called, the
// subsystem's onEnd is not either (it never subscribed), and nothing is
// left behind.
func TestAuthFaultSubsystem(t *testing.T) {
	logs := &testutil.Tail{}
	var thens atomic.Int32
	then := func(c Conn, r AuthResult) {
		thens.Add(1)
		c.Subscribe(nil)
	}
	s := authFaultServer(t, logs, nil, func(s *Server) {
		s.HandleMethod("TunnelProxy.Ping", func(c Conn, req *handshake.Request) {
			c.Authenticate(req.ID, "secret-fault-me", then)
		})
		s.HandleURLSubscribe(func(c Conn, token string, _ []string) {
			c.Authenticate(-1, token, then)
		})
	})

	r := dialRPC(t, tcpURL(s))
	sendRPC(t, r, `{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":5}}`)
	expectNoAnswer(t, r, "the faulted client")
	expectOnlyFault(t, s, 1)

	c := dialTCP(t, s)
	writeRaw(c, []byte("GET /?token=secret-fault-me&channels=a,b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
	expectSilentClose(t, c, "the faulted URL subscriber")
	expectOnlyFault(t, s, 2)
	if n := thens.Load(); n != 0 {
		t.Errorf("then ran %d times after the authenticator panicked", n)
	}
	if n := strings.Count(logs.String(), "the authenticator panicked"); n != 2 {
		t.Errorf("%d fault logs, want 2:\n%s", n, logs.String())
	}
	expectServes(t, s)
}

// TestAuthFaultFinishesContext: the context an authenticator got is
// canceled once its panic has ended the connection (containAuth's
// ctx.finish), not left to run to the AuthTimeout deadline.
func TestAuthFaultFinishesContext(t *testing.T) {
	var got atomic.Pointer[context.Context]
	s := authFaultServer(t, io.Discard, func(c *Config) {
		c.AuthTimeout = time.Hour
		c.Auth = hookAuth{func(ctx context.Context, r AuthRequest, done func(AuthResult)) {
			_ = ctx.Done() // makes the real context (and its timer)
			got.Store(&ctx)
			injectFault([]byte(r.Token))
			done(AuthNoError)
		}}
	}, nil)
	r := dialRPC(t, tcpURL(s))
	sendRPC(t, r, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"fault-me"}}`)
	expectOnlyFault(t, s, 1)
	ctx := *got.Load()
	select {
	case <-ctx.Done():
		if ctx.Err() != context.Canceled {
			t.Errorf("ctx.Err() = %v, want Canceled", ctx.Err())
		}
	case <-time.After(testutil.Patience):
		t.Error("the faulted authenticator's context is still live (its deadline timer too)")
	}
}

// TestAuthFaultAfterTimeoutIsLogged: a Stateless authenticator that
// panics after the connection's AuthTimeout fired (the stage timer ended
// it meanwhile, on another goroutine): the connection is counted as the
// timeout that ended it, and the authenticator's bug is still logged.
// The short AuthTimeout is this test's own server's, and reached.
func TestAuthFaultAfterTimeoutIsLogged(t *testing.T) {
	logs := &testutil.Tail{}
	var s *Server
	s = authFaultServer(t, logs, func(c *Config) {
		c.AuthTimeout = 200 * time.Millisecond
		c.Auth = hookAuth{func(ctx context.Context, r AuthRequest, done func(AuthResult)) {
			deadline := time.Now().Add(testutil.Patience)
			for s.stats.authTimeout.Get() == 0 && time.Now().Before(deadline) { // a slow token check
				time.Sleep(10 * time.Millisecond)
			}
			injectFault([]byte(r.Token))
			done(AuthNoError)
		}}
	}, nil)
	r := dialRPC(t, tcpURL(s))
	sendRPC(t, r, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"fault-me"}}`)
	waitFor(t, func() bool { return s.stats.authTimeout.Get() == 1 }, "the auth timeout")
	waitFor(t, func() bool { return s.live.count() == 0 }, "every socket closed")
	waitFor(t, func() bool { return strings.Contains(logs.String(), "after the connection had left authentication") },
		"the authenticator's panic logged")
	if n := s.stats.closes[reason.Fault].Get(); n != 0 {
		t.Errorf("%d closes counted as internal_fault for a connection its timeout ended", n)
	}
	expectServes(t, s)
}

// TestAuthFaultStrictRaises: under the package's tests (strict
// mode, faultsFatal) containAuth raises a Stateless authenticator's panic
// again, so that no test passes over a contained bug. In process: the
// connection is driven by readFrom, as FuzzConnInput does, and the panic
// comes out of it (startAuth runs after feed's barrier).
func TestAuthFaultStrictRaises(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Auth = panickyAuth{}
	cfg.Logger = testutil.Logger(t)
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !s.faultsFatal {
		t.Fatal("strict mode is off in the package's tests")
	}
	c, tk := idleConn(s)
	defer func() {
		c.mu.Lock()
		c.close(reason.Shutdown)
		c.stopTimer()
		c.mu.Unlock()
		s.unregister(c)
		tk.End(reason.Shutdown)
	}()
	sk := &chunks{data: []byte(`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"fault-me"}}` + "\n")}
	var dropped, unread bool
	v := func() (v any) {
		defer func() { v = recover() }()
		c.readFrom(sk, make([]byte, 16<<10), &dropped, false, &unread)
		return nil
	}()
	if v == nil {
		t.Fatal("a Stateless authenticator's panic was contained under strict mode")
	}
}

// TestAuthPanicUnderDoneIsRaised: a panic under done (here the
// access policy, run by authResult with the connection's mu held) is
// raised again by containAuth, not contained: containAuth would take mu,
// which the panic left held, and hang the loop goroutine. In process,
// strict mode off, on the test's goroutine (readFrom, as FuzzConnInput
// drives it), so that a hang is seen as one.
func TestAuthPanicUnderDoneIsRaised(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Auth = panickyAuth{}
	cfg.Access = panickyAccess{}
	cfg.Logger = testutil.Logger(t)
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.faultsFatal = false
	c, _ := idleConn(s)
	sk := &chunks{data: []byte(`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"good"}}` + "\n")}
	res := make(chan any, 1)
	go func() {
		defer func() { res <- recover() }()
		var dropped, unread bool
		c.readFrom(sk, make([]byte, 16<<10), &dropped, false, &unread)
	}()
	select {
	case v := <-res:
		if v == nil {
			t.Fatal("the policy's panic under done was contained")
		}
	case <-time.After(testutil.Patience):
		t.Fatal("hung: containAuth took a panic from under done and waits for the mu it left held")
	}
	c.stopTimer() // mu stays held by the panicked authResult: nothing else to release
}
