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

// ErrSLIPTooBig: a frame grew beyond the decoder's MaxFrame.
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

// SLIPDecoder reassembles frames from a byte stream delivered in arbitrary
// chunks. It holds at most MaxFrame bytes. A frame with a bad escape (0xDB
// followed by anything but 0xDC or 0xDD) or shorter than its 2-byte address
// is dropped and counted in Dropped; empty frames (0xC0 0xC0) are skipped.
type SLIPDecoder struct {
	// MaxFrame bounds a decoded frame (address included); 0 means 64 KiB + 2.
	MaxFrame int
	// Dropped counts malformed frames discarded.
	Dropped int

	buf []byte
	esc bool // previous byte was 0xDB
	bad bool // current frame had a bad escape
}

// Feed decodes p, calling frame for each complete frame with its address
// and payload (valid only during the call). It returns ErrSLIPTooBig, after
// which the decoder must not be used, or the first error frame returns.
func (d *SLIPDecoder) Feed(p []byte, frame func(addr uint16, payload []byte) error) error {
	limit := d.MaxFrame
	if limit <= 0 {
		limit = 64<<10 + 2
	}
	for _, b := range p {
		if d.esc {
			d.esc = false
			switch b {
			case slipEscEnd:
				b = slipEnd
			case slipEscEsc:
				b = slipEsc
			default:
				d.bad = true
				if b == slipEnd { // the frame ends here all the same
					if err := d.endFrame(frame); err != nil {
						return err
					}
				}
				continue
			}
		} else {
			switch b {
			case slipEnd:
				if err := d.endFrame(frame); err != nil {
					return err
				}
				continue
			case slipEsc:
				d.esc = true
				continue
			}
		}
		if len(d.buf) >= limit {
			return ErrSLIPTooBig
		}
		d.buf = append(d.buf, b)
	}
	return nil
}

func (d *SLIPDecoder) endFrame(frame func(uint16, []byte) error) error {
	buf, bad := d.buf, d.bad
	d.buf, d.bad = d.buf[:0], false
	switch {
	case len(buf) == 0 && !bad:
		return nil
	case bad || len(buf) < 2:
		d.Dropped++
		return nil
	}
	return frame(uint16(buf[0])<<8|uint16(buf[1]), buf[2:])
}

// Buffered reports how many bytes of an unfinished frame are held.
func (d *SLIPDecoder) Buffered() int { return len(d.buf) }
