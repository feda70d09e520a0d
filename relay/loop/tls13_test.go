package loop

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// holdConn holds a client's writes once it has read something (the
// server's first flight) until release: its Finished and its first
// message then reach the server in one segment, and the server's
// handshake reads the message along with the Finished.
type holdConn struct {
	net.Conn
	mu      sync.Mutex
	read    bool
	held    []byte
	holding bool
}

func (c *holdConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.read = c.read || n > 0
	c.mu.Unlock()
	return n, err
}

func (c *holdConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holding && c.read {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *holdConn) release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.holding = false
	_, err := c.Conn.Write(c.held)
	return err
}

// tlsPair is a server session (HandshakeTLS with conf) and a crypto/tls
// client with cc; beforeServer runs on the client once its handshake is
// done, before the server's ends (hold: see holdConn).
func tlsPair(t *testing.T, conf, cc *tls.Config, hold func(*tls.Conn, *holdConn)) (*TLSSession, *tls.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	hc := &holdConn{Conn: nc, holding: hold != nil}
	c := tls.Client(hc, cc)
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(testutil.Patience))
	hs := make(chan error, 1)
	go func() {
		err := c.Handshake()
		if err == nil && hold != nil {
			hold(c, hc)
			err = hc.release()
		}
		hs <- err
	}()
	s, err := acceptSession(ln, conf)
	if err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if err := <-hs; err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	return s, c, nc
}

// acceptSession accepts a connection on ln and runs the server handshake
// (HandshakeTLS with conf) on it, as the relay does.
func acceptSession(ln net.Listener, conf *tls.Config) (*TLSSession, error) {
	sc, err := ln.Accept()
	if err != nil {
		return nil, err
	}
	fd, err := DupConn(sc)
	sc.Close()
	if err != nil {
		return nil, err
	}
	return HandshakeTLS(fd, nil, conf, time.Now().Add(testutil.Patience), sc.RemoteAddr())
}

func serverConf(t *testing.T) *tls.Config {
	cert := testutil.Cert(t, "relay", nil, false, net.IPv4(127, 0, 0, 1))
	return OwnRecords(&tls.Config{Certificates: []tls.Certificate{cert}})
}

// readN reads n bytes from a non-blocking session, waiting for its
// socket between reads.
func readN(t *testing.T, s *TLSSession, n int) []byte {
	t.Helper()
	got := make([]byte, 0, n)
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(testutil.Patience)
	for len(got) < n {
		m, err := s.Read(buf[:min(len(buf), n-len(got))])
		got = append(got, buf[:m]...)
		if err == unix.EAGAIN {
			if time.Now().After(deadline) {
				t.Fatalf("read %d of %d bytes before the deadline", len(got), n)
			}
			pfd := []unix.PollFd{{Fd: int32(s.Fd()), Events: unix.POLLIN}}
			_, _ = unix.Poll(pfd, 100)
			continue
		}
		if err != nil {
			t.Fatalf("Read after %d of %d bytes: %v", len(got), n, err)
		}
	}
	return got
}

// writeAll writes p through a non-blocking session, flushing as its
// socket drains.
func writeAll(t *testing.T, s *TLSSession, p []byte) {
	t.Helper()
	deadline := time.Now().Add(testutil.Patience)
	for len(p) > 0 || s.Flush() == unix.EAGAIN {
		if len(p) > 0 {
			n, err := s.Write(p)
			p = p[n:]
			if err != nil && err != unix.EAGAIN {
				t.Fatalf("Write: %v", err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("write did not finish before the deadline")
		}
		pfd := []unix.PollFd{{Fd: int32(s.Fd()), Events: unix.POLLOUT}}
		_, _ = unix.Poll(pfd, 100)
	}
}

func pattern(n, seed int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*seed + i>>10)
	}
	return p
}

// idleHoldsNothing fails if the session's record layer holds a buffer.
func idleHoldsNothing(t *testing.T, s *TLSSession) {
	t.Helper()
	s.rl.wmu.Lock()
	out := s.rl.out
	s.rl.wmu.Unlock()
	if s.rl.in != nil || out != nil {
		t.Fatalf("an idle session holds a buffer: read %v, write %v", s.rl.in != nil, out != nil)
	}
}

