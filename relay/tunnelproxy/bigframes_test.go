package tunnelproxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// noise is n reproducible bytes, SLIP's special bytes among them.
func noise(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	for i := 0; i < n; i += 997 {
		b[i] = 0xC0
		if i+1 < n {
			b[i+1] = 0xDB
		}
	}
	return b
}

// collect reads a client's data until at least n bytes came.
func collect(t *testing.T, p *tpConn, n int) []byte {
	t.Helper()
	var got []byte
	for len(got) < n {
		d, ok := p.next()
		if !ok {
			t.Fatalf("client closed after %d of %d bytes", len(got), n)
		}
		got = append(got, d...)
	}
	return got
}

// collectFrames reads a server's frames for addr until n payload bytes
// came; address-0 messages other than ClientConnected fail the test.
func collectFrames(t *testing.T, p *tpConn, addr uint16, n int) []byte {
	t.Helper()
	var got []byte
	for len(got) < n {
		f, ok := p.next()
		if !ok {
			t.Fatalf("server closed after %d of %d bytes", len(got), n)
		}
		if a := uint16(f[0])<<8 | uint16(f[1]); a != addr {
			t.Fatalf("a frame for address %d: %.200q", a, f[2:])
		}
		got = append(got, f[2:]...)
	}
	return got
}

// hubOf runs f on the loop of server su's hub and waits for it.
func hubOf(t *testing.T, svc *Service, su string, f func(h *hub)) {
	t.Helper()
	svc.reg.mu.Lock()
	h := svc.reg.hubs[su]
	svc.reg.mu.Unlock()
	if h == nil {
		t.Fatalf("no hub for %s", su)
	}
	done := make(chan struct{})
	if !h.l.Do(func() { f(h); close(done) }) {
		t.Fatal("hub's loop stopped")
	}
	<-done
}

// TestTPHugeFramesStreamed: nymea's library sends each TunnelProxySocket
// write as one SLIP frame, of any size. The relay forwards a 16 MiB frame
// as its bytes arrive (the client has megabytes of it before the frame
// ends), and a client's 4 MiB write reaches the server whole; over TCP and
// WebSocket on either side.
func TestTPHugeFramesStreamed(t *testing.T) {
	for _, tc := range []struct {
		name         string
		srvWS, cliWS bool
	}{{"tcp", false, false}, {"ws-server", true, false}, {"ws-client", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := server(t, nil)
			su := client.NewUUID()
			srv := registerServer(t, s, su, tc.srvWS)
			cli := registerClient(t, s, client.NewUUID(), su, tc.cliWS)
			if m := srv.nextRPC(); m["notification"] != "TunnelProxy.ClientConnected" {
				t.Fatal(m)
			}
			want := noise(16<<20, 1)
			frame := handshake.AppendSLIP(nil, 1, want)
			half := len(frame) / 2
			if err := srv.sendRaw(ws.OpBinary, frame[:half]); err != nil {
				t.Fatal(err)
			}
			got := collect(t, cli, 4<<20) // the frame is not finished yet
			if err := srv.sendRaw(ws.OpBinary, frame[half:]); err != nil {
				t.Fatal(err)
			}
			got = append(got, collect(t, cli, len(want)-len(got))...)
			if !bytes.Equal(got, want) {
				t.Fatalf("client got %d bytes, want %d, equal %v", len(got), len(want), bytes.Equal(got, want))
			}
			up := noise(4<<20, 2)
			if err := cli.sendRaw(ws.OpBinary, up); err != nil {
				t.Fatal(err)
			}
			if got := collectFrames(t, srv, 1, len(up)); !bytes.Equal(got, up) {
				t.Fatalf("server got %d bytes, want %d", len(got), len(up))
			}
		})
	}
}

