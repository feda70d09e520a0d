package loop

import (
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// serveOn runs n loops serving l until the test ends; accepted sockets
// arrive on the channel with the loop that took them.
func serveOn(t *testing.T, l *Listener, n int) (<-chan accepted, []*Loop) {
	t.Helper()
	got := make(chan accepted, 64)
	var loops []*Loop
	for range n {
		lp, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		go lp.Run()
		t.Cleanup(lp.Stop)
		loops = append(loops, lp)
	}
	if err := l.Serve(loops, func(lp *Loop, fd int, remote net.Addr) {
		got <- accepted{lp, fd, remote}
	}); err != nil {
		t.Fatal(err)
	}
	return got, loops
}

type accepted struct {
	l      *Loop
	fd     int
	remote net.Addr
}

// TestListenerAcceptsOnLoops: connections are accepted on the loops that
// serve the listener, with the peer's address, for IPv4 and IPv6, each
// socket inheriting TCP_NODELAY from the listener.
func TestListenerAcceptsOnLoops(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		l, err := Listen(addr, false)
		if err != nil {
			if addr[0] == '[' {
				t.Logf("no IPv6 loopback: %v", err)
				continue
			}
			t.Fatal(err)
		}
		got, loops := serveOn(t, l, 2)
		for range 8 {
			d, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			var a accepted
			select {
			case a = <-got:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no connection accepted", addr)
			}
			if a.l != loops[0] && a.l != loops[1] {
				t.Fatalf("%s: accepted on a loop that does not serve the listener", addr)
			}
			if got, want := a.remote.String(), d.LocalAddr().String(); got != want {
				t.Errorf("%s: remote = %s, want %s", addr, got, want)
			}
			// Set on the listener, inherited: no setsockopt per connection.
			if v, err := unix.GetsockoptInt(a.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
				t.Errorf("%s: accepted socket's TCP_NODELAY = %d, %v; want it set", addr, v, err)
			}
			unix.Close(a.fd)
			d.Close()
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestListenerClosesOnce: Close takes the socket out of every loop's
// epoll set, then closes it: new connections are refused, nothing more is
// accepted, and a second Close does not close the number again (by then
// another socket may hold it).
func TestListenerClosesOnce(t *testing.T) {
	l, err := Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	got, loops := serveOn(t, l, 2)
	old := l.Fd()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, lp := range loops {
		done := make(chan bool)
		lp.Do(func() { done <- lp.Registered(old) })
		if <-done {
			t.Fatalf("descriptor %d still in a loop's epoll set after Close", old)
		}
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Fatal("dial after Close succeeded: the socket still listens")
	}
	if fd := l.Fd(); fd != -1 {
		t.Fatalf("Fd after Close = %d, want -1", fd)
	}
	// Take the freed number back: the kernel hands out the lowest free
	// one, so open descriptors until we get it (other goroutines may race).
	var held []int
	defer func() {
		for _, fd := range held {
			unix.Close(fd)
		}
	}()
	victim := -1
	for range 64 {
		fd, err := unix.Dup(0)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, fd)
		if fd == old {
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
	if _, err := unix.FcntlInt(uintptr(victim), unix.F_GETFD, 0); err != nil {
		t.Fatalf("descriptor %d, reused after Close, was closed by the listener: %v", victim, err)
	}
	select {
	case a := <-got:
		t.Fatalf("a connection was accepted after Close (fd %d)", a.fd)
	default:
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
			l, err := Listen("["+ipn.IP.String()+"%"+ifi.Name+"]:0", false)
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

// TestAddrOf decodes accept4's socket addresses (IPv4, IPv6, an IPv6
// zone given as its number when no interface has it) in one allocation.
func TestAddrOf(t *testing.T) {
	var v4 unix.RawSockaddrAny
	p4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&v4))
	p4.Family, p4.Addr, p4.Port = unix.AF_INET, [4]byte{127, 0, 0, 9}, 0x3412 // port 0x1234 in network order
	var v6 unix.RawSockaddrAny
	p6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(&v6))
	p6.Family, p6.Port = unix.AF_INET6, 0x5000
	p6.Addr[15] = 1
	var z6 unix.RawSockaddrAny
	q6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(&z6))
	*q6 = *p6
	q6.Addr[0], q6.Addr[1], q6.Scope_id = 0xfe, 0x80, 999999
	for _, tc := range []struct {
		rsa  *unix.RawSockaddrAny
		want string
	}{
		{&v4, "127.0.0.9:4660"},
		{&v6, "[::1]:80"},
		{&z6, "[fe80::1%999999]:80"},
		{new(unix.RawSockaddrAny), ":0"},
	} {
		if got := addrOf(tc.rsa).String(); got != tc.want {
			t.Errorf("addrOf = %s, want %s", got, tc.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = addrOf(&v4) }); n != 1 {
		t.Errorf("addrOf(IPv4): %v allocations, want 1", n)
	}
	// The IP does not alias the caller's buffer.
	a := addrOf(&v4).(*net.TCPAddr)
	p4.Addr[3] = 10
	if a.IP.String() != "127.0.0.9" {
		t.Errorf("addrOf aliases the sockaddr: %s", a.IP)
	}
}
