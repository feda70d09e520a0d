package relay

// Servers for the relay's tests (starting them, their addresses) and
// tunnels dialled with package client. The raw-protocol helpers (raw TCP
// and WebSocket, frames, JSON-RPC by hand, close checks) are in
// wire_helpers_test.go.

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// ---------------------------------------------------------------------------
// Servers.

// acceptAll accepts every token (the relay's own tests cannot use package
// auth, which imports relay).
type acceptAll struct{}

// Authenticate answers AuthNoError at once.
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

// shortTimeoutServer starts a relay that accepts every token (acceptAll)
// with short timeouts (InactiveTimeout 2 s, HandshakeTimeout 1 s,
// AloneTimeout 5 s), so that connections left hanging by a test, hostile
// input above all, are closed quickly; mutate runs last.
func shortTimeoutServer(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	return startServer(t, func(c *Config) {
		c.InactiveTimeout = 2 * time.Second
		c.HandshakeTimeout = time.Second
		c.AloneTimeout = 5 * time.Second
		if mutate != nil {
			mutate(c)
		}
	})
}

// legacyTestAuth is the authenticator of legacyServer. Tokens starting with
// "bad" fail; "hang" never answers; "async" answers NoError from another
// goroutine once gate is closed; "result-N" answers AuthResult(N); every
// other token is valid.
type legacyTestAuth struct {
	gate chan struct{}
}

// Authenticate answers as the token's prefix says (see legacyTestAuth).
func (a legacyTestAuth) Authenticate(_ context.Context, req AuthRequest, done func(AuthResult)) {
	switch {
	case strings.HasPrefix(req.Token, "bad"):
		done(AuthFailed)
	case strings.HasPrefix(req.Token, "hang"):
	case strings.HasPrefix(req.Token, "async"):
		go func() {
			<-a.gate
			done(AuthNoError)
		}()
	case strings.HasPrefix(req.Token, "result-"):
		var n int
		fmt.Sscanf(req.Token, "result-%d", &n)
		done(AuthResult(n))
	default:
		done(AuthNoError)
	}
}

// legacyServer starts a relay named "legacy-test-relay" whose tokens
// legacyTestAuth judges (so a test can ask for a failure, a hang or an
// asynchronous answer), with InactiveTimeout and AloneTimeout of 30 s: long
// enough for any pairing under load (a test of a timeout sets its own);
// mutate runs last.
func legacyServer(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	return startServer(t, func(c *Config) {
		c.Name = "legacy-test-relay"
		c.Auth = legacyTestAuth{gate: make(chan struct{})}
		c.InactiveTimeout = 30 * time.Second
		c.AloneTimeout = 30 * time.Second
		if mutate != nil {
			mutate(c)
		}
	})
}

// serverAddr is the host:port of the first address s listens on.
func serverAddr(s *Server) string { return s.Addrs()[0].String() }

// wsURL is the WebSocket URL of s.
func wsURL(s *Server) string { return "ws://" + serverAddr(s) + "/" }

// tcpURL is the raw-TCP URL of s.
func tcpURL(s *Server) string { return "tcp://" + serverAddr(s) }

// expectServes asserts that a fresh client is served over WebSocket and TCP.
func expectServes(t testing.TB, s *Server) {
	t.Helper()
	for _, u := range []string{wsURL(s), tcpURL(s)} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		p, err := client.Hello(ctx, client.Options{URL: u, Timeout: 5 * time.Second})
		cancel()
		if err != nil {
			t.Fatalf("fresh client on %s not served: %v", u, err)
		}
		if p["apiVersion"] != APIVersion {
			t.Fatalf("fresh client on %s: Hello params %v", u, p)
		}
	}
}

// ---------------------------------------------------------------------------
// Tunnels dialled with package client.

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

// tryPair is pair without t.Fatal: it reports a failed pairing.
func tryPair(urlA, urlB, token string) (*client.Tunnel, *client.Tunnel, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	defer cancel()
	return client.DialPair(ctx, client.Options{URL: urlA, Token: token, Name: "a"}, client.Options{URL: urlB, Token: token, Name: "b"})
}

// exchangeTagged sends a distinct message each way and checks it arrives.
func exchangeTagged(t testing.TB, a, b *client.Tunnel, tag string) {
	t.Helper()
	for _, d := range []struct {
		from, to *client.Tunnel
		msg      string
	}{{a, b, tag + ": a to b"}, {b, a, tag + ": b to a"}} {
		_ = d.from.SetDeadline(time.Now().Add(5 * time.Second))
		_ = d.to.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := d.from.Write([]byte(d.msg)); err != nil {
			t.Fatalf("%s: write: %v", tag, err)
		}
		buf := make([]byte, len(d.msg))
		if _, err := io.ReadFull(d.to, buf); err != nil {
			t.Fatalf("%s: read: %v", tag, err)
		}
		if string(buf) != d.msg {
			t.Fatalf("%s: got %q, want %q", tag, buf, d.msg)
		}
	}
}

// expectTunnelEOF asserts that the tunnel's next read reports the end of
// the connection within d.
func expectTunnelEOF(t testing.TB, tun *client.Tunnel, d time.Duration) {
	t.Helper()
	_ = tun.SetReadDeadline(time.Now().Add(d))
	n, err := tun.Read(make([]byte, 256))
	if n > 0 || !isClosed(err) {
		t.Fatalf("want EOF within %v, got %d bytes, err %v", d, n, err)
	}
}

// ---------------------------------------------------------------------------
// Polling and frames.

// waitFor polls cond (a func() bool, or a func() error returning nil once
// it holds) for up to testutil.Patience (testutil.WaitFor).
func waitFor[C func() bool | func() error](t testing.TB, cond C, what string) {
	t.Helper()
	testutil.WaitFor(t, cond, what)
}

// readFrame reads one frame, refusing payloads over 64 MiB.
func readFrame(r io.Reader) (ws.Frame, error) { return testutil.ReadFrame(r) }
