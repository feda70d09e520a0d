package loop

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// tlsEnd is a server session (HandshakeTLS with conf) for a pair end and
// its crypto/tls client; the pair closes the session, the test the
// client.
func tlsEnd(t *testing.T, conf *tls.Config) (*TLSSession, *tls.Conn, net.Conn) {
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
	c := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
	t.Cleanup(func() { nc.Close() })
	_ = c.SetDeadline(time.Now().Add(testutil.Patience))
	hs := make(chan error, 1)
	go func() { hs <- c.Handshake() }()
	s, err := acceptSession(ln, conf)
	if err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if err := <-hs; err != nil {
		s.Close()
		t.Fatalf("client handshake: %v", err)
	}
	_ = c.SetDeadline(time.Time{})
	return s, c, nc
}

// queued is how many bytes wait in fd's socket: unread (SIOCINQ) or, on
// the sending side, not yet acknowledged (SIOCOUTQ).
func queued(t *testing.T, fd int, req uint) int {
	t.Helper()
	n, err := unix.IoctlGetInt(fd, req)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// smallTLS is tlsEnd with small socket buffers on the way to the client.
func smallTLS(t *testing.T, conf *tls.Config) (*TLSSession, *tls.Conn) {
	t.Helper()
	s, c, nc := tlsEnd(t, conf)
	_ = nc.(*net.TCPConn).SetReadBuffer(32 << 10)
	_ = unix.SetsockoptInt(s.Fd(), unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<10)
	return s, c
}

// smallTLSReceiver starts a pair from a plain end (A) to a TLS end (B)
// whose path has small socket buffers, so that the session keeps
// ciphertext its socket does not take, and returns A's client, B's
// client, the session and the pair.
func smallTLSReceiver(t *testing.T, l *Loop, conf *tls.Config) (net.Conn, *tls.Conn, *TLSSession, *Pair) {
	t.Helper()
	ca, fa := tcpPair(t)
	s, cb := smallTLS(t, conf)
	p := &Pair{Owner: make(pairOwner, 1)}
	p.A.Sock, p.A.Ender = PlainSock(fa), noEnder{}
	p.B.Sock, p.B.Ender = s, noEnder{}
	on(t, l, func() { l.StartPair(p) })
	t.Cleanup(func() { on(t, l, func() { l.Abort(p, 0, 0, "") }) })
	return ca, cb, s, p
}

// TestTLSReceiverCaughtUpIsNoStall: a TLS receiver that was slow for a
// moment and then read everything is not stalled: the write that
// empties its session's ciphertext (a Flush, once Write had nothing
// more to seal) stops the write-stall clock. It once left it running,
// so the tunnel, idle with nothing owed to anyone, was ended as
// write_stall WriteStallTimeout after the receiver's moment of slowness.
func TestTLSReceiverCaughtUpIsNoStall(t *testing.T) {
	cert := testutil.Cert(t, "relay", nil, false, net.IPv4(127, 0, 0, 1))
	plain := &tls.Config{Certificates: []tls.Certificate{cert}}
	t.Run("crypto_tls", func(t *testing.T) { receiverCaughtUpIsNoStall(t, plain) })
	t.Run("own_records", func(t *testing.T) { receiverCaughtUpIsNoStall(t, OwnRecords(plain)) })
}

func receiverCaughtUpIsNoStall(t *testing.T, conf *tls.Config) {
	l := runningWith(t, Config{WriteStallTimeout: testutil.Patience})
	ca, cb, s, p := smallTLSReceiver(t, l, conf)
	data := make([]byte, 60000) // one read's worth, more than the path to B holds
	for i := range data {
		data[i] = byte(i * 7)
	}
	if _, err := ca.Write(data); err != nil {
		t.Fatal(err)
	}
	raw, _ := ca.(*net.TCPConn).SyscallConn()
	testutil.WaitFor(t, func() bool {
		sent := false
		_ = raw.Control(func(fd uintptr) { sent = queued(t, int(fd), unix.SIOCOUTQ) == 0 })
		stalled := false
		on(t, l, func() {
			stalled = sent && queued(t, p.A.fd, unix.SIOCINQ) == 0 && p.B.stallSince != 0 && s.Pending() > 0
		})
		return stalled
	}, "the relay to have read all of A's bytes and to hold ciphertext B's socket refused")
	got := make([]byte, len(data))
	_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
	if _, err := io.ReadFull(cb, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("B read %v, or not the bytes sent", err)
	}
	var since int64
	testutil.WaitFor(t, func() bool {
		idle := false
		on(t, l, func() { idle, since = s.Pending() == 0 && p.B.idle(), p.B.stallSince })
		return idle
	}, "the relay to have written everything to B")
	if since != 0 {
		t.Fatalf("B read everything and nothing waits for it, but its write stall still counts from %v ago",
			time.Since(time.Unix(0, since)).Round(time.Millisecond))
	}
}

// TestTLSReceiverTakingBytesIsNoStall: a TLS receiver that reads slowly
// but steadily is not a stalled one. Its session holds up to a chunk of
// ciphertext the socket has not taken; each time the client makes room,
// part of it is written — progress, which must restart the write-stall
// clock as a partial write on a plain socket does. Otherwise a client on
// a slow link (64 KiB in WriteStallTimeout: 52 kbit/s for the default
// 10 s) is cut off as write_stall while it reads.
func TestTLSReceiverTakingBytesIsNoStall(t *testing.T) {
	cert := testutil.Cert(t, "relay", nil, false, net.IPv4(127, 0, 0, 1))
	plain := &tls.Config{Certificates: []tls.Certificate{cert}}
	t.Run("crypto_tls", func(t *testing.T) { receiverTakingBytesIsNoStall(t, plain) })
	t.Run("own_records", func(t *testing.T) { receiverTakingBytesIsNoStall(t, OwnRecords(plain)) })
}

func receiverTakingBytesIsNoStall(t *testing.T, conf *tls.Config) {
	l := runningWith(t, Config{WriteStallTimeout: testutil.Patience})
	ca, cb, s, p := smallTLSReceiver(t, l, conf)
	go func() { _, _ = ca.Write(make([]byte, 1<<20)) }()

	var since int64
	var sent int
	state := func() (int64, int) {
		var at int64
		var n int
		on(t, l, func() { at, n = p.B.stallSince, s.Sent() })
		return at, n
	}
	testutil.WaitFor(t, func() bool {
		since, sent = state()
		return since != 0
	}, "the relay to find the TLS receiver's socket full")
	_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
	buf := make([]byte, 2<<10)
	for range 1 << 20 / len(buf) {
		if _, err := io.ReadFull(cb, buf); err != nil {
			t.Fatal(err)
		}
		now, n := state()
		if n > sent && since != 0 && now == since {
			t.Fatalf("the receiver took ciphertext, but its write stall still counts from %v ago",
				time.Since(time.Unix(0, since)).Round(time.Millisecond))
		}
		since, sent = now, n
	}
}

// TestTLSReceiverGetsAllBeforeClose: a pair closing (here: a WebSocket
// client sent a message and its close frame in one write) delivers what
// it read to a TLS receiver whole, though the session still keeps some
// of it as ciphertext its socket has not taken: the pair ends once the
// session has written it, not once its Write has accepted it. It once
// closed the socket at once, and the receiver lost the message's end
// (and read a TLS record cut short).
func TestTLSReceiverGetsAllBeforeClose(t *testing.T) {
	cert := testutil.Cert(t, "relay", nil, false, net.IPv4(127, 0, 0, 1))
	plain := &tls.Config{Certificates: []tls.Certificate{cert}}
	t.Run("crypto_tls", func(t *testing.T) { receiverGetsAllBeforeClose(t, plain) })
	t.Run("own_records", func(t *testing.T) { receiverGetsAllBeforeClose(t, OwnRecords(plain)) })
}

func receiverGetsAllBeforeClose(t *testing.T, conf *tls.Config) {
	l := runningWith(t, Config{WriteStallTimeout: testutil.Patience})
	ca, fa := tcpPair(t)
	s, cb := smallTLS(t, conf)
	data := make([]byte, 60000) // one read with the close frame, more than the path to B holds
	for i := range data {
		data[i] = byte(i * 7)
	}
	mask := [4]byte{1, 2, 3, 4}
	msg := handshake.AppendFrameMasked(nil, ws.OpBinary, true, data, mask)
	msg = handshake.AppendFrameMasked(msg, ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""), mask)
	if _, err := ca.Write(msg); err != nil {
		t.Fatal(err)
	}
	raw, _ := ca.(*net.TCPConn).SyscallConn()
	testutil.WaitFor(t, func() bool { // in the relay's socket before the pair reads
		n := -1
		_ = raw.Control(func(fd uintptr) { n = queued(t, int(fd), unix.SIOCOUTQ) })
		return n == 0
	}, "A's frames delivered to the relay")
	done := make(pairOwner, 1)
	p := &Pair{Owner: done}
	p.A.Sock, p.A.Ender, p.A.WS = PlainSock(fa), noEnder{}, &handshake.Stream{}
	p.B.Sock, p.B.Ender = s, noEnder{}
	on(t, l, func() { l.StartPair(p) })
	_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
	got, err := io.ReadAll(cb)
	if !bytes.Equal(got, data) {
		t.Fatalf("B read %d of %d bytes, then %v", len(got), len(data), err)
	}
	select {
	case <-done:
	case <-time.After(testutil.Patience):
		t.Fatal("the pair did not end")
	}
}

