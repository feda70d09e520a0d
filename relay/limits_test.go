package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
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

// dialFrom dials the relay from the loopback address ip (another client
// address: 127.0.0.2, …).
func dialFrom(t *testing.T, s *Server, ip string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: testutil.Patience}
	c, err := d.Dial("tcp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// status sends one request on a fresh connection from ip and returns the
// answer's status line ("" when the relay closed without one).
func status(t *testing.T, s *Server, ip, req string) string {
	t.Helper()
	c := dialFrom(t, s, ip)
	c.Write([]byte(req))
	_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

// TestHTTPSlotsPerAddress: POST heads announcing large bodies that never
// come, from one address, neither take every HTTP slot (the address holds
// its share, HTTPMaxConnsPerIP; more get 429, and another address is
// served) nor hold theirs for good (HTTPBodyTimeout and HTTPMinBodyRate
// cut each, counted).
func TestHTTPSlotsPerAddress(t *testing.T) {
	cfg := LoopbackConfig(acceptAll{})
	cfg.Logger = testutil.Logger(t)
	noExempt(&cfg)
	cfg.HTTPMaxConns, cfg.HTTPMaxConnsPerIP = 8, 3
	cfg.HTTPBodyTimeout, cfg.HTTPMinBodyRate = time.Second, 1024
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Handle("/upload", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestTimeout)
			return
		}
		fmt.Fprintf(w, "%d bytes", n)
	}))
	s.Handle("/healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	const silent = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nx"
	var held []net.Conn
	for range 3 {
		c := dialFrom(t, s, "127.0.0.1")
		c.Write([]byte(silent))
		held = append(held, c)
	}
	waitFor(t, func() bool { return s.stats.httpConns.Get() == 3 }, "three silent bodies handed to net/http")
	if got := status(t, s, "127.0.0.1", silent); !strings.HasPrefix(got, "HTTP/1.1 429") {
		t.Errorf("a fourth from the same address: %q, want 429", got)
	}
	if got := status(t, s, "127.0.0.2", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); got != "HTTP/1.1 200 OK" {
		t.Errorf("another address while the first holds its share: %q, want 200", got)
	}
	for i, c := range held {
		_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
		line, _ := bufio.NewReader(c).ReadString('\n')
		if !strings.HasPrefix(line, "HTTP/1.1 408") {
			t.Errorf("silent body %d: %q, want a 408 from the handler once the body is too slow", i, line)
		}
		c.Close()
	}
	waitFor(t, func() bool { return s.stats.httpSlowBody.Get() == 3 }, "three slow bodies counted")
	if got := status(t, s, "127.0.0.1", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); got != "HTTP/1.1 200 OK" {
		t.Errorf("the first address once its connections are gone: %q, want 200", got)
	}
	// A body that keeps arriving faster than the minimum rate is fine,
	// however long it takes in all.
	c := dialFrom(t, s, "127.0.0.3")
	c.Write([]byte("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n"))
	for range 3 {
		c.Write(make([]byte, 3000))        // each earns ~2.9 s at 1024 B/s
		time.Sleep(500 * time.Millisecond) // 6 KB/s
	}
	_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
	if line, _ := bufio.NewReader(c).ReadString('\n'); line != "HTTP/1.1 200 OK\r\n" {
		t.Errorf("a body arriving at 6 KB/s for 1.5 s: %q, want 200", line)
	}
}

