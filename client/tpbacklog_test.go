package client_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestTPServerFullBacklog: a TPServer keeps the clients that arrived for
// Accept, 64 at most. When the application stopped calling Accept, the
// 65th ClientConnected blocked the server's one read loop with no limit
// (StallTimeout does not cover it): no client's data moved, and the relay
// ended up dropping the whole server for its write stall. Now a client
// arriving at a full backlog is disconnected at once (its remote sees the
// tunnel end; Refused counts it) and the server goes on: the clients
// kept are accepted later and exchange data.
func TestTPServerFullBacklog(t *testing.T) {
	s := tpRelay(t)
	url := relaytest.TCPURL(s)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dev, su := tpDevice(t, ctx, url)
	var remotes []*client.Tunnel
	for range 65 { // nobody calls Accept meanwhile
		r, err := client.DialTPClient(ctx, client.TPOptions{URL: url, ServerUUID: su})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		remotes = append(remotes, r)
	}
	last := remotes[64]
	last.SetReadDeadline(time.Now().Add(relaytest.Patience))
	if n, err := last.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the client beyond the backlog: Read %d, %v; want io.EOF (disconnected on arrival)", n, err)
	}
	if n := dev.Refused(); n != 1 {
		t.Errorf("Refused() = %d, want 1", n)
	}
	if _, err := remotes[0].Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	c, err := dev.Accept()
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("the first client's data: %q, %v", got, err)
	}
	if _, err := c.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	remotes[0].SetReadDeadline(time.Now().Add(relaytest.Patience))
	if _, err := io.ReadFull(remotes[0], got); err != nil || string(got) != "pong" {
		t.Fatalf("the first client's reply: %q, %v", got, err)
	}
}
