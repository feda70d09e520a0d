package relay

// Raw-protocol helpers shared by the relay's tests: dialling raw TCP and
// WebSocket connections, building and reading WebSocket frames, speaking
// JSON-RPC by hand or through client.Raw, and checking how and why the
// relay closed a connection. This is the one home of these helpers;
// helpers_test.go keeps the servers (starting them, their addresses) and
// tunnels dialled with package client.

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
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// ---------------------------------------------------------------------------
// How a connection ended.

// isClosed reports whether a read error means the peer ended the
// connection, as opposed to a timeout: EOF, a FIN in the middle of a
// message, a reset, a WebSocket close frame (client.CloseError), or a
// connection already closed (net.ErrClosed).
func isClosed(err error) bool {
	var ce *client.CloseError
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) ||
		errors.As(err, &ce)
}

// isTimeout reports whether err is a deadline that expired (a net.Error
// whose Timeout is true).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ---------------------------------------------------------------------------
// Raw TCP.

// dialTCP opens a raw TCP connection to s with a testutil.Patience
// deadline (callers may set their own) and closes it when the test ends.
func dialTCP(t testing.TB, s *Server) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", serverAddr(s), testutil.Patience)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(testutil.Patience))
	t.Cleanup(func() { c.Close() })
	return c
}

// readToClose reads c until the server ends the connection (EOF or RST)
// and returns what was read. It fails if that does not happen within d.
func readToClose(t testing.TB, c net.Conn, d time.Duration) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			if !isClosed(err) {
				t.Fatalf("connection not closed by the server within %v (read %d bytes: %.200q): %v", d, len(got), got, err)
			}
			return got
		}
	}
}

// writeRaw writes b, ignoring errors caused by the server having closed
// already (the point of most tests).
func writeRaw(c net.Conn, b []byte) {
	_ = c.SetWriteDeadline(time.Now().Add(testutil.Patience))
	_, _ = c.Write(b)
}

// readLine reads up to and including the next '\n', failing the test on
// an error.
func readLine(t testing.TB, br *bufio.Reader) string {
	t.Helper()
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v (got %q)", err, line)
	}
	return line
}

// tlsClientHello returns the first TLS record a crypto/tls client sends.
func tlsClientHello(t testing.TB) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		_ = tls.Client(a, &tls.Config{ServerName: "relay"}).Handshake()
	}()
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
	if _, err := io.ReadFull(b, rec); err != nil {
		t.Fatal(err)
	}
	return append(hdr, rec...)
}

// ---------------------------------------------------------------------------
// JSON-RPC lines, byte for byte.

// nymeaAuth is the Authenticate request nymea's client library sends, and
// the reply nymea's server gives it.
func nymeaAuth(id int, name, uuid, token string) (req, reply string) {
	n := string(rune('0' + id))
	return `{"id":` + n + `,"method":"Authentication.Authenticate","params":{"name":"` + name + `","nonce":"","token":"` + token + `","uuid":"` + uuid + `"}}` + "\n",
		`{"id":` + n + `,"params":{"authenticationError":"AuthenticationErrorNoError"},"status":"success"}` + "\n"
}

// nymeaEstablished is the notification a client gets when its partner is
// name/uuid.
func nymeaEstablished(name, uuid string) string {
	return `{"id":0,"notification":"RemoteProxy.TunnelEstablished","params":{"name":"` + name + `","uuid":"` + uuid + `"}}` + "\n"
}

// expectRPCError asserts that msg is a JSON-RPC error reply whose text
// contains want.
func expectRPCError(t testing.TB, msg []byte, want string) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(msg), &m); err != nil {
		t.Fatalf("error reply %q: %v", msg, err)
	}
	text, _ := m["error"].(string)
	if m["status"] != "error" || !strings.Contains(text, want) {
		t.Fatalf("reply %s, want an error containing %q", msg, want)
	}
}

// ---------------------------------------------------------------------------
// WebSocket frames as a client sends them.

