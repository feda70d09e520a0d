package tunnelproxy

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
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
	var out bytes.Buffer
	for _, f := range []ws.Frame{
		ws.NewTextFrame([]byte("LAST-WORDS")),
		ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")),
	} {
		if err := ws.WriteFrame(&out, ws.MaskFrame(f)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.c.Write(out.Bytes()); err != nil { // both frames in one write
		t.Fatal(err)
	}
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
