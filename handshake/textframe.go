package handshake

import (
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// TextFramer chooses the opcode of the frames that carry a byte stream
// (a raw TCP peer's bytes, a TunnelProxy server's) to a WebSocket client:
// TEXT while the stream is valid UTF-8 — each frame cut at a character
// boundary, the incomplete end of a character held back for the next
// frame — and BINARY from the first byte that cannot be UTF-8, for the
// rest of the stream. Clients that only listen for text messages (nymea's)
// then get text data whole, and binary data is never mangled into a TEXT
// frame. The zero TextFramer starts in text mode; set Binary to send
// BINARY frames only. It does not allocate.
type TextFramer struct {
	// Binary: every frame is BINARY (set by the owner, or once invalid
	// UTF-8 was seen).
	Binary bool
	carry  [utf8.UTFMax - 1]byte
	n      uint8
}

// Next frames the stream bytes b[lo:hi]; b[lo-3:lo] must be free room.
// It puts the bytes carried from the last call in front of them, keeps the
// incomplete end of a character for the next call, and returns the
// opcode and the payload's bounds within b: s..e, which may be empty when
// everything was carried.
func (f *TextFramer) Next(b []byte, lo, hi int) (op ws.OpCode, s, e int) {
	s = lo - int(f.n)
	copy(b[s:lo], f.carry[:f.n])
	f.n = 0
	if f.Binary {
		return ws.OpBinary, s, hi
	}
	cut, ok := utf8Prefix(b[s:hi])
	if !ok {
		f.Binary = true
		return ws.OpBinary, s, hi
	}
	f.n = uint8(copy(f.carry[:], b[s+cut:hi]))
	return ws.OpText, s, s + cut
}

// Flush returns what is still carried (the end of a character the stream
// stopped in the middle of) and forgets it: the owner sends it in a BINARY
// frame when the stream ends.
func (f *TextFramer) Flush() []byte {
	p := f.carry[:f.n]
	f.n = 0
	return p
}

// utf8Prefix reports whether p is valid UTF-8 except perhaps for an
// incomplete character at its end, and the length of p without that end.
func utf8Prefix(p []byte) (cut int, ok bool) {
	var v UTF8
	if !v.Feed(p) {
		return 0, false
	}
	cut = len(p)
	if !v.Complete() { // the last character is cut short: back to its first byte
		for cut > 0 && !utf8.RuneStart(p[cut-1]) {
			cut--
		}
		cut--
	}
	return cut, true
}