// TestOwnRecordsCarryTheSession: a TLS 1.3 server session moves to the
// record layer of our own, carries 4 MiB each way checksummed, keeps no
// buffer while idle, and ends at the client's close_notify. crypto/tls
// picks the suite itself (AES-128-GCM on a CPU with AES): the other two
// are driven by OpenSSL (TestOwnRecordsOpenSSL).
func TestOwnRecordsCarryTheSession(t *testing.T) {
	conf := serverConf(t)
	conf.NextProtos = []string{"meetpoint-test"}
	s, c, _ := tlsPair(t, conf, &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test", NextProtos: []string{"meetpoint-test"}}, nil)
	if !s.OwnRecordLayer() {
		t.Fatal("a TLS 1.3 session stayed on crypto/tls")
	}
	// The state kept after the take-over is the handshake's.
	st, cs := s.State(), c.ConnectionState()
	if !st.HandshakeComplete || st.Version != tls.VersionTLS13 || st.CipherSuite != cs.CipherSuite ||
		st.CurveID != cs.CurveID || st.NegotiatedProtocol != "meetpoint-test" || st.ServerName != "relay.test" {
		t.Fatalf("State after the take-over: %+v; the client saw version %x suite %x curve %v", st, cs.Version, cs.CipherSuite, cs.CurveID)
	}
	if got, want := s.ad.LocalAddr().String(), c.RemoteAddr().String(); got != want {
		t.Fatalf("the session's local address %s; the client dialled %s", got, want)
	}
	const size = 4 << 20
	up, down := pattern(size, 7), pattern(size, 13)
	go func() { _, _ = c.Write(up) }()
	if got := readN(t, s, size); sha256.Sum256(got) != sha256.Sum256(up) {
		t.Fatal("client → relay: the bytes differ")
	}
	done := make(chan []byte)
	go func() {
		got := make([]byte, size)
		_, _ = io.ReadFull(c, got)
		done <- got
	}()
	writeAll(t, s, down)
	if got := <-done; sha256.Sum256(got) != sha256.Sum256(down) {
		t.Fatal("relay → client: the bytes differ")
	}
	idleHoldsNothing(t, s)
	// A small message both ways after the bulk.
	if _, err := s.WriteAll([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("client read %q, %v", buf, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, func() error {
		_, err := s.Read(buf)
		if err == io.EOF {
			return nil
		}
		return fmt.Errorf("Read after close_notify: %v", err)
	}, "io.EOF at the client's close_notify")
}

// TestOwnRecordsReadWhatTheHandshakeRead: a client's first message that
// arrived with its Finished (read by crypto/tls's handshake, not opened)
// is the first thing the session reads.
func TestOwnRecordsReadWhatTheHandshakeRead(t *testing.T) {
	msg := []byte(`{"id":1,"method":"Authentication.Authenticate"}`)
	s, _, _ := tlsPair(t, serverConf(t), &tls.Config{InsecureSkipVerify: true}, func(c *tls.Conn, _ *holdConn) {
		_, _ = c.Write(msg)
	})
	if !s.OwnRecordLayer() {
		t.Fatal("the session stayed on crypto/tls")
	}
	if s.rl.in == nil {
		t.Fatal("the handshake read nothing behind the client's Finished: the test did not reach the carried record")
	}
	if got := readN(t, s, len(msg)); !bytes.Equal(got, msg) {
		t.Fatalf("read %q, want %q", got, msg)
	}
	idleHoldsNothing(t, s)
}

// askKeyUpdate seals a KeyUpdate from s asking the peer for its own
// (sent with s's next write).
func askKeyUpdate(t *testing.T, s *TLSSession) {
	t.Helper()
	s.rl.wmu.Lock()
	defer s.rl.wmu.Unlock()
	if err := s.rl.keyUpdateLocked(true); err != nil {
		t.Fatal(err)
	}
}

// TestOwnRecordsKeyUpdate: the session asks the client for a KeyUpdate
// (crypto/tls answers with its own), both directions move to new keys,
// and data goes on both ways.
func TestOwnRecordsKeyUpdate(t *testing.T) {
	s, c, _ := tlsPair(t, serverConf(t), &tls.Config{InsecureSkipVerify: true}, nil)
	if !s.OwnRecordLayer() {
		t.Fatal("the session stayed on crypto/tls")
	}
	rd0, wr0 := bytes.Clone(s.rl.rd.secret), bytes.Clone(s.rl.wr.secret)
	askKeyUpdate(t, s)
	writeAll(t, s, []byte("after our update"))
	buf := make([]byte, 16)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "after our update" {
		t.Fatalf("client read %q, %v", buf, err)
	}
	// crypto/tls sent its KeyUpdate while reading; this write follows it.
	if _, err := c.Write([]byte("after theirs")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, s, 12); string(got) != "after theirs" {
		t.Fatalf("read %q", got)
	}
	if bytes.Equal(s.rl.wr.secret, wr0) || bytes.Equal(s.rl.rd.secret, rd0) {
		t.Fatalf("a direction kept its key: write updated %v, read updated %v",
			!bytes.Equal(s.rl.wr.secret, wr0), !bytes.Equal(s.rl.rd.secret, rd0))
	}
	// The client's unrequested update (sent by crypto/tls when its own
	// write key is spent) is taken without an answer.
	wr1 := bytes.Clone(s.rl.wr.secret)
	s.rl.rd.seq = 0
	writeAll(t, s, []byte("x"))
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.rl.wr.secret, wr1) {
		t.Fatal("the write key moved without a request")
	}
}

// TestOwnRecordsFallBack: TLS 1.2, HTTP/2 and configs without OwnRecords
// stay on crypto/tls, and work.
func TestOwnRecordsFallBack(t *testing.T) {
	cert := testutil.Cert(t, "relay", nil, false, net.IPv4(127, 0, 0, 1))
	own := OwnRecords(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
	for _, tc := range []struct {
		name     string
		conf     *tls.Config
		client   *tls.Config
		wantOwn  bool
		wantVers uint16
	}{
		{"tls1.3", own, &tls.Config{InsecureSkipVerify: true}, true, tls.VersionTLS13},
		{"tls1.2", own, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}, false, tls.VersionTLS12},
		{"h2", own, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}, false, tls.VersionTLS13},
		{"plain config", &tls.Config{Certificates: []tls.Certificate{cert}}, &tls.Config{InsecureSkipVerify: true}, false, tls.VersionTLS13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, c, _ := tlsPair(t, tc.conf, tc.client, nil)
			if s.OwnRecordLayer() != tc.wantOwn || s.State().Version != tc.wantVers {
				t.Fatalf("own record layer %v, version %#x; want %v, %#x", s.OwnRecordLayer(), s.State().Version, tc.wantOwn, tc.wantVers)
			}
			go func() { _, _ = c.Write([]byte("hello")) }()
			if got := readN(t, s, 5); string(got) != "hello" {
				t.Fatalf("read %q", got)
			}
			writeAll(t, s, []byte("world"))
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "world" {
				t.Fatalf("client read %q, %v", buf, err)
			}
		})
	}
	n := 0
	handshakeKeys.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d handshakes' secrets left in the registry", n)
	}
}

