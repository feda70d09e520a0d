package handshake

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// CloseError is a protocol violation that must end the connection with a
// close frame carrying Code (1002 protocol error, 1007 invalid payload data,
// 1009 message too big). Error includes Reason.
type CloseError struct {
	Code   ws.StatusCode
	Reason string
}

// Error returns "websocket: close CODE: REASON". It allocates the string.
func (e *CloseError) Error() string {
	return "websocket: close " + strconv.Itoa(int(e.Code)) + ": " + e.Reason
}

// The violations Decode and CheckClosePayload report. They are shared values
// so that reporting one does not allocate; do not modify them.
var (
	errRSV            = &CloseError{ws.StatusProtocolError, "reserved bits set"}
	errOpCode         = &CloseError{ws.StatusProtocolError, "reserved opcode"}
	errControlFrag    = &CloseError{ws.StatusProtocolError, "fragmented control frame"}
	errControlLen     = &CloseError{ws.StatusProtocolError, "control frame payload over 125 bytes"}
	errNoMessage      = &CloseError{ws.StatusProtocolError, "continuation frame without a message"}
	errInMessage      = &CloseError{ws.StatusProtocolError, "data frame inside a fragmented message"}
	errUnmasked       = &CloseError{ws.StatusProtocolError, "client frame not masked"}
	errMasked         = &CloseError{ws.StatusProtocolError, "server frame masked"}
	errLengthMSB      = &CloseError{ws.StatusProtocolError, "payload length has its most significant bit set"}
	errTooBig         = &CloseError{ws.StatusMessageTooBig, "frame payload too big"}
	errUTF8           = &CloseError{ws.StatusInvalidFramePayloadData, "invalid UTF-8 in text message"}
	errCloseLen       = &CloseError{ws.StatusProtocolError, "close payload of 1 byte"}
	errCloseCode      = &CloseError{ws.StatusProtocolError, "invalid close code"}
	errCloseReasonUTF = &CloseError{ws.StatusInvalidFramePayloadData, "invalid UTF-8 in close reason"}
)

// FragmentKind says what a Fragment holds.
type FragmentKind uint8

// The kinds of Fragment.
const (
	// FragNone: nothing decoded yet, more input is needed.
	FragNone FragmentKind = iota
	// FragHeader: a frame header was decoded.
	FragHeader
	// FragPayload: a chunk of the current frame's payload.
	FragPayload
)

// Fragment is one step of decoding: a frame header or a chunk of payload.
type Fragment struct {
	Kind FragmentKind
	// Header is the current frame's header (FragHeader and FragPayload).
	// Masked is false and Mask zero: the payload is handed out unmasked.
	Header ws.Header
	// Data is, for FragPayload, a chunk of the payload, unmasked in place
	// and aliasing the slice passed to Decode.
	Data []byte
	// FrameEnd is true when this fragment ends the frame, including the
	// header of a frame with an empty payload.
	FrameEnd bool
	// MessageEnd is true when this fragment ends a data message: the frame
	// end of a text, binary or continuation frame with FIN set.
	MessageEnd bool
}

// Decoder decodes a stream of WebSocket frames (RFC 6455) incrementally from
// chunks of any size. It holds at most one partial frame header (14 bytes)
// and validates text messages as UTF-8 across chunks and frames. No
// extensions are supported. Decode does not allocate.
//
// Control frame payloads (close, ping, pong) are handed out as FragPayload
// chunks like any other; the caller gathers them (at most 125 bytes) and,
// for a close frame, runs CheckClosePayload on the whole payload.
//
// The zero Decoder is a server-role decoder with no frame size limit.
type Decoder struct {
	// MaxFrame is the largest accepted frame payload in bytes; 0 means
	// unlimited. A bigger frame is a CloseError with code 1009.
	MaxFrame int64
	// Client selects the client role: incoming frames must not be masked.
	// In the server role (false) they must be masked.
	Client bool

	hdr    [ws.MaxHeaderSize]byte // partial header
	nhdr   int                    // bytes buffered in hdr
	cur    ws.Header              // current frame, Masked cleared
	mask   [4]byte
	masked bool
	left   int64 // payload bytes of cur still to come
	pos    int64 // payload bytes of cur handed out, for the mask offset
	msgOp  ws.OpCode
	inMsg  bool // a data message has begun and not ended
	utf    UTF8
	err    *CloseError
}

