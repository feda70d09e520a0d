package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// urlDial opens a WebSocket to s with path (carrying the token) and
// extra headers; it returns the connection or the HTTP status that refused it.
func urlDial(t *testing.T, s *Server, path string, hdr http.Header) (net.Conn, *bufio.Reader, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(hdr)}
	c, br, _, err := d.Dial(ctx, "ws://"+s.Addrs()[0].String()+path)
	var se ws.StatusError
	if errors.As(err, &se) {
		return nil, nil, int(se)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	if br == nil {
		br = bufio.NewReader(c)
	}
	return c, br, 101
}

func readText(t *testing.T, c net.Conn, br *bufio.Reader) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := wsutil.ReadServerText(struct {
		io.Reader
		io.Writer
	}{br, c})
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

// TestURLToken: a token in the WebSocket URL authenticates during the
// upgrade: a good one gets the 101 and then, with no JSON-RPC at all,
// TunnelEstablished and the pipe (with a JSON-RPC client as partner); a
// bad one gets HTTP 401 and never a WebSocket.
func TestURLToken(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Auth = acAuth{} })
	if _, _, status := urlDial(t, s, "/?token=bad&nonce=n", nil); status != 401 {
		t.Fatalf("a refused URL token: status %d, want 401", status)
	}
	waitFor(t, func() bool { return s.Stats().Closes["auth_failed"] == 1 }, "the refusal counted as auth_failed")
	c, br, status := urlDial(t, s, "/any/path?token=ac-url&nonce=room&name=browser&uuid="+newTestUUID(), nil)
	if status != 101 {
		t.Fatalf("good URL token: %d", status)
	}
	waitFor(t, func() bool { return s.reg.Len() == 1 }, "the URL client waiting for its partner")
	p, err := dialPartner(s, "ac-url", "room")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var note struct {
		Notification string
		Params       struct{ Name string }
	}
	if err := json.Unmarshal(readText(t, c, br), &note); err != nil || note.Notification != "RemoteProxy.TunnelEstablished" || note.Params.Name != "tcp-partner" {
		t.Fatalf("first message %+v %v", note, err)
	}
	if p.PeerName() != "browser" {
		t.Fatalf("the partner sees %q", p.PeerName())
	}
	if _, err := p.Write([]byte("to the browser")); err != nil {
		t.Fatal(err)
	}
	if got := readText(t, c, br); string(got) != "to the browser" {
		t.Fatalf("data %q", got)
	}
	if err := wsutil.WriteClientText(c, []byte("to tcp")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	_ = p.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.Read(buf); err != nil || string(buf) != "to tcp" {
		t.Fatalf("%q %v", buf, err)
	}
	// ws_token= is the same.
	if _, _, status := urlDial(t, s, "/?ws_token=bad", nil); status != 401 {
		t.Fatalf("ws_token: %d", status)
	}
}

// TestAllowedOrigins: with AllowedOrigins, a browser page from another
// origin cannot open a relay WebSocket (403); the listed origin and
// clients without an Origin (not browsers) can.
func TestAllowedOrigins(t *testing.T) {
	s := startServer(t, func(c *Config) { c.AllowedOrigins = []string{"https://app.example"} })
	if _, _, st := urlDial(t, s, "/", http.Header{"Origin": {"https://evil.example"}}); st != 403 {
		t.Fatalf("another origin: %d, want 403", st)
	}
	for _, h := range []http.Header{{"Origin": {"https://app.example"}}, nil} {
		if _, _, st := urlDial(t, s, "/", h); st != 101 {
			t.Fatalf("origin %v: %d", h, st)
		}
	}
}

