package loop

import (
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestNBConnWrite: the TLS adapter's Write honours io.Writer: n is the
// number of bytes accepted (it once returned 0 after a full write).
func TestNBConnWrite(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	nb := &nbConn{fd: fds[0]}
	defer nb.Close()
	p := []byte("hello, world")
	n, err := nb.Write(p)
	if err != nil || n != len(p) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(p))
	}
	// Past the socket's buffer the rest is pending, still accepted whole,
	// until MaxTLSPending.
	big := make([]byte, 1<<20)
	n, err = nb.Write(big)
	if err != ErrTLSPending || n >= len(big) {
		t.Fatalf("Write of 1 MiB to a full socket = %d, %v; want a short count and ErrTLSPending", n, err)
	}
}

// TestNBConnDeadlinesApart: in the blocking phase a write deadline does
// not end a read (it once set both, so a TLS WebSocket session that wrote
// with a 10 s deadline lost its reader after 10 s of silence).
func TestNBConnDeadlinesApart(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	f := os.NewFile(uintptr(fds[0]), "pair")
	hs, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	nb := &nbConn{hs: hs, fd: -1}
	defer hs.Close()
	if err := nb.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := nb.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil { // as a writer does after the reader set its own
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		_, _ = unix.Write(fds[1], []byte("late"))
	}()
	buf := make([]byte, 8)
	if n, err := nb.Read(buf); err != nil || string(buf[:n]) != "late" {
		t.Fatalf("read after the write deadline passed: %q, %v; want the bytes", buf[:n], err)
	}
	if _, err := nb.Write([]byte("x")); err == nil {
		t.Fatal("a write past its deadline succeeded")
	}
}
