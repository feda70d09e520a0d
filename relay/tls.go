package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/meetpoint/meetpoint/relay/reason"
	"golang.org/x/sys/unix"
)

// TLS is served on the same port as plaintext: a connection whose first
// bytes are a TLS handshake record is claimed for the TLS hand-over
// (tlsHandoff), leaves netpoll like a paired connection, and does its
// handshake on a goroutine of the TLS gate, bounded by TLSHandshakeTimeout
// (crypto/tls cannot resume a handshake interrupted by "would block").
// The session then lives on a forwarding loop's epoll set: the loop
// drives tls.Conn over a non-blocking adapter whose "would block" error is
// a temporary net.Error, which crypto/tls does not treat as fatal when
// reading. Writes are accepted whole into the adapter's bounded pending
// buffer and flushed on EPOLLOUT. An idle TLS connection or tunnel holds no
// goroutine.

// errWouldBlock is the adapter's "no bytes now": a temporary net.Error, so
// tls.Conn keeps its state and the caller retries on the next EPOLLIN.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// maxTLSPending bounds ciphertext waiting for a client that does not read:
// replies before the tunnel (the conn's output budget) or, in a tunnel, one
// record; past it a write fails and the client is closed as slow_reader.
const maxTLSPending = 64 << 10

// errTLSPending: the client has not read maxTLSPending of ciphertext.
var errTLSPending = errors.New("tls: client not reading")

// nbConn is the net.Conn under a tls.Conn. During the handshake it is a
// blocking net.Conn on Go's poller (the handshake goroutine parks there);
// afterwards it reads and writes the raw non-blocking descriptor.
type nbConn struct {
	prefix []byte   // bytes sniffed before the handshake started
	hs     net.Conn // handshake phase; nil afterwards
	fd     int

	mu      sync.Mutex // guards pending: tls writes come from any goroutine
	pending []byte
}

func (a *nbConn) Read(p []byte) (int, error) {
	if len(a.prefix) > 0 {
		n := copy(p, a.prefix)
		a.prefix = a.prefix[n:]
		if len(a.prefix) == 0 {
			a.prefix = nil // don't pin the sniffed ClientHello for the session's life
		}
		return n, nil
	}
	if a.hs != nil {
		return a.hs.Read(p)
	}
	n, err := unix.Read(a.fd, p)
	switch {
	case n > 0:
		return n, nil
	case err == unix.EAGAIN || err == unix.EINTR:
		return 0, errWouldBlock
	case err != nil:
		return 0, err
	default:
		return 0, io.EOF
	}
}

// Write writes p now as far as the socket takes it and keeps the rest
// pending (flushed on EPOLLOUT): it accepts all of p or fails, as
// io.Writer requires of a short count. It fails once more than
// maxTLSPending would be pending.
func (a *nbConn) Write(p []byte) (int, error) {
	if a.hs != nil {
		return a.hs.Write(p)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	total := len(p)
	if len(a.pending) == 0 {
		for len(p) > 0 {
			n, err := unix.Write(a.fd, p)
			if n > 0 {
				p = p[n:]
			}
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN || n <= 0 {
				break
			}
			if err != nil {
				return total - len(p), err
			}
		}
	}
	if len(p) == 0 {
		return total, nil
	}
	if len(a.pending)+len(p) > maxTLSPending {
		return total - len(p), errTLSPending
	}
	a.pending = append(a.pending, p...)
	return total, nil
}

// flush writes pending ciphertext; unix.EAGAIN if some remains.
func (a *nbConn) flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.pending) > 0 {
		n, err := unix.Write(a.fd, a.pending)
		if n > 0 {
			a.pending = a.pending[:copy(a.pending, a.pending[n:])]
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
	}
	if cap(a.pending) > 16<<10 {
		a.pending = nil // don't keep a big buffer on an idle connection
	}
	return nil
}

func (a *nbConn) Close() error                       { return unix.Close(a.fd) }
func (a *nbConn) LocalAddr() net.Addr                { return nil }
func (a *nbConn) RemoteAddr() net.Addr               { return nil }
func (a *nbConn) SetDeadline(t time.Time) error      { return a.deadline(t) }
func (a *nbConn) SetReadDeadline(t time.Time) error  { return a.deadline(t) }
func (a *nbConn) SetWriteDeadline(t time.Time) error { return a.deadline(t) }
func (a *nbConn) deadline(t time.Time) error {
	if a.hs != nil {
		return a.hs.SetDeadline(t)
	}
	return nil
}

