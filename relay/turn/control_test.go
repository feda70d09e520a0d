package turn

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// bindingRequest is a STUN Binding request (RFC 8489): what a client's
// first message on a TURN control connection may be.
var bindingRequest = []byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

// closedByRelay waits (up to a generous bound) for the relay to close c:
// its read ends with EOF or a reset, not the deadline.
func closedByRelay(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, err := c.Read(make([]byte, 512))
		switch {
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("%s: still open after 30 s (the relay closes one without an allocation after allocateWithin)", what)
		}
		return
	}
}

// TestTURNIdleControlConnectionsClosed: a TURN control connection over
// TCP that holds no allocation is closed after allocateWithin and
// counted — one that never allocated (a STUN binding, then silence), one
// that sent half a message and stalled, one whose allocation was deleted
// — while one that holds an allocation, and an RFC 6062 data connection,
// stay open. pion serves a handed-over connection until its client
// closes it, so each held a goroutine and a descriptor for good.
func TestTURNIdleControlConnectionsClosed(t *testing.T) {
	s, srv := start(t, Config{RelayIP: net.ParseIP("127.0.0.9"), TCPAllocations: true, AllowPeers: loopbackPeers, allocateWithin: 500 * time.Millisecond})
	addr := relaytest.Addr(srv)
	user, pass := Credentials(secret, "alice", time.Minute, time.Now())

	// A control connection with a UDP allocation.
	tcA, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tcA.Close()
	a := newStreamClient(t, addr, tcA, user, pass)
	relayed, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer relayed.Close()

	// A TCP allocation's data connection to an echo peer.
	ln := echoPeer(t)
	d, err := tcpClient(t, s, addr, user, pass).Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	echo := func(msg string) {
		t.Helper()
		if _, err := d.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = d.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(d, got); err != nil || string(got) != msg {
			t.Fatalf("the echo through the data connection: %q, %v", got, err)
		}
	}
	echo("before")

	// A connection that never allocates: a STUN binding, answered, then
	// silence.
	bare, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	if _, err := bare.Write(bindingRequest); err != nil {
		t.Fatal(err)
	}
	_ = bare.SetReadDeadline(time.Now().Add(10 * time.Second))
	head := make([]byte, 20)
	if _, err := io.ReadFull(bare, head); err != nil || head[0] != 0x01 || head[1] != 0x01 {
		t.Fatalf("the binding response: % x, %v", head, err)
	}
	closedByRelay(t, bare, "a connection that never allocated")

	// Half a message, then a stall (opened after the first was closed: by
	// its close, everything above is older than allocateWithin).
	half, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	if _, err := half.Write(bindingRequest[:12]); err != nil {
		t.Fatal(err)
	}
	closedByRelay(t, half, "a connection that sent half a message")
	if n := relaytest.Metric(t, srv, `meetpoint_turn_closed_total{reason="no_allocation"}`); n != 2 {
		t.Errorf("closes for no allocation counted %v, want 2", n)
	}

	// Held allocations keep their connections, data connections stay.
	if _, err := a.SendBindingRequest(); err != nil {
		t.Errorf("a binding on the connection holding an allocation: %v", err)
	}
	echo("after")
	if n := relaytest.Metric(t, srv, `meetpoint_turn_closed_total{reason="allocation_ended"}`); n != 0 {
		t.Errorf("closes for an ended allocation counted %v, want 0", n)
	}

	relayed.Close() // a Refresh with lifetime 0: the allocation is deleted
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, srv, `meetpoint_turn_closed_total{reason="allocation_ended"}`) == 1
	}, "the connection whose allocation was deleted closed")
	closedByRelay(t, tcA, "the connection whose allocation was deleted")
}
