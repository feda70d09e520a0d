package loop

import (
	"errors"
	"io"
	"testing"

	"golang.org/x/sys/unix"
)

// PlainSock's calls (raw system calls outside race builds) keep unix's
// contract: EAGAIN when nothing is there or no room is left, io.EOF at the
// end, the errno of a bad descriptor, and never a negative count.
func TestPlainSockContract(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := PlainSock(fds[0]), PlainSock(fds[1])
	buf := make([]byte, 64<<10)
	if n, err := a.Read(buf); n != 0 || err != unix.EAGAIN {
		t.Fatalf("empty read: %d, %v; want 0, EAGAIN", n, err)
	}
	if n, err := b.Write([]byte("hello")); n != 5 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	if n, err := a.Read(buf); n != 5 || err != nil || string(buf[:5]) != "hello" {
		t.Fatalf("read: %d, %v, %q", n, err, buf[:n])
	}
	for { // fill b's send buffer
		n, err := b.Write(buf)
		if err == unix.EAGAIN {
			if n != 0 {
				t.Fatalf("full: wrote %d with EAGAIN", n)
			}
			break
		}
		if err != nil || n <= 0 {
			t.Fatalf("write: %d, %v", n, err)
		}
	}
	if err := unix.Shutdown(fds[1], unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	for { // drain, then the end
		n, err := a.Read(buf)
		if errors.Is(err, io.EOF) {
			if n != 0 {
				t.Fatalf("EOF with %d bytes", n)
			}
			break
		}
		if err != nil || n <= 0 {
			t.Fatalf("drain: %d, %v", n, err)
		}
	}
	if err := rawShutdown(fds[0], unix.SHUT_WR); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	bad := PlainSock(-1) // never a closed descriptor: another test may have its number by now
	if n, err := bad.Read(buf); n != 0 || err != unix.EBADF {
		t.Fatalf("read of a bad descriptor: %d, %v; want 0, EBADF", n, err)
	}
	if n, err := bad.Write(buf[:1]); n != 0 || err != unix.EBADF {
		t.Fatalf("write to a bad descriptor: %d, %v; want 0, EBADF", n, err)
	}
	if err := bad.Close(); err != unix.EBADF {
		t.Fatalf("close of a bad descriptor: %v; want EBADF", err)
	}
	if err := rawEpollCtl(-1, unix.EPOLL_CTL_DEL, -1, nil); err != unix.EBADF {
		t.Fatalf("epoll_ctl on no set: %v; want EBADF", err)
	}
	if _, err := rawSplice(-1, -1, 1, unix.SPLICE_F_NONBLOCK); err != unix.EBADF {
		t.Fatalf("splice of bad descriptors: %v; want EBADF", err)
	}
}
