package tunnelproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// live is the number of sockets s holds: every accepted one not yet
// ended (its books balance once it is 0).
func live(s *relay.Server) uint64 {
	st := s.Stats()
	return st.Accepted - st.ClosesTotal
}

// TestPongFloodBounded: a TunnelProxy client that pings and never reads
// must not grow the relay's memory (its pong queue once had no cap).
func TestPongFloodBounded(t *testing.T) {
	s := server(t, nil, func(c *Config) { c.WriteStallTimeout = 30 * time.Second })
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	cl := tpDial(t, s, true) // registered by hand: no reader
	if e := tpErr(cl.call("TunnelProxy.RegisterClient", map[string]any{"clientName": "c", "clientUuid": client.NewUUID(), "serverUuid": su})); e != "TunnelProxyErrorNoError" {
		t.Fatal(e)
	}
	srv.nextRPC()                                  // ClientConnected
	_ = cl.c.(*net.TCPConn).SetReadBuffer(4 << 10) // and never read
	if grew := testutil.Flood(t, cl.c, testutil.Pings(512), 2*time.Second); grew > testutil.FloodBound {
		t.Fatalf("relay RSS grew %d MiB under a TunnelProxy ping flood (bound %d MiB)", grew>>20, testutil.FloodBound>>20)
	}
}

// TestDrainWithTunnelProxy: Shutdown returns when the last session ends,
// waiting on the connections themselves: a server with no client is let
// go at once, one with a client holds the drain until the client leaves,
// and is then closed.
func TestDrainWithTunnelProxy(t *testing.T) {
	s := server(t, nil)
	registerServer(t, s, client.NewUUID(), false) // idle
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	cl := registerClient(t, s, client.NewUUID(), su, false)
	srv.nextRPC()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	relaytest.WaitFor(t, func() bool { return live(s) == 2 }, "the idle server let go, the busy one and its client kept")
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while a client session was open", err)
	case <-time.After(300 * time.Millisecond):
	}
	cl.c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last client left")
	}
	if n := live(s); n != 0 {
		t.Fatalf("%d connections live after the drain", n)
	}
}

// TestRegistrationRacesClose: clients registering while the server
// closes (a netpoll goroutine once dropped a client from the hub's map,
// which only the loop goroutine may touch). Under -race; every connection
// must end accounted.
func TestRegistrationRacesClose(t *testing.T) {
	for round := range 15 {
		s := server(t, nil)
		su := client.NewUUID()
		registerServer(t, s, su, round%2 == 0)
		var wg sync.WaitGroup
		for i := range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				c, err := client.DialTPClient(ctx, client.TPOptions{URL: []string{relaytest.TCPURL(s), relaytest.WSURL(s)}[i%2], ServerUUID: su})
				if err == nil {
					c.Close()
				}
			}()
		}
		time.Sleep(time.Duration(round%5) * time.Millisecond)
		s.Close()
		wg.Wait()
		relaytest.WaitFor(t, func() bool { return live(s) == 0 }, "every connection accounted after Close")
	}
}

// TestClientControlAnsweredAtOnce: a WebSocket client's ping and close are
// answered when they arrive, not at the hub's next event (once they waited
// for the server's next ping, 30 s).
func TestClientControlAnsweredAtOnce(t *testing.T) {
	s := server(t, nil)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	cl := tpDial(t, s, true)
	if e := tpErr(cl.call("TunnelProxy.RegisterClient", map[string]any{"clientName": "c", "clientUuid": client.NewUUID(), "serverUuid": su})); e != "TunnelProxyErrorNoError" {
		t.Fatal(e)
	}
	srv.nextRPC() // ClientConnected
	expect := func(op ws.OpCode) ws.Frame {
		t.Helper()
		_ = cl.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		f, err := testutil.ReadFrame(cl.br)
		if err != nil {
			t.Fatalf("waiting for %v: %v", op, err)
		}
		if f.Header.OpCode != op {
			t.Fatalf("got %v, want %v", f.Header.OpCode, op)
		}
		return f
	}
	if err := ws.WriteFrame(cl.c, ws.MaskFrameInPlace(ws.NewPingFrame([]byte("p1")))); err != nil {
		t.Fatal(err)
	}
	if f := expect(ws.OpPong); string(f.Payload) != "p1" {
		t.Fatalf("pong payload %q", f.Payload)
	}
	if err := ws.WriteFrame(cl.c, ws.MaskFrameInPlace(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")))); err != nil {
		t.Fatal(err)
	}
	expect(ws.OpClose)
	if _, err := cl.br.ReadByte(); err == nil {
		t.Fatal("the relay did not close the connection after the close handshake")
	}
	if m := srv.nextRPC(); m["notification"] != "TunnelProxy.ClientDisconnected" {
		t.Fatalf("server heard %v", m)
	}
}

// TestMetricDocs: the TunnelProxy families on /metrics carry help text and
// the right type (the *_active ones go down: gauges).
func TestMetricDocs(t *testing.T) {
	s := server(t, nil)
	var buf bytes.Buffer
	s.WritePrometheus(&buf)
	for fam, d := range tpDocs {
		for _, want := range []string{"# HELP " + fam + " " + d.Help + "\n", "# TYPE " + fam + " " + d.Type + "\n"} {
			if !strings.Contains(buf.String(), want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
		if strings.HasSuffix(fam, "_active") != (d.Type == "gauge") {
			t.Errorf("%s: type %s", fam, d.Type)
		}
	}
}

// TestTPRegistrationsWaitForTheServer: clients that register with long
// names while their server reads nothing are answered, but announced
// (ClientConnected carries the name) only as the server's backlog allows:
// the relay holds about serverHigh for the server, not every name; the
// server, pinging all along, is not closed as silent while the relay does
// not read it for its backlog; and once it reads, every client is
// announced.
func TestTPRegistrationsWaitForTheServer(t *testing.T) {
	s := server(t, nil, func(c *Config) {
		c.ServerTimeout = time.Second
		c.WriteStallTimeout = 10 * time.Minute // the server reads nothing while 800 clients register
	})
	su, sc, br := rawServer(t, s)
	// The server pings all along (a live server; the relay reads its
	// pings until its backlog stops it reading), and reads nothing until
	// told: 800 names of 9 KiB (7 MiB) are more than loopback's socket
	// buffers take.
	go func() {
		for i := 2; ; i++ {
			ping := fmt.Appendf([]byte{0xC0, 0, 0}, `{"id":%d,"method":"TunnelProxy.Ping","params":{"timestamp":1}}`, i)
			if _, err := sc.Write(append(ping, 0xC0)); err != nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	const n = 800
	name := strings.Repeat("n", 9<<10)
	register := func(uuid string) net.Conn { return rawClient(t, s, su, name, uuid) }
	for range n - 1 {
		register(client.NewUUID())
	}
	// The last waits to be announced; it leaves and comes back under its
	// uuid: its first registration is seen to end, the uuid is free.
	again := client.NewUUID()
	register(again).Close()
	relaytest.WaitFor(t, func() bool {
		gone := false
		hubOf(t, serviceOf(s), su, func(h *hub) { gone = len(h.clients) == n-1 })
		return gone
	}, "the waiting client that left dropped")
	register(again)
	var pending, joiners int
	hubOf(t, serviceOf(s), su, func(h *hub) { pending, joiners = h.srv.pending(), len(h.joiners) })
	if pending > serverHigh+16<<10 || joiners == 0 {
		t.Fatalf("%d bytes wait for the server (%d clients not announced yet), want about serverHigh (%d) and the rest not announced", pending, joiners, serverHigh)
	}
	// Three server timeouts pass with the server not read: it stays.
	time.Sleep(3 * time.Second)
	hubOf(t, serviceOf(s), su, func(h *hub) {
		if h.dead {
			t.Fatal("the server was closed as silent while the relay held its backlog")
		}
	})
	// The server reads: every client is announced.
	announced := 0
	for announced < n {
		_ = sc.SetReadDeadline(time.Now().Add(relaytest.Patience)) // per frame: 7 MiB under qemu takes a while
		frame, err := br.ReadBytes(0xC0)
		if err != nil {
			t.Fatalf("the server read %d announcements, then %v", announced, err)
		}
		announced += strings.Count(string(frame), "TunnelProxy.ClientConnected")
	}
}

// TestTPQueuedClientThatHalfClosesKeepsItsBytes: a client that registers
// while its server's backlog is at serverHigh (it waits in joiners),
// sends its request and shuts its side (shutdown(SHUT_WR), as a one-shot
// client does) is kept, announced once the backlog drains, and its bytes
// are delivered, as a joined client's would be.
func TestTPQueuedClientThatHalfClosesKeepsItsBytes(t *testing.T) {
	s := server(t, nil, func(c *Config) {
		c.ServerTimeout = time.Minute
		c.WriteStallTimeout = 10 * time.Minute
	})
	su, sc, br := rawServer(t, s)
	register := func(name string) *net.TCPConn { return rawClient(t, s, su, name, client.NewUUID()) }
	// A filler client sends more than the server (which reads nothing
	// now) takes: the relay's backlog for it reaches serverHigh.
	filler := register("filler")
	go filler.Write(bytes.Repeat([]byte("f"), 8<<20))
	relaytest.WaitFor(t, func() bool {
		full := false
		hubOf(t, serviceOf(s), su, func(h *hub) { full = h.srv.pending() >= serverHigh })
		return full
	}, "the server's backlog at serverHigh")
	q := register("queued-one")
	var queued bool
	hubOf(t, serviceOf(s), su, func(h *hub) { queued = len(h.joiners) == 1 })
	if !queued {
		t.Fatal("the second client is not waiting in joiners")
	}
	q.Write([]byte("HALF-CLOSED-REQUEST"))
	q.CloseWrite()                     // done sending; it still reads
	time.Sleep(300 * time.Millisecond) // the loop sees the half-close (a miss passes, it cannot fail)
	var kept bool
	hubOf(t, serviceOf(s), su, func(h *hub) { kept = len(h.clients) == 2 })
	// The server reads now: the queued client should be announced and its
	// bytes delivered.
	seen := map[string]bool{}
	buf := make([]byte, 64<<10)
	var tail []byte
	for !(seen["announced"] && seen["data"]) {
		_ = sc.SetReadDeadline(time.Now().Add(relaytest.Patience))
		n, err := br.Read(buf)
		if err != nil {
			break
		}
		chunk := append(tail, buf[:n]...)
		seen["announced"] = seen["announced"] || bytes.Contains(chunk, []byte("queued-one"))
		seen["data"] = seen["data"] || bytes.Contains(chunk, []byte("HALF-CLOSED-REQUEST"))
		tail = append([]byte(nil), chunk[max(0, len(chunk)-64):]...)
	}
	if !kept || !seen["announced"] || !seen["data"] {
		t.Fatalf("a queued client that sent 19 bytes and half-closed: kept while queued %v, announced to the server %v, its bytes delivered %v", kept, seen["announced"], seen["data"])
	}
}

// rawServer registers a TunnelProxy server with s on the plain protocol
// and returns its uuid, its connection (closed at the test's end) and
// the reader of what the relay sends it (SLIP frames from here on).
func rawServer(t *testing.T, s *relay.Server) (su string, sc net.Conn, br *bufio.Reader) {
	t.Helper()
	su = client.NewUUID()
	sc, err := net.Dial("tcp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	req, _ := json.Marshal(map[string]any{"id": 1, "method": "TunnelProxy.RegisterServer", "params": map[string]any{"serverName": "s", "serverUuid": su}})
	sc.Write(append(req, '\n'))
	br = bufio.NewReader(sc)
	if line, err := br.ReadBytes('\n'); err != nil || !strings.Contains(string(line), "TunnelProxyErrorNoError") {
		t.Fatalf("RegisterServer: %q %v", line, err)
	}
	return su, sc, br
}

// rawClient registers a client named name under uuid with server su on
// the plain protocol and returns its connection (closed at the test's
// end) once the relay has answered.
func rawClient(t *testing.T, s *relay.Server, su, name, uuid string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b, _ := json.Marshal(map[string]any{"id": 1, "method": "TunnelProxy.RegisterClient",
		"params": map[string]any{"clientName": name, "clientUuid": uuid, "serverUuid": su}})
	c.Write(append(b, '\n'))
	_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
	if line, err := bufio.NewReader(c).ReadBytes('\n'); err != nil || !strings.Contains(string(line), "TunnelProxyErrorNoError") {
		t.Fatalf("RegisterClient %.20s: %.100q %v", name, line, err)
	}
	return c.(*net.TCPConn)
}
