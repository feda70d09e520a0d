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

func decodeAll(t testing.TB, d *SLIPDecoder, chunks ...[]byte) []slipFrame {
	var out []slipFrame
	for _, c := range chunks {
		err := d.Feed(c, func(a uint16, p []byte) error {
			out = append(out, slipFrame{a, append([]byte(nil), p...)})
			return nil
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

func TestSLIPTooBig(t *testing.T) {
	d := SLIPDecoder{MaxFrame: 10}
	err := d.Feed(make([]byte, 11), func(uint16, []byte) error { return nil })
	if err != ErrSLIPTooBig {
		t.Fatalf("err %v", err)
	}
}

func FuzzSLIP(f *testing.F) {
	f.Add([]byte{0, 1, 'a', 0xC0}, 3)
	f.Add([]byte{0xDB, 0xDC, 0xDB, 0xDD, 0xC0, 0xDB, 0x00, 0xC0}, 1)
	f.Add(AppendSLIP(nil, 0xFFFF, []byte{0xC0, 0xDB}), 2)
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		d := SLIPDecoder{MaxFrame: 1 << 12}
		if split < 0 || split > len(data) {
			split = len(data) / 2
		}
		var frames []slipFrame
		emit := func(a uint16, p []byte) error {
			frames = append(frames, slipFrame{a, append([]byte(nil), p...)})
			return nil
		}
		if d.Feed(data[:split], emit) != nil || d.Feed(data[split:], emit) != nil {
			return
		}
		// Whatever decodes re-encodes to a stream that decodes the same.
		var enc []byte
		for _, fr := range frames {
			enc = AppendSLIP(enc, fr.addr, fr.data)
		}
		var d2 SLIPDecoder
		again := decodeAll(t, &d2, enc)
		if len(again) != len(frames) || d2.Dropped != 0 {
			t.Fatalf("re-decode: %d frames, %d dropped; want %d", len(again), d2.Dropped, len(frames))
		}
		for i := range frames {
			if again[i].addr != frames[i].addr || !bytes.Equal(again[i].data, frames[i].data) {
				t.Fatal("re-decoded frame differs")
			}
		}
	})
}
