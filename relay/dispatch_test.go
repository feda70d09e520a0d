package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/certs"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// tlsLoopbackConfig is a loopback relay's config with TLS on its port (a
// certificate made for the test, the test's logger) and the client
// configuration that trusts that certificate.
func tlsLoopbackConfig(t *testing.T) (Config, *tls.Config) {
	t.Helper()
	cp, kp, cert := tlsFiles(t, t.TempDir())
	cfg := LoopbackConfig(acceptAll{})
	cfg.Logger = testutil.Logger(t)
	cfg.TLS = tlsStore(t, certs.Config{Cert: cp, Key: kp}).TLSConfig()
	return cfg, clientTLS(cert)
}

// dpServer is a relay with TLS on its port and, registered before Start,
// an HTTP route, a WebSocket subprotocol ("echo.test") and a STUN
// listener, as subsystems would register them.
func dpServer(t *testing.T, mutate func(*Config)) (*Server, *tls.Config, net.Listener) {
	t.Helper()
	cfg, pool := tlsLoopbackConfig(t)
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Handle("/echo", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		tlsState := "none"
		if r.TLS != nil && r.TLS.HandshakeComplete {
			tlsState = "yes"
		}
		fmt.Fprintf(w, "%s %s proto=%d body=%d tls=%s", r.Method, r.URL.Path, r.ProtoMajor, len(body), tlsState)
	}))
	s.HandleWebSocket("echo.test", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _, err := ws.HTTPUpgrader{Protocol: func(p string) bool { return p == "echo.test" }}.Upgrade(r, w)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			msg, op, err := wsutil.ReadClientData(conn)
			if err != nil {
				return
			}
			if err := wsutil.WriteServerMessage(conn, op, append([]byte("echo:"), msg...)); err != nil {
				return
			}
		}
	}))
	stun := s.STUNListener()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, pool, stun
}

