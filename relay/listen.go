package relay

import (
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// listener is the listening socket handed to netpoll's event loop.
//
// We do not use netpoll.CreateListener: its Close issues close(2) on the
// descriptor and then closes the *os.File that holds the same number, and
// it closes again when called twice. Between those closes another goroutine
// may have been given that number (an accepted socket, a descriptor dup'ed
// for a tunnel), which the second close then destroys. This listener owns
// one descriptor and closes it exactly once; Accept never touches a
// descriptor after Close.
type listener struct {
	addr net.Addr

	// mu is held shared by Accept and exclusively by Close, so that a
	// descriptor number is never used after it has been closed.
	mu     sync.RWMutex
	fd     int // non-blocking, close-on-exec; -1 once closed
	closed bool
}

// listen binds addr ("host:port", IPv4 or IPv6 literal) and returns a
// listener owning a non-blocking descriptor for it.
func listen(addr string) (*listener, error) {
	gl, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer gl.Close() // our duplicate keeps the socket listening
	rc, err := gl.(*net.TCPListener).SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &listener{addr: gl.Addr(), fd: fd}, nil
}

// Fd implements netpoll.Listener: the descriptor netpoll polls.
func (l *listener) Fd() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.fd
}

// Addr implements net.Listener.
func (l *listener) Addr() net.Addr { return l.addr }

// Close implements net.Listener; calls after the first do nothing.
func (l *listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	err := unix.Close(l.fd)
	l.fd = -1
	return err
}

// Accept implements net.Listener for netpoll's accept loop: it returns one
// connection, or (nil, nil) when none is pending (netpoll's convention for
// EAGAIN), or net.ErrClosed after Close. The returned connection's
// descriptor belongs to netpoll from then on. Cost: accept4 and one
// setsockopt (TCP_NODELAY, which netpoll sets only on its own type).
func (l *listener) Accept() (net.Conn, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, net.ErrClosed
	}
	for {
		fd, sa, err := unix.Accept4(l.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			return &acceptedConn{fd: fd, local: l.addr, remote: tcpAddrOf(sa)}, nil
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil, nil
		default:
			return nil, err
		}
	}
}

func tcpAddrOf(sa unix.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), a.Addr[:]...)), Port: a.Port}
	case *unix.SockaddrInet6:
		ta := &net.TCPAddr{IP: net.IP(append([]byte(nil), a.Addr[:]...)), Port: a.Port}
		if a.ZoneId != 0 {
			ta.Zone = strconv.Itoa(int(a.ZoneId))
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				ta.Zone = ifi.Name
			}
		}
		return ta
	}
	return &net.TCPAddr{}
}

// errNotForUse is returned by acceptedConn's I/O methods.
var errNotForUse = errors.New("relay: accepted socket belongs to netpoll")

// acceptedConn carries a freshly accepted descriptor and its addresses to
// netpoll, which copies them into its own connection and from then on owns
// the descriptor. It is not a usable net.Conn: its I/O methods fail, and
// Close does nothing (netpoll closes the descriptor).
type acceptedConn struct {
	fd            int
	local, remote net.Addr
}

func (c *acceptedConn) Fd() int                          { return c.fd }
func (c *acceptedConn) LocalAddr() net.Addr              { return c.local }
func (c *acceptedConn) RemoteAddr() net.Addr             { return c.remote }
func (c *acceptedConn) Read([]byte) (int, error)         { return 0, errNotForUse }
func (c *acceptedConn) Write([]byte) (int, error)        { return 0, errNotForUse }
func (c *acceptedConn) Close() error                     { return nil }
func (c *acceptedConn) SetDeadline(time.Time) error      { return errNotForUse }
func (c *acceptedConn) SetReadDeadline(time.Time) error  { return errNotForUse }
func (c *acceptedConn) SetWriteDeadline(time.Time) error { return errNotForUse }
