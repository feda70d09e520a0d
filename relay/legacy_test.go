package relay

// Real-socket tests of the legacy nymea-remoteproxy API (RemoteProxy.*,
// Authentication.Authenticate, pairing, timeouts) over WebSocket and raw TCP,
// modelled on nymea-remoteproxy's own test list.

import (
	"bufio"
	"bytes"
	"context"
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
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// ---------------------------------------------------------------------------
// Helpers

// lgTransport is one client transport of the table-driven tests.
type lgTransport struct {
	name string
	url  func(*Server) string
}

var lgTransports = []lgTransport{{"tcp", tcpURL}, {"ws", wsURL}}

// lgCombos are the (a, b) transport pairs of a tunnel.
var lgCombos = []struct {
	name string
	a, b func(*Server) string
}{
	{"tcp-tcp", tcpURL, tcpURL},
	{"ws-ws", wsURL, wsURL},
	{"tcp-ws", tcpURL, wsURL},
	{"ws-tcp", wsURL, tcpURL},
}

// lgTestAuth is the authenticator of these tests. Tokens starting with
// "bad" fail; "hang" never answers; "async" answers NoError from another
// goroutine once gate is closed; "result-N" answers AuthResult(N); every
// other token is valid.
type lgTestAuth struct {
	gate chan struct{}
}

func (a lgTestAuth) Authenticate(_ context.Context, req AuthRequest, done func(AuthResult)) {
	switch {
	case strings.HasPrefix(req.Token, "bad"):
		done(AuthFailed)
	case strings.HasPrefix(req.Token, "hang"):
	case strings.HasPrefix(req.Token, "async"):
		go func() {
			<-a.gate
			done(AuthNoError)
		}()
	case strings.HasPrefix(req.Token, "result-"):
		var n int
		fmt.Sscanf(req.Token, "result-%d", &n)
		done(AuthResult(n))
	default:
		done(AuthNoError)
	}
}

// lgServer starts a server with lgTestAuth and timeouts long enough for
// any pairing under load (a test of a timeout sets it); mutate runs last.
func lgServer(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	return startServer(t, func(c *Config) {
		c.Name = "legacy-test-relay"
		c.Auth = lgTestAuth{gate: make(chan struct{})}
		c.InactiveTimeout = 30 * time.Second
		c.AloneTimeout = 30 * time.Second
		if mutate != nil {
			mutate(c)
		}
	})
}

// lgDial opens a JSON-RPC connection with a testutil.Patience deadline.
func lgDial(t testing.TB, url string) *client.Raw {
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

// lgDecode decodes one JSON object.
func lgDecode(t testing.TB, p []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		t.Fatalf("decode %q: %v", p, err)
	}
	return m
}

// lgRecv returns the next JSON message, decoded.
func lgRecv(t testing.TB, r *client.Raw) map[string]any {
	t.Helper()
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
	p, err := r.Recv()
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return lgDecode(t, p)
}

// lgSend sends a raw JSON-RPC payload.
func lgSend(t testing.TB, r *client.Raw, p string) {
	t.Helper()
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
	if err := r.Send([]byte(p)); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// lgIsClosed reports whether err means the server ended the connection.
func lgIsClosed(err error) bool {
	var ce *client.CloseError
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.As(err, &ce) || errors.Is(err, syscall.ECONNRESET)
}

func lgIsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// lgExpectClosed asserts that the next thing the server does on r is
// closing it: no further message, except that a raw-TCP client may first
// be told why (RemoteProxy.Closing). Over WebSocket the close frame must
// be followed by the end of the TCP connection. It returns the close
// frame (nil over TCP).
func lgExpectClosed(t testing.TB, r *client.Raw) *client.CloseError {
	t.Helper()
	ce, _ := lgClosedWhy(t, r)
	return ce
}

// lgClosedWhy is lgExpectClosed, also returning why the server said it
// closed: the close frame's text, or the RemoteProxy.Closing message ("" if
// it said nothing).
func lgClosedWhy(t testing.TB, r *client.Raw) (*client.CloseError, string) {
	t.Helper()
	why := ""
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
	p, err := r.Recv()
	if err == nil {
		if m := lgDecode(t, p); m["notification"] == "RemoteProxy.Closing" {
			params, _ := m["params"].(map[string]any)
			why, _ = params["message"].(string)
			p, err = r.Recv()
		}
	}
	if err == nil {
		t.Fatalf("expected the server to close, got message %s", p)
	}
	if !lgIsClosed(err) {
		t.Fatalf("expected the server to close, got %v", err)
	}
	var ce *client.CloseError
	if !errors.As(err, &ce) {
		return nil, why
	}
	// The close frame was the last thing buffered; the socket must end too.
	_ = r.Conn().SetReadDeadline(time.Now().Add(testutil.Patience))
	n, err := r.Conn().Read(make([]byte, 64))
	if n > 0 || !lgIsClosed(err) {
		t.Fatalf("after close frame: read %d bytes, err %v; want EOF", n, err)
	}
	return ce, ce.Reason
}

// lgExpectOpen asserts that nothing arrives on r during d (and the
// connection stays open).
func lgExpectOpen(t testing.TB, r *client.Raw, d time.Duration) {
	t.Helper()
	_ = r.SetDeadline(time.Now().Add(d))
	p, err := r.Recv()
	switch {
	case err == nil:
		t.Fatalf("expected silence, got %s", p)
	case !lgIsTimeout(err):
		t.Fatalf("expected silence, got %v", err)
	}
	_ = r.SetDeadline(time.Now().Add(testutil.Patience))
}

func lgAuthParams(token, nonce, uuid, name string) map[string]any {
	p := map[string]any{"uuid": uuid, "name": name, "token": token}
	if nonce != "" {
		p["nonce"] = nonce
	}
	return p
}

// lgAuthenticate calls Authentication.Authenticate and returns the
// authenticationError of the (success) reply.
func lgAuthenticate(t testing.TB, r *client.Raw, params map[string]any) string {
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

// lgWaiting dials url and authenticates successfully; the client is then
// waiting for its partner.
func lgWaiting(t testing.TB, url, token, nonce, uuid, name string) *client.Raw {
	t.Helper()
	r := lgDial(t, url)
	if uuid == "" {
		uuid = client.NewUUID()
	}
	if res := lgAuthenticate(t, r, lgAuthParams(token, nonce, uuid, name)); res != "AuthenticationErrorNoError" {
		t.Fatalf("authenticate: %s", res)
	}
	return r
}

// lgExpectAlone asserts that a waiting client gets no tunnel and is closed
// by the alone timeout (after at least min since since).
func lgExpectAlone(t testing.TB, r *client.Raw, since time.Time, atLeast time.Duration) {
	t.Helper()
	if _, why := lgClosedWhy(t, r); why != fmt.Sprintf("No partner arrived within %v", atLeast) {
		t.Errorf("closed saying %q, want the alone timeout (%v)", why, atLeast)
	}
	if el := time.Since(since); el < atLeast {
		t.Fatalf("closed after %v, before the alone timeout %v", el, atLeast)
	}
}

// lgDialPair dials a and b concurrently and returns both tunnels.
func lgDialPair(t testing.TB, a, b client.Options) (*client.Tunnel, *client.Tunnel) {
	t.Helper()
	return dialPair(t, a, b)
}

// lgExchange sends a distinct message each way and checks it arrives.
func lgExchange(t testing.TB, a, b *client.Tunnel, tag string) {
	t.Helper()
	for _, d := range []struct {
		from, to *client.Tunnel
		msg      string
	}{{a, b, tag + ": a to b"}, {b, a, tag + ": b to a"}} {
		_ = d.from.SetDeadline(time.Now().Add(5 * time.Second))
		_ = d.to.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := d.from.Write([]byte(d.msg)); err != nil {
			t.Fatalf("%s: write: %v", tag, err)
		}
		buf := make([]byte, len(d.msg))
		if _, err := io.ReadFull(d.to, buf); err != nil {
			t.Fatalf("%s: read: %v", tag, err)
		}
		if string(buf) != d.msg {
			t.Fatalf("%s: got %q, want %q", tag, buf, d.msg)
		}
	}
}

// lgExpectTunnelEOF asserts that the tunnel's next read reports the end of
// the connection within d.
func lgExpectTunnelEOF(t testing.TB, tun *client.Tunnel, d time.Duration) {
	t.Helper()
	_ = tun.SetReadDeadline(time.Now().Add(d))
	n, err := tun.Read(make([]byte, 256))
	if n > 0 || !lgIsClosed(err) {
		t.Fatalf("want EOF within %v, got %d bytes, err %v", d, n, err)
	}
}

// lgWS is a hand-driven WebSocket client: it sends and reads single frames.
type lgWS struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

func lgDialWS(t testing.TB, s *Server) *lgWS {
	t.Helper()
	h := hoDialWS(t, s) // one WebSocket dialer for the hand-driven clients
	return &lgWS{t: t, conn: h.c, br: h.br}
}

// send writes one masked frame.
func (w *lgWS) send(op ws.OpCode, fin bool, p []byte) {
	w.t.Helper()
	_ = w.conn.SetWriteDeadline(time.Now().Add(testutil.Patience))
	if err := ws.WriteFrame(w.conn, ws.MaskFrame(ws.NewFrame(op, fin, p))); err != nil {
		w.t.Fatalf("ws write: %v", err)
	}
}

// read returns the next frame from the server, which must be unmasked.
func (w *lgWS) read() ws.Frame {
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
func (w *lgWS) readJSON() map[string]any {
	w.t.Helper()
	f := w.read()
	if f.Header.OpCode != ws.OpText || !f.Header.Fin {
		w.t.Fatalf("want a final TEXT frame, got op %v fin %v: %q", f.Header.OpCode, f.Header.Fin, f.Payload)
	}
	if !bytes.HasSuffix(f.Payload, []byte("\n")) {
		w.t.Fatalf("JSON message without trailing newline: %q", f.Payload)
	}
	return lgDecode(w.t, f.Payload)
}

// authenticate authenticates successfully (the client then waits).
func (w *lgWS) authenticate(token, nonce, name string) {
	w.t.Helper()
	b, _ := json.Marshal(map[string]any{"id": 5, "method": "Authentication.Authenticate",
		"params": lgAuthParams(token, nonce, client.NewUUID(), name)})
	w.send(ws.OpText, true, append(b, '\n'))
	m := w.readJSON()
	p, _ := m["params"].(map[string]any)
	if m["id"] != float64(5) || p["authenticationError"] != "AuthenticationErrorNoError" {
		w.t.Fatalf("authenticate reply: %v", m)
	}
}

// ---------------------------------------------------------------------------
// RemoteProxy.Hello and RemoteProxy.Introspect

func TestLegacyHello(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	for _, tr := range lgTransports {
		t.Run(tr.name, func(t *testing.T) {
			r := lgDial(t, tr.url(s))
			m, err := r.Call(42, "RemoteProxy.Hello", nil)
			if err != nil {
				t.Fatal(err)
			}
			if m["status"] != "success" || m["id"] != float64(42) {
				t.Fatalf("reply %v: want status success, id 42", m)
			}
			p, _ := m["params"].(map[string]any)
			want := map[string]any{
				"apiVersion": APIVersion,
				"name":       "legacy-test-relay",
				"server":     "meetpoint", // docs/protocol.md
				"version":    Version,
			}
			if len(p) != len(want) {
				t.Errorf("params %v: want exactly the keys of %v", p, want)
			}
			for k, v := range want {
				if p[k] != v {
					t.Errorf("params[%q] = %v, want %v", k, p[k], v)
				}
			}
			// Hello does not end the connection: a second call works.
			m, err = r.Call(43, "RemoteProxy.Hello", nil)
			if err != nil || m["status"] != "success" || m["id"] != float64(43) {
				t.Fatalf("second Hello: %v, %v", m, err)
			}
		})
	}
	// client.Hello, the library's own path, agrees.
	p, err := client.Hello(context.Background(), client.Options{URL: tcpURL(s), Timeout: 5 * time.Second})
	if err != nil || p["name"] != "legacy-test-relay" {
		t.Fatalf("client.Hello: %v, %v", p, err)
	}
}

func TestLegacyIntrospect(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	for _, tr := range lgTransports {
		t.Run(tr.name, func(t *testing.T) {
			r := lgDial(t, tr.url(s))
			m, err := r.Call(3, "RemoteProxy.Introspect", nil)
			if err != nil {
				t.Fatal(err)
			}
			if m["status"] != "success" || m["id"] != float64(3) {
				t.Fatalf("reply %v", m)
			}
			p, _ := m["params"].(map[string]any)
			methods, _ := p["methods"].(map[string]any)
			for _, name := range []string{"RemoteProxy.Hello", "RemoteProxy.Introspect", "Authentication.Authenticate"} {
				if _, ok := methods[name]; !ok {
					t.Errorf("methods lack %s (have %v)", name, keys(methods))
				}
			}
			auth, _ := methods["Authentication.Authenticate"].(map[string]any)
			params, _ := auth["params"].(map[string]any)
			for _, k := range []string{"uuid", "name", "token", "o:nonce"} {
				if _, ok := params[k]; !ok {
					t.Errorf("Authenticate params lack %q: %v", k, params)
				}
			}
			notifs, _ := p["notifications"].(map[string]any)
			if _, ok := notifs["RemoteProxy.TunnelEstablished"]; !ok {
				t.Errorf("notifications lack RemoteProxy.TunnelEstablished: %v", keys(notifs))
			}
			types, _ := p["types"].(map[string]any)
			checkList := func(name string, want []string) {
				got, _ := types[name].([]any)
				if len(got) != len(want) {
					t.Errorf("types[%s] = %v, want %v", name, got, want)
					return
				}
				for i := range want {
					if got[i] != want[i] {
						t.Errorf("types[%s][%d] = %v, want %v", name, i, got[i], want[i])
					}
				}
			}
			checkList("AuthenticationError", []string{
				"AuthenticationErrorNoError", "AuthenticationErrorUnknown",
				"AuthenticationErrorTimeout", "AuthenticationErrorAborted",
				"AuthenticationErrorAuthenticationFailed", "AuthenticationErrorProxyError",
			})
			checkList("BasicType", []string{"Uuid", "String", "StringList", "Int", "UInt", "Double", "Bool", "Variant", "Object"})
		})
	}
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// ---------------------------------------------------------------------------
// apiBasicCalls

func TestLegacyBasicCalls(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	cases := []struct {
		name string
		req  string
		id   float64
		err  string // exact text; a trailing "*" matches a prefix
	}{
		{"missing id", `{"method":"RemoteProxy.Hello"}`, -1, "Error parsing command. Missing 'id'"},
		{"id not a number", `{"id":"x","method":"RemoteProxy.Hello"}`, -1, "Error parsing command. Missing 'id'"},
		{"missing method", `{"id":3}`, 3, "Error parsing method. Got: ''', Expected: 'Namespace.method'"},
		{"method without dot", `{"id":4,"method":"RemoteProxyHello"}`, 4,
			"Error parsing method. Got: 'RemoteProxyHello'', Expected: 'Namespace.method'"},
		{"method with two dots", `{"id":4,"method":"RemoteProxy.Hello.x"}`, 4,
			"Error parsing method. Got: 'RemoteProxy.Hello.x'', Expected: 'Namespace.method'"},
		{"invalid json", `{"id":5,"method":}`, -1, "Failed to parse JSON data: *"},
		{"invalid json value", `{"id":5,"method":"RemoteProxy.Hello","x":tru}`, -1, "Failed to parse JSON data: *"},
		{"no such namespace", `{"id":6,"method":"Foo.Hello"}`, 6, "No such namespace"},
		{"no such method", `{"id":7,"method":"RemoteProxy.Foo"}`, 7, "No such method"},
		{"no such method in auth namespace", `{"id":7,"method":"Authentication.Foo"}`, 7, "No such method"},
		{"hello forbidden key", `{"id":8,"method":"RemoteProxy.Hello","params":{"foo":1}}`, 8, "Invalid params: Forbidden key foo"},
		{"authenticate forbidden key", `{"id":9,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"t","foo":"bar"}}`,
			9, "Invalid params: Forbidden key foo"},
		{"authenticate missing token", `{"id":10,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n"}}`,
			10, "Invalid params: Missing key token"},
		{"authenticate missing uuid", `{"id":10,"method":"Authentication.Authenticate","params":{"name":"n","token":"t"}}`,
			10, "Invalid params: Missing key uuid"},
		{"authenticate no params", `{"id":12,"method":"Authentication.Authenticate"}`, 12, "Invalid params: Missing key name"},
		{"authenticate token not a string", `{"id":13,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":5}}`,
			13, "Invalid params: Invalid value type for key token"},
	}
	for _, tr := range lgTransports {
		t.Run(tr.name, func(t *testing.T) {
			t.Run("valid", func(t *testing.T) {
				r := lgDial(t, tr.url(s))
				for _, req := range []string{
					`{"id":1,"method":"RemoteProxy.Hello"}`,
					`{"id":"7","method":"RemoteProxy.Hello","params":{}}`, // lenient id
					`{"id":2,"method":"RemoteProxy.Introspect"}`,
				} {
					lgSend(t, r, req+"\n")
					m := lgRecv(t, r)
					if m["status"] != "success" {
						t.Fatalf("%s: %v", req, m)
					}
				}
				lgExpectOpen(t, r, 50*time.Millisecond)
			})
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					r := lgDial(t, tr.url(s))
					lgSend(t, r, c.req+"\n")
					m := lgRecv(t, r)
					if m["status"] != "error" || m["id"] != c.id {
						t.Errorf("reply %v: want status error, id %v", m, c.id)
					}
					text, _ := m["error"].(string)
					if p, ok := strings.CutSuffix(c.err, "*"); ok {
						if !strings.HasPrefix(text, p) || len(text) == len(p) {
							t.Errorf("error %q, want %q followed by details", text, p)
						}
					} else if text != c.err {
						t.Errorf("error %q, want %q", text, c.err)
					}
					if len(m) != 3 {
						t.Errorf("error reply %v: want exactly error, id, status", m)
					}
					lgExpectClosed(t, r)
				})
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Raw TCP stream framing

func TestLegacyTCPStream(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	hello := func(id int) string { return fmt.Sprintf(`{"id":%d,"method":"RemoteProxy.Hello"}`, id) }
	expectIDs := func(t *testing.T, r *client.Raw, ids ...int) {
		t.Helper()
		for _, id := range ids {
			m := lgRecv(t, r)
			if m["status"] != "success" || m["id"] != float64(id) {
				t.Fatalf("reply %v, want success with id %d", m, id)
			}
		}
	}
	t.Run("two requests in one write", func(t *testing.T) {
		r := lgDial(t, tcpURL(s))
		lgSend(t, r, hello(1)+"\n"+hello(2)+"\n")
		expectIDs(t, r, 1, 2)
		lgExpectOpen(t, r, 30*time.Millisecond)
	})
	t.Run("three requests without newlines", func(t *testing.T) {
		r := lgDial(t, tcpURL(s))
		lgSend(t, r, hello(1)+hello(2)+" \r\n\t"+hello(3))
		expectIDs(t, r, 1, 2, 3)
	})
	t.Run("one request split over writes", func(t *testing.T) {
		r := lgDial(t, tcpURL(s))
		if nc, ok := r.Conn().(*net.TCPConn); ok {
			_ = nc.SetNoDelay(true)
		}
		req := `{"id":9,"method":"Authentication.Authenticate","params":{"name":"sp}lit{\"","token":"split-token","uuid":"` + client.NewUUID() + `"}}` + "\n"
		for _, part := range []string{req[:1], req[1:20], req[20:40], req[40:45], req[45 : len(req)-3], req[len(req)-3:]} {
			lgSend(t, r, part)
			if part != req[len(req)-3:] {
				// Nothing may be answered before the object is complete
				// (this also lets each part arrive on its own).
				lgExpectOpen(t, r, 20*time.Millisecond)
			}
		}
		m := lgRecv(t, r)
		p, _ := m["params"].(map[string]any)
		if m["id"] != float64(9) || p["authenticationError"] != "AuthenticationErrorNoError" {
			t.Fatalf("reply %v", m)
		}
	})
	t.Run("large request under the limit", func(t *testing.T) {
		r := lgDial(t, tcpURL(s))
		name := strings.Repeat("n", 9<<10)
		req := `{"id":4,"method":"Authentication.Authenticate","params":{"name":"` + name + `","token":"t","uuid":"u"}}`
		lgSend(t, r, req[:5000])
		lgExpectOpen(t, r, 20*time.Millisecond)
		lgSend(t, r, req[5000:])
		m := lgRecv(t, r)
		if m["id"] != float64(4) || m["status"] != "success" {
			t.Fatalf("reply %v", m)
		}
	})
	t.Run("unterminated JSON over 10 KiB closes", func(t *testing.T) {
		r := lgDial(t, tcpURL(s))
		big := `{"id":1,"method":"RemoteProxy.Hello","params":{"x":"` + strings.Repeat("a", 11<<10)
		_ = r.SetDeadline(time.Now().Add(5 * time.Second))
		// The server may close while we write: a failed write is fine.
		_ = r.Send([]byte(big))
		lgExpectClosed(t, r)
	})
	t.Run("unterminated JSON in pieces over 10 KiB closes", func(t *testing.T) {
		r := lgDial(t, tcpURL(s))
		lgSend(t, r, `{"id":1,"method":"RemoteProxy.Hello","params":{"x":"`)
		piece := strings.Repeat("b", 1024)
		var err error
		for i := 0; i < 12 && err == nil; i++ {
			err = r.Send([]byte(piece))
		}
		lgExpectClosed(t, r)
	})
}

func TestLegacyWSMessageTooBig(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	r := lgDial(t, wsURL(s))
	big := `{"id":1,"method":"RemoteProxy.Hello","params":{"x":"` + strings.Repeat("a", 11<<10) + `"}}`
	_ = r.Send([]byte(big))
	ce := lgExpectClosed(t, r)
	if ce == nil || ce.Code != ws.StatusMessageTooBig {
		t.Fatalf("close %v, want code %d", ce, ws.StatusMessageTooBig)
	}
}

// ---------------------------------------------------------------------------
// Authentication

func TestLegacyAuthenticate(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	for _, tr := range lgTransports {
		for _, nonce := range []string{"", "nonce-1"} {
			name := tr.name + "/no-nonce"
			if nonce != "" {
				name = tr.name + "/nonce"
			}
			t.Run(name, func(t *testing.T) {
				t.Run("success", func(t *testing.T) {
					r := lgDial(t, tr.url(s))
					res := lgAuthenticate(t, r, lgAuthParams("good-"+name, nonce, client.NewUUID(), "n"))
					if res != "AuthenticationErrorNoError" {
						t.Fatalf("got %s", res)
					}
					// Authenticated and waiting: the connection stays open.
					lgExpectOpen(t, r, 50*time.Millisecond)
				})
				t.Run("failure", func(t *testing.T) {
					r := lgDial(t, tr.url(s))
					res := lgAuthenticate(t, r, lgAuthParams("bad-"+name, nonce, client.NewUUID(), "n"))
					if res != "AuthenticationErrorAuthenticationFailed" {
						t.Fatalf("got %s", res)
					}
					lgExpectClosed(t, r)
				})
				// Every AuthenticationError value goes on the wire as the
				// authenticator gave it; all but NoError close.
				for i, want := range AuthResultNames()[1:] {
					t.Run(want, func(t *testing.T) {
						r := lgDial(t, tr.url(s))
						res := lgAuthenticate(t, r, lgAuthParams(fmt.Sprintf("result-%d", i+1), nonce, client.NewUUID(), "n"))
						if res != want {
							t.Fatalf("got %s, want %s", res, want)
						}
						lgExpectClosed(t, r)
					})
				}
			})
		}
	}
	// client.Dial reports the failure as *AuthError.
	_, err := client.Dial(context.Background(), client.Options{URL: tcpURL(s), Token: "bad", Timeout: 5 * time.Second})
	var ae *client.AuthError
	if !errors.As(err, &ae) || ae.Result != "AuthenticationErrorAuthenticationFailed" {
		t.Fatalf("client.Dial with a bad token: %v", err)
	}
}

func TestLegacyAuthTimeout(t *testing.T) {
	t.Parallel()
	s := lgServer(t, func(c *Config) {
		c.AuthTimeout = 150 * time.Millisecond
		c.RPCTimeout = time.Hour // only the auth timeout can answer
	})
	for _, tr := range lgTransports {
		t.Run(tr.name, func(t *testing.T) {
			r := lgDial(t, tr.url(s))
			start := time.Now()
			res := lgAuthenticate(t, r, lgAuthParams("hang", "", client.NewUUID(), "n"))
			if res != "AuthenticationErrorTimeout" {
				t.Fatalf("got %s", res)
			}
			if el := time.Since(start); el < 150*time.Millisecond {
				t.Errorf("answered after %v, before AuthTimeout (150ms)", el)
			}
			lgExpectClosed(t, r)
		})
	}
}

func TestLegacyRPCTimeout(t *testing.T) {
	t.Parallel()
	s := lgServer(t, func(c *Config) {
		c.AuthTimeout = time.Hour // only the RPC timeout can answer
		c.RPCTimeout = 150 * time.Millisecond
	})
	for _, tr := range lgTransports {
		t.Run(tr.name, func(t *testing.T) {
			r := lgDial(t, tr.url(s))
			start := time.Now()
			lgSend(t, r, `{"id":77,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"hang"}}`+"\n")
			m := lgRecv(t, r)
			if m["status"] != "error" || m["id"] != float64(77) || m["error"] != "Command timed out" {
				t.Fatalf("reply %v, want error \"Command timed out\" with id 77", m)
			}
			if el := time.Since(start); el < 150*time.Millisecond {
				t.Errorf("answered after %v, before RPCTimeout (150ms)", el)
			}
			lgExpectClosed(t, r)
		})
	}
}

func TestLegacyAsyncAuthenticator(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	s := lgServer(t, func(c *Config) { c.Auth = lgTestAuth{gate: gate} })
	var rs []*client.Raw
	for _, tr := range lgTransports {
		r := lgDial(t, tr.url(s))
		lgSend(t, r, `{"id":21,"method":"Authentication.Authenticate","params":{"uuid":"`+client.NewUUID()+`","name":"n","token":"async-`+tr.name+`"}}`+"\n")
		rs = append(rs, r)
	}
	for _, r := range rs {
		lgExpectOpen(t, r, 50*time.Millisecond) // the authenticator has not answered
	}
	close(gate)
	for _, r := range rs {
		m := lgRecv(t, r)
		p, _ := m["params"].(map[string]any)
		if m["id"] != float64(21) || p["authenticationError"] != "AuthenticationErrorNoError" {
			t.Fatalf("reply %v", m)
		}
		lgExpectOpen(t, r, 30*time.Millisecond)
	}
	// And an async authentication leads to a working tunnel.
	gate2 := make(chan struct{})
	close(gate2)
	s2 := lgServer(t, func(c *Config) { c.Auth = lgTestAuth{gate: gate2} })
	a, b := pair(t, tcpURL(s2), wsURL(s2), "async-pair", "")
	lgExchange(t, a, b, "async")
}

// ---------------------------------------------------------------------------
// Pairing

func TestLegacyNoncePairing(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	for _, c := range lgCombos {
		t.Run(c.name, func(t *testing.T) {
			a, b := pair(t, c.a(s), c.b(s), "tok-"+c.name, "nonce-"+c.name)
			lgExchange(t, a, b, c.name)
		})
	}
	// Clients that must not meet, on a server that sends them away soon.
	const alone = 500 * time.Millisecond
	s = lgServer(t, func(c *Config) { c.AloneTimeout = alone })
	t.Run("same token different nonce", func(t *testing.T) {
		start := time.Now()
		a := lgWaiting(t, tcpURL(s), "tok-dn", "n1", "", "a")
		b := lgWaiting(t, wsURL(s), "tok-dn", "n2", "", "b")
		lgExpectAlone(t, a, start, alone)
		lgExpectAlone(t, b, start, alone)
	})
	t.Run("different token same nonce", func(t *testing.T) {
		start := time.Now()
		a := lgWaiting(t, tcpURL(s), "tok-x", "same-nonce", "", "a")
		b := lgWaiting(t, tcpURL(s), "tok-y", "same-nonce", "", "b")
		lgExpectAlone(t, a, start, alone)
		lgExpectAlone(t, b, start, alone)
	})
	t.Run("nonce does not meet no nonce", func(t *testing.T) {
		for _, order := range []struct{ first, second string }{{"n", ""}, {"", "n"}} {
			tok := "tok-nn-" + order.first
			start := time.Now()
			a := lgWaiting(t, wsURL(s), tok, order.first, "", "a")
			b := lgWaiting(t, tcpURL(s), tok, order.second, "", "b")
			lgExpectAlone(t, a, start, alone)
			lgExpectAlone(t, b, start, alone)
		}
	})
}

func TestLegacyMultipleNonces(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	type tun struct{ a, b *client.Tunnel }
	var tuns []tun
	for i := range 5 {
		urlA, urlB := tcpURL(s), wsURL(s)
		if i%2 == 1 {
			urlA, urlB = wsURL(s), tcpURL(s)
		}
		a, b := pair(t, urlA, urlB, "one-token", fmt.Sprintf("nonce-%d", i))
		tuns = append(tuns, tun{a, b})
	}
	// Everyone writes first, then everyone reads: a message delivered to
	// the wrong tunnel would be read in place of the right one.
	for i, tn := range tuns {
		for _, d := range []struct {
			w   *client.Tunnel
			tag string
		}{{tn.a, "a"}, {tn.b, "b"}} {
			_ = d.w.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintf(d.w, "tunnel %d from %s|", i, d.tag); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, tn := range tuns {
		for _, d := range []struct {
			r    *client.Tunnel
			from string
		}{{tn.b, "a"}, {tn.a, "b"}} {
			want := fmt.Sprintf("tunnel %d from %s|", i, d.from)
			buf := make([]byte, len(want))
			_ = d.r.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(d.r, buf); err != nil {
				t.Fatal(err)
			}
			if string(buf) != want {
				t.Fatalf("tunnel %d got %q, want %q", i, buf, want)
			}
		}
	}
	if got := s.Stats().TunnelsActive; got != 5 {
		t.Errorf("TunnelsActive = %d, want 5", got)
	}
	// Nothing else arrived anywhere.
	for i, tn := range tuns {
		for _, r := range []*client.Tunnel{tn.a, tn.b} {
			_ = r.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if n, err := r.Read(make([]byte, 64)); n > 0 || !lgIsTimeout(err) {
				t.Fatalf("tunnel %d: extra read %d, %v", i, n, err)
			}
		}
	}
	// Closing one tunnel leaves the others working.
	tuns[2].a.Close()
	lgExpectTunnelEOF(t, tuns[2].b, 2*time.Second)
	for i, tn := range tuns {
		if i != 2 {
			lgExchange(t, tn.a, tn.b, fmt.Sprintf("tunnel %d again", i))
		}
	}
}

func TestLegacyThirdClient(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	for _, nonce := range []string{"", "n3"} {
		for _, tr := range lgTransports {
			t.Run(tr.name+"/nonce="+nonce, func(t *testing.T) {
				tok := "triple-" + tr.name
				a, b := pair(t, tcpURL(s), wsURL(s), tok, nonce)
				c := lgDial(t, tr.url(s))
				res := lgAuthenticate(t, c, lgAuthParams(tok, nonce, client.NewUUID(), "carol"))
				if res != "AuthenticationErrorNoError" {
					// nymea authenticates the third client, then closes it.
					t.Logf("third client: %s", res)
				}
				if _, why := lgClosedWhy(t, c); why != "Tunnel already exists" {
					t.Errorf("third client closed saying %q, want \"Tunnel already exists\"", why)
				}
				lgExchange(t, a, b, "after third")
			})
		}
	}
}

func TestLegacyDuplicateUUID(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	for _, c := range lgCombos {
		for _, nonce := range []string{"", "dn"} {
			t.Run(c.name+"/nonce="+nonce, func(t *testing.T) {
				uuid := client.NewUUID()
				tok := "dup-" + c.name + nonce
				a := lgWaiting(t, c.a(s), tok, nonce, uuid, "a")
				b := lgWaiting(t, c.b(s), tok, nonce, uuid, "b")
				for _, r := range []*client.Raw{a, b} {
					if _, why := lgClosedWhy(t, r); why != "Duplicated client UUID." {
						t.Errorf("closed saying %q, want \"Duplicated client UUID.\"", why)
					}
				}
				// The key is free again afterwards.
				x, y := pair(t, c.a(s), c.b(s), tok, nonce)
				lgExchange(t, x, y, "after duplicate")
			})
		}
	}
}

// ---------------------------------------------------------------------------
// TunnelEstablished

func TestLegacyTunnelEstablished(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	for _, c := range lgCombos {
		t.Run(c.name, func(t *testing.T) {
			uA, uB := client.NewUUID(), client.NewUUID()
			a := lgWaiting(t, c.a(s), "te-"+c.name, "", uA, "alice")
			b := lgWaiting(t, c.b(s), "te-"+c.name, "", uB, "bob")
			for _, d := range []struct {
				r          *client.Raw
				name, uuid string
			}{{a, "bob", uB}, {b, "alice", uA}} {
				_ = d.r.SetDeadline(time.Now().Add(5 * time.Second))
				p, err := d.r.Recv()
				if err != nil {
					t.Fatal(err)
				}
				m := lgDecode(t, p)
				if m["notification"] != "RemoteProxy.TunnelEstablished" {
					t.Fatalf("got %s", p)
				}
				if m["id"] != float64(0) { // the connection's first notification
					t.Errorf("notification id %v, want 0: %s", m["id"], p)
				}
				params, _ := m["params"].(map[string]any)
				if len(params) != 2 || params["name"] != d.name || params["uuid"] != d.uuid {
					t.Errorf("params %v, want name %q uuid %q", params, d.name, d.uuid)
				}
				// It is the last JSON-RPC message: nothing follows.
				lgExpectOpen(t, d.r, 30*time.Millisecond)
			}
		})
	}
	t.Run("client library", func(t *testing.T) {
		uA, uB := client.NewUUID(), client.NewUUID()
		a, b := lgDialPair(t,
			client.Options{URL: tcpURL(s), Token: "te-lib", Name: "alice", UUID: uA, Timeout: 5 * time.Second},
			client.Options{URL: wsURL(s), Token: "te-lib", Name: "bob", UUID: uB, Timeout: 5 * time.Second})
		if a.PeerName() != "bob" || a.PeerUUID() != uB {
			t.Errorf("a sees %q %q, want bob %s", a.PeerName(), a.PeerUUID(), uB)
		}
		if b.PeerName() != "alice" || b.PeerUUID() != uA {
			t.Errorf("b sees %q %q, want alice %s", b.PeerName(), b.PeerUUID(), uA)
		}
		lgExchange(t, a, b, "lib")
	})
}

// ---------------------------------------------------------------------------
// Data before TunnelEstablished

func TestLegacyDataBeforeTunnel(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	for _, tr := range lgTransports {
		t.Run(tr.name+"/after reply", func(t *testing.T) {
			tok := "early-" + tr.name
			a := lgWaiting(t, tr.url(s), tok, "", "", "a")
			lgSend(t, a, "early bytes")
			lgExpectClosed(t, a)
			// a left the registry: a newcomer waits for a partner of its own
			// and pairs with the next one.
			x, y := pair(t, tcpURL(s), tr.url(s), tok, "")
			lgExchange(t, x, y, "after early")
		})
		t.Run(tr.name+"/before reply", func(t *testing.T) {
			r := lgDial(t, tr.url(s))
			req := `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"` + client.NewUUID() + `","name":"n","token":"early-2-` + tr.name + `"}}` + "\n"
			lgSend(t, r, req)
			lgSend(t, r, "{}")
			// The reply may or may not come first; then the connection ends.
			_ = r.SetDeadline(time.Now().Add(2 * time.Second))
			for {
				p, err := r.Recv()
				if err != nil {
					if !lgIsClosed(err) {
						t.Fatalf("want close, got %v", err)
					}
					break
				}
				if m := lgDecode(t, p); m["notification"] != nil && m["notification"] != "RemoteProxy.Closing" {
					t.Fatalf("got %s", p)
				}
			}
		})
	}
	t.Run("ws binary after authenticate", func(t *testing.T) {
		a := lgWaiting(t, wsURL(s), "early-bin", "", "", "a")
		if err := a.SendFrame(ws.OpBinary, []byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		lgExpectClosed(t, a)
	})
}

// ---------------------------------------------------------------------------
// Disconnect propagation

func TestLegacyDisconnectPropagation(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	for _, c := range lgCombos {
		for _, closer := range []string{"a", "b"} {
			t.Run(c.name+"/"+closer+" closes", func(t *testing.T) {
				a, b := pair(t, c.a(s), c.b(s), "dc-"+c.name+closer, "")
				lgExchange(t, a, b, "before")
				x, y := a, b
				if closer == "b" {
					x, y = b, a
				}
				x.Close()
				lgExpectTunnelEOF(t, y, 5*time.Second)
			})
		}
	}
	for _, c := range lgCombos {
		t.Run(c.name+"/pending data is delivered before the close", func(t *testing.T) {
			a, b := pair(t, c.a(s), c.b(s), "dc-pending-"+c.name, "")
			_, _ = a.Write([]byte("last words"))
			a.Close()
			_ = b.SetReadDeadline(time.Now().Add(2 * time.Second))
			got, err := io.ReadAll(b)
			if string(got) != "last words" || err != nil {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	t.Run("ws abrupt close without close frame", func(t *testing.T) {
		w1, w2 := dtRawWSPair(t, s, "dc-abrupt")
		w1.conn.Close()
		// w2 gets a close frame (or the connection's end), then EOF.
		_ = w2.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		f, err := readFrame(w2.br)
		if err == nil {
			if f.Header.OpCode != ws.OpClose {
				t.Fatalf("got op %v %q, want close", f.Header.OpCode, f.Payload)
			}
			_, err = readFrame(w2.br)
		}
		if !lgIsClosed(err) {
			t.Fatalf("want EOF, got %v", err)
		}
	})
}

// TestLegacyRepairAfterTunnelClose: once a client has seen its tunnel end,
// the token+nonce is free again: reconnecting both sides at once gives a new
// tunnel, not "Tunnel already exists".
func TestLegacyRepairAfterTunnelClose(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	for _, c := range lgCombos {
		t.Run(c.name, func(t *testing.T) {
			tok := "repair-" + c.name
			failures := 0
			const rounds = 20
			for i := range rounds {
				a, b, err := lgTryPair(c.a(s), c.b(s), tok)
				if err != nil {
					failures++
					t.Logf("round %d: re-pair after the previous tunnel ended: %v", i, err)
					continue
				}
				lgExchange(t, a, b, "repair")
				a.Close()
				lgExpectTunnelEOF(t, b, 2*time.Second)
				b.Close()
			}
			if failures > 0 {
				// Seen: "Tunnel already exists" for one side. forward.go's
				// teardown closes both sockets before reg.Leave, so a client
				// can see the end of its tunnel while the key is still held.
				t.Errorf("%d of %d re-pairings right after the previous tunnel ended failed", failures, rounds)
			}
		})
	}
}

// lgTryPair is pair without t.Fatal: it reports a failed pairing.
func lgTryPair(urlA, urlB, token string) (*client.Tunnel, *client.Tunnel, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	defer cancel()
	return client.DialPair(ctx, client.Options{URL: urlA, Token: token, Name: "a"}, client.Options{URL: urlB, Token: token, Name: "b"})
}

// ---------------------------------------------------------------------------
// Timeouts

func TestLegacyInactiveTimeout(t *testing.T) {
	t.Parallel()
	const d = time.Second // long enough for dial + Hello on a loaded machine under -race
	s := lgServer(t, func(c *Config) { c.InactiveTimeout = d })
	t.Run("silent tcp", func(t *testing.T) {
		start := time.Now()
		c, err := net.Dial("tcp", s.Addrs()[0].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := c.Read(make([]byte, 16))
		if n > 0 || !lgIsClosed(err) {
			t.Fatalf("read %d, %v; want EOF", n, err)
		}
		if el := time.Since(start); el < d {
			t.Fatalf("closed after %v, before InactiveTimeout %v", el, d)
		}
	})
	for _, tr := range lgTransports {
		t.Run(tr.name+" after hello", func(t *testing.T) {
			start := time.Now()
			r := lgDial(t, tr.url(s))
			if m, err := r.Call(1, "RemoteProxy.Hello", nil); err != nil || m["status"] != "success" {
				t.Fatalf("hello: %v %v", m, err)
			}
			lgExpectClosed(t, r)
			if el := time.Since(start); el < d {
				t.Fatalf("closed after %v, before InactiveTimeout %v", el, d)
			}
		})
		t.Run(tr.name+" while authenticating", func(t *testing.T) {
			// The authenticator never answers and its timeouts are long:
			// the inactive timeout still ends the connection.
			start := time.Now()
			r := lgDial(t, tr.url(s))
			lgSend(t, r, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"hang"}}`)
			_ = r.SetDeadline(time.Now().Add(3 * time.Second))
			for {
				p, err := r.Recv()
				if err != nil {
					if !lgIsClosed(err) {
						t.Fatalf("want close, got %v", err)
					}
					break
				}
				t.Logf("got %s", p)
			}
			if el := time.Since(start); el < d {
				t.Fatalf("closed after %v, before InactiveTimeout %v", el, d)
			}
		})
	}
}

func TestLegacyAloneTimeout(t *testing.T) {
	t.Parallel()
	// Well apart: the check that the inactive timeout no longer applies
	// ends long before the alone timeout, however late it starts.
	const inactive, alone = 300 * time.Millisecond, 3 * time.Second
	s := lgServer(t, func(c *Config) { c.InactiveTimeout = inactive; c.AloneTimeout = alone })
	for _, tr := range lgTransports {
		t.Run(tr.name, func(t *testing.T) {
			tok := "alone-" + tr.name
			start := time.Now()
			a := lgWaiting(t, tr.url(s), tok, "", "", "a")
			// Authenticated: the inactive timeout no longer applies.
			lgExpectOpen(t, a, inactive+150*time.Millisecond)
			lgExpectAlone(t, a, start, alone)
			// The registry forgot it: the next two clients pair.
			x, y := pair(t, tr.url(s), tcpURL(s), tok, "")
			lgExchange(t, x, y, "after alone")
		})
	}
}

func TestLegacyNoTimeoutInTunnel(t *testing.T) {
	t.Parallel()
	const d = 2 * time.Second // short, but long enough to pair under load
	s := lgServer(t, func(c *Config) { c.InactiveTimeout = d; c.AloneTimeout = d })
	a, b := pair(t, tcpURL(s), wsURL(s), "no-timeout", "")
	// Wait past both timeouts, watching that nothing arrives.
	_ = b.SetReadDeadline(time.Now().Add(3 * d))
	if n, err := b.Read(make([]byte, 16)); n > 0 || !lgIsTimeout(err) {
		t.Fatalf("idle tunnel: read %d, %v", n, err)
	}
	lgExchange(t, a, b, "idle")
}

// ---------------------------------------------------------------------------
// WebSocket specifics

func TestLegacyWSBinaryBeforeAuth(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	r := lgDial(t, wsURL(s))
	if err := r.SendFrame(ws.OpBinary, []byte(`{"id":1,"method":"RemoteProxy.Hello"}`)); err != nil {
		t.Fatal(err)
	}
	_ = r.SetDeadline(time.Now().Add(2 * time.Second))
	_, err := r.Recv()
	var ce *client.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("want a close frame, got %v", err)
	}
	if ce.Code != ws.StatusInternalServerError || ce.Reason != "Binary message not expected." {
		t.Fatalf("close %d %q, want 1011 %q", ce.Code, ce.Reason, "Binary message not expected.")
	}
}

func TestLegacyWSPing(t *testing.T) {
	t.Parallel()
	s := lgServer(t, nil)
	expectPong := func(t *testing.T, w *lgWS, payload []byte) {
		t.Helper()
		f := w.read()
		if f.Header.OpCode != ws.OpPong || !f.Header.Fin || !bytes.Equal(f.Payload, payload) {
			t.Fatalf("got op %v fin %v %q, want pong %q", f.Header.OpCode, f.Header.Fin, f.Payload, payload)
		}
	}
	t.Run("before auth", func(t *testing.T) {
		w := lgDialWS(t, s)
		for _, p := range [][]byte{[]byte("ping-payload"), {}, bytes.Repeat([]byte{0xff}, 125)} {
			w.send(ws.OpPing, true, p)
			expectPong(t, w, p)
		}
		// Still a working JSON-RPC connection.
		w.send(ws.OpText, true, []byte(`{"id":3,"method":"RemoteProxy.Hello"}`+"\n"))
		if m := w.readJSON(); m["id"] != float64(3) || m["status"] != "success" {
			t.Fatalf("hello after ping: %v", m)
		}
	})
	t.Run("while waiting", func(t *testing.T) {
		w := lgDialWS(t, s)
		w.authenticate("ping-wait", "", "w")
		w.send(ws.OpPing, true, []byte("waiting"))
		expectPong(t, w, []byte("waiting"))
	})
	for _, peer := range lgTransports {
		t.Run("in tunnel with "+peer.name, func(t *testing.T) {
			tok := "ping-tunnel-" + peer.name
			w := lgDialWS(t, s)
			w.authenticate(tok, "", "w")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			b, err := client.Dial(ctx, client.Options{URL: peer.url(s), Token: tok, Name: "b"})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if m := w.readJSON(); m["notification"] != "RemoteProxy.TunnelEstablished" {
				t.Fatalf("want TunnelEstablished, got %v", m)
			}
			w.send(ws.OpPing, true, []byte("tunnel-ping"))
			expectPong(t, w, []byte("tunnel-ping"))
			// The ping was answered by the relay, not forwarded: b's first
			// bytes are the data sent next.
			w.send(ws.OpBinary, true, []byte("after ping"))
			buf := make([]byte, len("after ping"))
			_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "after ping" {
				t.Fatalf("b read %q, %v", buf, err)
			}
			// A ping between the fragments of a message is answered at once.
			w.send(ws.OpBinary, false, []byte("frag1-"))
			w.send(ws.OpPing, true, []byte("mid"))
			expectPong(t, w, []byte("mid"))
			w.send(ws.OpContinuation, true, []byte("frag2"))
			buf = make([]byte, len("frag1-frag2"))
			if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "frag1-frag2" {
				t.Fatalf("b read %q, %v", buf, err)
			}
			// Neither ping nor pong reached b.
			_ = b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if n, err := b.Read(make([]byte, 16)); n > 0 || !lgIsTimeout(err) {
				t.Fatalf("b: extra read %d, %v", n, err)
			}
		})
	}
}
