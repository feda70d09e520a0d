package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
)

// maxMessage bounds one received JSON message or WebSocket message.
const maxMessage = 16 << 20

// maxUpgradeResponse bounds what a WebSocket dial reads before the
// upgrade is done (the TLS handshake, the relay's response line and
// headers, and what it says when it refuses): net/http's
// DefaultMaxHeaderBytes. The upgrade's reader would otherwise keep an
// endless header line in memory until the timeout.
const maxUpgradeResponse = 1 << 20

// errUpgradeTooLong is returned by a WebSocket dial whose relay sent more
// than maxUpgradeResponse bytes without completing the upgrade.
var errUpgradeTooLong = fmt.Errorf("websocket upgrade: the relay's response is over %d bytes", maxUpgradeResponse)

// upgradeConn is a dialled connection that reads at most left bytes until
// the WebSocket upgrade is done (then off is set, before the connection is
// handed out).
type upgradeConn struct {
	net.Conn
	left int
	off  bool
}

// Read reads from the connection, failing once left bytes were read.
func (c *upgradeConn) Read(p []byte) (int, error) {
	if c.off {
		return c.Conn.Read(p)
	}
	if c.left <= 0 {
		return 0, errUpgradeTooLong
	}
	n, err := c.Conn.Read(p[:min(len(p), c.left)])
	c.left -= n
	return n, err
}

// CloseError is returned when the server sends a WebSocket close frame.
type CloseError struct {
	Code   ws.StatusCode // 0 when the frame carried no status code
	Reason string
}

// Error describes the close frame.
func (e *CloseError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("websocket closed by server: code %d", e.Code)
	}
	return fmt.Sprintf("websocket closed by server: code %d: %s", e.Code, e.Reason)
}

// Raw is a JSON-RPC-level connection (before any tunnel) that lets callers
// send arbitrary bytes. One goroutine may read (Recv, Call) while others
// write (Send, SendFrame).
type Raw struct {
	conn   net.Conn
	br     *bufio.Reader
	isWS   bool
	wmu    sync.Mutex // serialises frame writes (pongs come from the reader)
	closed bool       // a close frame was received (reader side only)

	skipNL  bool      // TCP: a '\n' ending the last JSON message may still come
	verbose io.Writer // where Call and Recv print the exchange, or nil
	secret  string    // masked in verbose output

	in   wsIn   // the reader's place in the WebSocket stream
	wbuf []byte // frames go out through it (under wmu), wsWriteChunk at most
	// werr, under wmu: why no frame may follow — a frame write failed
	// part-way (errFrameCut), or a close frame was sent (errCloseSent,
	// RFC 6455 5.5.1).
	werr error
}

// wsIn is the reading side's place in the WebSocket stream: payload is
// read straight into the caller's buffer, control frames into ctrl.
type wsIn struct {
	hdr    bool           // a data frame's header was read; left bytes of its payload remain
	left   int64          // payload bytes of the current data frame not yet read
	mask   [4]byte        // the frame's mask, if masked
	masked bool           //
	pos    int            // mask offset of the next payload byte
	fin    bool           // the current frame ends its message
	op     ws.OpCode      // the current message's opcode
	inMsg  bool           // inside a message: more of it is to come
	text   handshake.UTF8 // validates the current message when it is TEXT
	ctrl   [ws.MaxControlFramePayloadSize]byte
}

// wsWriteChunk is the most a frame write puts in one conn.Write: a longer
// payload is masked and written in pieces through the same buffer.
const wsWriteChunk = 32 << 10

// DialRaw connects to url (ws://, wss://, tcp:// or tls://; ssl://, nymea's
// name, is tls://). tlsConf is used
// for wss:// and tls:// (nil means defaults with the URL's host as server
// name). For WebSocket the upgrade is done before DialRaw returns.
func DialRaw(ctx context.Context, rawURL string, tlsConf *tls.Config) (*Raw, error) {
	return dialRaw(ctx, rawURL, tlsConf, nil)
}

// ParseURL is url.Parse, also accepting an IPv6 zone written plainly
// (tcp://[fe80::1%eth0]:8443) besides RFC 6874's escaped form
// (ws://[fe80::1%25eth0]:8443/).
func ParseURL(raw string) (*url.URL, error) {
	return url.Parse(escapeZone(raw))
}

