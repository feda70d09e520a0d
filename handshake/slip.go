package handshake

import "errors"

// SLIP framing (RFC 1055) as nymea's TunnelProxy uses it on a server
// connection: each frame is [addr hi][addr lo][payload], escaped (0xC0 →
// 0xDB 0xDC, 0xDB → 0xDB 0xDD) and terminated by 0xC0. Address 0 carries
// JSON-RPC; 1..0xFFFE are clients.
const (
	slipEnd    = 0xC0
	slipEsc    = 0xDB
	slipEscEnd = 0xDC
	slipEscEsc = 0xDD
)

// ErrSLIPTooBig: a frame that must be held whole (SLIPHold) grew beyond
// its bound.
var ErrSLIPTooBig = errors.New("slip: frame too big")

// AppendSLIP appends one frame for addr carrying payload to dst. Cost: at
// most 2×len(payload)+5 bytes of dst growth, no other allocation.
func AppendSLIP(dst []byte, addr uint16, payload []byte) []byte {
	dst = slipByte(dst, byte(addr>>8))
	dst = slipByte(dst, byte(addr))
	for _, b := range payload {
		dst = slipByte(dst, b)
	}
	return append(dst, slipEnd)
}

func slipByte(dst []byte, b byte) []byte {
	switch b {
	case slipEnd:
		return append(dst, slipEsc, slipEscEnd)
	case slipEsc:
		return append(dst, slipEsc, slipEscEsc)
	}
	return append(dst, b)
}

// SLIPEvent says what a piece that SLIPDecoder.Feed delivers is.
type SLIPEvent uint8

const (
	// SLIPMore: a piece of a frame's payload; more follows.
	SLIPMore SLIPEvent = iota
	// SLIPEnd: the frame's last piece (possibly empty).
	SLIPEnd
	// SLIPAbort: the frame whose pieces were delivered turned out
	// malformed (a bad escape) and ends here; the piece is nil. What was
	// delivered is all there is of it.
	SLIPAbort
)

// SLIPDecoder decodes a SLIP stream delivered in arbitrary chunks and hands
// on each frame's payload as it arrives: a frame is never a unit of
// buffering, so frames of any size pass in constant memory (the decoder
// holds a 2-byte address and its escape state). Callers that need a frame
// whole (JSON-RPC) reassemble it with a SLIPHold.
//
// A frame with a bad escape (0xDB followed by anything but 0xDC or 0xDD)
// or shorter than its 2-byte address is dropped and counted in Dropped: in
// full if nothing of it was delivered yet, else from the bad escape on,
// with SLIPAbort. Empty frames (0xC0 0xC0) are skipped.
type SLIPDecoder struct {
	// Dropped counts malformed frames discarded.
	Dropped int

	addr  uint16
	naddr uint8 // address bytes seen in the current frame
	esc   bool  // previous byte was 0xDB
	bad   bool  // current frame had a bad escape
	begun bool  // pieces of the current frame were delivered
}

// Feed decodes p in place (p's bytes are overwritten) and calls piece for
// what it holds of each frame: one call per frame that ends in p
// (SLIPEnd, or SLIPAbort) and one for the start of a frame that does not
// (SLIPMore). data is a part of p, valid only during the call. Feed
// returns the first error piece returns; the decoder must not be used
// after one.
func (d *SLIPDecoder) Feed(p []byte, piece func(addr uint16, data []byte, ev SLIPEvent) error) error {
	s, w := 0, 0 // p[s:w]: the current frame's payload decoded from p, not yet delivered (w never passes the byte read)
	for _, b := range p {
		if d.esc {
			d.esc = false
			switch b {
			case slipEscEnd:
				b = slipEnd
			case slipEscEsc:
				b = slipEsc
			default:
				d.bad, w = true, s
				if b == slipEnd { // the frame ends here all the same
					if err := d.end(nil, piece); err != nil {
						return err
					}
				}
				continue
			}
		} else {
			switch b {
			case slipEnd:
				err := d.end(p[s:w], piece)
				s = w
				if err != nil {
					return err
				}
				continue
			case slipEsc:
				d.esc = true
				continue
			}
		}
		switch {
		case d.bad:
		case d.naddr < 2:
			d.addr = d.addr<<8 | uint16(b)
			d.naddr++
		default:
			p[w] = b
			w++
		}
	}
	if w > s && !d.bad {
		d.begun = true
		return piece(d.addr, p[s:w], SLIPMore)
	}
	return nil
}

// end finishes the current frame, whose last piece is rest.
func (d *SLIPDecoder) end(rest []byte, piece func(uint16, []byte, SLIPEvent) error) error {
	addr, naddr, bad, begun := d.addr, d.naddr, d.bad, d.begun
	d.addr, d.naddr, d.bad, d.begun = 0, 0, false, false
	switch {
	case bad && begun:
		d.Dropped++
		return piece(addr, nil, SLIPAbort)
	case bad || naddr == 1:
		d.Dropped++
	case naddr == 2:
		return piece(addr, rest, SLIPEnd)
	}
	return nil // an empty frame
}

// SLIPHold reassembles the frames a caller must have whole (JSON-RPC on
// address 0) from SLIPDecoder's pieces, one frame at a time, holding at
// most Max payload bytes.
type SLIPHold struct {
	// Max bounds a held frame's payload; 0 means 64 KiB.
	Max int

	buf []byte
}

// Add takes the next piece of a frame. It returns the frame's whole
// payload once ev is SLIPEnd (valid until the next Add), nil before;
// ErrSLIPTooBig once the frame outgrows Max (the frame is forgotten).
// SLIPAbort forgets the frame.
func (h *SLIPHold) Add(data []byte, ev SLIPEvent) ([]byte, error) {
	limit := h.Max
	if limit <= 0 {
		limit = 64 << 10
	}
	if ev == SLIPAbort {
		h.buf = h.buf[:0]
		return nil, nil
	}
	if len(h.buf)+len(data) > limit {
		h.buf = h.buf[:0]
		return nil, ErrSLIPTooBig
	}
	if ev == SLIPMore {
		h.buf = append(h.buf, data...)
		return nil, nil
	}
	if len(h.buf) == 0 {
		return data, nil // whole in one piece: no copy
	}
	whole := append(h.buf, data...)
	h.buf = whole[:0]
	return whole, nil
}
