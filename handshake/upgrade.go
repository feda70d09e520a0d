package handshake

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"

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

// validKey reports whether head's Sec-WebSocket-Key is the base64 encoding
// of 16 bytes.
func validKey(head []byte) bool {
	key, _ := headValue(head, "Sec-WebSocket-Key")
	var raw [18]byte
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
// be the base64 encoding of 16 bytes) or Sec-WebSocket-Version, and for a
// malformed or truncated head.
// The head is not modified.
//
// Cost: 2 allocations per call (the reader/writer handed to ws.Upgrader and
// its key buffer), plus the growth of dst when it lacks room for the
// response (about 130 bytes on success).
func Upgrade(dst []byte, head []byte) (out []byte, ok bool, err error) {
	if n := HeadEnd(head); n > 0 {
		head = head[:n]
	}
	c := headConn{in: head, out: dst}
	_, err = ws.Upgrader{}.Upgrade(&c)
	if err == nil {
		if validKey(head) {
			return c.out, true, nil
		}
		// gobwas/ws checks only the key's length; RFC 6455 asks for the
		// base64 encoding of 16 bytes.
		return append(dst, responseBadKey...), false, ws.ErrHandshakeBadSecKey
	}
	if len(c.out) == len(dst) { // gobwas/ws wrote nothing
		if _, rejected := err.(*ws.ConnectionRejectedError); !rejected {
			err = errMalformed
		}
		c.out = append(c.out, responseBadRequest...)
	}
	return c.out, false, err
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
		if bytes.EqualFold(bytes.TrimSpace(tok), []byte("websocket")) {
			return true
		}
	}
	return false
}

// HeaderValue returns the trimmed value of the first header field of head
// called name (compared case-insensitively), as a slice of head. It does
// not allocate.
func HeaderValue(head []byte, name string) (value []byte, ok bool) { return headValue(head, name) }

// headValue returns the trimmed value of the first header field of head
// called name (compared case-insensitively).
func headValue(head []byte, name string) (value []byte, ok bool) {
	_, lines, _ := bytes.Cut(head, []byte("\n")) // skip the request line
	for len(lines) > 0 {
		var line []byte
		line, lines, _ = bytes.Cut(lines, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break // end of head
		}
		k, v, found := bytes.Cut(line, []byte(":"))
		if found && bytes.EqualFold(bytes.TrimSpace(k), []byte(name)) {
			return bytes.TrimSpace(v), true
		}
	}
	return nil, false
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
	_, lines, _ := bytes.Cut(head, []byte("\n")) // skip the request line
	for len(lines) > 0 {
		var line []byte
		line, lines, _ = bytes.Cut(lines, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		k, v, found := bytes.Cut(line, []byte(":"))
		if !found || !bytes.EqualFold(bytes.TrimSpace(k), []byte("Sec-WebSocket-Protocol")) {
			continue
		}
		for v != nil {
			var tok []byte
			tok, v, _ = bytes.Cut(v, []byte(","))
			if string(bytes.TrimSpace(tok)) == proto {
				return true
			}
		}
	}
	return false
}
