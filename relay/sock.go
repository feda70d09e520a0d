package relay

import (
	"errors"
	"fmt"
	"runtime/debug"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// transport carries a connection before its tunnel exists, on a loop: a
// plain socket (plainTransport) or a TLS session (tlsTransport). When it
// lets go of the socket it calls conn.released exactly once, never with
// conn.mu held.
type transport interface {
	// write sends a prefix of b now, without blocking, and returns its
	// length: a short count means the client is not reading. Called with
	// conn.mu held.
	write(b []byte) (int, error)
	// release asks the transport to let go of the socket; conn.released
	// follows on the loop's goroutine (at once when onLoop: the caller is
	// that goroutine). Never called with conn.mu held.
	release(onLoop bool)
	// detach takes the socket over from the transport. Only inside
	// conn.released.
	detach() (loop.Sock, error)
	// discard disposes of the socket when it is not taken over.
	discard()
	// home is the loop whose goroutine reads the socket (static).
	home() *loop.Loop
	// drop lets go of the socket now; home's goroutine only, and only
	// once release was asked (a second call does nothing).
	drop(l *loop.Loop)
}

// writeNow writes a prefix of b to the non-blocking socket fd: all of it,
// or as much as the socket takes now (a short count, nil error), or an
// error.
func writeNow(fd int, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := loop.PlainSock(fd).Write(b[n:]) // a raw write (loop/raw.go)
		if m > 0 {
			n += m
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return n, nil
		case err != nil:
			return n, err
		case m == 0:
			return n, nil
		}
	}
	return n, nil
}

// plainTransport is a plaintext connection before its tunnel, on the
// epoll set of the loop that accepted it: read by loop l, written from any
// goroutine holding the conn's lock. It owns fd.
type plainTransport struct {
	l       *loop.Loop
	fd      int
	sk      loop.Sock // fd, as a Sock (made once: converting per read would allocate)
	c       *conn
	dropped bool // loop-owned: removed from the epoll set
	unread  bool // loop-owned: input may be left in the socket with no edge to come for it (readFrom)
	hup     bool // loop-owned: epoll reported the client's hang-up, which it reports once
}

// write sends a prefix of b now, without blocking: a short count means
// the client is not reading.
func (t *plainTransport) write(b []byte) (int, error) { return writeNow(t.fd, b) }

// release removes the connection from its loop, then releases it.
func (t *plainTransport) release(onLoop bool) { t.c.releaseVia(t.l, onLoop, t) }

func (t *plainTransport) home() *loop.Loop { return t.l }

// dropper is a transport that lets go of its socket on its loop.
type dropper interface{ drop(l *loop.Loop) }

// releaseVia runs d.drop, a transport's letting go, on its loop l: at
// once when onLoop (the caller is l's goroutine), else through Do; if l
// has stopped, c is released where it is. (An interface, not a method
// value: releasing on the loop allocates nothing.)
func (c *conn) releaseVia(l *loop.Loop, onLoop bool, d dropper) {
	if onLoop {
		d.drop(l)
	} else if !l.Do(func() { d.drop(l) }) {
		c.released(nil)
	}
}

// owed is what the next owner of a socket let go of must be told, as
// epoll will not say it again: input left behind (unread), and with it
// the client's hang-up if epoll reported one (hup) — a next owner that
// stops at a short read would otherwise never read the end of stream.
func owed(unread, hup bool) uint32 {
	switch {
	case !unread:
		return 0
	case hup:
		return unix.EPOLLIN | unix.EPOLLRDHUP
	}
	return unix.EPOLLIN
}

// drop lets go of the socket on its loop (dropFrom).
func (t *plainTransport) drop(l *loop.Loop) {
	if !t.dropped {
		t.dropped = true
		t.c.dropFrom(l, t.fd, owed(t.unread, t.hup))
	}
}

func (t *plainTransport) detach() (loop.Sock, error) { return loop.PlainSock(t.fd), nil }
func (t *plainTransport) discard()                   { loop.PlainSock(t.fd).Close() }

// Event implements loop.Pollee. A hang-up, an error or urgent data
// (whose mark stops a read short with more behind it) is read to EAGAIN.
func (t *plainTransport) Event(l *loop.Loop, events uint32) {
	t.hup = t.hup || events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0
	if events&unix.EPOLLOUT != 0 {
		t.c.writable()
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		t.read(l, events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLPRI) != 0)
	}
}

// read feeds the conn what arrived (conn.readFrom).
func (t *plainTransport) read(l *loop.Loop, drain bool) {
	if t.c.readFrom(t.sk, l.Scratch(), &t.dropped, drain, &t.unread) {
		l.Again(t)
	}
}

// Resume implements loop.Resumer: go on reading after readTurn.
func (t *plainTransport) Resume(l *loop.Loop) { t.read(l, true) }

// Stop implements loop.Stopper: the loop is stopping; the connection lets
// go at once.
func (t *plainTransport) Stop(l *loop.Loop) {
	t.c.stopping()
	t.drop(l)
}

