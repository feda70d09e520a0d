package handshake

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

var testMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// cframe builds a masked (client-to-server) frame.
func cframe(op ws.OpCode, fin bool, payload string) []byte {
	return AppendFrameMasked(nil, op, fin, []byte(payload), testMask)
}

func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// frame is a decoded frame as seen through the Fragments of one frame.
type frame struct {
	op         ws.OpCode
	fin        bool
	payload    string
	messageEnd bool
}

// decodeStream feeds a copy of stream to d in chunks of step bytes (0: all
// at once) and returns the frames completed before the first error.
func decodeStream(t *testing.T, d *Decoder, stream []byte, step int) ([]frame, error) {
	t.Helper()
	stream = bytes.Clone(stream)
	var frames []frame
	var cur frame
	var left int64
	for len(stream) > 0 {
		k := len(stream)
		if step > 0 && step < k {
			k = step
		}
		chunk := stream[:k]
		stream = stream[k:]
		for len(chunk) > 0 {
			f, n, err := d.Decode(chunk)
			if err != nil {
				return frames, err
			}
			if n > len(chunk) || (n == 0 && f.Kind == FragNone) {
				t.Fatalf("Decode(%d bytes) = %+v, n=%d", len(chunk), f, n)
			}
			chunk = chunk[n:]
			switch f.Kind {
			case FragHeader:
				cur = frame{op: f.Header.OpCode, fin: f.Header.Fin}
				left = f.Header.Length
				if f.Header.Masked {
					t.Fatalf("header %+v still masked", f.Header)
				}
			case FragPayload:
				cur.payload += string(f.Data)
				left -= int64(len(f.Data))
				if left < 0 || f.FrameEnd != (left == 0) {
					t.Fatalf("payload overrun: left %d, FrameEnd %v", left, f.FrameEnd)
				}
			}
			if f.FrameEnd {
				cur.messageEnd = f.MessageEnd
				frames = append(frames, cur)
			}
		}
	}
	return frames, nil
}

func closeCode(err error) ws.StatusCode {
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return 0
}

func TestDecoderViolations(t *testing.T) {
	long := strings.Repeat("x", 126)
	tests := []struct {
		name     string
		client   bool
		maxFrame int64
		stream   []byte
		code     ws.StatusCode
		frames   int // frames decoded before the error
	}{
		{"rsv1", false, 0, cat([]byte{0xc1, 0x80}, testMask[:]), 1002, 0},
		{"rsv2", false, 0, cat([]byte{0xa1, 0x80}, testMask[:]), 1002, 0},
		{"rsv3", false, 0, cat([]byte{0x91, 0x80}, testMask[:]), 1002, 0},
		{"opcode 3", false, 0, cframe(3, true, ""), 1002, 0},
		{"opcode 7", false, 0, cframe(7, true, ""), 1002, 0},
		{"opcode 0xb", false, 0, cframe(0xb, true, ""), 1002, 0},
		{"opcode 0xf", false, 0, cframe(0xf, true, ""), 1002, 0},
		{"fragmented ping", false, 0, cframe(ws.OpPing, false, "x"), 1002, 0},
		{"fragmented close", false, 0, cframe(ws.OpClose, false, ""), 1002, 0},
		{"ping over 125", false, 0, cframe(ws.OpPing, true, long), 1002, 0},
		{"pong over 125", false, 0, cframe(ws.OpPong, true, long), 1002, 0},
		{"close over 125", false, 0, cframe(ws.OpClose, true, long), 1002, 0},
		{"continuation first", false, 0, cframe(ws.OpContinuation, true, "x"), 1002, 0},
		{"continuation after message", false, 0, cat(cframe(ws.OpText, true, "a"), cframe(ws.OpContinuation, true, "b")), 1002, 1},
		{"text in text", false, 0, cat(cframe(ws.OpText, false, "a"), cframe(ws.OpText, true, "b")), 1002, 1},
		{"binary in text", false, 0, cat(cframe(ws.OpText, false, "a"), cframe(ws.OpBinary, true, "b")), 1002, 1},
		{"text in binary after ping", false, 0, cat(cframe(ws.OpBinary, false, "a"), cframe(ws.OpPing, true, ""), cframe(ws.OpText, true, "b")), 1002, 2},
		{"unmasked to server", false, 0, AppendFrame(nil, ws.OpText, true, []byte("hi")), 1002, 0},
		{"masked to client", true, 0, cframe(ws.OpText, true, "hi"), 1002, 0},
		{"length msb", false, 0, cat([]byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0}, testMask[:]), 1002, 0},
		{"too big", false, 10, cframe(ws.OpBinary, true, "01234567890"), 1009, 0},
		{"too big 16 bit", false, 200, cframe(ws.OpBinary, true, strings.Repeat("x", 201)), 1009, 0},
		{"too big control", false, 3, cat(cframe(ws.OpBinary, true, "012"), cframe(ws.OpPing, true, "0123")), 1009, 1},
		{"bad utf8 byte", false, 0, cframe(ws.OpText, true, "a\xffb"), 1007, 0},
		{"overlong", false, 0, cframe(ws.OpText, true, "\xc0\xaf"), 1007, 0},
		{"surrogate", false, 0, cframe(ws.OpText, true, "\xed\xa0\x80"), 1007, 0},
		{"above max", false, 0, cframe(ws.OpText, true, "\xf4\x90\x80\x80"), 1007, 0},
		{"truncated at end", false, 0, cframe(ws.OpText, true, "ab\xe2\x82"), 1007, 0},
		{"split bad", false, 0, cat(cframe(ws.OpText, false, "a\xc3"), cframe(ws.OpContinuation, true, "b")), 1007, 1},
		{"split truncated", false, 0, cat(cframe(ws.OpText, false, "\xe2\x82"), cframe(ws.OpContinuation, true, "")), 1007, 1},
		{"split across ping truncated", false, 0, cat(cframe(ws.OpText, false, "\xf0\x9f"), cframe(ws.OpPing, true, "p"), cframe(ws.OpContinuation, true, "\x98")), 1007, 2},
		{"unmasked client text bad", true, 0, AppendFrame(nil, ws.OpText, true, []byte("\xff")), 1007, 0},
	}
	for _, tt := range tests {
		for _, step := range []int{0, 1, 3} {
			d := Decoder{Client: tt.client, MaxFrame: tt.maxFrame}
			frames, err := decodeStream(t, &d, tt.stream, step)
			if code := closeCode(err); code != tt.code || len(frames) != tt.frames {
				t.Errorf("%s (step %d): %d frames, err %v; want %d frames, code %d", tt.name, step, len(frames), err, tt.frames, tt.code)
			}
			// The error is sticky.
			if _, n, err2 := d.Decode([]byte{0x81}); err2 != err || n != 0 {
				t.Errorf("%s: after error Decode = %d, %v", tt.name, n, err2)
			}
		}
	}
}