// escapeZone writes the zone of a bracketed IPv6 host as %25zone.
func escapeZone(raw string) string {
	i, j := strings.IndexByte(raw, '['), strings.IndexByte(raw, ']')
	if i < 0 || j < i {
		return raw
	}
	host := raw[i+1 : j]
	k := strings.IndexByte(host, '%')
	if k < 0 || strings.HasPrefix(host[k:], "%25") {
		return raw
	}
	return raw[:i+1] + host[:k] + "%25" + host[k+1:] + raw[j:]
}

// serverName is the name to verify a relay's certificate against: the
// URL's host without an IPv6 zone (a certificate names fe80::1, never
// fe80::1%eth0).
func serverName(conf *tls.Config, u *url.URL) *tls.Config {
	if conf == nil {
		conf = &tls.Config{}
	}
	if conf.ServerName == "" {
		conf = conf.Clone()
		conf.ServerName, _, _ = strings.Cut(u.Hostname(), "%")
	}
	return conf
}

// dialRaw is DialRaw from a chosen local IP (nil: the kernel's choice).
func dialRaw(ctx context.Context, rawURL string, tlsConf *tls.Config, local net.IP) (*Raw, error) {
	var nd net.Dialer
	if local != nil {
		nd.LocalAddr = &net.TCPAddr{IP: local}
		if local.To4() != nil {
			nd.Control = noPortAtBind
		}
	}
	rawURL = escapeZone(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil {
		if ue, ok := err.(*url.Error); ok {
			ue.URL = shownURL(ue.URL)
		}
		return nil, fmt.Errorf("parse url: %w", err)
	}
	switch u.Scheme {
	case "ws", "wss":
		if u.Scheme == "wss" {
			tlsConf = serverName(tlsConf, u)
		}
		var said []byte          // the relay's words when it refuses the upgrade
		var bounded *upgradeConn // the dialled connection, bounded until upgraded
		netDial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := nd.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			bounded = &upgradeConn{Conn: c, left: maxUpgradeResponse}
			return bounded, nil
		}
		d := ws.Dialer{TLSConfig: tlsConf, NetDial: netDial,
			OnStatusError: func(_ int, _ []byte, resp io.Reader) {
				if r, err := http.ReadResponse(bufio.NewReader(resp), nil); err == nil && r.ContentLength > 0 {
					said, _ = io.ReadAll(io.LimitReader(r.Body, min(r.ContentLength, 512)))
				}
			}}
		conn, br, _, err := d.Dial(ctx, rawURL)
		if err != nil {
			if line := strings.TrimSpace(string(said)); line != "" {
				return nil, fmt.Errorf("%w: %s", err, line)
			}
			return nil, err
		}
		bounded.off = true // br and, over wss://, the TLS connection read through it
		if conn == bounded {
			conn = bounded.Conn
		}
		if br == nil {
			br = bufio.NewReaderSize(conn, 32<<10)
		}
		return &Raw{conn: conn, br: br, isWS: true}, nil
	case "tcp", "tls", "ssl": // ssl:// is nymea's name for tls://
		if u.Port() == "" {
			return nil, fmt.Errorf("url %q: port required", shownURL(rawURL))
		}
		conn, err := nd.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		if u.Scheme != "tcp" {
			tc := tls.Client(conn, serverName(tlsConf, u))
			if err := tc.HandshakeContext(ctx); err != nil {
				conn.Close()
				return nil, fmt.Errorf("tls handshake: %w", err)
			}
			conn = tc
		}
		return &Raw{conn: conn, br: bufio.NewReaderSize(conn, 32<<10)}, nil
	default:
		return nil, fmt.Errorf("url %q: unsupported scheme (want ws, wss, tcp or tls)", shownURL(rawURL))
	}
}

// urlToken matches a token in a URL's query, value included.
var urlToken = regexp.MustCompile(`([?&](?:ws_)?token=)[^&#]*`)

// shownURL is rawURL as errors quote it: a token in its query (?token=,
// ?ws_token=) written xxxxx. It works on the text, so that a URL too
// broken to parse is shown without it too.
func shownURL(rawURL string) string { return urlToken.ReplaceAllString(rawURL, "${1}xxxxx") }

// Conn returns the underlying connection. Bytes already buffered by Recv
// are not visible through it.
func (r *Raw) Conn() net.Conn { return r.conn }

// IsWebSocket reports whether the connection speaks WebSocket.
func (r *Raw) IsWebSocket() bool { return r.isWS }

