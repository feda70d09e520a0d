package relay

import (
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
	"golang.org/x/sys/unix"
)

// A hang-up netpoll reports is checked before it is believed.
//
// netpoll's race-detector build (poll_default_linux_race.go) finds the
// connection an epoll event belongs to by its descriptor number, so an
// event still queued for a socket that was just closed can reach the new
// connection that reuses its number: a healthy client is "hung up" on
// (seen in TestRaceMatrix, about one connection in 70,000, the event an
// EPOLLRDHUP with nothing to read). The normal build keys events by
// pointer and is not affected, but the relay does not depend on it: when
// netpoll lets go of a connection before its tunnel without being asked,
// the relay peeks at the socket, and one that is still open moves to a
// forwarding loop (plainTransport) and goes on where it was. Counted in
// meetpoint_netpoll_rescued_total.

// rescue moves c to a forwarding loop if its socket is in fact alive. It
// is called in released, with c.mu held, for a connection netpoll closed
// on its own whose transport is still netpoll's; left is what netpoll had
// read. It reports whether c lives on (the caller then returns at once).
func (c *conn) rescue(left []byte) bool {
	nt, ok := c.tr.(*netpollTransport)
	if !ok || nt.fd < 0 {
		return false
	}
	switch state(c.st.Load()) {
	case stSniff, stHTTP, stRPC, stAuthing, stPlacing, stWaiting, stSubscribed:
	default:
		return false
	}
	if !alive(nt.fd) {
		return false // the hang-up is real
	}
	if !c.toLoop(nt, left) {
		return false
	}
	c.s.stats.rescued.Inc()
	return true
}

// toLoop moves c from netpoll (which is letting go of it) to a forwarding
// loop's epoll set, as a plainTransport: for a rescued connection, and for
// a subscriber, which idles there for a fraction of what a netpoll
// connection with its buffers costs. Called in released, mu held.
func (c *conn) toLoop(nt *netpollTransport, left []byte) bool {
	fd, err := unix.FcntlInt(uintptr(nt.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return false
	}
	l := c.s.pickLoop(fd)
	pt := &plainTransport{l: l, fd: fd, sk: loop.PlainSock(fd), c: c}
	c.tr = pt
	c.rel = relNone
	if len(left) > 0 {
		c.consume(left)
	}
	if !l.Do(func() {
		if err := l.Register(fd, pt); err != nil {
			pt.fail(reason.IOError)
			return
		}
		pt.readAll(l)
	}) {
		c.close(reason.Shutdown) // the loop has stopped: the server is closing
	}
	return true
}

// aliveOnNetpoll reports whether a claimed connection that netpoll let go
// of on its own still has a live socket: its hand-over then goes on (the
// socket is taken over anyway).
func (c *conn) aliveOnNetpoll() bool {
	nt, ok := c.tr.(*netpollTransport)
	return ok && nt.fd >= 0 && alive(nt.fd)
}

// alive reports whether socket fd is open at the other end as far as the
// kernel knows: something to read, or nothing yet (not EOF, not an error).
func alive(fd int) bool {
	var b [1]byte
	n, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return n > 0 || err == unix.EAGAIN
}

// plainTransport is a plaintext connection before its tunnel on a
// forwarding loop's epoll set instead of netpoll's (a rescued one): read by
// loop l, written from any goroutine holding the conn's lock. It owns fd.
type plainTransport struct {
	l       *loop.Loop
	fd      int
	sk      loop.Sock // fd, as a Sock (made once: converting per read would allocate)
	c       *conn
	dropped bool // loop-owned: removed from the epoll set
}

// write sends a prefix of b now (see netpollTransport.write).
func (t *plainTransport) write(b []byte) (int, error) { return writeNow(t.fd, b) }

// release removes the connection from its loop, then releases it.
func (t *plainTransport) release() {
	if !t.l.Do(func() { t.drop(t.l) }) {
		t.c.released(nil)
	}
}

func (t *plainTransport) drop(l *loop.Loop) {
	if t.dropped {
		return
	}
	t.dropped = true
	l.Unregister(t.fd)
	t.c.released(nil)
}

func (t *plainTransport) detach() (loop.Sock, error) { return loop.PlainSock(t.fd), nil }
func (t *plainTransport) discard()                   { unix.Close(t.fd) }

// Event implements loop.Pollee.
func (t *plainTransport) Event(l *loop.Loop, events uint32) {
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		t.readAll(l)
	}
}

func (t *plainTransport) readAll(l *loop.Loop) { t.c.readFrom(t.sk, l.Scratch(), &t.dropped) }

func (t *plainTransport) fail(r reason.Reason) { t.c.ended(r) }

// Stop implements loop.Stopper: the loop is stopping; the connection lets
// go at once.
func (t *plainTransport) Stop(l *loop.Loop) {
	t.c.stopping()
	t.drop(l)
}

// readFrom feeds c's stages from sk, a socket on a forwarding loop
// (plainTransport, tlsTransport), until it would block; it stops early
// once dropped, or once c is claimed for a hand-off to net/http — what
// follows (a request body) then stays in the socket, which goes along
// whole. A socket that ended (EOF, an error) ends c as peer_closed. Loop
// goroutine only.
func (c *conn) readFrom(sk loop.Sock, buf []byte, dropped *bool) {
	for !*dropped {
		c.mu.Lock()
		handing := state(c.st.Load()) == stClaimed && c.lateMax > 0
		c.mu.Unlock()
		if handing {
			return
		}
		n, err := sk.Read(buf)
		if n > 0 {
			c.mu.Lock()
			c.consume(buf[:n])
			c.unlock()
			continue
		}
		if err == unix.EINTR {
			continue
		}
		if err != unix.EAGAIN {
			c.ended(reason.PeerClosed)
		}
		return
	}
}

// ended ends c after its socket on a loop failed or its client left; a
// claimed connection's target learns it (conn.close).
func (c *conn) ended(r reason.Reason) {
	c.mu.Lock()
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
