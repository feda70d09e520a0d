package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// maxMessage bounds one received JSON message or WebSocket message.
const maxMessage = 16 << 20

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
}

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
	}
	rawURL = escapeZone(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse url: %w", err)
	}
	switch u.Scheme {
	case "ws", "wss":
		if u.Scheme == "wss" {
			tlsConf = serverName(tlsConf, u)
		}
		var said []byte // the relay's words when it refuses the upgrade
		d := ws.Dialer{TLSConfig: tlsConf, NetDial: nd.DialContext,
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
		if br == nil {
			br = bufio.NewReaderSize(conn, 32<<10)
		}
		return &Raw{conn: conn, br: br, isWS: true}, nil
	case "tcp", "tls", "ssl": // ssl:// is nymea's name for tls://
		if u.Port() == "" {
			return nil, fmt.Errorf("url %q: port required", rawURL)
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
		return nil, fmt.Errorf("url %q: unsupported scheme (want ws, wss, tcp or tls)", rawURL)
	}
}

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
	r.wmu.Lock()
	defer r.wmu.Unlock()
	_, err := r.conn.Write(p)
	return err
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

// writeFrame sends one masked frame; p is not modified.
func (r *Raw) writeFrame(op ws.OpCode, p []byte) error {
	f := ws.MaskFrameInPlace(ws.NewFrame(op, true, bytes.Clone(p)))
	b, err := ws.CompileFrame(f)
	if err != nil {
		return err
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	_, err = r.conn.Write(b)
	return err
}

// readMessage returns the next WebSocket data message, answering pings and
// reassembling fragments. A close frame is answered and returned as
// *CloseError; later calls return io.EOF.
func (r *Raw) readMessage() (ws.OpCode, []byte, error) {
	if r.closed {
		return 0, nil, io.EOF
	}
	var op ws.OpCode
	var msg []byte
	started := false
	for {
		h, err := ws.ReadHeader(r.br)
		if err != nil {
			if err == io.EOF && started {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
		if h.Length > maxMessage || int64(len(msg))+h.Length > maxMessage {
			return 0, nil, fmt.Errorf("websocket message larger than %d bytes", maxMessage)
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(r.br, p); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
		if h.Masked {
			ws.Cipher(p, h.Mask, 0)
		}
		switch h.OpCode {
		case ws.OpPing:
			if err := r.writeFrame(ws.OpPong, p); err != nil {
				return 0, nil, err
			}
			continue
		case ws.OpPong:
			continue
		case ws.OpClose:
			r.closed = true
			code, reason := ws.ParseCloseFrameData(p)
			reply := []byte{}
			if !code.Empty() {
				reply = ws.NewCloseFrameBody(code, "")
			}
			_ = r.writeFrame(ws.OpClose, reply)
			return 0, nil, &CloseError{Code: code, Reason: reason}
		case ws.OpContinuation:
			if !started {
				return 0, nil, errors.New("websocket: continuation frame without a message")
			}
		default:
			if started {
				return 0, nil, errors.New("websocket: new message inside a fragmented one")
			}
			started, op = true, h.OpCode
		}
		msg = append(msg, p...)
		if h.Fin {
			if msg == nil {
				msg = []byte{}
			}
			return op, msg, nil
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
