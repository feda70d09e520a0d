package relay

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
)

// startServer starts a relay on a free loopback port with the dummy
// authenticator; mutate may change the config first.
func startServer(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.Auth = Dummy{}
	cfg.Loops = 2
	if os.Getenv("MEETPOINT_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	} else {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func wsURL(s *Server) string  { return "ws://" + s.Addrs()[0].String() + "/" }
func tcpURL(s *Server) string { return "tcp://" + s.Addrs()[0].String() }

// pair dials two clients with the same token (and nonce) concurrently and
// returns both tunnels.
func pair(t testing.TB, urlA, urlB, token, nonce string) (*client.Tunnel, *client.Tunnel) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		tun *client.Tunnel
		err error
	}
	ch := make(chan res, 1)
	go func() {
		tun, err := client.Dial(ctx, client.Options{URL: urlA, Token: token, Nonce: nonce, Name: "alice"})
		ch <- res{tun, err}
	}()
	b, err := client.Dial(ctx, client.Options{URL: urlB, Token: token, Nonce: nonce, Name: "bob"})
	if err != nil {
		t.Fatalf("dial b: %v", err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatalf("dial a: %v", r.err)
	}
	t.Cleanup(func() { r.tun.Close(); b.Close() })
	return r.tun, b
}