// TestOwnRecordsRegistryAfterFailure: a handshake that fails after the
// server logged its secrets (the client refuses the certificate) leaves
// nothing in the registry.
func TestOwnRecordsRegistryAfterFailure(t *testing.T) {
	conf := serverConf(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for i := 0; i < 3; i++ {
		go func() {
			nc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				return
			}
			c := tls.Client(nc, &tls.Config{ServerName: "elsewhere"}) // verification fails
			_ = c.SetDeadline(time.Now().Add(testutil.Patience))
			_ = c.Handshake()
			c.Close()
		}()
		if s, err := acceptSession(ln, conf); err == nil {
			s.Close()
			t.Fatal("the handshake succeeded")
		}
	}
	n := 0
	handshakeKeys.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d failed handshakes' secrets left in the registry", n)
	}
}

// TestOwnRecordsBadRecord: a record that does not open ends the session
// with ErrTLSRecord, not a panic or a hang.
func TestOwnRecordsBadRecord(t *testing.T) {
	s, _, raw := tlsPair(t, serverConf(t), &tls.Config{InsecureSkipVerify: true}, nil)
	if _, err := raw.Write([]byte{recAppData, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, func() error {
		_, err := s.Read(make([]byte, 100))
		if errors.Is(err, ErrTLSRecord) {
			return nil
		}
		return fmt.Errorf("Read: %v", err)
	}, "ErrTLSRecord")
}

// TestOwnRecordsBlocking: a session handed to a blocking library
// (Blocking) reads and writes as a net.Conn, with deadlines, and its Close
// sends a close_notify.
func TestOwnRecordsBlocking(t *testing.T) {
	s, c, _ := tlsPair(t, serverConf(t), &tls.Config{InsecureSkipVerify: true}, nil)
	nc, err := s.Blocking()
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	var ne net.Error
	if _, err := nc.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %v; want a timeout", err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(testutil.Patience))
	up := pattern(300<<10, 3)
	go func() { _, _ = c.Write(up) }()
	got := make([]byte, len(up))
	if _, err := io.ReadFull(nc, got); err != nil || !bytes.Equal(got, up) {
		t.Fatalf("read %v, equal %v (a timeout must not end the session)", err, bytes.Equal(got, up))
	}
	go func() { _, _ = nc.Write(up); nc.Close() }()
	all, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(all, up) {
		t.Fatalf("client read %d bytes, %v; want %d and a clean end", len(all), err, len(up))
	}
}

// TestOwnRecordsIdleKeys: a session no record went through for two idle
// sweeps holds no AEAD (nor a buffer); its next records, both ways and
// across a KeyUpdate, build them again. A session in use keeps them.
func TestOwnRecordsIdleKeys(t *testing.T) {
	s, c, _ := tlsPair(t, serverConf(t), &tls.Config{InsecureSkipVerify: true}, nil)
	aeads := func() (rd, wr bool) {
		s.rl.rmu.Lock()
		rd = s.rl.rd.aead != nil
		s.rl.rmu.Unlock()
		s.rl.wmu.Lock()
		wr = s.rl.wr.aead != nil
		s.rl.wmu.Unlock()
		return rd, wr
	}
	sweepIdleKeys() // the handshake's use
	if rd, wr := aeads(); !rd || !wr {
		t.Fatalf("AEADs after one sweep: read %v, write %v; want both kept", rd, wr)
	}
	sweepIdleKeys()
	if rd, wr := aeads(); rd || wr {
		t.Fatalf("AEADs after two idle sweeps: read %v, write %v; want none", rd, wr)
	}
	idleHoldsNothing(t, s)
	for round := range 3 {
		up, down := pattern(100<<10, 3+round), pattern(100<<10, 5+round)
		go func() { _, _ = c.Write(up) }()
		if got := readN(t, s, len(up)); !bytes.Equal(got, up) {
			t.Fatalf("round %d: client → relay differs", round)
		}
		done := make(chan []byte)
		go func() {
			got := make([]byte, len(down))
			_, _ = io.ReadFull(c, got)
			done <- got
		}()
		writeAll(t, s, down)
		if got := <-done; !bytes.Equal(got, down) {
			t.Fatalf("round %d: relay → client differs", round)
		}
		sweepIdleKeys() // used this round: kept
		if rd, wr := aeads(); !rd || !wr {
			t.Fatalf("round %d: AEADs of a session in use dropped: read %v, write %v", round, rd, wr)
		}
		sweepIdleKeys()
		if round == 1 {
			// Key updates both ways while the keys are dropped: ours,
			// asking for the client's (crypto/tls answers when it reads).
			s.rl.rmu.Lock()
			before := bytes.Clone(s.rl.rd.secret)
			s.rl.rmu.Unlock()
			askKeyUpdate(t, s)
			writeAll(t, s, []byte("ours"))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ours" {
				t.Fatalf("client read %q, %v", buf, err)
			}
			sweepIdleKeys()
			sweepIdleKeys()
			go func() { _, _ = c.Write([]byte("after")) }()
			if got := readN(t, s, 5); string(got) != "after" || bytes.Equal(s.rl.rd.secret, before) {
				t.Fatalf("after a KeyUpdate on dropped keys: read %q, key updated %v", got, !bytes.Equal(s.rl.rd.secret, before))
			}
		}
	}
}

// TestOwnRecordsResumed: a session resumed from a ticket (a PSK handshake,
// no certificate) moves to the own record layer too, and carries data.
func TestOwnRecordsResumed(t *testing.T) {
	conf := serverConf(t)
	cc := &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test", // the cache key: each pair listens on its own port
		ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	for i, want := range []bool{false, true} {
		s, c, _ := tlsPair(t, conf, cc, nil)
		if !s.OwnRecordLayer() || s.State().DidResume != want {
			t.Fatalf("connection %d: own record layer %v, resumed %v; want true, %v", i, s.OwnRecordLayer(), s.State().DidResume, want)
		}
		writeAll(t, s, []byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" { // reads the ticket first
			t.Fatalf("connection %d: client read %q, %v", i, buf, err)
		}
		go func() { _, _ = c.Write([]byte("pong")) }()
		if got := readN(t, s, 4); string(got) != "pong" {
			t.Fatalf("connection %d: read %q", i, got)
		}
		c.Close()
	}
}

// TestTLSFailure: TLS's own failures are told from a stream's end and
// from socket errors, and the plain ends' errors cost no allocation (a
// plain tunnel's close calls it on every end).
func TestTLSFailure(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{io.EOF, false},
		{unix.ECONNRESET, false},
		{fmt.Errorf("read: %w", unix.EPIPE), false},
		{AlertError(20), true},
		{fmt.Errorf("open: %w", ErrTLSRecord), true},
		{ErrTLSUnexpected, true},
		{tls.RecordHeaderError{Msg: "bad"}, true},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, true},
		{&net.OpError{Op: "read", Err: unix.ECONNRESET}, false},
	} {
		if got := TLSFailure(tc.err); got != tc.want {
			t.Errorf("TLSFailure(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	for _, err := range []error{nil, io.EOF, unix.ECONNRESET} {
		if n := testing.AllocsPerRun(100, func() { _ = TLSFailure(err) }); n != 0 {
			t.Errorf("TLSFailure(%v): %v allocations, want 0", err, n)
		}
	}
}

// A session handed off with ciphertext pending writes it through Go's
// poller: while a client that does not read holds the flush up, the
// runtime can still stop the world (a raw write on a descriptor made
// blocking held its P, and the GC waited for the client), and the flush
// gives up at handoffFlushTimeout. Both record layers.
func TestBlockingFlushesThroughThePoller(t *testing.T) {
	defer func(d time.Duration) { handoffFlushTimeout = d }(handoffFlushTimeout)
	handoffFlushTimeout = 300 * time.Millisecond
	for _, own := range []bool{true, false} {
		t.Run(map[bool]string{true: "own", false: "crypto_tls"}[own], func(t *testing.T) {
			conf := serverConf(t)
			if !own {
				conf = &tls.Config{Certificates: conf.Certificates}
			}
			s, _, _ := tlsPair(t, conf, &tls.Config{InsecureSkipVerify: true}, nil)
			if (s.rl != nil) != own {
				t.Fatalf("record layer of our own: %v, want %v", s.rl != nil, own)
			}
			// The client reads nothing: write until ciphertext stays
			// pending even as the kernel grows the sockets' buffers (three
			// flushes in a row, 100 ms apart, find no room).
			chunk := make([]byte, 16<<10)
			for full, rounds := 0, 0; full < 3; rounds++ {
				if rounds == 200 {
					t.Fatal("the client's socket never filled")
				}
				for {
					if _, err := s.Write(chunk); err != nil {
						break
					}
				}
				time.Sleep(100 * time.Millisecond)
				if s.Flush() == unix.EAGAIN {
					full++
				} else {
					full = 0
				}
			}
			done := make(chan error, 1)
			go func() { _, err := s.Blocking(); done <- err }()
			gc := make(chan struct{})
			go func() { runtime.GC(); close(gc) }()
			select {
			case <-gc:
			case <-time.After(testutil.Patience):
				t.Fatal("the GC could not stop the world while Blocking flushed")
			}
			select {
			case err := <-done:
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("Blocking with a client that does not read: %v, want a deadline error", err)
				}
			case <-time.After(testutil.Patience):
				t.Fatal("Blocking did not give up")
			}
		})
	}
}

// TestOwnRecordsBlockingCloseDuringWrite: a session handed to a blocking
// library (Blocking) whose write is held up by a client that does not
// read is closed from another goroutine (net/http's Server.Close, a
// WebSocket's keep-alive giving up): Close returns without waiting for
// the write, and the write ends, as crypto/tls's Close does while a Write
// is in flight.
func TestOwnRecordsBlockingCloseDuringWrite(t *testing.T) {
	s, _, raw := tlsPair(t, serverConf(t), &tls.Config{InsecureSkipVerify: true}, nil)
	if !s.OwnRecordLayer() {
		t.Fatal("the session stayed on crypto/tls")
	}
	nc, err := s.Blocking()
	if err != nil {
		t.Fatal(err)
	}
	var written atomic.Int64
	wrote := make(chan error, 1)
	go func() {
		chunk := make([]byte, 16<<10)
		for {
			n, err := nc.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				wrote <- err
				return
			}
		}
	}()
	// The client reads nothing: wait until the write is held up (three
	// looks in a row, 100 ms apart, see no progress).
	for last, still, rounds := int64(-1), 0, 0; still < 3; rounds++ {
		if rounds == 200 {
			t.Fatal("the client's socket never filled")
		}
		select {
		case err := <-wrote:
			t.Fatalf("Write to a client that does not read: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		if n := written.Load(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- nc.Close() }()
	select {
	case <-closed:
	case <-time.After(testutil.Patience):
		raw.Close() // the client's reset ends the write, and the hung Close with it
		t.Fatal("Close waited for a write held up by a client that does not read")
	}
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("the write held up at Close ended without an error")
		}
	case <-time.After(testutil.Patience):
		raw.Close()
		t.Fatal("the write held up at Close did not end")
	}
}