func TestDecoderValid(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		want   []frame
	}{
		{"text", cframe(ws.OpText, true, "héllo €"), []frame{{ws.OpText, true, "héllo €", true}}},
		{"empty text", cframe(ws.OpText, true, ""), []frame{{ws.OpText, true, "", true}}},
		{"binary not utf8", cframe(ws.OpBinary, true, "\xff\xfe"), []frame{{ws.OpBinary, true, "\xff\xfe", true}}},
		{"ping not utf8", cframe(ws.OpPing, true, "\xff"), []frame{{ws.OpPing, true, "\xff", false}}},
		{"fragmented with ping", cat(
			cframe(ws.OpText, false, "a\xe2"),
			cframe(ws.OpPing, true, "ping"),
			cframe(ws.OpContinuation, false, ""),
			cframe(ws.OpContinuation, false, "\x82"),
			cframe(ws.OpPong, true, ""),
			cframe(ws.OpContinuation, true, "\xacz"),
			cframe(ws.OpBinary, true, "b"),
		), []frame{
			{ws.OpText, false, "a\xe2", false},
			{ws.OpPing, true, "ping", false},
			{ws.OpContinuation, false, "", false},
			{ws.OpContinuation, false, "\x82", false},
			{ws.OpPong, true, "", false},
			{ws.OpContinuation, true, "\xacz", true},
			{ws.OpBinary, true, "b", true},
		}},
		{"close", cframe(ws.OpClose, true, "\x03\xe8bye"), []frame{{ws.OpClose, true, "\x03\xe8bye", false}}},
	}
	for _, tt := range tests {
		for _, step := range []int{0, 1, 2, 5} {
			var d Decoder
			got, err := decodeStream(t, &d, tt.stream, step)
			if err != nil || !equalFrames(got, tt.want) {
				t.Errorf("%s (step %d) = %+v, %v; want %+v", tt.name, step, got, err, tt.want)
			}
		}
	}
}

