package relay

import (
	"context"
	"testing"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// fuzzAuth answers at once by token: "t" is good (the client waits for
// a partner it never gets: each input has one connection, and no loop
// runs), "bad" fails; any other token is never answered (the client
// stays authenticating).
type fuzzAuth struct{}

func (fuzzAuth) Authenticate(_ context.Context, req AuthRequest, done func(AuthResult)) {
	switch req.Token {
	case "t":
		done(AuthNoError)
	case "bad":
		done(AuthFailed)
	}
}

// chunks is a loop.Sock that reads data in pieces whose sizes come from
// cuts (8 bits of cuts per piece, cycling: 1 to 255 bytes, or 0 for as
// much as the reader's buffer takes, so that a read can fill it and the
// reader turn to the loop with more to come), then EAGAIN: a client's
// input as a loop would read it, cut anywhere.
type chunks struct {
	data []byte
	cuts uint64
	n    int
}

func (s *chunks) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, unix.EAGAIN
	}
	size := int(s.cuts >> (8 * (s.n % 8)) & 0xff)
	if size == 0 {
		size = len(p)
	}
	s.n++
	n := copy(p[:min(len(p), size)], s.data)
	s.data = s.data[n:]
	return n, nil
}
func (s *chunks) Write(p []byte) (int, error) { return len(p), nil }
func (s *chunks) Flush() error                { return nil }
func (s *chunks) Close() error                { return nil }
func (s *chunks) Fd() int                     { return -1 }

// FuzzConnInput feeds a plaintext connection before its tunnel arbitrary
// input, cut into arbitrary reads, through every stage its bytes lead to:
// sniffing, the HTTP head and the WebSocket upgrade (a token in the URL
// too, and a URL subscription), WebSocket frames, JSON-RPC, Authenticate,
// waiting for a partner (data before the tunnel), a subsystem's method
// that authenticates (Conn.Authenticate) or subscribes (Conn.Subscribe),
// and data from a subscriber. The stage machine, not one parser: the
// key-check crash of 2026-12-07 sat on a path no parser's fuzzer reached.
// The relay must not panic (the package's tests make the fault barrier
// raise what it catches), must hold no more than its budgets (unparsed
// input: a head's in the HTTP stage, MaxPreAuth's after; a WebSocket
// message; queued replies, which the queue itself refuses past its
// budget, so this holds the stages to writing through it), and its
// registry key goes once it ends.
//
// Not here: a TLS handshake (the gate's goroutine, crypto/tls; the record
// layer after it has FuzzRecords), a subsystem claiming the socket
// (TunnelProxy's tests), the HTTP API behind a hand-off (net/http), the
// stage timers (expire), a socket that refuses writes (slow readers: the
// transport here takes everything), authenticators that answer late or
// with a proxy error, and an access policy.
func FuzzConnInput(f *testing.F) {
	hello := `{"id":1,"method":"RemoteProxy.Hello"}` + "\n"
	ping := `{"id":3,"method":"TunnelProxy.Ping","params":{"timestamp":5}}` + "\n"
	subscribe := `{"id":4,"method":"Events.Subscribe","params":{"token":"t","channels":["a"]}}` + "\n"
	auth := `{"id":2,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"t"}}` + "\n"
	upgrade := "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	for _, seed := range [][]byte{
		[]byte(hello + auth),
		[]byte(hello + `{"id":3,"method":"RemoteProxy.Introspect"}` + "\n" + `{"id":4,"method":"No.Such"}`),
		append(append([]byte(upgrade), testutil.Frame(ws.OpText, true, []byte(hello))...), testutil.Frame(ws.OpText, true, []byte(auth))...),
		append([]byte(upgrade), testutil.Frame(ws.OpPing, true, []byte("p"))...),
		[]byte("GET /?token=t&uuid=u&name=n HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
		[]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
		[]byte("\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"),
		[]byte(ping + ping),
		[]byte(subscribe + hello),
		[]byte(`{"id":1,"method":"Events.Subscribe","params":{"token":"bad","channels":["a"]}}` + "\n"),
		append(append([]byte(upgrade), testutil.Frame(ws.OpText, true, []byte(subscribe))...), testutil.Frame(ws.OpText, true, []byte(hello))...),
		[]byte("GET /?token=t&channels=a,b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
		pings(append([]byte(upgrade), testutil.Frame(ws.OpText, true, []byte(hello))...), 3000), // past one 16 KiB read
	} {
		f.Add(uint64(0), seed)
		f.Add(uint64(0x0123456789abcdef), seed)
	}
	cfg := DefaultConfig()
	cfg.Auth = fuzzAuth{}
	cfg.Limits.AuthFailuresPerIP = 0 // no ban: every input starts afresh
	cfg.Logger = testutil.Discard()
	s, err := NewServer(cfg)
	if err != nil {
		f.Fatal(err)
	}
	// A subsystem's methods, as the events and TunnelProxy subsystems use
	// them: subscribe at once, or authenticate a token first.
	s.HandleMethod("TunnelProxy.Ping", func(c Conn, _ *handshake.Request) { c.Subscribe(nil) })
	s.HandleMethod("Events.Subscribe", func(c Conn, req *handshake.Request) {
		token, _ := req.Param("token")
		c.Authenticate(req.ID, token, func(c Conn, r AuthResult) {
			if r == AuthNoError {
				c.Subscribe(nil)
			} else {
				c.Refuse(reason.AuthFailed, 4001, "bad token")
			}
		})
	})
	s.HandleURLSubscribe(func(c Conn, token string, _ []string) {
		c.Authenticate(-1, token, func(c Conn, r AuthResult) {
			if r == AuthNoError {
				c.Subscribe(nil)
			}
		})
	})
	buf := make([]byte, 16<<10)
	f.Fuzz(func(t *testing.T, cuts uint64, data []byte) {
		c, tk := idleConn(s)
		sk := &chunks{data: data, cuts: cuts}
		var dropped, unread bool
		for left := -1; len(sk.data) > 0 && len(sk.data) != left; { // until read whole, or left in the socket (a hand-off)
			left = len(sk.data)
			c.readFrom(sk, buf, &dropped, false, &unread)
		}
		c.mu.Lock()
		defer func() {
			c.close(reason.Shutdown)
			c.stopTimer()
			c.mu.Unlock()
			s.unregister(c)
			tk.End(reason.Shutdown)
			if n := s.reg.Len(); n != 0 {
				t.Fatalf("the registry holds %d keys after the connection ended", n)
			}
		}()
		most := cfg.MaxPreAuth + 1
		if state(c.st.Load()) == stHTTP {
			most = cfg.MaxHeader + 1
		}
		if n := len(c.in); n > most {
			t.Fatalf("%d bytes of unparsed input kept in state %v, budget %d", n, state(c.st.Load()), most)
		}
		if n := len(c.msg); n > cfg.MaxPreAuth {
			t.Fatalf("a %d-byte WebSocket message kept, budget %d", n, cfg.MaxPreAuth)
		}
		if n := c.out.Len(); n > handshake.QueueMax {
			t.Fatalf("%d bytes of replies queued, budget %d", n, handshake.QueueMax)
		}
	})
}

// pings appends n small masked pings to b: a WebSocket client's input
// longer than one read.
func pings(b []byte, n int) []byte {
	for range n {
		b = append(b, testutil.Frame(ws.OpPing, true, []byte("p"))...)
	}
	return b
}