// recordsPair is a record layer over one end of a socket pair (made
// non-blocking, as a loop's) and the peer's sealing direction, both keyed
// with the same secret; the peer's end is blocking.
func recordsPair(t *testing.T) (*records, *direction, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	s := suiteOf(tls.TLS_AES_128_GCM_SHA256)
	secret := bytes.Repeat([]byte{7}, 32)
	r := &records{fd: fds[0]}
	peer := &direction{}
	for _, d := range []*direction{&r.rd, &r.wr, peer} {
		if err := d.setSecret(s, secret); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		r.free()
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	return r, peer, fds[1]
}

// TestOwnRecordsKeyUpdateRequestsDoNotPile: a peer that reads nothing and
// asks for a KeyUpdate before each byte it sends does not make the session
// buffer an answer per request: one answer, while the session is silent,
// answers them all (RFC 8446 4.6.3), and what is pending stays within the
// bound application data is held to (MaxTLSPending).
func TestOwnRecordsKeyUpdateRequestsDoNotPile(t *testing.T) {
	r, peer, pfd := recordsPair(t)
	// The peer reads nothing: the session's writes fill its socket.
	chunk := make([]byte, 16<<10)
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatal("the peer's socket never filled")
		}
		if _, err := r.Write(chunk); err == unix.EAGAIN {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	const requests = 4000
	var wire []byte
	for range requests {
		wire, _ = peer.seal(wire, recHandshake, []byte{hsKeyUpdate, 0, 0, 1, 1})
		_ = peer.update()
		wire, _ = peer.seal(wire, recAppData, []byte{'x'})
	}
	sent := make(chan error, 1)
	go func() {
		_, err := unix.Write(pfd, wire)
		sent <- err
	}()
	buf := make([]byte, 100)
	deadline := time.Now().Add(testutil.Patience)
	for got := 0; got < requests; {
		n, err := r.Read(buf)
		got += n
		if err == unix.EAGAIN {
			if time.Now().After(deadline) {
				t.Fatalf("read %d of %d bytes before the deadline", got, requests)
			}
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(r.fd), Events: unix.POLLIN}}, 100)
			continue
		}
		if err != nil {
			t.Fatalf("Read after %d bytes: %v", got, err)
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	r.wmu.Lock()
	pending, answered := r.pendingLocked(), !bytes.Equal(r.wr.secret, bytes.Repeat([]byte{7}, 32))
	r.wmu.Unlock()
	if !answered {
		t.Fatal("the session did not answer the requests: its write key never moved")
	}
	if pending > MaxTLSPending+sealSlack {
		t.Fatalf("%d bytes of ciphertext pending for a peer that reads nothing, after %d KeyUpdate requests; application data is held to %d",
			pending, requests, MaxTLSPending+sealSlack)
	}
}

// TestOwnRecordsPaddingWithinTheLimit: a record whose content is a full
// 2^14 bytes and padded past it (its TLSInnerPlaintext over 2^14 + 1
// bytes, RFC 8446 5.4, though its ciphertext is within 2^14 + 256) ends
// the session with ErrTLSRecord, as crypto/tls's record_overflow; the
// same content unpadded, and a short one padded, are read.
func TestOwnRecordsPaddingWithinTheLimit(t *testing.T) {
	padded := func(content []byte, pad int) []byte {
		return append(append(bytes.Clone(content), recAppData), make([]byte, pad)...)
	}
	full := pattern(maxPlain, 3)
	for _, tc := range []struct {
		name    string
		inner   []byte // content, content type, padding
		wantErr bool
	}{
		{"full", padded(full, 0), false},
		{"short padded", padded([]byte("hi"), 200), false},
		{"full padded", padded(full, 200), true},
		{"full padded by one", padded(full, 1), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, peer, pfd := recordsPair(t)
			last := len(tc.inner) - 1 // sealed as the "content type": the inner plaintext is tc.inner
			wire, _ := peer.seal(nil, tc.inner[last], tc.inner[:last])
			got, err := readToEnd(t, r, pfd, wire)
			if tc.wantErr {
				if !errors.Is(err, ErrTLSRecord) || len(got) > 0 {
					t.Fatalf("read %d bytes, then %v; want none and ErrTLSRecord", len(got), err)
				}
				return
			}
			want := tc.inner[:bytes.LastIndexByte(tc.inner, recAppData)]
			if err != io.EOF || !bytes.Equal(got, want) {
				t.Fatalf("read %d bytes (equal %v), then %v; want %d and io.EOF", len(got), bytes.Equal(got, want), err, len(want))
			}
		})
	}
}

