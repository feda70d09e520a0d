package handshake

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
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
	if n := testing.AllocsPerRun(100, func() { Upgrade(dst, head) }); n != 0 {
		t.Errorf("Upgrade: %v allocs/op, want none (the fast path)", n)
	}
	if n := testing.AllocsPerRun(100, func() { Upgrade(nil, head) }); n != 1 && !raceEnabled {
		t.Errorf("Upgrade(nil, …): %v allocs/op, want 1 (the response)", n)
	}
	head = []byte(strings.Replace(goodHead, "Host: server.example.com\r\n", "Host: a\r\nHost: b\r\n", 1))
	n := testing.AllocsPerRun(100, func() { Upgrade(dst, head) })
	if n > 3 { // 2, plus 1 under the race detector
		t.Errorf("Upgrade through ws.Upgrader: %v allocs/op, want 2", n)
	}
}

// clientHeads are upgrade requests as clients send them: each must take
// the fast path, with ws.Upgrader's response.
var clientHeads = map[string]string{
	"RFC 6455 example": goodHead,
	"Chrome": "GET /?token=x HTTP/1.1\r\nHost: relay.example:8443\r\nConnection: Upgrade\r\nPragma: no-cache\r\n" +
		"Cache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n" +
		"Upgrade: websocket\r\nOrigin: https://app.example\r\nSec-WebSocket-Version: 13\r\n" +
		"Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n" +
		"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
	"Firefox": "GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n" +
		"Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n" +
		"Sec-WebSocket-Version: 13\r\nOrigin: null\r\nSec-WebSocket-Extensions: permessage-deflate\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: keep-alive, Upgrade\r\nSec-Fetch-Dest: empty\r\n" +
		"Sec-Fetch-Mode: websocket\r\nSec-Fetch-Site: cross-site\r\nPragma: no-cache\r\nCache-Control: no-cache\r\nUpgrade: websocket\r\n\r\n",
	"Qt (nymea)": "GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nOrigin: http://127.0.0.1:8443\r\nSec-WebSocket-Version: 13\r\n\r\n",
	"gobwas/ws": "GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n",
	"lower case, spaces": "GET /x HTTP/1.1\r\nhost:h\r\nupgrade:  WebSocket \r\nconnection:\tupgrade\r\n" +
		"sec-websocket-version: 13\r\nsec-websocket-key:AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n",
}

// TestFastUpgradeClients: the heads clients send take the fast path and
// get ws.Upgrader's response, byte for byte.
func TestFastUpgradeClients(t *testing.T) {
	for name, head := range clientHeads {
		out, ok := fastUpgrade([]byte("x"), []byte(head))
		want, wok, err := upgradeSlow([]byte("x"), []byte(head))
		if !ok || !wok || !bytes.Equal(out, want) {
			t.Errorf("%s: fast path ok=%v %q; ws.Upgrader ok=%v (%v) %q", name, ok, out, wok, err, want)
		}
	}
}

// TestFastUpgradeLeaves: heads the fast path leaves to ws.Upgrader, which
// accepts some of them (HTTP/1.2, a bare LF) and refuses
// the rest with its own statuses.
func TestFastUpgradeLeaves(t *testing.T) {
	g := goodHead
	for _, head := range []string{
		strings.Replace(g, "Host: server.example.com\r\n", "Host: a\r\nHost: b\r\n", 1),
		strings.Replace(g, "HTTP/1.1", "HTTP/1.2", 1),
		strings.Replace(g, "HTTP/1.1", "HTTP/1.0", 1),
		strings.Replace(g, "GET", "POST", 1),
		strings.Replace(g, "Host: server.example.com\r\n", "", 1),
		strings.Replace(g, "Host: server.example.com\r\n", "Host: server.example.com\n", 1),
		strings.Replace(g, "websocket", "webſocket", 1), // bytes.EqualFold folds ſ to s; ASCII does not
		strings.Replace(g, "keep-alive, Upgrade", "keep-alive,, Upgrade", 1),
		strings.Replace(g, "keep-alive, Upgrade", "keep-alive\t, Upgrade", 1), // ws.Upgrader refuses it
		strings.Replace(g, "keep-alive, Upgrade", "keep-alive", 1),
		strings.Replace(g, "13", "8", 1),
		strings.Replace(g, "dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ", 1),
		strings.Replace(g, "dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZ===", 1),
		strings.Replace(g, "\r\n\r\n", "\r\n: no name\r\n\r\n", 1),
		strings.Replace(g, "\r\n\r\n", "\r\nno colon\r\n\r\n", 1),
		g[:len(g)-2],
	} {
		if out, ok := fastUpgrade(nil, []byte(head)); ok {
			t.Errorf("fast path took %q: %q", head, out)
		}
	}
}