// dropFrom takes fd, c's socket, out of loop l's epoll set and releases c.
// A socket going to a tunnel stays parked in the set meanwhile, so that a
// tunnel started on this loop takes it over without a DEL and an ADD
// (loop.Park); only a tunnel's, as the pair keeps the descriptor as it is
// (a TLS hand-over or an HTTP hand-off dups it, and an epoll entry lives
// as long as any descriptor of its socket, so the entry must go first).
// When the tunnel's other side lives on this loop too, its release (queued
// on the loop by pairUp) runs here, while fd is still parked: the tunnel
// then starts on this loop with both entries taken over. Loop goroutine.
func (c *conn) dropFrom(l *loop.Loop, fd int, owed uint32) {
	c.mu.Lock()
	var park bool
	var p *conn
	if cl := c.cl; cl != nil {
		_, park = cl.target.(*tunnel)
		p, cl.partner = cl.partner, nil
	}
	park = park && state(c.st.Load()) == stClaimed
	c.mu.Unlock()
	if !park {
		l.Unregister(fd)
		c.released(l)
		return
	}
	l.Park(fd, owed)
	c.released(l)
	if p != nil && p.tr.home() == l {
		p.tr.drop(l)
	}
	l.Unpark(fd)
}

// readTurn bounds what one connection reads per turn of its loop before
// the loop serves its other sockets: a client flooding its pre-tunnel
// stages cannot hold up the tunnels on the same loop.
const readTurn = 64 << 10

// readFrom feeds c's stages from sk, a socket on c's loop (plainTransport,
// tlsTransport), until it would block, and reports whether it stopped at
// readTurn with more to read (the transport then resumes on the loop's
// next turn). It stops early once dropped, or once c is claimed for a
// hand-off to net/http — what follows (a request body) then stays in the
// socket, which goes along whole. A socket that ended (EOF, an error) ends
// c as peer_closed. Loop goroutine only: a release decided here drops the
// socket at once (transport.release(true)).
//
// Unless drain is set, a read shorter than buf ends the turn: the socket's
// queue was empty at that instant, and on an edge-triggered epoll set what
// arrives later is a new event, so the read that would find nothing is
// saved. drain is for a hang-up reported with the event (no further edge
// comes for it) and for sources that hold bytes outside the socket (TLS).
func (c *conn) readFrom(sk loop.Sock, buf []byte, dropped *bool, drain bool, unread *bool) (more bool) {
	c.mu.Lock()
	handing := c.handingOff()
	c.mu.Unlock()
	*unread = drain // a hang-up not yet read, until a read ends the turn
	for read := 0; !*dropped && !handing; {
		if read >= readTurn {
			return true
		}
		n, err := c.read(sk, buf)
		if n > 0 {
			read += n
			// If the stage lets go of the socket now (unlockOn), what
			// the next owner must still read without an edge to come.
			*unread = drain || n == len(buf)
			c.mu.Lock()
			c.feed(buf[:n])
			handing = c.handingOff()
			c.unlockOn(true)
			if n < len(buf) && !drain {
				*unread = false
				return false
			}
			continue
		}
		if err == unix.EINTR {
			continue
		}
		*unread = false
		switch err {
		case unix.EAGAIN:
		case errFault:
			c.ended(reason.Fault)
		default:
			c.ended(reason.PeerClosed)
		}
		return false
	}
	return false
}

// errFault is what read returns for a read that panicked.
var errFault = errors.New("relay: internal fault while reading")

// read is sk.Read behind a fault barrier of its own: a TLS session parses
// the client's records in Read, outside consume and without mu. A panic
// there ends the connection (readFrom: errFault, the reason Fault) and is
// logged (logFault), as in faulted; the session is abandoned (it closes
// sending nothing) and its own locks are released by defer
// (loop/tls13.go), so closing it takes them safely. Under the package's tests the panic is
// raised again (faultsFatal).
func (c *conn) read(sk loop.Sock, buf []byte) (n int, err error) {
	defer func() {
		if v := recover(); v != nil {
			if c.s.faultsFatal {
				panic(v)
			}
			c.s.logFault("internal error: the relay panicked reading a connection's socket; the connection is ended (internal_fault), the relay serves on",
				v, debug.Stack(), "peer", c.peer.String())
			loop.Abandon(sk) // a session's write state is not to be trusted either: it closes sending nothing
			n, err = 0, errFault
		}
	}()
	return sk.Read(buf)
}

// feed is consume behind the fault barrier: a panic while consume parses
// what the client sent and runs its stage ends this connection, as
// internal_fault, logged with its stack (faulted), instead of ending the
// process and every tunnel it holds. Called with mu held; returns with it
// held. Cost: a deferred call per chunk read, no allocation.
//
// Why ending only the connection is safe: where consume and what it calls
// can panic, they hold no lock but c.mu (the registry's shard locks are
// held only around map operations, or released by defer), and c.mu stays
// held through the panic, so faulted ends c under its lock and readFrom
// unlocks it as usual. c's own fields may be half-changed: faulted needs
// only its state and its transport, and no more input is parsed.
//
// Not covered: a subsystem's code called from consume (a method handler,
// the URL-subscribe handler: c.calling) may hold locks of its own, which a
// panic would leave locked, hanging every connection that needs them; a
// restart is better than that, so such a panic is raised again. So is any
// panic under the package's tests (Server.faultsFatal). Outside consume,
// an authenticator has its own barrier (containAuth), tunnels theirs
// (Loop.contain), the stage timer its own (containExpire).
func (c *conn) feed(p []byte) {
	defer c.contain()
	if h := c.s.inputHook; h != nil {
		h(p)
	}
	c.consume(p)
}

