package loop

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/pool"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// pairOwner records how a test pair ended.
type pairOwner chan reason.Reason

func (pairOwner) PairClosing(*Pair, reason.Reason)    {}
func (o pairOwner) PairDone(_ *Pair, r reason.Reason) { o <- r }

// noEnder ignores a socket's end.
type noEnder struct{}

func (noEnder) End(reason.Reason) {}

// tcpPair is a loopback TCP connection: the client's side as a net.Conn
// (closed when the test ends) and the server's as a non-blocking
// descriptor for a Pair end (the pair closes it).
func tcpPair(t *testing.T) (net.Conn, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f, err := s.(*net.TCPConn).File() // a duplicate: s's own is closed above
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	return c, fd
}

// plainPair is a buffered pair of the plain sockets fa and fb; its owner
// hears the end on the returned channel.
func plainPair(fa, fb int) (*Pair, pairOwner) {
	done := make(pairOwner, 1)
	p := &Pair{Owner: done}
	p.A.Sock, p.A.Ender = PlainSock(fa), noEnder{}
	p.B.Sock, p.B.Ender = PlainSock(fb), noEnder{}
	return p, done
}

// TestBufferedPairShortReads: a buffered pair of plain sockets stops
// reading an end after a short read (the socket is drained; the next
// arrival raises a new edge). Nothing is stranded by it: small writes
// with pauses between them, a burst far over one chunk (full reads, which
// must go on), more small writes and the half-close all arrive, in order.
func TestBufferedPairShortReads(t *testing.T) {
	t.Parallel()
	l := running(t)
	ca, fa := tcpPair(t)
	cb, fb := tcpPair(t)
	p, done := plainPair(fa, fb)
	on(t, l, func() { l.StartPair(p) })

	rng := rand.New(rand.NewPCG(1, 2))
	var sent bytes.Buffer
	small := func(n int) {
		for range n {
			m := make([]byte, 1+rng.IntN(300))
			for i := range m {
				m[i] = byte(rng.Uint32())
			}
			sent.Write(m)
			if _, err := ca.Write(m); err != nil {
				t.Error(err)
				return
			}
			if rng.IntN(4) == 0 {
				time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
			}
		}
	}
	got := make(chan []byte, 1)
	go func() {
		_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
		b, _ := io.ReadAll(cb) // to the half-close the pair passes on
		got <- b
	}()
	small(300)
	burst := make([]byte, 1<<20)
	for i := range burst {
		burst[i] = byte(i * 7)
	}
	sent.Write(burst)
	if _, err := ca.Write(burst); err != nil {
		t.Fatal(err)
	}
	small(300)
	_ = ca.(*net.TCPConn).CloseWrite()
	b := <-got
	if !bytes.Equal(b, sent.Bytes()) {
		t.Fatalf("received %d bytes, sent %d (or out of order)", len(b), sent.Len())
	}
	ca.Close()
	select {
	case <-done:
	case <-time.After(testutil.Patience):
		t.Fatal("the pair did not end after both clients left")
	}
}

// splicing starts on l a splice pair between two loopback connections
// and returns their client sides, the pair, and its owner's channel.
func splicing(t *testing.T, l *Loop) (ca, cb net.Conn, p *Pair, done pairOwner) {
	t.Helper()
	ca, fa := tcpPair(t)
	cb, fb := tcpPair(t)
	p, done = plainPair(fa, fb)
	p.Splice = true
	on(t, l, func() { l.StartPair(p) })
	return ca, cb, p, done
}

// TestSplicePairSplicesBulkOnly: a splice pair reads and writes small
// messages (no splice that finds nothing after each) and splices bulk
// transfers, switching as the traffic does, with every byte in order
// across the switches. The counters prove which path each phase took.
func TestSplicePairSplicesBulkOnly(t *testing.T) {
	t.Parallel()
	l := runningWith(t, Config{WriteStallTimeout: testutil.Patience}) // the reader may lag under load
	ca, cb, _, done := splicing(t, l)
	_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))

	rng := rand.New(rand.NewPCG(3, 4))
	var sent, got bytes.Buffer
	// send writes m and waits until it has come through: one small
	// message in flight at a time, so each read takes one message.
	send := func(m []byte) {
		t.Helper()
		sent.Write(m)
		wrote := make(chan error, 1)
		go func() { _, err := ca.Write(m); wrote <- err }()
		n, err := io.CopyN(&got, cb, int64(len(m)))
		if werr := <-wrote; werr != nil {
			t.Fatal(werr)
		}
		if err != nil {
			t.Fatalf("after %d bytes sent, a %d-byte message: %d came through: %v", sent.Len(), len(m), n, err)
		}
	}
	smalls := func(n int) (total int) {
		for range n {
			m := make([]byte, 1+rng.IntN(300))
			for i := range m {
				m[i] = byte(rng.Uint32())
			}
			send(m)
			total += len(m)
		}
		return total
	}
	spliced, buffered := l.cfg.Spliced.Get, l.cfg.Buffered.Get

	first := smalls(50)
	if spliced() != 0 || buffered() != uint64(first) {
		t.Fatalf("small messages: spliced %d, buffered %d; want 0 and %d", spliced(), buffered(), first)
	}
	burst := make([]byte, 4<<20)
	for i := range burst {
		burst[i] = byte(i * 7)
	}
	send(burst)
	if spliced() == 0 || spliced()+buffered() != uint64(first+len(burst)) {
		t.Fatalf("after a %d-byte burst: spliced %d, buffered %d; want a splice, and %d bytes in all",
			len(burst), spliced(), buffered(), first+len(burst))
	}
	s0, b0 := spliced(), buffered()
	last := smalls(50)
	// The burst's last transfer may make the first small one splice.
	if spliced()-s0 > 300 || buffered()-b0 < uint64(last-300) {
		t.Fatalf("small messages after the burst: spliced %d, buffered %d more; want them read",
			spliced()-s0, buffered()-b0)
	}
	if !bytes.Equal(got.Bytes(), sent.Bytes()) {
		t.Fatalf("received %d bytes, sent %d (or out of order)", got.Len(), sent.Len())
	}
	ca.Close()
	if b, err := io.ReadAll(cb); err != nil || len(b) != 0 {
		t.Fatalf("after the sender left: %d more bytes, %v; want the end of the stream", len(b), err)
	}
	cb.Close()
	select {
	case <-done:
	case <-time.After(testutil.Patience):
		t.Fatal("the pair did not end after both clients left")
	}
}

// TestPairUrgentData: a read stops short at TCP's urgent mark
// (tcp_recvmsg does not read past it in one call), though the bytes
// behind it have all arrived and no new edge will come for them: the end
// goes on reading while epoll reports urgent data (EPOLLPRI). A splice
// stops at the mark for good (EAGAIN, or 0 after a FIN as if the stream
// had ended), so an end with urgent data pending reads even while its
// direction splices. The urgent byte itself is not part of the stream,
// as before.
func TestPairUrgentData(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		splice, fin bool
	}{{"buffered", false, false}, {"buffered, then FIN", false, true}, {"splice", true, false}, {"splice, then FIN", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := running(t)
			ca, fa := tcpPair(t)
			cb, fb := tcpPair(t)
			head := []byte("abc")
			if tc.splice { // a full read, then a bulk splice up to the mark: the direction splices when it meets it
				head = bytes.Repeat([]byte("h"), pool.ChunkSize+30000)
			}
			if _, err := ca.Write(head); err != nil {
				t.Fatal(err)
			}
			raw, err := ca.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			_ = raw.Write(func(fd uintptr) bool {
				if err := unix.Sendto(int(fd), []byte("X"), unix.MSG_OOB, nil); err != nil {
					t.Error(err)
				}
				return true
			})
			if _, err := ca.Write([]byte("def")); err != nil {
				t.Fatal(err)
			}
			if tc.fin {
				_ = ca.(*net.TCPConn).CloseWrite()
			}
			testutil.WaitFor(t, func() error { // all of it acknowledged: in the relay's socket before the pair reads
				var n int
				var err error
				_ = raw.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
				if err != nil || n > 0 {
					return fmt.Errorf("%d bytes not yet acknowledged (%v)", n, err)
				}
				return nil
			}, "the client's bytes delivered")
			p, _ := plainPair(fa, fb)
			p.Splice = tc.splice
			on(t, l, func() { l.StartPair(p) })
			want := append(head, "def"...)
			got := make([]byte, len(want))
			_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
			if n, err := io.ReadFull(cb, got); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("B received %d of %d bytes (%v), or not the bytes sent", n, len(want), err)
			}
		})
	}
}

// TestSplicePairHoldsAtMostMaxBuffer: MaxBuffer bounds what a direction
// holds on either path: a splice takes no more into its pipe than a read
// would into its chunk. The receiver stops reading until the relay holds
// bytes for it, then reads everything.
func TestSplicePairHoldsAtMostMaxBuffer(t *testing.T) {
	t.Parallel()
	const most = 4096
	l := runningWith(t, Config{MaxBuffer: most, WriteStallTimeout: testutil.Patience})
	ca, cb, p, _ := splicing(t, l)
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 13)
	}
	go func() { _, _ = ca.Write(data) }()
	held, spliced := 0, false
	testutil.WaitFor(t, func() bool {
		on(t, l, func() {
			held, spliced = len(p.B.out), false
			if p.B.pipe != nil && p.B.pipe.N > 0 {
				held, spliced = p.B.pipe.N, true
			}
		})
		return held > 0 && spliced
	}, "the relay to hold spliced bytes for the receiver that does not read")
	if held > most {
		t.Errorf("the pipe toward B holds %d bytes, over MaxBuffer (%d)", held, most)
	}
	got := make([]byte, len(data))
	_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
	if _, err := io.ReadFull(cb, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("B received %v, or not the bytes sent", err)
	}
}

