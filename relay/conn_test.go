package relay

import (
	"bufio"
	"io"
	"strings"
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