// TestTPFullClientHoldsServerUp: a client that does not read what its
// server sends is not disconnected at once: once its backlog reaches
// ClientBuffer the relay stops reading the server (TCP flow control slows
// it), holding no more than that backlog and one read; when the client
// reads again, every byte arrives.
func TestTPFullClientHoldsServerUp(t *testing.T) {
	const buffer = 64 << 10
	s := server(t, nil, func(c *Config) { c.ClientBuffer = buffer })
	svc := serviceOf(s)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	cli := tpDial(t, s, false)
	_ = cli.c.(*net.TCPConn).SetReadBuffer(16 << 10)
	if m := cli.call("TunnelProxy.RegisterClient", map[string]any{"clientName": "late", "clientUuid": client.NewUUID(), "serverUuid": su}); tpErr(m) != "TunnelProxyErrorNoError" {
		t.Fatal(m)
	}
	srv.nextRPC()
	want := noise(8<<20, 3)
	sent := make(chan error, 1)
	go func() { sent <- srv.sendRaw(0, handshake.AppendSLIP(nil, 1, want)) }()
	var held, backlog int
	relaytest.WaitFor(t, func() bool {
		hubOf(t, svc, su, func(h *hub) {
			held, backlog = h.held, 0
			if c := h.clients[1]; c != nil {
				backlog = c.pending()
			}
		})
		return held == 1
	}, "the relay to stop reading the server for its full client")
	if backlog < buffer || backlog > buffer+64<<10 {
		t.Fatalf("held with a backlog of %d bytes, want %d plus at most one read", backlog, buffer)
	}
	cli.startReader(false)
	if got := collect(t, cli, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("client got %d bytes, want %d", len(got), len(want))
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	select {
	case f := <-srv.msgs:
		t.Fatalf("server got %q: the client must not have been disconnected", f)
	default:
	}
	hubOf(t, svc, su, func(h *hub) { held = h.held })
	if held != 0 {
		t.Fatalf("still %d held once the client caught up", held)
	}
}

// TestTPSlowClientDisconnectedNotServer: a client that never reads is
// disconnected once it has held its server up for the write-stall
// timeout; the server and the other clients carry on.
func TestTPSlowClientDisconnectedNotServer(t *testing.T) {
	s := server(t, nil, func(c *Config) {
		c.ClientBuffer = 64 << 10
		c.WriteStallTimeout = 500 * time.Millisecond
	})
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	slow := tpDial(t, s, false)
	_ = slow.c.(*net.TCPConn).SetReadBuffer(16 << 10)
	if m := slow.call("TunnelProxy.RegisterClient", map[string]any{"clientName": "slow", "clientUuid": client.NewUUID(), "serverUuid": su}); tpErr(m) != "TunnelProxyErrorNoError" {
		t.Fatal(m)
	}
	fast := registerClient(t, s, client.NewUUID(), su, false)
	srv.nextRPC()
	srv.nextRPC()
	go srv.sendRaw(0, handshake.AppendSLIP(nil, 1, make([]byte, 16<<20))) // blocks once the relay stops reading
	if m := srv.nextRPC(); m["notification"] != "TunnelProxy.ClientDisconnected" {
		t.Fatalf("slow client not disconnected: %v", m)
	}
	// The notification goes out first; a write_stall close is counted
	// when the client's socket is finally let go, which may come later.
	relaytest.WaitFor(t, func() error {
		slow := relaytest.Metric(t, s, `meetpoint_tunnelproxy_clients_dropped_total{reason="slow"}`)
		stalled := relaytest.Metric(t, s, `meetpoint_closes_total{reason="write_stall"}`)
		if slow+stalled < 1 {
			return fmt.Errorf("slow %v, write_stall %v", slow, stalled)
		}
		return nil
	}, "the disconnect counted as slow or stalled")
	srv.sendSLIP(2, []byte("ping"))
	if d, _ := fast.next(); string(d) != "ping" {
		t.Fatalf("fast client got %q", d)
	}
}

// TestTPOversizedRPCClosesServer: JSON-RPC on address 0 is the one thing
// the relay must hold whole; a message over MaxMessage closes the server,
// counted as an RPC error (not a WebSocket one).
func TestTPOversizedRPCClosesServer(t *testing.T) {
	if _, err := New(relaytest.New(t, nil), Config{ServerTimeout: time.Second, ClientBuffer: 1 << 20, WriteStallTimeout: time.Second, MaxMessage: 100}); err == nil || !strings.Contains(err.Error(), "tp-max-message") {
		t.Fatalf("MaxMessage 100 accepted: %v", err)
	}
	s := server(t, nil, func(c *Config) { c.MaxMessage = 1024 })
	srv := registerServer(t, s, client.NewUUID(), false)
	ping := func(pad int) []byte {
		return []byte(fmt.Sprintf(`{"id":7,"method":"TunnelProxy.Ping","params":{"timestamp":1}}%s`+"\n", strings.Repeat(" ", pad)))
	}
	srv.sendSLIP(0, ping(900))
	if m := srv.nextRPC(); m["id"] != float64(7) || m["status"] != "success" {
		t.Fatalf("a 960-byte ping: %v", m)
	}
	before := relaytest.Metric(t, s, `meetpoint_closes_total{reason="rpc"}`)
	srv.sendSLIP(0, ping(1000))
	if !srv.closedSoon() {
		t.Fatal("server not closed after a 1,060-byte message (MaxMessage 1024)")
	}
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, s, `meetpoint_closes_total{reason="rpc"}`) == before+1
	}, `the close counted under reason="rpc"`)
}

// TestTPMalformedFrameMidStream: a bad escape in a frame whose start was
// already forwarded leaves a hole in that client's stream: the client is
// disconnected, the server told, and the server carries on.
func TestTPMalformedFrameMidStream(t *testing.T) {
	s := server(t, nil)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	cli := registerClient(t, s, client.NewUUID(), su, false)
	srv.nextRPC()
	start := handshake.AppendSLIP(nil, 1, bytes.Repeat([]byte("a"), 100<<10))
	srv.sendRaw(0, start[:len(start)-1]) // no END: the frame goes on
	collect(t, cli, 100<<10)
	srv.sendRaw(0, []byte{'b', 0xDB, 'x', 'c', 0xC0})
	m := srv.nextRPC()
	var p struct {
		SocketAddress int `json:"socketAddress"`
	}
	b, _ := json.Marshal(m["params"])
	_ = json.Unmarshal(b, &p)
	if m["notification"] != "TunnelProxy.ClientDisconnected" || p.SocketAddress != 1 {
		t.Fatalf("server got %v", m)
	}
	if !cli.closedSoon() {
		t.Fatal("client with a hole in its stream not closed")
	}
	srv.sendSLIP(0, []byte(`{"id":9,"method":"TunnelProxy.Ping","params":{"timestamp":1}}`+"\n"))
	if m := srv.nextRPC(); m["id"] != float64(9) {
		t.Fatalf("server after the malformed frame: %v", m)
	}
}
