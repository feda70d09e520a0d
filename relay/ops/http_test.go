package ops

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// opsGet sends one plain HTTP/1.1 request over a bare TCP connection to the
// relay port and returns the status code, headers and body.
func opsGet(t testing.TB, addr, method, path string) (int, http.Header, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: test\r\n\r\n", method, path, addr)
	req, _ := http.NewRequest(method, "http://"+addr+path, nil)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

// opsMetrics scrapes /metrics on the relay port into name{labels} → value.
func opsMetrics(t testing.TB, s *relay.Server) map[string]float64 {
	t.Helper()
	code, h, body := opsGet(t, s.Addrs()[0].String(), "GET", "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: status %d: %s", code, body)
	}
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("/metrics: content type %q", ct)
	}
	return parseProm(t, body)
}

func parseProm(t testing.TB, body string) map[string]float64 {
	t.Helper()
	out := make(map[string]float64)
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("bad metrics line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func opsEcho(t testing.TB, from, to *client.Tunnel, msg string) {
	t.Helper()
	if _, err := from.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	_ = to.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(to, buf); err != nil {
		t.Fatal(err)
	}
	_ = to.SetReadDeadline(time.Time{})
	if string(buf) != msg {
		t.Fatalf("got %q, want %q", buf, msg)
	}
}

// waitMetric polls /metrics until name has value want.
func waitMetric(t testing.TB, s *relay.Server, name string, want float64) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(relaytest.Patience)
	for {
		m := opsMetrics(t, s)
		if m[name] == want {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", name, m[name], want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestOpsMetricsFollowTunnels(t *testing.T) {
	s := server(t, nil)
	m0 := opsMetrics(t, s)
	for _, name := range []string{
		`meetpoint_tunnels_active`, `meetpoint_tunnels_total`,
		`meetpoint_connections_active{transport="tcp"}`, `meetpoint_connections_active{transport="websocket"}`,
		`meetpoint_tunnel_bytes_total{direction="a_to_b"}`, `meetpoint_tunnel_bytes_total{direction="b_to_a"}`,
		`meetpoint_auth_total{result="ok"}`, `meetpoint_closes_total{reason="alone_timeout"}`,
		`meetpoint_forwarded_bytes_total{path="splice"}`, `meetpoint_forwarded_bytes_total{path="buffered"}`,
		`meetpoint_tls_handshakes_total{result="ok"}`, `meetpoint_ready`,
		`go_goroutines`, `process_resident_memory_bytes`,
	} {
		if _, ok := m0[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if m0[`meetpoint_tunnels_active`] != 0 || m0[`meetpoint_ready`] != 1 {
		t.Fatalf("fresh server: tunnels_active %v ready %v", m0[`meetpoint_tunnels_active`], m0[`meetpoint_ready`])
	}

	a, b := relaytest.Pair(t, relaytest.TCPURL(s), relaytest.WSURL(s), "ops-metrics", "")
	m1 := waitMetric(t, s, `meetpoint_tunnels_active`, 1)
	if m1[`meetpoint_tunnels_total`] != m0[`meetpoint_tunnels_total`]+1 {
		t.Fatalf("tunnels_total %v → %v", m0[`meetpoint_tunnels_total`], m1[`meetpoint_tunnels_total`])
	}
	if got := m1[`meetpoint_auth_total{result="ok"}`]; got < 2 {
		t.Fatalf("auth ok = %v, want ≥ 2", got)
	}
	if m1[`meetpoint_connections_active{transport="tcp"}`] < 1 || m1[`meetpoint_connections_active{transport="websocket"}`] < 1 {
		t.Fatalf("connections_active: %v", m1)
	}
	if c := m1[`meetpoint_pairing_seconds_count`]; c < 1 {
		// VictoriaMetrics histograms expose _count and _sum.
		t.Fatalf("pairing_seconds_count = %v", c)
	}

	// Counters are live: bytes show up while the tunnel is still open.
	// Which client is "a" (the first to arrive) is a race, so the test only
	// knows that one direction carries what tunnel a sent (1000 bytes, raw
	// TCP) and the other what b sent (300 bytes in one WebSocket frame: 308
	// bytes read from the socket, frame header included).
	ab, ba := `meetpoint_tunnel_bytes_total{direction="a_to_b"}`, `meetpoint_tunnel_bytes_total{direction="b_to_a"}`
	opsEcho(t, a, b, strings.Repeat("x", 1000))
	opsEcho(t, b, a, strings.Repeat("y", 300))
	var fromA string
	deadline := time.Now().Add(relaytest.Patience)
	for fromA == "" {
		m := opsMetrics(t, s)
		dab, dba := m[ab]-m1[ab], m[ba]-m1[ba]
		switch {
		case dab == 1000 && dba == 308:
			fromA = ab
		case dab == 308 && dba == 1000:
			fromA = ba
		case time.Now().After(deadline):
			t.Fatalf("bytes moved by %v and %v, want 1000 and 308", dab, dba)
		default:
			time.Sleep(20 * time.Millisecond)
		}
	}
	if m2 := opsMetrics(t, s); m2[`meetpoint_tunnels_active`] != 1 {
		t.Fatalf("tunnels_active = %v while the tunnel is open", m2[`meetpoint_tunnels_active`])
	}
	opsEcho(t, a, b, strings.Repeat("z", 5000))
	waitMetric(t, s, fromA, m1[fromA]+6000)

	a.Close()
	b.Close()
	m3 := waitMetric(t, s, `meetpoint_tunnels_active`, 0)
	if m3[`meetpoint_tunnels_total`] != m1[`meetpoint_tunnels_total`] {
		t.Fatalf("tunnels_total moved on close: %v → %v", m1[`meetpoint_tunnels_total`], m3[`meetpoint_tunnels_total`])
	}
	// A close reason is counted when its socket is closed, which may come
	// after the tunnel's end is: wait for it (a loaded machine showed 0
	// with tunnels_active already 0).
	relaytest.WaitFor(t, func() error {
		if n := opsMetrics(t, s)[`meetpoint_closes_total{reason="peer_closed"}`]; n < 1 {
			return fmt.Errorf("closes_total{peer_closed} = %v", n)
		}
		return nil
	}, "the tunnel's close counted as peer_closed")
}

func TestOpsHTTPEndpoints(t *testing.T) {
	s := server(t, nil)
	addr := s.Addrs()[0].String()
	for _, c := range []struct {
		method, path string
		code         int
		body         string // prefix
	}{
		{"GET", "/healthz", 200, "ok"},
		{"GET", "/readyz", 200, "ready"},
		{"GET", "/readyz?verbose=1", 200, "ready"},
		{"GET", "/", 404, "meetpoint relay"}, // the page is relay/web's, not registered here
		{"GET", "/nope", 404, "meetpoint relay"},
		{"GET", "/debug/pprof/", 404, "meetpoint relay"}, // pprof only on the admin listener
		{"POST", "/metrics", 405, "method not allowed"},
		{"DELETE", "/healthz", 405, "method not allowed"},
		{"GET", "/metrics", 200, "# HELP meetpoint_"},
	} {
		code, _, body := opsGet(t, addr, c.method, c.path)
		if code != c.code || !strings.HasPrefix(body, c.body) {
			t.Errorf("%s %s: %d %q, want %d %q…", c.method, c.path, code, body, c.code, c.body)
		}
	}
	code, h, body := opsGet(t, addr, "HEAD", "/metrics")
	if code != 200 || body != "" || h.Get("Content-Length") == "" {
		t.Errorf("HEAD /metrics: %d %q %v", code, body, h)
	}
	// The relay still works after serving HTTP.
	a, b := relaytest.Pair(t, relaytest.TCPURL(s), relaytest.TCPURL(s), "ops-http", "")
	opsEcho(t, a, b, "still relaying")
}

func TestOpsAdminHandler(t *testing.T) {
	s := server(t, nil)
	hs := httptest.NewServer(AdminHandler(s, nil))
	defer hs.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "meetpoint_tunnels_active 0") ||
		!strings.Contains(body, "process_cpu_seconds_total") {
		t.Fatalf("/metrics: %d %q", code, body)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 200 || body != "ready\n" {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	if code, body := get("/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("/debug/pprof/: %d", code)
	}
	if code, _ := get("/debug/pprof/goroutine?debug=1"); code != 200 {
		t.Fatalf("/debug/pprof/goroutine: %d", code)
	}
	if code, _ := get("/elsewhere"); code != 404 {
		t.Fatalf("/elsewhere: %d", code)
	}
	resp, err := http.Post(hs.URL+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Fatalf("POST /metrics: %d", resp.StatusCode)
	}
}

// A tunnel keeps forwarding while Shutdown waits; readyz says draining;
// Shutdown returns as soon as the last tunnel ends by itself.
func TestOpsDrainTunnelEndsByItself(t *testing.T) {
	s := server(t, nil)
	hs := httptest.NewServer(AdminHandler(s, nil))
	defer hs.Close()
	a, b := relaytest.Pair(t, relaytest.TCPURL(s), relaytest.WSURL(s), "ops-drain-early", "")
	opsEcho(t, a, b, "before")

	done := make(chan error, 1)
	start := time.Now()
	go func() {
		// Out of reach: Shutdown returning at all says the tunnel's end
		// ended it.
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	deadline := time.Now().Add(relaytest.Patience)
	for s.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("still ready after Shutdown began")
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := http.Get(hs.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || string(body) != "draining\n" {
		t.Fatalf("/readyz while draining: %d %q", resp.StatusCode, body)
	}
	resp, err = http.Get(hs.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if m := parseProm(t, string(mb)); m["meetpoint_ready"] != 0 || m["meetpoint_tunnels_active"] != 1 {
		t.Fatalf("while draining: ready %v tunnels_active %v", m["meetpoint_ready"], m["meetpoint_tunnels_active"])
	}
	// New clients are refused: the listener is closed.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if tun, err := client.Dial(ctx, client.Options{URL: relaytest.TCPURL(s), Token: "ops-drain-late"}); err == nil {
		tun.Close()
		t.Fatal("a new client got through while draining")
	}
	cancel()

	for i := 0; i < 5; i++ {
		time.Sleep(50 * time.Millisecond)
		opsEcho(t, a, b, fmt.Sprintf("during drain %d →", i))
		opsEcho(t, b, a, fmt.Sprintf("← during drain %d", i))
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v while a tunnel was open", err)
	default:
	}
	a.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v, want nil (the tunnel ended by itself)", err)
		}
	case <-time.After(relaytest.Patience):
		t.Fatalf("Shutdown did not return after the last tunnel ended (%v after it began)", time.Since(start))
	}
}

// A tunnel that does not end is not cut before the drain timeout, and is
// closed when it passes.
func TestOpsDrainTimeoutCutsTunnel(t *testing.T) {
	s := server(t, nil)
	a, b := relaytest.Pair(t, relaytest.TCPURL(s), relaytest.TCPURL(s), "ops-drain-cut", "")
	ws1, ws2 := relaytest.Pair(t, relaytest.WSURL(s), relaytest.WSURL(s), "ops-drain-cut-ws", "")
	const drain = 700 * time.Millisecond
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	// Keep both tunnels busy until just before the timeout.
	for time.Since(start) < drain-200*time.Millisecond {
		opsEcho(t, a, b, "ping")
		opsEcho(t, b, a, "pong")
		opsEcho(t, ws1, ws2, "ws-ping")
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v after %v, before the drain timeout", err, time.Since(start))
	default:
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the drain timeout")
	}
	if el := time.Since(start); el < drain {
		t.Fatalf("Shutdown returned after %v, before the %v timeout", el, drain)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want context.DeadlineExceeded", err)
	}
	// Both tunnels are closed now: reads end.
	for _, tun := range []*client.Tunnel{a, b, ws1, ws2} {
		_ = tun.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		if _, err := tun.Read(buf); err == nil {
			t.Fatal("tunnel still open after the drain timeout")
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("tunnel not closed after the drain timeout (read timed out)")
		}
	}
}

// The operational endpoints answer over TLS too (the same port, https://).
func TestOpsHTTPOverTLS(t *testing.T) {
	store, _ := relaytest.TLS(t)
	s := server(t, func(c *relay.Config) { c.TLS = store.TLSConfig() })
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.Addrs()[0].String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /readyz HTTP/1.1\r\nHost: relay\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "ready\n" {
		t.Fatalf("https /readyz: %d %q", resp.StatusCode, body)
	}
}

// TestMetricsMetadata: /metrics is valid Prometheus text with metadata:
// each family's # HELP and # TYPE come once, before its samples, and the
// samples of a family are together; every meetpoint family has help text,
// and values that go down are gauges.
func TestMetricsMetadata(t *testing.T) {
	s := server(t, nil)
	a, b := relaytest.Pair(t, relaytest.TCPURL(s), relaytest.WSURL(s), "metadata", "")
	defer a.Close()
	defer b.Close()
	_, _, body := opsGet(t, s.Addrs()[0].String(), "GET", "/metrics")
	typeOf := relaytest.CheckMetrics(t, body)
	for _, fam := range []string{"meetpoint_tunnels_active", "meetpoint_closes_total", "meetpoint_ready", "meetpoint_pairing_seconds", "process_resident_memory_bytes"} {
		if typeOf[fam] == "" {
			t.Errorf("no %s", fam)
		}
	}
}

// TestReadyzParts: a subsystem's readiness part is named on /readyz; one
// that is not ready leaves the relay ready (it still serves) unless the
// balancer asks ?strict=1.
func TestReadyzParts(t *testing.T) {
	var partOK atomic.Bool
	s := relaytest.New(t, nil)
	s.AddReadiness("fleet", func() (bool, string) {
		if partOK.Load() {
			return true, "ready"
		}
		return false, "store unreachable"
	})
	Register(s)
	relaytest.Start(t, s)
	addr := relaytest.Addr(s)
	if code, _, body := opsGet(t, addr, "GET", "/readyz"); code != 200 || body != "ready\nfleet: store unreachable\n" {
		t.Errorf("/readyz with a part down: %d %q", code, body)
	}
	if code, _, _ := opsGet(t, addr, "GET", "/readyz?strict=1"); code != 503 {
		t.Errorf("/readyz?strict=1 with a part down: %d, want 503", code)
	}
	partOK.Store(true)
	if code, _, body := opsGet(t, addr, "GET", "/readyz?strict=1"); code != 200 || body != "ready\nfleet: ready\n" {
		t.Errorf("/readyz?strict=1 with every part up: %d %q", code, body)
	}
}

// denyPaths is an access policy refusing HTTP requests for some paths.
type denyPaths map[string]bool

func (d denyPaths) Allow(_ *relay.Identity, action, target string) (bool, string) {
	if action == relay.ActionHTTP && d[target] {
		return false, "deny"
	}
	return true, "allow"
}

// TestAPIRefusalsAreJSON: under the JSON APIs (/v1/…, /group, /groups…)
// every error is JSON, {"error": "…"} (docs/operations.md), the relay's
// own refusals before any handler too — a path it refuses (400) and a
// path the access rules refuse (403); elsewhere they stay text.
func TestAPIRefusalsAreJSON(t *testing.T) {
	s := server(t, func(c *relay.Config) {
		c.Access = denyPaths{"/v1/tokens": true, "/groups": true, "/metrics": true}
	})
	addr := s.Addrs()[0].String()
	for _, c := range []struct {
		method, path string
		code         int
		json         bool
	}{
		{"POST", "/v1/tokens", 403, true},
		{"GET", "/groups", 403, true},
		{"GET", "/v1/turn/%2e%2e/credentials", 400, true},
		{"GET", "/groups/a%2Fb", 400, true},
		{"GET", "/metrics", 403, false},
		{"GET", "/page/%2e%2e/x", 400, false},
	} {
		code, h, body := opsGet(t, addr, c.method, c.path)
		var e struct{ Error string }
		isJSON := h.Get("Content-Type") == "application/json" && json.Unmarshal([]byte(body), &e) == nil && e.Error != ""
		if code != c.code || isJSON != c.json {
			t.Errorf("%s %s: %d %s %q, want %d (JSON: %v)", c.method, c.path, code, h.Get("Content-Type"), body, c.code, c.json)
		}
	}
}

// TestAnswersNotSniffed: the relay's JSON and text answers carry
// X-Content-Type-Options: nosniff, as the page does: their strings may be
// a client's (a group's name, a path), and a browser that sniffed one as
// HTML would run it in the relay's origin.
func TestAnswersNotSniffed(t *testing.T) {
	s := server(t, nil)
	addr := s.Addrs()[0].String()
	for _, path := range []string{"/v1/nothing-here", "/nothing-here", "/healthz", "/readyz", "/metrics"} {
		code, h, _ := opsGet(t, addr, "GET", path)
		if h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: %d %s without X-Content-Type-Options: nosniff", path, code, h.Get("Content-Type"))
		}
	}
}