// dpDial dials the relay's port, over TLS when conf is set.
func dpDial(t *testing.T, s *Server, conf *tls.Config) net.Conn {
	t.Helper()
	addr := s.Addrs()[0].String()
	var c net.Conn
	var err error
	if conf != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	} else {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
	}
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDispatchEveryBranch: one port, plaintext and TLS: raw JSON-RPC and
// WebSocket go to the relay, a registered subprotocol to its handler,
// STUN to the STUN listener, every other HTTP request to net/http.
func TestDispatchEveryBranch(t *testing.T) {
	s, conf, stun := dpServer(t, nil)
	addr := s.Addrs()[0].String()
	// A STUN server stand-in: it answers each handed-off connection with
	// what it read.
	go func() {
		for {
			c, err := stun.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 20)
				if _, err := io.ReadFull(c, buf); err == nil {
					c.Write(append([]byte("stun:"), buf...))
				}
			}()
		}
	}()
	for _, secure := range []bool{false, true} {
		var tc *tls.Config
		scheme := ""
		if secure {
			tc, scheme = conf, "s"
		}
		t.Run(fmt.Sprintf("tls=%v", secure), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			raw := map[bool]string{false: "tcp", true: "tls"}[secure]
			for _, u := range []string{raw + "://" + addr, "ws" + scheme + "://" + addr + "/any/path"} {
				p, err := client.Hello(ctx, client.Options{URL: u, TLSConfig: tc})
				if err != nil || p["server"] != "meetpoint" {
					t.Fatalf("relay via %s: %v %v", u, p, err)
				}
			}
			// A subsystem's WebSocket subprotocol, named second in the
			// client's list ("x.unknown, echo.test").
			d := ws.Dialer{Protocols: []string{"x.unknown", "echo.test"}, TLSConfig: tc}
			c, _, hs, err := d.Dial(ctx, "ws"+scheme+"://"+addr+"/signal")
			if err != nil {
				t.Fatalf("subprotocol upgrade: %v", err)
			}
			if hs.Protocol != "echo.test" {
				t.Fatalf("negotiated %q", hs.Protocol)
			}
			if err := wsutil.WriteClientText(c, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if msg, err := wsutil.ReadServerText(c); err != nil || string(msg) != "echo:hi" {
				t.Fatalf("subprotocol handler: %q %v", msg, err)
			}
			c.Close()
			// STUN: a Binding request header (20 bytes, magic cookie).
			sc := dpDial(t, s, tc)
			req := make([]byte, 20)
			binary.BigEndian.PutUint16(req[0:], 0x0001)
			binary.BigEndian.PutUint32(req[4:], 0x2112A442)
			sc.Write(req)
			got := make([]byte, 25)
			if _, err := io.ReadFull(sc, got); err != nil || !bytes.Equal(got, append([]byte("stun:"), req...)) {
				t.Fatalf("STUN hand-off: %q %v", got, err)
			}
			// HTTP through net/http: a POST with a body, then a GET on the
			// same connection (keep-alive).
			hc := dpDial(t, s, tc)
			br := bufio.NewReader(hc)
			fmt.Fprintf(hc, "POST /echo HTTP/1.1\r\nHost: relay\r\nContent-Length: 11\r\n\r\nhello world")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			wantTLS := map[bool]string{false: "none", true: "yes"}[secure]
			if resp.StatusCode != 200 || string(body) != "POST /echo proto=1 body=11 tls="+wantTLS {
				t.Fatalf("POST: %d %q", resp.StatusCode, body)
			}
			fmt.Fprintf(hc, "GET /echo HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
			resp, err = http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("second request on the same connection: %v", err)
			}
			body, _ = io.ReadAll(resp.Body)
			if string(body) != "GET /echo proto=1 body=3 tls="+wantTLS {
				t.Fatalf("keep-alive request: %q", body)
			}
		})
	}
	// HTTP/2 over TLS (ALPN h2), with Go's own client.
	hcl := &http.Client{Transport: &http.Transport{TLSClientConfig: conf.Clone(), ForceAttemptHTTP2: true}}
	defer hcl.CloseIdleConnections()
	var reused atomic.Int32
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if i.Reused {
			reused.Add(1)
		}
	}}
	for range 2 {
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "POST",
			"https://"+addr+"/echo", strings.NewReader("twelve bytes"))
		resp, err := hcl.Do(req)
		if err != nil {
			t.Fatalf("HTTP/2: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || string(body) != "POST /echo proto=2 body=12 tls=yes" {
			t.Fatalf("HTTP/2: %s %q", resp.Proto, body)
		}
	}
	if reused.Load() != 1 {
		t.Fatalf("HTTP/2 connection reused %d times, want 1", reused.Load())
	}
	if n := s.stats.httpRequests.Get(); n < 6 {
		t.Fatalf("http requests counted: %d", n)
	}
	// The relay still relays, and every HTTP connection is accounted.
	a, b := pair(t, tcpURL(s), wsURL(s), "dispatch", "")
	a.Write([]byte("x"))
	one := make([]byte, 1)
	if _, err := io.ReadFull(b, one); err != nil {
		t.Fatal(err)
	}
}

