package relay

import (
	"time"

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
	// taken: fd is a descriptor of our own (takeOver), netpoll's number
	// holds an inert eventfd. Set in the close callback only.
	taken bool
}

// takeOver makes the socket unreadable to netpoll before it is handed
// over, instead of trusting timing: netpoll detaches a connection from
// its poller before the close callback, but a read its poller already
// dispatched from the last epoll batch can still happen, and land in
// netpoll's buffer after the callback took what it held — the client's
// next bytes lost with that buffer (seen under CPU starvation in the
// events suite: a POST body 4,406 bytes short, its handler waiting for
// them). So the callback takes a descriptor of its own and puts an inert
// eventfd over netpoll's number: a read not yet begun gets EAGAIN from
// the eventfd, and the socket's bytes wait in the kernel for the new
// owner; drained waits for one already begun. netpoll's own close
// callback runs after this one: it waits for a read in progress on the
// operator and refuses later ones (FDOperator.unused) before it closes its
// number — the eventfd by then — so no read of netpoll's reaches a number
// reused by another socket. Cost: three syscalls per hand-over.
func (t *netpollTransport) takeOver() bool {
	if t.taken || t.fd < 0 {
		return t.taken
	}
	own, err := unix.FcntlInt(uintptr(t.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return false
	}
	ph, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(own)
		return false
	}
	err = unix.Dup3(ph, t.fd, unix.O_CLOEXEC) // netpoll closes the eventfd, not the socket
	unix.Close(ph)
	if err != nil {
		unix.Close(own)
		return false
	}
	t.fd, t.taken = own, true
	return true
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

// drained waits, after takeOver, until netpoll holds every byte it took
// from the socket, and reports whether it could tell. The kernel counts
// the bytes it received (TCP_INFO) and those still queued (FIONREAD):
// received − queued is what was read from the socket, all of it by
// netpoll before takeOver; got (handed to onRequest) plus r.Len() (still
// in netpoll's buffer) must reach it. A read in flight is counted once
// its goroutine runs again; 2 s at most (then the hand-over goes on with
// what there is). False when the counters cannot be had or are not
// believable (fewer bytes received than netpoll handed over): the caller
// then falls back to waiting for netpoll's buffer to hold still.
func (t *netpollTransport) drained(r netpoll.Reader, got int) bool {
	if !t.taken {
		return false
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		q1, err1 := unix.IoctlGetInt(t.fd, unix.SIOCINQ)
		info, err2 := unix.GetsockoptTCPInfo(t.fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		q2, err3 := unix.IoctlGetInt(t.fd, unix.SIOCINQ)
		if err1 != nil || err2 != nil || err3 != nil || int64(info.Bytes_received) < int64(got) {
			// No counters, or none to trust: a kernel before 4.1, or an
			// emulator (qemu-user copies 4 bytes of TCP_INFO, leaving
			// bytes received 0 below what netpoll has already handed over).
			return false
		}
		if q1 == q2 && int64(info.Bytes_received)-int64(q1) <= int64(got+r.Len()) {
			return true
		}
		if time.Now().After(deadline) {
			return true
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// detach takes a descriptor of our own (the one takeOver took, or a new
// dup): netpoll closes its own right after the close callback that calls
// this.
func (t *netpollTransport) detach() (loop.Sock, error) {
	if t.taken {
		t.taken = false // ours now belongs to the caller
		return loop.PlainSock(t.fd), nil
	}
	fd, err := unix.FcntlInt(uintptr(t.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return loop.PlainSock(fd), nil
}

// discard closes the descriptor takeOver took, if it was not detached;
// netpoll closes its own.
func (t *netpollTransport) discard() {
	if t.taken {
		t.taken = false
		unix.Close(t.fd)
	}
}