// dialPartner connects a raw TCP JSON-RPC client on token and nonce.
func dialPartner(s *Server, token, nonce string) (*partnerConn, error) {
	c, err := net.DialTimeout("tcp", s.Addrs()[0].String(), 5*time.Second)
	if err != nil {
		return nil, err
	}
	req, _ := json.Marshal(map[string]any{"id": 1, "method": "Authentication.Authenticate",
		"params": map[string]string{"uuid": newTestUUID(), "name": "tcp-partner", "token": token, "nonce": nonce}})
	c.Write(append(req, '\n'))
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range 2 { // the reply, then TunnelEstablished
		line, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, err
		}
		if strings.Contains(line, "TunnelEstablished") {
			var n struct{ Params struct{ Name string } }
			json.Unmarshal([]byte(line), &n)
			return &partnerConn{Conn: c, br: br, peer: n.Params.Name}, nil
		}
	}
	c.Close()
	return nil, errors.New("no TunnelEstablished")
}

type partnerConn struct {
	net.Conn
	br   *bufio.Reader
	peer string
}

func (p *partnerConn) Read(b []byte) (int, error) { return p.br.Read(b) }
func (p *partnerConn) PeerName() string           { return p.peer }

// TestURLTokenRefusalSaysWhy: a token in the WebSocket URL that is not
// accepted gets the HTTP status of why, as the JSON-RPC client gets its
// AuthenticationError: 401 only for a refused token; an authenticator that
// could not check it (its store down: ProxyError; no answer within
// AuthTimeout) refused no token, 503, and the client may try again; a
// good token the access rules do not let pair, 403 (docs/security.md).
func TestURLTokenRefusalSaysWhy(t *testing.T) {
	down := startServer(t, func(c *Config) { c.Auth = storeDown{} })
	if _, _, st := urlDial(t, down, "/?token=good-token&nonce=n", nil); st != 503 {
		t.Errorf("the authenticator's store down: status %d, want 503", st)
	}
	slow := startServer(t, func(c *Config) { c.Auth = acAuth{}; c.AuthTimeout = 200 * time.Millisecond })
	if _, _, st := urlDial(t, slow, "/?token=hang&nonce=n", nil); st != 503 {
		t.Errorf("the authenticator never answering: status %d, want 503", st)
	}
	ruled := startServer(t, func(c *Config) { c.Auth = acAuth{}; c.Access = nonceOnly("open-") })
	if _, _, st := urlDial(t, ruled, "/?token=good&nonce=closed-1", nil); st != 403 {
		t.Errorf("a good token the access rules refuse: status %d, want 403", st)
	}
	if _, _, st := urlDial(t, ruled, "/?token=bad&nonce=open-1", nil); st != 401 {
		t.Errorf("a refused token: status %d, want 401", st)
	}
	waitFor(t, func() bool {
		return ruled.Stats().Closes["access_denied"] == 1 && ruled.Stats().Closes["auth_failed"] == 1
	},
		"the refusals counted as access_denied and auth_failed")
}

// TestURLTokenBesideAMalformedPair: a token in the URL is read even when
// another pair of the query does not parse (a semicolon, which
// url.ParseQuery refuses, in a tracking parameter): the refused token is
// a 401, not ignored. Ignoring it upgraded a WebSocket nobody had
// authenticated, on which the page waited for TunnelEstablished until the
// inactive timeout closed it, with no word on why.
func TestURLTokenBesideAMalformedPair(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Auth = acAuth{} })
	if _, _, status := urlDial(t, s, "/?token=bad&nonce=n&utm=a;b", nil); status != 401 {
		t.Fatalf("a refused URL token beside a malformed pair: status %d, want 401", status)
	}
}

// TestURLTokenNotUTF8: a token, nonce or uuid in the URL that is not
// UTF-8 once percent-decoded cannot travel as JSON (not to a fleet's
// other node either, where the pair was lost): it is refused with a 400
// before anything is authenticated. A name is display text and passes.
func TestURLTokenNotUTF8(t *testing.T) {
	s := startServer(t, nil)
	for _, q := range []string{"token=%FF%FE", "token=t1&nonce=%C3", "token=t1&uuid=%80"} {
		if _, _, status := urlDial(t, s, "/?"+q, nil); status != 400 {
			t.Errorf("?%s: status %d, want 400", q, status)
		}
	}
	if _, _, status := urlDial(t, s, "/?token=t2&name=%FF", nil); status != 101 {
		t.Errorf("a name that is not UTF-8: status %d, want 101", status)
	}
}