// Decode consumes a prefix of p and returns one fragment and the number of
// bytes consumed. A FragNone fragment with a nil error means more input is
// needed: either p is empty, or all of p (n == len(p)) was buffered as part
// of a frame header. Payload bytes are unmasked in place in p.
//
// On a protocol violation err is a *CloseError; the connection must then be
// closed with its Code, n is 0, and every later call returns the same error.
// Violations: RSV bits set, reserved opcodes, fragmented control frames,
// control payloads over 125 bytes, a continuation frame with no message in
// progress or a new data message inside one, wrong masking for the role and
// a 64-bit length with its most significant bit set (all 1002); a payload
// over MaxFrame (1009); invalid UTF-8 in a text message (1007), reported at
// the first byte that cannot be valid, or at the message end if a code point
// is incomplete.
//
// Decode does not allocate.
func (d *Decoder) Decode(p []byte) (f Fragment, n int, err error) {
	if d.err != nil {
		return f, 0, d.err
	}
	if d.left > 0 {
		return d.payload(p)
	}
	b := p
	if d.nhdr > 0 {
		m := copy(d.hdr[d.nhdr:], p)
		b = d.hdr[:d.nhdr+m]
	}
	h, size, cerr := d.parseHeader(b)
	if cerr != nil {
		return d.fail(cerr)
	}
	if size == 0 { // incomplete: all of p fits in hdr
		if d.nhdr == 0 {
			copy(d.hdr[:], p)
		}
		d.nhdr += len(p)
		return f, len(p), nil
	}
	n = size - d.nhdr
	d.nhdr = 0

	d.mask, d.masked = h.Mask, h.Masked
	h.Mask, h.Masked = [4]byte{}, false
	d.cur = h
	d.left, d.pos = h.Length, 0
	if h.OpCode.IsData() {
		if h.OpCode != ws.OpContinuation {
			d.msgOp = h.OpCode
			d.utf.Reset()
		}
		d.inMsg = true
	}
	f = Fragment{Kind: FragHeader, Header: h}
	if h.Length == 0 {
		return d.endFrame(f, n)
	}
	return f, n, nil
}

// payload hands out the next chunk of the current frame's payload.
func (d *Decoder) payload(p []byte) (f Fragment, n int, err error) {
	if len(p) == 0 {
		return f, 0, nil
	}
	data := p[:min(int64(len(p)), d.left)]
	if d.masked {
		ws.Cipher(data, d.mask, int(d.pos%4))
	}
	d.pos += int64(len(data))
	d.left -= int64(len(data))
	if d.cur.OpCode.IsData() && d.msgOp == ws.OpText && !d.utf.Feed(data) {
		return d.fail(errUTF8)
	}
	f = Fragment{Kind: FragPayload, Header: d.cur, Data: data}
	if d.left == 0 {
		return d.endFrame(f, len(data))
	}
	return f, len(data), nil
}

// endFrame marks f as the end of the current frame and, for the final frame
// of a data message, the end of the message.
func (d *Decoder) endFrame(f Fragment, n int) (Fragment, int, error) {
	f.FrameEnd = true
	if d.cur.OpCode.IsData() && d.cur.Fin {
		if d.msgOp == ws.OpText && !d.utf.Complete() {
			return d.fail(errUTF8)
		}
		f.MessageEnd = true
		d.inMsg = false
	}
	return f, n, nil
}

func (d *Decoder) fail(e *CloseError) (Fragment, int, error) {
	d.err = e
	return Fragment{}, 0, e
}

