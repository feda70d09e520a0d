package turn

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// TURN over TCP and TLS: pion serves each control connection the relay's
// dispatch table hands over until its client closes it, with no timeout
// of its own, so a connection that never allocates (or sends half a
// message and stalls), or whose allocation expired or was deleted, would
// hold a goroutine and a descriptor for good — up to the relay's
// per-address bound of handed-off connections from one address. Each is
// watched instead: one that has held no allocation for AllocateWithin is
// closed and counted (meetpoint_turn_closed_total, reason no_allocation
// or allocation_ended), as coturn closes a TCP session that has not
// allocated within its max-allocate-timeout. An RFC 6062 data connection
// (a ConnectionBind succeeded on it) is pion's to close with its peer
// connection, and is no longer watched.

// AllocateWithin is how long a TURN control connection over TCP or TLS
// may hold no allocation (from its start, or since its allocation ended)
// before it is closed: the time to make one (coturn's
// max-allocate-timeout, 60 s).
const AllocateWithin = 60 * time.Second

// connectionBindOK is the STUN message type of a ConnectionBind success
// response (RFC 6062: method 0x00b, class success): once written, the
// connection is a data connection.
const connectionBindOK = 0x010b

// controlListener is the listener pion serves TURN over TCP and TLS on:
// its connections are watched.
type controlListener struct {
	net.Listener
	s *Service
}

func (l *controlListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &controlConn{Conn: c, s: l.s, key: tupleKey(c.RemoteAddr()), last: time.Now()}
	cc.mu.Lock()
	cc.t = time.AfterFunc(l.s.watchEvery(), cc.check)
	cc.mu.Unlock()
	return cc, nil
}

// controlConn is a TURN control connection over TCP or TLS, closed when
// it has held no allocation for the Service's allocateWithin.
type controlConn struct {
	net.Conn
	s    *Service
	key  string      // its allocation's key (tupleKey)
	data atomic.Bool // a ConnectionBind succeeded: no longer watched

	// in holds what was read from the client and not yet handed to pion;
	// plain is set once the stream is not framed (a data connection, a
	// frame pion refuses): then it passes as it comes. Guarded by rmu,
	// which no blocking read holds: pion reads a data connection on a
	// goroutine of its own while its read loop may still call Read.
	rmu   sync.Mutex
	in    []byte
	plain bool

	mu     sync.Mutex
	t      *time.Timer // the next check; guarded by mu
	last   time.Time   // when it was accepted or last seen with an allocation; guarded by mu
	had    bool        // it has held an allocation; guarded by mu
	closed bool        // guarded by mu
}

// check closes c if it has held no allocation for allocateWithin, or
// looks again later.
func (c *controlConn) check() {
	if c.data.Load() {
		return
	}
	now := time.Now()
	alloc := c.s.hasAllocation(c.key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	switch {
	case alloc:
		c.last, c.had = now, true
	case now.Sub(c.last) >= c.s.allocateWithin:
		why := "no_allocation"
		if c.had {
			why = "allocation_ended"
		}
		c.s.closedCtl[why].Inc()
		c.s.log.Debug("turn connection closed", "client", c.Conn.RemoteAddr().String(), "reason", why)
		c.closed = true
		_ = c.Conn.Close() // pion's read fails: it deletes what is left and closes c
		return
	}
	c.t.Reset(c.s.watchEvery())
}

// Read hands pion one TURN frame (a STUN message or ChannelData) at a
// time, looked at first (noteRequest): pion then handles each before it
// reads again, as it does a datagram. A data connection's bytes, and
// anything that is no frame, pass as they come.
func (c *controlConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	for {
		if c.plain || c.data.Load() {
			c.plain = true
			if len(c.in) > 0 {
				n := copy(p, c.in)
				c.in = c.in[n:]
				c.rmu.Unlock()
				return n, nil
			}
			c.rmu.Unlock()
			return c.Conn.Read(p)
		}
		switch n := frameLen(c.in); {
		case n < 0 || n > len(p): // pion refuses it and closes the connection
			c.plain = true
			continue
		case n > 0 && n <= len(c.in):
			c.s.noteRequest(c.key, c.in[:n])
			copy(p, c.in[:n])
			c.in = c.in[n:]
			c.rmu.Unlock()
			return n, nil
		}
		if len(c.in) == 0 {
			c.in = nil // the buffer starts afresh, not after what was handed
		}
		c.rmu.Unlock()
		var buf [2048]byte
		k, err := c.Conn.Read(buf[:])
		c.rmu.Lock()
		c.in = append(c.in, buf[:k]...)
		if err != nil {
			if len(c.in) > 0 { // what came before the error: pion's to judge
				c.plain = true
				continue
			}
			c.rmu.Unlock()
			return 0, err
		}
	}
}

// frameLen is the length of the TURN frame b starts with, as pion frames
// a stream: a STUN message or ChannelData (padded to 4 bytes); 0: more
// is needed to tell; -1: b starts with no frame.
func frameLen(b []byte) int {
	switch {
	case len(b) < 4:
		return 0
	case b[0]>>6 == 1: // a channel number, 0x4000–0x7FFF
		return 4 + (int(binary.BigEndian.Uint16(b[2:4]))+3)&^3
	case b[0]>>6 != 0:
		return -1
	case len(b) < 8:
		return 0
	case binary.BigEndian.Uint32(b[4:8]) != stunMagic:
		return -1
	}
	return 20 + int(binary.BigEndian.Uint16(b[2:4]))
}

// Write writes to the client, noting a ConnectionBind success.
func (c *controlConn) Write(p []byte) (int, error) {
	if !c.data.Load() && len(p) >= 2 && binary.BigEndian.Uint16(p) == connectionBindOK {
		c.data.Store(true)
	}
	return c.Conn.Write(p)
}

// Close closes the connection and stops watching it.
func (c *controlConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.t.Stop()
	c.mu.Unlock()
	return c.Conn.Close()
}

// watchEvery is how often a control connection is looked at: a quarter of
// allocateWithin, so one is closed within 1.25 × allocateWithin of its
// last allocation.
func (s *Service) watchEvery() time.Duration { return s.allocateWithin / 4 }

// hasAllocation says whether the client whose allocation key is key holds
// an allocation, or a quota granted to one being made.
func (s *Service) hasAllocation(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.pending[key]
	return s.held[key] != nil || (h != nil && time.Since(h.at) <= reserveFor)
}