// tlsSock is a TLS session as a sock for the forwarding loops.
type tlsSock struct {
	tc *tls.Conn
	ad *nbConn
}

func (s *tlsSock) Fd() int { return s.ad.fd }

func (s *tlsSock) Read(p []byte) (int, error) {
	for {
		n, err := s.tc.Read(p)
		switch {
		case n > 0:
			return n, nil
		case err == nil: // a record without application data
			continue
		case errors.Is(err, errWouldBlock):
			return 0, unix.EAGAIN
		default:
			return 0, err
		}
	}
}

// Write encrypts at most one record's worth of p; it refuses (EAGAIN) while
// earlier ciphertext is still pending, so at most one record plus the
// adapter's bound is buffered.
func (s *tlsSock) Write(p []byte) (int, error) {
	if err := s.ad.flush(); err != nil {
		return 0, err
	}
	if len(p) > 16<<10 {
		p = p[:16<<10]
	}
	return s.tc.Write(p)
}

func (s *tlsSock) Flush() error { return s.ad.flush() }

func (s *tlsSock) Close() error {
	_ = s.tc.SetWriteDeadline(time.Now()) // no blocking close_notify
	return s.ad.Close()
}

// tlsTransport is a TLS connection before its tunnel: read by forwarder f's
// loop, written from any goroutine holding the conn's lock.
type tlsTransport struct {
	f       *forwarder
	s       *tlsSock
	c       *conn
	state   tls.ConnectionState
	dropped bool // loop-owned: removed from the epoll set
}

// write encrypts b; the adapter takes it all or fails (a client that does
// not read its replies).
func (t *tlsTransport) write(b []byte) (int, error) {
	n, err := t.s.tc.Write(b)
	if errors.Is(err, errTLSPending) {
		return n, nil // short: the conn closes it as slow_reader
	}
	return n, err
}

// release removes the connection from its loop, then releases it.
func (t *tlsTransport) release() {
	if !t.f.do(func() { t.drop(t.f) }) {
		t.c.released(nil)
	}
}

func (t *tlsTransport) drop(f *forwarder) {
	if t.dropped {
		return
	}
	t.dropped = true
	f.unregister(t.s.Fd())
	t.c.released(nil)
}

func (t *tlsTransport) detach() (sock, error) { return t.s, nil }
func (t *tlsTransport) discard()              { t.s.Close() }

