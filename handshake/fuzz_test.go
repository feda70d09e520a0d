package handshake

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

func FuzzSniff(f *testing.F) {
	for _, s := range []string{"", "{", " \n{", "GET ", "GE", "GX", "\x16\x03\x01", "\x16\x03\x09", "OPTIONS"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		k := Sniff(p)
		if k > KindUnknown {
			t.Fatalf("Sniff(%q) = %v", p, k)
		}
		// A decided kind does not change with more bytes, and NeedMore
		// becomes decided or stays NeedMore on a prefix.
		for i := range p {
			pk := Sniff(p[:i])
			if pk != KindNeedMore && pk != k {
				t.Fatalf("Sniff(%q) = %v but Sniff(%q) = %v", p[:i], pk, p, k)
			}
		}
	})
}

func FuzzUpgrade(f *testing.F) {
	f.Add([]byte(goodHead))
	f.Add([]byte(strings.Replace(goodHead, "13", "8", 1)))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.0\r\n\r\n"))
	f.Add([]byte(goodHead[:30]))
	f.Fuzz(func(t *testing.T, head []byte) {
		orig := bytes.Clone(head)
		out, ok, err := Upgrade(nil, head)
		if ok != (err == nil) {
			t.Fatalf("ok=%v err=%v", ok, err)
		}
		if ok && (!bytes.HasPrefix(out, []byte("HTTP/1.1 101")) || !acceptOK(head, out)) {
			t.Fatalf("ok but response %q: not a 101 for a 16-byte key in the head", out)
		}
		if !ok && (!bytes.HasPrefix(out, []byte("HTTP/1.1 ")) || bytes.HasPrefix(out, []byte("HTTP/1.1 101"))) {
			t.Fatalf("failed but response %q", out)
		}
		if !bytes.Equal(head, orig) {
			t.Fatal("Upgrade modified head")
		}
		IsUpgradeRequest(head)
		RequestLine(head)
		if n := HeadEnd(head); n < 0 || n > len(head) {
			t.Fatalf("HeadEnd = %d", n)
		}
	})
}

func FuzzDecoder(f *testing.F) {
	f.Add(cframe(ws.OpText, true, "héllo"), 3, false, int64(0))
	f.Add(cat(cframe(ws.OpText, false, "a\xe2"), cframe(ws.OpPing, true, "p"), cframe(ws.OpContinuation, true, "\x82\xac")), 9, false, int64(0))
	f.Add(cframe(ws.OpBinary, true, strings.Repeat("x", 300)), 100, false, int64(200))
	f.Add(AppendFrame(nil, ws.OpBinary, true, make([]byte, 70000)), 5, true, int64(0))
	f.Add(AppendClose(nil, ws.StatusNormalClosure, "bye"), 1, true, int64(0))
	f.Add([]byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0}, 4, true, int64(0))
	f.Fuzz(func(t *testing.T, p []byte, split int, client bool, maxFrame int64) {
		d := Decoder{Client: client, MaxFrame: maxFrame}
		split = int(uint(split) % uint(len(p)+1))
		var left int64 // payload bytes still declared for the current frame
		for _, chunk := range [][]byte{p[:split], p[split:]} {
			for {
				f, n, err := d.Decode(chunk)
				if n < 0 || n > len(chunk) {
					t.Fatalf("n = %d for %d bytes", n, len(chunk))
				}
				if err != nil {
					if _, ok := err.(*CloseError); !ok || n != 0 {
						t.Fatalf("err %v (%T), n %d", err, err, n)
					}
					return
				}
				if f.Kind == FragNone && n != len(chunk) {
					t.Fatalf("FragNone consumed %d of %d bytes", n, len(chunk))
				}
				switch f.Kind {
				case FragHeader:
					if left != 0 {
						t.Fatalf("header with %d payload bytes pending", left)
					}
					left = f.Header.Length
				case FragPayload:
					left -= int64(len(f.Data))
					if left < 0 || len(f.Data) == 0 {
						t.Fatalf("payload chunk of %d bytes, left %d", len(f.Data), left)
					}
				}
				if f.FrameEnd && left != 0 {
					t.Fatalf("FrameEnd with %d bytes left", left)
				}
				chunk = chunk[n:]
				if len(chunk) == 0 {
					break
				}
			}
		}
	})
}

