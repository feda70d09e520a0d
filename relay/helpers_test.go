package relay

import (
	"context"
	"io"
	"testing"

	"github.com/gobwas/ws"
	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// acceptAll accepts every token (the relay's own tests cannot use package
// auth, which imports relay).
type acceptAll struct{}

func (acceptAll) Authenticate(_ context.Context, _ AuthRequest, done func(AuthResult)) {
	done(AuthNoError)
}

// startServer starts a relay on a free loopback port that accepts every
// token; mutate may change the config first.
func startServer(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	return startServerWith(t, mutate, nil)
}

// startServerWith is startServer with before (if not nil) run on the
// server before it starts: a fleet, method handlers.
func startServerWith(t testing.TB, mutate func(*Config), before func(*Server)) *Server {
	t.Helper()
	cfg := LoopbackConfig(acceptAll{})
	cfg.Logger = testutil.Logger(t)
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := NewServer(cfg)
	if err == nil && before != nil {
		before(s)
	}
	if err == nil {
		err = s.Start()
	}
	if err != nil {
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
	return dialPair(t, client.Options{URL: urlA, Token: token, Nonce: nonce, Name: "alice"},
		client.Options{URL: urlB, Token: token, Nonce: nonce, Name: "bob"})
}

// dialPair dials a and b concurrently (testutil.DialPair).
func dialPair(t testing.TB, a, b client.Options) (*client.Tunnel, *client.Tunnel) {
	t.Helper()
	return testutil.DialPair(t, a, b)
}

// waitFor polls cond (a func() bool, or a func() error returning nil once
// it holds) for up to testutil.Patience (testutil.WaitFor).
func waitFor[C func() bool | func() error](t testing.TB, cond C, what string) {
	t.Helper()
	testutil.WaitFor(t, cond, what)
}

// readFrame reads one frame, refusing payloads over 64 MiB.
func readFrame(r io.Reader) (ws.Frame, error) { return testutil.ReadFrame(r) }
