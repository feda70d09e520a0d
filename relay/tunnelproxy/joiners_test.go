package tunnelproxy

import (
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestTPDepartedJoinersForgotten: clients that register while their
// server's backlog is at serverHigh wait in the hub's joiners, and one
// that leaves meanwhile is dropped; the hub must not keep it (its name of
// up to 10 KiB, what it sent) until the server reads again. A server that
// reads a trickle is never timed out, so clients registering and leaving
// grew the list without bound.
func TestTPDepartedJoinersForgotten(t *testing.T) {
	const churn = 64
	s := server(t, nil, func(c *Config) { c.WriteStallTimeout = time.Minute })
	svc := serviceOf(s)
	su := client.NewUUID()
	srv := tpDial(t, s, false) // registered by hand: it does not read
	if e := tpErr(srv.call("TunnelProxy.RegisterServer", map[string]any{"serverName": "dev", "serverUuid": su})); e != "TunnelProxyErrorNoError" {
		t.Fatal(e)
	}
	var pending, joiners, clients int
	look := func() {
		hubOf(t, svc, su, func(h *hub) {
			pending, joiners, clients = h.srv.pending(), len(h.joiners), int(h.nclients.Load())
		})
	}
	cl := registerClient(t, s, client.NewUUID(), su, false)
	go func() {
		b := make([]byte, 64<<10)
		for cl.sendRaw(ws.OpBinary, b) == nil {
		}
	}()
	relaytest.WaitFor(t, func() bool { look(); return pending >= serverHigh }, "the server's backlog at serverHigh")
	for range churn {
		c := tpDial(t, s, false)
		if e := tpErr(c.call("TunnelProxy.RegisterClient", map[string]any{"clientName": "c", "clientUuid": client.NewUUID(), "serverUuid": su})); e != "TunnelProxyErrorNoError" {
			t.Fatal(e)
		}
		c.c.Close()
	}
	relaytest.WaitFor(t, func() bool { look(); return clients == 1 }, "the clients that left dropped")
	if joiners > 1 {
		t.Fatalf("the hub keeps %d joiners after they all left", joiners)
	}
}
