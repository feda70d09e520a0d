package relay

import (
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/loop"
)

// sockopts reads fd's keepalive settings: SO_KEEPALIVE, idle, interval,
// count (seconds) and TCP_USER_TIMEOUT (ms); -1: not readable.
func sockopts(t *testing.T, fd int) [5]int {
	t.Helper()
	var got [5]int
	for i, o := range [][2]int{{unix.SOL_SOCKET, unix.SO_KEEPALIVE}, {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL}, {unix.IPPROTO_TCP, unix.TCP_KEEPCNT}, {unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT}} {
		v, err := unix.GetsockoptInt(fd, o[0], o[1])
		if err != nil {
			v = -1 // an MPTCP listener has no TCP_USER_TIMEOUT
		}
		got[i] = v
	}
	return got
}

// serverSideFD waits for s to hold a plain connection and returns its
// socket (the test's one client).
func serverSideFD(t *testing.T, s *Server) int {
	t.Helper()
	fd := -1
	testutil.WaitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for c := range s.conns {
			if tr, ok := c.tr.(*plainTransport); ok && tr.fd >= 0 {
				fd = tr.fd
				return true
			}
		}
		return false
	}, "the client's connection on the server")
	return fd
}

// TestKeepaliveOnEverySocket: the relay's listeners carry the configured
// keepalive and TCP_USER_TIMEOUT, and a socket accepted from such a
// listener inherits them (so every client socket has them without a
// system call per accept); 0 turns keepalive off.
func TestKeepaliveOnEverySocket(t *testing.T) {
	k := Keepalive{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 4, UserTimeout: 9 * time.Second}
	s := startServer(t, func(c *Config) { c.Keepalive = k })
	want := [5]int{1, 7, 3, 4, 9000}
	if got := sockopts(t, s.listeners[0].Fd()); got != want {
		t.Errorf("listener: %v, want %v", got, want)
	}
	if s.userTimeoutPerConn {
		t.Error("a plain TCP listener took TCP_USER_TIMEOUT, yet the server sets it per connection")
	}
	// A client's socket on the server: keepalive and TCP_USER_TIMEOUT.
	cl, err := net.Dial("tcp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fd := serverSideFD(t, s)
	if got := sockopts(t, fd); got != want {
		t.Errorf("a client socket on the server: %v, want %v", got, want)
	}
	ln, err := loop.Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := k.applyKeepalive(ln.Fd()); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fd = -1
	for end := time.Now().Add(testutil.Patience); fd < 0 && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if fd, _, err = unix.Accept4(ln.Fd(), unix.SOCK_CLOEXEC); err != nil && err != unix.EAGAIN {
			t.Fatal(err)
		}
	}
	if fd < 0 {
		t.Fatal("nothing accepted")
	}
	defer unix.Close(fd)
	if got := sockopts(t, fd); [4]int(got[:4]) != [4]int(want[:4]) {
		t.Errorf("accepted socket: %v, want the listener's %v", got, want)
	}
	off := Keepalive{}
	if err := off.Apply(fd); err != nil || sockopts(t, fd)[0] != 0 {
		t.Errorf("keepalive off: %v %v", sockopts(t, fd), err)
	}
	cfg := DefaultConfig()
	cfg.Auth = acceptAll{}
	cfg.Keepalive.Count = 0
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "tcp-keepalive-count") {
		t.Errorf("a keepalive count of 0: %v", err)
	}
}

// TestMultipathTCPListener: listeners are plain TCP unless MultipathTCP
// asks otherwise; an MPTCP listener refuses TCP_USER_TIMEOUT, so then
// each accepted socket gets it, and still has it.
func TestMultipathTCPListener(t *testing.T) {
	k := Keepalive{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 4, UserTimeout: 9 * time.Second}
	s := startServer(t, func(c *Config) { c.Keepalive = k })
	if p, err := unix.GetsockoptInt(s.listeners[0].Fd(), unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || p != unix.IPPROTO_TCP {
		t.Errorf("default listener: protocol %d (%v), want TCP", p, err)
	}
	ms := startServer(t, func(c *Config) { c.Keepalive, c.MultipathTCP = k, true })
	p, err := unix.GetsockoptInt(ms.listeners[0].Fd(), unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil || p != unix.IPPROTO_MPTCP {
		t.Skipf("no Multipath TCP listener here (protocol %d, %v): the kernel has no MPTCP", p, err)
	}
	if !ms.userTimeoutPerConn {
		t.Error("an MPTCP listener, yet TCP_USER_TIMEOUT is not set per connection")
	}
	cl, err := net.Dial("tcp", ms.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if got := sockopts(t, serverSideFD(t, ms)); got[4] != 9000 {
		t.Errorf("a client socket from an MPTCP listener: %v, want TCP_USER_TIMEOUT 9000 ms", got)
	}
}
