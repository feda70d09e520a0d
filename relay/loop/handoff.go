package loop

import (
	"crypto/tls"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meetpoint/meetpoint/relay/reason"
)

// Handoff is a net.Listener fed by its owner: connections a loop's owner
// let go of, turned back into blocking net.Conns (Blocking), for a library
// that serves a listener (net/http, a TURN server).
type Handoff struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	addr  net.Addr
	// Active counts delivered connections not yet closed (the owner keeps
	// it).
	Active atomic.Int64
}

// NewHandoff returns a listener reporting addr as its address.
func NewHandoff(addr net.Addr) *Handoff {
	return &Handoff{conns: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

// Accept implements net.Listener.
func (h *Handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (h *Handoff) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

// Addr implements net.Listener.
func (h *Handoff) Addr() net.Addr { return h.addr }

// Deliver hands c to whoever serves the listener, waiting at most d; it
// reports false (c not taken) if nobody accepted it in time or the
// listener is closed.
func (h *Handoff) Deliver(c net.Conn, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case h.conns <- c:
		return true
	case <-h.done:
	case <-t.C:
	}
	return false
}

// HandedConn is a handed-off connection: what its first owner already
// read is read first, and closing it (once) tells End.
type HandedConn struct {
	net.Conn
	// Prefix is read before the socket.
	Prefix []byte
	// State is the TLS state, nil on plaintext.
	State *tls.ConnectionState
	// End is told, once, when the connection is closed.
	End  reason.Ender
	h    *Handoff
	once sync.Once
}

// Hand wraps nc for h (its Active count includes it until it is closed).
func (h *Handoff) Hand(nc net.Conn, prefix []byte, state *tls.ConnectionState, end reason.Ender) *HandedConn {
	h.Active.Add(1)
	return &HandedConn{Conn: nc, Prefix: prefix, State: state, End: end, h: h}
}

// Read implements net.Conn.
func (c *HandedConn) Read(p []byte) (int, error) {
	if len(c.Prefix) > 0 {
		n := copy(p, c.Prefix)
		c.Prefix = c.Prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// Close implements net.Conn.
func (c *HandedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.h.Active.Add(-1)
		c.End.End(reason.HTTP)
	})
	return err
}

// Blocking turns a socket a loop no longer holds into a blocking net.Conn
// on Go's poller: a plain descriptor through net.FileConn (sk is closed, the
// conn has a descriptor of its own), a TLS session through its Blocking
// (its TLS state is returned too). On error sk is closed.
func Blocking(sk Sock) (net.Conn, *tls.ConnectionState, error) {
	if ts, ok := sk.(*TLSSession); ok {
		nc, err := ts.Blocking()
		if err != nil {
			ts.Close()
			return nil, nil, err
		}
		st := ts.State()
		return nc, &st, nil
	}
	file := os.NewFile(uintptr(sk.Fd()), "handoff")
	nc, err := net.FileConn(file) // dups the descriptor
	file.Close()                  // and this closes sk's
	return nc, nil, err
}
