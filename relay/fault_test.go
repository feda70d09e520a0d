package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/certs"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// faultMark is the input injectFault panics on.
var faultMark = []byte("fault-me")

// injectFault stands in for a bug in the relay's input path: it panics on
// input carrying faultMark (Server.inputHook).
func injectFault(p []byte) {
	if bytes.Contains(p, faultMark) {
		var short []byte
		_ = short[len(p)] // index out of range, as the key check's was
	}
}

// faultServer is a relay with the fault barrier on, as in production (the
// package's other tests make it re-raise), whose input path panics on
// faultMark; its log goes to logs as well.
func faultServer(t *testing.T, logs io.Writer, before func(*Server)) *Server {
	return startServerWith(t, func(c *Config) {
		c.Auth = legacyTestAuth{gate: make(chan struct{})} // "hang…" tokens are never answered
		c.Logger = faultLogger(t, logs)
	}, func(s *Server) {
		s.faultsFatal = false
		s.inputHook = injectFault
		if before != nil {
			before(s)
		}
	})
}

// faultLogger is a fault test's relay log: to logs, which the test
// reads, and to the tail printed if it fails (testutilWriter).
func faultLogger(t *testing.T, logs io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.MultiWriter(logs, testutilWriter(t)), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testutilWriter is where the relay's log goes besides the test's copy:
// the tail printed if the test fails.
func testutilWriter(t *testing.T) io.Writer {
	tail := &testutil.Tail{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("relay log:\n%s", tail.String())
		}
	})
	return tail
}

// TestFaultEndsOnlyTheConnection: a panic on a connection's input, at
// every stage before its tunnel, ends that connection alone — closed,
// counted as internal_fault, logged with the stack where it happened, its
// registry key given back — while the relay serves on: a tunnel made
// before still forwards, new clients pair, and no socket is left behind.
func TestFaultEndsOnlyTheConnection(t *testing.T) {
	logs := &testutil.Tail{}
	var subscribers atomic.Int32
	s := faultServer(t, logs, func(s *Server) {
		s.HandleMethod("TunnelProxy.Ping", func(c Conn, _ *handshake.Request) {
			subscribers.Add(1)
			c.Subscribe(func() { subscribers.Add(-1) })
		})
	})
	a, b := pair(t, tcpURL(s), wsURL(s), "tunnel-before", "")

	cases := []struct {
		name string
		// faulted opens a connection, brings it to its stage and sends
		// faultMark; it returns the connection to watch close.
		faulted func(t *testing.T) io.Reader
	}{
		{"sniff", func(t *testing.T) io.Reader {
			c := dialTCP(t, s)
			writeRaw(c, faultMark)
			return c
		}},
		{"raw JSON-RPC", func(t *testing.T) io.Reader {
			r := dialRPC(t, tcpURL(s))
			writeRaw(r.Conn(), append([]byte(`{"id":7,"method":"`), faultMark...))
			return r.Conn()
		}},
		{"HTTP head", func(t *testing.T) io.Reader {
			c := dialTCP(t, s)
			writeRaw(c, []byte("GET / HTTP/1.1\r\nHost: x\r\n"))
			writeRaw(c, append(append([]byte("X-Fault: "), faultMark...), "\r\n"...))
			return c
		}},
		{"WebSocket frame", func(t *testing.T) io.Reader {
			w := dialRawWS(t, s)
			w.write(handshake.AppendFrameMasked(nil, ws.OpText, true, faultMark, [4]byte{})) // a zero mask: the payload as sent
			return w.c
		}},
		{"waiting for a partner", func(t *testing.T) io.Reader {
			keys := s.reg.Len()
			r := dialWaiting(t, tcpURL(s), "secret-fault-token", "", "", "waiter")
			waitFor(t, func() bool { return s.reg.Len() == keys+1 }, "the waiter in the registry")
			writeRaw(r.Conn(), faultMark)
			waitFor(t, func() bool { return s.reg.Len() == keys }, "the faulted waiter's key given back")
			return r.Conn()
		}},
		{"authenticating", func(t *testing.T) io.Reader {
			r := dialRPC(t, tcpURL(s))
			sendRPC(t, r, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"hang"}}`)
			waitFor(t, func() bool { return anyIn(s, stAuthing) }, "the client authenticating")
			writeRaw(r.Conn(), faultMark)
			return r.Conn()
		}},
		{"subscribed", func(t *testing.T) io.Reader {
			r := dialRPC(t, tcpURL(s))
			sendRPC(t, r, `{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":5}}`) // subscribes (faultServer's handler)
			waitFor(t, func() bool { return subscribers.Load() == 1 }, "the client subscribed")
			writeRaw(r.Conn(), faultMark)
			waitFor(t, func() bool { return subscribers.Load() == 0 }, "the subscriber's end called")
			return r.Conn()
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.faulted(t)
			if _, err := io.ReadAll(c); err != nil && !isClosed(err) {
				t.Fatalf("the faulted connection was not closed: %v", err)
			}
			waitFor(t, func() bool { return s.stats.closes[reason.Fault].Get() == uint64(i+1) }, "the fault counted as internal_fault")
		})
	}

	exchangeTagged(t, a, b, "the tunnel made before the faults")
	expectServes(t, s)
	c, d := pair(t, tcpURL(s), tcpURL(s), "secret-fault-token", "") // the faulted waiter gave its key back
	exchangeTagged(t, c, d, "a tunnel on the faulted waiter's key")

	log := logs.String()
	if n := strings.Count(log, "reason=internal_fault") + strings.Count(log, "(internal_fault)"); n < len(cases) {
		t.Errorf("%d fault log lines, want %d:\n%s", n, len(cases), log)
	}
	if !strings.Contains(log, "relay.injectFault") || !strings.Contains(log, "index out of range") {
		t.Errorf("the fault log lacks the panic or the stack where it happened:\n%s", log)
	}
	if strings.Contains(log, "secret-fault-token") {
		t.Error("the fault log holds a token")
	}

	for _, tun := range []io.Closer{a, b, c, d} {
		tun.Close()
	}
	waitFor(t, func() bool { return s.live.count() == 0 }, "every socket closed")
}