// TestFastUpgradeMutations: every one-byte deletion, replacement and
// insertion (of bytes that matter to the grammar) in the client heads:
// whatever the fast path takes, ws.Upgrader takes too, with the same
// response.
func TestFastUpgradeMutations(t *testing.T) {
	subs := []byte(" \t:,;=\r\n\x00\x7f\x80\xc5Aa0-")
	check := func(head []byte) {
		if out, ok := fastUpgrade(nil, head); ok {
			if want, wok, err := upgradeSlow(nil, head); !wok || !bytes.Equal(out, want) {
				t.Fatalf("head %q\nfast path: %q\nws.Upgrader: ok=%v %v %q", head, out, wok, err, want)
			}
		}
	}
	taken := 0
	for _, h := range clientHeads {
		for i := range len(h) {
			check([]byte(h[:i] + h[i+1:]))
			for _, b := range subs {
				check([]byte(h[:i] + string(b) + h[i+1:]))
				check([]byte(h[:i] + string(b) + h[i:]))
			}
			if _, ok := fastUpgrade(nil, []byte(h[:i]+"x"+h[i+1:])); ok {
				taken++
			}
		}
	}
	if taken == 0 {
		t.Fatal("no mutation took the fast path: the test checks nothing")
	}
}

// acceptOK reports whether a 101 response answers a key of head: its
// Sec-WebSocket-Accept is the one for some header line's value, which is
// the base64 encoding of 16 bytes. An oracle apart from both parsers.
func acceptOK(head, resp []byte) bool {
	_, accept, found := bytes.Cut(resp, []byte("Sec-WebSocket-Accept: "))
	accept, _, _ = bytes.Cut(accept, []byte("\r\n"))
	if !found {
		return false
	}
	for _, line := range bytes.Split(head, []byte("\n")) {
		_, v, _ := bytes.Cut(line, []byte(":"))
		k := bytes.Trim(v, " \t\r")
		raw, err := base64.StdEncoding.DecodeString(string(k))
		sum := sha1.Sum([]byte(string(k) + acceptGUID))
		if err == nil && len(raw) == 16 && base64.StdEncoding.EncodeToString(sum[:]) == string(accept) {
			return true
		}
	}
	return false
}

// TestUpgradeDecoyKeys: header lines that only Unicode trimming or case
// folding would read as one of the five names (a vertical tab, a
// no-break space, the Kelvin sign for K, the long s for s), short and
// long, before and after the real lines. ws.Upgrader ignores them; so must
// the fast path and the key check: no panic, the fast path agreeing with
// ws.Upgrader, and a 101 only for a real 16-byte key.
func TestUpgradeDecoyKeys(t *testing.T) {
	names := []string{"Host", "Upgrade", "Connection", "Sec-WebSocket-Version", "Sec-WebSocket-Key"}
	var decoys []string
	for _, n := range names {
		decoys = append(decoys, n+"\v", "\v"+n, n+"\f", n+"\u00a0", "\u0085"+n, n+"\u3000",
			strings.Replace(n, "k", "\u212a", 1), strings.Replace(n, "K", "\u212a", 1),
			strings.Replace(n, "s", "\u017f", 1), strings.Replace(n, "S", "\u017f", 1))
	}
	good := goodHead[:len(goodHead)-2]
	cut := strings.Index(good, "\r\n") + 2
	for _, d := range decoys {
		for _, v := range []string{"x", strings.Repeat("A", 40), "AQIDBAUGBwgJCgsMDQ4PEA=="} {
			line := d + ": " + v + "\r\n"
			for _, head := range []string{
				good[:cut] + line + good[cut:] + "\r\n",
				good + line + "\r\n",
				good[:cut] + "Host: again\r\n" + line + good[cut:] + "\r\n", // past the fast path
			} {
				out, ok, err := Upgrade(nil, []byte(head))
				if fast, fok := fastUpgrade(nil, []byte(head)); fok {
					if want, wok, werr := upgradeSlow(nil, []byte(head)); !wok || !bytes.Equal(fast, want) {
						t.Fatalf("head %q\nfast path: %q\nws.Upgrader: ok=%v %v %q", head, fast, wok, werr, want)
					}
				}
				if ok && !acceptOK([]byte(head), out) {
					t.Fatalf("head %q answered %q: not the accept of a 16-byte key in it", head, out)
				}
				if !ok && err == nil {
					t.Fatalf("head %q refused without an error", head)
				}
			}
		}
	}
}

