package relay

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// endless is a loop.Sock whose input never runs out: each read returns
// chunk bytes of whitespace (which the sniffer drops without keeping), or
// EAGAIN once limit bytes are read (0: never).
type endless struct {
	chunk, limit, read int
}

func (e *endless) Read(p []byte) (int, error) {
	if e.limit > 0 && e.read >= e.limit {
		return 0, unix.EAGAIN
	}
	n := min(len(p), e.chunk)
	for i := range p[:n] {
		p[i] = ' '
	}
	e.read += n
	return n, nil
}
func (e *endless) Write(p []byte) (int, error) { return len(p), nil }
func (e *endless) Flush() error                { return nil }
func (e *endless) Close() error                { return nil }
func (e *endless) Fd() int                     { return -1 }

// idleTransport is a transport that is never asked to let go here.
type idleTransport struct{}

func (idleTransport) write(b []byte) (int, error) { return len(b), nil }
func (idleTransport) release(bool)                {}
func (idleTransport) detach() (loop.Sock, error)  { return nil, net.ErrClosed }
func (idleTransport) discard()                    {}
func (idleTransport) home() *loop.Loop            { return nil }
func (idleTransport) drop(*loop.Loop)             {}

// rfConn is a connection in its first stage on a server that is not
// started.
func rfConn(t *testing.T) *conn {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Auth = acceptAll{}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, tk := idleConn(s)
	t.Cleanup(func() {
		c.mu.Lock()
		c.stopTimer()
		c.mu.Unlock()
		tk.End(reason.Shutdown)
	})
	return c
}

// idleConn is a connection of s from 127.0.0.1 on no socket
// (idleTransport), as a loop makes one for an accepted client, for tests
// that drive readFrom themselves; ending tk ends what it holds.
func idleConn(s *Server) (*conn, *ticket) {
	tk := s.newTicket(netip.MustParseAddr("127.0.0.1"))
	return s.newConn(idleTransport{}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, tk, func(*conn) {}), tk
}

// TestReadFromYieldsAfterATurn: a client whose input never runs out (here:
// endless whitespace, which no stage keeps or refuses) gets readTurn bytes
// read per turn of its loop, then the loop moves on (more: resumed next
// turn) — it cannot hold up the tunnels sharing the loop.
func TestReadFromYieldsAfterATurn(t *testing.T) {
	c := rfConn(t)
	src := &endless{chunk: 16 << 10}
	var dropped, unread bool
	done := make(chan bool, 1)
	go func() { done <- c.readFrom(src, make([]byte, 16<<10), &dropped, false, &unread) }()
	select {
	case more := <-done:
		if !more || !unread {
			t.Errorf("readFrom returned more=%v unread=%v with input left, want both true", more, unread)
		}
		if src.read > readTurn+16<<10 {
			t.Errorf("read %d bytes in one turn, want at most %d", src.read, readTurn+16<<10)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("readFrom never returned from a source that never runs out: the loop is stuck on one client")
	}
}

// TestReadFromShortReadEndsTurn: on an edge-triggered set a read shorter
// than the buffer means the socket was empty, so the turn ends without a
// read that would find nothing — unless a hang-up came with the event,
// which no later edge reports: then it reads on to the end.
func TestReadFromShortReadEndsTurn(t *testing.T) {
	c := rfConn(t)
	src := &endless{chunk: 100, limit: 1000}
	var dropped, unread bool
	if more := c.readFrom(src, make([]byte, 16<<10), &dropped, false, &unread); more || unread || src.read != 100 {
		t.Errorf("short read: more=%v unread=%v after %d bytes; want one read of 100 and the turn over", more, unread, src.read)
	}
	src = &endless{chunk: 100, limit: 1000}
	if more := c.readFrom(src, make([]byte, 16<<10), &dropped, true, &unread); more || unread || src.read != 1000 {
		t.Errorf("draining: more=%v unread=%v after %d bytes; want all 1000 read", more, unread, src.read)
	}
}

// TestOwed: a socket let go of with input left tells its next owner so,
// and the hang-up with it when epoll has reported it (once, to the first
// owner); nothing when all was read.
func TestOwed(t *testing.T) {
	for _, tc := range []struct {
		unread, hup bool
		want        uint32
	}{
		{false, false, 0},
		{false, true, 0},
		{true, false, unix.EPOLLIN},
		{true, true, unix.EPOLLIN | unix.EPOLLRDHUP},
	} {
		if got := owed(tc.unread, tc.hup); got != tc.want {
			t.Errorf("owed(%v, %v) = %#x, want %#x", tc.unread, tc.hup, got, tc.want)
		}
	}
}