// anyIn reports whether a connection of s is in state st.
func anyIn(s *Server, st state) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if state(c.st.Load()) == st {
			return true
		}
	}
	return false
}

// faultChildEnv makes TestFaultThroughHandlerIsFatal the relay that
// panics, in a process of its own; its value names the handler.
const faultChildEnv = "MEETPOINT_FAULT_CHILD"

// TestFaultThroughHandlerIsFatal: a panic that comes through a subsystem's
// handler — a JSON-RPC method's, the URL-subscribe one — is not contained:
// the handler may hold locks of its own, and a relay with a lock left held
// would hang, so the process ends, with the panic and its stack on stderr.
// Each runs in a child process.
func TestFaultThroughHandlerIsFatal(t *testing.T) {
	switch os.Getenv(faultChildEnv) {
	case "method":
		s := faultServer(t, io.Discard, func(s *Server) {
			s.HandleMethod("TunnelProxy.Ping", func(Conn, *handshake.Request) { panic("a handler's bug") })
		})
		r := dialRPC(t, tcpURL(s))
		writeRaw(r.Conn(), []byte(`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":5}}`+"\n"))
		time.Sleep(testutil.Patience) // the process ends long before, unless the barrier took the panic
		t.Fatal("the relay contained a panic from a handler")
	case "url-subscribe":
		s := faultServer(t, io.Discard, func(s *Server) {
			s.HandleURLSubscribe(func(Conn, string, []string) { panic("a handler's bug") })
		})
		c := dialTCP(t, s)
		writeRaw(c, []byte("GET /?token=t&channels=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
		time.Sleep(testutil.Patience)
		t.Fatal("the relay contained a panic from a handler")
	}
	for _, mode := range []string{"method", "url-subscribe"} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*testutil.Patience) // a child that hangs fails, and says so
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFaultThroughHandlerIsFatal$")
		cmd.Env = append(os.Environ(), faultChildEnv+"="+mode)
		out, err := cmd.CombinedOutput()
		if err == nil || bytes.Contains(out, []byte("contained a panic")) || ctx.Err() != nil {
			t.Fatalf("%s: the child relay survived or hung (%v):\n%s", mode, err, out)
		}
		if !bytes.Contains(out, []byte("panic: a handler's bug")) || !bytes.Contains(out, []byte("relay.TestFaultThroughHandlerIsFatal")) {
			t.Fatalf("%s: the child ended without the handler's panic and its stack (%v):\n%s", mode, err, out)
		}
	}
}