// clientMask is the fixed masking key of the frames these helpers build.
var clientMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// clientFrame builds a client frame from its first byte (FIN, RSV and opcode
// bits as they go on the wire) and payload, masked unless unmasked is set.
// length overrides the declared payload length when >= 0 (the payload is
// then sent as given, possibly shorter).
func clientFrame(b0 byte, unmasked bool, length int64, payload []byte) []byte {
	if length < 0 {
		length = int64(len(payload))
	}
	h := ws.Header{
		Fin: b0&0x80 != 0, Rsv: b0 >> 4 & 7, OpCode: ws.OpCode(b0 & 0x0f),
		Masked: !unmasked, Mask: clientMask, Length: length,
	}
	out := handshake.AppendHeader(nil, h)
	out = append(out, payload...)
	if !unmasked {
		ws.Cipher(out[len(out)-len(payload):], clientMask, 0)
	}
	return out
}

// maskedFrame is a client frame of op, masked with clientMask, with FIN set
// or not.
func maskedFrame(op ws.OpCode, fin bool, payload []byte) []byte {
	return handshake.AppendFrameMasked(nil, op, fin, payload, clientMask)
}

// closePayload is the payload of a close frame: code, then reason.
func closePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// ---------------------------------------------------------------------------
// rawWS: a hand-driven WebSocket client that tolerates any close.

// rawWS is a hand-driven WebSocket client connection for hostile and
// conformance tests: it writes any bytes, ignores write errors, and its
// reads return errors, so a test can expect any kind of close.
type rawWS struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

// dialRawWS upgrades a fresh connection to s to a WebSocket and closes it
// when the test ends.
func dialRawWS(t testing.TB, s *Server) *rawWS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	defer cancel()
	c, br, _, err := ws.Dialer{}.Dial(ctx, wsURL(s))
	if err != nil {
		t.Fatalf("ws dial: %v", err)
	}
	if br == nil {
		br = bufio.NewReaderSize(c, 64<<10)
	}
	t.Cleanup(func() { c.Close() })
	return &rawWS{t: t, c: c, br: br}
}

// write writes b (any bytes, a frame or not) as writeRaw does.
func (w *rawWS) write(b []byte) { writeRaw(w.c, b) }

// send writes one masked frame, ignoring write errors.
func (w *rawWS) send(op ws.OpCode, fin bool, payload []byte) { w.write(maskedFrame(op, fin, payload)) }