// enderOf records the reason its socket closed with.
type enderOf chan reason.Reason

func (e enderOf) End(r reason.Reason) { e <- r }

// smallTCP is a loopback connection whose client's receive buffer and
// relay side's send buffer are small from the start (so its window is
// too): the relay's side as a non-blocking descriptor (the pair closes
// it); the client's is closed when the test ends.
func smallTCP(t *testing.T) (net.Conn, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<10) })
	}}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := DupConn(s)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<10)
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	return c, fd
}

// TestStallAfterSenderLeftCountsWriteStall: a receiver that stops
// reading is ended as write_stall even when its partner left first (a
// WebSocket client sent its last message and its close frame in one
// write): what the relay still held for it is lost for its not reading,
// not for its partner's leaving. It was counted as partner_closed, so
// write_stall, the operators' count of receivers that stopped reading,
// missed those whose sender had finished.
func TestStallAfterSenderLeftCountsWriteStall(t *testing.T) {
	t.Parallel()
	l := runningWith(t, Config{WriteStallTimeout: 200 * time.Millisecond})
	ca, fa := tcpPair(t)
	cb, fb := smallTCP(t) // not read until the pair has ended
	mask := [4]byte{1, 2, 3, 4}
	const size = 65000 // with the close frame, one read; more than the way to B holds
	msg := handshake.AppendFrameMasked(nil, ws.OpBinary, true, make([]byte, size), mask)
	msg = handshake.AppendFrameMasked(msg, ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""), mask)
	if _, err := ca.Write(msg); err != nil {
		t.Fatal(err)
	}
	raw, _ := ca.(*net.TCPConn).SyscallConn()
	testutil.WaitFor(t, func() bool { // in the relay's socket before the pair reads: one read
		n := -1
		_ = raw.Control(func(fd uintptr) { n = queued(t, int(fd), unix.SIOCOUTQ) })
		return n == 0
	}, "A's frames delivered to the relay")
	ea, eb := make(enderOf, 1), make(enderOf, 1)
	p := &Pair{Owner: make(pairOwner, 1)}
	p.A.Sock, p.A.Ender, p.A.WS = PlainSock(fa), ea, &handshake.Stream{}
	p.B.Sock, p.B.Ender = PlainSock(fb), eb
	on(t, l, func() { l.StartPair(p) })
	for _, c := range []struct {
		name string
		e    enderOf
		want reason.Reason
	}{{"A", ea, reason.PeerClosed}, {"B", eb, reason.WriteStall}} {
		select {
		case r := <-c.e:
			if r != c.want {
				t.Errorf("%s ended as %v, want %v", c.name, r, c.want)
			}
		case <-time.After(testutil.Patience):
			t.Fatalf("%s did not end", c.name)
		}
	}
	_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
	if got, _ := io.Copy(io.Discard, cb); got >= size {
		t.Fatalf("B's client got all %d bytes: the relay held nothing for it", got)
	}
}
