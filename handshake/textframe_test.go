package handshake

import (
	"bytes"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// tfRun frames stream in chunks of the given size and returns the frames.
func tfRun(f *TextFramer, stream []byte, chunk int) (ops []ws.OpCode, payloads [][]byte) {
	for off := 0; off < len(stream); off += chunk {
		part := stream[off:min(off+chunk, len(stream))]
		b := append(make([]byte, 3), part...)
		op, s, e := f.Next(b, 3, len(b))
		if e > s || op == ws.OpBinary {
			ops = append(ops, op)
			payloads = append(payloads, append([]byte(nil), b[s:e]...))
		}
	}
	if rest := f.Flush(); len(rest) > 0 {
		ops = append(ops, ws.OpBinary)
		payloads = append(payloads, append([]byte(nil), rest...))
	}
	return ops, payloads
}

// TestTextFramer: valid UTF-8 split anywhere goes out as TEXT frames of
// whole characters, carrying the stream unchanged; from the first invalid
// byte on, BINARY.
func TestTextFramer(t *testing.T) {
	text := []byte("héllo wörld — ✓ 𝄞 done\x00nul is valid")
	for chunk := 1; chunk <= len(text); chunk++ {
		var f TextFramer
		ops, payloads := tfRun(&f, text, chunk)
		for i, op := range ops {
			if op != ws.OpText || !utf8.Valid(payloads[i]) {
				t.Fatalf("chunk %d: frame %d op %v payload %q", chunk, i, op, payloads[i])
			}
		}
		if got := bytes.Join(payloads, nil); !bytes.Equal(got, text) {
			t.Fatalf("chunk %d: stream changed: %q", chunk, got)
		}
	}
	bin := append([]byte("ok "), 0x00, 0xC0, 0xDB, 0xFF, 'x')
	for chunk := 1; chunk <= len(bin); chunk++ {
		var f TextFramer
		ops, payloads := tfRun(&f, bin, chunk)
		if got := bytes.Join(payloads, nil); !bytes.Equal(got, bin) {
			t.Fatalf("chunk %d: stream changed: %q", chunk, got)
		}
		seenBinary := false
		for i, op := range ops {
			if op == ws.OpText && (seenBinary || !utf8.Valid(payloads[i])) {
				t.Fatalf("chunk %d: TEXT frame %q after or with invalid bytes", chunk, payloads[i])
			}
			seenBinary = seenBinary || op == ws.OpBinary
		}
		if !f.Binary {
			t.Fatalf("chunk %d: still in text mode after invalid UTF-8", chunk)
		}
	}
	// A stream that ends inside a character: the rest goes out as BINARY.
	var f TextFramer
	ops, payloads := tfRun(&f, []byte("ab\xe2\x9c"), 10)
	if len(ops) != 2 || ops[0] != ws.OpText || string(payloads[0]) != "ab" || ops[1] != ws.OpBinary || string(payloads[1]) != "\xe2\x9c" {
		t.Fatalf("cut short: %v %q", ops, payloads)
	}
	// Binary from the start when asked.
	g := TextFramer{Binary: true}
	if ops, _ := tfRun(&g, []byte("text"), 10); ops[0] != ws.OpBinary {
		t.Fatal("Binary framer sent TEXT")
	}
}

func FuzzTextFramer(f *testing.F) {
	f.Add([]byte("héllo ✓"), 3)
	f.Add([]byte{0xC0, 0x80, 'a'}, 1)
	f.Fuzz(func(t *testing.T, stream []byte, chunk int) {
		if chunk <= 0 || chunk > 64 {
			chunk = 7
		}
		var fr TextFramer
		ops, payloads := tfRun(&fr, stream, chunk)
		if got := bytes.Join(payloads, nil); !bytes.Equal(got, stream) {
			t.Fatalf("stream changed")
		}
		for i, op := range ops {
			if op == ws.OpText && !utf8.Valid(payloads[i]) {
				t.Fatalf("invalid TEXT frame %q", payloads[i])
			}
		}
	})
}
