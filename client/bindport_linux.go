package client

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// noPortAtBind lets a dialer with a local address (Options.LocalIP) leave
// the port to connect(2): with IP_BIND_ADDRESS_NO_PORT the kernel picks
// it for the whole 4-tuple, so a source address serves many destinations
// and loopback reuses ports in TIME_WAIT (net.ipv4.tcp_tw_reuse). Without
// it bind(2) picks a port no other socket on that address holds, TIME_WAIT
// ones included, and a client that opens and closes thousands of
// connections a second finds that search slower and slower until the
// range is exhausted. Best effort: where the option is missing (a kernel
// before 4.2, qemu's user-mode emulation) the dial goes on with the
// port picked at bind.
func noPortAtBind(_, _ string, c syscall.RawConn) error {
	return c.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
}
