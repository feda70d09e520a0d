package handshake

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"iter"
	"slices"
	"strings"

	"github.com/gobwas/ws"
)

var crlfcrlf = []byte("\r\n\r\n")

// HeadEnd returns the length of the HTTP head in p including the final
// CRLFCRLF, or 0 if the head is not yet complete. It does not allocate.
func HeadEnd(p []byte) int {
	i := bytes.Index(p, crlfcrlf)
	if i < 0 {
		return 0
	}
	return i + len(crlfcrlf)
}

// headConn feeds a request head to ws.Upgrader and collects its response.
type headConn struct {
	in  []byte
	out []byte
}

func (c *headConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *headConn) Write(p []byte) (int, error) {
	c.out = append(c.out, p...)
	return len(p), nil
}

// responseBadRequest is sent when gobwas/ws rejects a head without writing
// a response itself (a malformed request line or a truncated head).
const responseBadRequest = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 22\r\n\r\nmalformed HTTP request"

// responseBadKey is the response to a Sec-WebSocket-Key that is not the
// base64 encoding of 16 bytes, worded as gobwas/ws words its own.
const responseBadKey = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 47\r\n\r\nhandshake error: bad \"Sec-WebSocket-Key\" header"

// responseBadHost is the response to a request with more than one Host
// line, worded as gobwas/ws words its own.
const responseBadHost = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 34\r\n\r\nhandshake error: bad \"Host\" header"

// validKey reports whether the Sec-WebSocket-Key ws.Upgrader answered is
// the base64 encoding of 16 bytes. That is the last one in head (it
// keeps the last), its name and value read as it reads them: lines end at
// LF, spaces and tabs trimmed, names compared ASCII case-insensitively.
// Any other reading checks a key ws.Upgrader did not use: a decoy line
// ("Sec-WebSocket-Key\v: …", which Unicode trimming would match) or the
// first of two.
func validKey(head []byte) bool {
	var key []byte
	for name, v := range headers(head) {
		if asciiFold(name, "Sec-WebSocket-Key") {
			key = v
		}
	}
	return isKey(key)
}

// isKey reports whether key is the base64 encoding of 16 bytes (RFC
// 6455; ws.Upgrader checks only that it has 24 characters).
func isKey(key []byte) bool {
	if len(key) != 24 { // decoding more would overrun raw
		return false
	}
	var raw [18]byte // what 24 characters decode to, at most
	n, err := base64.StdEncoding.Decode(raw[:], key)
	return err == nil && n == 16
}

// errMalformed is returned when the head is not a parseable HTTP request.
var errMalformed = errors.New("handshake: malformed HTTP request")

// Upgrade performs the server side of the WebSocket opening handshake for a
// complete request head (the bytes up to and including CRLFCRLF; bytes after
// it are ignored), using ws.Upgrader. Any request path is accepted.
//
// On success it returns dst with the "HTTP/1.1 101 Switching Protocols"
// response appended and ok=true. Otherwise it returns dst with an HTTP error
// response appended, ok=false and err saying why. The status is the one
// gobwas/ws chooses: 426 Upgrade Required (with "Sec-WebSocket-Version: 13")
// for a Sec-WebSocket-Version other than 13, 405 for a method other than
// GET, 505 for HTTP/1.0 or other versions below 1.1, and 400 Bad Request for
// a missing or invalid Host, Upgrade, Connection, Sec-WebSocket-Key (it must
// be the base64 encoding of 16 bytes) or Sec-WebSocket-Version, for a
// repeated Host, for a header name that is not a token (whitespace before
// its colon, a line folded onto the one before), and for a malformed or
// truncated head.
// The head is not modified.
//
// A head in the shape clients send is answered in one pass (fastUpgrade);
// ws.Upgrader judges every other head, and writes every refusal but
// those of what it lets through (a key of 24 characters that does not
// encode 16 bytes, a name that is not a token, a repeated Host).
//
// Cost: one pass and no allocation but the growth of dst when it lacks
// room for the response (about 130 bytes on success); through
// ws.Upgrader, 2 allocations more (the reader/writer handed to it and its
// key buffer) and a pass of its own.
func Upgrade(dst []byte, head []byte) (out []byte, ok bool, err error) {
	if n := HeadEnd(head); n > 0 {
		head = head[:n]
	}
	if out, ok := fastUpgrade(dst, head); ok {
		return out, true, nil
	}
	return upgradeSlow(dst, head)
}

// upgradeSlow is Upgrade through ws.Upgrader, for a head fastUpgrade
// leaves to it.
func upgradeSlow(dst []byte, head []byte) (out []byte, ok bool, err error) {
	c := headConn{in: head, out: dst}
	_, err = ws.Upgrader{}.Upgrade(&c)
	if err == nil {
		if !validKey(head) {
			// gobwas/ws checks only the key's length; RFC 6455 asks for the
			// base64 encoding of 16 bytes.
			return append(dst, responseBadKey...), false, ws.ErrHandshakeBadSecKey
		}
		if !namesAreTokens(head) {
			// gobwas/ws trims the names it reads.
			return append(dst, responseBadRequest...), false, errMalformed
		}
		if !oneHost(head) {
			// gobwas/ws takes any number of Host lines; RFC 9112 asks
			// for a 400.
			return append(dst, responseBadHost...), false, ws.ErrHandshakeBadHost
		}
		return c.out, true, nil
	}
	if len(c.out) == len(dst) { // gobwas/ws wrote nothing
		if _, rejected := err.(*ws.ConnectionRejectedError); !rejected {
			err = errMalformed
		}
		c.out = append(c.out, responseBadRequest...)
	}
	return c.out, false, err
}

