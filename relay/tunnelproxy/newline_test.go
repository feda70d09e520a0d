package tunnelproxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestTPRequestNewlineArrivesLate: the newline ending a raw-TCP server's or
// client's registration request may come after the request itself (its
// own segment, a slow link), here only once the relay has answered: it is
// no SLIP byte and no tunnel data. The relay once passed it on: the
// server's first SLIP frame went to address 0x0a00 and was lost (its Ping
// never answered), and the client's first byte reached the server as
// '\n'.
func TestTPRequestNewlineArrivesLate(t *testing.T) {
	s := server(t, nil)
	addr := s.Addrs()[0].String()
	register := func(method string, params map[string]any) (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		req, _ := json.Marshal(map[string]any{"id": 1, "method": method, "params": params})
		if _, err := c.Write(req); err != nil { // no newline yet
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
		if line, err := br.ReadBytes('\n'); err != nil || !strings.Contains(string(line), "TunnelProxyErrorNoError") {
			t.Fatalf("%s: %q %v", method, line, err)
		}
		return c, br
	}
	// nextFrame reads the server's next SLIP frame: its address and payload.
	nextFrame := func(br *bufio.Reader) (uint16, []byte) {
		t.Helper()
		for {
			raw, err := br.ReadBytes(0xC0)
			if err != nil {
				t.Fatalf("server: %v", err)
			}
			var addr uint16
			var payload []byte
			var d handshake.SLIPDecoder
			d.Feed(raw, func(a uint16, p []byte, ev handshake.SLIPEvent) error {
				if ev == handshake.SLIPEnd {
					addr, payload = a, append(payload, p...)
				}
				return nil
			})
			if payload != nil {
				return addr, payload
			}
		}
	}
	su := client.NewUUID()
	sc, sbr := register("TunnelProxy.RegisterServer", map[string]any{"serverName": "s", "serverUuid": su})
	sc.Write(append([]byte("\n"), handshake.AppendSLIP(nil, 0, []byte(`{"id":2,"method":"TunnelProxy.Ping","params":{"timestamp":4242}}`+"\n"))...))
	if a, p := nextFrame(sbr); a != 0 || !bytes.Contains(p, []byte(`"timestamp":4242`)) {
		t.Fatalf("the server's first frame, after a late newline, answered on address %d with %q", a, p)
	}
	cc, _ := register("TunnelProxy.RegisterClient", map[string]any{"clientName": "c", "clientUuid": client.NewUUID(), "serverUuid": su})
	if a, p := nextFrame(sbr); a != 0 || !bytes.Contains(p, []byte("TunnelProxy.ClientConnected")) {
		t.Fatalf("server heard %q on address %d", p, a)
	}
	cc.Write([]byte("\nHELLO"))
	var got []byte
	for len(got) < len("HELLO") {
		a, p := nextFrame(sbr)
		if a != 1 {
			t.Fatalf("server heard %q on address %d", p, a)
		}
		got = append(got, p...)
	}
	if string(got) != "HELLO" {
		t.Fatalf("the client's first bytes after a late newline reached the server as %q, want %q", got, "HELLO")
	}
}