// TestTLSHandshakesPerAddress: ClientHellos that never finish, from one
// address, hold only its share of the TLS gate (MaxTLSHandshakesPerIP):
// more from it are refused (limit_tls_per_ip) while another address's
// handshake succeeds.
func TestTLSHandshakesPerAddress(t *testing.T) {
	s, _, _ := startTLSServer(t, func(c *Config) {
		noExempt(c)
		c.MaxTLSHandshakes, c.MaxTLSHandshakesPerIP = 4, 2
		c.TLSHandshakeTimeout = time.Minute // the stalled ones hold their slots
	})
	for range 2 {
		dialFrom(t, s, "127.0.0.1").Write([]byte{0x16, 0x03, 0x01}) // a ClientHello that never comes
	}
	waitFor(t, func() bool { return s.stats.tlsStarted.Get() == 2 }, "two stalled handshakes running")
	extra := dialFrom(t, s, "127.0.0.1")
	extra.Write([]byte{0x16, 0x03, 0x01})
	if !closedSoon(extra, testutil.Patience) {
		t.Fatal("a third stalled handshake from the same address was not refused")
	}
	waitFor(t, func() bool { return s.stats.closes[reason.LimitTLSPerIP].Get() == 1 }, "limit_tls_per_ip counted")
	tc := tls.Client(dialFrom(t, s, "127.0.0.2"), &tls.Config{InsecureSkipVerify: true})
	_ = tc.SetDeadline(time.Now().Add(testutil.Patience))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("another address's handshake while the first holds its share: %v", err)
	}
	tc.Close()
}

// TestHTTPUnreadBodyIsPaced: a body announced and never sent to a handler
// that does not read it (a health check, a 400 path, a 404, a 405, an
// answer past net/http's 2 KiB buffer) is paced all the same: net/http
// reads up to 256 KiB of what a handler left before it answers — after
// the handler, or inside its Write for a large answer — and without the
// body's deadline it would wait for it without end, holding the
// connection's HTTP slot for good. Each is answered and closed once
// HTTPBodyTimeout has passed, and the slots are free again.
func TestHTTPUnreadBodyIsPaced(t *testing.T) {
	cfg := LoopbackConfig(acceptAll{})
	cfg.Logger = testutil.Logger(t)
	noExempt(&cfg)
	cfg.HTTPMaxConns, cfg.HTTPMaxConnsPerIP = 5, 2
	cfg.HTTPBodyTimeout, cfg.HTTPMinBodyRate = 500*time.Millisecond, 1024
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }))
	page := strings.Repeat("p", 8<<10) // a page, /metrics, a listing
	s.Handle("GET /big", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, page) }))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	silent := map[string]string{ // 100 kB announced (under net/http's 256 KiB), one byte sent
		"HTTP/1.1 200":        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx",
		"HTTP/1.1 400":        "GET /a%2fb HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx",
		"HTTP/1.1 404":        "GET /nothing-here HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx",
		"HTTP/1.1 405":        "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nx",
		"HTTP/1.1 200 OK\r\n": "GET /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx",
	}
	ips := []string{"127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.3"}
	held := map[string]net.Conn{}
	for want, req := range silent {
		c := dialFrom(t, s, ips[len(held)])
		c.Write([]byte(req))
		held[want] = c
	}
	for want, c := range held {
		_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
		got, err := io.ReadAll(c)
		if !strings.HasPrefix(string(got), want) || err != nil {
			t.Errorf("%.30q: %.40q %v, want %s… and a close", silent[want], got, err, want)
		}
		c.Close()
	}
	waitFor(t, func() bool { return s.handoffs[handoffHTTP].Active.Load() == 0 }, "every HTTP slot free")
	if got := status(t, s, "127.0.0.4", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); got != "HTTP/1.1 200 OK" {
		t.Errorf("a health check after: %q, want 200", got)
	}
}

