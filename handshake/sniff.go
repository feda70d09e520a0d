package handshake

import "strconv"

// Kind is what the first bytes of a connection say it speaks.
type Kind uint8

// The kinds Sniff can report.
const (
	// KindNeedMore means the bytes seen so far are a prefix of more than
	// one possibility, or of a known kind that is not yet decided.
	KindNeedMore Kind = iota
	// KindJSON is a stream whose first non-whitespace byte is '{'.
	KindJSON
	// KindHTTP is an HTTP/1.x request: a known method token then a space.
	KindHTTP
	// KindTLS is a TLS handshake record: 0x16 0x03 0x00..0x04.
	KindTLS
	// KindSTUN is a STUN/TURN message over TCP (RFC 5389): the two top
	// bits of the first byte clear and the magic cookie 0x2112A442 at
	// bytes 4 to 7.
	KindSTUN
	// KindUnknown is anything else; more bytes will not change it.
	KindUnknown
)

// String returns the kind's name. It does not allocate for the defined kinds.
func (k Kind) String() string {
	switch k {
	case KindNeedMore:
		return "NeedMore"
	case KindJSON:
		return "JSON"
	case KindHTTP:
		return "HTTP"
	case KindTLS:
		return "TLS"
	case KindSTUN:
		return "STUN"
	case KindUnknown:
		return "Unknown"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// httpMethods are the request methods Sniff recognises, each with its space.
var httpMethods = [...]string{
	"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ",
}

// stunCookie is STUN's magic cookie, at bytes 4 to 7 of every message.
var stunCookie = [4]byte{0x21, 0x12, 0xA4, 0x42}

// Sniff reports what kind of protocol the connection prefix p starts with.
// It decides from as few bytes as possible (8 at most) and returns
// KindNeedMore only while p could still become a known kind ("GE" is
// NeedMore, "GX" Unknown). Leading ASCII whitespace is allowed before a
// JSON '{' only. Sniff does not allocate.
func Sniff(p []byte) Kind {
	if len(p) == 0 {
		return KindNeedMore
	}
	if p[0] < 0x40 && p[0] != 0x16 && !isSniffSpace(p[0]) { // a STUN message type
		if len(p) < 8 {
			for i := 4; i < len(p); i++ {
				if p[i] != stunCookie[i-4] {
					return KindUnknown
				}
			}
			return KindNeedMore
		}
		if [4]byte(p[4:8]) == stunCookie {
			return KindSTUN
		}
		return KindUnknown
	}
	if p[0] == 0x16 {
		switch {
		case len(p) < 2:
			return KindNeedMore
		case p[1] != 0x03:
			return KindUnknown
		case len(p) < 3:
			return KindNeedMore
		case p[2] <= 0x04:
			return KindTLS
		}
		return KindUnknown
	}
	i := 0
	for i < len(p) && isSniffSpace(p[i]) {
		i++
	}
	switch {
	case i == len(p):
		return KindNeedMore // only whitespace so far: JSON may follow
	case p[i] == '{':
		return KindJSON
	case i > 0:
		return KindUnknown // whitespace is only allowed before '{'
	}
	for _, m := range httpMethods {
		k := min(len(p), len(m))
		if string(p[:k]) == m[:k] {
			if k == len(m) {
				return KindHTTP
			}
			return KindNeedMore
		}
	}
	return KindUnknown
}

func isSniffSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }
