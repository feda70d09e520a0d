package loop

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Listener is a listening socket whose connections the loops accept.
// Serve registers it with every loop of a server (EPOLLEXCLUSIVE: a new
// connection wakes one waiting loop, or a few, not all of them); the loop that
// accepts a connection owns it from then on, so a socket has one owner
// from accept to close.
//
// Close unregisters the socket from every loop before it closes the
// descriptor: no loop ever polls, or removes from its epoll set, a number
// the kernel has given to another socket.
type Listener struct {
	addr net.Addr

	mu     sync.Mutex
	fd     int         // the socket; -1 once closed
	served []*acceptor // one per loop it is registered with (Serve)
}

// AcceptFunc takes a freshly accepted, non-blocking socket on loop l (the
// loop goroutine): it now owns fd. remote is the peer's address.
type AcceptFunc func(l *Loop, fd int, remote net.Addr)

// Listen binds addr ("host:port", IPv4 or IPv6 literal) and returns a
// Listener owning a non-blocking descriptor for it: plain TCP, or
// Multipath TCP with mptcp where the kernel has it (a client that does
// not offer MPTCP gets plain TCP from such a listener too). An MPTCP
// listener does not take TCP_USER_TIMEOUT, so the sockets it accepts do
// not inherit it.
func Listen(addr string, mptcp bool) (*Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(mptcp) // Go's default is MPTCP where the kernel has it
	gl, err := lc.Listen(context.Background(), "tcp", addr)
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

// Fd is the listening descriptor, or -1 once closed.
func (ln *Listener) Fd() int {
	ln.mu.Lock()
	defer ln.mu.Unlock()
	return ln.fd
}

// Addr is the bound address (with its port, when 0 was asked for).
func (ln *Listener) Addr() net.Addr { return ln.addr }

// Serve starts accepting on each of loops: each registers the socket and
// passes every connection it accepts to accept on its own goroutine. Call
// it once, before Close.
func (ln *Listener) Serve(loops []*Loop, accept AcceptFunc) error {
	ln.mu.Lock()
	defer ln.mu.Unlock()
	if ln.fd < 0 {
		return net.ErrClosed
	}
	for _, l := range loops {
		a := &acceptor{fd: ln.fd, accept: accept, l: l}
		ln.served = append(ln.served, a)
		l.Do(func() { a.arm(l) })
	}
	return nil
}

// Close stops accepting: each loop lets go of the socket, then it is
// closed (connections still in its backlog are reset). Calls after the
// first do nothing. It waits for the loops, so it must not be called on a
// loop goroutine.
func (ln *Listener) Close() error {
	ln.mu.Lock()
	fd, served := ln.fd, ln.served
	ln.fd, ln.served = -1, nil
	ln.mu.Unlock()
	if fd < 0 {
		return nil
	}
	var wg sync.WaitGroup
	for _, a := range served {
		wg.Add(1)
		if !a.l.Do(func() { a.disarm(a.l); wg.Done() }) {
			wg.Done() // the loop has stopped: its epoll set is gone
		}
	}
	wg.Wait()
	return unix.Close(fd)
}

// acceptPause is how long a loop stops accepting after accept(2) fails
// with something other than "nothing pending" (out of descriptors: the
// connection stays in the backlog, and a level-triggered listener would
// wake the loop at once, over and over).
const acceptPause = 100 * time.Millisecond

// acceptor is a Listener on one loop. fd, accept and l are fixed; the
// rest is loop-owned.
type acceptor struct {
	fd     int
	accept AcceptFunc
	l      *Loop

	armed  bool // in the loop's epoll set
	closed bool // the listener is closing: never armed again
}

// arm adds the listening socket to l's epoll set, level-triggered and
// exclusive.
func (a *acceptor) arm(l *Loop) {
	if a.closed || a.armed {
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(a.fd)}
	if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_ADD, a.fd, &ev); err != nil {
		l.log.Error("listener: epoll add", "err", err)
		return
	}
	l.eps[int32(a.fd)] = a
	a.armed = true
}

// disarm removes the listening socket from l's epoll set for good.
func (a *acceptor) disarm(l *Loop) {
	a.closed = true
	a.pause(l)
}

func (a *acceptor) pause(l *Loop) {
	if a.armed {
		l.Unregister(a.fd)
		a.armed = false
	}
}

// Event implements Pollee: accept one connection. The listener is
// level-triggered, so connections still pending wake a loop again (this
// one, or another one waiting): an accept per connection and no call that
// finds nothing, where accepting until EAGAIN costs one wasted accept per
// wake-up; and a burst of connections is spread over the loops' turns.
func (a *acceptor) Event(l *Loop, _ uint32) {
	for {
		fd, remote, err := accept4(a.fd)
		switch {
		case err == nil:
			a.accept(l, fd, remote)
			return
		case err == unix.EINTR, err == unix.ECONNABORTED:
			continue
		case err == unix.EAGAIN:
			return // another loop took it
		default:
			l.log.Warn("accept failed: pausing the listener", "err", err, "pause", acceptPause)
			a.pause(l)
			l.Watch(a, acceptPause)
			return
		}
	}
}

// accept4 is accept4(2) with SOCK_NONBLOCK|SOCK_CLOEXEC, and the peer's
// address decoded here: x/sys's Accept4 asks the kernel for the socket's
// protocol (getsockopt SO_PROTOCOL) on every IPv4 accept.
func accept4(lfd int) (int, net.Addr, error) {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	fd, _, errno := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&rsa)),
		uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if errno != 0 {
		return -1, nil, errno
	}
	return int(fd), addrOf(&rsa), nil
}

// localAddrOf is fd's own address (getsockname(2)), decoded as accept4
// decodes a peer's.
func localAddrOf(fd int) net.Addr {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	_, _, errno := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)))
	if errno != 0 {
		return &net.TCPAddr{}
	}
	return addrOf(&rsa)
}

// tcpAddr is a *net.TCPAddr with its IP's bytes beside it: one
// allocation per accepted socket instead of two.
type tcpAddr struct {
	a  net.TCPAddr
	ip [16]byte
}

// addrOf decodes an IPv4 or IPv6 socket address. Cost: one allocation
// (and, for an IPv6 address with a zone, the zone's name).
func addrOf(rsa *unix.RawSockaddrAny) net.Addr {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		x := new(tcpAddr)
		copy(x.ip[:], p.Addr[:])
		x.a = net.TCPAddr{IP: x.ip[:4:4], Port: int(portOf(p.Port))}
		return &x.a
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		x := new(tcpAddr)
		x.ip = p.Addr
		x.a = net.TCPAddr{IP: x.ip[:16:16], Port: int(portOf(p.Port))}
		ta := &x.a
		if p.Scope_id != 0 {
			ta.Zone = strconv.Itoa(int(p.Scope_id))
			if ifi, err := net.InterfaceByIndex(int(p.Scope_id)); err == nil {
				ta.Zone = ifi.Name
			}
		}
		return ta
	}
	return &net.TCPAddr{}
}

// portOf is a port in network byte order, as a number.
func portOf(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// Scan implements Scanner: re-arm after a pause.
func (a *acceptor) Scan(l *Loop, _ time.Time) time.Duration {
	a.arm(l)
	return -1
}

// Stop implements Stopper: the loop is stopping.
func (a *acceptor) Stop(l *Loop) { a.disarm(l) }
