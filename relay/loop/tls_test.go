package loop

import (
	"testing"

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
