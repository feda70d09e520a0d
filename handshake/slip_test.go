package handshake

import (
	"bytes"
	"math/rand"
	"testing"
)

type slipFrame struct {
	addr uint16
	data []byte
}

// decodeAll feeds chunks (copies: Feed decodes in place) and returns every
// frame whole.
func decodeAll(t testing.TB, d *SLIPDecoder, chunks ...[]byte) []slipFrame {
	var out []slipFrame
	var h SLIPHold
	h.Max = 1 << 30
	for _, c := range chunks {
		err := d.Feed(append([]byte(nil), c...), func(a uint16, p []byte, ev SLIPEvent) error {
			whole, err := h.Add(p, ev)
			if ev == SLIPEnd {
				out = append(out, slipFrame{a, append([]byte{}, whole...)})
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestSLIPRoundTripSpecialBytes(t *testing.T) {
	payload := []byte{0xC0, 0xDB, 0xDC, 0xDD, 0x00, 0xC0, 0xC0, 0xDB, 'x'}
	enc := AppendSLIP(nil, 0xC0DB, payload)
	want := []byte{0xDB, 0xDC, 0xDB, 0xDD, 0xDB, 0xDC, 0xDB, 0xDD, 0xDC, 0xDD, 0x00, 0xDB, 0xDC, 0xDB, 0xDC, 0xDB, 0xDD, 'x', 0xC0}
	if !bytes.Equal(enc, want) {
		t.Fatalf("encoded % x\nwant    % x", enc, want)
	}
	var d SLIPDecoder
	got := decodeAll(t, &d, enc)
	if len(got) != 1 || got[0].addr != 0xC0DB || !bytes.Equal(got[0].data, payload) {
		t.Fatalf("decoded %+v", got)
	}
}

func TestSLIPByteAtATimeAndBackToBack(t *testing.T) {
	var stream []byte
	var want []slipFrame
	r := rand.New(rand.NewSource(1))
	for i := range 50 {
		p := make([]byte, r.Intn(300))
		r.Read(p)
		want = append(want, slipFrame{uint16(i), p})
		stream = AppendSLIP(stream, uint16(i), p)
	}
	var d SLIPDecoder
	var chunks [][]byte
	for _, b := range stream {
		chunks = append(chunks, []byte{b})
	}
	got := decodeAll(t, &d, chunks...)
	if len(got) != len(want) {
		t.Fatalf("%d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].addr != want[i].addr || !bytes.Equal(got[i].data, want[i].data) {
			t.Fatalf("frame %d differs", i)
		}
	}
}

func TestSLIPBadEscapeDropsOnlyThatFrame(t *testing.T) {
	var d SLIPDecoder
	stream := append([]byte{0x00, 0x01, 'a', 0xDB, 'z', 'b', 0xC0}, AppendSLIP(nil, 2, []byte("ok"))...)
	got := decodeAll(t, &d, stream)
	if len(got) != 1 || got[0].addr != 2 || string(got[0].data) != "ok" || d.Dropped != 1 {
		t.Fatalf("got %+v dropped %d", got, d.Dropped)
	}
	// Bad escape right before the end byte; a 1-byte frame; empty frames.
	got = decodeAll(t, &d, []byte{0x00, 0x05, 0xDB, 0xC0, 0x07, 0xC0, 0xC0, 0xC0})
	if len(got) != 0 || d.Dropped != 3 {
		t.Fatalf("got %+v dropped %d", got, d.Dropped)
	}
}

// TestSLIPStreamsHugeFrames: a 16 MiB frame (nymea's library writes each
// TunnelProxySocket write as one frame) is handed on piece by piece as it
// arrives, one piece per chunk fed, without the decoder holding any of it.
func TestSLIPStreamsHugeFrames(t *testing.T) {
	payload := make([]byte, 16<<20)
	rand.New(rand.NewSource(2)).Read(payload)
	stream := AppendSLIP(nil, 7, payload)
	stream = AppendSLIP(stream, 0, []byte(`{"id":1}`))
	var d SLIPDecoder
	var got []byte
	var frames, pieces, maxPiece int
	chunk := make([]byte, 32<<10)
	for off := 0; off < len(stream); off += len(chunk) {
		n := copy(chunk, stream[off:])
		before := pieces
		err := d.Feed(chunk[:n], func(a uint16, p []byte, ev SLIPEvent) error {
			pieces++
			maxPiece = max(maxPiece, len(p))
			switch {
			case a == 7:
				got = append(got, p...)
			case ev == SLIPEnd && string(p) == `{"id":1}`:
			default:
				t.Fatalf("address %d: %q (%d)", a, p, ev)
			}
			if ev == SLIPEnd {
				frames++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if pieces == before {
			t.Fatalf("chunk at %d delivered nothing: the frame is being held", off)
		}
	}
	if frames != 2 || !bytes.Equal(got, payload) {
		t.Fatalf("%d frames, %d of %d bytes, equal %v", frames, len(got), len(payload), bytes.Equal(got, payload))
	}
	if maxPiece > len(chunk) {
		t.Fatalf("a piece of %d bytes from %d-byte chunks", maxPiece, len(chunk))
	}
	// Decoding a chunk in the middle of a frame allocates nothing.
	in := bytes.Repeat([]byte{'x', 0xDB, 0xDC}, 1000)
	buf := make([]byte, len(in))
	noop := func(uint16, []byte, SLIPEvent) error { return nil }
	if n := testing.AllocsPerRun(10, func() { copy(buf, in); _ = d.Feed(buf, noop) }); n != 0 {
		t.Fatalf("Feed allocates %v times per chunk", n)
	}
}

// TestSLIPAbortAfterPieces: a bad escape in a frame whose start was
// already handed on ends it with SLIPAbort; the next frame is intact.
func TestSLIPAbortAfterPieces(t *testing.T) {
	var d SLIPDecoder
	type call struct {
		addr uint16
		data string
		ev   SLIPEvent
	}
	var calls []call
	rec := func(a uint16, p []byte, ev SLIPEvent) error {
		calls = append(calls, call{a, string(p), ev})
		return nil
	}
	for _, c := range [][]byte{{0x00, 0x03, 'a', 'b'}, {'c', 0xDB, 'x', 'd', 0xC0}, AppendSLIP(nil, 4, []byte("ok"))} {
		if err := d.Feed(append([]byte(nil), c...), rec); err != nil {
			t.Fatal(err)
		}
	}
	want := []call{{3, "ab", SLIPMore}, {3, "", SLIPAbort}, {4, "ok", SLIPEnd}}
	if len(calls) != len(want) || d.Dropped != 1 {
		t.Fatalf("calls %+v, dropped %d; want %+v", calls, d.Dropped, want)
	}
	for i := range want {
		if calls[i] != want[i] {
			t.Fatalf("call %d: %+v, want %+v", i, calls[i], want[i])
		}
	}
}

func TestSLIPHold(t *testing.T) {
	h := SLIPHold{Max: 10}
	if w, err := h.Add([]byte("12345"), SLIPMore); w != nil || err != nil {
		t.Fatal(w, err)
	}
	if w, err := h.Add([]byte("6789"), SLIPEnd); string(w) != "123456789" || err != nil {
		t.Fatalf("%q %v", w, err)
	}
	h.Add([]byte("abc"), SLIPMore)
	h.Add(nil, SLIPAbort)
	if w, _ := h.Add([]byte("new"), SLIPEnd); string(w) != "new" {
		t.Fatalf("after an abort: %q", w)
	}
	h.Add([]byte("123456"), SLIPMore)
	if _, err := h.Add([]byte("12345"), SLIPMore); err != ErrSLIPTooBig {
		t.Fatalf("11 bytes held with Max 10: %v", err)
	}
	if w, err := (&SLIPHold{}).Add(make([]byte, 64<<10+1), SLIPEnd); err != ErrSLIPTooBig || w != nil {
		t.Fatalf("default bound: %v", err)
	}
}

// FuzzSLIP: whatever the chunking, the same frames end (SLIPEnd) and the
// same are dropped; what decodes re-encodes to a stream that decodes the
// same.
func FuzzSLIP(f *testing.F) {
	f.Add([]byte{0, 1, 'a', 0xC0}, 3)
	f.Add([]byte{0xDB, 0xDC, 0xDB, 0xDD, 0xC0, 0xDB, 0x00, 0xC0}, 1)
	f.Add(AppendSLIP(nil, 0xFFFF, []byte{0xC0, 0xDB}), 2)
	f.Add([]byte{0x00, 0x03, 'a', 'b', 'c', 0xDB, 'x', 'd', 0xC0, 0, 4, 'o', 0xC0}, 4)
	f.Fuzz(func(t *testing.T, data []byte, s1 int) {
		if s1 < 0 || s1 > len(data) {
			s1 = len(data) / 2
		}
		s2 := s1 + (len(data)-s1)/2 // three chunks: a frame may span all of them
		var whole, split SLIPDecoder
		want := decodeAll(t, &whole, data)
		got := decodeAll(t, &split, data[:s1], data[s1:s2], data[s2:])
		if len(got) != len(want) || split.Dropped != whole.Dropped {
			t.Fatalf("split: %d frames, %d dropped; whole: %d, %d", len(got), split.Dropped, len(want), whole.Dropped)
		}
		var enc []byte
		for i, fr := range want {
			if got[i].addr != fr.addr || !bytes.Equal(got[i].data, fr.data) {
				t.Fatalf("frame %d differs when split", i)
			}
			enc = AppendSLIP(enc, fr.addr, fr.data)
		}
		var d2 SLIPDecoder
		again := decodeAll(t, &d2, enc)
		if len(again) != len(want) || d2.Dropped != 0 {
			t.Fatalf("re-decode: %d frames, %d dropped; want %d", len(again), d2.Dropped, len(want))
		}
		for i := range want {
			if again[i].addr != want[i].addr || !bytes.Equal(again[i].data, want[i].data) {
				t.Fatal("re-decoded frame differs")
			}
		}
	})
}
