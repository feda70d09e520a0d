package tunnelproxy

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/internal/strict"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// faultMark is the input faultySock panics on.
var faultMark = []byte("fault-me")

// faultySock is a hub socket whose reads panic on faultMark: a stand-in
// for a bug in the hub's framing or bookkeeping.
type faultySock struct{ loop.Sock }

func (s faultySock) Read(p []byte) (int, error) {
	n, err := s.Sock.Read(p)
	if n > 0 && bytes.Contains(p[:n], faultMark) {
		var short []byte
		_ = short[n] // index out of range
	}
	return n, err
}

// TestTPFaultEndsTheHub: a panic in a hub ends that hub alone — its server
// and every client closed, each counted as internal_fault, the server's
// uuid free again — while another hub on the relay forwards on.
func TestTPFaultEndsTheHub(t *testing.T) {
	strict.Faults.Store(false) // this relay contains its faults, as in production
	s := server(t, nil)
	strict.Faults.Store(true)
	faults := func() float64 { return relaytest.Metric(t, s, `meetpoint_closes_total{reason="internal_fault"}`) }

	su, other := client.NewUUID(), client.NewUUID()
	srv := registerServer(t, s, su, false)
	cli := registerClient(t, s, client.NewUUID(), su, true)
	cli2 := registerClient(t, s, client.NewUUID(), su, false)
	srv.nextRPC() // ClientConnected
	srv.nextRPC()
	osrv := registerServer(t, s, other, true)
	ocli := registerClient(t, s, client.NewUUID(), other, false)
	osrv.nextRPC()

	svc := serviceOf(s)
	svc.reg.mu.Lock()
	h := svc.reg.hubs[su]
	svc.reg.mu.Unlock()
	done := make(chan struct{})
	h.l.Do(func() {
		for _, c := range h.clients {
			c.sock = faultySock{c.sock}
		}
		close(done)
	})
	<-done
	if err := cli2.sendRaw(ws.OpBinary, faultMark); err != nil { // raw TCP: the mark as sent (a WebSocket frame masks it)
		t.Fatal(err)
	}
	relaytest.WaitFor(t, func() bool { return faults() == 3 }, "the hub's server and both clients counted as internal_fault")
	for _, p := range []*tpConn{srv, cli, cli2} {
		if !p.closedSoon() {
			t.Fatal("a faulted hub's socket stayed open")
		}
	}

	ocli.sendRaw(ws.OpBinary, []byte("after the fault"))
	if f, _ := osrv.next(); !bytes.Equal(f[2:], []byte("after the fault")) {
		t.Fatalf("the other hub's server got %q", f)
	}
	registerServer(t, s, su, false) // the faulted hub's uuid is free again
}