func equalFrames(a, b []frame) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDecoderRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, 125, 126, 127, 1000, 0xffff, 0x10000, 70000} {
		payload := make([]byte, size)
		for i := range payload {
			payload[i] = byte(rng.Uint32())
		}
		for _, client := range []bool{false, true} {
			var stream []byte
			if client {
				stream = AppendFrame(nil, ws.OpBinary, true, payload)
			} else {
				stream = AppendFrameMasked(nil, ws.OpBinary, true, payload, testMask)
				if size > 0 && bytes.Equal(stream[len(stream)-size:], payload) {
					t.Fatal("AppendFrameMasked did not mask")
				}
			}
			wantLen := byte(size)
			switch {
			case size > 0xffff:
				wantLen = 127
			case size > 125:
				wantLen = 126
			}
			if stream[1]&0x7f != wantLen {
				t.Errorf("size %d: length byte %d, want %d", size, stream[1]&0x7f, wantLen)
			}
			var whole []frame
			for _, step := range []int{0, 1, 7, 4096} {
				if step == 1 && size > 1000 {
					continue
				}
				d := Decoder{Client: client}
				got, err := decodeStream(t, &d, stream, step)
				want := []frame{{ws.OpBinary, true, string(payload), true}}
				if err != nil || !equalFrames(got, want) {
					t.Fatalf("size %d client %v step %d: %d frames, err %v", size, client, step, len(got), err)
				}
				if step == 0 {
					whole = got
				} else if !equalFrames(got, whole) {
					t.Fatalf("size %d step %d differs from whole", size, step)
				}
			}
		}
	}
}

// TestDecoderByteAtATime checks that a frame fed one byte at a time yields
// the same header and payload bytes as the frame fed whole.
func TestDecoderByteAtATime(t *testing.T) {
	stream := cframe(ws.OpText, true, strings.Repeat("grüße ", 30))
	var whole Decoder
	f, n, err := whole.Decode(bytes.Clone(stream))
	if err != nil || f.Kind != FragHeader || n != 8 {
		t.Fatalf("whole header: %+v %d %v", f, n, err)
	}
	wantHeader := f.Header
	var d Decoder
	var header ws.Header
	var payload []byte
	for i := range stream {
		b := []byte{stream[i]}
		f, n, err := d.Decode(b)
		if err != nil || n != 1 {
			t.Fatalf("byte %d: %+v %d %v", i, f, n, err)
		}
		switch f.Kind {
		case FragNone:
			if i >= 8 {
				t.Fatalf("byte %d: no fragment", i)
			}
		case FragHeader:
			header = f.Header
		case FragPayload:
			payload = append(payload, f.Data...)
		}
		if f.FrameEnd != (i == len(stream)-1) {
			t.Fatalf("byte %d: FrameEnd %v", i, f.FrameEnd)
		}
	}
	if header != wantHeader || string(payload) != strings.Repeat("grüße ", 30) {
		t.Errorf("got %+v %q, want %+v", header, payload, wantHeader)
	}
}

