package loop

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestListenerClosesOnce: once closed, a listener keeps its old descriptor
// number occupied (netpoll still epoll_ctl's that number when its loop shuts
// down: had it been reused, another connection would silently stop being
// polled) until release, and never touches the number after release (netpoll's
// own listener closes it a second time, destroying whatever socket got the
// number: a flaky "both ends EOF" in busy processes).
func TestListenerClosesOnce(t *testing.T) {
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old := l.Fd()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Fatal("dial after Close succeeded: the socket still listens")
	}
	if fd := l.Fd(); fd != -1 {
		t.Fatalf("Fd after Close = %d, want -1", fd)
	}
	if c, err := l.Accept(); c != nil || err != nil {
		t.Fatalf("Accept after Close = %v, %v; want nil, nil", c, err)
	}
	var held []int
	defer func() {
		for _, fd := range held {
			unix.Close(fd)
		}
	}()
	grab := func() int { // the lowest free number, held until the test ends
		fd, err := unix.Dup(0)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, fd)
		return fd
	}
	for range 64 {
		if grab() == old {
			t.Fatalf("descriptor %d handed out again while the closed listener still reserves it", old)
		}
	}
	if _, err := unix.GetsockoptInt(old, unix.SOL_SOCKET, unix.SO_TYPE); err != unix.ENOTSOCK {
		t.Fatalf("descriptor %d after Close: SO_TYPE err %v, want ENOTSOCK (the placeholder)", old, err)
	}

	l.Release()
	// Take the freed number back: the kernel hands out the lowest free
	// one, so open descriptors until we get it (other goroutines may race).
	victim := -1
	for range 64 {
		if fd := grab(); fd == old {
			victim = fd
			break
		}
	}
	if victim < 0 {
		t.Skip("could not get the freed descriptor number back")
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	l.Release()
	if _, err := unix.FcntlInt(uintptr(victim), unix.F_GETFD, 0); err != nil {
		t.Fatalf("descriptor %d, reused after release, was closed by the listener: %v", victim, err)
	}
}

// TestListenerAccept: Accept reports (nil, nil) when nothing is pending,
// then the peer's address for IPv4 and IPv6.
func TestListenerAccept(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		l, err := Listen(addr)
		if err != nil {
			if addr[0] == '[' {
				t.Logf("no IPv6 loopback: %v", err)
				continue
			}
			t.Fatal(err)
		}
		if c, err := l.Accept(); c != nil || err != nil {
			t.Fatalf("%s: Accept with nothing pending = %v, %v", addr, c, err)
		}
		d, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		var c net.Conn
		for deadline := time.Now().Add(5 * time.Second); c == nil && err == nil && time.Now().Before(deadline); {
			if c, err = l.Accept(); c == nil && err == nil {
				time.Sleep(time.Millisecond)
			}
		}
		if c == nil {
			t.Fatalf("%s: no connection accepted: %v", addr, err)
		}
		if got, want := c.RemoteAddr().String(), d.LocalAddr().String(); got != want {
			t.Errorf("%s: RemoteAddr = %s, want %s", addr, got, want)
		}
		// Set on the listener, inherited: no setsockopt per connection.
		if v, err := unix.GetsockoptInt(c.(*acceptedConn).Fd(), unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
			t.Errorf("%s: accepted socket's TCP_NODELAY = %d, %v; want it set", addr, v, err)
		}
		unix.Close(c.(*acceptedConn).Fd())
		d.Close()
		l.Close()
	}
}

// TestListenKeepsZone: a listener on an IPv6 link-local address reports
// the zone it was bound with ([fe80::…%eth0]:port), so logs and clients
// get an address they can dial.
func TestListenKeepsZone(t *testing.T) {
	ifs, _ := net.Interfaces()
	for _, ifi := range ifs {
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.To4() != nil || !ipn.IP.IsLinkLocalUnicast() {
				continue
			}
			l, err := Listen("[" + ipn.IP.String() + "%" + ifi.Name + "]:0")
			if err != nil {
				t.Skipf("cannot listen on %s%%%s: %v", ipn.IP, ifi.Name, err)
			}
			defer l.Close()
			if ta := l.Addr().(*net.TCPAddr); ta.Zone != ifi.Name {
				t.Fatalf("listener address %s, want zone %s", ta, ifi.Name)
			}
			return
		}
	}
	t.Skip("no IPv6 link-local address on this machine")
}
