package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// TestTunnelCloseAfterRelayClose: once the relay's close frame was read
// and answered, the client has sent its close frame and may send nothing
// more (RFC 6455, 5.5.1). Tunnel.Close still sent the held start of a
// cut UTF-8 character as a data frame, then a second close frame. Now
// every frame after the first close frame is refused: the relay sees the
// one close reply, then the end of the connection.
func TestTunnelCloseAfterRelayClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	after := make(chan []string, 1) // what the client sent after the relay's close frame
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		if _, err := ws.Upgrade(struct {
			io.Reader
			io.Writer
		}{br, c}); err != nil {
			return
		}
		if _, _, err := wsutil.ReadClientData(struct {
			io.Reader
			io.Writer
		}{br, c}); err != nil { // Authenticate
			return
		}
		for _, m := range []any{
			map[string]any{"id": 1, "status": "success", "params": map[string]any{"authenticationError": "AuthenticationErrorNoError"}},
			map[string]any{"id": 0, "notification": "RemoteProxy.TunnelEstablished", "params": map[string]any{"name": "peer", "uuid": "u"}},
		} {
			b, _ := json.Marshal(m)
			wsutil.WriteServerMessage(c, ws.OpText, append(b, '\n'))
		}
		wsutil.WriteServerMessage(c, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
		var got []string
		for {
			f, err := readFrame(br)
			if err != nil {
				break
			}
			got = append(got, fmt.Sprintf("%v %q", f.Header.OpCode, ws.UnmaskFrameInPlace(f).Payload))
		}
		after <- got
	}()
	tun, err := Dial(context.Background(), Options{URL: "ws://" + ln.Addr().String() + "/", Token: "t", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tun.Write([]byte("\xc3")); err != nil { // the start of "é": held for the next Write
		t.Fatal(err)
	}
	if _, err := tun.Read(make([]byte, 8)); err != io.EOF {
		t.Fatalf("Read after the relay's close: %v, want io.EOF", err)
	}
	tun.Close()
	got := <-after
	if len(got) != 1 || got[0] != fmt.Sprintf("%v %q", ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, "")) {
		t.Fatalf("after the relay's close frame the client sent %q, want its close reply only", got)
	}
}
