package tunnelproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// tpConn is a test peer speaking the TunnelProxy API over TCP or WebSocket.
type tpConn struct {
	t    testing.TB
	c    net.Conn
	br   *bufio.Reader
	ws   bool
	id   int
	msgs chan []byte // SLIP mode (server) or data (client), filled by a reader goroutine
	errc chan error
}

func tpDial(t testing.TB, s *relay.Server, overWS bool) *tpConn {
	t.Helper()
	addr := s.Addrs()[0].String()
	p := &tpConn{t: t, ws: overWS}
	if overWS {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, br, _, err := ws.Dial(ctx, "ws://"+addr+"/")
		if err != nil {
			t.Fatal(err)
		}
		p.c = c
		p.br = br
		if br == nil {
			p.br = bufio.NewReader(c)
		}
	} else {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		p.c, p.br = c, bufio.NewReader(c)
	}
	t.Cleanup(func() { p.c.Close() })
	return p
}

func (p *tpConn) rw() io.ReadWriter {
	return struct {
		io.Reader
		io.Writer
	}{p.br, p.c}
}

// sendRaw sends one message: a TEXT or BINARY frame on WebSocket.
func (p *tpConn) sendRaw(op ws.OpCode, b []byte) error {
	if p.ws {
		return wsutil.WriteClientMessage(p.c, op, b)
	}
	_, err := p.c.Write(b)
	return err
}

// readJSON reads one JSON-RPC message before SLIP/data mode.
func (p *tpConn) readJSON() (map[string]any, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer p.c.SetReadDeadline(time.Time{})
	var line []byte
	var err error
	if p.ws {
		line, err = wsutil.ReadServerText(p.rw())
	} else {
		line, err = p.br.ReadBytes('\n')
	}
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, fmt.Errorf("%v: %q", err, line)
	}
	return m, nil
}

func (p *tpConn) call(method string, params map[string]any) map[string]any {
	p.t.Helper()
	p.id++
	b, _ := json.Marshal(map[string]any{"id": p.id, "method": method, "params": params})
	if err := p.sendRaw(ws.OpText, append(b, '\n')); err != nil {
		p.t.Fatal(err)
	}
	m, err := p.readJSON()
	if err != nil {
		p.t.Fatalf("%s: %v", method, err)
	}
	return m
}

func tpErr(m map[string]any) string {
	params, _ := m["params"].(map[string]any)
	s, _ := params["tunnelProxyError"].(string)
	return s
}

// startReader moves p to its post-registration mode: server connections
// yield SLIP frames (addr prefix of 2 bytes kept), clients raw data.
func (p *tpConn) startReader(slip bool) {
	p.msgs, p.errc = make(chan []byte, 4096), make(chan error, 1)
	go func() {
		var d handshake.SLIPDecoder
		h := handshake.SLIPHold{Max: 64 << 20}
		emit := func(addr uint16, payload []byte, ev handshake.SLIPEvent) error {
			whole, err := h.Add(payload, ev)
			if ev == handshake.SLIPEnd {
				p.msgs <- append([]byte{byte(addr >> 8), byte(addr)}, whole...)
			}
			return err
		}
		buf := make([]byte, 32<<10)
		for {
			var data []byte
			if p.ws {
				b, op, err := wsutil.ReadServerData(p.rw())
				if err != nil {
					p.errc <- err
					close(p.msgs)
					return
				}
				if slip && op != ws.OpBinary {
					p.errc <- fmt.Errorf("got %v frame after registration", op)
				}
				data = b
			} else {
				n, err := p.br.Read(buf)
				if err != nil {
					p.errc <- err
					close(p.msgs)
					return
				}
				data = append([]byte(nil), buf[:n]...)
			}
			if slip {
				d.Feed(data, emit)
			} else {
				p.msgs <- data
			}
		}
	}()
}

// next returns the next SLIP frame (server) or data chunk (client).
func (p *tpConn) next() ([]byte, bool) {
	p.t.Helper()
	select {
	case m, ok := <-p.msgs:
		return m, ok
	case <-time.After(5 * time.Second):
		p.t.Fatal("timed out waiting for a message")
		return nil, false
	}
}

