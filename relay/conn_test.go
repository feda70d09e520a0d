package relay

import (
	"bufio"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay/reason"
)

// TestSuccessorTable: the moves the connection makes without its lock
// (out of stWaiting) are in the table, claimed and done are final, every
// state with a stage timeout can be left, and a move the table does not
// list panics under the tests (strictMoves).
func TestSuccessorTable(t *testing.T) {
	for _, next := range []state{stClaimed, stClosing, stPlacing} {
		if !canMove(stWaiting, next) {
			t.Errorf("waiting → %v: a CAS makes this move, the table does not list it", next)
		}
	}
	for _, st := range []state{stClaimed, stDone} {
		if moves[st] != 0 {
			t.Errorf("%v is final, but the table lets it move", st)
		}
	}
	for st := range stageTimeouts {
		if len(stageTimeouts[st]) > 0 && !canMove(state(st), stClosing) {
			t.Errorf("%v has a stage timeout but cannot move to closing", state(st))
		}
	}
	if len(stateNames) != int(stDone)+1 || len(moves) != int(stDone)+1 {
		t.Fatalf("%d names, %d rows for %d states", len(stateNames), len(moves), stDone+1)
	}
	s := startServer(t, nil)
	c := &conn{s: s}
	c.st.Store(uint32(stDone))
	defer func() {
		if p := recover(); p == nil || !strings.Contains(p.(string), "done to rpc") {
			t.Errorf("done → rpc: recovered %v, want a panic naming the move", p)
		}
	}()
	c.to(stRPC)
}

// TestStageTimeoutMovesTimerEarlier: the timer is left alone while a
// stage's timeout falls due after the one it is set for (arm), but one
// falling due before it moves it earlier: a client waiting alone after a
// ten-minute handshake timeout is closed when its 300 ms alone timeout
// falls due.
func TestStageTimeoutMovesTimerEarlier(t *testing.T) {
	const alone = 300 * time.Millisecond
	s := startServer(t, func(c *Config) {
		c.HandshakeTimeout, c.InactiveTimeout = 10*time.Minute, 10*time.Minute
		c.AloneTimeout = alone
	})
	start := time.Now()
	r := dialWaiting(t, tcpURL(s), "moves-earlier", "", "", "alone")
	expectAlone(t, r, start, alone)
}

// TestStageTimeoutsShareOneTimer: a connection's stage timeouts share one
// timer, armed again as it moves. The handshake timeout stops applying
// once the client speaks JSON-RPC (the timer set for it finds nothing due
// and is armed for the next), and the inactive timeout then ends the
// connection — not before it falls due.
func TestStageTimeoutsShareOneTimer(t *testing.T) {
	const inactive = 800 * time.Millisecond
	s := startServer(t, func(c *Config) {
		c.HandshakeTimeout = 50 * time.Millisecond
		c.InactiveTimeout = inactive
	})
	start := time.Now()
	nc := dialTCP(t, s)
	if _, err := io.WriteString(nc, `{"id":1,"method":"RemoteProxy.Hello"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	if line := readLine(t, br); !strings.Contains(line, `"status":"success"`) {
		t.Fatalf("Hello: %q", line)
	}
	if _, err := io.Copy(io.Discard, br); err != nil { // until the relay closes
		t.Fatalf("waiting for the inactive timeout: %v", err)
	}
	if d := time.Since(start); d < inactive {
		t.Errorf("closed after %v, before the inactive timeout (%v)", d, inactive)
	} else {
		t.Logf("closed after %v", d)
	}
	waitFor(t, func() bool { return s.stats.closes[reason.InactiveTimeout].Get() == 1 }, "one inactive_timeout close")
	if n := s.stats.closes[reason.HandshakeTimeout].Get(); n != 0 {
		t.Errorf("%d handshake_timeout closes of a connection past its handshake", n)
	}
}

// claimsNothing is the completing side of a pairing in
// TestGoodbyeNotClaimedAway: a Joiner that is never waiting itself.
type claimsNothing struct{}

func (claimsNothing) Claim() bool  { return false }
func (claimsNothing) UUID() string { return "partner" }

// TestGoodbyeNotClaimedAway: a waiting raw-TCP client the relay ends (its
// alone timeout, data before the tunnel, shutdown) is told why once. Its
// partner claims it without its lock (a CAS, in the registry), so fail
// takes it out of the registry before it writes the RemoteProxy.Closing
// notification: either the relay ends it, and the notification is its
// goodbye, or the partner claimed it first, and its target (the tunnel,
// which abandons the set-up) says goodbye. fail used to queue the
// notification while the client was still claimable, and a partner that
// claimed it in between left the claimed connection carrying it: the
// target then sent a second one, with another message ("Partner left"
// after "No partner arrived"). The race is a CAS wide; it is run until a
// partner has won it many times.
func TestGoodbyeNotClaimedAway(t *testing.T) {
	s := startServer(t, nil)
	key := PairKey{Token: "goodbye-race"}
	claimed := 0
	for deadline := time.Now().Add(3 * time.Second); claimed < 200 && time.Now().Before(deadline); {
		c := &conn{s: s}
		c.au = &authRole{uuid: "waiting", key: key, joined: time.Now()}
		c.st.Store(uint32(stWaiting))
		if res, _ := s.reg.Join(key, c); res != JoinWaiting {
			t.Fatalf("the waiting client joined as %v", res)
		}
		var start atomic.Bool
		done := make(chan struct{})
		go func() {
			defer close(done)
			for !start.Load() {
			}
			s.reg.Join(key, claimsNothing{}) // claims c if it still waits
		}()
		c.mu.Lock()
		start.Store(true)
		c.fail(reason.AloneTimeout, "No partner arrived")
		c.mu.Unlock()
		<-done
		s.reg.Leave(key, claimsNothing{})
		if state(c.st.Load()) != stClaimed {
			continue
		}
		claimed++
		if c.out.Len() > 0 {
			t.Fatalf("claimed by its partner, the client still carries the relay's goodbye, which its target adds its own to: %q", c.out.B)
		}
	}
	t.Logf("a partner claimed the client %d times", claimed)
}