// TestUpgradeChecksTheKeyAnswered: ws.Upgrader answers the last of two
// keys, so that is the one that must be the encoding of 16 bytes.
func TestUpgradeChecksTheKeyAnswered(t *testing.T) {
	good := goodHead[:len(goodHead)-2]
	for _, tc := range []struct {
		head string
		ok   bool
	}{
		{good + "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!\r\n\r\n", false},
		{strings.Replace(good, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!", 1) +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", true},
	} {
		out, ok, err := Upgrade(nil, []byte(tc.head))
		if ok != tc.ok || ok && !acceptOK([]byte(tc.head), out) {
			t.Errorf("head %q: ok=%v (%v) %q, want ok=%v", tc.head, ok, err, out, tc.ok)
		}
	}
}

// FuzzFastUpgrade holds the fast path to ws.Upgrader: a head it accepts
// ws.Upgrader accepts too, with the same response; dst is extended, not
// overwritten; the head is not modified.
func FuzzFastUpgrade(f *testing.F) {
	for _, h := range clientHeads {
		f.Add([]byte(h))
	}
	f.Add([]byte(strings.Replace(goodHead, "13", "8", 1)))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		if n := HeadEnd(head); n > 0 {
			head = head[:n]
		}
		orig := bytes.Clone(head)
		out, ok := fastUpgrade([]byte("dst"), head)
		if !bytes.Equal(head, orig) {
			t.Fatal("fastUpgrade modified head")
		}
		if !ok {
			if string(out) != "dst" {
				t.Fatalf("refused, yet dst became %q", out)
			}
			return
		}
		want, wok, err := upgradeSlow([]byte("dst"), head)
		if !wok || !bytes.Equal(out, want) {
			t.Fatalf("fast path: %q\nws.Upgrader: ok=%v %v %q", out, wok, err, want)
		}
	})
}

// BenchmarkUpgrade: the fast path against ws.Upgrader, on a browser's head.
func BenchmarkUpgrade(b *testing.B) {
	head := []byte(clientHeads["Firefox"])
	dst := make([]byte, 0, 256)
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Upgrade(dst, head)
		}
	})
	b.Run("ws.Upgrader", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			upgradeSlow(dst, head)
		}
	})
}

// TestUpgradeRefusesBadFieldNames: a header line whose name is not an
// HTTP token is a 400 (RFC 9112 5.1: whitespace between the name and the
// colon; 5.2: a line that begins with whitespace, obs-fold; RFC 9110 5.1:
// the name is a token, never empty). ws.Upgrader trims the name and so
// took "Upgrade : websocket" for Upgrade, as the fast path did, where
// net/http (and proxies) refuse the request or read another header.
func TestUpgradeRefusesBadFieldNames(t *testing.T) {
	g := goodHead
	for _, head := range []string{
		strings.Replace(g, "Upgrade: websocket", "Upgrade : websocket", 1),
		strings.Replace(g, "Host: server", "Host\t: server", 1),
		strings.Replace(g, "Host: server", " Host: server", 1),
		strings.Replace(g, "\r\n\r\n", "\r\n\tX-Folded: y\r\n\r\n", 1),
		strings.Replace(g, "\r\n\r\n", "\r\nX Pad: y\r\n\r\n", 1),
		strings.Replace(g, "\r\n\r\n", "\r\n: no name\r\n\r\n", 1),
		strings.Replace(g, "\r\n\r\n", "\r\nX\x00: y\r\n\r\n", 1),
	} {
		out, ok, err := Upgrade(nil, []byte(head))
		if ok || err == nil || !strings.HasPrefix(string(out), "HTTP/1.1 400 ") {
			t.Errorf("head %q: ok=%v err=%v, answered %q; want a 400", head, ok, err, out)
		}
	}
}

// TestUpgradeRefusesTwoHosts: a request with more than one Host line is a
// 400 (RFC 9112 3.2: a server MUST answer it so), as net/http on the same
// port answers it; ws.Upgrader, which the fast path leaves it to,
// accepted it.
func TestUpgradeRefusesTwoHosts(t *testing.T) {
	g := goodHead
	for _, head := range []string{
		strings.Replace(g, "Host: server.example.com\r\n", "Host: a\r\nHost: b\r\n", 1),
		strings.Replace(g, "\r\n\r\n", "\r\nhost: server.example.com\r\n\r\n", 1),
	} {
		out, ok, err := Upgrade(nil, []byte(head))
		if ok || !errors.Is(err, ws.ErrHandshakeBadHost) || !strings.HasPrefix(string(out), "HTTP/1.1 400 ") {
			t.Errorf("head %q: ok=%v err=%v, answered %q; want a 400 for Host", head, ok, err, out)
		}
	}
}
