package relay

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
)

func TestSmokeTCP(t *testing.T) {
	s := startServer(t, nil)
	for _, c := range []struct{ name, a, b string }{
		{"tcp-tcp", tcpURL(s), tcpURL(s)},
		{"ws-ws", wsURL(s), wsURL(s)},
		{"tcp-ws", tcpURL(s), wsURL(s)},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b := pair(t, c.a, c.b, "tok-"+c.name, "")
			if _, err := a.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(b, buf); err != nil {
				t.Fatal(err)
			}
			if string(buf) != "hello" {
				t.Fatalf("got %q", buf)
			}
			if _, err := b.Write([]byte("world")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(a, buf); err != nil {
				t.Fatal(err)
			}
			if string(buf) != "world" {
				t.Fatalf("got %q", buf)
			}
		})
	}
}

// TestClientSourceAddress: client.Options.LocalIP picks the source address
// (the bench harness spreads connections over 127.0.0.x with it).
func TestClientSourceAddress(t *testing.T) {
	s := startServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go client.Dial(ctx, client.Options{URL: tcpURL(s), Token: "src", LocalIP: net.IPv4(127, 0, 0, 7)})
	b, err := client.Dial(ctx, client.Options{URL: wsURL(s), Token: "src", LocalIP: net.IPv4(127, 0, 0, 9)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	waitFor(t, func() bool { return len(s.Snapshot().Tunnels) == 1 }, "tunnel")
	tu := s.Snapshot().Tunnels[0]
	got := tu.A.Address + " " + tu.B.Address
	if !strings.Contains(got, "127.0.0.7:") || !strings.Contains(got, "127.0.0.9:") {
		t.Fatalf("peer addresses %s", got)
	}
}
