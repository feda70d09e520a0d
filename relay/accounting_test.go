package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// acAuth answers by token: "bad" fails, "hang" never answers, anything
// else passes.
type acAuth struct{}

func (acAuth) Authenticate(_ context.Context, req AuthRequest, done func(AuthResult)) {
	switch req.Token {
	case "bad":
		done(AuthFailed)
	case "hang":
	default:
		done(AuthNoError)
	}
}

// acCase drives clients that must end with a given reason.
type acCase struct {
	name string
	want reason.Reason // at least one close must be counted under it
	run  func(t *testing.T, s *Server)
}

// acTCP dials the server's first address.
func acTCP(t *testing.T, s *Server) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addrs()[0].String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// acSendWait writes b and waits (up to testutil.Patience) for the server
// to close c.
func acSendWait(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if len(b) > 0 {
		writeRaw(c, b)
	}
	readToClose(t, c, testutil.Patience)
	c.Close() // as a client does on EOF: the relay's lingering close ends
}

const acAuthReq = `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"%s","name":"n","token":"%s"}}` + "\n"

// acAuthed dials raw TCP and authenticates on token.
func acAuthed(t *testing.T, s *Server, token, uuid string) net.Conn {
	t.Helper()
	c := acTCP(t, s)
	writeRaw(c, fmt.Appendf(nil, acAuthReq, uuid, token))
	return c
}

// acRun runs the cases against s and checks, once every connection is
// gone, that each case's reason was counted and that the closes sum to
// the accepted connections.
func acRun(t *testing.T, s *Server, cases []acCase, seen map[reason.Reason]bool) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := s.stats.closes[tc.want].Get()
			tc.run(t, s)
			waitFor(t, func() error {
				if s.stats.closes[tc.want].Get() > before {
					return nil
				}
				return fmt.Errorf("closes so far %v", s.Stats().Closes)
			}, fmt.Sprintf("a close counted as %s", tc.want))
			seen[tc.want] = true
		})
	}
	acBalanced(t, s)
}

// acBalanced waits until the server holds no socket and checks that
// sum(closes) == accepted.
func acBalanced(t *testing.T, s *Server) {
	t.Helper()
	waitFor(t, func() error {
		if n := s.liveConns(); n > 0 {
			return fmt.Errorf("%d connections still held", n)
		}
		return nil
	}, "every connection gone")
	st := s.Stats()
	var sum uint64
	for _, n := range st.Closes {
		sum += n
	}
	if sum != st.Accepted {
		t.Fatalf("closes sum to %d, accepted %d: %v", sum, st.Accepted, st.Closes)
	}
	if st.ConnectionsTCP != 0 || st.ConnectionsWS != 0 {
		t.Fatalf("connections_active: tcp %d ws %d with nothing connected", st.ConnectionsTCP, st.ConnectionsWS)
	}
}

