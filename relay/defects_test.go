package relay

// Tests for the defects the core review found (issue "Hardening the core").
// Each one failed against the code before the fix.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// dfAuth authenticates r on token and waits for the reply.
func dfAuth(t testing.TB, r *client.Raw, token, name string) error {
	t.Helper()
	_ = r.SetDeadline(time.Now().Add(5 * time.Second))
	m, err := r.Call(1, "Authentication.Authenticate", map[string]any{
		"uuid": newTestUUID(), "name": name, "token": token})
	if err != nil {
		return err
	}
	p, _ := m["params"].(map[string]any)
	if p["authenticationError"] != "AuthenticationErrorNoError" {
		return fmt.Errorf("auth: %v", m)
	}
	_ = r.SetDeadline(time.Time{})
	return nil
}

// dfWaitIdle waits until the server holds no registry key and no
// connection (pre-tunnel or tunnel), i.e. nothing is stuck.
func dfWaitIdle(t testing.TB, s *Server, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		keys, live := s.reg.Len(), s.liveConns()
		if keys == 0 && live == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not idle after %v: %d registry keys, %d live connections", d, keys, live)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dfFreshPair proves a token is not stuck: two new clients pair on it and
// exchange a byte.
func dfFreshPair(t testing.TB, s *Server, token string) {
	t.Helper()
	a, b := pair(t, tcpURL(s), tcpURL(s), token, "")
	if _, err := a.Write([]byte{42}); err != nil {
		t.Fatal(err)
	}
	var one [1]byte
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.Read(one[:]); err != nil || one[0] != 42 {
		t.Fatalf("fresh pair on %q: read %v %v", token, one, err)
	}
	a.Close()
	b.Close()
}

// TestDefectClaimedTLSHangsUp: a waiting TLS client that hangs up just as
// its partner arrives must not leave the partner, its descriptor or the
// registry key behind (defect 1).
func TestDefectClaimedTLSHangsUp(t *testing.T) {
	s, cert, _ := startTLSServer(t, func(c *Config) { c.AloneTimeout = 30 * time.Second })
	conf := clientTLS(cert)
	url := "tls://" + s.Addrs()[0].String()
	const rounds = 100
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range rounds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			token := fmt.Sprintf("d1-%d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			a, err := client.DialRaw(ctx, url, conf)
			if err != nil {
				t.Error(err)
				return
			}
			if err := dfAuth(t, a, token, "a"); err != nil {
				t.Error(err)
				a.Close()
				return
			}
			b, err := client.DialRaw(ctx, url, conf)
			if err != nil {
				t.Error(err)
				a.Close()
				return
			}
			defer b.Close()
			go func() {
				time.Sleep(time.Duration(i%7) * 100 * time.Microsecond)
				a.Close()
			}()
			// B is either paired (then sees its partner leave), or waiting
			// alone because A's hang-up was seen first: then a third
			// client C must pair with it.
			_, _ = b.Call(1, "Authentication.Authenticate", map[string]any{
				"uuid": newTestUUID(), "name": "b", "token": token})
			_ = b.SetDeadline(time.Now().Add(time.Second))
			for {
				_, err := b.Recv()
				if err == nil {
					continue
				}
				if !isTimeout(err) {
					return // closed: paired and then left, or refused
				}
				c, err := client.Dial(ctx, client.Options{URL: tcpURL(s), Token: token, Name: "c"})
				if err != nil {
					t.Errorf("%s: B got no tunnel and no close, and C cannot pair with it: %v", token, err)
					return
				}
				c.Close()
				return
			}
		}()
	}
	wg.Wait()
	dfWaitIdle(t, s, 5*time.Second)
	dfFreshPair(t, s, "d1-0")
}