// TestHTTPUnreadSlowBodyCounted: a body cut for its pace while net/http
// reads it (the handler left it: a health check, a 404, an answer past
// net/http's 2 KiB buffer) is counted in meetpoint_http_slow_bodies_total
// as one a handler reads is (docs/security.md: the counter is the
// refusal's trace), and a body that arrives whole, read or not, is not.
func TestHTTPUnreadSlowBodyCounted(t *testing.T) {
	cfg := LoopbackConfig(acceptAll{})
	cfg.Logger = testutil.Logger(t)
	cfg.HTTPBodyTimeout, cfg.HTTPMinBodyRate = 500*time.Millisecond, 1024
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }))
	page := strings.Repeat("p", 8<<10)
	s.Handle("GET /big", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, page) }))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ask := func(req string) string {
		t.Helper()
		c := dialFrom(t, s, "127.0.0.1")
		defer c.Close()
		c.Write([]byte(req))
		_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
		got, _ := io.ReadAll(c)
		line, _, _ := strings.Cut(string(got), "\r\n")
		return line
	}
	// Whole bodies, left unread by the handler: not slow.
	for _, req := range []string{
		"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
		"GET /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
	} {
		if got := ask(req); got == "" {
			t.Fatalf("%.30q: no answer", req)
		}
	}
	// Announced and never sent: each cut after HTTPBodyTimeout, each counted.
	cut := []string{
		"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx",
		"GET /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx",
		"GET /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx",
	}
	for _, req := range cut {
		if got := ask(req); got == "" {
			t.Fatalf("%.30q: no answer", req)
		}
	}
	waitFor(t, func() bool { return s.stats.httpSlowBody.Get() >= uint64(len(cut)) }, "every body cut for its pace counted")
	if got := s.stats.httpSlowBody.Get(); got != uint64(len(cut)) {
		t.Errorf("meetpoint_http_slow_bodies_total = %d, want %d (the whole bodies are not slow)", got, len(cut))
	}
}