// contain is feed's barrier: it recovers a panic and ends c (faulted),
// or raises it again where ending c alone would not be safe. Deferred
// by feed, with mu held.
func (c *conn) contain() {
	if v := recover(); v != nil {
		c.endFault(v, "internal error: the relay panicked on a connection's input; the connection is ended (internal_fault), the relay serves on")
	}
}

// endFault is the rule the barriers around c's own stage logic (contain,
// containExpire) share for panic v: raised again where it may have come
// through a subsystem's code (c.calling) or under the package's tests
// (faultsFatal), otherwise c ends (faulted, msg its log line). Called
// from the barrier's deferred function, so that the stack it logs is
// still the panic's; mu held.
func (c *conn) endFault(v any, msg string) {
	if c.calling > 0 || c.s.faultsFatal {
		panic(v)
	}
	c.faulted(msg, v, debug.Stack())
}

// faulted ends c after its input, its authenticator or its stage timer
// made the relay panic (msg is the log line that says which): no reply
// (what was queued may be half-written), no lingering, no authenticator
// started for what the same read asked, the reason Fault, and an error
// log with the panic and the stack where it happened (logFault). Called
// with mu held.
//
// The client's address is not charged (as a failed authentication is):
// a fault is the relay's bug, like any bad input it costs one connection
// and one log line, and a fleet node re-encoding its clients' requests
// (Mesh.Join) would be banned for an attacker's input.
func (c *conn) faulted(msg string, v any, stack []byte) {
	c.s.logFault(msg, v, stack, "peer", c.peer.String(), "state", state(c.st.Load()).String())
	c.out.Take()
	c.in, c.msg = nil, nil
	c.linger = false
	if c.au != nil {
		c.au.authStart = false
	}
	c.close(reason.Fault)
}

// logFault logs a contained panic at error level, with attrs, the panic
// and the stack where it happened (its arguments are machine words, never
// a connection's bytes). A stack is several KiB: only the first
// faultStacks carry one, then one a minute (faultLogs), so that a client
// that found a bug cannot flood the log; meetpoint_closes_total counts
// them all.
func (s *Server) logFault(msg string, v any, stack []byte, attrs ...any) {
	attrs = append(attrs, "panic", fmt.Sprint(v))
	s.faultLogs.Do(func() { attrs = append(attrs, "stack", string(stack)) })
	s.log.Error(msg, attrs...)
}

// ContainFault is for a subsystem's own fault barrier (a TunnelProxy
// hub's): it reports whether panic v, recovered on a loop goroutine with
// stack, may be contained — the subsystem then ends what the panic
// touched and goes on — and logs it as the engine's barriers do, at error
// level with msg and attrs (logFault). False under test (strict.Faults):
// the caller raises the panic again.
func (s *Server) ContainFault(v any, stack []byte, msg string, attrs ...any) bool {
	if s.faultsFatal {
		return false
	}
	s.logFault(msg, v, stack, attrs...)
	return true
}

// faultStacks is how many contained panics are logged with their stack
// before the log of stacks is limited to one a minute.
const faultStacks = 10

// pairFault is the loops' fault barrier's (loop.Config.Fault): a panic
// while tunnel p forwarded ends that tunnel alone, logged here (logFault),
// and each of its ends is counted as internal_fault; under the package's
// tests it is raised again (faultsFatal).
func (s *Server) pairFault(p *loop.Pair, v any, stack []byte) bool {
	if s.faultsFatal {
		return false
	}
	var attrs []any
	if t, ok := p.Owner.(*tunnel); ok {
		attrs = append(attrs, "tunnel", t.id, "token", t.tokenHash(), "a", t.infoA.address.String(), "b", t.infoB.address.String())
	}
	s.logFault("internal error: the relay panicked while a tunnel forwarded; the tunnel is ended (internal_fault), the relay serves on",
		v, stack, attrs...)
	return true
}

// ended ends c after its socket on a loop failed or its client left; a
// claimed connection's target learns it (conn.close). The socket is done:
// nothing lingers for a client that will not read.
func (c *conn) ended(r reason.Reason) {
	c.mu.Lock()
	c.linger = false
	c.close(r)
	c.unlock()
}

// stopping ends c at once as its loop stops: a WebSocket client still gets
// its close frame if the socket takes it. The transport drops it next.
func (c *conn) stopping() {
	c.mu.Lock()
	c.fail(reason.Shutdown, "")
	c.flush()
	c.rel = relAsked
	c.mu.Unlock()
}
