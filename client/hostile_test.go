package client

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestDialBoundsUpgradeResponse: a relay (or anything at the URL) that
// answers the WebSocket upgrade with a header line that never ends must
// not make Dial read it all into memory. The client once kept every byte
// of the line until Options.Timeout passed: a hostile relay could make it
// allocate gigabytes. Dial now gives up after maxUpgradeResponse bytes,
// long before the relay has written 64 MiB.
func TestDialBoundsUpgradeResponse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const endless = 64 << 20
	wrote := make(chan int, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			wrote <- -1
			return
		}
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			wrote <- -1
			return
		}
		n, _ := c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nX-Endless: "))
		chunk := []byte(strings.Repeat("a", 64<<10))
		for n < endless {
			k, err := c.Write(chunk)
			n += k
			if err != nil {
				break
			}
		}
		wrote <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = Dial(ctx, Options{URL: "ws://" + ln.Addr().String() + "/", Token: "T", Timeout: time.Minute})
	if err == nil {
		t.Fatal("Dial succeeded against an endless upgrade response")
	}
	if errors.Is(err, ErrTimeout) {
		t.Fatalf("Dial read until its timeout: %v", err)
	}
	if n := <-wrote; n >= endless {
		t.Fatalf("the client read all %d bytes of an endless header line (err %v)", n, err)
	}
	t.Logf("Dial: %v", err)
}