// parseHeader parses the frame header at the start of b. It returns size 0
// if b is a valid but incomplete header. Violations are reported as early as
// the bytes that show them are present. It does not change d.
func (d *Decoder) parseHeader(b []byte) (h ws.Header, size int, err *CloseError) {
	if len(b) < 1 {
		return h, 0, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = b[0] >> 4 & 0x7
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	switch {
	case h.Rsv != 0:
		return h, 0, errRSV
	case h.OpCode.IsReserved():
		return h, 0, errOpCode
	case h.OpCode.IsControl() && !h.Fin:
		return h, 0, errControlFrag
	case h.OpCode == ws.OpContinuation && !d.inMsg:
		return h, 0, errNoMessage
	case (h.OpCode == ws.OpText || h.OpCode == ws.OpBinary) && d.inMsg:
		return h, 0, errInMessage
	}
	if len(b) < 2 {
		return h, 0, nil
	}
	h.Masked = b[1]&0x80 != 0
	length := int64(b[1] & 0x7f)
	switch {
	case h.Masked && d.Client:
		return h, 0, errMasked
	case !h.Masked && !d.Client:
		return h, 0, errUnmasked
	case h.OpCode.IsControl() && length > ws.MaxControlFramePayloadSize:
		return h, 0, errControlLen
	}
	size = 2
	switch length {
	case 126:
		size = 4
		if len(b) < size {
			return h, 0, nil
		}
		length = int64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		size = 10
		if len(b) < size {
			return h, 0, nil
		}
		u := binary.BigEndian.Uint64(b[2:])
		if u>>63 != 0 {
			return h, 0, errLengthMSB
		}
		length = int64(u)
	}
	if d.MaxFrame > 0 && length > d.MaxFrame {
		return h, 0, errTooBig
	}
	h.Length = length
	if h.Masked {
		if len(b) < size+4 {
			return h, 0, nil
		}
		copy(h.Mask[:], b[size:])
		size += 4
	}
	return h, size, nil
}

// InMessage reports whether a data message is in progress: its first frame
// has begun and its final frame has not ended. It also returns the
// message's opcode (ws.OpText or ws.OpBinary). It does not allocate.
func (d *Decoder) InMessage() (ws.OpCode, bool) {
	return d.msgOp, d.inMsg
}

// InFrame reports whether a frame is partly received: part of its header
// is buffered, or its payload has not all arrived. It does not allocate.
func (d *Decoder) InFrame() bool { return d.nhdr > 0 || d.left > 0 }

// InDataFrame is InFrame for data frames (text, binary, continuation)
// only: a control frame partly received is not counted. It does not
// allocate.
func (d *Decoder) InDataFrame() bool {
	if d.nhdr > 0 { // the first buffered byte holds the opcode
		return !ws.OpCode(d.hdr[0] & 0x0f).IsControl()
	}
	return d.left > 0 && !d.cur.OpCode.IsControl()
}

// CheckClosePayload checks the whole payload of a received close frame: it
// must be empty or hold a valid close code (1000-1003, 1007-1011,
// 3000-4999; else 1002) followed by a UTF-8 reason (else 1007). A 1-byte
// payload is a 1002 violation. The code and reason are read and checked by
// gobwas/ws (ParseCloseFrameDataUnsafe, CheckCloseFrameData); codes of
// 5000 and above, which it lets through, are refused too (RFC 6455 defines
// none). It returns nil or a *CloseError and does not allocate.
func CheckClosePayload(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if len(p) == 1 {
		return errCloseLen
	}
	code, reason := ws.ParseCloseFrameDataUnsafe(p)
	switch err := ws.CheckCloseFrameData(code, reason); {
	case err == ws.ErrProtocolInvalidUTF8:
		return errCloseReasonUTF
	case err != nil, code >= 5000:
		return errCloseCode
	}
	return nil
}

// AppendHeader appends the wire form of h to dst. Frames sent by a server
// have h.Masked false; a client sets h.Masked and h.Mask and masks the
// payload itself (see AppendFrameMasked). h.Length must not be negative.
// It does not allocate when dst has room for 14 more bytes.
func AppendHeader(dst []byte, h ws.Header) []byte {
	b0 := h.Rsv<<4 | byte(h.OpCode)&0x0f
	if h.Fin {
		b0 |= 0x80
	}
	var m byte
	if h.Masked {
		m = 0x80
	}
	switch {
	case h.Length <= 125:
		dst = append(dst, b0, m|byte(h.Length))
	case h.Length <= 0xffff:
		dst = append(dst, b0, m|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(h.Length))
	default:
		dst = append(dst, b0, m|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(h.Length))
	}
	if h.Masked {
		dst = append(dst, h.Mask[:]...)
	}
	return dst
}

// AppendFrame appends an unmasked (server role) frame with opcode op, FIN
// flag fin and the given payload to dst. It does not allocate when dst has
// room for the header and payload.
func AppendFrame(dst []byte, op ws.OpCode, fin bool, payload []byte) []byte {
	dst = AppendHeader(dst, ws.Header{Fin: fin, OpCode: op, Length: int64(len(payload))})
	return append(dst, payload...)
}

// AppendFrameMasked appends a client-role frame to dst: the payload is
// copied and masked with mask; payload itself is not changed. It does not
// allocate when dst has room for the header and payload.
func AppendFrameMasked(dst []byte, op ws.OpCode, fin bool, payload []byte, mask [4]byte) []byte {
	dst = AppendHeader(dst, ws.Header{Fin: fin, OpCode: op, Masked: true, Mask: mask, Length: int64(len(payload))})
	dst = append(dst, payload...)
	ws.Cipher(dst[len(dst)-len(payload):], mask, 0)
	return dst
}

// AppendClose appends a server-role close frame carrying code and reason to
// dst. Code 0 gives a close frame with an empty payload. A reason longer
// than 123 bytes is cut at a code point boundary to fit the 125-byte
// control payload limit. It does not allocate when dst has room.
func AppendClose(dst []byte, code ws.StatusCode, reason string) []byte {
	if code == 0 {
		return AppendHeader(dst, ws.Header{Fin: true, OpCode: ws.OpClose})
	}
	const maxReason = ws.MaxControlFramePayloadSize - 2
	if len(reason) > maxReason {
		cut := maxReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	dst = AppendHeader(dst, ws.Header{Fin: true, OpCode: ws.OpClose, Length: int64(2 + len(reason))})
	dst = binary.BigEndian.AppendUint16(dst, uint16(code))
	return append(dst, reason...)
}

// UTF8 is an incremental UTF-8 validator: a text may be fed in chunks split
// anywhere, even inside a code point. The zero value is ready to use.
// No method allocates. A chunk is checked by unicode/utf8.Valid (eight
// bytes of ASCII at a time) except for the at most three bytes of a code
// point cut at either end, which go through a byte-wise state machine: the
// carry between chunks is that state, four bytes.
type UTF8 struct {
	need   uint8 // continuation bytes still expected
	lo, hi byte  // allowed range of the next continuation byte
	bad    bool
}

// Feed validates the next chunk of text. It returns false at the first byte
// that can never be part of valid UTF-8, and from then on until Reset.
func (v *UTF8) Feed(p []byte) bool {
	if v.bad {
		return false
	}
	for v.need > 0 && len(p) > 0 { // the end of a code point the last chunk cut
		if !v.step(p[0]) {
			return false
		}
		p = p[1:]
	}
	whole := len(p) - cutTail(p)
	if !utf8.Valid(p[:whole]) {
		v.bad = true
		return false
	}
	for _, c := range p[whole:] {
		if !v.step(c) {
			return false
		}
	}
	return true
}

// cutTail returns the length of the incomplete code point p ends with
// (a lead byte and fewer continuation bytes than it announces), or 0.
func cutTail(p []byte) int {
	for i := 1; i <= min(len(p), utf8.UTFMax-1); i++ {
		c := p[len(p)-i]
		if c&0xc0 == 0x80 { // a continuation byte: look further back
			continue
		}
		if c >= 0xc0 && i < seqLen(c) {
			return i
		}
		return 0
	}
	return 0
}

// seqLen is the length of the sequence a lead byte c >= 0xc0 announces
// (4 for bytes no sequence starts with: step rejects them).
func seqLen(c byte) int {
	switch {
	case c < 0xe0:
		return 2
	case c < 0xf0:
		return 3
	}
	return 4
}

// step advances the state machine by one byte.
func (v *UTF8) step(c byte) bool {
	if v.need > 0 {
		if c < v.lo || c > v.hi {
			v.bad = true
			return false
		}
		v.need--
		v.lo, v.hi = 0x80, 0xbf
		return true
	}
	if c < 0x80 {
		return true
	}
	v.lo, v.hi = 0x80, 0xbf
	switch {
	case 0xc2 <= c && c <= 0xdf:
		v.need = 1
	case c == 0xe0:
		v.need, v.lo = 2, 0xa0 // no overlong forms
	case c == 0xed:
		v.need, v.hi = 2, 0x9f // no surrogates
	case 0xe1 <= c && c <= 0xef:
		v.need = 2
	case c == 0xf0:
		v.need, v.lo = 3, 0x90 // no overlong forms
	case 0xf1 <= c && c <= 0xf3:
		v.need = 3
	case c == 0xf4:
		v.need, v.hi = 3, 0x8f // nothing above U+10FFFF
	default:
		v.bad = true
		return false
	}
	return true
}

// Complete reports whether all text fed so far is valid UTF-8 with no code
// point left incomplete.
func (v *UTF8) Complete() bool { return !v.bad && v.need == 0 }

// Reset makes v ready to validate a new text.
func (v *UTF8) Reset() { *v = UTF8{} }