// TestSplicePairIdleHoldsNothing: whatever path each transfer took, an
// idle splice pair keeps neither a pipe nor a chunk (a pipe is two
// descriptors and up to 64 KiB of kernel memory per direction).
// Transfers alternate between bulk and small, so that a direction drops
// out of bulk with its pipe still held and then finds its socket drained
// on the read path.
func TestSplicePairIdleHoldsNothing(t *testing.T) {
	t.Parallel()
	l := runningWith(t, Config{WriteStallTimeout: testutil.Patience})
	ca, cb, p, _ := splicing(t, l)
	_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
	for _, n := range []int{20000, 5000, 20000, 5000} {
		m := make([]byte, n)
		if _, err := ca.Write(m); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(cb, m); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, func() bool {
			held := true
			on(t, l, func() { held = p.A.pipe != nil || p.B.pipe != nil || p.A.buf != nil || p.B.buf != nil })
			return !held
		}, "the idle pair to give its pipes and chunks back")
	}
}

// TestParkOwedHangUpReachesPair: a socket whose client sent more than
// one read and then its FIN, parked by an owner that saw the hang-up,
// is taken over by a pair that reads it all and passes the end of stream
// on: the hang-up owed with the input makes the pair read past its short
// read (epoll reports the hang-up once, to the first owner).
func TestParkOwedHangUpReachesPair(t *testing.T) {
	t.Parallel()
	l := running(t)
	ca, fa := tcpPair(t)
	cb, fb := tcpPair(t)
	first := make(recorder, 16)
	on(t, l, func() {
		if err := l.Register(fa, first); err != nil {
			t.Error(err)
		}
	})
	sent := bytes.Repeat([]byte("0123456789"), 10_000) // more than one 64 KiB read
	if _, err := ca.Write(sent); err != nil {
		t.Fatal(err)
	}
	_ = ca.(*net.TCPConn).CloseWrite()
	wantEvent(t, first, unix.EPOLLRDHUP, "the first owner, for the hang-up")
	p, _ := plainPair(fa, fb)
	on(t, l, func() {
		l.Park(fa, unix.EPOLLIN|unix.EPOLLRDHUP) // nothing read: all of it owed
		l.StartPair(p)
		l.Unpark(fa)
	})
	_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
	got, err := io.ReadAll(cb)
	if err != nil || !bytes.Equal(got, sent) {
		t.Fatalf("B received %d of %d bytes, then %v (want the end of stream)", len(got), len(sent), err)
	}
}

// TestWSCloseFrameClosesAtOnce: a WebSocket end whose client sent its
// close frame gets the close echo and a FIN, and its socket is closed at
// once rather than lingering; the plain partner still closes gracefully
// (FIN, then lingering until its client closes).
func TestWSCloseFrameClosesAtOnce(t *testing.T) {
	t.Parallel()
	l := running(t)
	ca, fa := tcpPair(t)
	cb, fb := tcpPair(t)
	p, done := plainPair(fa, fb)
	p.A.WS = &handshake.Stream{}
	on(t, l, func() { l.StartPair(p) })
	closeFrame := handshake.AppendFrameMasked(nil, ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""), [4]byte{1, 2, 3, 4})
	if _, err := ca.Write(closeFrame); err != nil {
		t.Fatal(err)
	}
	_ = ca.SetReadDeadline(time.Now().Add(testutil.Patience))
	echo, err := io.ReadAll(ca) // the echo, then the relay's FIN (a reset would be an error)
	if err != nil || len(echo) < 2 || ws.OpCode(echo[0]&0x0f) != ws.OpClose {
		t.Fatalf("WebSocket client got % x, %v; want a close frame and the end of stream", echo, err)
	}
	_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
	if rest, err := io.ReadAll(cb); err != nil || len(rest) != 0 {
		t.Fatalf("TCP partner got %q, %v; want the end of stream", rest, err)
	}
	select {
	case <-done:
	case <-time.After(testutil.Patience):
		t.Fatal("the pair did not end")
	}
	on(t, l, func() {
		for g := range l.lingering {
			if g.sk.Fd() == fa {
				t.Error("the WebSocket end lingers after its client's close frame")
			}
		}
		if len(l.lingering) != 1 {
			t.Errorf("%d sockets lingering, want the TCP partner's alone", len(l.lingering))
		}
	})
}