// panicky is a socket whose reads panic: a stand-in for a bug in a TLS
// session's record layer.
type panicky struct{ endless }

func (*panicky) Read([]byte) (int, error) { panic("a record layer's bug") }

// TestFaultReadingTheSocket: a panic in the socket's Read (a TLS session
// parses records there, outside consume) ends the connection as
// internal_fault, with no lock left held.
func TestFaultReadingTheSocket(t *testing.T) {
	c := rfConn(t)
	c.s.faultsFatal = false
	var dropped, unread bool
	if more := c.readFrom(&panicky{}, make([]byte, 4096), &dropped, false, &unread); more {
		t.Fatal("a faulted read asked for more")
	}
	if !c.mu.TryLock() {
		t.Fatal("the connection's lock is held after the fault")
	}
	defer c.mu.Unlock()
	if st := state(c.st.Load()); st != stClosing || c.reason != reason.Fault {
		t.Fatalf("after the fault: state %v, reason %v; want closing, %v", st, c.reason, reason.Fault)
	}
}

// faultySock is a tunnel socket whose reads panic on faultMark.
type faultySock struct{ loop.Sock }

func (s faultySock) Read(p []byte) (int, error) {
	n, err := s.Sock.Read(p)
	if n > 0 {
		injectFault(p[:n])
	}
	return n, err
}

// TestFaultInATunnel: a panic while a tunnel forwards ends that tunnel
// alone: both clients see its end, both ends are counted as
// internal_fault, the log names the tunnel (by token hash, not token) with
// the stack, the key is free again, and another tunnel forwards on.
func TestFaultInATunnel(t *testing.T) {
	logs := &testutil.Tail{}
	s := faultServer(t, logs, nil)
	other1, other2 := pair(t, tcpURL(s), wsURL(s), "another-tunnel", "")
	a, b := pair(t, tcpURL(s), wsURL(s), "secret-tunnel-token", "")
	exchangeTagged(t, a, b, "before the fault")
	var tun *tunnel
	s.mu.Lock()
	for tu := range s.tunnels {
		if tu.key.Token == "secret-tunnel-token" {
			tun = tu
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	tun.lp.Do(func() {
		tun.pair.A.Sock, tun.pair.B.Sock = faultySock{tun.pair.A.Sock}, faultySock{tun.pair.B.Sock}
		close(done)
	})
	<-done
	if _, err := a.Write(faultMark); err != nil {
		t.Fatal(err)
	}
	expectTunnelEOF(t, a, testutil.Patience)
	expectTunnelEOF(t, b, testutil.Patience)
	waitFor(t, func() bool { return s.stats.closes[reason.Fault].Get() == 2 }, "both ends counted as internal_fault")
	log := logs.String()
	if !strings.Contains(log, "while a tunnel forwarded") || !strings.Contains(log, "relay.injectFault") || !strings.Contains(log, "token="+tun.tokenHash()) {
		t.Errorf("the fault log lacks the tunnel or the stack:\n%s", log)
	}
	if strings.Contains(log, "secret-tunnel-token") {
		t.Error("the fault log holds a token")
	}
	exchangeTagged(t, other1, other2, "the other tunnel, after the fault")
	c, d := pair(t, tcpURL(s), wsURL(s), "secret-tunnel-token", "")
	exchangeTagged(t, c, d, "a new tunnel on the faulted one's key")
}

// TestFaultInATLSHandshake: a panic in a TLS handshake (here: in the
// certificate look-up, which runs inside it) ends that connection alone,
// counted as internal_fault, with no descriptor left open; the next
// handshake succeeds.
func TestFaultInATLSHandshake(t *testing.T) {
	dir := t.TempDir()
	cp, kp, _ := tlsFiles(t, dir)
	conf := tlsStore(t, certs.Config{Cert: cp, Key: kp}).TLSConfig().Clone()
	get, certsOf := conf.GetCertificate, conf.Certificates
	conf.GetCertificate = func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if hi.ServerName == "fault.example" {
			injectFault(faultMark)
		}
		if get != nil {
			return get(hi)
		}
		return &certsOf[0], nil
	}
	s := startServerWith(t, func(c *Config) { c.TLS = conf }, func(s *Server) { s.faultsFatal = false })
	dial := func(name string) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: testutil.Patience, Deadline: time.Now().Add(testutil.Patience)}, "tcp", serverAddr(s),
			&tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err == nil {
			c.Close()
		}
		return err
	}
	var ne net.Error
	switch err := dial("fault.example"); {
	case err == nil:
		t.Fatal("the faulted handshake succeeded")
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("the faulted handshake's socket was left open (%v)", err)
	}
	waitFor(t, func() bool { return s.stats.closes[reason.Fault].Get() == 1 }, "the fault counted as internal_fault")
	if err := dial("ok.example"); err != nil {
		t.Fatalf("a handshake after the fault: %v", err)
	}
	waitFor(t, func() bool { return s.live.count() == 0 }, "every socket closed")
}

// panickyAuth is a Stateless authenticator with a bug: a token carrying
// faultMark makes it panic before it answers; any other token is good.
type panickyAuth struct{}

func (panickyAuth) Stateless() {}

func (panickyAuth) Authenticate(_ context.Context, r AuthRequest, done func(AuthResult)) {
	injectFault([]byte(r.Token))
	done(AuthNoError)
}

// statefulAuth is panickyAuth without the Stateless promise: its panic
// may have left a lock of its own held.
type statefulAuth struct{}

func (statefulAuth) Authenticate(ctx context.Context, r AuthRequest, done func(AuthResult)) {
	panickyAuth{}.Authenticate(ctx, r, done)
}

// panickyAccess is an access policy with a bug: it panics on every
// question, under the relay's answer to an authenticator.
type panickyAccess struct{}

func (panickyAccess) Allow(*Identity, string, string) (bool, string) { panic("a policy's bug") }

// TestFaultInAnAuthenticator: a Stateless authenticator's panic on one
// client's token ends that connection alone — closed, counted as
// internal_fault, logged with the stack and without the token — while
// a tunnel made before forwards on and new clients pair.
func TestFaultInAnAuthenticator(t *testing.T) {
	logs := &testutil.Tail{}
	s := authFaultServer(t, logs, nil, nil)
	a, b := pair(t, tcpURL(s), wsURL(s), "tunnel-before", "")

	for i, url := range []string{tcpURL(s), wsURL(s)} {
		r := dialRPC(t, url)
		sendRPC(t, r, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"secret-fault-me"}}`)
		expectNoAnswer(t, r, url+": the faulted client")
		waitFor(t, func() bool { return s.stats.closes[reason.Fault].Get() == uint64(i+1) }, "the fault counted as internal_fault")
	}
	if n := s.stats.authOK.Get() + s.stats.authFail.Get(); n != 2 {
		t.Errorf("%d authentications counted as answered, want the 2 of the tunnel before", n)
	}

	exchangeTagged(t, a, b, "the tunnel made before the faults")
	expectServes(t, s)
	c, d := pair(t, tcpURL(s), wsURL(s), "tunnel-after", "")
	exchangeTagged(t, c, d, "a tunnel made after the faults")

	log := logs.String()
	if !strings.Contains(log, "the authenticator panicked") || !strings.Contains(log, "relay.panickyAuth.Authenticate") {
		t.Errorf("the fault log lacks the authenticator's panic or its stack:\n%s", log)
	}
	if strings.Contains(log, "secret-fault-me") {
		t.Error("the fault log holds a token")
	}
	for _, tun := range []io.Closer{a, b, c, d} {
		tun.Close()
	}
	waitFor(t, func() bool { return s.live.count() == 0 }, "every socket closed")
}

// TestFaultInAnAuthenticatorIsFatal: a panic in an authenticator that
// did not promise Stateless, or one under the relay's own answer to an
// authenticator (pairing, the access policy: locks of their own), is not
// contained. Each runs in a child process.
func TestFaultInAnAuthenticatorIsFatal(t *testing.T) {
	mode := os.Getenv(faultChildEnv)
	if mode != "" {
		s := authFaultServer(t, io.Discard, func(c *Config) {
			if mode == "stateful" {
				c.Auth = statefulAuth{}
			} else {
				c.Access = panickyAccess{}
			}
		}, nil)
		token := "fault-me" // the authenticator's own panic
		if mode == "access" {
			token = "good" // answered: the policy's panic
		}
		r := dialRPC(t, tcpURL(s))
		sendRPC(t, r, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"`+token+`"}}`)
		time.Sleep(testutil.Patience) // the process ends long before, unless the barrier took the panic
		t.Fatal("the relay contained a panic from an authenticator")
	}
	for mode, want := range map[string]string{"stateful": "index out of range", "access": "panic: a policy's bug"} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*testutil.Patience) // a child that hangs fails, and says so
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFaultInAnAuthenticatorIsFatal$")
		cmd.Env = append(os.Environ(), faultChildEnv+"="+mode)
		out, err := cmd.CombinedOutput()
		if err == nil || bytes.Contains(out, []byte("contained a panic")) || ctx.Err() != nil {
			t.Fatalf("%s: the child relay survived or hung (%v):\n%s", mode, err, out)
		}
		if !bytes.Contains(out, []byte(want)) {
			t.Fatalf("%s: the child ended without the panic %q (%v):\n%s", mode, want, err, out)
		}
	}
}

