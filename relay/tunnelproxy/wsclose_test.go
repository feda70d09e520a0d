package tunnelproxy

import (
	"bytes"
	"encoding/json"
	"net"
	"testing"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
)

// TestTPClientLastMessageBeforeClose: a WebSocket client that sends a last
// message and its close frame at once (one read for the relay) has that
// message delivered to its server before ClientDisconnected, as it would
// be had the close come in a later read. The relay once dropped every
// payload that shared a read with the client's close frame.
func TestTPClientLastMessageBeforeClose(t *testing.T) {
	s := server(t, nil)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	cl := registerClient(t, s, client.NewUUID(), su, true)
	if m := srv.nextRPC(); m["notification"] != "TunnelProxy.ClientConnected" {
		t.Fatalf("server heard %v", m)
	}
	writeFrames(t, cl.c, ws.NewTextFrame([]byte("LAST-WORDS")), // both frames in one write
		ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")))
	var got []byte
	for {
		f, ok := srv.next()
		if !ok {
			t.Fatal("server connection closed")
		}
		if f[0] == 0 && f[1] == 0 {
			if bytes.Contains(f, []byte("TunnelProxy.ClientDisconnected")) {
				break
			}
			continue
		}
		got = append(got, f[2:]...)
	}
	if string(got) != "LAST-WORDS" {
		t.Fatalf("server got %q from the client before ClientDisconnected, want %q", got, "LAST-WORDS")
	}
}

// TestTPWebSocketDataWithRegistration: a WebSocket client that sends its
// first data in the same write as its RegisterClient (the relay reads both
// before the hand-over) has that data delivered to its server unchanged,
// as a raw TCP client's is; so does a WebSocket server's first SLIP frame
// sent with its RegisterServer. The relay once ran such early payload
// through the WebSocket decoder a second time.
func TestTPWebSocketDataWithRegistration(t *testing.T) {
	s := server(t, nil)
	// The server: RegisterServer and a Ping on address 0 in one write.
	sp := tpDial(t, s, true)
	su := client.NewUUID()
	reg, _ := json.Marshal(map[string]any{"id": 1, "method": "TunnelProxy.RegisterServer", "params": map[string]any{"serverName": "dev", "serverUuid": su}})
	ping := handshake.AppendSLIP(nil, 0, []byte(`{"id":2,"method":"TunnelProxy.Ping","params":{"timestamp":4242}}`+"\n"))
	writeFrames(t, sp.c, ws.NewTextFrame(append(reg, '\n')), ws.NewBinaryFrame(ping))
	if m, err := sp.readJSON(); err != nil || tpErr(m) != "TunnelProxyErrorNoError" {
		t.Fatalf("RegisterServer: %v %v", m, err)
	}
	sp.startReader(true)
	if m := sp.nextRPC(); m["id"] != float64(2) || m["params"].(map[string]any)["timestamp"] != float64(4242) {
		t.Fatalf("the server's first Ping, sent with its registration, answered %v", m)
	}
	// The client: RegisterClient and its first bytes in one write.
	cp := tpDial(t, s, true)
	cr, _ := json.Marshal(map[string]any{"id": 1, "method": "TunnelProxy.RegisterClient", "params": map[string]any{"clientName": "ui", "clientUuid": client.NewUUID(), "serverUuid": su}})
	writeFrames(t, cp.c, ws.NewTextFrame(append(cr, '\n')), ws.NewBinaryFrame([]byte("EARLY-BYTES")))
	if m, err := cp.readJSON(); err != nil || tpErr(m) != "TunnelProxyErrorNoError" {
		t.Fatalf("RegisterClient: %v %v", m, err)
	}
	if m := sp.nextRPC(); m["notification"] != "TunnelProxy.ClientConnected" {
		t.Fatalf("server heard %v", m)
	}
	var got []byte
	for len(got) < len("EARLY-BYTES") {
		f, ok := sp.next()
		if !ok {
			t.Fatal("server connection closed")
		}
		if f[0] == 0 && f[1] == 0 {
			t.Fatalf("server heard %q before the client's first bytes", f[2:])
		}
		got = append(got, f[2:]...)
	}
	if string(got) != "EARLY-BYTES" {
		t.Fatalf("server got %q, want %q", got, "EARLY-BYTES")
	}
}

// writeFrames writes frames, masked, in one write.
func writeFrames(t *testing.T, c net.Conn, frames ...ws.Frame) {
	t.Helper()
	var out bytes.Buffer
	for _, f := range frames {
		if err := ws.WriteFrame(&out, ws.MaskFrame(f)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
}