// event implements pollee: decrypt what arrived and feed the conn's stages.
func (t *tlsTransport) event(f *forwarder, events uint32) {
	if events&unix.EPOLLOUT != 0 {
		if err := t.s.Flush(); err != nil && err != unix.EAGAIN {
			t.fail(reason.IOError)
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		t.readAll(f)
	}
}

func (t *tlsTransport) readAll(f *forwarder) {
	if f.scratch == nil {
		f.scratch = make([]byte, 16<<10)
	}
	for !t.dropped {
		n, err := t.s.Read(f.scratch)
		if n > 0 {
			c := t.c
			c.mu.Lock()
			c.consume(f.scratch[:n])
			c.unlock()
			continue
		}
		if err != unix.EAGAIN {
			t.fail(reason.PeerClosed)
		}
		return
	}
}

// fail ends the connection after its socket failed or its client left; a
// claimed connection's target learns it (conn.close).
func (t *tlsTransport) fail(r reason.Reason) {
	c := t.c
	c.mu.Lock()
	c.close(r)
	c.unlock()
}

// shutdown ends the connection as the loop stops: it lets go at once.
func (t *tlsTransport) shutdown(f *forwarder) {
	c := t.c
	c.mu.Lock()
	c.fail(reason.Shutdown, 1001, "Server shutting down")
	c.flush()
	c.rel = relAsked
	c.mu.Unlock()
	t.drop(f)
}

// tlsHandoff is the target of a connection that sniffed a TLS ClientHello:
// its socket goes to the TLS gate, with the sniffed bytes.
type tlsHandoff struct{}

// ready implements target.
func (tlsHandoff) ready(c *conn) {
	if c.failed || c.sk == nil {
		if c.sk != nil {
			c.sk.Close()
		}
		c.tk.End(c.reason)
		return
	}
	c.s.tlsGate.submit(tlsJob{fd: c.sk.Fd(), prefix: c.late, peer: c.peer, tk: c.tk, at: c.created})
}

// tlsJob is a TLS handshake to run: the detached socket and its ticket.
type tlsJob struct {
	fd     int
	prefix []byte
	peer   net.Addr
	tk     *ticket
	at     time.Time // accept time: the handshake deadline counts from here
}

// tlsGate bounds concurrent TLS handshakes: at most max run at once (each
// on a goroutine, which crypto/tls needs), up to 4×max more wait in a
// FIFO, and beyond that, or once a waiting handshake's deadline has
// passed, connections are refused (limit_tls_handshakes). A reconnect
// storm therefore costs a bounded number of goroutines.
type tlsGate struct {
	s      *Server
	max    int
	mu     sync.Mutex
	active int
	queue  []tlsJob
}

func (g *tlsGate) submit(j tlsJob) {
	g.mu.Lock()
	switch {
	case g.active < g.max:
		g.active++
		g.mu.Unlock()
		go g.run(j)
		return
	case len(g.queue) < 4*g.max:
		g.queue = append(g.queue, j)
		g.s.stats.tlsQueued.Inc()
		g.mu.Unlock()
		return
	}
	g.mu.Unlock()
	g.s.log.Debug("TLS handshake refused: gate full", "peer", j.peer.String())
	g.refuse(j)
}

func (g *tlsGate) refuse(j tlsJob) {
	unix.Close(j.fd)
	j.tk.End(reason.LimitTLS)
}

// run handshakes j, then whatever waits, until the queue is empty.
func (g *tlsGate) run(j tlsJob) {
	for {
		g.s.handshakeTLS(j)
		g.mu.Lock()
		for {
			if len(g.queue) == 0 {
				g.active--
				g.mu.Unlock()
				return
			}
			j = g.queue[0]
			g.queue[0] = tlsJob{}
			g.queue = g.queue[1:]
			g.s.stats.tlsQueued.Dec()
			if time.Since(j.at) < g.s.cfg.TLSHandshakeTimeout {
				break
			}
			g.mu.Unlock()
			g.refuse(j) // waited past its deadline
			g.mu.Lock()
		}
		g.mu.Unlock()
	}
}

// handshakeTLS runs the handshake for a connection that left netpoll, then
// gives the session to a forwarding loop as a new conn.
func (s *Server) handshakeTLS(j tlsJob) {
	s.stats.tlsStarted.Inc()
	file := os.NewFile(uintptr(j.fd), "tls")
	hs, err := net.FileConn(file) // dups the descriptor
	file.Close()
	if err != nil {
		s.stats.tlsFailed.Inc()
		j.tk.End(reason.TLS)
		return
	}
	ad := &nbConn{prefix: j.prefix, hs: hs, fd: -1}
	tc := tls.Server(ad, s.tls.conf)
	deadline := j.at.Add(s.cfg.TLSHandshakeTimeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	_ = hs.SetDeadline(deadline)
	err = tc.HandshakeContext(ctx)
	cancel()
	if err == nil {
		err = ad.takeFd(hs)
	}
	hs.Close()
	if err != nil {
		s.log.Debug("TLS handshake failed", "peer", j.peer.String(), "err", err)
		s.stats.tlsFailed.Inc()
		if ad.fd >= 0 {
			unix.Close(ad.fd)
		}
		j.tk.End(reason.TLS)
		return
	}
	s.stats.tlsOK.Inc()
	ad.hs = nil
	tsock := &tlsSock{tc: tc, ad: ad}
	f := s.pickForwarder(ad.fd)
	tr := &tlsTransport{f: f, s: tsock, state: tc.ConnectionState()}
	c := s.newConn(tr, j.peer, j.tk)
	if c == nil {
		tsock.Close()
		j.tk.End(reason.Shutdown)
		return
	}
	c.created = j.at
	tr.c = c
	if !f.do(func() {
		if err := f.register(ad.fd, tr); err != nil {
			tr.fail(reason.IOError)
			return
		}
		tr.readAll(f) // the handshake may have read application data already
	}) {
		c.mu.Lock()
		c.close(reason.Shutdown)
		c.rel = relAsked
		c.mu.Unlock()
		c.released(nil)
	}
}

// takeFd keeps a descriptor of our own for the socket behind Go's conn.
func (a *nbConn) takeFd(hs net.Conn) error {
	sc, ok := hs.(syscall.Conn)
	if !ok {
		return errors.New("tls: not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var derr error
	if err := rc.Control(func(fd uintptr) {
		a.fd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return err
	}
	if derr != nil {
		a.fd = -1
		return derr
	}
	return unix.SetNonblock(a.fd, true)
}
