package relay

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
	"golang.org/x/sys/unix"
)

// TLS is served on the same port as plaintext: a connection whose first
// bytes are a TLS handshake record is claimed for the TLS hand-over
// (tlsHandoff), leaves its loop like a paired connection, and does its
// handshake on a goroutine of the TLS gate, bounded by TLSHandshakeTimeout
// (crypto/tls cannot resume a handshake interrupted by "would block").
// The session then lives on a forwarding loop's epoll set: the loop
// drives tls.Conn over a non-blocking adapter whose "would block" error is
// a temporary net.Error, which crypto/tls does not treat as fatal when
// reading. Writes are accepted whole into the adapter's bounded pending
// buffer and flushed on EPOLLOUT. An idle TLS connection or tunnel holds no
// goroutine.

// tlsTransport is a TLS connection before its tunnel: read by loop l,
// written from any goroutine holding the conn's lock.
type tlsTransport struct {
	l       *loop.Loop
	s       *loop.TLSSession
	c       *conn
	dropped bool // loop-owned: removed from the epoll set
	unread  bool // loop-owned: see plainTransport (a tunnel reads a TLS session at once anyway)
	hup     bool // loop-owned: see plainTransport
}

// write encrypts b; the session takes it all or fails (a client that does
// not read its replies).
func (t *tlsTransport) write(b []byte) (int, error) {
	n, err := t.s.WriteAll(b)
	if errors.Is(err, loop.ErrTLSPending) {
		return n, nil // short: the conn closes it as slow_reader
	}
	return n, err
}

// release removes the connection from its loop, then releases it.
func (t *tlsTransport) release(onLoop bool) { t.c.releaseVia(t.l, onLoop, t) }

func (t *tlsTransport) home() *loop.Loop { return t.l }

func (t *tlsTransport) drop(l *loop.Loop) {
	if t.dropped {
		return
	}
	t.dropped = true
	t.c.dropFrom(l, t.s.Fd(), owed(t.unread, t.hup))
}

func (t *tlsTransport) detach() (loop.Sock, error) { return t.s, nil }
func (t *tlsTransport) discard()                   { t.s.Close() }

// Event implements loop.Pollee: decrypt what arrived and feed the conn's
// stages.
func (t *tlsTransport) Event(l *loop.Loop, events uint32) {
	t.hup = t.hup || events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0
	if events&unix.EPOLLOUT != 0 {
		if err := t.s.Flush(); err != nil && err != unix.EAGAIN {
			t.fail(reason.IOError)
			return
		}
		t.c.writable()
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		t.readAll(l)
	}
}

// readAll decrypts what arrived into the conn's stages (conn.readFrom).
func (t *tlsTransport) readAll(l *loop.Loop) {
	if t.c.readFrom(t.s, l.Scratch(), &t.dropped, true, &t.unread) {
		l.Again(t)
	}
}

// Resume implements loop.Resumer: go on reading after readTurn.
func (t *tlsTransport) Resume(l *loop.Loop) { t.readAll(l) }

// fail ends the connection after its socket failed or its client left.
func (t *tlsTransport) fail(r reason.Reason) { t.c.ended(r) }

// Stop implements loop.Stopper: the loop is stopping; the connection lets
// go at once.
func (t *tlsTransport) Stop(l *loop.Loop) {
	t.c.stopping()
	t.drop(l)
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
	if !c.s.tlsShares.Take(c.tk.key, c.s.cfg.MaxTLSHandshakesPerIP) {
		// This address holds its share of the gate: the others' stays.
		c.s.log.Debug("TLS handshake refused: too many at once from this address", "peer", c.peer.String())
		c.sk.Close()
		c.tk.End(reason.LimitTLSPerIP)
		return
	}
	c.s.tlsGate.Submit(tlsJob{fd: c.sk.Fd(), prefix: c.claim().late, peer: c.peer, tk: c.tk, at: c.created})
}

// tlsJob is a TLS handshake to run: the detached socket and its ticket.
type tlsJob struct {
	fd     int
	prefix []byte
	peer   net.Addr
	tk     *ticket
	at     time.Time // accept time: the handshake deadline counts from here
}

// handshakeTLS runs the handshake for a connection that left its loop, then
// gives the session to a loop as a new conn.
func (s *Server) handshakeTLS(j tlsJob) {
	s.stats.tlsStarted.Inc()
	sess, err := loop.HandshakeTLS(j.fd, j.prefix, s.cfg.TLS, j.at.Add(s.cfg.TLSHandshakeTimeout), j.peer)
	s.tlsShares.Give(j.tk.key)
	if f := (*loop.Fault)(nil); errors.As(err, &f) { // HandshakeTLS's barrier caught a panic
		if !s.ContainFault(f.Value, f.Stack, "internal error: the relay panicked in a TLS handshake; the connection is ended (internal_fault), the relay serves on",
			"peer", j.peer.String()) {
			panic(fmt.Sprintf("%v\n\nwhere it happened:\n%s", f.Value, f.Stack))
		}
		s.stats.tlsFailed.Inc()
		j.tk.End(reason.Fault)
		return
	}
	if err != nil {
		s.log.Debug("TLS handshake failed", "peer", j.peer.String(), "err", err)
		s.stats.tlsFailed.Inc()
		j.tk.End(reason.TLS)
		return
	}
	s.stats.tlsOK.Inc()
	if sess.OwnRecordLayer() {
		s.stats.tlsOwn.Inc()
	} else {
		s.stats.tlsLib.Inc()
	}
	if sess.State().NegotiatedProtocol == "h2" { // HTTP/2 is API traffic: straight to net/http
		j.tk.setKind(kindHTTP)
		if r, ok := s.handOver(handoffHTTP, sess, nil, j.peer, j.tk); !ok {
			sess.Close()
			j.tk.End(r)
		}
		return
	}
	l := s.pickLoop(sess.Fd())
	tr := &tlsTransport{l: l, s: sess}
	c := s.newConn(tr, j.peer, j.tk, func(c *conn) { tr.c, c.created = c, j.at })
	if c == nil {
		sess.Close()
		j.tk.End(reason.Shutdown)
		return
	}
	if !l.Do(func() {
		if err := l.Register(sess.Fd(), tr); err != nil {
			tr.fail(reason.IOError)
			return
		}
		tr.readAll(l) // the handshake may have read application data already
	}) {
		c.mu.Lock()
		c.close(reason.Shutdown)
		c.rel = relAsked
		c.mu.Unlock()
		c.released(nil)
	}
}