// readFrame reads the next frame within d; server frames must be unmasked.
func (w *rawWS) readFrame(d time.Duration) (ws.Header, []byte, error) {
	_ = w.c.SetReadDeadline(time.Now().Add(d))
	h, err := ws.ReadHeader(w.br)
	if err != nil {
		return h, nil, err
	}
	if h.Masked {
		return h, nil, errors.New("server frame is masked")
	}
	if h.Length > 64<<20 {
		return h, nil, fmt.Errorf("server frame of %d bytes", h.Length)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(w.br, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return h, nil, err
	}
	return h, p, nil
}

// rawWSClose is what a rawWS connection ended with (rawWS.expectClose).
type rawWSClose struct {
	frame  bool // a close frame was received
	code   ws.StatusCode
	reason string
	before [][]byte // data frame payloads received before it
}

// expectClose reads until the server closes: a close frame followed by the
// end of the connection, or (when frameOptional) the end of the connection
// alone. Data frames before it are collected; pongs are skipped.
func (w *rawWS) expectClose(d time.Duration, frameOptional bool) rawWSClose {
	w.t.Helper()
	var res rawWSClose
	end := time.Now().Add(d)
	for {
		h, p, err := w.readFrame(time.Until(end))
		if err != nil {
			if isClosed(err) && frameOptional {
				return res
			}
			w.t.Fatalf("waiting for a close frame: %v (got %d data frames first)", err, len(res.before))
		}
		switch h.OpCode {
		case ws.OpPong:
			continue
		case ws.OpClose:
			res.frame = true
			if len(p) >= 2 {
				res.code = ws.StatusCode(binary.BigEndian.Uint16(p))
				res.reason = string(p[2:])
			}
			// The close frame must be the last thing: the socket ends.
			_ = w.c.SetReadDeadline(time.Now().Add(d))
			n, err := w.br.Read(make([]byte, 1))
			if n > 0 || !isClosed(err) {
				w.t.Fatalf("after close frame %d: read %d bytes, err %v; want the connection closed", res.code, n, err)
			}
			return res
		default:
			res.before = append(res.before, p)
		}
	}
}

// expectCode asserts that the server closes with a close frame of code.
func (w *rawWS) expectCode(code ws.StatusCode) rawWSClose {
	w.t.Helper()
	res := w.expectClose(testutil.Patience, false)
	if res.code != code {
		w.t.Fatalf("close code %d (%q), want %d", res.code, res.reason, code)
	}
	return res
}

// readJSON reads one text frame and decodes it.
func (w *rawWS) readJSON() map[string]any {
	w.t.Helper()
	for {
		h, p, err := w.readFrame(testutil.Patience)
		if err != nil {
			w.t.Fatalf("read JSON: %v", err)
		}
		if h.OpCode == ws.OpPong {
			continue
		}
		if h.OpCode != ws.OpText || !h.Fin {
			w.t.Fatalf("want one TEXT frame, got op %d fin %v: %.200q", h.OpCode, h.Fin, p)
		}
		var m map[string]any
		if err := json.Unmarshal(p, &m); err != nil {
			w.t.Fatalf("decode %q: %v", p, err)
		}
		return m
	}
}

// authenticate authenticates successfully; the client then waits for its
// partner.
func (w *rawWS) authenticate(token, name string) {
	w.t.Helper()
	req := fmt.Sprintf(`{"id":7,"method":"Authentication.Authenticate","params":{"uuid":"%s","name":"%s","token":"%s"}}`,
		client.NewUUID(), name, token)
	w.send(ws.OpText, true, []byte(req+"\n"))
	m := w.readJSON()
	p, _ := m["params"].(map[string]any)
	if m["id"] != float64(7) || p["authenticationError"] != "AuthenticationErrorNoError" {
		w.t.Fatalf("authenticate reply: %v", m)
	}
}

// waitTunnel reads the TunnelEstablished notification of an authenticated
// client and then lifts the connection's deadlines.
func (w *rawWS) waitTunnel() {
	w.t.Helper()
	if m := w.readJSON(); m["notification"] != "RemoteProxy.TunnelEstablished" {
		w.t.Fatalf("want TunnelEstablished, got %v", m)
	}
	_ = w.c.SetDeadline(time.Time{})
}

// tcpPartner pairs w, authenticated and waiting under token, with a raw
// TCP client it dials, and returns that client once w has seen the
// tunnel; the client closes when the test ends.
func (w *rawWS) tcpPartner(s *Server, token string) *rawTunnel {
	w.t.Helper()
	type res struct {
		c   *rawTunnel
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := dialRawTunnel(serverAddr(s), token, "", "b", nil)
		ch <- res{c, err}
	}()
	w.waitTunnel()
	r := <-ch
	if r.err != nil {
		w.t.Fatal(r.err)
	}
	w.t.Cleanup(func() { r.c.Close() })
	return r.c
}

// rawWSPair pairs two hand-driven WebSocket clients with raw JSON-RPC over
// the WebSocket and returns them with the tunnel up.
func rawWSPair(t testing.TB, s *Server, token string) (*rawWS, *rawWS) {
	t.Helper()
	a := dialRawWS(t, s)
	a.authenticate(token, "a")
	b := dialRawWS(t, s)
	b.authenticate(token, "b")
	a.waitTunnel()
	b.waitTunnel()
	return a, b
}

// ---------------------------------------------------------------------------
// checkedWS: a hand-driven WebSocket client that fails the test on any error.

// checkedWS is a hand-driven WebSocket client that sends and reads single
// frames and fails the test on any error: for tests of what a well-behaved
// client sees (its JSON messages must end in "\n").
type checkedWS struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

// dialCheckedWS dials a checkedWS to s (with dialRawWS's dialer).
func dialCheckedWS(t testing.TB, s *Server) *checkedWS {
	t.Helper()
	h := dialRawWS(t, s) // one WebSocket dialer for the hand-driven clients
	return &checkedWS{t: t, conn: h.c, br: h.br}
}

// send writes one masked frame.
func (w *checkedWS) send(op ws.OpCode, fin bool, p []byte) {
	w.t.Helper()
	_ = w.conn.SetWriteDeadline(time.Now().Add(testutil.Patience))
	if err := ws.WriteFrame(w.conn, ws.MaskFrame(ws.NewFrame(op, fin, p))); err != nil {
		w.t.Fatalf("ws write: %v", err)
	}
}

// read returns the next frame from the server, which must be unmasked.
func (w *checkedWS) read() ws.Frame {
	w.t.Helper()
	_ = w.conn.SetReadDeadline(time.Now().Add(testutil.Patience))
	f, err := readFrame(w.br)
	if err != nil {
		w.t.Fatalf("ws read: %v", err)
	}
	if f.Header.Masked {
		w.t.Fatalf("server frame is masked")
	}
	return f
}

// readJSON reads one TEXT frame holding one JSON message ending in "\n".
func (w *checkedWS) readJSON() map[string]any {
	w.t.Helper()
	f := w.read()
	if f.Header.OpCode != ws.OpText || !f.Header.Fin {
		w.t.Fatalf("want a final TEXT frame, got op %v fin %v: %q", f.Header.OpCode, f.Header.Fin, f.Payload)
	}
	if !bytes.HasSuffix(f.Payload, []byte("\n")) {
		w.t.Fatalf("JSON message without trailing newline: %q", f.Payload)
	}
	return decodeJSON(w.t, f.Payload)
}

// authenticate authenticates successfully (the client then waits).
func (w *checkedWS) authenticate(token, nonce, name string) {
	w.t.Helper()
	b, _ := json.Marshal(map[string]any{"id": 5, "method": "Authentication.Authenticate",
		"params": authParams(token, nonce, client.NewUUID(), name)})
	w.send(ws.OpText, true, append(b, '\n'))
	m := w.readJSON()
	p, _ := m["params"].(map[string]any)
	if m["id"] != float64(5) || p["authenticationError"] != "AuthenticationErrorNoError" {
		w.t.Fatalf("authenticate reply: %v", m)
	}
}

// ---------------------------------------------------------------------------
// JSON-RPC through client.Raw.

// dialRPC opens a JSON-RPC connection with a testutil.Patience deadline.
func dialRPC(t testing.TB, url string) *client.Raw {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	defer cancel()
	r, err := client.DialRaw(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
	t.Cleanup(func() { r.Close() })
	return r
}

// decodeJSON decodes one JSON object.
func decodeJSON(t testing.TB, p []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		t.Fatalf("decode %q: %v", p, err)
	}
	return m
}

// recvRPC returns the next JSON message, decoded.
func recvRPC(t testing.TB, r *client.Raw) map[string]any {
	t.Helper()
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
	p, err := r.Recv()
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return decodeJSON(t, p)
}

// sendRPC sends a raw JSON-RPC payload.
func sendRPC(t testing.TB, r *client.Raw, p string) {
	t.Helper()
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
	if err := r.Send([]byte(p)); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// expectClosed asserts that the next thing the server does on r is
// closing it: no further message, except that a raw-TCP client may first
// be told why (RemoteProxy.Closing). Over WebSocket the close frame must
// be followed by the end of the TCP connection. It returns the close
// frame (nil over TCP).
func expectClosed(t testing.TB, r *client.Raw) *client.CloseError {
	t.Helper()
	ce, _ := expectClosedWhy(t, r)
	return ce
}

// expectClosedWhy is expectClosed, also returning why the server said it
// closed: the close frame's text, or the RemoteProxy.Closing message ("" if
// it said nothing).
func expectClosedWhy(t testing.TB, r *client.Raw) (*client.CloseError, string) {
	t.Helper()
	why := ""
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
	p, err := r.Recv()
	if err == nil {
		if m := decodeJSON(t, p); m["notification"] == "RemoteProxy.Closing" {
			params, _ := m["params"].(map[string]any)
			why, _ = params["message"].(string)
			p, err = r.Recv()
		}
	}
	if err == nil {
		t.Fatalf("expected the server to close, got message %s", p)
	}
	if !isClosed(err) {
		t.Fatalf("expected the server to close, got %v", err)
	}
	var ce *client.CloseError
	if !errors.As(err, &ce) {
		return nil, why
	}
	// The close frame was the last thing buffered; the socket must end too.
	_ = r.Conn().SetReadDeadline(time.Now().Add(testutil.Patience))
	n, err := r.Conn().Read(make([]byte, 64))
	if n > 0 || !isClosed(err) {
		t.Fatalf("after close frame: read %d bytes, err %v; want EOF", n, err)
	}
	return ce, ce.Reason
}

// expectOpen asserts that nothing arrives on r during d (and the
// connection stays open).
func expectOpen(t testing.TB, r *client.Raw, d time.Duration) {
	t.Helper()
	_ = r.SetDeadline(time.Now().Add(d))
	p, err := r.Recv()
	switch {
	case err == nil:
		t.Fatalf("expected silence, got %s", p)
	case !isTimeout(err):
		t.Fatalf("expected silence, got %v", err)
	}
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
}

// authParams are the params of Authentication.Authenticate (nonce only
// when not empty).
func authParams(token, nonce, uuid, name string) map[string]any {
	p := map[string]any{"uuid": uuid, "name": name, "token": token}
	if nonce != "" {
		p["nonce"] = nonce
	}
	return p
}

// authenticateRPC calls Authentication.Authenticate and returns the
// authenticationError of the (success) reply.
func authenticateRPC(t testing.TB, r *client.Raw, params map[string]any) string {
	t.Helper()
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
	m, err := r.Call(11, "Authentication.Authenticate", params)
	if err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	if m["status"] != "success" || m["id"] != float64(11) {
		t.Fatalf("authenticate reply %v: want status success, id 11", m)
	}
	p, _ := m["params"].(map[string]any)
	res, _ := p["authenticationError"].(string)
	if res == "" {
		t.Fatalf("authenticate reply without authenticationError: %v", m)
	}
	return res
}

// dialWaiting dials url and authenticates successfully; the client is then
// waiting for its partner.
func dialWaiting(t testing.TB, url, token, nonce, uuid, name string) *client.Raw {
	t.Helper()
	r := dialRPC(t, url)
	if uuid == "" {
		uuid = client.NewUUID()
	}
	if res := authenticateRPC(t, r, authParams(token, nonce, uuid, name)); res != "AuthenticationErrorNoError" {
		t.Fatalf("authenticate: %s", res)
	}
	return r
}

// expectAlone asserts that a waiting client gets no tunnel and is closed
// by the alone timeout (at least atLeast after since).
func expectAlone(t testing.TB, r *client.Raw, since time.Time, atLeast time.Duration) {
	t.Helper()
	if _, why := expectClosedWhy(t, r); why != fmt.Sprintf("No partner arrived within %v", atLeast) {
		t.Errorf("closed saying %q, want the alone timeout (%v)", why, atLeast)
	}
	if el := time.Since(since); el < atLeast {
		t.Fatalf("closed after %v, before the alone timeout %v", el, atLeast)
	}
}

// ---------------------------------------------------------------------------
// A hand-driven client of any transport (raw TCP, TLS, WebSocket, WebSocket
// over TLS) that a test stops and acts on at any step (the matrix tests).

// anyConn is a hand-driven client: raw TCP, TLS, WebSocket or WebSocket
// over TLS, stopped and acted on at any step.
type anyConn struct {
	// skipUpgradeRequest: the request was already sent (split by the
	// test); upgrade only reads the response.
	skipUpgradeRequest bool
	raw                *net.TCPConn
	c                  net.Conn // raw, or the TLS session over it
	br                 *bufio.Reader
	ws                 bool
	done               bool // the server ended the connection
}

// dialAny connects and, for tls/wss, completes the TLS handshake.
func dialAny(addr, kind string, conf *tls.Config) (*anyConn, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	m := &anyConn{raw: nc.(*net.TCPConn), c: nc, ws: kind == "ws" || kind == "wss"}
	if kind == "tls" || kind == "wss" {
		tc := tls.Client(nc, conf)
		_ = tc.SetDeadline(time.Now().Add(testutil.Patience))
		if err := tc.Handshake(); err != nil {
			nc.Close()
			return nil, err
		}
		_ = tc.SetDeadline(time.Time{})
		m.c = tc
	}
	m.br = bufio.NewReader(m.c)
	return m, nil
}

const anyUpgradeRequest = "GET /mx HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// upgrade performs the WebSocket opening handshake (ws and wss).
func (m *anyConn) upgrade() error {
	if !m.ws {
		return nil
	}
	if !m.skipUpgradeRequest {
		if _, err := m.c.Write([]byte(anyUpgradeRequest)); err != nil {
			return err
		}
	}
	_ = m.c.SetReadDeadline(time.Now().Add(testutil.Patience))
	defer m.c.SetReadDeadline(time.Time{})
	for {
		line, err := m.br.ReadString('\n')
		if err != nil {
			return err
		}
		if line == "\r\n" {
			return nil
		}
	}
}

func (m *anyConn) write(b []byte) error {
	_ = m.c.SetWriteDeadline(time.Now().Add(testutil.Patience))
	_, err := m.c.Write(b)
	return err
}

// send sends one message: a masked TEXT frame on WebSocket.
func (m *anyConn) send(p []byte) error {
	if m.ws {
		return m.write(maskedFrame(ws.OpText, true, p))
	}
	return m.write(p)
}

func (m *anyConn) ping() error { return m.write(maskedFrame(ws.OpPing, true, []byte("mx"))) }

// recv returns the next message (WebSocket: a data frame's payload, pongs
// skipped; TCP: a line), or an error once the server ended the connection.
func (m *anyConn) recv(d time.Duration) ([]byte, error) {
	_ = m.c.SetReadDeadline(time.Now().Add(d))
	if !m.ws {
		line, err := m.br.ReadBytes('\n')
		if err != nil && len(line) > 0 && !isTimeout(err) {
			return line, nil
		}
		return line, m.ended(err)
	}
	for {
		h, err := ws.ReadHeader(m.br)
		if err != nil {
			return nil, m.ended(err)
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(m.br, p); err != nil {
			return nil, m.ended(err)
		}
		switch h.OpCode {
		case ws.OpPong:
			continue
		case ws.OpClose:
			_ = m.write(maskedFrame(ws.OpClose, true, p)) // complete the handshake
			m.done = true
			return nil, io.EOF
		}
		return p, nil
	}
}

func (m *anyConn) ended(err error) error {
	if err != nil && !isTimeout(err) {
		m.done = true
	}
	return err
}

// halfClose ends what this client sends (FIN; close_notify on TLS) and
// keeps reading.
func (m *anyConn) halfClose() {
	if tc, ok := m.c.(*tls.Conn); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = m.raw.CloseWrite()
}

func (m *anyConn) close() { m.c.Close() }

func authLine(token, name string) []byte {
	return fmt.Appendf(nil, `{"id":2,"method":"Authentication.Authenticate","params":{"uuid":"%s","name":"%s","token":"%s"}}`+"\n",
		newTestUUID(), name, token)
}

// authed reads until the Authenticate reply (true if NoError).
func (m *anyConn) authed() bool {
	for {
		p, err := m.recv(testutil.Patience)
		if err != nil {
			return false
		}
		if bytes.Contains(p, []byte("authenticationError")) {
			return bytes.Contains(p, []byte("NoError"))
		}
	}
}

// tunnel reads until TunnelEstablished (true) or the end.
func (m *anyConn) tunnel(d time.Duration) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		p, err := m.recv(time.Until(end))
		if err != nil {
			return false
		}
		if bytes.Contains(p, []byte("RemoteProxy.TunnelEstablished")) {
			return true
		}
	}
	return false
}
