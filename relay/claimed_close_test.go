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

// rcWhileClaimed has a WebSocket client A, waiting, send frame (whose
// first byte marks it) once its partner's Authenticate is being answered,
// and has the relay read it only after that answer claimed A: the frame
// arrives while A is claimed. It returns A and its server.
func rcWhileClaimed(t *testing.T, token string, frame []byte) (*rawWS, *rawWS, *Server) {
	var aConn atomic.Pointer[conn]
	holding := make(chan struct{})
	auth := rcHeldAuth{answer: make(chan func(AuthResult), 1)}
	s := startServerWith(t, func(c *Config) { c.Auth, c.AloneTimeout = auth, time.Minute }, func(s *Server) {
		s.inputHook = func(p []byte) {
			if len(p) == 0 || p[0] != frame[0] {
				return
			}
			close(holding)
			// Hold A's frame (and A's lock) until B's answer has
			// claimed A: the frame is then read while A is claimed.
			deadline := time.Now().Add(testutil.Patience)
			for state(aConn.Load().st.Load()) != stClaimed && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	})
	a := dialRawWS(t, s)
	a.authenticate(token, "a")
	ac := rcConnIn(s, stWaiting, nil)
	if ac == nil {
		t.Fatal("A is not waiting")
	}
	aConn.Store(ac)
	b := dialRawWS(t, s)
	b.send(ws.OpText, true, []byte(`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"{9b0b0a7e-7c1d-4d7e-9a59-3f1c6a1f0b01}","name":"held","token":"`+token+`"}}`+"\n"))
	var done func(AuthResult)
	select {
	case done = <-auth.answer:
	case <-time.After(testutil.Patience):
		t.Fatal("B's Authenticate never reached the authenticator")
	}
	a.write(frame)
	select {
	case <-holding:
	case <-time.After(testutil.Patience):
		t.Fatal("A's frame never reached the relay")
	}
	done(AuthNoError) // claims A, then waits for A's lock: the hook lets go once A is claimed
	return a, b, s
}

// A WebSocket client that breaks the protocol while its partner claims
// it is closed with the code its violation carries (1002), as it is at
// any other stage, not told that its partner left (1001 "Partner left"):
// the partner did not leave, and RFC 6455 has the endpoint that fails a
// connection for a protocol error say so.
func TestWSProtocolErrorWhileClaimed(t *testing.T) {
	bad := maskedFrame(ws.OpText, true, []byte("x"))
	bad[0] |= 0x40 // RSV1: no extension was negotiated
	a, b, s := rcWhileClaimed(t, "rc-claimed-bad", bad)
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

// A WebSocket client that sends its close frame while its partner claims
// it gets the close frame's reply, as at every other stage (RFC 6455: the
// endpoint answers a close frame with one), not a bare end of the
// connection, which a browser reports as an unclean close (1006).
func TestWSCloseWhileClaimed(t *testing.T) {
	a, b, s := rcWhileClaimed(t, "rc-claimed-close", maskedFrame(ws.OpClose, true, closePayload(1000, "bye")))
	res := a.expectClose(testutil.Patience, true)
	if !res.frame {
		t.Errorf("A sent its close frame while being claimed and got no close frame back")
	}
	b.expectClose(testutil.Patience, true)
	waitFor(t, func() bool { return s.liveConns() == 0 }, "both closes counted")
	if n := s.stats.closes[reason.PeerClosed].Get(); n != 1 {
		t.Errorf("closes{peer_closed} = %d, want 1", n)
	}
}