// TestFaultInATimer: a panic while a connection's stage timer fires, in
// the connection's own stage logic, ends that connection alone (closed,
// counted as internal_fault, logged with the stack), and the relay
// serves on. The timer is fired by hand (expire, as time.AfterFunc
// would) so that no timeout short enough to reach has to be configured.
func TestFaultInATimer(t *testing.T) {
	logs := &testutil.Tail{}
	var armed atomic.Bool
	s := faultServer(t, logs, func(s *Server) {
		s.timerHook = func() {
			if armed.CompareAndSwap(true, false) {
				injectFault(faultMark)
			}
		}
	})
	a, b := pair(t, tcpURL(s), wsURL(s), "tunnel-before", "")
	c := dialTCP(t, s) // says nothing: sniffing, its handshake timer running
	waitFor(t, func() bool { return anyIn(s, stSniff) }, "the silent connection accepted")
	var silent *conn
	s.mu.Lock()
	for x := range s.conns {
		if state(x.st.Load()) == stSniff {
			silent = x
		}
	}
	s.mu.Unlock()
	armed.Store(true)
	silent.expire()
	if _, err := io.ReadAll(c); err != nil && !isClosed(err) {
		t.Fatalf("the faulted connection was not closed: %v", err)
	}
	waitFor(t, func() bool { return s.stats.closes[reason.Fault].Get() == 1 }, "the fault counted as internal_fault")
	if !silent.mu.TryLock() {
		t.Fatal("the connection's lock is held after the fault")
	}
	silent.mu.Unlock()

	exchangeTagged(t, a, b, "the tunnel made before the fault")
	expectServes(t, s)
	log := logs.String()
	if !strings.Contains(log, "stage timeout") || !strings.Contains(log, "relay.(*conn).expire") {
		t.Errorf("the fault log lacks the timer's panic or its stack:\n%s", log)
	}
	for _, tun := range []io.Closer{a, b} {
		tun.Close()
	}
	waitFor(t, func() bool { return s.live.count() == 0 }, "every socket closed")
}
