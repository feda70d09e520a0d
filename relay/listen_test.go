package relay

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDrainKeepsListenerNumber: a connection that another server accepts
// while this one drains keeps being served after the drain ends, even when
// it got the number the draining listener had. Close takes the listener
// out of every loop's epoll set before it closes the socket, so no loop
// removes that number from its set later (under netpoll, which detached
// the listener's number only when the server closed, such a connection
// used to be detached in its place and hang). Each round arranges for the
// other server's accept to get the number.
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
			if tr, ok := c.tr.(*plainTransport); ok && tr.fd == old {
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
	t.Logf("%d connections of the other server got a drained listener's number", hit)
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

// TestDualStackListen: --listen [::]:PORT serves IPv4 and IPv6 clients on
// one socket (IPv4 peers appear as themselves, not as ::ffff: mapped).
func TestDualStackListen(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skip("no IPv6 on this machine")
	} else {
		ln.Close()
	}
	s := startServer(t, func(c *Config) { c.Listen = []string{"[::]:0"} })
	_, port, _ := net.SplitHostPort(s.Addrs()[0].String())
	a, b := pair(t, "tcp://127.0.0.1:"+port, "ws://[::1]:"+port+"/", "dual-stack", "")
	defer a.Close()
	defer b.Close()
	if _, err := a.Write([]byte("v4 to v6")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "v4 to v6" {
		t.Fatalf("%q %v", buf, err)
	}
	snap := s.Snapshot()
	for _, tun := range snap.Tunnels {
		for _, c := range []string{tun.A.Address, tun.B.Address} {
			if strings.HasPrefix(c, "[::ffff:") {
				t.Errorf("IPv4 peer shown mapped: %s", c)
			}
		}
	}
}
