package client

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLocalIPPortAtConnect: a client given a source address binds it with
// IP_BIND_ADDRESS_NO_PORT, so its port is chosen at connect(2); where the
// option does not exist the dial still works.
func TestLocalIPPortAtConnect(t *testing.T) {
	supported := bindNoPortSupported(t)
	f := startFake(t, false)
	for _, url := range []string{f.tcpURL(), f.wsURL()} {
		r, err := dialRaw(context.Background(), url, nil, net.IPv4(127, 0, 0, 2))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if ip := r.Conn().LocalAddr().(*net.TCPAddr).IP; !ip.Equal(net.IPv4(127, 0, 0, 2)) {
			t.Fatalf("%s: connected from %v", url, ip)
		}
		if !supported {
			continue // the dial from 127.0.0.2 worked: that is all there is to check
		}
		rc, err := r.Conn().(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		rc.Control(func(fd uintptr) {
			v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT)
		})
		if gerr != nil || v != 1 {
			t.Fatalf("%s: IP_BIND_ADDRESS_NO_PORT = %d, %v", url, v, gerr)
		}
	}
}

// bindNoPortSupported reports whether this kernel takes
// IP_BIND_ADDRESS_NO_PORT (qemu's user-mode emulation, used for the arm64
// tests, does not).
func bindNoPortSupported(t *testing.T) bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
		t.Logf("IP_BIND_ADDRESS_NO_PORT not supported here (%v): checking that the dial works without it", err)
		return false
	}
	return true
}