// The headers fastUpgrade looks for, one bit each.
const (
	seenHost = 1 << iota
	seenUpgrade
	seenConnection
	seenVersion
	seenKey
	seenAll = seenHost | seenUpgrade | seenConnection | seenVersion | seenKey
)

// acceptGUID is RFC 6455's GUID, hashed after the key for
// Sec-WebSocket-Accept.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// upgradeResponse is the 101 response up to Sec-WebSocket-Accept's value,
// byte for byte ws.Upgrader's.
const upgradeResponse = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "

// fastUpgrade appends to dst the 101 response to a complete head in the
// shape clients send: "GET uri HTTP/1.1", then "Name: value" lines (the
// name a token), each ended by CRLF, among them Host, "Upgrade: websocket", a Connection
// listing the token upgrade, "Sec-WebSocket-Version: 13" and a
// Sec-WebSocket-Key that is the base64 encoding of 16 bytes, each of
// these five once (names compared ASCII case-insensitively; other headers
// ignored, as ws.Upgrader ignores them). ok is false for anything else,
// for ws.Upgrader to judge: the fast path accepts only heads ws.Upgrader
// accepts, with the same response (FuzzFastUpgrade). One pass; it
// allocates only to grow dst.
func fastUpgrade(dst, head []byte) (out []byte, ok bool) {
	line, rest, ok := cutLine(head)
	if !ok {
		return dst, false
	}
	uri, isGet := bytes.CutPrefix(line, []byte("GET "))
	sp := bytes.IndexByte(uri, ' ')
	if !isGet || sp < 0 || string(uri[sp+1:]) != "HTTP/1.1" {
		return dst, false
	}
	var seen uint8
	var key []byte
	for {
		if line, rest, ok = cutLine(rest); !ok {
			return dst, false
		}
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return dst, false
		}
		name, v := line[:colon], trimSP(line[colon+1:])
		if !isToken(name) { // whitespace around it too: ws.Upgrader's answer is then a 400
			return dst, false
		}
		var bit uint8
		switch { // the five names differ in length: one comparison per line
		case len(name) == 4 && asciiFold(name, "Host"):
			bit = seenHost
		case len(name) == 7 && asciiFold(name, "Upgrade"):
			bit, ok = seenUpgrade, asciiFold(v, "websocket")
		case len(name) == 10 && asciiFold(name, "Connection"):
			bit, ok = seenConnection, listsUpgrade(v)
		case len(name) == 21 && asciiFold(name, "Sec-WebSocket-Version"):
			bit, ok = seenVersion, string(v) == "13"
		case len(name) == 17 && asciiFold(name, "Sec-WebSocket-Key"):
			bit, key = seenKey, v
		default:
			continue
		}
		if !ok || seen&bit != 0 {
			return dst, false
		}
		seen |= bit
	}
	if seen != seenAll || !isKey(key) {
		return dst, false
	}
	var buf [24 + len(acceptGUID)]byte
	copy(buf[copy(buf[:], key):], acceptGUID)
	sum := sha1.Sum(buf[:])
	dst = slices.Grow(dst, len(upgradeResponse)+28+4) // one allocation, if any
	dst = append(dst, upgradeResponse...)
	dst = base64.StdEncoding.AppendEncode(dst, sum[:])
	return append(dst, "\r\n\r\n"...), true
}

// cutLine cuts p at its first CR, which must be followed by LF: the line
// before it and what follows the CRLF. ok is false without one, or with
// an LF in the line (ws.Upgrader ends a line at a bare LF too).
func cutLine(p []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(p, '\r')
	if i < 0 || i+1 == len(p) || p[i+1] != '\n' || bytes.IndexByte(p[:i], '\n') >= 0 {
		return nil, nil, false
	}
	return p[:i], p[i+2:], true
}

// trimSP is b without leading and trailing spaces and tabs.
func trimSP(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// asciiFold reports whether b equals s ignoring ASCII case (s is ASCII).
func asciiFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(s) {
		if b[i]|0x20 != s[i]|0x20 || (b[i]|0x20 < 'a' || b[i]|0x20 > 'z') && b[i] != s[i] {
			return false
		}
	}
	return true
}

