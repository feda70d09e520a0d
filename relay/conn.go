package relay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/limits"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// state is where a connection is on its way to a tunnel:
//
//	sniff ─► http ─► rpc ─► authing ─► placing ─► waiting ─► claimed ══► target.ready
//	  │               │                  └─ (fleet: partner elsewhere) ─┤
//	  │               └──── (TunnelProxy register) ─────────────────────┤
//	  └──────────────── (TLS ClientHello) ──────────────────────────────┘
//
//	(placing only with a Fleet, for a key the local registry does not hold)
//
//	any state but claimed ─► closing ─► done (the ticket ends)
//
// A connection is claimed by its partner (a CAS from waiting, inside the
// registry, without the connection's lock) or by itself (a TunnelProxy
// registration, a TLS hand-over). The hand-over rule, which every path
// keeps: once a connection is claimed, its target receives it exactly
// once, through ready, whether its set-up succeeded or failed — a claimed
// connection never goes to closing. Failures after the claim (the client
// hung up, sent data too early, the server is shutting down) are recorded
// in failure and delivered with it. So a partner always gets either
// TunnelEstablished and a pipe or a close with a counted reason, and no
// descriptor, registry key or ticket is ever left behind.
type state uint32

const (
	stSniff      state = iota // waiting for the first bytes
	stHTTP                    // reading an HTTP request head
	stRPC                     // JSON-RPC, not authenticated
	stAuthing                 // Authenticate in flight
	stPlacing                 // authenticated, the fleet deciding where it pairs (Fleet.Place in flight)
	stWaiting                 // authenticated, in the registry, waiting for a partner
	stSubscribed              // an event subscriber (Conn.Subscribe): idle, receiving notifications
	stClaimed                 // given to a target; the transport is letting go of the socket
	stClosing                 // ending; the transport is letting go of the socket
	stDone                    // released: the socket belongs to its next owner, or is closed
)

// release is how far the transport's letting go has got.
type release uint8

const (
	relNone   release = iota // the transport holds the socket
	relWanted                // decided under mu: unlock asks the transport
	relAsked                 // the transport was asked; released follows
)

// conn is a connection before its tunnel, on netpoll (plain sockets) or on
// a forwarding loop (TLS). It costs ~600 B plus netpoll's 4 KiB input page.
//
// Locking: mu guards every field below it and every write to tr.
// tr.release is never called with mu held (netpoll may run the close
// callback synchronously, and it takes mu): code decides under mu
// (wantRelease) and unlock asks the transport. Lock order when two
// connections meet: the completing side's mu, then the registry shard
// (Join), released, then the waiting side's mu; a waiting connection never
// takes another connection's lock.
type conn struct {
	s       *Server
	tr      transport
	tk      *ticket
	peer    net.Addr
	id      uint64    // set by track
	created time.Time // accept time

	// st is the state. A partner claims a waiting connection with a CAS
	// (stWaiting → stClaimed) without mu; every other transition happens
	// under mu.
	st atomic.Uint32

	mu        sync.Mutex
	rel       release
	frozen    bool          // released: the connection belongs to its target or is gone; nothing changes it
	gone      bool          // released while claimed but before a target was set (pairUp delivers)
	sk        loop.Sock     // the socket, detached for the target when released while claimed
	reason    reason.Reason // closing: why; claimed: why the set-up failed, if failed
	failed    bool          // claimed: the set-up failed (reason says why)
	linger    bool          // closing: let the client read what we sent before the socket closes
	skipNL    bool          // claimed by a raw-TCP registration: drop the request's newline
	hello     bool          // sent RemoteProxy.Hello before its tunnel or registration (nymea's client library always does)
	ws        *handshake.Stream
	out       handshake.Queue // replies not yet written; kept for the target once claimed
	in        []byte          // unparsed input: first bytes, HTTP head, raw-TCP JSON (≤ budget)
	msg       []byte          // WebSocket text message being assembled (≤ MaxPreAuth)
	late      []byte          // claimed: input that arrived after the claim (≤ lateLimit)
	lateMax   int             // bound on late when not MaxPreAuth (a hand-off to net/http)
	lateMsg   bool            // claimed: a WebSocket data frame arrived after the claim
	streaming bool            // claimed for a hand-off with bytes flowing behind the request head (a body)
	got       int             // bytes netpoll has handed to onRequest (kept or skipped): what a hand-over checks the kernel against

	timer     *time.Timer // inactive, then alone timeout
	hsTimer   *time.Timer // handshake timeout
	authTimer *time.Timer
	rpcTimer  *time.Timer
	authID    int
	authStart *AuthRequest // set by rpc, started by unlock
	notifID   int

	uuid, name  string
	key         PairKey
	authed      bool                   // the authenticator accepted key.Token
	upgrade     []byte                 // a URL-token upgrade's 101 response, sent once the token is good
	onEnd       func()                 // a subscriber's: called once when the connection ends
	moving      bool                   // a subscriber leaving netpoll for a loop (released moves it)
	authThen    func(Conn, AuthResult) // Conn.Authenticate's: what to do with the answer (instead of pairing)
	subject     atomic.Pointer[string] // the authenticator's answer to who the client is (AuthRequest.SetSubject)
	lease       Lease                  // waiting: the fleet's hold on key for this node (nil without a fleet)
	absent      string                 // a mesh link's answer when nobody waits under its key
	degraded    bool                   // waiting while the fleet's store is unreachable: only a partner on this node can pair
	replaced    bool                   // placed again after waiting here (Watcher): a failed placement tells it to reconnect
	mesh        bool                   // a mesh link from another node (Conn.JoinMesh): subject is its client's identity, as that node logs it
	meshNode    string                 // with mesh: that node's id
	joined      time.Time
	established []byte // claimed by pairing: this side's TunnelEstablished
	target      target // where a claimed connection goes
}

// target receives a claimed connection once its transport has let go of
// it. ready is called exactly once per claimed connection, without c.mu
// held; c is then frozen: c.sk is the socket (nil if detaching failed),
// c.failed and c.reason say whether the set-up failed, c.out holds what
// the relay still owes the client, c.late what the client sent after the
// claim. ready owns the socket and the ticket from then on.
type target interface {
	ready(c *conn)
}

type connKey struct{}

func (s *Server) onPrepare(nc netpoll.Connection) context.Context {
	s.stats.accepted.Inc()
	key, r, ok := s.admit(nc.RemoteAddr())
	if !ok {
		s.stats.closes[r].Inc()
		nc.Close()
		return context.Background()
	}
	tk := s.newTicket(key)
	tr := &netpollTransport{nc: nc, fd: -1}
	if f, ok := nc.(interface{ Fd() int }); ok {
		tr.fd = f.Fd()
		_ = s.cfg.Keepalive.applyUserTimeout(tr.fd) // an MPTCP client's socket may refuse it: keepalive still holds
	}
	c := s.newConn(tr, nc.RemoteAddr(), tk)
	if c == nil {
		tk.End(reason.Shutdown)
		nc.Close()
		return context.Background()
	}
	_ = nc.AddCloseCallback(func(nc netpoll.Connection) error {
		var left []byte
		r := nc.Reader()
		c.mu.Lock()
		claimed := state(c.st.Load()) == stClaimed
		streaming := c.streaming && claimed
		handoff, got := claimed && c.lateMax > 0, c.got // claimed for net/http or STUN (toHandoff)
		if handoff {                                    // to net/http or STUN: bytes stream in behind the head
			tr.takeOver() // netpoll reads no more of the socket
		}
		c.mu.Unlock()
		if streaming && !(handoff && tr.drained(r, got)) {
			settleReader(r) // no TCP counters to believe: wait for the buffer to hold still
		}
		if n := r.Len(); n > 0 {
			if p, err := r.Next(n); err == nil {
				left = p
			}
		}
		c.released(left)
		return nil
	})
	return context.WithValue(context.Background(), connKey{}, c)
}

// newConn creates and tracks a connection; nil if the server is closing.
func (s *Server) newConn(tr transport, peer net.Addr, tk *ticket) *conn {
	c := &conn{s: s, tr: tr, peer: peer, created: time.Now(), tk: tk}
	if !s.register(c) {
		return nil
	}
	c.mu.Lock() // the timers' callbacks take mu: they must see both fields
	c.timer = time.AfterFunc(s.cfg.InactiveTimeout, c.onInactive)
	c.hsTimer = time.AfterFunc(s.cfg.HandshakeTimeout, c.onHandshakeTimeout)
	c.mu.Unlock()
	return c
}

// admit places a new connection under the limits: admitted (ok) with its
// limiter key, or refused for r.
func (s *Server) admit(peer net.Addr) (key netip.Addr, r reason.Reason, ok bool) {
	ip := limits.AddrOf(peer)
	key, r, ok = s.lim.Admit(ip)
	if ok {
		return key, r, ok
	}
	if r == reason.Banned || r == reason.LimitRate {
		s.log.Debug("connection refused", "peer", peer.String(), "reason", r.String())
	} else {
		s.log.Warn("connection refused", "peer", peer.String(), "reason", r.String())
	}
	return key, r, false
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
	n := r.Len()
	c.got += n
	take := min(n, c.readBudget())
	if p, err := r.Next(take); err == nil {
		c.consume(p)
	}
	if rest := n - take; rest > 0 && take+rest <= c.readBudget() {
		// What was read decided a hand-off to net/http, whose budget is a
		// whole request body (httpLateMax): the rest is that body.
		if p, err := r.Next(rest); err == nil {
			c.consume(p)
		}
		take = n
	}
	if over := take < n; over {
		// netpoll reads eagerly and without bound: a client whose unread
		// input outgrows what any stage before the tunnel accepts is
		// flooding, and is cut off before netpoll holds more of it. What
		// fits the budget was read first, so a client that merely sent
		// something too big hears why (e.g. a 1009 close).
		_ = r.Skip(r.Len())
		c.s.log.Debug("input before the tunnel over budget", "peer", c.peer.String())
		c.fail(reason.PreAuthLimit, "")
	}
	_ = r.Release()
	c.unlock()
	return nil
}

// settleReader waits until netpoll's read buffer for a closed connection
// holds still. netpoll detaches a connection from its poller without
// waiting for a read the poller is in the middle of, so bytes the client
// sent right up to the hand-off may land in the buffer after the close
// callback began — and would be lost with it (seen: a request body cut
// short, "malformed chunked encoding"). Only hand-offs with bytes flowing
// wait: at least 2 ms, until two 1 ms looks see no growth, at most 50 ms.
func settleReader(r netpoll.Reader) {
	deadline := time.Now().Add(50 * time.Millisecond)
	last, still := r.Len(), 0
	for still < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		if n := r.Len(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
}

// readBudget is the most input c may have consumed from netpoll so far:
// the pre-tunnel budget, or a hand-off's (lateMax). Called with mu held.
func (c *conn) readBudget() int {
	if c.lateMax > 0 {
		return c.lateMax
	}
	return c.s.inputBudget()
}

// inputBudget is the most input a connection may have waiting on netpoll
// before its tunnel: a WebSocket client's whole HTTP head and first
// message, with room for frame headers and pings, twice over.
func (s *Server) inputBudget() int { return 2*(s.cfg.MaxHeader+s.cfg.MaxPreAuth) + 4<<10 }

// consume routes freshly read bytes to the current stage. p is only valid
// during the call; every stage copies what it keeps, within its budget.
// Called with mu held.
func (c *conn) consume(p []byte) {
	switch st := state(c.st.Load()); {
	case st >= stClosing:
		return // ending: nothing more is read
	case st == stClaimed && c.ws == nil:
		c.stashLate(p) // raw, as it came: the target decides what it is
	case c.ws != nil:
		c.consumeWS(p)
	case st == stSniff:
		c.sniff(p)
	case st == stHTTP:
		c.httpHead(p)
	default:
		c.consumeJSON(p)
	}
}

// unlock writes what the relay owes the client, releases mu, then asks the
// transport to let go and starts an authenticator if the stage decided so.
func (c *conn) unlock() {
	c.flush()
	rel := c.rel == relWanted
	if rel {
		c.rel = relAsked
	}
	start := c.authStart
	c.authStart = nil
	c.mu.Unlock()
	if rel {
		c.tr.release()
	}
	if start != nil {
		c.startAuth(start)
	}
}

// flush writes the queued replies without blocking. A client that has not
// read what it was sent so far that the socket refuses more is closed as
// slow_reader: the relay never buffers for it. A claimed connection keeps
// its queue for the target. Called with mu held.
func (c *conn) flush() {
	if c.frozen || c.out.Len() == 0 {
		return
	}
	switch state(c.st.Load()) {
	case stClaimed, stDone:
		return
	}
	n, err := c.tr.write(c.out.B)
	c.out.Consumed(n)
	switch {
	case err != nil:
		c.out.Take()
		c.linger = false
		c.close(reason.IOError)
	case c.out.Len() > 0:
		c.s.log.Debug("client does not read its replies", "peer", c.peer.String())
		c.out.Take()
		c.linger = false
		c.close(reason.SlowReader)
	}
}

// send queues one JSON-RPC message: a TEXT frame on WebSocket, the bytes as
// they are on raw TCP. Called with mu held.
func (c *conn) send(msg []byte) {
	if c.out.Len()+len(msg) > handshake.QueueMax/2 {
		c.flush() // a batch of requests with large replies: write as we go
	}
	ok := false
	if c.ws != nil {
		ok = c.out.PushFrame(ws.OpText, msg)
	} else {
		ok = c.out.Push(msg)
	}
	if !ok {
		c.out.Take()
		c.close(reason.SlowReader)
	}
}

// close ends the connection for r; the first reason wins. A claimed
// connection is not closed: it is marked failed and its target learns why.
// Called with mu held; unlock asks the transport to let go.
func (c *conn) close(r reason.Reason) {
	if c.frozen {
		return
	}
	for {
		switch st := state(c.st.Load()); st {
		case stClaimed:
			c.setFailed(r)
			return
		case stClosing, stDone:
			return
		case stWaiting:
			if !c.st.CompareAndSwap(uint32(stWaiting), uint32(stClosing)) {
				continue // claimed by a partner just now
			}
			c.leave()
		default:
			c.st.Store(uint32(stClosing))
		}
		c.reason = r
		c.stopTimers()
		c.wantRelease()
		return
	}
}

// setFailed records why a claimed connection's set-up failed (the first
// reason wins) and makes sure its transport lets go.
func (c *conn) setFailed(r reason.Reason) {
	if !c.failed {
		c.failed, c.reason = true, r
	}
	c.wantRelease()
}

// wantRelease decides that the transport must let go of the socket.
func (c *conn) wantRelease() {
	if c.rel == relNone {
		c.rel = relWanted
	}
}

// fail ends the connection for reason, gracefully: a WebSocket client gets
// a close frame with code and text first, and the socket lingers until the
// client has read what it was sent. Called with mu held.
func (c *conn) fail(r reason.Reason, text string) {
	if text == "" {
		text = closeText(r)
	}
	c.failWith(r, closeCode(r), text)
}

// failWith is fail with the close code given (0: no close frame).
func (c *conn) failWith(reason reason.Reason, code ws.StatusCode, text string) {
	if c.frozen {
		return
	}
	if st := state(c.st.Load()); st >= stClaimed {
		c.close(reason) // claimed: the target answers the client
		return
	}
	if c.upgrade != nil {
		c.refuseUpgrade(upgradeStatus(reason), reason, text)
		return
	}
	if c.ws != nil && code != 0 {
		c.ws.SendClose(&c.out, code, text)
	} else if note := c.closingNote(reason, text); note != nil {
		c.send(note)
	}
	c.linger = true
	c.close(reason)
}

// closingNote is the RemoteProxy.Closing notification telling a raw-TCP
// client that authenticated for a tunnel, and has no close frame to read
// a reason from, why the relay ends its connection before the tunnel
// (its alone timeout, a third client, the same uuid twice, shutdown, …):
// {"reason": the metric label, "message": text}. nil for any other
// connection (WebSocket, TunnelProxy, mesh links, before Authenticate).
func (c *conn) closingNote(r reason.Reason, text string) []byte {
	if c.ws != nil || c.joined.IsZero() || c.mesh || text == "" {
		return nil
	}
	id := c.notifID
	c.notifID++
	return handshake.AppendNotification(nil, id, "RemoteProxy.Closing",
		handshake.Str("reason", r.String()), handshake.Str("message", text))
}

func (c *conn) stopTimers() {
	for _, t := range []*time.Timer{c.timer, c.hsTimer, c.authTimer, c.rpcTimer} {
		if t != nil {
			t.Stop()
		}
	}
}

func (c *conn) onHandshakeTimeout() {
	c.mu.Lock()
	switch state(c.st.Load()) {
	case stSniff, stHTTP:
		c.s.log.Debug("handshake timeout", "peer", c.peer.String())
		c.close(reason.HandshakeTimeout)
	}
	c.unlock()
}

func (c *conn) onInactive() {
	c.mu.Lock()
	switch state(c.st.Load()) {
	case stSniff, stHTTP, stRPC, stAuthing:
		c.s.log.Debug("inactive timeout", "peer", c.peer.String())
		c.fail(reason.InactiveTimeout, "")
	}
	c.unlock()
}

func (c *conn) onAlone() {
	c.mu.Lock()
	if state(c.st.Load()) == stWaiting {
		c.s.log.Debug("alone timeout", "peer", c.peer.String())
		text := fmt.Sprintf("No partner arrived within %v", c.s.cfg.AloneTimeout)
		if c.degraded {
			text += " (relay fleet store unreachable: only partners on this relay could pair)"
		}
		c.fail(reason.AloneTimeout, text)
	}
	c.unlock()
}

func (c *conn) shutdown() {
	c.mu.Lock()
	c.fail(reason.Shutdown, "")
	c.unlock()
}

// Claim implements Joiner.
func (c *conn) Claim() bool { return c.st.CompareAndSwap(uint32(stWaiting), uint32(stClaimed)) }

// UUID implements Joiner.
func (c *conn) UUID() string { return c.uuid }

// released runs once the transport has let go of the socket (netpoll: after
// it stopped polling it, before it closes the descriptor). A claimed
// connection's socket is detached and the connection handed to its
// target; any other is finished: closed at once, or passed to a
// forwarding loop to linger. left is what the transport had read and
// nobody consumed.
func (c *conn) released(left []byte) {
	c.mu.Lock()
	if c.rel == relNone && c.rescue(left) { // netpoll hung up on a live socket
		c.unlock()
		return
	}
	if c.moving && state(c.st.Load()) == stSubscribed {
		c.moving = false
		if nt, ok := c.tr.(*netpollTransport); ok && c.toLoop(nt, left) {
			c.unlock()
			return
		}
	}
	c.stopTimers()
	spontaneous := c.rel == relNone // the peer hung up (or the socket failed)
	c.rel = relAsked
	for state(c.st.Load()) == stWaiting { // not yet claimed: it never will be now
		if c.st.CompareAndSwap(uint32(stWaiting), uint32(stClosing)) {
			c.leave()
			c.reason = reason.PeerClosed
		}
	}
	if state(c.st.Load()) == stClaimed {
		if len(left) > 0 {
			c.consume(left) // pings answered for the target, data recorded as late
		}
		if spontaneous && !c.aliveOnNetpoll() {
			c.setFailed(reason.PeerClosed)
		}
		sk, err := c.tr.detach()
		if err != nil {
			c.setFailed(reason.IOError)
		}
		c.sk = sk
		t := c.target
		c.gone = t == nil
		c.frozen = true
		c.mu.Unlock()
		c.s.unregister(c)
		if t != nil {
			t.ready(c)
		}
		return
	}
	if st := state(c.st.Load()); st != stClosing && st != stDone {
		c.reason = reason.PeerClosed
	}
	c.st.Store(uint32(stDone))
	reason, linger := c.reason, c.linger && !spontaneous
	c.frozen = true
	onEnd := c.onEnd
	c.onEnd = nil
	c.mu.Unlock()
	if onEnd != nil {
		onEnd()
	}
	c.s.unregister(c)
	if !linger {
		c.tr.discard()
		c.tk.End(reason)
		return
	}
	sk, err := c.tr.detach()
	if err != nil {
		c.tr.discard()
		c.tk.End(reason)
		return
	}
	c.s.goodbye(sk, nil, true, c.tk, reason)
}
