package access_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/access"
	"github.com/meetpoint/meetpoint/relay/auth"
	"github.com/meetpoint/meetpoint/relay/certs"
	"github.com/meetpoint/meetpoint/relay/ops"
	"github.com/meetpoint/meetpoint/relay/relaytest"
	"github.com/meetpoint/meetpoint/relay/routes"
	"github.com/meetpoint/meetpoint/relay/tunnelproxy"
	"github.com/meetpoint/meetpoint/relay/web"
)

const sharedServer = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"

// world is a relay with access rules, TLS requiring client certificates
// (the home CA's, or the friend's listed fingerprint) and plaintext for
// anonymous clients, TunnelProxy, the page and routes to a local service.
type world struct {
	s                  *relay.Server
	ca                 tls.Certificate // the home CA, with its key
	home, friend       *tls.Config     // client TLS configs with their certificates
	anonymousTLS       *tls.Config
	hmacKey            []byte
	upstream           *httptest.Server
	upstreamSawHeaders chan http.Header
}

func newWorld(t *testing.T) *world {
	t.Helper()
	dir := t.TempDir()
	caCert := relaytest.Cert(t, "home CA", nil, true)
	relaytest.WriteCert(t, caCert, filepath.Join(dir, "ca.pem"), "")
	homeCert := relaytest.Cert(t, "laptop", &caCert, false)
	friendCert := relaytest.Cert(t, "friend-phone", nil, false)
	friendFP := relay.IdentityOf(friendCert.Leaf, "").Fingerprint
	os.WriteFile(filepath.Join(dir, "fps"), []byte(friendFP+"\n"), 0o600)

	rules := access.WorkedExample(filepath.Join(dir, "ca.pem"), friendFP) // docs/security.md's, as TestDecide runs it
	rulesPath := filepath.Join(dir, "access.toml")
	os.WriteFile(rulesPath, []byte(rules), 0o600)
	pol, err := access.Load(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	serverCert, _ := certs.SelfSignedCert([]string{"127.0.0.1"})
	cp, kp := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	certs.WriteSelfSigned(serverCert, cp, kp)
	st, err := certs.New(certs.Config{Cert: cp, Key: kp, ClientCA: filepath.Join(dir, "ca.pem"), ClientFingerprints: filepath.Join(dir, "fps")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	w := &world{ca: caCert, hmacKey: make([]byte, 32), upstreamSawHeaders: make(chan http.Header, 16)}
	rand.Read(w.hmacKey)
	hm, _ := auth.NewHMACAuthKey(fmt.Sprintf("%x", w.hmacKey))
	roots := x509.NewCertPool()
	roots.AddCert(serverCert.Leaf)
	base := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	w.home, w.friend, w.anonymousTLS = base.Clone(), base.Clone(), base.Clone()
	w.home.Certificates = []tls.Certificate{homeCert}
	w.friend.Certificates = []tls.Certificate{friendCert}

	// The local service behind the routes: echoes, and streams.
	w.upstream = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		select {
		case w.upstreamSawHeaders <- r.Header.Clone():
		default:
		}
		switch {
		case strings.HasSuffix(r.URL.Path, "/upload"):
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(rw, "received %d bytes", n)
		case strings.HasSuffix(r.URL.Path, "/stream"):
			fl := rw.(http.Flusher)
			fmt.Fprint(rw, "first\n")
			fl.Flush()
			<-r.Context().Done() // the client closes once it saw "first": proof it was not buffered
		default:
			fmt.Fprintf(rw, "upstream %s", r.RequestURI) // as sent: what a file server would resolve
		}
	}))
	t.Cleanup(w.upstream.Close)
	s := relaytest.New(t, func(c *relay.Config) {
		c.Auth = hm
		c.Access = pol
		c.TLS = st.TLSConfig()
		c.HTTPMaxBody = 64 << 20
	})
	if _, err := tunnelproxy.New(s, tunnelproxy.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	ops.Register(s)
	web.Register(s)
	up, _ := routes.Parse("/db/=strip:" + w.upstream.URL + "/")
	sh, _ := routes.Parse("/shared/=" + w.upstream.URL + "/")
	if err := routes.Register(s, routes.Config{Routes: []routes.Route{up, sh}, IdentityHeader: "X-Meetpoint-Identity"}); err != nil {
		t.Fatal(err)
	}
	w.s = relaytest.Start(t, s)
	return w
}

func (w *world) tlsURL() string { return "tls://" + relaytest.Addr(w.s) }

// TestAccessLegacyPairing: only identities a rule allows may pair; a
// refused one hears AuthenticationFailed and is counted as access_denied.
func TestAccessLegacyPairing(t *testing.T) {
	w := newWorld(t)
	token := func(subject string) string {
		tok, err := auth.MintHMAC(w.hmacKey, subject, time.Minute, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g := token("guest-7")
	a, b, err := client.DialPair(ctx, client.Options{URL: relaytest.TCPURL(w.s), Token: g, Nonce: "guest-room"},
		client.Options{URL: relaytest.WSURL(w.s), Token: g, Nonce: "guest-room"})
	if err != nil {
		t.Fatalf("guests on a guest nonce: %v", err)
	}
	a.Close()
	b.Close()
	for _, c := range []struct {
		name string
		o    client.Options
	}{
		{"a guest on another nonce", client.Options{URL: relaytest.TCPURL(w.s), Token: g, Nonce: "family"}},
		{"another subject", client.Options{URL: relaytest.WSURL(w.s), Token: token("bob"), Nonce: "guest-room"}},
		{"a friend's certificate with a guest nonce", client.Options{URL: w.tlsURL(), Token: token("x"), Nonce: "guest-room", TLSConfig: w.friend}},
	} {
		_, err := client.Dial(ctx, c.o)
		var ae *client.AuthError
		if !errorsAs(err, &ae) || ae.Result != "AuthenticationErrorAuthenticationFailed" {
			t.Errorf("%s: %v, want AuthenticationFailed", c.name, err)
		}
	}
	// An own device pairs on any nonce, over TLS with its certificate.
	a, b, err = client.DialPair(ctx, client.Options{URL: w.tlsURL(), Token: token("laptop"), TLSConfig: w.home},
		client.Options{URL: w.tlsURL(), Token: token("laptop"), TLSConfig: w.home, Name: "b"})
	if err != nil {
		t.Fatalf("own devices: %v", err)
	}
	var shown []string
	for _, tun := range w.s.Snapshot().Tunnels {
		shown = append(shown, tun.A.Identity, tun.B.Identity)
	}
	if len(shown) != 2 || !strings.HasPrefix(shown[0], "cert:CN=laptop (sha256:") {
		t.Errorf("the monitor shows identities %q", shown)
	}
	a.Close()
	b.Close()
	for name, want := range map[string]float64{`meetpoint_authenticated_total{identity="cert"}`: 3, `meetpoint_authenticated_total{identity="token"}`: 4,
		`meetpoint_access_total{rule="guests",action="pair",result="allow"}`: 2, `meetpoint_access_total{rule="default",action="pair",result="deny"}`: 3} {
		if got := relaytest.Metric(t, w.s, name); got != want {
			t.Errorf("/metrics: %s %v, want %v", name, got, want)
		}
	}
	relaytest.WaitFor(t, func() bool { return w.s.Stats().Closes["access_denied"] == 3 }, "3 closes counted as access_denied")
}

// TestAccessTunnelProxy: registering and reaching servers follows the
// rules; a refusal is TunnelProxyErrorForbiddenCall.
func TestAccessTunnelProxy(t *testing.T) {
	w := newWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.RegisterTPServer(ctx, client.TPOptions{URL: w.tlsURL(), UUID: sharedServer, TLSConfig: w.friend}); !forbidden(err) {
		t.Fatalf("the friend registers a server: %v, want ForbiddenCall", err)
	}
	if _, err := client.RegisterTPServer(ctx, client.TPOptions{URL: relaytest.TCPURL(w.s), UUID: sharedServer}); !forbidden(err) {
		t.Fatalf("anonymous registers a server: %v, want ForbiddenCall", err)
	}
	srv, err := client.RegisterTPServer(ctx, client.TPOptions{URL: w.tlsURL(), UUID: sharedServer, TLSConfig: w.home})
	if err != nil {
		t.Fatalf("an own device registers: %v", err)
	}
	defer srv.Close()
	other := "7a7a7a7a-0000-4000-8000-000000000001"
	osrv, err := client.RegisterTPServer(ctx, client.TPOptions{URL: w.tlsURL(), UUID: other, TLSConfig: w.home})
	if err != nil {
		t.Fatal(err)
	}
	defer osrv.Close()
	go func() {
		c, err := srv.Accept()
		if err == nil {
			io.Copy(c, c)
		}
	}()
	cl, err := client.DialTPClient(ctx, client.TPOptions{URL: w.tlsURL(), ServerUUID: sharedServer, TLSConfig: w.friend})
	if err != nil {
		t.Fatalf("the friend reaches the shared server: %v", err)
	}
	cl.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(cl, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	cl.Close()
	if _, err := client.DialTPClient(ctx, client.TPOptions{URL: w.tlsURL(), ServerUUID: other, TLSConfig: w.friend}); !forbidden(err) {
		t.Fatalf("the friend reaches another server: %v, want ForbiddenCall", err)
	}
}

// TestAccessIntermediateCA: a certificate the home CA issued through an
// intermediate (as step-ca and most private CAs issue them), sent with the
// intermediate, is one of the home CA's for the rules as it is for the TLS
// layer: "ca: the certificate must chain to it". The rules verified the
// leaf against the rule's CA without the client's intermediates, so such
// a device, admitted by --tls-client-ca, was refused every action.
func TestAccessIntermediateCA(t *testing.T) {
	w := newWorld(t)
	inter := relaytest.Cert(t, "home intermediate", &w.ca, true)
	leaf := relaytest.Cert(t, "tablet", &inter, false)
	leaf.Certificate = append(leaf.Certificate, inter.Certificate[0]) // the chain the client sends
	conf := w.anonymousTLS.Clone()
	conf.Certificates = []tls.Certificate{leaf}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := auth.MintHMAC(w.hmacKey, "tablet", time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a, b, err := client.DialPair(ctx, client.Options{URL: w.tlsURL(), Token: tok, Nonce: "family", TLSConfig: conf},
		client.Options{URL: w.tlsURL(), Token: tok, Nonce: "family", TLSConfig: conf, Name: "b"})
	if err != nil {
		t.Fatalf("an own device with an intermediate pairs: %v", err)
	}
	a.Close()
	b.Close()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 10 * time.Second}
	resp, err := hc.Get("https://" + relaytest.Addr(w.s) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("an own device with an intermediate, /metrics: %d, want 200", resp.StatusCode)
	}
	if n := relaytest.Metric(t, w.s, `meetpoint_access_total{rule="own devices",action="pair",result="allow"}`); n != 2 {
		t.Errorf("own devices' pair allowed %v times, want 2", n)
	}
}

func forbidden(err error) bool {
	var te *client.TPError
	return errorsAs(err, &te) && te.Value == "TunnelProxyErrorForbiddenCall"
}

// TestAccessHTTPAndRoutes: every HTTP request is checked by path and
// identity; routes reach the local service with the real identity in the
// configured header (a client's forged one dropped), stream both ways,
// and a denied path gets 403 without reaching it.
func TestAccessHTTPAndRoutes(t *testing.T) {
	w := newWorld(t)
	hc := func(conf *tls.Config) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 10 * time.Second}
	}
	https := "https://" + relaytest.Addr(w.s)
	plain := "http://" + relaytest.Addr(w.s)
	get := func(c *http.Client, url string, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		name   string
		c      *http.Client
		url    string
		status int
		body   string
	}{
		{"own device, a route (prefix stripped)", hc(w.home), https + "/db/_all_dbs", 200, "upstream /_all_dbs"},
		{"own device, metrics", hc(w.home), https + "/metrics", 200, "# HELP"},
		{"friend, the shared prefix", hc(w.friend), https + "/shared/photo.jpg", 200, "upstream /shared/photo.jpg"},
		{"friend, the private part", hc(w.friend), https + "/shared/private/diary", 403, "403 forbidden"},
		{"friend, another route", hc(w.friend), https + "/db/_all_dbs", 403, "403 forbidden"},
		{"anonymous, the page", http.DefaultClient, plain + "/", 200, "<!doctype html>"},
		{"anonymous, metrics", http.DefaultClient, plain + "/metrics", 403, "403 forbidden"},
		{"anonymous, a route", http.DefaultClient, plain + "/db/x", 403, "403 forbidden"},
	} {
		if status, body := get(c.c, c.url, nil); status != c.status || !strings.HasPrefix(body, c.body) {
			t.Errorf("%s: %d %.60q, want %d %q…", c.name, status, body, c.status, c.body)
		}
	}
	// The identity header: set by the relay, never the client's.
	for len(w.upstreamSawHeaders) > 0 {
		<-w.upstreamSawHeaders
	}
	// Nor another spelling of it: CGI, WSGI, PHP and Rack read X_Id as X-Id.
	get(hc(w.friend), https+"/shared/x", map[string]string{"X-Meetpoint-Identity": "cert:CN=admin",
		"X_Meetpoint_Identity": "cert:CN=admin", "x_meetpoint-IDENTITY": "cert:CN=admin"})
	h := <-w.upstreamSawHeaders
	if !strings.HasPrefix(h.Get("X-Meetpoint-Identity"), "cert:CN=friend-phone (sha256:") || len(h.Values("X-Meetpoint-Identity")) != 1 {
		t.Fatalf("upstream saw identity %q", h.Values("X-Meetpoint-Identity"))
	}
	for k, v := range h {
		if k != "X-Meetpoint-Identity" && strings.EqualFold(strings.ReplaceAll(k, "_", "-"), "X-Meetpoint-Identity") {
			t.Fatalf("upstream saw the client's %s: %q", k, v)
		}
	}
	// A streaming request body (8 MiB in pieces) and a streaming response.
	pr, pw := io.Pipe()
	go func() {
		chunk := make([]byte, 64<<10)
		for range 128 {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	resp, err := hc(w.friend).Post(https+"/shared/upload", "application/octet-stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != fmt.Sprintf("received %d bytes", 128*64<<10) {
		t.Fatalf("upload: %d %q", resp.StatusCode, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", https+"/shared/stream", nil)
	resp, err = hc(w.friend).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("streamed response: %q %v (held back by the proxy?)", line, err)
	}
	cancel()
	resp.Body.Close()
	if n := w.s.Stats().Closes; n == nil {
		t.Fatal("no stats")
	}
}

// TestAccessEncodedPaths: a rule decides on the decoded, cleaned path and
// the route forwards exactly that path; encoded slashes, encoded dot
// segments and double encoding are refused (400) before any rule, so
// nothing reaches the upstream around a deny rule.
func TestAccessEncodedPaths(t *testing.T) {
	w := newWorld(t)
	send := func(target string) (int, string) {
		t.Helper()
		c, err := tls.Dial("tcp", relaytest.Addr(w.s), w.friend)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n", target)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("GET %s: %v", target, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		target string
		status int
		body   string
	}{
		{"/shared/.%2fprivate/x", 400, "400 bad request: an encoded slash"},
		{"/shared/%2fprivate/x", 400, "400 bad request: an encoded slash"},
		{"/shared/..%5cprivate/x", 400, "400 bad request: an encoded slash"},
		{"/shared/%2e%2e/x", 400, "400 bad request: an encoded dot segment"},
		{"/shared/%2E/private/x", 400, "400 bad request: an encoded dot segment"},
		{"/shared/.%2e/db/x", 400, "400 bad request: an encoded dot segment"},
		{"/shared/%252e%252e/x", 400, "400 bad request: a doubly encoded"},
		{"/shared/%252fprivate/x", 400, "400 bad request: a doubly encoded"},
		{"/shared/a%5c..%5cprivate", 400, "400 bad request: an encoded slash"},
		{"/shared/a%00b", 400, "400 bad request: a backslash or control"},
		{"/shared/./private/x", 403, "403 forbidden"},    // decided on /shared/private/x
		{"/shared/a/../private/x", 403, "403 forbidden"}, // likewise
		{"/shared/../db/x", 403, "403 forbidden"},        // decided on /db/x: not the friend's
		{"/shared/a//b", 200, "upstream /shared/a/b"},    // forwarded as decided
		{"/shared/sub/../photo.jpg", 200, "upstream /shared/photo.jpg"},
		{"/shared/a%20b", 200, "upstream /shared/a%20b"}, // ordinary escapes pass
		{"/shared/a%2eb", 200, "upstream /shared/a.b"},   // an encoded dot that is no segment
	} {
		if status, body := send(c.target); status != c.status || !strings.HasPrefix(body, c.body) {
			t.Errorf("GET %s: %d %.70q, want %d %q…", c.target, status, body, c.status, c.body)
		}
	}
	if n := relaytest.Metric(t, w.s, "meetpoint_http_bad_path_total"); n != 10 {
		t.Errorf("meetpoint_http_bad_path_total %v, want 10", n)
	}
}

func errorsAs[T any](err error, target *T) bool { return err != nil && errors.As(err, target) }