// FuzzUTF8Splits checks the streaming validator against utf8.Valid with
// the text cut at every position, two cuts at every pair of positions
// for short texts, and fed byte by byte (where Feed must fail at exactly
// the first byte no suffix can repair). The seeds put multi-byte code
// points on each side of the eight-byte words utf8.Valid skips ASCII in.
func FuzzUTF8Splits(f *testing.F) {
	for _, s := range []string{"", "a", "€", "😀", "\xe2\x82", "\xed\xa0\x80", "\xf4\x90\x80\x80",
		"\xc0\xaf", "\xe0\x9f\xbf", "\xf0\x8f\xbf\xbf", "\xf5\x80", "\x80", "abcdefg€hijklmn😀",
		"abcdefgh\xe2\x82", "1234567\xf0\x9f\x98\x80", "ü1234567ü", "héllo wörld ✓ ✗ 中文 😀😀"} {
		f.Add([]byte(s))
		for pad := 1; pad < 8; pad++ {
			f.Add([]byte(strings.Repeat("x", pad) + s))
		}
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		want := utf8.Valid(p)
		for cut := 0; cut <= len(p); cut++ {
			var v UTF8
			ok := v.Feed(p[:cut])
			ok = v.Feed(p[cut:]) && ok
			if got := ok && v.Complete(); got != want {
				t.Fatalf("UTF8(%q, cut %d) = %v, utf8.Valid = %v", p, cut, got, want)
			}
		}
		if len(p) <= 24 {
			for i := 0; i <= len(p); i++ {
				for j := i; j <= len(p); j++ {
					var v UTF8
					ok := v.Feed(p[:i])
					ok = v.Feed(p[i:j]) && ok
					ok = v.Feed(p[j:]) && ok
					if got := ok && v.Complete(); got != want {
						t.Fatalf("UTF8(%q, cuts %d %d) = %v, utf8.Valid = %v", p, i, j, got, want)
					}
				}
			}
		}
		var v UTF8
		for i := range p {
			if ok := v.Feed(p[i : i+1]); ok != validPrefix(p[:i+1]) {
				t.Fatalf("UTF8(%q): Feed of byte %d = %v", p, i, ok)
			}
			if v.bad {
				break
			}
		}
		if !v.bad && v.Complete() != want {
			t.Fatalf("UTF8(%q) byte by byte: Complete = %v, utf8.Valid = %v", p, v.Complete(), want)
		}
	})
}

func FuzzUTF8(f *testing.F) {
	for _, s := range []string{"", "abc", "€", "\xe2\x82", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\xaf", "😀x"} {
		f.Add([]byte(s), 1)
	}
	f.Fuzz(func(t *testing.T, p []byte, cut int) {
		if cut < 0 || cut > len(p) {
			cut = len(p) / 2
		}
		var v UTF8
		ok := v.Feed(p[:cut])
		ok = v.Feed(p[cut:]) && ok
		if got, want := ok && v.Complete(), utf8.Valid(p); got != want {
			t.Fatalf("UTF8(%q, cut %d) = %v, utf8.Valid = %v", p, cut, got, want)
		}
	})
}

// FuzzParseUUID holds ParseUUID to a regular expression of the same
// grammar: accepted exactly when it matches (and is not the nil UUID),
// and then canonical is its lowercase 36-character form.
func FuzzParseUUID(f *testing.F) {
	for _, s := range []string{"6ba7b810-9dad-11d1-80b4-00c04fd430c8", "{6BA7B810-9DAD-11D1-80B4-00C04FD430C8}",
		"00000000-0000-0000-0000-000000000000", "{6ba7b810-9dad-11d1-80b4-00c04fd430c8", "6ba7b8109dad11d180b400c04fd430c8", ""} {
		f.Add(s)
	}
	grammar := regexp.MustCompile(`^(\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$`)
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := ParseUUID(s)
		bare := strings.Trim(s, "{}")
		want := grammar.MatchString(s) && strings.Trim(bare, "0-") != ""
		if ok != want {
			t.Fatalf("ParseUUID(%q) ok = %v, want %v", s, ok, want)
		}
		if ok && got != strings.ToLower(bare) {
			t.Fatalf("ParseUUID(%q) = %q, want %q", s, got, strings.ToLower(bare))
		}
		if !ok && got != "" {
			t.Fatalf("ParseUUID(%q) refused but returned %q", s, got)
		}
	})
}

// FuzzCheckClosePayload: a close payload is empty, or a code RFC 6455
// lets an endpoint send (1000–1003, 1007–1011, 3000–4999) and a UTF-8
// reason; anything else is refused, never a panic.
func FuzzCheckClosePayload(f *testing.F) {
	for _, s := range []string{"", "\x03", "\x03\xe8", "\x03\xe8bye", "\x03\xed", "\x03\xe8\xff", "\x0b\xb8", "\x13\x88"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		err := CheckClosePayload(p)
		if len(p) == 0 {
			if err != nil {
				t.Fatalf("empty payload: %v", err)
			}
			return
		}
		code := 0
		if len(p) >= 2 {
			code = int(p[0])<<8 | int(p[1])
		}
		validCode := code >= 1000 && code <= 1003 || code >= 1007 && code <= 1011 || code >= 3000 && code <= 4999
		if want := len(p) >= 2 && validCode && utf8.Valid(p[2:]); (err == nil) != want {
			t.Fatalf("CheckClosePayload(%q) = %v, want accepted %v", p, err, want)
		}
	})
}