// nextNotification skips to the next address-0 frame and decodes it.
func (p *tpConn) nextRPC() map[string]any {
	p.t.Helper()
	for {
		f, ok := p.next()
		if !ok {
			p.t.Fatal("server connection closed")
		}
		if f[0] == 0 && f[1] == 0 {
			var m map[string]any
			if err := json.Unmarshal(f[2:], &m); err != nil {
				p.t.Fatalf("bad JSON on address 0: %q", f[2:])
			}
			return m
		}
	}
}

func (p *tpConn) sendSLIP(addr uint16, payload []byte) {
	if err := p.sendRaw(ws.OpBinary, handshake.AppendSLIP(nil, addr, payload)); err != nil {
		p.t.Fatal(err)
	}
}

func (p *tpConn) closedSoon() bool {
	for {
		select {
		case _, ok := <-p.msgs:
			if !ok {
				return true
			}
		case <-time.After(3 * time.Second):
			return false
		}
	}
}

func registerServer(t testing.TB, s *relay.Server, uuid string, overWS bool) *tpConn {
	t.Helper()
	p := tpDial(t, s, overWS)
	m := p.call("TunnelProxy.RegisterServer", map[string]any{"serverName": "dev", "serverUuid": uuid})
	params, _ := m["params"].(map[string]any)
	if tpErr(m) != "TunnelProxyErrorNoError" || params["slipEnabled"] != true {
		t.Fatalf("RegisterServer: %v", m)
	}
	p.startReader(true)
	return p
}

func registerClient(t testing.TB, s *relay.Server, clientUUID, serverUUID string, overWS bool) *tpConn {
	t.Helper()
	p := tpDial(t, s, overWS)
	m := p.call("TunnelProxy.RegisterClient", map[string]any{"clientName": "ui", "clientUuid": clientUUID, "serverUuid": serverUUID})
	if tpErr(m) != "TunnelProxyErrorNoError" {
		t.Fatalf("RegisterClient: %v", m)
	}
	p.startReader(false)
	return p
}

func TestTPRegisterServerUUIDs(t *testing.T) {
	s := server(t, nil)
	u := client.NewUUID()
	registerServer(t, s, "{"+strings.ToUpper(u)+"}", false)
	registerServer(t, s, client.NewUUID(), true)
	for _, bad := range []any{nil, "foo", "", "{" + client.NewUUID()} {
		p := tpDial(t, s, false)
		m := p.call("TunnelProxy.RegisterServer", map[string]any{"serverName": "x", "serverUuid": bad})
		if tpErr(m) != "TunnelProxyErrorInvalidUuid" {
			t.Fatalf("uuid %v: %v", bad, m)
		}
		if _, err := p.readJSON(); err == nil {
			t.Fatal("connection kept after InvalidUuid")
		}
	}
}

func TestTPRegisterClientErrors(t *testing.T) {
	s := server(t, nil)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	registerClient(t, s, client.NewUUID(), "{"+su+"}", false) // braces accepted
	if m := srv.nextRPC(); m["notification"] != "TunnelProxy.ClientConnected" {
		t.Fatalf("got %v", m)
	}
	cases := map[string][2]any{
		"TunnelProxyErrorServerNotFound": {client.NewUUID(), client.NewUUID()},
		"TunnelProxyErrorInvalidUuid":    {"nope", su},
	}
	for want, c := range cases {
		p := tpDial(t, s, false)
		m := p.call("TunnelProxy.RegisterClient", map[string]any{"clientName": "x", "clientUuid": c[0], "serverUuid": c[1]})
		if tpErr(m) != want {
			t.Fatalf("want %s, got %v", want, m)
		}
	}
}

