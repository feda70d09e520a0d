package loop

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/reason"
)

// LingerTimeout bounds a graceful close: how long a loop waits, after its
// last bytes and a FIN, for the client to close its side.
const LingerTimeout = time.Second

// Goodbye is how a socket the loop's owner holds is let go of (loop
// goroutine only): final (what is still owed to the client: the rest of a
// reply, a WebSocket close frame) is written without blocking, then the
// socket is closed at once or, with linger, once the client has read it —
// the write side is shut (FIN) and the loop reads and discards until the
// client closes (EOF) or LingerTimeout passes. Closing with unread input
// at once would make the kernel send a reset, which can destroy the last
// reply before the client reads it (and a browser reports a WebSocket
// closed that way as unclean). end learns r when the socket is closed.
func (l *Loop) Goodbye(sk Sock, final []byte, linger bool, end reason.Ender, r reason.Reason) {
	l.goodbye(sk, final, linger, false, false, end, r)
}

// goodbye is Goodbye; hungUp: the client's side is known to be closed
// (epoll said EPOLLRDHUP or EPOLLHUP), so its input is read to the end at
// once and the socket closed without shutdown(2) (which fails with
// ENOTCONN on a socket the client reset); only input still arriving sends
// it on to lingering. registered: the socket is in this loop's epoll set
// (a pair's end): a lingering close keeps that entry (one EPOLL_CTL_MOD
// instead of a DEL and an ADD), and a socket closed at once leaves the set
// with its descriptor (no DEL).
func (l *Loop) goodbye(sk Sock, final []byte, linger, hungUp, registered bool, end reason.Ender, r reason.Reason) {
	for len(final) > 0 {
		n, err := sk.Write(final)
		final = final[n:]
		if err != nil || n == 0 {
			break
		}
	}
	if n, ok := sk.(closeNotifier); ok && len(final) == 0 {
		n.sealCloseNotify() // TLS: the close_notify goes before the FIN
	}
	flushed := sk.Flush() == nil && len(final) == 0
	if !linger || !flushed || l.Stopping() {
		if registered {
			delete(l.eps, int32(sk.Fd())) // closing the descriptor takes it out of the epoll set (one descriptor per socket)
		}
		sk.Close()
		end.End(r)
		return
	}
	g := &lingerer{sk: sk, end: end, r: r, until: time.Now().Add(LingerTimeout)}
	if registered {
		l.eps[int32(sk.Fd())] = g // the entry is the lingerer's from now on
	}
	if hungUp && g.drain(l) {
		return
	}
	if rawShutdown(sk.Fd(), unix.SHUT_WR) != nil { // ENOTCONN: the client reset it already
		g.finish(l)
		return
	}
	op := unix.EPOLL_CTL_ADD
	if registered {
		op = unix.EPOLL_CTL_MOD
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(sk.Fd())}
	if err := rawEpollCtl(l.epfd, op, sk.Fd(), &ev); err != nil {
		g.finish(l)
		return
	}
	l.eps[int32(sk.Fd())] = g
	l.lingering[g] = struct{}{}
	g.Event(l, unix.EPOLLIN) // the client may have closed already
}

// closeNotifier is a Sock whose protocol ends its stream in band before
// the TCP FIN (a TLS session's close_notify).
type closeNotifier interface{ sealCloseNotify() }

// GoodbyeFrom is Goodbye from any goroutine; if the loop has stopped the
// socket is closed at once.
func (l *Loop) GoodbyeFrom(sk Sock, final []byte, linger bool, end reason.Ender, r reason.Reason) {
	if !l.Do(func() { l.Goodbye(sk, final, linger, end, r) }) {
		sk.Close()
		end.End(r)
	}
}

// lingerer is a socket closing gracefully: its input is read and thrown
// away until EOF. It holds no buffer (reads go to the loop's scratch).
type lingerer struct {
	sk    Sock
	end   reason.Ender
	r     reason.Reason
	until time.Time
}

// Event implements Pollee.
func (g *lingerer) Event(l *Loop, events uint32) { g.drain(l) }

// drain reads and discards what the client sent; at its end (EOF or an
// error) it closes the socket and reports true.
func (g *lingerer) drain(l *Loop) bool {
	buf := l.Scratch()
	for {
		n, err := rawRead(g.sk.Fd(), buf) // raw bytes, TLS or not: all discarded
		if n > 0 || err == unix.EINTR {
			continue
		}
		if err != unix.EAGAIN { // EOF or an error: done
			g.finish(l)
			return true
		}
		return false
	}
}

// finish closes the socket and tells its owner. Closing the descriptor
// takes it out of the epoll set: the loop's sockets have one descriptor
// each (never dup'ed), so no epoll_ctl is needed.
func (g *lingerer) finish(l *Loop) {
	delete(l.lingering, g)
	if fd := int32(g.sk.Fd()); l.eps[fd] == Pollee(g) {
		delete(l.eps, fd)
	}
	g.sk.Close()
	g.end.End(g.r)
}

// scanLingering closes sockets whose client did not close in time.
func (l *Loop) scanLingering(now time.Time) {
	for g := range l.lingering {
		if now.After(g.until) {
			g.finish(l)
		}
	}
}