// TestDefectPingsWhilePairing: a waiting WebSocket client that pings while
// its partner arrives is paired normally (defect 2: a data race on its
// decoder, and ~10% of such pairings aborted as data_before_tunnel).
func TestDefectPingsWhilePairing(t *testing.T) {
	s := startServer(t, func(c *Config) { c.AloneTimeout = 30 * time.Second })
	const rounds = 100
	var failed atomic.Int32
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range rounds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			token := fmt.Sprintf("d2-%d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			a, err := client.DialRaw(ctx, wsURL(s), nil)
			if err != nil {
				t.Error(err)
				return
			}
			defer a.Close()
			if err := dfAuth(t, a, token, "a"); err != nil {
				t.Error(err)
				return
			}
			stop := make(chan struct{})
			pinged := make(chan struct{})
			go func() {
				defer close(pinged)
				for {
					select {
					case <-stop:
						return
					default:
					}
					if a.SendFrame(ws.OpPing, []byte("keepalive")) != nil {
						return
					}
					time.Sleep(50 * time.Microsecond)
				}
			}()
			b, err := client.Dial(ctx, client.Options{URL: tcpURL(s), Token: token, Name: "b"})
			if err != nil {
				close(stop)
				failed.Add(1)
				t.Errorf("%s: partner not paired: %v", token, err)
				return
			}
			defer b.Close()
			// A must see TunnelEstablished, then B's data.
			_ = a.SetDeadline(time.Now().Add(5 * time.Second))
			m, err := a.Recv()
			close(stop)
			<-pinged
			if err != nil {
				failed.Add(1)
				t.Errorf("%s: waiting side: %v", token, err)
				return
			}
			if !contains(m, "RemoteProxy.TunnelEstablished") {
				t.Errorf("%s: waiting side got %s", token, m)
			}
			if _, err := b.Write([]byte("hello\n")); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d pairings broken by pings", n, rounds)
	}
	dfWaitIdle(t, s, 5*time.Second)
}

func contains(b []byte, sub string) bool {
	return len(b) >= len(sub) && stringIndex(string(b), sub) >= 0
}

func stringIndex(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

// TestDefectWhitespaceFlood: input the sniffer answers "need more" to
// (whitespace) must not be buffered without bound (defect 3).
func TestDefectWhitespaceFlood(t *testing.T) {
	s := startServer(t, func(c *Config) { c.HandshakeTimeout = 30 * time.Second; c.InactiveTimeout = 30 * time.Second })
	c, err := net.Dial("tcp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	spaces := make([]byte, 64<<10)
	for i := range spaces {
		spaces[i] = ' '
	}
	if grew := testutil.Flood(t, c, spaces, 1500*time.Millisecond); grew > testutil.FloodBound {
		t.Fatalf("relay RSS grew %d MiB under a whitespace flood (bound %d MiB)", grew>>20, testutil.FloodBound>>20)
	}
}

// TestFloodsBounded: floods that never finish a stage keep the relay's
// memory bounded: each is cut off by its stage's budget or timeout, and
// the relay never holds more than testutil.FloodBound for it.
func TestFloodsBounded(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.HandshakeTimeout = 30 * time.Second
		c.InactiveTimeout = 30 * time.Second
		c.AloneTimeout = 30 * time.Second
	})
	unterminated := []byte(`{"id":1,"method":"RemoteProxy.Hello","params":{"x":"`)
	endless := []byte("GET / HTTP/1.1\r\nHost: x\r\n")
	filler := make([]byte, 64<<10)
	for i := range filler {
		filler[i] = 'a'
	}
	cases := []struct {
		name  string
		setup func(t *testing.T) net.Conn
		chunk []byte
	}{
		{"unterminated JSON string", func(t *testing.T) net.Conn {
			c := dialTCP(t, s)
			writeRaw(c, unterminated)
			return c
		}, filler},
		{"endless HTTP header", func(t *testing.T) net.Conn {
			c := dialTCP(t, s)
			writeRaw(c, endless)
			return c
		}, []byte("X-Filler: " + string(filler[:1000]) + "\r\n")},
		{"pings before authentication, never reading", func(t *testing.T) net.Conn {
			w := dialRawWS(t, s)
			_ = w.c.(*net.TCPConn).SetReadBuffer(4 << 10)
			return w.c
		}, testutil.Pings(512)},
		{"pings while waiting, never reading", func(t *testing.T) net.Conn {
			w := dialRawWS(t, s)
			w.authenticate("flood-wait", "w")
			_ = w.c.(*net.TCPConn).SetReadBuffer(4 << 10)
			return w.c
		}, testutil.Pings(512)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.setup(t)
			defer c.Close()
			if grew := testutil.Flood(t, c, tc.chunk, 1500*time.Millisecond); grew > testutil.FloodBound {
				t.Fatalf("relay RSS grew %d MiB (bound %d MiB)", grew>>20, testutil.FloodBound>>20)
			}
		})
	}
}

