package relay

import (
	"io"

	"github.com/cloudwego/netpoll"
	"golang.org/x/sys/unix"
)

// sock is how a forwarding loop reads and writes one end of a tunnel: a
// plain non-blocking socket, or a TLS session over one. Read and Write return
// unix.EAGAIN when they would block and io.EOF at the end of the stream.
type sock interface {
	Read(p []byte) (int, error)
	// Write accepts a prefix of p (possibly buffering it, bounded, as TLS
	// records) and returns its length.
	Write(p []byte) (int, error)
	// Flush writes whatever Write buffered; unix.EAGAIN if some remains.
	Flush() error
	Close() error
	Fd() int
}

// plainSock is a non-blocking socket descriptor owned by the relay.
type plainSock int

func (s plainSock) Fd() int      { return int(s) }
func (s plainSock) Close() error { return unix.Close(int(s)) }
func (s plainSock) Flush() error { return nil }

func (s plainSock) Read(p []byte) (int, error) {
	n, err := unix.Read(int(s), p)
	switch {
	case n > 0:
		return n, nil
	case err != nil:
		return 0, err
	default:
		return 0, io.EOF
	}
}

func (s plainSock) Write(p []byte) (int, error) {
	n, err := unix.Write(int(s), p)
	if n < 0 {
		n = 0
	}
	return n, err
}

// transport carries a connection before its tunnel exists: netpoll for
// plain sockets, a forwarding loop for TLS sessions. When it lets go of the
// socket it calls conn.released exactly once, never with conn.mu held.
type transport interface {
	// write sends a prefix of b now, without blocking, and returns its
	// length: a short count means the client is not reading. Called with
	// conn.mu held.
	write(b []byte) (int, error)
	// release asks the transport to let go of the socket; conn.released
	// follows, possibly before release returns. Never called with conn.mu
	// held.
	release()
	// detach takes the socket over from the transport. Only inside
	// conn.released.
	detach() (sock, error)
	// discard disposes of the socket when it is not taken over.
	discard()
}

// netpollTransport is a connection on netpoll. netpoll reads it; the relay
// writes it directly and without blocking (netpoll's writer would wait,
// up to its write timeout, on a client that does not read), so netpoll
// never holds output of ours.
type netpollTransport struct {
	nc netpoll.Connection
	fd int
}

func (t *netpollTransport) write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := unix.Write(t.fd, b[n:])
		if m > 0 {
			n += m
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return n, nil
		case err != nil:
			return n, err
		case m == 0:
			return n, nil
		}
	}
	return n, nil
}

func (t *netpollTransport) release() { t.nc.Close() }

// detach takes a descriptor of our own: netpoll closes its own right after
// the close callback that calls this.
func (t *netpollTransport) detach() (sock, error) {
	fd, err := unix.FcntlInt(uintptr(t.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return plainSock(fd), nil
}

func (t *netpollTransport) discard() {} // netpoll closes the descriptor
