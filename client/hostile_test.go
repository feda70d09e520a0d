package client

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
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

// TestTCPWriteCountsPartialWrite: over raw TCP a Write cut short by its
// deadline returns how many bytes went out, as net.Conn asks: a caller
// resuming after a timeout (or counting what it sent) must not send bytes
// twice. Write once returned 0 whatever the connection took.
func TestTCPWriteCountsPartialWrite(t *testing.T) {
	a, b := tcpPair(t) // b: the relay, not reading yet
	tun := &Tunnel{r: &Raw{conn: a, br: bufio.NewReader(a)}}
	type res struct {
		n   int
		err error
	}
	wrote := make(chan res, 1)
	go func() {
		n, err := tun.Write(make([]byte, 64<<20)) // far more than the socket buffers hold
		wrote <- res{n, err}
	}()
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil { // the Write has begun
		t.Fatal(err)
	}
	tun.SetWriteDeadline(time.Now())
	w := <-wrote
	n, err := w.n, w.err
	if err == nil {
		t.Fatal("a 64 MiB Write to a relay that does not read did not time out")
	}
	tun.Close()
	got, _ := io.Copy(io.Discard, b)
	if got++; int64(n) != got {
		t.Fatalf("Write returned %d (%v); the relay received %d bytes", n, err, got)
	}
}

// TestWSWriteAfterCutFrame: a Write that its deadline cuts in the middle
// of a WebSocket frame leaves the frame incomplete on the wire; anything
// written after it would land inside that frame's payload and the relay
// would pass the header and bytes of later frames to the partner as data.
// Later writes (and the reader's pongs) must fail instead. Write once
// succeeded once the deadline was lifted, corrupting the stream.
func TestWSWriteAfterCutFrame(t *testing.T) {
	a, b := tcpPair(t) // b: the relay, not reading yet
	tun := &Tunnel{r: &Raw{conn: a, br: bufio.NewReader(a), isWS: true}}
	tun.text.Binary = true
	wrote := make(chan error, 1)
	go func() {
		_, err := tun.Write(make([]byte, 64<<20)) // far more than the socket buffers hold
		wrote <- err
	}()
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil { // the frame has begun
		t.Fatal(err)
	}
	tun.SetWriteDeadline(time.Now())
	if err := <-wrote; err == nil {
		t.Fatal("a 64 MiB Write to a relay that does not read did not time out")
	}
	tun.SetWriteDeadline(time.Time{})
	go io.Copy(io.Discard, b) // the relay reads again
	if _, err := tun.Write([]byte("hello")); err == nil {
		t.Fatal("a Write after a cut frame succeeded: its frame went out inside the cut one's payload")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the Write after a cut frame says it timed out (a caller would retry): %v", err)
	}
	if err := tun.WriteMessage(ws.OpText, []byte("hello")); err == nil {
		t.Fatal("a WriteMessage after a cut frame succeeded")
	}
}

// TestDialErrorsHideURLToken: a URL that carries its token (?token=,
// ?ws_token=) and cannot be dialled for its form gives an error without
// the token: errors are logged, and Options.Token is never printed
// either. The parse error once quoted the whole URL.
func TestDialErrorsHideURLToken(t *testing.T) {
	for _, u := range []string{
		"ws://relay example:8443/?token=SECRET1&nonce=n",
		"ws://[::1/?ws_token=SECRET1",
		"wx://relay:8443/?token=SECRET1",
	} {
		_, err := Dial(context.Background(), Options{URL: u, Timeout: 5 * time.Second})
		if err == nil {
			t.Fatalf("%s: Dial succeeded", u)
		}
		if strings.Contains(err.Error(), "SECRET1") {
			t.Errorf("%s: the error shows the token: %v", u, err)
		}
	}
}