// TestDefectPartialPingAtPairing: a waiting WebSocket client whose ping
// is only partly read when its partner arrives is paired, and its ping
// answered once the rest arrives. A ping is a control frame, not data
// before TunnelEstablished; closing the client as data_before_tunnel
// broke pairings whenever a keepalive ping straddled two TCP segments at
// the moment the partner authenticated.
func TestDefectPartialPingAtPairing(t *testing.T) {
	s := startServer(t, nil)
	a := dialRawWS(t, s)
	a.authenticate("partial-ping", "a")
	// One whole ping, then the header of a second whose payload has not
	// been sent: the first one's pong shows the relay has read both.
	second := maskedFrame(ws.OpPing, true, []byte("tail"))
	hdr := len(second) - len("tail")
	a.write(append(maskedFrame(ws.OpPing, true, []byte("head")), second[:hdr]...))
	if h, p, err := a.readFrame(testutil.Patience); err != nil || h.OpCode != ws.OpPong || string(p) != "head" {
		t.Fatalf("first ping: got op %d %q, %v; want its pong", h.OpCode, p, err)
	}
	b := a.tcpPartner(s, "partial-ping")
	a.write(second[hdr:])
	if h, p, err := a.readFrame(testutil.Patience); err != nil || h.OpCode != ws.OpPong || string(p) != "tail" {
		t.Fatalf("second ping: got op %d %q, %v; want its pong", h.OpCode, p, err)
	}
	a.send(ws.OpText, true, []byte("hello\n"))
	_ = b.SetReadDeadline(time.Now().Add(testutil.Patience))
	if line, err := b.br.ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("partner read %q, %v", line, err)
	}
}

// TestDefectNoCloseInsideAFrame: a WebSocket end that a tunnel leaves in
// the middle of a frame (its partner sent a frame's header and part of its
// payload) gets no close frame when the tunnel ends at once — on a write
// stall of its partner, or at shutdown: written there, the close frame's
// bytes would be read as more of the partner's payload, bytes the partner
// never sent. It sees the payload received so far, then the end of the
// connection.
func TestDefectNoCloseInsideAFrame(t *testing.T) {
	for _, how := range []string{"write stall", "shutdown"} {
		t.Run(how, func(t *testing.T) {
			s := startServer(t, func(c *Config) { c.WriteStallTimeout = 300 * time.Millisecond })
			a, b := rawWSPair(t, s, "mid-frame")
			// A begins a 1000-byte TEXT frame and sends 10 bytes of it.
			fr := clientFrame(0x81, false, 1000, nil)
			payload := []byte("0123456789")
			masked := append([]byte(nil), payload...)
			ws.Cipher(masked, clientMask, 0)
			a.write(append(fr, masked...))
			_ = b.c.SetReadDeadline(time.Now().Add(testutil.Patience))
			h, err := ws.ReadHeader(b.br)
			if err != nil || h.OpCode != ws.OpText || h.Length != 1000 {
				t.Fatalf("partner got header %+v, %v", h, err)
			}
			got := make([]byte, len(payload))
			if _, err := io.ReadFull(b.br, got); err != nil || string(got) != string(payload) {
				t.Fatalf("partner got %q, %v", got, err)
			}
			switch how {
			case "write stall":
				// B sends to A, which never reads: A stalls.
				_ = a.c.(*net.TCPConn).SetReadBuffer(4 << 10)
				go func() {
					chunk := maskedFrame(ws.OpBinary, true, make([]byte, 32<<10))
					_ = b.c.SetWriteDeadline(time.Now().Add(testutil.Patience))
					for {
						if _, err := b.c.Write(chunk); err != nil {
							return
						}
					}
				}()
			case "shutdown":
				s.Close()
			}
			_ = b.c.SetReadDeadline(time.Now().Add(testutil.Patience))
			rest, err := io.ReadAll(b.br)
			if err != nil && !isClosed(err) {
				t.Fatalf("partner: %v after %q", err, rest)
			}
			if len(rest) > 0 {
				t.Fatalf("partner got %q inside A's frame after its payload; want the connection's end", rest)
			}
		})
	}
}