// TestDispatchHTTPBounds: net/http behind the relay is bounded: connections
// at once (503, limit_http), head size (431 for the first request, which
// the relay reads; net/http's own bound for the next on the connection),
// body size (413), slow heads and idle connections closed.
func TestDispatchHTTPBounds(t *testing.T) {
	s, _, _ := dpServer(t, func(c *Config) {
		c.HTTPMaxConns = 2
		c.HTTPMaxBody = 1000
		c.HTTPReadHeaderTimeout = 300 * time.Millisecond
		// Long enough for two idle connections to still be held when the
		// third comes, however loaded the machine.
		c.HTTPIdleTimeout = 3 * time.Second
	})
	get := func(c net.Conn, br *bufio.Reader, req string) (*http.Response, string) {
		t.Helper()
		io.WriteString(c, req)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: %v", req[:min(len(req), 40)], err)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	// Body too large.
	c := dpDial(t, s, nil)
	br := bufio.NewReader(c)
	big := strings.Repeat("x", 2000)
	if resp, _ := get(c, br, "POST /echo HTTP/1.1\r\nHost: r\r\nContent-Length: 2000\r\n\r\n"+big); resp.StatusCode != 413 {
		t.Fatalf("2000-byte body: %d, want 413", resp.StatusCode)
	}
	// The first head over MaxHeader: 431 from the relay.
	c2 := dpDial(t, s, nil)
	io.WriteString(c2, "GET /echo HTTP/1.1\r\nHost: r\r\nX-Pad: "+strings.Repeat("a", 9<<10)+"\r\n\r\n")
	if got := readToClose(t, c2, 5*time.Second); !bytes.HasPrefix(got, []byte("HTTP/1.1 431")) {
		t.Fatalf("oversized first head: %q", got[:min(len(got), 60)])
	}
	// A second request's head over the bound, on a kept-alive connection:
	// net/http's 431 (its bound is MaxHeader plus slack of its own).
	c3 := dpDial(t, s, nil)
	br3 := bufio.NewReader(c3)
	if resp, _ := get(c3, br3, "GET /echo HTTP/1.1\r\nHost: r\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	if resp, _ := get(c3, br3, "GET /echo HTTP/1.1\r\nHost: r\r\nX-Pad: "+strings.Repeat("a", 64<<10)+"\r\n\r\n"); resp.StatusCode != 431 {
		t.Fatalf("oversized second head: %d, want 431", resp.StatusCode)
	}
	c.Close()
	c3.Close()
	waitFor(t, func() bool { return s.stats.connsHTTP.Get() == 0 }, "HTTP connections closed")
	// Two connections at once are allowed, a third gets 503.
	h1, h2 := dpDial(t, s, nil), dpDial(t, s, nil)
	for _, h := range []net.Conn{h1, h2} {
		if resp, _ := get(h, bufio.NewReader(h), "GET /echo HTTP/1.1\r\nHost: r\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
	}
	before := s.stats.closes[reason.LimitHTTP].Get()
	h3 := dpDial(t, s, nil)
	io.WriteString(h3, "GET /echo HTTP/1.1\r\nHost: r\r\n\r\n")
	if got := readToClose(t, h3, testutil.Patience); !bytes.HasPrefix(got, []byte("HTTP/1.1 503")) {
		t.Fatalf("third connection: %q", got)
	}
	waitFor(t, func() bool { return s.stats.closes[reason.LimitHTTP].Get() == before+1 }, "limit_http counted")
	// Idle keep-alive connections are closed after HTTPIdleTimeout.
	readToClose(t, h1, testutil.Patience) // nothing else would close it
	// A second request whose head never completes: closed after
	// HTTPReadHeaderTimeout.
	io.WriteString(h2, "GET /echo HTTP/1.1\r\nHost: r\r\n")
	readToClose(t, h2, testutil.Patience)
	waitFor(t, func() bool { return s.stats.connsHTTP.Get() == 0 && s.liveConns() == 0 }, "every HTTP connection ended and accounted")
}

// TestDispatchStreamedBody: a request body that streams in at once after
// the head (here 8 MiB, as fast as loopback goes) reaches net/http whole,
// over plaintext and TLS: what arrives while the connection is being
// handed over is neither dropped nor a reason to cut it off.
func TestDispatchStreamedBody(t *testing.T) {
	s, conf, _ := dpServer(t, func(c *Config) { c.HTTPMaxBody = 16 << 20 })
	addr := s.Addrs()[0].String()
	for _, secure := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", secure), func(t *testing.T) {
			url := "http://" + addr + "/echo"
			tr := &http.Transport{}
			if secure {
				url = "https://" + addr + "/echo"
				tr.TLSClientConfig = conf
			}
			const size = 8 << 20
			for range 3 {
				resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Post(url, "application/octet-stream",
					io.LimitReader(zeros{}, size))
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := fmt.Sprintf("body=%d", size); !strings.Contains(string(b), want) {
					t.Fatalf("%d %q, want %s", resp.StatusCode, b, want)
				}
				tr.CloseIdleConnections() // a fresh connection (and hand-off) each time
			}
		})
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
