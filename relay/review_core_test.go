package relay

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// rcConnIn finds the one connection s holds in state st other than
// except (nil if none yet).
func rcConnIn(s *Server, st state, except *conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c != except && state(c.st.Load()) == st {
			return c
		}
	}
	return nil
}

// rcHeldAuth accepts every token: at once, except for a client named
// "held", whose answer waits for the test (answer).
type rcHeldAuth struct{ answer chan func(AuthResult) }

// Authenticate implements Authenticator.
func (h rcHeldAuth) Authenticate(_ context.Context, req AuthRequest, done func(AuthResult)) {
	if req.Name == "held" {
		h.answer <- done
		return
	}
	done(AuthNoError)
}

// A WebSocket client that breaks the protocol while its partner claims
// it is closed with the code its violation carries (1002), as it is at
// any other stage, not told that its partner left (1001 "Partner left"):
// the partner did not leave, and RFC 6455 has the endpoint that fails a
// connection for a protocol error say so.
func TestReviewWSProtocolErrorWhileClaimed(t *testing.T) {
	var aConn atomic.Pointer[conn]
	holding := make(chan struct{})
	auth := rcHeldAuth{answer: make(chan func(AuthResult), 1)}
	s := startServerWith(t, func(c *Config) { c.Auth, c.AloneTimeout = auth, time.Minute }, func(s *Server) {
		s.inputHook = func(p []byte) {
			if len(p) == 0 || p[0] != 0xC1 { // the bad frame: RSV1 set
				return
			}
			close(holding)
			// Hold A's bad frame (and A's lock) until B's answer has
			// claimed A: the frame is then read while A is claimed.
			deadline := time.Now().Add(testutil.Patience)
			for state(aConn.Load().st.Load()) != stClaimed && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	})
	a := dialRawWS(t, s)
	a.authenticate("rc-claimed-bad", "a")
	ac := rcConnIn(s, stWaiting, nil)
	if ac == nil {
		t.Fatal("A is not waiting")
	}
	aConn.Store(ac)
	b := dialRawWS(t, s)
	b.send(ws.OpText, true, []byte(`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"{9b0b0a7e-7c1d-4d7e-9a59-3f1c6a1f0b01}","name":"held","token":"rc-claimed-bad"}}`+"\n"))
	var done func(AuthResult)
	select {
	case done = <-auth.answer:
	case <-time.After(testutil.Patience):
		t.Fatal("B's Authenticate never reached the authenticator")
	}
	bad := maskedFrame(ws.OpText, true, []byte("x"))
	bad[0] |= 0x40 // RSV1: no extension was negotiated
	a.write(bad)
	select {
	case <-holding:
	case <-time.After(testutil.Patience):
		t.Fatal("the bad frame never reached the relay")
	}
	done(AuthNoError) // claims A, then waits for A's lock: the hook lets go once A is claimed
	res := a.expectClose(testutil.Patience, false)
	if res.code != ws.StatusProtocolError {
		t.Errorf("A, which sent a frame with RSV1 set, was closed with %d %q; want %d (protocol error)", res.code, res.reason, ws.StatusProtocolError)
	}
	b.expectClose(testutil.Patience, true)
	waitFor(t, func() bool { return s.liveConns() == 0 }, "both closes counted")
	if n := s.stats.closes[reason.WebSocket].Get(); n != 1 {
		t.Errorf("closes{websocket} = %d, want 1", n)
	}
}