// TestAuthFailuresOverHTTP: a wrong secret in an HTTP request (here an
// admin key, RequireBearer) counts toward the address's ban as a refused
// Authenticate does: past AuthFailuresPerIP the address is banned, its
// next request on the connection it holds is answered 403 and closed, and
// its new connections are refused. A request without a secret is no
// guess and is not counted; another address is served.
func TestAuthFailuresOverHTTP(t *testing.T) {
	cfg := LoopbackConfig(acceptAll{})
	cfg.Logger = testutil.Logger(t)
	noExempt(&cfg)
	cfg.Limits.AuthFailuresPerIP = 3
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Handle("GET /admin", RequireBearer("right-key", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ask := func(c net.Conn, br *bufio.Reader, key string) *http.Response {
		t.Helper()
		req := "GET /admin HTTP/1.1\r\nHost: x\r\n"
		if key != "" {
			req += "Authorization: Bearer " + key + "\r\n"
		}
		c.Write([]byte(req + "\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		return resp
	}
	// No secret at all, many times: never a ban.
	c := dialFrom(t, s, "127.0.0.4")
	br := bufio.NewReader(c)
	for range 10 {
		if resp := ask(c, br, ""); resp.StatusCode != 401 {
			t.Fatalf("no key: %d, want 401", resp.StatusCode)
		}
	}
	if resp := ask(c, br, "right-key"); resp.StatusCode != 200 {
		t.Fatalf("the right key after requests without one: %d, want 200", resp.StatusCode)
	}
	// Wrong keys on one kept-alive connection.
	c = dialFrom(t, s, "127.0.0.2")
	br = bufio.NewReader(c)
	for i := range 4 {
		if resp := ask(c, br, "guess"); resp.StatusCode != 401 {
			t.Fatalf("guess %d: %d, want 401", i, resp.StatusCode)
		}
	}
	if resp := ask(c, br, "right-key"); resp.StatusCode != 403 || !resp.Close {
		t.Fatalf("the right key after four guesses, same connection: %d (close %v), want 403 and a close", resp.StatusCode, resp.Close)
	}
	if got := status(t, s, "127.0.0.2", "GET /admin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer right-key\r\n\r\n"); got != "" {
		t.Errorf("a new connection from the banned address: %q, want it refused", got)
	}
	if got := status(t, s, "127.0.0.3", "GET /admin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer right-key\r\n\r\n"); got != "HTTP/1.1 200 OK" {
		t.Errorf("another address: %q, want 200", got)
	}
	if b, h := s.stats.bans.Get(), s.stats.httpBanned.Get(); b != 1 || h != 1 {
		t.Errorf("bans %d, requests refused as banned %d; want 1, 1", b, h)
	}
}

// storeDown is an authenticator whose store (Redis, a webhook) cannot be
// reached: it checks no token and answers ProxyError.
type storeDown struct{}

func (storeDown) Authenticate(_ context.Context, _ AuthRequest, done func(AuthResult)) {
	done(AuthProxyError)
}

// TestAuthOutageIsNoGuess: an authenticator that cannot answer (its store
// down) refused no token, so its answers count as errors, not toward the
// address's ban: clients retrying through an outage (or many behind one
// NAT) are not banned for longer than the outage lasts.
func TestAuthOutageIsNoGuess(t *testing.T) {
	s := startServer(t, func(c *Config) {
		noExempt(c)
		c.Auth = storeDown{}
		c.Limits.AuthFailuresPerIP = 3
	})
	for i := range 6 {
		c, err := net.Dial("tcp", serverAddr(s))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"x","token":"good-token","nonce":"n"}}`+"\n")
		_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if !strings.Contains(line, "AuthenticationErrorProxyError") {
			t.Fatalf("attempt %d: %q", i, line)
		}
	}
	if b, e, f := s.stats.bans.Get(), s.stats.authError.Get(), s.stats.authFail.Get(); b != 0 || e != 6 || f != 0 {
		t.Fatalf("after 6 answers from an authenticator that could not check: %d bans, %d errors, %d failures; want 0, 6, 0", b, e, f)
	}
}

// oneSecret accepts one token, "tok-0077".
type oneSecret struct{}

func (oneSecret) Authenticate(_ context.Context, r AuthRequest, done func(AuthResult)) {
	if r.Token == "tok-0077" {
		done(AuthNoError)
	} else {
		done(AuthFailed)
	}
}

// TestBanReachesOpenConnections: an address that opened its connections
// before guessing has its guesses judged only until its ban: the rest,
// the right token among them, are refused unjudged (closed as banned),
// and the address is banned once.
func TestBanReachesOpenConnections(t *testing.T) {
	const n = 100
	s := startServer(t, func(c *Config) {
		noExempt(c)
		c.Auth = oneSecret{}
		c.Limits.AuthFailuresPerIP = 5
	})
	conns := make([]net.Conn, 0, n)
	for range n { // all admitted before any guess
		c, err := net.Dial("tcp", serverAddr(s))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	waitFor(t, func() bool { return s.Stats().Accepted == n }, "every connection accepted")
	for i, c := range conns {
		fmt.Fprintf(c, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u%d","name":"x","token":"tok-%04d","nonce":"n"}}`+"\n", i, i)
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
		line, _ := bufio.NewReader(c).ReadString('\n')
		if i == 77 && !strings.Contains(line, "AuthenticationErrorAuthenticationFailed") {
			t.Errorf("the right token, sent after the address's ban: %q, want refused", line)
		}
	}
	// A guess already being judged on another loop when the ban fell may
	// still be counted: at most one per loop past the limit.
	if f := s.stats.authFail.Get(); f > uint64(5+1+s.cfg.Loops) {
		t.Errorf("%d guesses judged, want at most the limit (5) and one a loop past it", f)
	}
	if b := s.stats.bans.Get(); b != 1 {
		t.Errorf("%d bans, want 1", b)
	}
	waitFor(t, func() bool { return s.Stats().Closes["banned"] >= n-6-uint64(s.cfg.Loops) }, "the unjudged closed as banned")
}

// TestLimitRefusalsLogBounded: refusals at a connection limit are all
// counted, but a storm of them is one warning (then one every 10 s), not
// one line each; each is logged at debug.
func TestLimitRefusalsLogBounded(t *testing.T) {
	logs := &testutil.Tail{}
	s := startServer(t, func(c *Config) {
		noExempt(c)
		c.Limits.MaxConnsPerIP = 1
		c.Logger = faultLogger(t, logs)
	})
	dialFrom(t, s, "127.0.0.2") // held: the address's one connection
	waitFor(t, func() bool { return s.Stats().Accepted == 1 }, "the first connection accepted")
	start := time.Now()
	for range 50 {
		dialFrom(t, s, "127.0.0.2").Close()
	}
	waitFor(t, func() bool { return s.Stats().Closes["limit_conns_per_ip"] == 50 }, "50 refusals counted")
	most := 1 + int(time.Since(start)/(10*time.Second)) // one more for each 10 s a slow machine took
	text := logs.String()
	if w, d := strings.Count(text, "level=WARN msg=\"connection refused at a limit"), strings.Count(text, "level=DEBUG msg=\"connection refused\""); w < 1 || w > most || w+d != 50 {
		t.Fatalf("50 refusals at a limit logged %d warnings and %d debug lines, want 1 (at most %d) and the rest at debug", w, d, most)
	}
}

// reloadFails is a Reloader that cannot stage and whose reload fails: an
// authenticator written against the Reloader interface alone.
type reloadFails struct{ acceptAll }

func (reloadFails) Reload() error { return errors.New("token store unreadable") }

// TestReloadReportsAPlainReloadersError: a Reloader that cannot stage
// reloads at once, and its error is the reload's (nothing staged is put
// in force after it).
func TestReloadReportsAPlainReloadersError(t *testing.T) {
	cfg := LoopbackConfig(reloadFails{})
	cfg.Logger = testutil.Logger(t)
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "token store unreadable") {
		t.Fatalf("Server.Reload() = %v for an authenticator whose Reload failed, want its error", err)
	}
}