func TestTPDuplicatesAndCrossRegistration(t *testing.T) {
	s := server(t, nil)
	su, cu := client.NewUUID(), client.NewUUID()
	registerServer(t, s, su, false)
	registerClient(t, s, cu, su, false)
	check := func(method string, params map[string]any) {
		t.Helper()
		p := tpDial(t, s, false)
		if m := p.call(method, params); tpErr(m) != "TunnelProxyErrorAlreadyRegistered" {
			t.Fatalf("%s %v: %v", method, params, m)
		}
		if _, err := p.readJSON(); err == nil {
			t.Fatal("connection kept after AlreadyRegistered")
		}
	}
	check("TunnelProxy.RegisterServer", map[string]any{"serverName": "x", "serverUuid": su})                   // duplicate server
	check("TunnelProxy.RegisterClient", map[string]any{"clientName": "x", "clientUuid": cu, "serverUuid": su}) // duplicate client
	check("TunnelProxy.RegisterClient", map[string]any{"clientName": "x", "clientUuid": su, "serverUuid": su}) // server uuid as client
	check("TunnelProxy.RegisterServer", map[string]any{"serverName": "x", "serverUuid": "{" + cu + "}"})       // client uuid as server
}

func TestTPDataClientConnectedDisconnected(t *testing.T) {
	for _, tc := range []struct {
		name         string
		srvWS, cliWS bool
	}{{"tcp-tcp", false, false}, {"ws-ws", true, true}, {"ws-server-tcp-client", true, false}, {"tcp-server-ws-client", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := server(t, nil)
			su, cu := client.NewUUID(), client.NewUUID()
			srv := registerServer(t, s, su, tc.srvWS)
			cli := registerClient(t, s, cu, su, tc.cliWS)
			m := srv.nextRPC()
			params := m["params"].(map[string]any)
			if m["notification"] != "TunnelProxy.ClientConnected" || params["clientUuid"] != cu ||
				params["clientName"] != "ui" || params["clientPeerAddress"] != "127.0.0.1" || params["socketAddress"].(float64) != 1 {
				t.Fatalf("ClientConnected: %v", m)
			}
			// Client → server, with every special SLIP byte.
			special := []byte{0xC0, 0xDB, 0xDC, 0xDD, 0, 'x', 0xC0}
			cli.sendRaw(ws.OpBinary, special)
			var got []byte
			for len(got) < len(special) {
				f, _ := srv.next()
				if f[0] != 0 || f[1] != 1 {
					t.Fatalf("frame for address %d", int(f[0])<<8|int(f[1]))
				}
				got = append(got, f[2:]...)
			}
			if !bytes.Equal(got, special) {
				t.Fatalf("server got % x", got)
			}
			// Server → client: un-escaped before it reaches the client.
			srv.sendSLIP(1, special)
			got = got[:0]
			for len(got) < len(special) {
				d, _ := cli.next()
				got = append(got, d...)
			}
			if !bytes.Equal(got, special) {
				t.Fatalf("client got % x", got)
			}
			cli.c.Close()
			m = srv.nextRPC()
			if m["notification"] != "TunnelProxy.ClientDisconnected" || m["params"].(map[string]any)["socketAddress"].(float64) != 1 {
				t.Fatalf("ClientDisconnected: %v", m)
			}
		})
	}
}

func TestTPServerStopDropsClients(t *testing.T) {
	s := server(t, nil)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	var clis []*tpConn
	for range 3 {
		clis = append(clis, registerClient(t, s, client.NewUUID(), su, false))
	}
	srv.c.Close()
	for _, c := range clis {
		if !c.closedSoon() {
			t.Fatal("client kept after its server left")
		}
	}
	// The uuid is free again.
	registerServer(t, s, su, false)
}

func TestTPDisconnectClientAndPing(t *testing.T) {
	s := server(t, nil)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	a := registerClient(t, s, client.NewUUID(), su, false)
	b := registerClient(t, s, client.NewUUID(), su, false)
	srv.nextRPC()
	srv.nextRPC()
	srv.sendSLIP(0, []byte(`{"id":7,"method":"TunnelProxy.DisconnectClient","params":{"socketAddress":1}}`+"\n"))
	var sawReply, sawDisc bool
	for !sawReply || !sawDisc {
		m := srv.nextRPC()
		switch {
		case m["id"].(float64) == 7 && tpErr(m) == "TunnelProxyErrorNoError":
			sawReply = true
		case m["notification"] == "TunnelProxy.ClientDisconnected":
			sawDisc = true
		default:
			t.Fatalf("unexpected %v", m)
		}
	}
	if !a.closedSoon() {
		t.Fatal("DisconnectClient did not close the client")
	}
	srv.sendSLIP(0, []byte(`{"id":8,"method":"TunnelProxy.DisconnectClient","params":{"socketAddress":99}}`+"\n"))
	if m := srv.nextRPC(); tpErr(m) != "TunnelProxyErrorUnknownSocketAddress" {
		t.Fatalf("unknown address: %v", m)
	}
	srv.sendSLIP(0, []byte(`{"id":9,"method":"TunnelProxy.Ping","params":{"timestamp":12345}}`+"\n"))
	if m := srv.nextRPC(); m["params"].(map[string]any)["timestamp"].(float64) != 12345 {
		t.Fatalf("ping: %v", m)
	}
	// b still works.
	srv.sendSLIP(2, []byte("still here"))
	if d, _ := b.next(); string(d) != "still here" {
		t.Fatalf("b got %q", d)
	}
}