// Close closes the connection without a WebSocket close frame (use
// SendFrame(ws.OpClose, ...) first for a clean close).
func (r *Raw) Close() error { return r.conn.Close() }

// SetDeadline sets the read and write deadlines of the connection.
func (r *Raw) SetDeadline(t time.Time) error { return r.conn.SetDeadline(t) }

// Send sends p: over WebSocket as one TEXT frame, over TCP as-is.
func (r *Raw) Send(p []byte) error {
	if r.isWS {
		return r.writeFrame(ws.OpText, p)
	}
	_, err := r.writeTCP(p)
	return err
}

// writeTCP writes p to a raw TCP connection as-is and returns how many
// bytes of it went out.
func (r *Raw) writeTCP(p []byte) (int, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	return r.conn.Write(p)
}

// SendFrame sends one WebSocket frame (FIN set, masked) with opcode op.
// It fails on TCP connections.
func (r *Raw) SendFrame(op ws.OpCode, p []byte) error {
	if !r.isWS {
		return errors.New("SendFrame: not a WebSocket connection")
	}
	return r.writeFrame(op, p)
}

// Recv returns the next JSON message: over WebSocket one message's payload
// without its trailing newline, over TCP the next complete top-level JSON
// object of the stream. It returns io.EOF when the connection is closed and,
// over WebSocket, *CloseError when the server sent a close frame.
func (r *Raw) Recv() ([]byte, error) {
	var p []byte
	var err error
	if r.isWS {
		_, p, err = r.readMessage()
		p = bytes.TrimSuffix(p, []byte("\n"))
	} else {
		p, err = r.scanObject()
	}
	if err != nil {
		return nil, err
	}
	r.logf("<", string(p))
	return p, nil
}

// Call sends {"id":id,"method":method,"params":params} (params left out when
// nil) followed by a newline and returns the first reply that is not a
// notification, decoded. Notifications received meanwhile are dropped. An
// error reply is returned as a map, not as an error.
func (r *Raw) Call(id int, method string, params map[string]any) (map[string]any, error) {
	req := map[string]any{"id": id, "method": method}
	if params != nil {
		req["params"] = params
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if r.verbose != nil {
		r.logf(">", string(maskedRequest(req, b)))
	}
	if err := r.Send(append(b, '\n')); err != nil {
		return nil, err
	}
	for {
		p, err := r.Recv()
		if err != nil {
			return nil, err
		}
		m, err := decodeObject(p)
		if err != nil {
			return nil, err
		}
		if _, ok := m["notification"]; !ok {
			return m, nil
		}
	}
}

// logf prints one message of the exchange with the secret masked.
func (r *Raw) logf(dir, msg string) {
	if r.verbose == nil {
		return
	}
	if r.secret != "" {
		msg = strings.ReplaceAll(msg, r.secret, "***")
		if esc, err := json.Marshal(r.secret); err == nil {
			msg = strings.ReplaceAll(msg, string(esc[1:len(esc)-1]), "***")
		}
	}
	fmt.Fprintf(r.verbose, "%s %s\n", dir, msg)
}

// errFrameCut is what writes return once a frame write failed part-way
// (a write deadline passed): the relay would read what follows as the cut
// frame's payload.
var errFrameCut = errors.New("websocket: an earlier write was cut in the middle of a frame; no more frames can be sent")

// errCloseSent is what writes return once a close frame was sent (ours,
// or the answer to the relay's): RFC 6455 allows nothing after it.
var errCloseSent = errors.New("websocket: close frame sent; no more frames can be sent")

// writeFrame sends one masked frame; p is not modified. Header and masked
// payload are copied into r.wbuf and written from there, wsWriteChunk at a
// time: once the buffer exists, nothing is allocated. A write failing
// after part of the frame went out fails every later one (errFrameCut);
// so does a close frame (errCloseSent).
func (r *Raw) writeFrame(op ws.OpCode, p []byte) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.werr != nil {
		return r.werr
	}
	if op == ws.OpClose {
		r.werr = errCloseSent // for the frames after this one
	}
	if r.wbuf == nil {
		r.wbuf = make([]byte, 0, ws.MaxHeaderSize+wsWriteChunk)
	}
	h := ws.Header{Fin: true, OpCode: op, Length: int64(len(p)), Masked: true, Mask: ws.NewMask()}
	b := handshake.AppendHeader(r.wbuf[:0], h)
	pos, sent := 0, false
	for {
		k := min(len(p), cap(b)-len(b))
		b = append(b, p[:k]...)
		ws.Cipher(b[len(b)-k:], h.Mask, pos)
		pos += k
		p = p[k:]
		n, err := r.conn.Write(b)
		if err != nil {
			if sent || n > 0 {
				r.werr = fmt.Errorf("%w (%v)", errFrameCut, err)
			}
			return err
		}
		sent = true
		if len(p) == 0 {
			return nil
		}
		b = b[:0]
	}
}

