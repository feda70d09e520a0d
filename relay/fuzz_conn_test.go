package relay

import (
	"context"
	"net"
	"net/netip"
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
// cuts (1 to 256 bytes each, 8 bits of cuts per piece, cycling), then
// EAGAIN: a client's input as a loop would read it, cut anywhere.
type chunks struct {
	data []byte
	cuts uint64
	n    int
}

func (s *chunks) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, unix.EAGAIN
	}
	size := 1 + int(s.cuts>>(8*(s.n%8))&0xff)
	s.n++
	n := copy(p[:min(len(p), size)], s.data)
	s.data = s.data[n:]
	return n, nil
}
func (s *chunks) Write(p []byte) (int, error) { return len(p), nil }
func (s *chunks) Flush() error                { return nil }
func (s *chunks) Close() error                { return nil }
func (s *chunks) Fd() int                     { return -1 }

// FuzzConnInput feeds a connection before its tunnel arbitrary input, cut
// into arbitrary reads, through every stage its bytes lead to: sniffing,
// the HTTP head and the WebSocket upgrade (a token in the URL too),
// WebSocket frames, JSON-RPC, Authenticate, waiting for a partner (data
// before the tunnel). The whole stage machine, not
// one parser: the key-check crash of 2026-12-07 sat on a path no parser's
// fuzzer reached. The relay must not panic (the package's tests make the
// fault barrier raise what it catches), and must hold no more than its
// budgets (unparsed input, a WebSocket message, queued replies), and its
// registry key goes once it ends.
func FuzzConnInput(f *testing.F) {
	hello := `{"id":1,"method":"RemoteProxy.Hello"}` + "\n"
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
	peer := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	buf := make([]byte, 16<<10)
	f.Fuzz(func(t *testing.T, cuts uint64, data []byte) {
		tk := s.newTicket(netip.MustParseAddr("127.0.0.1"))
		c := s.newConn(idleTransport{}, peer, tk, func(*conn) {})
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
		if n, most := len(c.in), max(cfg.MaxPreAuth, cfg.MaxHeader)+1; n > most {
			t.Fatalf("%d bytes of unparsed input kept, budget %d", n, most)
		}
		if n := len(c.msg); n > cfg.MaxPreAuth {
			t.Fatalf("a %d-byte WebSocket message kept, budget %d", n, cfg.MaxPreAuth)
		}
		if n := c.out.Len(); n > handshake.QueueMax {
			t.Fatalf("%d bytes of replies queued, budget %d", n, handshake.QueueMax)
		}
	})
}
