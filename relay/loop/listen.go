package loop

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Listener is a listening socket for netpoll's event loop (it implements
// netpoll.Listener and net.Listener).
//
// We do not use netpoll.CreateListener: its Close issues close(2) on the
// descriptor and then closes the *os.File that holds the same number, and
// it closes again when called twice. Between those closes another goroutine
// may have been given that number (an accepted socket, a descriptor dup'ed
// for a tunnel), which the second close then destroys.
//
// netpoll also keeps using the number after our Close: its server detaches
// the listener from its poller with epoll_ctl(DEL, number) when it shuts
// down, which may be well after a drain closed the socket, and removes from
// that poller whatever socket reused the number in between (that connection
// then never sees its bytes). So Close puts an inert eventfd in the
// socket's place (dup3), keeping the number occupied, and Release frees it
// once netpoll is done with the listener.
type Listener struct {
	addr net.Addr

	// mu is held shared by Accept and exclusively by Close, so that a
	// descriptor number is never used after it has been closed.
	mu     sync.RWMutex
	fd     int  // the socket; after Close its placeholder; -1 once released
	closed bool // the socket is closed (fd may still hold the placeholder)
}

// Listen binds addr ("host:port", IPv4 or IPv6 literal) and returns a
// Listener owning a non-blocking descriptor for it.
func Listen(addr string) (*Listener, error) {
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
	// Accepted sockets inherit TCP_NODELAY from the listening socket: set
	// once here, not once per connection.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &Listener{addr: withZone(gl.Addr(), addr), fd: fd}, nil
}

// withZone is a, with the IPv6 zone of the address it was asked for
// ("[fe80::1%eth0]:8443") where the kernel's answer has none, so that
// logs and clients see an address they can dial.
func withZone(a net.Addr, asked string) net.Addr {
	ta, ok := a.(*net.TCPAddr)
	host, _, err := net.SplitHostPort(asked)
	_, zone, hasZone := strings.Cut(host, "%")
	if !ok || err != nil || !hasZone || ta.Zone != "" {
		return a
	}
	c := *ta
	c.Zone = zone
	return &c
}

// Fd implements netpoll.Listener: the descriptor netpoll polls, or -1
// once closed (an event loop started after Close then fails to register it
// instead of polling the placeholder).
func (l *Listener) Fd() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return -1
	}
	return l.fd
}

// Addr implements net.Listener.
func (l *Listener) Addr() net.Addr { return l.addr }

// Close implements net.Listener: it closes the socket (new connections
// are refused from then on) but keeps its descriptor number occupied by a
// placeholder until Release. Calls after the first do nothing.
func (l *Listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	ph, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err == nil {
		err = unix.Dup3(ph, l.fd, unix.O_CLOEXEC) // closes the socket
		unix.Close(ph)
		if err == nil {
			return nil
		}
	}
	// No placeholder to be had: free the number now.
	err = unix.Close(l.fd)
	l.fd = -1
	return err
}

// Release closes the listener if need be and frees its descriptor number.
// Call it once netpoll has stopped using the listener (its event loop shut
// down). Calls after the first do nothing.
func (l *Listener) Release() {
	l.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
}

// Accept implements net.Listener for netpoll's accept loop: it returns one
// connection, or (nil, nil) when none is pending (netpoll's convention for
// EAGAIN). After Close it also returns (nil, nil): a poller that picked up
// an event just before the close then does nothing (given an error, netpoll
// would epoll_ctl the old number). The returned connection's
// descriptor belongs to netpoll from then on. Cost: one accept4 (the
// socket inherits the listener's TCP_NODELAY, which netpoll sets only on
// its own type).
func (l *Listener) Accept() (net.Conn, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, nil
	}
	for {
		fd, sa, err := unix.Accept4(l.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
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
