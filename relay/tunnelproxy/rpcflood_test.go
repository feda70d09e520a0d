package tunnelproxy

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestTPServerRPCRepliesBounded: a registered server that sends requests
// on address 0 and does not read the replies must not make the relay hold
// more than the server's budget (serverHigh, plus a control queue's
// worth). One read of RemoteProxy.Introspect requests (about 45 bytes
// each, each answered with kilobytes) queued megabytes; now the server
// is closed as a slow reader once its replies pass the budget.
func TestTPServerRPCRepliesBounded(t *testing.T) {
	s := server(t, nil, func(c *Config) { c.WriteStallTimeout = time.Minute })
	svc := serviceOf(s)
	su := client.NewUUID()
	srv := tpDial(t, s, false)
	if e := tpErr(srv.call("TunnelProxy.RegisterServer", map[string]any{"serverName": "dev", "serverUuid": su})); e != "TunnelProxyErrorNoError" {
		t.Fatal(e)
	}
	pending := func() (n int) {
		n = -1
		svc.reg.mu.Lock()
		h := svc.reg.hubs[su]
		svc.reg.mu.Unlock()
		if h == nil {
			return n
		}
		done := make(chan struct{})
		if h.l.Do(func() {
			if h.started && !h.dead {
				n = h.srv.pending()
			}
			close(done)
		}) {
			<-done
		}
		return n
	}
	// A client fills the server's backlog: the relay stops reading the
	// server, whose requests then wait in the kernel.
	cl := registerClient(t, s, client.NewUUID(), su, false)
	go func() {
		b := make([]byte, 64<<10)
		for cl.sendRaw(ws.OpBinary, b) == nil {
		}
	}()
	relaytest.WaitFor(t, func() bool { return pending() >= serverHigh }, "the server's backlog at serverHigh")
	var reqs []byte
	for i := 0; len(reqs) < 60<<10; i++ {
		reqs = handshake.AppendSLIP(reqs, 0, fmt.Appendf(nil, `{"id":%d,"method":"RemoteProxy.Introspect"}`+"\n", i))
	}
	before := s.Stats().Closes["slow_reader"]
	if _, err := srv.c.Write(reqs); err != nil {
		t.Fatal(err)
	}
	// The server reads a little at a time until the relay reads its
	// requests (then it reads no more).
	budget := serverHigh + handshake.QueueMax
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(relaytest.Patience)
	for time.Now().Before(deadline) {
		if n := pending(); n > budget {
			t.Fatalf("the relay holds %d bytes for a server that does not read them (budget %d)", n, budget)
		} else if n < 0 {
			break // closed
		}
		_ = srv.c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := srv.c.Read(buf); err != nil && !isTimeout(err) {
			break // closed
		}
	}
	relaytest.WaitFor(t, func() bool { return s.Stats().Closes["slow_reader"] > before }, "the server closed as slow_reader")
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
