package relay

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// closedSoon reports whether the server closes c within d.
func closedSoon(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return err != nil
}

func noExempt(c *Config) { c.Limits.Exempt = nil }

func TestLimitConnsPerIP(t *testing.T) {
	s := startServer(t, func(c *Config) { noExempt(c); c.Limits.MaxConnsPerIP = 3 })
	addr := s.Addrs()[0].String()
	var held []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	waitFor(t, func() bool { return len(s.Snapshot().Clients) == 3 }, "3 connections tracked")
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if !closedSoon(extra, 2*time.Second) {
		t.Fatal("4th connection from one address was not refused")
	}
	if got := s.Stats().Closes["limit_conns_per_ip"]; got != 1 {
		t.Fatalf("limit_conns_per_ip = %d", got)
	}
	held[0].Close()
	waitFor(t, func() bool { return len(s.Snapshot().Clients) == 2 }, "closed connection released")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := client.Hello(ctx, client.Options{URL: tcpURL(s)}); err != nil {
		t.Fatalf("connection after one was released: %v", err)
	}
}

func TestLimitConnsTotal(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Limits.MaxConns = 2 }) // loopback exempt from per-IP, not from the total
	addr := s.Addrs()[0].String()
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	waitFor(t, func() bool { return len(s.Snapshot().Clients) == 2 }, "2 connections tracked")
	extra, _ := net.Dial("tcp", addr)
	defer extra.Close()
	if !closedSoon(extra, 2*time.Second) {
		t.Fatal("connection beyond MaxConns not refused")
	}
	if s.Stats().Closes["limit_conns"] != 1 {
		t.Fatal("limit_conns not counted")
	}
}

func TestLimitConnRate(t *testing.T) {
	s := startServer(t, func(c *Config) { noExempt(c); c.Limits.ConnRatePerIP = 5 })
	addr := s.Addrs()[0].String()
	var conns []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	refused := 0
	for _, c := range conns {
		if closedSoon(c, 100*time.Millisecond) {
			refused++
		}
	}
	// Burst 10, refill 5/s over the ~run: at least a few must be refused.
	if refused < 3 || s.Stats().Closes["limit_rate"] == 0 {
		t.Fatalf("refused %d of 20 at 5/s (counter %d)", refused, s.Stats().Closes["limit_rate"])
	}
}

func TestBanAfterAuthFailures(t *testing.T) {
	s := startServer(t, func(c *Config) {
		noExempt(c)
		c.Auth = rejectAuth{}
		c.Limits.AuthFailuresPerIP = 2
		c.Limits.BanTime = 500 * time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 3 {
		_, err := client.Dial(ctx, client.Options{URL: tcpURL(s), Token: "bad"})
		if err == nil || !strings.Contains(err.Error(), "AuthenticationFailed") {
			t.Fatalf("want auth failure, got %v", err)
		}
	}
	c, _ := net.Dial("tcp", s.Addrs()[0].String())
	if !closedSoon(c, 2*time.Second) {
		t.Fatal("banned address admitted")
	}
	c.Close()
	if st := s.Stats(); st.Closes["banned"] != 1 {
		t.Fatalf("banned counter %d", st.Closes["banned"])
	}
	time.Sleep(600 * time.Millisecond)
	if _, err := client.Hello(ctx, client.Options{URL: tcpURL(s)}); err != nil {
		t.Fatalf("after the ban expired: %v", err)
	}
}

type rejectAuth struct{}

func (rejectAuth) Authenticate(_ context.Context, _ AuthRequest, done func(AuthResult)) {
	done(AuthFailed)
}

func TestHandshakeTimeout(t *testing.T) {
	// Only the handshake timeout can close this client.
	s := startServer(t, func(c *Config) { c.HandshakeTimeout, c.InactiveTimeout = 200*time.Millisecond, time.Hour })
	c, err := net.Dial("tcp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")) // never finished
	if !closedSoon(c, testutil.Patience) {
		t.Fatal("slow HTTP head not closed")
	}
	waitFor(t, func() bool { return s.Stats().Closes["handshake_timeout"] == 1 }, "handshake_timeout counted")
}

// TestTunnelRate: a rate-limited tunnel delivers everything, no faster than
// the rate allows (a lower bound only: slowness cannot fail it).
func TestTunnelRate(t *testing.T) {
	const rate = 400 << 10
	s := startServer(t, func(c *Config) { c.Limits.TunnelRate = rate })
	a, b := pair(t, tcpURL(s), tcpURL(s), "rate", "")
	payload := make([]byte, 1<<20)
	start := time.Now()
	go func() { a.Write(payload) }()
	if _, err := io.ReadFull(b, make([]byte, len(payload))); err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	min := time.Duration(float64(len(payload)-rate/4) / rate * float64(time.Second) * 0.8)
	if el < min {
		t.Fatalf("1 MiB at %d B/s took %v, expected at least %v", rate, el, min)
	}
	if s.Stats().Closes == nil || s.stats.throttled.Get() == 0 {
		t.Fatal("no throttling counted")
	}
}

// TestSetLimits: limits change while the server runs.
func TestSetLimits(t *testing.T) {
	s := startServer(t, noExempt)
	addr := s.Addrs()[0].String()
	a, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	waitFor(t, func() bool { return len(s.Snapshot().Clients) == 1 }, "first connection tracked")
	lim := s.cfg.Limits
	lim.MaxConnsPerIP = 1
	if err := s.SetLimits(lim); err != nil {
		t.Fatal(err)
	}
	b, _ := net.Dial("tcp", addr)
	defer b.Close()
	if !closedSoon(b, 2*time.Second) {
		t.Fatal("new limit not applied")
	}
	lim.MaxConnsPerIP = -1
	if err := s.SetLimits(lim); err == nil {
		t.Fatal("invalid limits accepted")
	}
}
