package relay

import (
	"github.com/cloudwego/netpoll"
	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/loop"
)

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
	detach() (loop.Sock, error)
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

func (t *netpollTransport) write(b []byte) (int, error) { return writeNow(t.fd, b) }

// writeNow writes a prefix of b to the non-blocking socket fd: all of it,
// or as much as the socket takes now (a short count, nil error), or an
// error.
func writeNow(fd int, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := unix.Write(fd, b[n:])
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
func (t *netpollTransport) detach() (loop.Sock, error) {
	fd, err := unix.FcntlInt(uintptr(t.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return loop.PlainSock(fd), nil
}

func (t *netpollTransport) discard() {} // netpoll closes the descriptor