// TestOwnRecordsBlockingCloseTwice: a session handed to a blocking library
// is closed twice (net/http closes a connection at Server.Close and again
// as its serving goroutine ends): the second Close does not close the
// descriptor number the session had, which by then may be another
// connection's.
func TestOwnRecordsBlockingCloseTwice(t *testing.T) {
	s, _, _ := tlsPair(t, serverConf(t), &tls.Config{InsecureSkipVerify: true}, nil)
	if !s.OwnRecordLayer() {
		t.Fatal("the session stayed on crypto/tls")
	}
	nc, err := s.Blocking()
	if err != nil {
		t.Fatal(err)
	}
	fd := s.Fd()
	if err := nc.Close(); err != nil {
		t.Fatal(err)
	}
	// Another connection gets the descriptor number.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
		t.Fatalf("the session's descriptor %d after Close: %v, want EBADF", fd, err)
	}
	if err := unix.Dup3(p[0], fd, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := nc.Close(); err == nil {
		t.Error("the second Close reported no error")
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		t.Fatalf("the second Close closed descriptor %d, now another's: %v", fd, err)
	}
}

// TestOwnRecordsEmptyHandshakeRecord: a handshake record with no content
// ends the session with ErrTLSUnexpected (RFC 8446 5.4: unexpected_message,
// as crypto/tls answers it), before the application data behind it.
func TestOwnRecordsEmptyHandshakeRecord(t *testing.T) {
	r, peer, pfd := recordsPair(t)
	wire, _ := peer.seal(nil, recHandshake, nil)
	wire, _ = peer.seal(wire, recAppData, []byte("x"))
	got, err := readToEnd(t, r, pfd, wire)
	if !errors.Is(err, ErrTLSUnexpected) || len(got) > 0 {
		t.Fatalf("read %q, then %v; want nothing and ErrTLSUnexpected", got, err)
	}
}

// TestOwnRecordsIdleMidRecord: a peer that stops in the middle of a record
// does not pin the session's pooled read buffer (~88 KiB, where the record
// is a few bytes): once the read side is idle, the sweep keeps what came
// of the record and gives the buffer back, as an idle session holds none;
// the rest of the record, when it comes, completes it.
func TestOwnRecordsIdleMidRecord(t *testing.T) {
	r, peer, pfd := recordsPair(t)
	r.sweep()
	wire, _ := peer.seal(nil, recAppData, []byte("hello"))
	if _, err := unix.Write(pfd, wire[:9]); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if n, err := r.Read(buf); err != unix.EAGAIN {
		t.Fatalf("Read of part of a record: %d, %v; want EAGAIN", n, err)
	}
	r.rmu.Lock()
	held := r.in != nil
	r.rmu.Unlock()
	if !held {
		t.Fatal("the part of a record read is not buffered: the test did not reach its case")
	}
	sweepIdleKeys()
	sweepIdleKeys()
	r.rmu.Lock()
	held = r.in != nil
	r.rmu.Unlock()
	if held {
		t.Fatal("an idle session that stopped mid-record holds its pooled read buffer through two idle sweeps")
	}
	if _, err := unix.Write(pfd, wire[9:]); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("Read once the record is complete: %q, %v", buf[:n], err)
	}
}

// TestOwnRecordsFatalAlert: a session the client broke (a record that
// does not open, one too long, a message TLS 1.3 does not allow there) is
// closed with the fatal alert crypto/tls sends in the same place (RFC 8446
// 5.2, 6.2), not with a close_notify, which would tell the client that
// everything it sent was taken and the session ended cleanly.
func TestOwnRecordsFatalAlert(t *testing.T) {
	for _, tc := range []struct {
		name   string
		record func(peer *direction) []byte // what the client sends, sealed by peer (its write direction)
		alert  string                       // what the client reads then
	}{
		{"bad MAC", func(*direction) []byte {
			return []byte{recAppData, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
		}, "bad record MAC"},
		{"oversized", func(*direction) []byte {
			return []byte{recAppData, 3, 3, 0x41, 0x01}
		}, "record overflow"},
		{"padded past the limit", func(peer *direction) []byte {
			w, _ := peer.seal(nil, 0, append(pattern(maxPlain, 3), recAppData))
			return w
		}, "record overflow"},
		{"no content type", func(peer *direction) []byte {
			w, _ := peer.seal(nil, 0, make([]byte, 10))
			return w
		}, "unexpected message"},
		{"CCS", func(*direction) []byte {
			return []byte{recCCS, 3, 3, 0, 1, 1}
		}, "unexpected message"},
		{"session ticket from a client", func(peer *direction) []byte {
			w, _ := peer.seal(nil, recHandshake, []byte{4, 0, 0, 1, 0})
			return w
		}, "unexpected message"},
		{"bad KeyUpdate", func(peer *direction) []byte {
			w, _ := peer.seal(nil, recHandshake, []byte{hsKeyUpdate, 0, 0, 1, 2})
			return w
		}, "illegal parameter"},
		{"empty records", func(peer *direction) []byte {
			var w []byte
			for range maxUseless + 1 {
				w, _ = peer.seal(w, recAppData, nil)
			}
			return w
		}, "unexpected message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, c, raw := tlsPair(t, serverConf(t), &tls.Config{InsecureSkipVerify: true}, nil)
			if !s.OwnRecordLayer() {
				t.Fatal("the session stayed on crypto/tls")
			}
			peer := s.rl.rd // the client's write direction: nothing read from it yet
			if _, err := raw.Write(tc.record(&peer)); err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, func() error {
				_, err := s.Read(make([]byte, 100))
				if TLSFailure(err) {
					return nil
				}
				return fmt.Errorf("Read: %v", err)
			}, "a TLS failure")
			s.Close()
			_, err := c.Read(make([]byte, 100))
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != "remote error" || op.Err.Error() != "tls: "+tc.alert {
				t.Fatalf("the client read %v; want the alert %q", err, tc.alert)
			}
		})
	}
}

