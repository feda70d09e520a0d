package routes

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		spec, err    string
		prefix, host string
		strip        bool
	}{
		{spec: "/db/=http://127.0.0.1:5984/", prefix: "/db/", host: "127.0.0.1:5984"},
		{spec: "/ui/=strip:https://[::1]:8080/base/", prefix: "/ui/", host: "[::1]:8080", strip: true},
		{spec: "/=http://127.0.0.1:80/", err: "would hide the relay's own page"},
		{spec: "db/=http://x/", err: "starts and ends with /"},
		{spec: "/db=http://x/", err: "starts and ends with /"},
		{spec: "/db/", err: "want /PREFIX/="},
		{spec: "/db/=ftp://x/", err: "http:// or https://"},
		{spec: "/db/=http://", err: "http:// or https://"},
	} {
		r, err := Parse(c.spec)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want …%s…", c.spec, err, c.err)
			}
			continue
		}
		if err != nil || r.Prefix != c.prefix || r.Target.Host != c.host || r.StripPrefix != c.strip {
			t.Errorf("%s: %+v %v", c.spec, r, err)
		}
	}
}

// lockedLog collects a relay's log lines.
type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A request body the relay itself cuts — over --http-max-body, or slower
// than --http-min-body-rate — is the client's fault: 413 and 408, not a
// 502 blaming the service behind the route, and no warning in the log
// (any client could write one a request).
func TestRouteClientBodyErrors(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "read it all")
	}))
	defer up.Close()
	logs := &lockedLog{}
	s := relaytest.New(t, func(c *relay.Config) {
		c.HTTPMaxBody = 1000
		c.HTTPBodyTimeout = 200 * time.Millisecond
		c.HTTPMinBodyRate = 1 << 20
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	rt, err := Parse("/db/=" + up.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	if err := Register(s, Config{Routes: []Route{rt}}); err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, s)
	addr := relaytest.Addr(s)

	send := func(what, req string) int {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(relaytest.Patience))
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := send("small body", "POST /db/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"); code != 200 {
		t.Fatalf("small body: %d, want 200", code)
	}
	big := strings.Repeat("x", 5000)
	if code := send("large body", "POST /db/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"+big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over --http-max-body: %d, want 413", code)
	}
	if code := send("large chunked body", "POST /db/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n"+big+"\r\n0\r\n\r\n"); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a chunked body over --http-max-body: %d, want 413", code)
	}
	if code := send("slow body", "POST /db/x HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\nabc"); code != http.StatusRequestTimeout {
		t.Errorf("a body slower than --http-min-body-rate: %d, want 408", code)
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("a client's body made the relay warn:\n%s", logs.String())
	}
}

// An upstream that does not answer in time is a 504 (Gateway Timeout),
// one that refuses the connection a 502: an operator reading the status
// knows which. Here the TLS handshake with a service that accepts and
// then says nothing times out.
func TestRouteUpstreamTimeoutIs504(t *testing.T) {
	defer func(d time.Duration) { upstream.TLSHandshakeTimeout = d }(upstream.TLSHandshakeTimeout)
	upstream.TLSHandshakeTimeout = 200 * time.Millisecond
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered, until the test ends
		}
	}()
	refusing, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusingAddr := refusing.Addr().String()
	refusing.Close() // nothing listens there now
	s := relaytest.New(t, nil)
	var rts []Route
	for _, spec := range []string{"/silent/=https://" + silent.Addr().String() + "/", "/gone/=http://" + refusingAddr + "/"} {
		rt, err := Parse(spec)
		if err != nil {
			t.Fatal(err)
		}
		rts = append(rts, rt)
	}
	if err := Register(s, Config{Routes: rts}); err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, s)
	for path, want := range map[string]int{"/silent/x": http.StatusGatewayTimeout, "/gone/x": http.StatusBadGateway} {
		code, _, body := relaytest.HTTP(t, "GET", "http://"+relaytest.Addr(s)+path, "")
		if code != want {
			t.Errorf("GET %s: %d %q, want %d", path, code, body, want)
		}
	}
}