func TestTPServerSilenceTimeout(t *testing.T) {
	s := server(t, nil, func(c *Config) {
		c.ServerTimeout = 600 * time.Millisecond
		c.WriteStallTimeout = 200 * time.Millisecond
	})
	quiet := registerServer(t, s, client.NewUUID(), false)
	pinger := registerServer(t, s, client.NewUUID(), false)
	stop := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond):
				pinger.sendRaw(ws.OpBinary, handshake.AppendSLIP(nil, 0, []byte(fmt.Sprintf(`{"id":%d,"method":"TunnelProxy.Ping","params":{"timestamp":1}}`+"\n", i))))
			}
		}
	}()
	defer close(stop)
	if !quiet.closedSoon() {
		t.Fatal("silent server not closed")
	}
	select {
	case _, ok := <-pinger.msgs:
		if !ok {
			t.Fatal("pinging server was closed")
		}
	case <-time.After(100 * time.Millisecond):
	}
}

func TestTPBadEscapeFromServer(t *testing.T) {
	s := server(t, nil)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	cli := registerClient(t, s, client.NewUUID(), su, false)
	srv.nextRPC()
	srv.sendRaw(0, []byte{0x00, 0x01, 'b', 'a', 'd', 0xDB, 'q', 0xC0})
	srv.sendSLIP(1, []byte("good"))
	d, _ := cli.next()
	if string(d) != "good" {
		t.Fatalf("client got %q: the bad frame must be dropped, the next delivered", d)
	}
}

