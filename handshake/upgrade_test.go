package handshake

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

const goodHead = "GET /any/path?x=1 HTTP/1.1\r\n" +
	"Host: server.example.com\r\n" +
	"Upgrade: websocket\r\n" +
	"Connection: keep-alive, Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
	"Sec-WebSocket-Version: 13\r\n" +
	"\r\n"

func TestHeadEnd(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"", 0},
		{"GET / HTTP/1.1\r\n", 0},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r", 0},
		{"GET / HTTP/1.1\r\n\r\n", 18},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 27},
		{"\r\n\r\n", 4},
		{"GET / HTTP/1.1\n\n", 0},
	}
	for _, tt := range tests {
		if got := HeadEnd([]byte(tt.in)); got != tt.want {
			t.Errorf("HeadEnd(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
	in := []byte(goodHead)
	if n := testing.AllocsPerRun(100, func() { HeadEnd(in) }); n != 0 {
		t.Errorf("HeadEnd allocates %v times", n)
	}
}

func TestUpgradeOK(t *testing.T) {
	head := []byte(goodHead + "trailing bytes are not read")
	orig := string(head)
	dst := []byte("prefix")
	out, ok, err := Upgrade(dst, head)
	if !ok || err != nil {
		t.Fatalf("Upgrade: ok=%v err=%v out=%q", ok, err, out)
	}
	if string(head) != orig {
		t.Errorf("Upgrade modified head: %q", head)
	}
	resp, found := strings.CutPrefix(string(out), "prefix")
	if !found || !strings.HasPrefix(resp, "HTTP/1.1 101 ") || !strings.HasSuffix(resp, "\r\n\r\n") {
		t.Fatalf("bad response %q", out)
	}
	for _, want := range []string{
		"\r\nUpgrade: websocket\r\n",
		"\r\nConnection: Upgrade\r\n",
		"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
	} {
		if !strings.Contains(resp, want) {
			t.Errorf("response %q lacks %q", resp, want)
		}
	}
}

func TestUpgradeFail(t *testing.T) {
	swap := func(old, new string) string { return strings.Replace(goodHead, old, new, 1) }
	tests := []struct {
		name   string
		head   string
		status string
		err    error
	}{
		{"post", swap("GET", "POST"), "405", ws.ErrHandshakeBadMethod},
		{"http10", swap("HTTP/1.1", "HTTP/1.0"), "505", ws.ErrHandshakeBadProtocol},
		{"no host", swap("Host: server.example.com\r\n", ""), "400", ws.ErrHandshakeBadHost},
		{"no upgrade", swap("Upgrade: websocket\r\n", ""), "400", ws.ErrHandshakeBadUpgrade},
		{"bad upgrade", swap("Upgrade: websocket", "Upgrade: h2c"), "400", ws.ErrHandshakeBadUpgrade},
		{"no connection", swap("Connection: keep-alive, Upgrade\r\n", ""), "400", ws.ErrHandshakeBadConnection},
		{"bad connection", swap("Connection: keep-alive, Upgrade", "Connection: close"), "400", ws.ErrHandshakeBadConnection},
		{"no key", swap("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), "400", ws.ErrHandshakeBadSecKey},
		{"short key", swap("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ=="), "400", ws.ErrHandshakeBadSecKey},
		{"non-base64 key", swap("dGhlIHNhbXBsZSBub25jZQ==", "!!!!!!!!!!!!!!!!!!!!!!!!"), "400", ws.ErrHandshakeBadSecKey},
		{"no version", swap("Sec-WebSocket-Version: 13\r\n", ""), "400", ws.ErrHandshakeBadSecVersion},
		{"version 8", swap("Version: 13", "Version: 8"), "426", ws.ErrHandshakeUpgradeRequired},
		{"garbage", "hello\r\n\r\n", "400", nil},
		{"truncated", goodHead[:40], "400", nil},
		{"empty", "", "400", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, ok, err := Upgrade([]byte("x"), []byte(tt.head))
			if ok || err == nil {
				t.Fatalf("ok=%v err=%v, want failure", ok, err)
			}
			if tt.err != nil && !errors.Is(err, tt.err) {
				t.Errorf("err = %v, want %v", err, tt.err)
			}
			if !strings.HasPrefix(string(out), "xHTTP/1.1 "+tt.status+" ") {
				t.Errorf("response %q, want status %s", out, tt.status)
			}
			if tt.status == "426" && !strings.Contains(string(out), "\r\nSec-WebSocket-Version: 13\r\n") {
				t.Errorf("426 response %q lacks Sec-WebSocket-Version", out)
			}
			if !bytes.Contains(out, []byte("\r\n\r\n")) {
				t.Errorf("response %q has no complete head", out)
			}
		})
	}
}

func TestIsUpgradeRequest(t *testing.T) {
	tests := []struct {
		head string
		want bool
	}{
		{goodHead, true},
		{"GET / HTTP/1.1\r\nupgrade:WebSocket\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nUPGRADE: foo, websocket\r\n\r\n", true},
		{"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nX-Upgrade: websocket\r\n\r\n", false},
		{"GET / HTTP/1.1\r\n\r\nUpgrade: websocket\r\n", false},
		{"Upgrade: websocket\r\n\r\n", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := IsUpgradeRequest([]byte(tt.head)); got != tt.want {
			t.Errorf("IsUpgradeRequest(%q) = %v, want %v", tt.head, got, tt.want)
		}
	}
	in := []byte(goodHead)
	if n := testing.AllocsPerRun(100, func() { IsUpgradeRequest(in) }); n != 0 {
		t.Errorf("IsUpgradeRequest allocates %v times", n)
	}
}

func TestRequestLine(t *testing.T) {
	tests := []struct {
		head, method, path string
		ok                 bool
	}{
		{goodHead, "GET", "/any/path?x=1", true},
		{"GET /metrics HTTP/1.1\r\n\r\n", "GET", "/metrics", true},
		{"OPTIONS * HTTP/1.0\r\n", "OPTIONS", "*", true},
		{"GET /metrics\r\n\r\n", "", "", false},
		{"GET  HTTP/1.1\r\n", "", "", false},
		{" / HTTP/1.1\r\n", "", "", false},
		{"GET / FTP/1.1\r\n", "", "", false},
		{"", "", "", false},
	}
	for _, tt := range tests {
		m, p, ok := RequestLine([]byte(tt.head))
		if string(m) != tt.method || string(p) != tt.path || ok != tt.ok {
			t.Errorf("RequestLine(%q) = %q, %q, %v; want %q, %q, %v", tt.head, m, p, ok, tt.method, tt.path, tt.ok)
		}
	}
}

func TestUpgradeAllocs(t *testing.T) {
	head := []byte(goodHead)
	dst := make([]byte, 0, 512)
	n := testing.AllocsPerRun(100, func() { Upgrade(dst, head) })
	if n > 3 { // 2, plus 1 under the race detector
		t.Errorf("Upgrade: %v allocs/op, want 2", n)
	}
}