// TestCloseAccounting drives good and bad clients of every kind and
// asserts that every close reason in the enum is reachable and counted,
// and that once every connection is gone the closes sum to the accepted
// connections: no close is lost or counted twice.
func TestCloseAccounting(t *testing.T) {
	seen := map[reason.Reason]bool{}
	// The main server keeps the default timeouts, so that pairing under
	// load never races one; each timeout is reached on a server of its
	// own where only it is short (below).
	s, cert, _ := startTLSServer(t, func(c *Config) { c.Auth = acAuth{} })
	conf := clientTLS(cert)
	pairOn := func(t *testing.T, urlA, urlB, token string) (*client.Tunnel, *client.Tunnel) {
		return dialPair(t, client.Options{URL: urlA, Token: token, Name: "a", TLSConfig: conf},
			client.Options{URL: urlB, Token: token, Name: "b", TLSConfig: conf})
	}
	exchangeAndClose := func(t *testing.T, a, b *client.Tunnel) {
		if _, err := a.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		_ = b.SetReadDeadline(time.Now().Add(testutil.Patience))
		if _, err := b.Read(buf); err != nil {
			t.Fatal(err)
		}
		a.Close()
		_ = b.SetReadDeadline(time.Now().Add(testutil.Patience))
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}
	addr := s.Addrs()[0].String()
	main := []acCase{
		{"tcp pair: the closing side", reason.PeerClosed, func(t *testing.T, s *Server) {
			a, b := pairOn(t, tcpURL(s), tcpURL(s), "ac-tcp")
			exchangeAndClose(t, a, b)
		}},
		{"ws-tls pair: its partner", reason.PartnerClosed, func(t *testing.T, s *Server) {
			a, b := pairOn(t, "wss://"+addr+"/", "tls://"+addr, "ac-mixed")
			exchangeAndClose(t, a, b)
		}},
		{"unknown protocol", reason.Sniff, func(t *testing.T, s *Server) {
			acSendWait(t, acTCP(t, s), []byte("XYZ\r\n"))
		}},
		{"plain HTTP request", reason.HTTP, func(t *testing.T, s *Server) {
			acSendWait(t, acTCP(t, s), []byte("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
		}},
		{"unmasked frame", reason.WebSocket, func(t *testing.T, s *Server) {
			w := dialRawWS(t, s)
			w.write(clientFrame(0x81, true, -1, []byte("{}")))
			w.expectClose(5*time.Second, true)
		}},
		{"unknown method", reason.RPC, func(t *testing.T, s *Server) {
			acSendWait(t, acTCP(t, s), []byte(`{"id":1,"method":"No.Such"}`+"\n"))
		}},
		{"oversized message", reason.PreAuthLimit, func(t *testing.T, s *Server) {
			acSendWait(t, acTCP(t, s), []byte(`{"id":1,"x":"`+strings.Repeat("a", 12<<10)))
		}},
		{"oversized complete message", reason.PreAuthLimit, func(t *testing.T, s *Server) { // in one write: parsed in place
			acSendWait(t, acTCP(t, s), []byte(`{"id":1,"method":"RemoteProxy.Hello","params":{"x":"`+strings.Repeat("a", 11<<10)+`"}}`+"\n"))
		}},
		{"authentication refused", reason.AuthFailed, func(t *testing.T, s *Server) {
			acSendWait(t, acAuthed(t, s, "bad", newTestUUID()), nil)
		}},
		{"data before the tunnel", reason.DataBeforeTunnel, func(t *testing.T, s *Server) {
			c := acAuthed(t, s, "ac-early", newTestUUID())
			acSendWait(t, c, []byte("early data"))
		}},
		{"third client", reason.TunnelExists, func(t *testing.T, s *Server) {
			a, b := pairOn(t, tcpURL(s), tcpURL(s), "ac-three")
			defer a.Close()
			defer b.Close()
			acSendWait(t, acAuthed(t, s, "ac-three", newTestUUID()), nil)
		}},
		{"same uuid twice", reason.DuplicateUUID, func(t *testing.T, s *Server) {
			u := newTestUUID()
			a := acAuthed(t, s, "ac-dup", u)
			time.Sleep(50 * time.Millisecond)
			b := acAuthed(t, s, "ac-dup", u)
			readToClose(t, a, testutil.Patience)
			readToClose(t, b, testutil.Patience)
		}},
		{"receiver resets while data waits for it", reason.IOError, func(t *testing.T, s *Server) {
			// The sender waits first (the tunnel's a side), so that when the
			// receiver's reset is seen the relay's next act is a write to it.
			small := func(c *net.TCPConn) { _ = c.SetReadBuffer(16 << 10) }
			type res struct {
				c   *rawTunnel
				err error
			}
			ch := make(chan res, 1)
			go func() {
				c, err := dialRawTunnel(addr, "ac-reset", "", "sender", nil)
				ch <- res{c, err}
			}()
			waitFor(t, func() bool { return s.reg.Len() == 1 }, "sender waiting")
			receiver, err := dialRawTunnel(addr, "ac-reset", "", "receiver", small)
			if err != nil {
				t.Fatal(err)
			}
			r := <-ch
			if r.err != nil {
				t.Fatal(r.err)
			}
			sender := r.c
			defer sender.Close()
			go func() { // keep data waiting in the relay for the receiver
				chunk := make([]byte, 64<<10)
				for {
					_ = sender.SetWriteDeadline(time.Now().Add(5 * time.Second))
					if _, err := sender.Write(chunk); err != nil {
						return
					}
				}
			}()
			time.Sleep(200 * time.Millisecond) // every buffer on the way full
			_ = receiver.SetLinger(0)
			receiver.Close() // RST
			readToClose(t, sender, testutil.Patience)
		}},
		{"bad TLS handshake", reason.TLS, func(t *testing.T, s *Server) {
			acSendWait(t, acTCP(t, s), append([]byte{0x16, 0x03, 0x01, 0x00, 0x05}, "junk!"...))
		}},
	}
	acRun(t, s, main, seen)

	// Replies never read, on a relay that does not end the connection for
	// inactivity first. Each request earns a 1 MiB reply (Mesh.Ping, which
	// only a fleet serves, answered by this test's own handler), so a few
	// tiny requests fill every buffer on the way and a write falls short:
	// no flood of input that a loaded relay could fall behind on (it once
	// hit the input budget first, counted as preauth_limit, when
	// Introspects were paced for an idle machine).
	rn := startServerWith(t, func(c *Config) {
		c.InactiveTimeout = time.Hour
	}, func(s *Server) {
		big := strings.Repeat("x", 1<<20)
		s.HandleMethod("Mesh.Ping", func(c Conn, req *handshake.Request) {
			c.Reply(handshake.AppendSuccess(nil, req.ID, handshake.Str("pad", big)))
		})
	})
	acRun(t, rn, []acCase{{"replies never read", reason.SlowReader, func(t *testing.T, s *Server) {
		c := acTCP(t, s)
		_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
		// 64 MiB of replies at most: more than any socket buffers hold.
		for i := range 64 {
			_ = c.SetWriteDeadline(time.Now().Add(testutil.Patience))
			if _, err := fmt.Fprintf(c, `{"id":%d,"method":"Mesh.Ping","params":{"node":"n","time":1,"mac":"00"}}`+"\n", i); err != nil {
				return // the relay closed it: counted below
			}
		}
		readToClose(t, c, testutil.Patience)
	}}}, seen)

	// The timeouts, each on a server where only it is short.
	timed := func(mutate func(*Config)) *Server {
		return startServer(t, func(c *Config) {
			c.Auth = acAuth{}
			mutate(c)
		})
	}
	acRun(t, timed(func(c *Config) { c.AuthTimeout = 300 * time.Millisecond }), []acCase{
		{"authenticator too slow", reason.AuthTimeout, func(t *testing.T, s *Server) {
			acSendWait(t, acAuthed(t, s, "hang", newTestUUID()), nil)
		}},
	}, seen)
	acRun(t, timed(func(c *Config) { c.InactiveTimeout = 600 * time.Millisecond }), []acCase{
		{"never authenticates", reason.InactiveTimeout, func(t *testing.T, s *Server) {
			acSendWait(t, acTCP(t, s), []byte(`{"id":1,"method":"RemoteProxy.Hello"}`+"\n"))
		}},
	}, seen)
	acRun(t, timed(func(c *Config) { c.HandshakeTimeout = 300 * time.Millisecond }), []acCase{
		{"never speaks", reason.HandshakeTimeout, func(t *testing.T, s *Server) {
			acSendWait(t, acTCP(t, s), nil)
		}},
	}, seen)
	acRun(t, timed(func(c *Config) { c.AloneTimeout = 300 * time.Millisecond }), []acCase{
		{"no partner", reason.AloneTimeout, func(t *testing.T, s *Server) {
			acSendWait(t, acAuthed(t, s, "ac-alone", newTestUUID()), nil)
		}},
	}, seen)
	acRun(t, timed(func(c *Config) { c.WriteStallTimeout = 300 * time.Millisecond }), []acCase{
		{"receiver never reads", reason.WriteStall, func(t *testing.T, s *Server) {
			small := func(c *net.TCPConn) { _ = c.SetReadBuffer(16 << 10) }
			sender, receiver := rawPair(t, s.Addrs()[0].String(), "ac-stall", nil, small)
			go func() {
				chunk := make([]byte, 64<<10)
				for {
					_ = sender.SetWriteDeadline(time.Now().Add(3 * time.Second))
					if _, err := sender.Write(chunk); err != nil {
						return
					}
				}
			}()
			readToClose(t, sender, testutil.Patience)
			receiver.Close()
		}},
	}, seen)

	// The RPC timeout: an authenticator slower than RPCTimeout.
	rs := startServer(t, func(c *Config) {
		c.Auth = acAuth{}
		c.RPCTimeout = 200 * time.Millisecond
		c.AuthTimeout = 5 * time.Second
	})
	acRun(t, rs, []acCase{{"call outlives RPCTimeout", reason.RPCTimeout, func(t *testing.T, s *Server) {
		acSendWait(t, acAuthed(t, s, "hang", newTestUUID()), nil)
	}}}, seen)

	// Admission limits, each on a server of its own.
	limited := func(t *testing.T, mutate func(*Config)) *Server {
		return startServer(t, func(c *Config) {
			noExempt(c)
			c.Auth = acAuth{}
			mutate(c)
		})
	}
	hold := func(t *testing.T, s *Server, n int) {
		for range n {
			acTCP(t, s)
		}
		waitFor(t, func() bool { return len(s.Snapshot().Clients) == n }, "connections held")
	}
	acRun(t, limited(t, func(c *Config) { c.Limits.MaxConns = 1 }), []acCase{{"over MaxConns", reason.LimitConns, func(t *testing.T, s *Server) {
		hold(t, s, 1)
		acSendWait(t, acTCP(t, s), nil)
	}}}, seen)
	acRun(t, limited(t, func(c *Config) { c.Limits.MaxConnsPerIP = 1 }), []acCase{{"over MaxConnsPerIP", reason.LimitConnsPerIP, func(t *testing.T, s *Server) {
		hold(t, s, 1)
		acSendWait(t, acTCP(t, s), nil)
	}}}, seen)
	acRun(t, limited(t, func(c *Config) { c.Limits.ConnRatePerIP = 1 }), []acCase{{"over ConnRatePerIP", reason.LimitRate, func(t *testing.T, s *Server) {
		for range 3 {
			c := acTCP(t, s)
			c.Close()
		}
	}}}, seen)
	acRun(t, limited(t, func(c *Config) { c.Limits.AuthFailuresPerIP = 1 }), []acCase{{"banned", reason.Banned, func(t *testing.T, s *Server) {
		for range 2 {
			acSendWait(t, acAuthed(t, s, "bad", newTestUUID()), nil)
		}
		acSendWait(t, acTCP(t, s), nil)
	}}}, seen)

	// Access rules: a good token on a nonce the identity may not pair on.
	acRun(t, limited(t, func(c *Config) { c.Access = nonceOnly("open-") }), []acCase{{"access denied", reason.AccessDenied, func(t *testing.T, s *Server) {
		c := acTCP(t, s)
		acSendWait(t, c, []byte(`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"`+newTestUUID()+`","name":"n","token":"ac-access","nonce":"closed-room"}}`+"\n"))
	}}}, seen)

	// HTTP connections handed to net/http, bounded.
	acRun(t, limited(t, func(c *Config) { c.HTTPMaxConns = 1 }), []acCase{{"over HTTPMaxConns", reason.LimitHTTP, func(t *testing.T, s *Server) {
		held := acTCP(t, s) // a keep-alive connection net/http holds
		writeRaw(held, []byte("GET /x HTTP/1.1\r\nHost: x\r\n\r\n"))
		waitFor(t, func() bool { return s.stats.httpConns.Get() == 1 }, "one HTTP connection handed off")
		c := acTCP(t, s)
		writeRaw(c, []byte("GET /y HTTP/1.1\r\nHost: x\r\n\r\n"))
		if got := readToClose(t, c, testutil.Patience); !bytes.HasPrefix(got, []byte("HTTP/1.1 503")) {
			t.Fatalf("second HTTP connection got %q, want a 503", got)
		}
		c.Close()
		held.Close()
	}}}, seen)

	acRun(t, limited(t, func(c *Config) { c.HTTPMaxConnsPerIP = 1 }), []acCase{{"over HTTPMaxConnsPerIP", reason.LimitHTTPPerIP, func(t *testing.T, s *Server) {
		held := acTCP(t, s)
		writeRaw(held, []byte("GET /x HTTP/1.1\r\nHost: x\r\n\r\n"))
		waitFor(t, func() bool { return s.stats.httpConns.Get() == 1 }, "one HTTP connection handed off")
		c := acTCP(t, s)
		writeRaw(c, []byte("GET /y HTTP/1.1\r\nHost: x\r\n\r\n"))
		if got := readToClose(t, c, testutil.Patience); !bytes.HasPrefix(got, []byte("HTTP/1.1 429")) {
			t.Fatalf("second HTTP connection from the address got %q, want a 429", got)
		}
		c.Close()
		held.Close()
	}}}, seen)
	ts, _, _ := startTLSServer(t, func(c *Config) {
		noExempt(c)
		c.MaxTLSHandshakesPerIP = 1
		c.TLSHandshakeTimeout = time.Minute
	})
	acRun(t, ts, []acCase{{"over MaxTLSHandshakesPerIP", reason.LimitTLSPerIP, func(t *testing.T, s *Server) {
		stalled := acTCP(t, s)
		writeRaw(stalled, []byte{0x16, 0x03, 0x01}) // a ClientHello that never comes
		waitFor(t, func() bool { return s.stats.tlsStarted.Get() == 1 }, "one stalled handshake")
		acSendWait(t, acTCP(t, s), []byte{0x16, 0x03, 0x01})
		stalled.Close()
	}}}, seen)

	// The TLS gate: one handshake at a time, four waiting; a stalled
	// handshake holds the slot until its deadline.
	// (long enough for the real handshake at the end under load).
	gs, _, _ := startTLSServer(t, func(c *Config) {
		c.MaxTLSHandshakes = 1
		c.TLSHandshakeTimeout = 3 * time.Second
	})
	acRun(t, gs, []acCase{{"TLS gate full", reason.LimitTLS, func(t *testing.T, s *Server) {
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				acSendWait(t, acTCP(t, s), []byte{0x16, 0x03, 0x01}) // a ClientHello that never comes
			}()
		}
		wg.Wait()
		// A real handshake still works once the gate is free.
		tc, err := tls.Dial("tcp", s.Addrs()[0].String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("handshake after the storm: %v", err)
		}
		tc.Close()
	}}}, seen)

	// A fleet that cannot place a client; a mesh request for a key nobody
	// waits under.
	fs := startServerWith(t, nil, func(s *Server) {
		s.SetFleet(refusingFleet{})
		s.HandleMethod("Mesh.Join", func(c Conn, req *handshake.Request) {
			c.JoinMesh(req.ID, PairKey{Token: "nobody-here"}, "u", "n", "test", "via test", MeshNotWaiting)
		})
	})
	acRun(t, fs, []acCase{
		{"fleet cannot place", reason.Fleet, func(t *testing.T, s *Server) {
			acSendWait(t, acAuthed(t, s, "ac-fleet", newTestUUID()), nil)
		}},
		{"mesh join, nobody waiting", reason.Mesh, func(t *testing.T, s *Server) {
			c := acTCP(t, s)
			writeRaw(c, []byte(`{"id":4,"method":"Mesh.Join","params":{"node":"x","time":1,"mac":"00","token":"t","uuid":"u","name":"n"}}`+"\n"))
			if got := readToClose(t, c, testutil.Patience); !bytes.Contains(got, []byte(`"error":"not_waiting"`)) {
				t.Errorf("mesh refusal: got %q", got)
			}
			c.Close()
		}},
	}, seen)

	// A tunnel across the mesh whose far node is lost: a client waiting
	// here (its key leased by a fleet) paired with a mesh link from node
	// "far", then ended by the fleet.
	ls := startServerWith(t, nil, func(s *Server) {
		s.SetFleet(leasingFleet{})
		s.HandleMethod("Mesh.Join", func(c Conn, req *handshake.Request) {
			c.JoinMesh(req.ID, PairKey{Token: "ac-far"}, "u-far", "n", "far", "via far", MeshNotWaiting)
		})
	})
	acRun(t, ls, []acCase{{"far node lost", reason.FarNodeLost, func(t *testing.T, s *Server) {
		waiting := acAuthed(t, s, "ac-far", newTestUUID())
		waitFor(t, func() bool { return s.reg.Len() == 1 }, "client waiting")
		link := acTCP(t, s)
		writeRaw(link, []byte(`{"id":4,"method":"Mesh.Join","params":{"node":"far","time":1,"mac":"00","token":"ac-far","uuid":"u-far","name":"n"}}`+"\n"))
		waitFor(t, func() bool { return s.MeshPeers()["far"] == 1 }, "the tunnel with node far")
		if n := s.EndMeshTunnels("far", reason.FarNodeLost, "relay node lost"); n != 1 {
			t.Errorf("EndMeshTunnels ended %d tunnels, want 1", n)
		}
		for _, c := range []net.Conn{waiting, link} {
			readToClose(t, c, testutil.Patience)
			c.Close()
		}
		waitFor(t, func() bool { return len(s.MeshPeers()) == 0 }, "no tunnel with node far any more")
	}}}, seen)
	if n := ls.stats.closes[reason.FarNodeLost].Get(); n != 2 {
		t.Errorf("far_node_lost counted %d times for one tunnel, want both of its sockets", n)
	}

	// A waiting client whose key moved to a node this one cannot reach
	// (the fleet calls its Watcher's moved): told to reconnect.
	ms := startServerWith(t, nil, func(s *Server) {
		s.SetFleet(movingFleet{})
	})
	acRun(t, ms, []acCase{{"moved", reason.Moved, func(t *testing.T, s *Server) {
		c := acAuthed(t, s, "ac-moved", newTestUUID())
		if got := readToClose(t, c, testutil.Patience); !bytes.Contains(got, []byte("Reconnect")) {
			t.Errorf("a moved client was told %q, want to reconnect", got)
		}
		c.Close()
	}}}, seen)

	// A bug on a connection's input (injected), contained by the fault
	// barrier: on a server of its own, whose barrier is on.
	bugs := faultServer(t, io.Discard, nil)
	acRun(t, bugs, []acCase{{"internal fault", reason.Fault, func(t *testing.T, s *Server) {
		acSendWait(t, acTCP(t, s), faultMark)
	}}}, seen)

	// Shutdown, on a server of its own (it ends the server).
	ss := startServer(t, func(c *Config) { c.AloneTimeout = time.Minute })
	waiting := acAuthed(t, ss, "ac-shut", newTestUUID())
	waitFor(t, func() bool { return ss.reg.Len() == 1 }, "client waiting")
	ss.Close()
	readToClose(t, waiting, 5*time.Second)
	if ss.stats.closes[reason.Shutdown].Get() != 1 {
		t.Errorf("shutdown counted %d times for one waiting client", ss.stats.closes[reason.Shutdown].Get())
	}
	acBalanced(t, ss)
	seen[reason.Shutdown] = true

	for r := reason.Reason(0); r < reason.Count; r++ {
		if !seen[r] {
			t.Errorf("close reason %s is not exercised (reachable, or remove it)", r)
		}
	}
}

