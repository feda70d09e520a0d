package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// fakeRelay serves one connection at a time with serve, on loopback.
func fakeRelay(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return ln.Addr().String()
}

// layers are the lean clients' socket layers: Go's net, netpoll.
var layers = map[string]bool{"lean": false, "netpoll": true}

// TestSetupClientJudgesReplies: a lean client is paired only by a
// successful Authenticate reply followed by TunnelEstablished; anything
// else is an error that carries the relay's words.
func TestSetupClientJudgesReplies(t *testing.T) {
	const ok = `{"id":1,"params":{"authenticationError":"AuthenticationErrorNoError"},"status":"success"}` + "\n"
	const te = `{"id":0,"notification":"RemoteProxy.TunnelEstablished","params":{"name":"a","uuid":"x"}}` + "\n"
	cases := []struct {
		name, reply, wantErr string
	}{
		{"paired", ok + te, ""},
		{"paired after another notification", ok + `{"id":0,"notification":"RemoteProxy.Other","params":{}}` + "\n" + te, ""},
		{"refused", `{"id":1,"params":{"authenticationError":"AuthenticationErrorAuthenticationFailed"},"status":"success"}` + "\n", "AuthenticationFailed"},
		{"closing", ok + `{"id":0,"notification":"RemoteProxy.Closing","params":{"reason":"alone_timeout"}}` + "\n", "alone_timeout"},
		{"established before the reply", te, "before the Authenticate reply"},
		{"cut off", ok, "EOF"},
	}
	for layer, onNetpoll := range layers {
		for _, tc := range cases {
			t.Run(layer+"/"+tc.name, func(t *testing.T) {
				got := make(chan string, 1)
				host := fakeRelay(t, func(c net.Conn) {
					line, _ := bufio.NewReader(c).ReadString('\n')
					got <- line
					c.Write([]byte(tc.reply))
				})
				e, err := openSetupClient(context.Background(), host, "tcp", "b", "n1", onNetpoll)
				if err != nil {
					t.Fatal(err)
				}
				defer e.Close()
				if line := <-got; !strings.Contains(line, `"method":"Authentication.Authenticate"`) || !strings.Contains(line, `"nonce":"n1"`) {
					t.Fatalf("request %q", line)
				}
				err = e.awaitPartner()
				if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
					t.Fatalf("awaitPartner: %v, want %q", err, tc.wantErr)
				}
			})
		}
	}
}

// TestSetupClientWebSocket: a lean client's upgrade is checked (a wrong
// Sec-WebSocket-Accept is refused) and its frames are masked TEXT frames
// a WebSocket server reads.
func TestSetupClientWebSocket(t *testing.T) {
	for layer, onNetpoll := range layers {
		t.Run(layer, func(t *testing.T) { testSetupClientWebSocket(t, onNetpoll) })
	}
}

func testSetupClientWebSocket(t *testing.T, onNetpoll bool) {
	closed := make(chan error, 1) // what the server read after the tunnel
	host := fakeRelay(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := ws.Upgrade(c); err != nil {
			return
		}
		h, err := ws.ReadHeader(c)
		if err != nil || h.OpCode != ws.OpText || !h.Masked || !h.Fin {
			return
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c, p); err != nil {
			return
		}
		ws.Cipher(p, h.Mask, 0)
		if !strings.Contains(string(p), "Authentication.Authenticate") {
			return
		}
		for _, m := range []string{
			`{"id":1,"params":{"authenticationError":"AuthenticationErrorNoError"},"status":"success"}` + "\n",
			`{"id":0,"notification":"RemoteProxy.TunnelEstablished","params":{}}` + "\n",
		} {
			ws.WriteFrame(c, ws.NewTextFrame([]byte(m)))
		}
		if h, err := ws.ReadHeader(c); err != nil || h.OpCode != ws.OpClose {
			closed <- fmt.Errorf("after the tunnel: %v %v, want a close frame", h, err)
			return
		}
		closed <- nil
	})
	e, err := openSetupClient(context.Background(), host, "ws", "b", "n1", onNetpoll)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.awaitPartner(); err != nil {
		t.Fatal(err)
	}
	e.Close()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}

	bad := fakeRelay(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n"))
	})
	if _, err := openSetupClient(context.Background(), bad, "ws", "b", "n1", onNetpoll); err == nil || !strings.Contains(err.Error(), "Sec-WebSocket-Accept") {
		t.Fatalf("a wrong accept key: %v", err)
	}
}
