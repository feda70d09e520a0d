package relay

import (
	"time"

	"github.com/meetpoint/meetpoint/relay/reason"
	"golang.org/x/sys/unix"
)

// lingerTimeout bounds a graceful close: how long the relay waits, after
// its last bytes and a FIN, for the client to close its side.
const lingerTimeout = time.Second

// goodbye is how the relay lets go of a socket it owns, from any
// goroutine: final (what it still owes the client: the rest of a reply, a
// WebSocket close frame) is written without blocking, then the socket is
// closed at once or, with linger, once the client has read it — the write
// side is shut (FIN) and the relay reads and discards until the client
// closes (EOF) or lingerTimeout passes. Closing with unread input at once
// would make the kernel send a reset, which can destroy the last reply
// before the client reads it (and a browser reports a WebSocket closed
// that way as unclean). The ticket ends with r when the socket is closed.
func (s *Server) goodbye(sk sock, final []byte, linger bool, tk *ticket, r reason.Reason) {
	f := s.pickForwarder(sk.Fd())
	if !f.do(func() { f.goodbye(sk, final, linger, tk, r) }) {
		sk.Close()
		tk.End(r)
	}
}

// goodbye is Server.goodbye on the loop goroutine.
func (f *forwarder) goodbye(sk sock, final []byte, linger bool, tk *ticket, r reason.Reason) {
	for len(final) > 0 {
		n, err := sk.Write(final)
		final = final[n:]
		if err != nil || n == 0 {
			break
		}
	}
	flushed := sk.Flush() == nil && len(final) == 0
	if !linger || !flushed || f.stopping.Load() {
		sk.Close()
		tk.End(r)
		return
	}
	l := &lingerer{sk: sk, tk: tk, r: r, until: time.Now().Add(lingerTimeout)}
	_ = unix.Shutdown(sk.Fd(), unix.SHUT_WR)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(sk.Fd())}
	if err := unix.EpollCtl(f.epfd, unix.EPOLL_CTL_ADD, sk.Fd(), &ev); err != nil {
		l.finish(f)
		return
	}
	f.eps[int32(sk.Fd())] = l
	f.lingering[l] = struct{}{}
	l.event(f, unix.EPOLLIN) // the client may have closed already
}

// lingerer is a socket closing gracefully: its input is read and thrown
// away until EOF. It holds no buffer (reads go to the loop's scratch).
type lingerer struct {
	sk    sock
	tk    *ticket
	r     reason.Reason
	until time.Time
}

// event implements pollee.
func (l *lingerer) event(f *forwarder, events uint32) {
	if f.scratch == nil {
		f.scratch = make([]byte, 16<<10)
	}
	for {
		n, err := unix.Read(l.sk.Fd(), f.scratch) // raw bytes, TLS or not: all discarded
		if n > 0 {
			continue
		}
		if err == unix.EINTR {
			continue
		}
		if err != unix.EAGAIN { // EOF or an error: done
			l.finish(f)
		}
		return
	}
}

// finish closes the socket and ends its ticket.
func (l *lingerer) finish(f *forwarder) {
	if _, ok := f.lingering[l]; ok {
		delete(f.lingering, l)
		delete(f.eps, int32(l.sk.Fd())) // closing the descriptor removes it from the epoll set
	}
	l.sk.Close()
	l.tk.End(l.r)
}

// scanLingering closes sockets whose client did not close in time.
func (f *forwarder) scanLingering(now time.Time) {
	for l := range f.lingering {
		if now.After(l.until) {
			l.finish(f)
		}
	}
}