// refusingFleet places nobody.
type refusingFleet struct{}

func (refusingFleet) Place(context.Context, Placing) Placement {
	return Placement{Refuse: reason.Fleet}
}

// leasingFleet places every client on this node.
type leasingFleet struct{}

func (leasingFleet) Place(context.Context, Placing) Placement { return Placement{Lease: noLease{}} }

// movingFleet places every client on this node under a lease that at
// once finds its key moved across a partition (relay.Watcher's moved).
type movingFleet struct{}

func (movingFleet) Place(context.Context, Placing) Placement { return Placement{Lease: movingLease{}} }

type movingLease struct{ noLease }

func (movingLease) Watch(_ func() bool, _, moved func()) { go moved() }

type noLease struct{}

func (noLease) Release() {}

// nonceOnly is an Access policy letting anyone pair on nonces starting
// with prefix, and nothing else.
type nonceOnly string

func (p nonceOnly) Allow(_ *Identity, action, target string) (bool, string) {
	if action == ActionPair && strings.HasPrefix(target, string(p)) {
		return true, "open"
	}
	return false, "default"
}

// TestAccessDeniedLogHidesAppKeys: a refused HTTP request is logged (at
// debug) with its path, but an application key in it (the groups API's
// /app/KEY/…, WAMP's /app/KEY) is not: keys are never logged.
func TestAccessDeniedLogHidesAppKeys(t *testing.T) {
	logs := &testutil.Tail{}
	s := startServer(t, func(c *Config) {
		c.Access = nonceOnly("open-")
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	for _, path := range []string{"/app/SECRETKEY123/groups", "/app/SECRETKEY123"} {
		resp, err := http.Get("http://" + s.Addrs()[0].String() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s: %d, want 403 (the policy allows no HTTP)", path, resp.StatusCode)
		}
	}
	testutil.WaitFor(t, func() bool { return strings.Count(logs.String(), "access denied") >= 2 }, "both refusals logged")
	if strings.Contains(logs.String(), "SECRETKEY123") || !strings.Contains(logs.String(), "target=/app/(key)/groups") {
		t.Fatalf("the refusals' log lines:\n%s", logs.String())
	}
}
