package client

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLocalIPPortAtConnect: a client given a source address binds it with
// IP_BIND_ADDRESS_NO_PORT, so its port is chosen at connect(2).
func TestLocalIPPortAtConnect(t *testing.T) {
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