// TestOwnRecordsLegacyVersion: a record whose legacy_record_version is not
// 0x0303 (RFC 8446 5.1: every TLS 1.3 record after the ClientHello's)
// ends the session with ErrTLSRecord and a protocol_version alert, as
// crypto/tls and OpenSSL refuse it, even though it opens (the version is
// authenticated as it came); one with 0x0303 is read.
func TestOwnRecordsLegacyVersion(t *testing.T) {
	for _, vers := range [][2]byte{{3, 3}, {3, 1}, {3, 4}} {
		t.Run(fmt.Sprintf("%x", vers), func(t *testing.T) {
			r, peer, pfd := recordsPair(t)
			wire, _ := peer.seal(nil, recAppData, []byte("hello"))
			// Seal it again under vers: the header is the AEAD's additional data.
			peer.seq--
			copy(wire[1:3], vers[:])
			a, _ := peer.cipher()
			n := peer.nonce()
			body := append([]byte("hello"), recAppData)
			wire = a.Seal(wire[:recHeader], n[:], body, wire[:recHeader])
			got, err := readToEnd(t, r, pfd, wire)
			if vers == [2]byte{3, 3} {
				if err != io.EOF || string(got) != "hello" {
					t.Fatalf("read %q, then %v; want hello and io.EOF", got, err)
				}
				return
			}
			if !errors.Is(err, ErrTLSRecord) || len(got) > 0 {
				t.Fatalf("read %q, then %v; want nothing and ErrTLSRecord", got, err)
			}
			back := &direction{}
			if err := back.setSecret(r.wr.suite, bytes.Repeat([]byte{7}, 32)); err != nil {
				t.Fatal(err)
			}
			rec := make([]byte, 100)
			m, _ := unix.Read(pfd, rec)
			content, typ, err := back.open(rec[:m])
			if err != nil || typ != recAlert || !bytes.Equal(content, []byte{2, alertProtocolVersion}) {
				t.Fatalf("the peer read type %d %v, %v; want a fatal protocol_version alert", typ, content, err)
			}
		})
	}
}

// TestOwnRecordsEndAfterUselessRecords: an alert that ends the session
// (close_notify, a fatal one) after as many records without application
// data as the layer ignores (maxUseless: empty ones, KeyUpdates) ends it
// as that alert says, as crypto/tls does (it counts only the records it
// ignores): a clean end is io.EOF, not a TLS failure.
func TestOwnRecordsEndAfterUselessRecords(t *testing.T) {
	for _, tc := range []struct {
		alert byte
		want  error
	}{
		{alertCloseNotify, io.EOF},
		{40, AlertError(40)}, // handshake_failure
	} {
		t.Run(fmt.Sprint(tc.alert), func(t *testing.T) {
			r, peer, pfd := recordsPair(t)
			wire, _ := peer.seal(nil, recAppData, []byte("x"))
			for range maxUseless {
				wire, _ = peer.seal(wire, recAppData, nil)
			}
			wire, _ = peer.seal(wire, recAlert, []byte{1, tc.alert})
			got, err := readToEnd(t, r, pfd, wire)
			if err != tc.want || string(got) != "x" {
				t.Fatalf("read %q, then %v; want x, then %v", got, err, tc.want)
			}
		})
	}
}

// readToEnd writes wire to the peer's end pfd, shuts its write side, and
// reads r until it fails (at most 100 calls): what it read, and why it
// ended.
func readToEnd(t *testing.T, r *records, pfd int, wire []byte) ([]byte, error) {
	t.Helper()
	if _, err := unix.Write(pfd, wire); err != nil {
		t.Fatal(err)
	}
	_ = unix.Shutdown(pfd, unix.SHUT_WR)
	var got []byte
	buf := make([]byte, 64<<10)
	for range 100 {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return got, err
		}
	}
	t.Fatal("Read has not ended")
	return nil, nil
}
