package loop

import (
	"errors"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sock is how a loop reads and writes one socket: a plain non-blocking
// descriptor, or a TLS session over one. Read and Write return unix.EAGAIN
// when they would block and io.EOF at the end of the stream.
type Sock interface {
	Read(p []byte) (int, error)
	// Write accepts a prefix of p (possibly buffering it, bounded, as TLS
	// records) and returns its length.
	Write(p []byte) (int, error)
	// Flush writes whatever Write buffered; unix.EAGAIN if some remains.
	Flush() error
	Close() error
	Fd() int
}

// sender is a Sock that keeps output it accepted but its socket has not
// taken yet (TLS ciphertext).
type sender interface {
	// Sent counts its write(2) calls that moved some of that output, so
	// that its owner sees a receiver take bytes while Write and Flush
	// still answer unix.EAGAIN.
	Sent() int
	// Pending is how many bytes of output it keeps.
	Pending() int
}

// PlainSock is a non-blocking socket descriptor owned by its holder.
type PlainSock int

// Fd implements Sock.
func (s PlainSock) Fd() int { return int(s) }

// Close implements Sock.
func (s PlainSock) Close() error { return rawClose(int(s)) }

// Flush implements Sock: nothing is buffered.
func (s PlainSock) Flush() error { return nil }

// Read implements Sock.
func (s PlainSock) Read(p []byte) (int, error) {
	n, err := rawRead(int(s), p)
	switch {
	case n > 0:
		return n, nil
	case err != nil:
		return 0, err
	default:
		return 0, io.EOF
	}
}

// Write implements Sock.
func (s PlainSock) Write(p []byte) (int, error) {
	n, err := rawWrite(int(s), p)
	if n < 0 {
		n = 0
	}
	return n, err
}

// Dup returns a close-on-exec duplicate of fd (so that a socket can
// outlive the library that owns fd).
func Dup(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}

// DupConn keeps a close-on-exec descriptor of our own for the socket
// behind Go's conn (which may then be closed: the socket lives on).
func DupConn(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, errors.New("loop: not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = Dup(int(s)) }); err != nil {
		return -1, err
	}
	return fd, derr
}