// readHeader reads one frame header from the buffered reader without
// allocating.
func (r *Raw) readHeader() (ws.Header, error) {
	b, err := r.br.Peek(2)
	if err != nil {
		return ws.Header{}, err
	}
	n := 2
	switch b[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b[1]&0x80 != 0 {
		n += 4
	}
	if b, err = r.br.Peek(n); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return ws.Header{}, err
	}
	h := ws.Header{Fin: b[0]&0x80 != 0, Rsv: b[0] >> 4 & 7, OpCode: ws.OpCode(b[0] & 0x0f), Masked: b[1]&0x80 != 0}
	i := 2
	switch l := b[1] & 0x7f; l {
	case 126:
		h.Length, i = int64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		h.Length, i = int64(binary.BigEndian.Uint64(b[2:])), 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		copy(h.Mask[:], b[i:])
	}
	_, _ = r.br.Discard(n)
	if h.Length < 0 {
		return h, errors.New("websocket: frame length out of range")
	}
	return h, nil
}

// nextFrame reads frames until the header of a data frame: pings are
// answered, pongs dropped, a close frame answered and returned as
// *CloseError (later calls return io.EOF). A frame with an RSV bit or a
// reserved opcode is an error.
func (r *Raw) nextFrame() error {
	if r.closed {
		return io.EOF
	}
	for {
		h, err := r.readHeader()
		if err != nil {
			if err == io.EOF && r.in.inMsg {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if h.Rsv != 0 { // we offer no extension (RFC 6455, 5.2)
			return errors.New("websocket: reserved bits set without an extension")
		}
		switch h.OpCode {
		case ws.OpContinuation, ws.OpText, ws.OpBinary, ws.OpClose, ws.OpPing, ws.OpPong:
		default:
			return fmt.Errorf("websocket: reserved opcode %d", h.OpCode)
		}
		if h.OpCode.IsControl() {
			if h.Length > ws.MaxControlFramePayloadSize || !h.Fin {
				return errors.New("websocket: bad control frame")
			}
			p := r.in.ctrl[:h.Length]
			if _, err := io.ReadFull(r.br, p); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
			if h.Masked {
				ws.Cipher(p, h.Mask, 0)
			}
			switch h.OpCode {
			case ws.OpPing:
				if err := r.writeFrame(ws.OpPong, p); err != nil {
					return err
				}
			case ws.OpClose:
				r.closed = true
				code, reason := ws.ParseCloseFrameData(p)
				if len(p) == 1 || len(p) > 1 && ws.CheckCloseFrameData(code, reason) != nil { // RFC 6455, 5.5.1 and 7.4
					_ = r.writeFrame(ws.OpClose, ws.NewCloseFrameBody(ws.StatusProtocolError, ""))
					return fmt.Errorf("websocket: malformed close frame from the relay (%d bytes)", len(p))
				}
				reply := []byte{}
				if !code.Empty() {
					reply = ws.NewCloseFrameBody(code, "")
				}
				_ = r.writeFrame(ws.OpClose, reply)
				return &CloseError{Code: code, Reason: reason}
			}
			continue
		}
		switch {
		case h.OpCode == ws.OpContinuation && !r.in.inMsg:
			return errors.New("websocket: continuation frame without a message")
		case h.OpCode != ws.OpContinuation && r.in.inMsg:
			return errors.New("websocket: new message inside a fragmented one")
		case h.OpCode != ws.OpContinuation:
			r.in.op = h.OpCode
			r.in.text.Reset()
		}
		r.in.hdr, r.in.inMsg, r.in.fin = true, true, h.Fin
		r.in.left, r.in.mask, r.in.masked, r.in.pos = h.Length, h.Mask, h.Masked, 0
		return nil
	}
}

// errInvalidUTF8 is returned for a TEXT message that is not valid UTF-8
// (RFC 6455, 8.1: the relay never sends one).
var errInvalidUTF8 = errors.New("websocket: invalid UTF-8 in a text message")

// readData reads data message payload straight into p (nothing is
// allocated): at a frame boundary it reads on to the next data frame's
// header (nextFrame). end reports that the bytes end their message (whose
// opcode is r.in.op).
func (r *Raw) readData(p []byte) (n int, end bool, err error) {
	if !r.in.hdr {
		if err := r.nextFrame(); err != nil {
			return 0, false, err
		}
	}
	if k := min(int64(len(p)), r.in.left); k > 0 {
		n, err = r.br.Read(p[:k])
		if n == 0 {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, false, err
		}
		if r.in.masked {
			ws.Cipher(p[:n], r.in.mask, r.in.pos)
		}
		r.in.pos += n
		r.in.left -= int64(n)
		if r.in.op == ws.OpText && !r.in.text.Feed(p[:n]) {
			return 0, false, errInvalidUTF8
		}
	}
	if r.in.left == 0 {
		r.in.hdr = false
		if r.in.fin {
			r.in.inMsg = false
			if r.in.op == ws.OpText && !r.in.text.Complete() { // it ends inside a character
				return 0, false, errInvalidUTF8
			}
			return n, true, nil
		}
	}
	return n, false, nil
}

// readMessage returns the next WebSocket data message (or the rest of the
// one Tunnel.Read was in the middle of), answering pings and reassembling
// fragments. A close frame is answered and returned as *CloseError; later
// calls return io.EOF.
func (r *Raw) readMessage() (ws.OpCode, []byte, error) {
	msg := []byte{}
	for {
		if !r.in.hdr {
			if err := r.nextFrame(); err != nil {
				return 0, nil, err
			}
		}
		if int64(len(msg))+r.in.left > maxMessage {
			return 0, nil, fmt.Errorf("websocket message larger than %d bytes", maxMessage)
		}
		msg = slices.Grow(msg, int(r.in.left))
		n, end, err := r.readData(msg[len(msg) : len(msg)+int(r.in.left)])
		msg = msg[:len(msg)+n]
		if err != nil {
			return 0, nil, err
		}
		if end {
			return r.in.op, msg, nil
		}
	}
}

// scanObject reads the next top-level JSON object from the TCP stream,
// skipping whitespace before it. It reads no byte past the object except a
// single '\n' that is already buffered.
func (r *Raw) scanObject() ([]byte, error) {
	var b byte
	var err error
	for {
		if b, err = r.br.ReadByte(); err != nil {
			return nil, err
		}
		if b != ' ' && b != '\t' && b != '\r' && b != '\n' {
			break
		}
	}
	if b != '{' {
		return nil, fmt.Errorf("json stream: unexpected byte %q", b)
	}
	out := []byte{b}
	depth, inString, escaped := 1, false, false
	for depth > 0 {
		if b, err = r.br.ReadByte(); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		out = append(out, b)
		if len(out) > maxMessage {
			return nil, fmt.Errorf("json message larger than %d bytes", maxMessage)
		}
		switch {
		case escaped:
			escaped = false
		case inString && b == '\\':
			escaped = true
		case b == '"':
			inString = !inString
		case inString:
		case b == '{' || b == '[':
			depth++
		case b == '}' || b == ']':
			depth--
		}
	}
	r.skipNL = true
	if r.br.Buffered() > 0 {
		r.dropNewline()
	}
	return out, nil
}

// dropNewline consumes one '\n' ending the last JSON message if it is next
// (blocking until a byte is available).
func (r *Raw) dropNewline() error {
	if !r.skipNL {
		return nil
	}
	next, err := r.br.Peek(1)
	if err != nil {
		return err
	}
	r.skipNL = false
	if next[0] == '\n' {
		r.br.Discard(1)
	}
	return nil
}

// decodeObject decodes one JSON object.
func decodeObject(p []byte) (map[string]any, error) {
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		return nil, fmt.Errorf("decode json message: %w", err)
	}
	return m, nil
}

// maskedRequest returns the request b for printing: re-encoded with the
// token param replaced by "***" when there is one.
func maskedRequest(req map[string]any, b []byte) []byte {
	params, _ := req["params"].(map[string]any)
	if _, ok := params["token"]; !ok {
		return b
	}
	masked := make(map[string]any, len(params))
	for k, v := range params {
		masked[k] = v
	}
	masked["token"] = "***"
	out, err := json.Marshal(map[string]any{"id": req["id"], "method": req["method"], "params": masked})
	if err != nil {
		return []byte("(unprintable request)")
	}
	return out
}
