package loop

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// TLS sessions are served from loops: the handshake runs on a goroutine
// blocking on Go's poller (crypto/tls cannot resume a handshake
// interrupted by "would block"); afterwards a loop drives the session over
// the raw non-blocking descriptor through an adapter whose "no bytes now"
// is a temporary net.Error, which crypto/tls does not treat as fatal when
// reading. Writes are accepted whole into the adapter's bounded pending
// buffer and flushed on EPOLLOUT. A session can be switched back to
// blocking I/O (Blocking) for a library that wants a net.Conn.

// errWouldBlock is the adapter's "no bytes now".
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// MaxTLSPending bounds ciphertext waiting for a client that does not read:
// past it a write fails with ErrTLSPending.
const MaxTLSPending = 64 << 10

// Fault is the error of a call that recovered a panic (HandshakeTLS):
// the panic's value and the stack where it happened. The caller decides
// whether to go on without what failed or to raise the panic again.
type Fault struct {
	Value any
	Stack []byte
}

func (f *Fault) Error() string { return fmt.Sprintf("internal fault: %v", f.Value) }

// ErrTLSPending: the client has not read MaxTLSPending of ciphertext.
var ErrTLSPending = errors.New("tls: client not reading")

// nbConn is the net.Conn under a tls.Conn: blocking on Go's poller while
// hs is set (the handshake, or after Blocking), otherwise the raw
// non-blocking descriptor.
type nbConn struct {
	prefix []byte   // bytes sniffed before the handshake started
	hs     net.Conn // blocking phase; nil while a loop drives the session
	fd     int
	remote net.Addr

	mu      sync.Mutex // guards pending, sealed, seal: tls writes come from any goroutine
	pending []byte
	// seal: records are gathered in pending (in sealed, a pooled buffer)
	// and written together by the next flush (TLSSession.Write).
	seal   bool
	sealed *[]byte
	// writes counts write(2) calls that moved ciphertext, short those
	// the socket took only part of (the next call is then owed to the
	// socket, not to the sealing): how the tests see one write per chunk.
	writes, short int
	// logging: a handshake's bytes are logged, each direction up to
	// maxHandshakeLog, for the take-over by the record layer of our own.
	logging       bool
	logIn, logOut []byte
}

// log appends b to *dst, up to maxHandshakeLog.
func (a *nbConn) log(dst *[]byte, b []byte) {
	if a.logging && len(*dst) < maxHandshakeLog {
		*dst = append(*dst, b[:min(len(b), maxHandshakeLog-len(*dst))]...)
	}
}

// sealSlack is room for the records' overhead when up to MaxTLSPending of
// plaintext is sealed at once: crypto/tls starts a connection with
// records of about 1 KiB (its dynamic record sizing), 29 bytes of
// overhead each at most.
const sealSlack = 8 << 10

// sealBufs are the buffers one TLSSession.Write seals its records into,
// given back once they are written: an idle session keeps none.
var sealBufs = sync.Pool{New: func() any { b := make([]byte, 0, MaxTLSPending+sealSlack); return &b }}