// TestDefectLeaverWithPongsOwed: a WebSocket client that leaves while
// pongs are owed to it ends its tunnel. Its pongs wait while its partner
// is inside a frame toward it, and past 1 KiB of them the relay stops
// reading it (backpressure on ping floods) — it then never read the
// client's end either: the tunnel, its partner and its key (a client
// coming back got tunnel_exists) lived on after the client had gone.
func TestDefectLeaverWithPongsOwed(t *testing.T) {
	s := startServer(t, nil)
	a, b := rawWSPair(t, s, "pongs-owed")
	// B begins a 1000-byte frame toward A and sends 10 bytes of it.
	b.write(append(clientFrame(0x82, false, 1000, nil), make([]byte, 10)...))
	_ = a.c.SetReadDeadline(time.Now().Add(testutil.Patience))
	if h, err := ws.ReadHeader(a.br); err != nil || h.Length != 1000 {
		t.Fatalf("A got header %+v, %v", h, err)
	}
	// A pings (its pongs must wait for the end of B's frame), then leaves.
	var pings []byte
	for range 20 {
		pings = append(pings, maskedFrame(ws.OpPing, true, bytes.Repeat([]byte("p"), 125))...)
	}
	before := s.Stats().Traffic
	a.write(pings)
	waitFor(t, func() bool { return s.Stats().Traffic >= before+uint64(len(pings)) }, "the pings read")
	a.c.Close()
	_ = b.c.SetReadDeadline(time.Now().Add(testutil.Patience))
	if _, err := io.ReadAll(b.br); err != nil && !isClosed(err) {
		t.Fatalf("partner: %v; want its connection ended after A left", err)
	}
	waitFor(t, func() bool { return s.Stats().TunnelsActive == 0 }, "the tunnel ended")
}

// TestDefectSettleCountsFromTheNotification: TCPSettle holds a Hello
// client's partner's first bytes until that long after TunnelEstablished
// was written (Config.TCPSettle, docs/protocol.md), so bytes that come
// later pass at once. The window started only when the partner's first
// bytes arrived, delaying them by the whole window however late they
// came.
func TestDefectSettleCountsFromTheNotification(t *testing.T) {
	const settle = time.Second // the most Config allows
	s := startServer(t, func(c *Config) { c.TCPSettle = settle })
	uA, uB := client.NewUUID(), client.NewUUID()
	a := dialTCP(t, s)
	abr := bufio.NewReader(a)
	io.WriteString(a, `{"id":0,"method":"RemoteProxy.Hello"}`+"\n")
	if got := readLine(t, abr); !strings.Contains(got, `"apiVersion"`) {
		t.Fatalf("hello: %q", got)
	}
	req, reply := nymeaAuth(1, "a", uA, "settle-late")
	io.WriteString(a, req)
	if got := readLine(t, abr); got != reply {
		t.Fatalf("a auth reply %q", got)
	}
	b := dialTCP(t, s)
	bbr := bufio.NewReader(b)
	req, reply = nymeaAuth(1, "b", uB, "settle-late")
	io.WriteString(b, req)
	if got := readLine(t, bbr); got != reply {
		t.Fatalf("b auth reply %q", got)
	}
	if got := readLine(t, abr); got != nymeaEstablished("b", uB) {
		t.Fatalf("a: %q", got)
	}
	time.Sleep(settle + 100*time.Millisecond) // the window has passed: B's bytes come late
	io.WriteString(b, "late bytes\n")
	// Well within another window: B's bytes must not be held.
	_ = a.SetReadDeadline(time.Now().Add(settle / 2))
	if got, err := abr.ReadString('\n'); err != nil || got != "late bytes\n" {
		t.Fatalf("a read %q, %v; want B's bytes at once (the settle window was over)", got, err)
	}
}