// TestDecoderRejectsEarly checks that invalid bytes are reported when the
// byte that shows them arrives, not at the frame's end.
func TestDecoderRejectsEarly(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		at     int // index of the first byte that can never be valid
	}{
		{"rsv", cat([]byte{0xc1, 0x80}, testMask[:]), 0},
		{"unmasked", []byte{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'}, 1},
		{"control length", cframe(ws.OpPing, true, strings.Repeat("x", 200)), 1},
		{"utf8", cframe(ws.OpText, true, "abc\xe2\x28def"), 6 + 4},
	}
	for _, tt := range tests {
		var d Decoder
		stream := bytes.Clone(tt.stream)
		for i := range stream {
			_, _, err := d.Decode(stream[i : i+1])
			if (err != nil) != (i == tt.at) {
				t.Errorf("%s: byte %d: err %v", tt.name, i, err)
			}
			if err != nil {
				break
			}
		}
	}
}

func TestDecoderInMessage(t *testing.T) {
	var d Decoder
	stream := cat(cframe(ws.OpBinary, false, "a"), cframe(ws.OpPing, true, ""), cframe(ws.OpContinuation, true, "b"))
	if _, in := d.InMessage(); in {
		t.Fatal("in message before any frame")
	}
	steps := []bool{true, true, true, true, false} // after each fragment
	for i, want := range steps {
		f, n, err := d.Decode(stream)
		if err != nil {
			t.Fatal(err)
		}
		stream = stream[n:]
		op, in := d.InMessage()
		if in != want || (in && op != ws.OpBinary) {
			t.Errorf("fragment %d (%+v): InMessage = %v, %v; want %v", i, f, op, in, want)
		}
	}
}

// TestDecoderInDataFrame: a data frame partly received (header or
// payload) counts, a control frame partly received does not.
func TestDecoderInDataFrame(t *testing.T) {
	for _, tt := range []struct {
		op   ws.OpCode
		want bool
	}{{ws.OpText, true}, {ws.OpBinary, true}, {ws.OpPing, false}, {ws.OpPong, false}, {ws.OpClose, false}} {
		fr := cframe(tt.op, true, "\x03\xe8ab")
		for cut := 1; cut < len(fr); cut++ {
			var d Decoder
			if _, _, err := d.Decode(fr[:cut]); err != nil {
				t.Fatalf("op %d, %d bytes: %v", tt.op, cut, err)
			}
			if got := d.InDataFrame(); got != tt.want {
				t.Errorf("op %d, %d of %d bytes: InDataFrame = %v, want %v", tt.op, cut, len(fr), got, tt.want)
			}
		}
	}
}

func TestDecoderNoAlloc(t *testing.T) {
	stream := cat(
		AppendFrame(nil, ws.OpText, false, []byte("héllo")),
		AppendFrame(nil, ws.OpPing, true, nil),
		AppendFrame(nil, ws.OpContinuation, true, bytes.Repeat([]byte("x"), 300)),
	)
	n := testing.AllocsPerRun(100, func() {
		d := Decoder{Client: true}
		for p := stream; len(p) > 0; {
			_, n, err := d.Decode(p[:min(len(p), 5)])
			if err != nil {
				panic(err)
			}
			p = p[n:]
		}
	})
	if n != 0 {
		t.Errorf("Decode allocates %v times per stream", n)
	}
}

func TestCheckClosePayload(t *testing.T) {
	valid := func(c int) bool {
		return 1000 <= c && c <= 1003 || 1007 <= c && c <= 1011 || 3000 <= c && c <= 4999
	}
	for c := 0; c <= 0xffff; c++ {
		p := binary.BigEndian.AppendUint16(nil, uint16(c))
		err := CheckClosePayload(p)
		if valid(c) != (err == nil) {
			t.Errorf("code %d: err %v", c, err)
		}
		if err != nil && closeCode(err) != 1002 {
			t.Errorf("code %d: close code %d, want 1002", c, closeCode(err))
		}
	}
	tests := []struct {
		payload string
		code    ws.StatusCode
	}{
		{"", 0},
		{"\x03", 1002},
		{"\x03\xe8", 0},
		{"\x03\xe8normal ∂", 0},
		{"\x03\xe8\xff", 1007},
		{"\x03\xe8ab\xe2\x82", 1007},
		{"\x03\xe7", 1002}, // 999
		{"\x03\xed", 1002}, // 1005
		{"\x03\xee", 1002}, // 1006
		{"\x03\xf4", 1002}, // 1012
		{"\x0b\xb7", 1002}, // 2999
		{"\x0b\xb8", 0},    // 3000
		{"\x13\x87", 0},    // 4999
		{"\x13\x88", 1002}, // 5000
	}
	for _, tt := range tests {
		if code := closeCode(CheckClosePayload([]byte(tt.payload))); code != tt.code {
			t.Errorf("CheckClosePayload(%q) code %d, want %d", tt.payload, code, tt.code)
		}
	}
	if CheckClosePayload(nil) != nil {
		t.Error("nil payload: non-nil error")
	}
}

// TestCloseFrames sends a close frame for boundary codes through the
// decoder, reassembles it and checks it.
func TestCloseFrames(t *testing.T) {
	for _, code := range []ws.StatusCode{999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1015, 1016, 2999, 3000, 3999, 4000, 4999, 5000, 65535} {
		want := code.In(ws.StatusCodeRange{Min: 1000, Max: 1003}) || code.In(ws.StatusCodeRange{Min: 1007, Max: 1011}) || code.In(ws.StatusCodeRange{Min: 3000, Max: 4999})
		stream := AppendClose(nil, code, "bye")
		d := Decoder{Client: true}
		frames, err := decodeStream(t, &d, stream, 1)
		if err != nil || len(frames) != 1 || frames[0].op != ws.OpClose {
			t.Fatalf("code %d: %+v %v", code, frames, err)
		}
		if got := CheckClosePayload([]byte(frames[0].payload)) == nil; got != want {
			t.Errorf("code %d: valid %v, want %v", code, got, want)
		}
	}
}

func TestAppendClose(t *testing.T) {
	if got := AppendClose(nil, 0, "ignored"); !bytes.Equal(got, []byte{0x88, 0}) {
		t.Errorf("AppendClose(0) = %x", got)
	}
	got := AppendClose([]byte("x"), ws.StatusGoingAway, "bye")
	if want := "x\x88\x05\x03\xe9bye"; string(got) != want {
		t.Errorf("AppendClose = %q, want %q", got, want)
	}
	long := strings.Repeat("a", 122) + "€€"
	got = AppendClose(nil, ws.StatusNormalClosure, long)
	if len(got) > 2+125 || !utf8.Valid(got[4:]) || string(got[4:]) != long[:122] {
		t.Errorf("long reason: %d bytes %q", len(got), got[4:])
	}
	if err := CheckClosePayload(got[2:]); err != nil {
		t.Error(err)
	}
}

func TestAppendHeaderMatchesGobwas(t *testing.T) {
	headers := []ws.Header{
		{Fin: true, OpCode: ws.OpText},
		{OpCode: ws.OpBinary, Length: 125},
		{Fin: true, OpCode: ws.OpPing, Length: 5, Masked: true, Mask: testMask},
		{Fin: true, OpCode: ws.OpBinary, Length: 126},
		{Fin: true, OpCode: ws.OpBinary, Length: 0xffff, Masked: true, Mask: testMask},
		{Fin: true, OpCode: ws.OpBinary, Length: 0x10000},
		{OpCode: ws.OpContinuation, Length: 1 << 62, Rsv: ws.Rsv(true, false, true)},
	}
	for _, h := range headers {
		var want bytes.Buffer
		if err := ws.WriteHeader(&want, h); err != nil {
			t.Fatal(err)
		}
		got := AppendHeader(make([]byte, 0, ws.MaxHeaderSize), h)
		if !bytes.Equal(got, want.Bytes()) || len(got) != ws.HeaderSize(h) {
			t.Errorf("AppendHeader(%+v) = %x, want %x", h, got, want.Bytes())
		}
		back, err := ws.ReadHeader(bytes.NewReader(got))
		if err != nil || back != h {
			t.Errorf("ws.ReadHeader = %+v, %v; want %+v", back, err, h)
		}
	}
	dst := make([]byte, 0, 64)
	h := ws.Header{Fin: true, OpCode: ws.OpBinary, Length: 0x10000, Masked: true, Mask: testMask}
	if n := testing.AllocsPerRun(100, func() { AppendHeader(dst, h) }); n != 0 {
		t.Errorf("AppendHeader allocates %v times", n)
	}
}

func TestUTF8Random(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte("a\x00\x7f\x80\x8f\x90\x9f\xa0\xbf\xc0\xc1\xc2\xdf\xe0\xe1\xec\xed\xee\xef\xf0\xf1\xf3\xf4\xf5\xff")
	valid := 0
	for range 100000 {
		p := make([]byte, rng.IntN(12))
		for i := range p {
			p[i] = alphabet[rng.IntN(len(alphabet))]
		}
		want := utf8.Valid(p)
		if want {
			valid++
		}
		var v UTF8
		cut := rng.IntN(len(p) + 1)
		ok := v.Feed(p[:cut])
		ok = v.Feed(p[cut:]) && ok
		if got := ok && v.Complete(); got != want {
			t.Fatalf("UTF8(%q, cut %d) = %v, utf8.Valid = %v", p, cut, got, want)
		}
		// Feed must fail exactly at the first byte no suffix can repair.
		v.Reset()
		for i := range p {
			ok := v.Feed(p[i : i+1])
			if ok != validPrefix(p[:i+1]) {
				t.Fatalf("UTF8(%q): Feed of byte %d = %v", p, i, ok)
			}
			if !ok {
				break
			}
		}
	}
	if valid < 1000 {
		t.Fatalf("only %d valid inputs", valid)
	}
	var v UTF8
	for _, c := range "abc€😀" {
		if !v.Feed(utf8.AppendRune(nil, c)) {
			t.Fatal("valid rune rejected")
		}
	}
	if !v.Complete() {
		t.Fatal("not complete")
	}
}

// validPrefix reports whether p can be extended to valid UTF-8.
func validPrefix(p []byte) bool {
	for _, tail := range []string{"", "\x80", "\x80\x80", "\x80\x80\x80", "\xa0\x80", "\x90\x80\x80", "\x8f\x80\x80"} {
		if utf8.Valid(append(bytes.Clone(p), tail...)) {
			return true
		}
	}
	return false
}

// BenchmarkUTF8 feeds 16 KiB chunks of ASCII and of mixed text (one in
// four code points multi-byte), as a relay's TEXT tunnel does.
func BenchmarkUTF8(b *testing.B) {
	for _, tc := range []struct{ name, unit string }{{"ascii", "json {\"a\": 1} "}, {"mixed", "añb€c😀d"}} {
		p := []byte(strings.Repeat(tc.unit, 16<<10/len(tc.unit)))
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(p)))
			var v UTF8
			for b.Loop() {
				if !v.Feed(p) {
					b.Fatal("rejected")
				}
			}
		})
	}
}