// TestHTTPBodyReadLate: a handler that reads its body only after work
// longer than HTTPBodyTimeout, from a client that sends it steadily (20
// KiB/s, twenty times HTTPMinBodyRate), gets it whole over HTTP/1.1 and
// HTTP/2 alike: the body's clock starts at the handler's first read (an
// HTTP/2 stream's timer, once set, would not move for it).
func TestHTTPBodyReadLate(t *testing.T) {
	cfg, conf := tlsLoopbackConfig(t)
	noExempt(&cfg)
	cfg.HTTPBodyTimeout, cfg.HTTPMinBodyRate = 300*time.Millisecond, 1024
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Handle("POST /work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(800 * time.Millisecond) // e.g. an upstream dial, an auth lookup
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, fmt.Sprintf("read %d: %v", len(b), err), 400)
			return
		}
		fmt.Fprintf(w, "got %d", len(b))
	}))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "http1.1", true: "http2"}[h2], func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: conf.Clone(), ForceAttemptHTTP2: h2}
			if !h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			defer tr.CloseIdleConnections()
			pr, pw := io.Pipe()
			go func() { // 30 KiB over 1.5 s
				chunk := bytes.Repeat([]byte("b"), 1024)
				for range 30 {
					if _, err := pw.Write(chunk); err != nil {
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
				pw.Close()
			}()
			req, _ := http.NewRequest("POST", "https://"+s.Addrs()[0].String()+"/work", pr)
			req.ContentLength = 30 << 10
			resp, err := (&http.Client{Transport: tr, Timeout: testutil.Patience}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "got 30720" {
				t.Fatalf("%s: a steady 20 KiB/s body read after 800 ms of work: %d %q", resp.Proto, resp.StatusCode, body)
			}
		})
	}
}

// TestRequireBearerSchemeAnyCase: an HTTP authentication scheme is
// case-insensitive (RFC 7235 §2.1; RFC 6750's "Bearer" with it), and
// clients and libraries send "bearer KEY": the right admin key so sent is
// served — not refused with 401 and counted as a guess toward a ban of
// the backend's address. A wrong key in any case is still a guess.
func TestRequireBearerSchemeAnyCase(t *testing.T) {
	cfg := LoopbackConfig(acceptAll{})
	cfg.Logger = testutil.Logger(t)
	noExempt(&cfg)
	cfg.Limits.AuthFailuresPerIP = 3
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Handle("GET /admin", RequireBearer("right-key", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := dialFrom(t, s, "127.0.0.5")
	br := bufio.NewReader(c)
	ask := func(auth string) int {
		t.Helper()
		c.Write([]byte("GET /admin HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + "\r\n\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	for _, auth := range []string{"bearer right-key", "BEARER right-key", "Bearer right-key", "bEaReR right-key"} {
		if code := ask(auth); code != 200 {
			t.Errorf("%q: %d, want 200", auth, code)
		}
	}
	if code := ask("bearer guess"); code != 401 {
		t.Errorf("a wrong key: %d, want 401", code)
	}
	if b := s.stats.bans.Get(); b != 0 {
		t.Errorf("%d bans after the right key in four spellings and one guess; want 0", b)
	}
}