func (a *nbConn) Read(p []byte) (int, error) {
	if len(a.prefix) > 0 {
		n := copy(p, a.prefix)
		a.log(&a.logIn, p[:n])
		a.prefix = a.prefix[n:]
		if len(a.prefix) == 0 {
			a.prefix = nil // don't pin the sniffed ClientHello for the session's life
		}
		return n, nil
	}
	if a.hs != nil {
		n, err := a.hs.Read(p)
		a.log(&a.logIn, p[:n])
		return n, err
	}
	n, err := rawRead(a.fd, p)
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
// MaxTLSPending would be pending (MaxTLSPending+sealSlack while sealing,
// when nothing is written before the flush).
func (a *nbConn) Write(p []byte) (int, error) {
	if a.hs != nil {
		n, err := a.hs.Write(p)
		a.log(&a.logOut, p[:n])
		return n, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	total := len(p)
	limit := MaxTLSPending
	if a.seal {
		limit += sealSlack
		if a.sealed == nil && len(a.pending) == 0 {
			a.sealed = sealBufs.Get().(*[]byte)
			a.pending = (*a.sealed)[:0]
		}
	} else if len(a.pending) == 0 {
		for len(p) > 0 {
			n, err := rawWrite(a.fd, p)
			if n > 0 {
				a.writes++
				if n < len(p) {
					a.short++
				}
				p = p[n:]
			}
			if err == unix.EINTR {
				continue
			}
			if err != nil && err != unix.EAGAIN {
				return total - len(p), err
			}
			if n <= 0 {
				break
			}
		}
	}
	if len(p) == 0 {
		return total, nil
	}
	if len(a.pending)+len(p) > limit {
		return total - len(p), ErrTLSPending
	}
	a.pending = append(a.pending, p...)
	return total, nil
}

// flush writes pending ciphertext; unix.EAGAIN if some remains. Handed
// off (Blocking), it writes all of it through Go's poller, or fails.
func (a *nbConn) flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.pending) > 0 {
		var n int
		var err error
		if a.hs != nil { // handed off (Blocking): through Go's poller
			n, err = a.hs.Write(a.pending)
		} else {
			n, err = rawWrite(a.fd, a.pending)
		}
		if n > 0 {
			a.writes++
			if n < len(a.pending) {
				a.short++
			}
			a.pending = a.pending[:copy(a.pending, a.pending[n:])]
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
	}
	if a.sealed != nil {
		*a.sealed = a.pending[:0]
		sealBufs.Put(a.sealed)
		a.sealed, a.pending = nil, nil
	} else if cap(a.pending) > 16<<10 {
		a.pending = nil // don't keep a big buffer on an idle connection
	}
	return nil
}

// sealing starts or ends gathering records in pending.
func (a *nbConn) sealing(on bool) {
	a.mu.Lock()
	a.seal = on
	a.mu.Unlock()
}

func (a *nbConn) Close() error {
	if a.hs != nil {
		a.hs.Close()
	}
	return rawClose(a.fd)
}

// LocalAddr is the socket's address, asked of the kernel after the
// handshake (rarely needed; not kept).
func (a *nbConn) LocalAddr() net.Addr {
	if a.hs != nil {
		return a.hs.LocalAddr()
	}
	return localAddrOf(a.fd)
}
func (a *nbConn) RemoteAddr() net.Addr { return a.remote }

// Deadlines apply to the blocking phase, each to its own direction: a
// writer's deadline must not end a reader waiting on an idle connection
// (a WebSocket session handed to net/http that writes with a deadline and
// reads for minutes).
func (a *nbConn) SetDeadline(t time.Time) error {
	return a.deadline(func(c net.Conn) error { return c.SetDeadline(t) })
}
func (a *nbConn) SetReadDeadline(t time.Time) error {
	return a.deadline(func(c net.Conn) error { return c.SetReadDeadline(t) })
}
func (a *nbConn) SetWriteDeadline(t time.Time) error {
	return a.deadline(func(c net.Conn) error { return c.SetWriteDeadline(t) })
}
func (a *nbConn) deadline(set func(net.Conn) error) error {
	if a.hs != nil {
		return set(a.hs)
	}
	return nil
}

// TLSSession is a TLS session over one socket (the relay's side, or a
// mesh link's client side), a Sock for the loops once its handshake is done.
// A server session that negotiated TLS 1.3 under an OwnRecords config runs
// on the record layer of our own (rl); the others on crypto/tls (tc).
type TLSSession struct {
	tc *tls.Conn // crypto/tls's session; nil once rl took over
	rl *records  // the record layer of our own, or nil
	st tlsState  // the handshake's outcome, once rl took over
	ad *nbConn
	// abandoned: a fault barrier gave up on the session (Abandon): its
	// write state is not to be trusted, so nothing more is sealed or
	// sent. Owner's goroutine.
	abandoned bool
}

// errAbandoned is what an abandoned session's Write and Flush return.
var errAbandoned = errors.New("tls: session abandoned after an internal fault")

// Abandon makes sk, given up on by a fault barrier, close without sending
// anything more: a TLS session seals no record (no close_notify) and
// flushes nothing, as its write state is not to be trusted after a panic;
// it still frees what it holds. Other sockets are left as they are.
// Called by sk's owner before it closes sk.
func Abandon(sk Sock) {
	if s, ok := sk.(*TLSSession); ok {
		s.abandoned = true
	}
}

// tlsState is what a session on the own record layer keeps of its
// handshake's tls.ConnectionState: not the exporter's secret, nor the
// fields TLS 1.3 leaves empty (a ConnectionState is ~0.5 KB).
type tlsState struct {
	version, suite, curve uint16
	resumed               bool
	alpn, sni             string
	peers                 []*x509.Certificate
	chains                [][]*x509.Certificate
}

func keepState(c tls.ConnectionState) tlsState {
	return tlsState{c.Version, c.CipherSuite, uint16(c.CurveID), c.DidResume,
		c.NegotiatedProtocol, c.ServerName, c.PeerCertificates, c.VerifiedChains}
}

// HandshakeTLS runs the server handshake on fd (which it takes over:
// closed on failure) until deadline, reading prefix (the bytes a sniffer
// already read) first. It blocks the calling goroutine. Under an
// OwnRecords config a TLS 1.3 session that did not negotiate HTTP/2 moves
// to the record layer of our own (OwnRecordLayer reports it).
func HandshakeTLS(fd int, prefix []byte, conf *tls.Config, deadline time.Time, remote net.Addr) (*TLSSession, error) {
	_, own := conf.KeyLogWriter.(keyLog)
	return handshakeTLS(fd, prefix, func(c net.Conn) *tls.Conn { return tls.Server(c, conf) }, deadline, remote, nil, own)
}

// ClientTLS runs a client handshake on fd (taken over: closed on failure)
// until deadline, then then (nil: nothing) on the blocking connection —
// e.g. a request and its answer read without reading past it (what the
// TLS layer has decrypted beyond is kept for the session). It blocks the
// calling goroutine. The session stays on crypto/tls.
func ClientTLS(fd int, conf *tls.Config, deadline time.Time, remote net.Addr, then func(*tls.Conn) error) (*TLSSession, error) {
	return handshakeTLS(fd, nil, func(c net.Conn) *tls.Conn { return tls.Client(c, conf) }, deadline, remote, then, false)
}

// handshakeTLS is HandshakeTLS and ClientTLS. It is a fault barrier: a
// panic in the handshake or in taking the keys over (our code parsing the
// client's handshake bytes) closes every descriptor it holds and returns
// a *Fault for the caller to judge (relay.Server.ContainFault); one that
// comes through then, the caller's code, is raised again.
func handshakeTLS(fd int, prefix []byte, mk func(net.Conn) *tls.Conn, deadline time.Time, remote net.Addr, then func(*tls.Conn) error, own bool) (sess *TLSSession, err error) {
	file := os.NewFile(uintptr(fd), "tls")
	hs, err := net.FileConn(file) // dups the descriptor
	file.Close()
	if err != nil {
		return nil, err
	}
	ad := &nbConn{prefix: prefix, hs: hs, fd: -1, remote: remote, logging: own}
	inThen, taken := false, !own
	defer func() {
		if v := recover(); v != nil {
			if !taken { // the secrets crypto/tls logged must not stay in the registry
				taken = true
				func() {
					defer func() { _ = recover() }()
					takeKeys(ad.logIn)
				}()
			}
			if inThen {
				panic(v)
			}
			if ad.hs != nil {
				ad.hs.Close()
			}
			if ad.fd >= 0 {
				rawClose(ad.fd)
			}
			sess, err = nil, &Fault{Value: v, Stack: debug.Stack()}
		}
	}()
	tc := mk(ad)
	// The socket's deadline bounds the handshake (HandshakeContext would
	// close the conn from another goroutine when its context ends).
	_ = hs.SetDeadline(deadline)
	err = tc.Handshake()
	if err == nil && then != nil {
		inThen = true
		err = then(tc)
		inThen = false
	}
	var keys *trafficSecrets
	if own {
		taken = true
		keys = takeKeys(ad.logIn) // whatever the outcome: the registry keeps nothing
	}
	if err == nil {
		ad.fd, err = DupConn(hs)
	}
	hs.Close()
	ad.hs = nil
	if err == nil {
		err = unix.SetNonblock(ad.fd, true)
	}
	if err != nil {
		if ad.fd >= 0 {
			rawClose(ad.fd)
			ad.fd = -1
		}
		return nil, err
	}
	s := &TLSSession{tc: tc, ad: ad}
	if own {
		st := tc.ConnectionState()
		if st.Version == tls.VersionTLS13 && st.NegotiatedProtocol != "h2" && len(ad.logIn) < maxHandshakeLog && len(ad.logOut) < maxHandshakeLog {
			if rl, err := takeOver(ad.fd, st.CipherSuite, keys, ad.logIn, ad.logOut); err == nil {
				s.rl, s.tc, s.st = rl, nil, keepState(st)
			}
		}
		ad.logging, ad.logIn, ad.logOut = false, nil, nil
	}
	return s, nil
}

// OwnRecordLayer reports whether the session runs on the record layer of
// our own (else on crypto/tls).
func (s *TLSSession) OwnRecordLayer() bool { return s.rl != nil }

// State is the session's TLS state (client certificates, ALPN). On the
// own record layer its keying-material exporter is not available.
func (s *TLSSession) State() tls.ConnectionState {
	if s.tc == nil {
		st := s.st
		return tls.ConnectionState{Version: st.version, HandshakeComplete: true, DidResume: st.resumed,
			CipherSuite: st.suite, CurveID: tls.CurveID(st.curve), NegotiatedProtocol: st.alpn,
			ServerName: st.sni, PeerCertificates: st.peers, VerifiedChains: st.chains}
	}
	return s.tc.ConnectionState()
}

// Fd implements Sock.
func (s *TLSSession) Fd() int { return s.ad.fd }

// bulkRecord is the least a record holds for Read to expect more behind it.
const bulkRecord = 1 << 10

// Read implements Sock: decrypted bytes, unix.EAGAIN when none are ready.
// TLS returns one record's data at a time; while records come in bulk
// (1 KiB and more), Read goes on filling p, so that a chunk read is
// written on as one chunk; after a small record (a message: most likely
// nothing follows yet) it returns rather than try another read. An error
// after some bytes is returned by the next call.
func (s *TLSSession) Read(p []byte) (int, error) {
	if s.rl != nil {
		return s.rl.Read(p)
	}
	n := 0
	for n < len(p) {
		m, err := s.tc.Read(p[n:])
		n += m
		switch {
		case err == nil && m > 0 && m < bulkRecord:
			return n, nil
		case err == nil: // bulk data, or a record without application data
			continue
		case n > 0:
			return n, nil
		case errors.Is(err, errWouldBlock):
			return 0, unix.EAGAIN
		default:
			return 0, err
		}
	}
	return n, nil
}

// Write implements Sock: it seals up to MaxTLSPending of p — as many
// records as that takes — and writes them with one write(2) (what the
// socket does not take stays pending for Flush). It refuses (EAGAIN) while
// earlier ciphertext is still pending, so at most one call's ciphertext is
// buffered.
func (s *TLSSession) Write(p []byte) (int, error) {
	if s.abandoned {
		return 0, errAbandoned
	}
	if s.rl != nil {
		return s.rl.Write(p)
	}
	if err := s.ad.flush(); err != nil {
		return 0, err
	}
	if len(p) > MaxTLSPending {
		p = p[:MaxTLSPending]
	}
	s.ad.sealing(true)
	n, err := s.tc.Write(p)
	s.ad.sealing(false)
	if err != nil {
		return n, err
	}
	if err := s.ad.flush(); err != nil && err != unix.EAGAIN {
		return n, err
	}
	return n, nil
}

// WriteAll encrypts all of b as one write (one record up to 16 KiB),
// keeping what the socket does not take now pending; it fails with
// ErrTLSPending once more than MaxTLSPending would be pending. Safe from
// any goroutine.
func (s *TLSSession) WriteAll(b []byte) (int, error) {
	if s.rl != nil {
		return s.rl.WriteAll(b)
	}
	return s.tc.Write(b)
}

// Sent counts the write(2) calls that moved ciphertext (a loop's stall
// check sees its client read by it). Any goroutine.
func (s *TLSSession) Sent() int {
	if s.rl != nil {
		s.rl.wmu.Lock()
		defer s.rl.wmu.Unlock()
		return s.rl.writes
	}
	s.ad.mu.Lock()
	defer s.ad.mu.Unlock()
	return s.ad.writes
}

// Pending is the ciphertext the session keeps that its socket has not
// taken yet. Any goroutine.
func (s *TLSSession) Pending() int {
	if s.rl != nil {
		s.rl.wmu.Lock()
		defer s.rl.wmu.Unlock()
		return s.rl.pendingLocked()
	}
	s.ad.mu.Lock()
	defer s.ad.mu.Unlock()
	return len(s.ad.pending)
}

// Flush implements Sock.
func (s *TLSSession) Flush() error {
	if s.abandoned {
		return errAbandoned
	}
	if s.rl != nil {
		return s.rl.Flush()
	}
	return s.ad.flush()
}

// Close implements Sock. A close_notify is sent if the socket takes it at
// once (one non-blocking write; none after Blocking on crypto/tls, where
// it could block).
func (s *TLSSession) Close() error {
	if s.rl != nil {
		if !s.abandoned {
			s.rl.closeNotify(true)
		}
		s.rl.free()
	} else {
		if s.ad.hs == nil && !s.abandoned {
			s.sealCloseNotify()
			_ = s.ad.flush()
		}
		_ = s.tc.SetWriteDeadline(time.Now())
	}
	return s.ad.Close()
}

// sealCloseNotify puts a close_notify after what the session was given,
// for the next Flush to write: its last record (Goodbye sends it before
// the FIN; OpenSSL 3 clients take a FIN without it for a truncation
// attack, "unexpected eof while reading"). An abandoned session, or one
// handed off (Blocking), seals nothing here.
func (s *TLSSession) sealCloseNotify() {
	switch {
	case s.abandoned:
	case s.rl != nil:
		s.rl.sealCloseNotify()
	case s.ad.hs == nil:
		_ = s.tc.CloseWrite() // into the adapter's pending output: it never blocks
	}
}

// Blocking switches the session back to blocking I/O on Go's poller and
// returns it as a net.Conn (a *tls.Conn on crypto/tls), for a library that
// serves net.Conns (net/http). The loop must no longer hold the
// descriptor. Pending ciphertext is written first, through the poller: a
// client that does not take it within handoffFlushTimeout (10 s) fails
// the call. Closing the returned conn closes the socket.
//
// The descriptor stays non-blocking throughout: the loop's raw writes
// (raw.go) must never meet a blocking one, which would hold their P.
func (s *TLSSession) Blocking() (net.Conn, error) {
	fd, err := Dup(s.ad.fd)
	if err != nil {
		return nil, err
	}
	file := os.NewFile(uintptr(fd), "tls")
	hs, err := net.FileConn(file)
	file.Close()
	if err != nil {
		return nil, err
	}
	_ = hs.SetWriteDeadline(time.Now().Add(handoffFlushTimeout))
	if s.rl != nil {
		s.rl.wmu.Lock()
		s.rl.nc = hs
		s.rl.wmu.Unlock()
	} else {
		s.ad.hs = hs
	}
	if err := s.Flush(); err != nil {
		if s.rl != nil {
			s.rl.wmu.Lock()
			s.rl.nc = nil
			s.rl.wmu.Unlock()
			hs.Close()
		}
		return nil, err // the caller closes s (and hs with it, on crypto/tls)
	}
	_ = hs.SetWriteDeadline(time.Time{})
	if s.rl != nil {
		return &recordConn{s: s, nc: hs}, nil
	}
	return s.tc, nil
}

// handoffFlushTimeout bounds how long Blocking waits for a client to take
// the ciphertext still pending when its session is handed off (a
// variable for the tests).
var handoffFlushTimeout = 10 * time.Second

// recordConn is a session on the record layer of our own as a blocking
// net.Conn (after Blocking): one reader and one writer may run at once.
type recordConn struct {
	s      *TLSSession
	nc     net.Conn    // the blocking socket under it
	closed atomic.Bool // Close ran: a second one closes nothing
}

func (c *recordConn) Read(p []byte) (int, error) { return c.s.rl.Read(p) }

// Write writes all of p, in chunks of MaxTLSPending.
func (c *recordConn) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := c.s.rl.Write(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Close sends a close_notify if the socket takes it at once, then closes.
// A write in flight is not waited for (no close_notify then): closing the
// socket ends it, as net/http's Server.Close expects. Only the first call
// closes anything (net/http closes a connection twice: at Server.Close or
// a failed write, and as its goroutine ends); the others return
// net.ErrClosed, as tls.Conn's do: the descriptor's number may be another
// connection's by then.
func (c *recordConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return net.ErrClosed
	}
	c.s.rl.closeNotify(false) // gives back the write buffer; a reader may still hold the read one
	c.nc.Close()
	return rawClose(c.s.ad.fd)
}

func (c *recordConn) LocalAddr() net.Addr                { return c.nc.LocalAddr() }
func (c *recordConn) RemoteAddr() net.Addr               { return c.s.ad.remote }
func (c *recordConn) SetDeadline(t time.Time) error      { return c.nc.SetDeadline(t) }
func (c *recordConn) SetReadDeadline(t time.Time) error  { return c.nc.SetReadDeadline(t) }
func (c *recordConn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }
