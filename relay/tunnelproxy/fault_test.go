package tunnelproxy

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/internal/strict"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
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
	s := containing(t)
	faults := func() float64 { return relaytest.Metric(t, s, `meetpoint_closes_total{reason="internal_fault"}`) }

	su, other := client.NewUUID(), client.NewUUID()
	cu, cu2 := client.NewUUID(), client.NewUUID()
	srv := registerServer(t, s, su, false)
	cli := registerClient(t, s, cu, su, true)
	cli2 := registerClient(t, s, cu2, su, false)
	srv.nextRPC() // ClientConnected
	srv.nextRPC()
	osrv := registerServer(t, s, other, true)
	ocli := registerClient(t, s, client.NewUUID(), other, false)
	osrv.nextRPC()

	hubOf(t, serviceOf(s), su, func(h *hub) {
		for _, c := range h.clients {
			c.sock = faultySock{c.sock}
		}
	})
	if err := cli2.sendRaw(ws.OpBinary, faultMark); err != nil { // raw TCP: the mark as sent (a WebSocket frame masks it)
		t.Fatal(err)
	}
	relaytest.WaitFor(t, func() bool { return faults() == 3 }, "the hub's server and both clients counted as internal_fault")
	for _, p := range []*tpConn{srv, cli, cli2} {
		waitClosed(t, p)
	}

	ocli.sendRaw(ws.OpBinary, []byte("after the fault"))
	if f, _ := osrv.next(); !bytes.Equal(f[2:], []byte("after the fault")) {
		t.Fatalf("the other hub's server got %q", f)
	}
	registerServer(t, s, su, false) // the faulted hub's uuids are free again
	registerClient(t, s, cu, su, false)
	registerClient(t, s, cu2, su, false)
}

// containing starts a TunnelProxy relay that contains its faults, as in
// production (the tests' relays are strict: relaytest).
func containing(t *testing.T) *relay.Server {
	strict.Faults.Store(false)
	t.Cleanup(func() { strict.Faults.Store(true) })
	s := server(t, nil)
	strict.Faults.Store(true)
	return s
}

// waitClosed waits, up to testutil.Patience, for the relay to close p.
func waitClosed(t *testing.T, p *tpConn) {
	t.Helper()
	relaytest.WaitFor(t, func() bool {
		select {
		case _, ok := <-p.msgs:
			return !ok
		default:
			return false
		}
	}, "the relay closed the socket")
}

// writePanicSock is a hub socket whose writes panic on mark.
type writePanicSock struct {
	loop.Sock
	mark []byte
}

func (s writePanicSock) Write(p []byte) (int, error) {
	if bytes.Contains(p, s.mark) {
		var short []byte
		_ = short[len(p)] // index out of range
	}
	return s.Sock.Write(p)
}

// TestTPFaultWhileDroppingAClient: a panic while a hub tells its server
// that a client left (a write to the server) ends the hub, and the client
// being dropped is not left half dropped: its uuid is free again and no
// socket of the hub stays open.
func TestTPFaultWhileDroppingAClient(t *testing.T) {
	s := containing(t)
	su, cu := client.NewUUID(), client.NewUUID()
	srv := registerServer(t, s, su, false)
	cli := registerClient(t, s, cu, su, false)
	srv.nextRPC() // ClientConnected
	hubOf(t, serviceOf(s), su, func(h *hub) {
		h.srv.sock = writePanicSock{h.srv.sock, []byte("ClientDisconnected")}
	})
	cli.c.Close() // the relay drops the client and tells the server: the write panics
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, s, `meetpoint_closes_total{reason="internal_fault"}`) >= 1
	}, "the hub faulted")
	waitClosed(t, srv)
	su2 := client.NewUUID()
	registerServer(t, s, su2, false)
	registerClient(t, s, cu, su2, false) // the dropped client's uuid is free again
	relaytest.WaitFor(t, func() bool { st := s.Stats(); return st.Accepted-st.ClosesTotal == 2 }, "only the new server and client open")
}

// injectFault panics on input carrying faultMark (Service.inputHook).
func injectFault(p []byte) {
	if bytes.Contains(p, faultMark) {
		var short []byte
		_ = short[len(p)] // index out of range
	}
}

// TestTPFaultOnHandOver: a panic on the bytes a server or a client sent
// behind its registration (read when its hub takes it over, in a Loop.Do
// closure) ends that hub, and the newcomer's socket and uuid with it: it
// is sent nothing, and the hub's gauges come back to 0.
func TestTPFaultOnHandOver(t *testing.T) {
	for _, who := range []string{"server", "client"} {
		t.Run(who, func(t *testing.T) {
			s := containing(t)
			serviceOf(s).inputHook = injectFault
			faults := func() float64 { return relaytest.Metric(t, s, `meetpoint_closes_total{reason="internal_fault"}`) }
			su, cu := client.NewUUID(), client.NewUUID()
			var p *tpConn
			if who == "server" {
				p = tpDial(t, s, false)
				req := `{"id":1,"method":"TunnelProxy.RegisterServer","params":{"serverName":"dev","serverUuid":"` + su + `"}}` + "\n"
				writeAll(t, p, append([]byte(req), handshake.AppendSLIP(nil, 1, faultMark)...))
			} else {
				registerServer(t, s, su, false)
				p = tpDial(t, s, false)
				req := `{"id":1,"method":"TunnelProxy.RegisterClient","params":{"clientName":"ui","clientUuid":"` + cu + `","serverUuid":"` + su + `"}}` + "\n"
				writeAll(t, p, append([]byte(req), faultMark...))
			}
			relaytest.WaitFor(t, func() bool { return faults() >= 1 }, "the hub faulted")
			_ = p.c.SetReadDeadline(time.Now().Add(relaytest.Patience))
			got, err := io.ReadAll(p.br) // to EOF or a reset: the newcomer's socket closed
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the newcomer's socket was not closed")
			}
			if len(got) > 0 { // its registration reply was queued, but a faulted hub's output is not trusted
				t.Errorf("the faulted newcomer was sent %q", got)
			}
			gauge := func(name string) float64 { return relaytest.Metric(t, s, name) }
			relaytest.WaitFor(t, func() bool {
				return gauge(`meetpoint_tunnelproxy_servers_active`) == 0 && gauge(`meetpoint_tunnelproxy_clients_active`) == 0
			}, "the hub's gauges back to 0")
			registerServer(t, s, su, false) // the uuids are free again
			registerClient(t, s, cu, su, false)
			relaytest.WaitFor(t, func() bool { st := s.Stats(); return st.Accepted-st.ClosesTotal == 2 }, "only the new server and client open")
		})
	}
}

// writeAll writes b to p's socket in one write.
func writeAll(t *testing.T, p *tpConn, b []byte) {
	t.Helper()
	if _, err := p.c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// TestTPFaultEndingMeshClients: a panic while a hub drops the clients a
// lost fleet node reached it through (EndMesh, a Loop.Do closure) and
// tells their server ends that hub alone, as on the event path: the
// client's uuid and the node's mesh count are given back, and no socket
// of the hub stays open.
func TestTPFaultEndingMeshClients(t *testing.T) {
	s := containing(t)
	su, cu := client.NewUUID(), client.NewUUID()
	srv := registerServer(t, s, su, false)
	registerClient(t, s, cu, su, false)
	srv.nextRPC() // ClientConnected
	svc := serviceOf(s)
	hubOf(t, svc, su, func(h *hub) { // the client stands for one that node "far" reached us through
		for _, c := range h.clients {
			c.node, c.meshed = "far", true
			svc.meshCount("far", 1)
		}
		h.srv.sock = writePanicSock{h.srv.sock, []byte("ClientDisconnected")}
	})
	if n := svc.EndMesh("far", reason.FarNodeLost, ""); n != 1 {
		t.Fatalf("EndMesh counted %d clients of node far, want 1", n)
	}
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, s, `meetpoint_closes_total{reason="internal_fault"}`) >= 1
	}, "the hub faulted")
	waitClosed(t, srv)
	relaytest.WaitFor(t, func() bool {
		peers := map[string]int{}
		svc.MeshPeers(peers)
		return peers["far"] == 0
	}, "node far's mesh count given back")
	su2 := client.NewUUID()
	registerServer(t, s, su2, false)
	registerClient(t, s, cu, su2, false) // the dropped client's uuid is free again
	relaytest.WaitFor(t, func() bool { st := s.Stats(); return st.Accepted-st.ClosesTotal == 2 }, "only the new server and client open")
}
