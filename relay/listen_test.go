package relay

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestListenerClosesOnce: once closed, a listener never touches its old
// descriptor number again, even when the number has been handed out anew
// (netpoll's own listener closes it a second time, destroying whatever
// socket got the number: a flaky "both ends EOF" in busy processes).
func TestListenerClosesOnce(t *testing.T) {
	l, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old := l.Fd()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Take the freed number: the kernel hands out the lowest free one, so
	// open descriptors until we get it (other goroutines may race us).
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
	if c, err := l.Accept(); c != nil || err != net.ErrClosed {
		t.Fatalf("Accept after Close = %v, %v; want nil, net.ErrClosed", c, err)
	}
	if _, err := unix.FcntlInt(uintptr(victim), unix.F_GETFD, 0); err != nil {
		t.Fatalf("descriptor %d, reused after the listener closed, was closed by it: %v", victim, err)
	}
}

// TestListenerAccept: Accept reports (nil, nil) when nothing is pending,
// then the peer's address for IPv4 and IPv6.
func TestListenerAccept(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		l, err := listen(addr)
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
		unix.Close(c.(*acceptedConn).Fd())
		d.Close()
		l.Close()
	}
}