// listsUpgrade reports whether v, a comma-separated list of tokens
// ("keep-alive, Upgrade"), has the token upgrade. It is false for a list
// that is not plainly that: an empty element, one that is not a token, or
// a tab around one (gobwas/httphead's lexer refuses some).
func listsUpgrade(v []byte) bool {
	found := false
	for v != nil {
		var tok []byte
		tok, v, _ = bytes.Cut(v, []byte(","))
		for len(tok) > 0 && tok[0] == ' ' {
			tok = tok[1:]
		}
		for len(tok) > 0 && tok[len(tok)-1] == ' ' {
			tok = tok[:len(tok)-1]
		}
		if len(tok) == 0 {
			return false
		}
		for _, b := range tok {
			if !isTokenChar(b) {
				return false
			}
		}
		found = found || asciiFold(tok, "upgrade")
	}
	return found
}

// oneHost reports whether head has at most one Host line (RFC 9112 3.2).
func oneHost(head []byte) bool {
	n := 0
	for name := range headers(head) {
		if asciiFold(name, "Host") {
			n++
		}
	}
	return n <= 1
}

// namesAreTokens reports whether the name of every header line of head,
// up to the blank line, is an HTTP token (RFC 9110): not empty, no
// whitespace before the colon (RFC 9112 5.1 asks for a 400) nor at the
// start of the line (obs-fold, 5.2), no control character. Lines are read
// as ws.Upgrader reads them (ending at LF); it refuses a line without a
// colon itself.
func namesAreTokens(head []byte) bool {
	for line := range headerLines(head) {
		if name, _, _ := bytes.Cut(line, []byte(":")); !isToken(name) {
			return false
		}
	}
	return true
}

// isToken reports whether b is an HTTP token (RFC 9110): one or more
// token characters.
func isToken(b []byte) bool {
	for _, c := range b {
		if !isTokenChar(c) {
			return false
		}
	}
	return len(b) > 0
}

// isTokenChar reports whether b may appear in an HTTP token (RFC 9110).
func isTokenChar(b byte) bool {
	return 'a' <= b|0x20 && b|0x20 <= 'z' || '0' <= b && b <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

// IsUpgradeRequest reports whether head has an "Upgrade" header whose value
// lists the token "websocket" (both compared case-insensitively). It is used
// to route plain HTTP requests such as GET /metrics elsewhere. It does not
// allocate.
func IsUpgradeRequest(head []byte) bool {
	value, _ := headValue(head, "Upgrade")
	for value != nil {
		var tok []byte
		tok, value, _ = bytes.Cut(value, []byte(","))
		if asciiFold(trimSP(tok), "websocket") {
			return true
		}
	}
	return false
}

// HeaderValue returns the value of the first header field of head called
// name, as a slice of head: HTTP's grammar, as ws.Upgrader reads it
// (lines end at LF, spaces and tabs trimmed, names compared ASCII
// case-insensitively; name is ASCII). It does not allocate.
func HeaderValue(head []byte, name string) (value []byte, ok bool) { return headValue(head, name) }

// headValue is HeaderValue.
func headValue(head []byte, name string) (value []byte, ok bool) {
	for k, v := range headers(head) {
		if asciiFold(k, name) {
			return v, true
		}
	}
	return nil, false
}

// headers yields head's header fields, from the line after the request
// line to the blank line, as ws.Upgrader reads them: a line ends at LF
// (a CR before it dropped), name and value are trimmed of spaces and
// tabs, and a line without a colon yields nothing. Slices of head.
func headers(head []byte) iter.Seq2[[]byte, []byte] {
	return func(yield func(name, value []byte) bool) {
		for line := range headerLines(head) {
			if k, v, found := bytes.Cut(line, []byte(":")); found && !yield(trimSP(k), trimSP(v)) {
				return
			}
		}
	}
}

// headerLines yields head's header lines, from the line after the
// request line to the blank line, as ws.Upgrader reads them: a line ends
// at LF, a CR before it dropped. Slices of head.
func headerLines(head []byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		_, lines, _ := bytes.Cut(head, []byte("\n")) // skip the request line
		for len(lines) > 0 {
			var line []byte
			line, lines, _ = bytes.Cut(lines, []byte("\n"))
			line = bytes.TrimSuffix(line, []byte("\r"))
			if len(line) == 0 || !yield(line) {
				return // end of head, or the caller's
			}
		}
	}
}

// RequestLine returns the method and path of head's request line
// ("METHOD PATH HTTP/x.y"), as slices of head. ok is false if the first line
// does not have that form. It does not allocate.
func RequestLine(head []byte) (method, path []byte, ok bool) {
	line, _, _ := bytes.Cut(head, []byte("\r\n"))
	method, rest, ok1 := bytes.Cut(line, []byte(" "))
	path, proto, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 || len(method) == 0 || len(path) == 0 || !bytes.HasPrefix(proto, []byte("HTTP/")) {
		return nil, nil, false
	}
	return method, path, true
}

// SubprotocolListed reports whether head's Sec-WebSocket-Protocol header
// (a comma-separated list, possibly repeated) names proto, compared
// exactly as RFC 6455 asks. It does not allocate.
func SubprotocolListed(head []byte, proto string) bool {
	for k, v := range headers(head) {
		if !asciiFold(k, "Sec-WebSocket-Protocol") {
			continue
		}
		for v != nil {
			var tok []byte
			tok, v, _ = bytes.Cut(v, []byte(","))
			if string(trimSP(tok)) == proto {
				return true
			}
		}
	}
	return false
}
