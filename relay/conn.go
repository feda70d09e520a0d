package relay

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
)

// state is where a connection is on its way to a tunnel.
type state uint32

const (
	stSniff   state = iota // waiting for the first bytes
	stHTTP                 // reading an HTTP request head
	stRPC                  // JSON-RPC, not authenticated
	stAuthing              // Authenticate in flight
	stWaiting              // authenticated, in the registry, waiting for a partner
	stClaimed              // paired: being handed to a forwarder
	stClosed               // done
)

// conn is a connection while it lives on netpoll (everything before the
// tunnel). It costs ~700 B plus netpoll's 4 KiB input page.
//
// Locking: mu guards every field below it and every write to tr. tr.close
// is never called with mu held (netpoll may run close callbacks
// synchronously, and they take mu): functions that decide to close set
// closing, and unlock issues the close.
type conn struct {
	s       *Server
	tr      transport
	peer    net.Addr
	id      uint64    // set by track
	created time.Time // accept time
	adm     *admission

	// st is read without mu by Claim (CAS stWaiting → stClaimed); every other
	// transition happens under mu.
	st atomic.Uint32
	// cbDone is set by the close callback, which runs once.
	cbDone atomic.Bool

	mu          sync.Mutex
	closing     bool // Close must be issued by unlock
	closeIssued bool
	reason      Reason // why we closed; ReasonPeerClosed if the peer did

	ws       bool
	counted  bool // counted in connections_active
	dec      handshake.Decoder
	midFrame bool      // a WebSocket frame (or header) is partially read
	ctrlOp   ws.OpCode // control frame being assembled
	ctrl     []byte    // its payload (≤ 125 B)
	in       []byte    // unparsed bytes: HTTP head or TCP JSON (≤ limits)
	msg      []byte    // WebSocket text message being assembled (≤ MaxPreAuth)
	out      []byte    // scratch for replies

	timer     *time.Timer // inactive, then alone timeout
	hsTimer   *time.Timer // handshake timeout
	authTimer *time.Timer
	rpcTimer  *time.Timer
	authID    int
	authStart *AuthRequest // set by rpc, started by onRequest after unlock
	authNonce string
	notifID   int

	uuid, name string
	key        PairKey
	joined     time.Time
	dataLate   bool   // more bytes arrived after the claim than late may hold
	late       []byte // raw bytes that arrived after the claim (≤ MaxPreAuth)
	toTLS      bool   // sniffed a TLS ClientHello: released starts the handshake
	target     target // where a claimed connection goes (tunnel, TunnelProxy hub)
}

type connKey struct{}

func (s *Server) onPrepare(nc netpoll.Connection) context.Context {
	adm, r := s.admit(nc.RemoteAddr())
	if adm == nil {
		s.stats.closes[r].Inc()
		nc.Close()
		return context.Background()
	}
	tr := &netpollTransport{nc: nc, fd: -1}
	if f, ok := nc.(interface{ Fd() int }); ok {
		tr.fd = f.Fd()
	}
	c := s.newConn(tr, nc.RemoteAddr(), adm)
	if c == nil {
		adm.release()
		nc.Close()
		return context.Background()
	}
	_ = nc.AddCloseCallback(func(nc netpoll.Connection) error {
		var left []byte
		r := nc.Reader()
		if n := r.Len(); n > 0 {
			if p, err := r.Next(n); err == nil {
				left = append(left, p...)
			}
		}
		c.released(left)
		return nil
	})
	return context.WithValue(context.Background(), connKey{}, c)
}

// newConn creates and tracks a connection; nil if the server is closing.
func (s *Server) newConn(tr transport, peer net.Addr, adm *admission) *conn {
	c := &conn{s: s, tr: tr, peer: peer, created: time.Now(), adm: adm}
	c.dec.MaxFrame = int64(s.cfg.MaxPreAuth)
	if !s.track(c, true) {
		return nil
	}
	c.mu.Lock() // the timers' callbacks take mu: they must see both fields
	c.timer = time.AfterFunc(s.cfg.InactiveTimeout, c.onInactive)
	c.hsTimer = time.AfterFunc(s.cfg.HandshakeTimeout, c.onHandshakeTimeout)
	c.mu.Unlock()
	return c
}

// admission is a connection's place under the limits; release gives it
// back once, when the socket is finally closed.
type admission struct {
	l    *limiter
	ip   netip.Addr
	done atomic.Bool
}

func (s *Server) admit(peer net.Addr) (*admission, Reason) {
	ip := addrOf(peer)
	if r := s.lim.admit(ip); r != reasonCount {
		if r == ReasonBanned || r == ReasonLimitRate {
			s.log.Debug("connection refused", "peer", peer.String(), "reason", r.String())
		} else {
			s.log.Warn("connection refused", "peer", peer.String(), "reason", r.String())
		}
		return nil, r
	}
	return &admission{l: s.lim, ip: ip}, reasonCount
}

func (a *admission) release() {
	if a != nil && a.done.CompareAndSwap(false, true) {
		a.l.release(a.ip)
	}
}

func (c *conn) onHandshakeTimeout() {
	c.mu.Lock()
	switch state(c.st.Load()) {
	case stSniff, stHTTP:
		c.s.log.Debug("handshake timeout", "peer", c.peer.String())
		c.closeNow(ReasonHandshakeTimeout)
	}
	c.unlock()
}

// onRequest is netpoll's handler: it runs on a pooled goroutine when bytes
// arrive, and must consume all of them (netpoll calls it again while
// anything is left unread).
func (s *Server) onRequest(ctx context.Context, nc netpoll.Connection) error {
	c, _ := ctx.Value(connKey{}).(*conn)
	r := nc.Reader()
	if c == nil {
		_ = r.Skip(r.Len())
		return nc.Close()
	}
	c.mu.Lock()
	p, err := r.Next(r.Len())
	if err == nil {
		c.consume(p)
	}
	_ = r.Release()
	start := c.authStart
	c.authStart = nil
	c.unlock()
	if start != nil {
		c.startAuth(start)
	}
	return nil
}

// unlock releases mu and issues the Close decided under it, once.
func (c *conn) unlock() {
	doClose := c.closing && !c.closeIssued
	if doClose {
		c.closeIssued = true
	}
	c.mu.Unlock()
	if doClose {
		c.tr.close()
	}
}

// consume routes freshly read bytes to the current stage. p is only valid
// during the call. Called with mu held.
func (c *conn) consume(p []byte) {
	switch state(c.st.Load()) {
	case stClosed:
		return
	case stClaimed:
		c.stash(p)
		return
	}
	switch {
	case c.ws:
		c.consumeWS(p)
	case c.counted: // raw TCP JSON-RPC
		c.consumeJSON(p)
	default:
		c.sniff(p)
	}
}

// stash keeps bytes that arrived after the connection was claimed: a
// TunnelProxy endpoint gets them as its first input, a legacy tunnel
// refuses them (data before TunnelEstablished). Called with mu held.
func (c *conn) stash(p []byte) {
	if len(c.late)+len(p) > c.s.cfg.MaxPreAuth {
		c.dataLate = true
		return
	}
	c.late = append(c.late, p...)
}

// target receives a claimed connection once its transport let go of it.
type target interface {
	// ready is called once, without c.mu held; c.late holds what arrived
	// after the claim.
	ready(c *conn)
}

// fail ends the connection for reason. For WebSocket clients a close frame
// with code and text goes first. Called with mu held.
func (c *conn) fail(reason Reason, code ws.StatusCode, text string) {
	if state(c.st.Load()) == stClosed {
		return
	}
	if c.ws && code != 0 {
		c.write(handshake.AppendClose(c.out[:0], code, text))
	}
	c.closeNow(reason)
}

// closeNow marks the connection closed without writing anything.
func (c *conn) closeNow(reason Reason) {
	prev := state(c.st.Swap(uint32(stClosed)))
	if prev == stClosed {
		return
	}
	if prev == stWaiting {
		c.s.reg.Leave(c.key, c)
	}
	c.reason = reason
	c.closing = true
	c.stopTimers()
}

func (c *conn) stopTimers() {
	for _, t := range []*time.Timer{c.timer, c.hsTimer, c.authTimer, c.rpcTimer} {
		if t != nil {
			t.Stop()
		}
	}
}

// write sends b now. netpoll writes directly and waits (bounded by its write
// timeout) only if the socket buffer is full. Called with mu held.
func (c *conn) write(b []byte) {
	if len(b) == 0 || state(c.st.Load()) == stClosed {
		return
	}
	if err := c.tr.write(b); err != nil {
		c.closeNow(ReasonIOError)
	}
}

// writeMsg sends one JSON-RPC message: a TEXT frame on WebSocket, the bytes
// as they are on TCP. Called with mu held.
func (c *conn) writeMsg(msg []byte) {
	if c.ws {
		c.write(handshake.AppendFrame(make([]byte, 0, len(msg)+10), ws.OpText, true, msg))
		return
	}
	c.write(msg)
}

func (c *conn) onInactive() {
	c.mu.Lock()
	switch state(c.st.Load()) {
	case stSniff, stHTTP, stRPC, stAuthing:
		c.s.log.Debug("inactive timeout", "peer", c.peer.String())
		c.fail(ReasonInactiveTimeout, ws.StatusPolicyViolation, "Inactive timeout")
	}
	c.unlock()
}

func (c *conn) onAlone() {
	c.mu.Lock()
	if c.st.CompareAndSwap(uint32(stWaiting), uint32(stRPC)) {
		// st is no longer stWaiting: Leave ourselves, then close.
		c.s.reg.Leave(c.key, c)
		c.fail(ReasonAloneTimeout, ws.StatusPolicyViolation, "No partner arrived")
	}
	c.unlock()
}

func (c *conn) shutdown() {
	c.mu.Lock()
	c.fail(ReasonShutdown, ws.StatusGoingAway, "Server shutting down")
	c.unlock()
}

// Claim implements Joiner.
func (c *conn) Claim() bool { return c.st.CompareAndSwap(uint32(stWaiting), uint32(stClaimed)) }

// UUID implements Joiner.
func (c *conn) UUID() string { return c.uuid }

// released runs once the transport has let go of the socket (netpoll: after
// it stopped polling it, before it closes the descriptor). A claimed
// connection is handed to its target here; any other is finished. left is
// what the transport had read and nobody consumed.
func (c *conn) released(left []byte) {
	if !c.cbDone.CompareAndSwap(false, true) {
		return
	}
	c.mu.Lock()
	c.closing, c.closeIssued = true, true
	c.stopTimers()
	t := c.target
	if state(c.st.Load()) == stClaimed && t != nil {
		c.stash(left)
		c.mu.Unlock()
		c.s.track(c, false)
		t.ready(c)
		return
	}
	if c.toTLS {
		prefix := c.in
		c.mu.Unlock()
		c.s.track(c, false)
		s, err := c.tr.detach()
		if err != nil {
			c.adm.release()
			c.s.stats.closes[ReasonIOError].Inc()
			return
		}
		go c.s.startTLS(s.Fd(), prefix, c.peer, c.adm)
		return
	}
	prev := state(c.st.Swap(uint32(stClosed)))
	if prev == stWaiting {
		c.s.reg.Leave(c.key, c)
	}
	reason := c.reason
	c.mu.Unlock()
	c.tr.discard()
	c.adm.release()
	c.s.track(c, false)
	c.s.stats.closes[reason].Inc()
	c.uncount()
}

func (c *conn) uncount() {
	if !c.counted {
		return
	}
	if c.ws {
		c.s.stats.connsWS.Dec()
	} else {
		c.s.stats.connsTCP.Dec()
	}
}
