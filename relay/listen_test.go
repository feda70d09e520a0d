package relay

import (
	"bytes"
	"context"
	"fmt"
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
	l, err := listen("127.0.0.1:0")
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

	l.release()
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
	l.release()
	if _, err := unix.FcntlInt(uintptr(victim), unix.F_GETFD, 0); err != nil {
		t.Fatalf("descriptor %d, reused after release, was closed by the listener: %v", victim, err)
	}
}

// TestDrainKeepsListenerNumber: a connection that another server accepts
// while this one drains keeps being served after the drain ends. The drain
// closes the listening socket at once, but netpoll detaches the listener's
// number from its poller only when the server closes; a connection that got
// the number in between used to be detached in its place (whenever both sat
// on the same poller) and hang. Each round arranges for the other server's
// accept to get the number.
func TestDrainKeepsListenerNumber(t *testing.T) {
	b := startServer(t, nil)
	baddr := b.Addrs()[0].(*net.TCPAddr)
	hit := 0
	for round := range 4 {
		a := startServer(t, nil)
		ln := a.listeners[0]
		old := ln.Fd()
		x, y := pair(t, tcpURL(a), tcpURL(a), fmt.Sprint("drain-fd-", round), "")
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- a.Shutdown(ctx)
		}()
		waitFor(t, func() bool { return ln.Fd() == -1 }, "the drain to close the listener")
		// The client sockets take numbers ≥ 1000, so the relay's accept
		// gets the lowest free one: old, unless the listener still holds it.
		var cs []int
		for range 4 {
			fd := dialAbove(t, baddr)
			if err := rawHello(fd, 1); err != nil {
				t.Fatal(err)
			}
			cs = append(cs, fd)
		}
		b.mu.Lock()
		for c := range b.conns {
			if tr, ok := c.tr.(*netpollTransport); ok && tr.fd == old {
				hit++
			}
		}
		b.mu.Unlock()
		x.Close()
		y.Close()
		if err := <-done; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		for i, fd := range cs {
			if err := rawHello(fd, 2); err != nil {
				t.Fatalf("round %d: connection %d to the other server, after the drain: %v", round, i, err)
			}
		}
	}
	if hit > 0 {
		t.Errorf("the other server accepted %d connections on a number a draining listener still reserves", hit)
	}
}

// dialAbove connects to addr from a blocking socket numbered 1000 or more
// (leaving the low numbers to the relay's accept); 5 s receive timeout.
func dialAbove(t *testing.T, addr *net.TCPAddr) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	hi, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 1000)
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(hi) })
	tv := unix.Timeval{Sec: 5}
	if err := unix.SetsockoptTimeval(hi, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	sa := &unix.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	if err := unix.Connect(hi, sa); err != nil {
		t.Fatal(err)
	}
	return hi
}

// rawHello sends RemoteProxy.Hello on fd and reads the reply line.
func rawHello(fd, id int) error {
	req := fmt.Sprintf(`{"id":%d,"method":"RemoteProxy.Hello"}`+"\n", id)
	if _, err := unix.Write(fd, []byte(req)); err != nil {
		return err
	}
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.HasSuffix(got, []byte("\n")) {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return fmt.Errorf("reading the reply (got %q): %w", got, err)
		}
		if n == 0 {
			return fmt.Errorf("EOF before the reply (got %q)", got)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Contains(got, []byte(fmt.Sprintf(`"id":%d`, id))) {
		return fmt.Errorf("reply %q", got)
	}
	return nil
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