// TestTPThousandClients: one server, 1,000 clients, data both ways; each
// client gets back exactly its own bytes.
func TestTPThousandClients(t *testing.T) {
	const n = 1000
	s := server(t, nil)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	// The server echoes each frame back to its sender, reversed.
	go func() {
		for f := range srv.msgs {
			addr := uint16(f[0])<<8 | uint16(f[1])
			if addr == 0 {
				continue
			}
			p := f[2:]
			r := make([]byte, len(p))
			for i := range p {
				r[len(p)-1-i] = p[i]
			}
			srv.sendRaw(0, handshake.AppendSLIP(nil, addr, r))
		}
	}()
	clis := make([]*tpConn, n)
	for i := range clis {
		clis[i] = registerClient(t, s, client.NewUUID(), su, i%4 == 0)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range clis {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, 64+i%200)
			rand.Read(msg)
			c.sendRaw(ws.OpBinary, msg)
			var got []byte
			for len(got) < len(msg) {
				select {
				case d, ok := <-c.msgs:
					if !ok {
						errs <- fmt.Errorf("client %d closed", i)
						return
					}
					got = append(got, d...)
				case <-time.After(10 * time.Second):
					errs <- fmt.Errorf("client %d: timeout with %d/%d bytes", i, len(got), len(msg))
					return
				}
			}
			for j := range msg {
				if got[len(msg)-1-j] != msg[j] {
					errs <- fmt.Errorf("client %d: wrong bytes", i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := serviceOf(s).m.clients.Get(); got != n {
		t.Fatalf("tunnelproxy clients gauge %d", got)
	}
}

func TestTPSnapshot(t *testing.T) {
	s := server(t, nil)
	su, cu := client.NewUUID(), client.NewUUID()
	srv := registerServer(t, s, su, false)
	cli := registerClient(t, s, cu, su, false)
	srv.nextRPC()
	cli.sendRaw(ws.OpBinary, []byte("12345"))
	srv.next()
	relaytest.WaitFor(t, func() bool {
		snap := s.Snapshot()
		return len(snap.TPServers) == 1 && len(snap.TPServers[0].Clients) == 1 && snap.TPServers[0].Clients[0].RxBytes == 5
	}, "snapshot lists the server and its client with live counters")
	snap := s.Snapshot()
	if sv := snap.TPServers[0]; sv.UUID != su || sv.Clients[0].UUID != cu || sv.Clients[0].SocketAddress != 1 {
		t.Fatalf("snapshot %+v", sv)
	}
}

func TestTPAddressAllocation(t *testing.T) {
	h := &hub{clients: make(map[uint16]*tpEnd), next: 1}
	if a := h.allocAddr(); a != 1 {
		t.Fatalf("first address %d", a)
	}
	h.clients[2] = &tpEnd{}
	if a := h.allocAddr(); a != 3 {
		t.Fatalf("address in use not skipped: %d", a)
	}
	h.next = 0xFFFE
	h.clients[1] = &tpEnd{}
	// 0xFFFE, then round past 0xFFFF and 0, skipping 1 and 2 (in use).
	if a, b := h.allocAddr(), h.allocAddr(); a != 0xFFFE || b != 3 {
		t.Fatalf("wrap-around gave %#x, %d", a, b)
	}
}

func TestTPServerFull(t *testing.T) {
	s := server(t, nil, func(c *Config) { c.MaxClients = 2 })
	su := client.NewUUID()
	registerServer(t, s, su, false)
	registerClient(t, s, client.NewUUID(), su, false)
	c2 := registerClient(t, s, client.NewUUID(), su, false)
	p := tpDial(t, s, false)
	m := p.call("TunnelProxy.RegisterClient", map[string]any{"clientName": "x", "clientUuid": client.NewUUID(), "serverUuid": su})
	if tpErr(m) != "TunnelProxyErrorInternalServerError" {
		t.Fatalf("client beyond the maximum: %v", m)
	}
	c2.c.Close() // a place frees up
	relaytest.WaitFor(t, func() bool {
		q := tpDial(t, s, false)
		return tpErr(q.call("TunnelProxy.RegisterClient", map[string]any{"clientName": "x", "clientUuid": client.NewUUID(), "serverUuid": su})) == "TunnelProxyErrorNoError"
	}, "a client is admitted once another left")
}

// TestTPClientTextFrames: a WebSocket client gets the server's bytes in
// TEXT frames while they are valid UTF-8 (nymea's client library listens
// for text messages only), in BINARY frames from the first byte that
// cannot be UTF-8 on; bytes arrive unchanged either way.
func TestTPClientTextFrames(t *testing.T) {
	s := server(t, nil)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	cli := tpDial(t, s, true)
	if e := tpErr(cli.call("TunnelProxy.RegisterClient", map[string]any{"clientName": "c", "clientUuid": client.NewUUID(), "serverUuid": su})); e != "TunnelProxyErrorNoError" {
		t.Fatal(e)
	}
	addr := uint16(1)
	srv.nextRPC() // ClientConnected
	for _, part := range [][]byte{[]byte("hé"), []byte("llo \xe2"), []byte("\x9c\x93")} {
		srv.sendSLIP(addr, part)
	}
	var text []byte
	for len(text) < len("héllo ✓") {
		_ = cli.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, op, err := wsutil.ReadServerData(cli.rw())
		if err != nil || op != ws.OpText || !utf8.Valid(b) {
			t.Fatalf("text data: op %v %q %v", op, b, err)
		}
		text = append(text, b...)
	}
	if string(text) != "héllo ✓" {
		t.Fatalf("got %q", text)
	}
	bin := []byte{0x00, 0xC0, 0xDB, 0xFF}
	srv.sendSLIP(addr, bin)
	if b, op, err := wsutil.ReadServerData(cli.rw()); err != nil || op != ws.OpBinary || !bytes.Equal(b, bin) {
		t.Fatalf("binary data: op %v %x %v", op, b, err)
	}
}
