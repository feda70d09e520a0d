package relay

import (
	"net"
	"testing"
	"time"

	"github.com/cloudwego/netpoll"
	"golang.org/x/sys/unix"
)

// TestDrainedCounters checks the hand-over's drain test against the
// kernel's counters on a real socket: satisfied when what netpoll handed
// over accounts for every byte read from the socket, and refused (so the
// caller falls back to waiting for the buffer to settle) when the
// counters cannot be believed — as under qemu-user, whose TCP_INFO is 4
// bytes long and reports nothing received.
func TestDrainedCounters(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cl, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	raw, err := sc.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	_ = raw.Control(func(f uintptr) { fd = int(f) })

	if _, err := cl.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 600) // "netpoll" reads 600 of them
	if err := sc.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for n < len(buf) {
		m, err := sc.Read(buf[n:])
		if err != nil {
			t.Fatal(err)
		}
		n += m
	}
	empty := netpoll.NewReader(nil)
	tr := &netpollTransport{fd: fd, taken: true}
	if tr.drained(empty, 2000) {
		t.Fatal("drained although the kernel counts 1000 bytes received and netpoll handed over 2000: counters not believable must be refused")
	}
	tr.taken = false
	if tr.drained(empty, 600) {
		t.Fatal("drained without takeOver")
	}
	tr.taken = true
	if info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err != nil || info.Bytes_received == 0 {
		t.Skipf("no TCP_INFO byte counters here (old kernel or qemu-user): %v", err)
	}
	start := time.Now()
	if !tr.drained(empty, 600) {
		t.Fatal("not drained: the counters were available and account for every byte read")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("drained took %v with nothing in flight", d)
	}
}
