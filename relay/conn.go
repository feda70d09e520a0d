package relay

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/internal/strict"
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

// stateNames are the states as logs name them.
var stateNames = [...]string{"sniff", "http", "rpc", "authing", "placing", "waiting", "subscribed", "claimed", "closing", "done"}

func (st state) String() string {
	if int(st) < len(stateNames) {
		return stateNames[st]
	}
	return fmt.Sprintf("state(%d)", uint32(st))
}

// stateSet is a set of states, one bit each.
type stateSet uint16

func states(sts ...state) (set stateSet) {
	for _, st := range sts {
		set |= 1 << st
	}
	return set
}

// moves is the successor table: the states each state may move to. Every
// move goes through to (under mu) or, out of stWaiting, through cas (a
// partner's Claim, close, released, replace); a move the table does not
// list is a bug (badMove). Claimed and done are final: a claimed
// connection goes to its target as it is.
var moves = [...]stateSet{
	stSniff:      states(stHTTP, stRPC, stClaimed, stClosing, stDone),
	stHTTP:       states(stRPC, stAuthing, stSubscribed, stClaimed, stClosing, stDone),
	stRPC:        states(stAuthing, stWaiting, stSubscribed, stClaimed, stClosing, stDone),
	stAuthing:    states(stRPC, stWaiting, stPlacing, stClosing, stDone),
	stPlacing:    states(stWaiting, stRPC, stClaimed, stClosing, stDone),
	stWaiting:    states(stClaimed, stPlacing, stRPC, stClosing),
	stSubscribed: states(stClosing, stDone),
	stClaimed:    0,
	stClosing:    states(stDone),
	stDone:       0,
}

// canMove reports whether the successor table lets from move to next.
func canMove(from, next state) bool { return int(from) < len(moves) && moves[from]&(1<<next) != 0 }

// timeout is one stage timeout. In the states stageTimeouts lists it for,
// it falls due its configured duration after its stage began (deadline).
type timeout uint8

const (
	toHandshake timeout = iota // HandshakeTimeout, from since
	toInactive                 // InactiveTimeout, from since (not for a fleet's control connection)
	toAuth                     // AuthTimeout, from authAt
	toRPC                      // RPCTimeout, from authAt
	toAlone                    // AloneTimeout, from joined
)

// stageTimeouts are the timeouts that apply in each state; none applies
// in a state not listed. A connection has one timer, armed (arm) for the
// earliest of its state's, whenever it moves.
var stageTimeouts = [...][]timeout{
	stSniff:   {toHandshake, toInactive},
	stHTTP:    {toHandshake, toInactive},
	stRPC:     {toInactive},
	stAuthing: {toInactive, toAuth, toRPC},
	stWaiting: {toAlone},
}

// strictMoves makes badMove panic: the package's tests set it (and
// strict.Moves, every test built on package relaytest), so that every
// path they drive is checked against the successor table.
var strictMoves = false

// release is how far the transport's letting go has got.
type release uint8

const (
	relNone   release = iota // the transport holds the socket
	relWanted                // decided under mu: unlock asks the transport
	relAsked                 // the transport was asked; released follows
)

// conn is a connection before its tunnel, on the loop that accepted it
// (plainTransport) or, after a TLS handshake, on a loop as a TLS session
// (tlsTransport). It costs ~550 B; input is read into the loop's scratch
// buffer and only what a stage keeps is copied.
//
// Locking: mu guards every field below it and every write to tr.
// tr.release is never called with mu held (released, which follows it,
// takes mu): code decides under mu (wantRelease) and unlock asks the
// transport. Lock order when two connections meet: the completing side's
// mu, then the registry shard (Join), released, then the waiting side's
// mu; a waiting connection never takes another connection's lock.
type conn struct {
	// Static: set before the connection is reachable (newConn's bind),
	// read by anyone without a lock.
	s       *Server
	tr      transport
	tk      *ticket
	peer    net.Addr
	id      uint64    // set by register
	created time.Time // accept time (a TLS session's: its plain connection's)
	since   time.Time // when the handshake and inactive timeouts began: newConn

	// Shared, atomic.
	//
	// st is the state. A partner claims a waiting connection with a CAS
	// (stWaiting → stClaimed) without mu; every other move happens under
	// mu (to, cas: the successor table).
	st      atomic.Uint32
	subject atomic.Pointer[string] // the authenticator's answer to who the client is (AuthRequest.SetSubject)
	// backlog: a subscriber's notifications wait in out for the socket to
	// take them (flush); its transport flushes again when the socket is
	// writable (conn.writable). Set and cleared under mu; read without it.
	backlog atomic.Bool

	mu sync.Mutex

	// The transport's letting go (under mu).
	rel    release
	frozen bool        // released: the connection belongs to its target or is gone; nothing changes it
	gone   bool        // released while claimed but before a target was set (pairUp delivers)
	sk     loop.Sock   // the socket, detached for the target when released while claimed
	on     *loop.Loop  // released on this loop's goroutine (nil: elsewhere): its target may start there
	timer  *time.Timer // the stage timeouts' one timer (arm, expire); nil for a subscriber
	fires  time.Time   // when timer is set to fire; zero: stopped, or fired

	// How it ends (under mu).
	reason reason.Reason // closing: why; claimed: why the set-up failed, if failed
	failed bool          // claimed: the set-up failed (reason says why)
	linger bool          // closing: let the client read what we sent before the socket closes

	// calling counts the subsystem calls (callout) in progress on c: one
	// left behind by a panic tells the fault barrier (contain) that the
	// panic came through code whose locks it cannot vouch for (under mu).
	calling uint8

	// The wire (under mu).
	ws      *handshake.Stream
	out     handshake.Queue // replies not yet written; kept for the target once claimed
	in      []byte          // unparsed input: first bytes, HTTP head, raw-TCP JSON (≤ budget)
	msg     []byte          // WebSocket text message being assembled (≤ MaxPreAuth)
	upgrade []byte          // a URL-token upgrade's 101 response, sent once the token is good
	hello   bool            // sent RemoteProxy.Hello before its tunnel or registration (nymea's client library always does)
	notifID int

	onEnd func() // a subscriber's: called once when the connection ends (under mu)

	au *authRole  // from its Authenticate on (under mu); nil before (view reads it)
	cl *claimRole // claimed (under mu until released, then the target's); nil before
	fl *fleetRole // in a fleet, or a mesh link (under mu); nil otherwise
}

// authRole is a connection's part from its Authenticate request on (or a
// URL token's, or a mesh link's identity): who it says it is and where it
// stands. Nil on a connection that never authenticates (an HTTP request,
// most of what a flood opens).
type authRole struct {
	uuid, name string
	key        PairKey
	authID     int                    // the Authenticate request's id (-1: the URL's token)
	authAt     time.Time              // when Authenticate began (its auth and RPC timeouts)
	authStart  bool                   // set by rpc: unlock starts the authenticator
	authThen   func(Conn, AuthResult) // Conn.Authenticate's: what to do with the answer (instead of pairing)
	authed     bool                   // the authenticator accepted key.Token
	banned     bool                   // refused unjudged: the address was banned after it connected
	joined     time.Time              // when it joined the registry (its alone timeout)
}

// auth returns c's authentication part, making it. Called with mu held.
func (c *conn) auth() *authRole {
	if c.au == nil {
		c.au = new(authRole)
	}
	return c.au
}

// noAuth is what view returns for a connection that never authenticated:
// read, never written.
var noAuth authRole

// view returns c's authentication part for reading: the zero one where
// c has none. Called with mu held, or where c's part no longer changes
// (released, a tunnel's side).
func (c *conn) view() *authRole {
	if c.au == nil {
		return &noAuth
	}
	return c.au
}

// claimRole is a claimed connection's part: where it goes and what it
// takes along. Made when a stage claims the connection (claim), nil on a
// connection that is never claimed (most of those a flood opens).
type claimRole struct {
	target      target // where the connection goes
	partner     *conn  // claimed by pairUp: the tunnel's other side (dropFrom releases it at once if it shares the loop); nil once dropped
	established []byte // claimed by pairing: this side's TunnelEstablished
	late        []byte // input that arrived after the claim (≤ lateLimit)
	lateMax     int    // bound on late when not MaxPreAuth (a hand-off to net/http)
	lateMsg     bool   // a WebSocket data frame arrived after the claim
	skipNL      bool   // claimed by a raw-TCP registration: drop the request's newline
	// failCode and failText: the close frame (code, text) that fail
	// chose when the set-up failed for it (its first failure), which the
	// target sends in place of its own (dismiss); 0: none chosen.
	failCode ws.StatusCode
	failText string
}

// claim returns c's claim part, making it. Called with mu held, or by the
// target once c is released.
func (c *conn) claim() *claimRole {
	if c.cl == nil {
		c.cl = new(claimRole)
	}
	return c.cl
}

// skipsNL reports whether c was claimed by a raw-TCP registration whose
// request's newline is still to be dropped. Called with mu held.
func (c *conn) skipsNL() bool { return c.cl != nil && c.cl.skipNL }

// handingOff reports whether c is claimed for a hand-off to net/http: what
// follows the request (a body) stays in the socket. Called with mu held.
func (c *conn) handingOff() bool {
	return c.cl != nil && c.cl.lateMax > 0 && state(c.st.Load()) == stClaimed
}

// fleetRole is a connection's part in a fleet of relays: made when it is
// placed (Fleet.Place) or speaks for another node (a mesh link), nil on
// every other connection.
type fleetRole struct {
	lease    Lease  // waiting: the fleet's hold on key for this node
	absent   string // a mesh link's answer when nobody waits under its key
	degraded bool   // waiting while the fleet's store is unreachable: only a partner on this node can pair
	replaced bool   // placed again after waiting here (Watcher): a failed placement tells it to reconnect
	mesh     bool   // a mesh link from another node (Conn.JoinMesh): subject is its client's identity, as that node logs it
	node     string // with mesh: that node's id
	keepMesh bool   // a fleet node's control connection: no inactive timeout
}

// fleet returns c's fleet part, making it. Called with mu held.
func (c *conn) fleet() *fleetRole {
	if c.fl == nil {
		c.fl = new(fleetRole)
	}
	return c.fl
}

// isMesh reports whether c is a mesh link from another node.
func (c *conn) isMesh() bool { return c.fl != nil && c.fl.mesh }

// target receives a claimed connection once its transport has let go of
// it. ready is called exactly once per claimed connection, without c.mu
// held; c is then frozen: c.sk is the socket (nil if detaching failed),
// c.failed and c.reason say whether the set-up failed, c.out holds what
// the relay still owes the client, c.cl.late what the client sent after the
// claim. ready owns the socket and the ticket from then on.
type target interface {
	ready(c *conn)
}

// accept takes a connection a loop just accepted: admitted, it becomes a
// conn on that loop (plainTransport), which owns the socket until the
// connection ends or is handed to its target. Loop goroutine.
func (s *Server) accept(l *loop.Loop, fd int, peer net.Addr) {
	s.stats.accepted.Inc()
	key, r, ok := s.admit(peer)
	if !ok {
		s.stats.closes[r].Inc()
		loop.PlainSock(fd).Close()
		return
	}
	tk := s.newTicket(key)
	if s.userTimeoutPerConn {
		_ = s.cfg.Keepalive.applyUserTimeout(fd) // an MPTCP client's socket may refuse it: keepalive still holds
	}
	pt := &plainTransport{l: l, fd: fd, sk: loop.PlainSock(fd)}
	c := s.newConn(pt, peer, tk, func(c *conn) { pt.c = c })
	if c == nil {
		loop.PlainSock(fd).Close()
		tk.End(reason.Shutdown)
		return
	}
	// Edge-triggered: bytes the client sent before the accept are
	// reported by the first epoll_wait, so nothing is read here.
	if err := l.Register(fd, pt); err != nil {
		pt.dropped = true
		c.mu.Lock()
		c.close(reason.IOError)
		c.rel = relAsked
		c.mu.Unlock()
		c.released(l)
	}
}

// newConn creates and tracks a connection; nil if the server is closing.
// bind runs first, before any other goroutine can reach c (its timers,
// Close): it links the transport to c and sets what differs from a fresh
// accept.
func (s *Server) newConn(tr transport, peer net.Addr, tk *ticket, bind func(*conn)) *conn {
	now := time.Now()
	c := &conn{s: s, tr: tr, peer: peer, created: now, since: now, tk: tk}
	bind(c)
	if !s.register(c) {
		return nil
	}
	c.mu.Lock() // the timer's callback takes mu: it must see the field
	c.arm()
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
	// A limit reached (max-conns, max-conns-per-ip) is the operator's to
	// know, but a flood or a reconnect storm meets it thousands of times
	// a second: a warning now and then, every refusal at debug, every one
	// counted (meetpoint_closes_total{reason}).
	warned := false
	if r != reason.Banned && r != reason.LimitRate {
		s.limitLogs.Do(func() {
			warned = true
			s.log.Warn("connection refused at a limit (refusals are counted in meetpoint_closes_total{reason}; this line comes at most once every 10 s)",
				"peer", peer.String(), "reason", r.String())
		})
	}
	if !warned {
		s.log.Debug("connection refused", "peer", peer.String(), "reason", r.String())
	}
	return key, r, false
}

// consume routes freshly read bytes to the current stage. p is only valid
// during the call; every stage copies what it keeps, within its budget.
// Called with mu held.
func (c *conn) consume(p []byte) {
	switch st := state(c.st.Load()); {
	case st >= stClosing:
		return // ending: nothing more is read
	case st == stClaimed && c.ws == nil:
		c.stashLate(dropNL(c, p)) // raw, as it came (but for a late newline ending the request): the target decides what it is
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
func (c *conn) unlock() { c.unlockOn(false) }

// unlockOn is unlock; onLoop says the caller is the loop goroutine of c's
// transport, which then lets go of the socket at once.
func (c *conn) unlockOn(onLoop bool) {
	c.flush()
	rel := c.rel == relWanted
	if rel {
		c.rel = relAsked
	}
	var req AuthRequest
	start := c.au != nil && c.au.authStart
	if start {
		c.au.authStart = false
		req = c.authRequest()
	}
	c.mu.Unlock()
	if rel {
		c.tr.release(onLoop)
	}
	if start {
		c.startAuth(req)
	}
}

// flush writes the queued replies without blocking. A client that has not
// read what it was sent so far that the socket refuses more is closed as
// slow_reader: the relay never buffers its replies. A subscriber's
// notifications are the exception: they wait (backlog) up to the queue's
// bound (send), as a burst to a reader far away may fill the socket's
// buffer for a round trip. A claimed connection keeps its queue for the
// target. Called with mu held.
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
	c.backlog.Store(false)
	switch {
	case err != nil:
		c.out.Take()
		c.linger = false
		c.close(reason.IOError)
	case c.out.Len() > 0 && state(c.st.Load()) == stSubscribed:
		c.backlog.Store(true) // written when the socket is writable (conn.writable)
	case c.out.Len() > 0:
		c.s.log.Debug("client does not read its replies", "peer", c.peer.String())
		c.out.Take()
		c.linger = false
		c.close(reason.SlowReader)
	}
}

// writable writes a subscriber's backlog (flush): its transport's socket
// has room again (EPOLLOUT). On the loop's goroutine.
func (c *conn) writable() {
	if !c.backlog.Load() {
		return
	}
	c.mu.Lock()
	c.unlockOn(true) // flushes
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
			if !c.cas(stWaiting, stClosing) {
				continue // claimed by a partner just now
			}
			c.leave()
		default:
			c.to(stClosing)
		}
		c.reason = r
		c.stopTimer()
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
	if st := state(c.st.Load()); st >= stClaimed || st == stWaiting && !c.unwait() {
		// Claimed (by a partner, perhaps just now): the target answers
		// the client, with this close frame if this is why it fails.
		if !c.failed && code != 0 && state(c.st.Load()) == stClaimed {
			cl := c.claim()
			cl.failCode, cl.failText = code, text
		}
		c.close(reason)
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

// unwait takes a waiting connection that the relay is about to end out
// of the registry (and back to stRPC, from which close ends it) before
// its goodbye is queued: a partner that claimed it after the goodbye was
// queued would leave it with the target, which says goodbye too (a
// second RemoteProxy.Closing). False if a partner claimed it first.
// Called with mu held.
func (c *conn) unwait() bool {
	if !c.cas(stWaiting, stRPC) {
		return false
	}
	c.leave()
	return true
}

// closingNote is the RemoteProxy.Closing notification telling a raw-TCP
// client that authenticated for a tunnel, and has no close frame to read
// a reason from, why the relay ends its connection before the tunnel
// (its alone timeout, a third client, the same uuid twice, shutdown, …):
// {"reason": the metric label, "message": text}. nil for any other
// connection (WebSocket, TunnelProxy, mesh links, before Authenticate).
func (c *conn) closingNote(r reason.Reason, text string) []byte {
	if c.ws != nil || c.view().joined.IsZero() || c.isMesh() || text == "" {
		return nil
	}
	id := c.notifID
	c.notifID++
	return handshake.AppendNotification(nil, id, "RemoteProxy.Closing",
		handshake.Str("reason", r.String()), handshake.Str("message", text))
}

// to moves c to next and arms its timer for next's stage timeouts. Called
// with mu held.
func (c *conn) to(next state) {
	if cur := state(c.st.Load()); !canMove(cur, next) {
		c.badMove(cur, next)
	}
	c.st.Store(uint32(next))
	c.arm()
}

// cas moves c from from to next if it is still in from (a partner may
// claim a waiting connection without mu). It does not arm the timer: a
// timer set for from finds nothing due (expire) and stops.
func (c *conn) cas(from, next state) bool {
	if !canMove(from, next) {
		c.badMove(from, next)
	}
	return c.st.CompareAndSwap(uint32(from), uint32(next))
}

// badMove reports a move the successor table does not list: a bug in the
// relay, logged (and made: the connection still ends cleanly), or a panic
// under the package's tests.
func (c *conn) badMove(from, next state) {
	if strictMoves || strict.Moves.Load() {
		panic(fmt.Sprintf("relay: conn moves from %v to %v: not in the successor table", from, next))
	}
	c.s.log.Error("internal error: a connection made a move its successor table does not list", "from", from.String(), "to", next.String())
}

// arm makes c's timer fire no later than the earliest stage timeout of
// its state. A timer already set to fire earlier is left as it is: when
// it fires, expire finds nothing due and arms it again. So a connection
// on its way to a tunnel, whose deadlines only move later (handshake,
// authentication, waiting), sets its timer once and stops it once,
// instead of resetting it at every stage: each reset takes the runtime's
// timer lock and re-sorts its heap. Called with mu held.
func (c *conn) arm() {
	at, _ := c.nextTimeout(state(c.st.Load()))
	switch {
	case at.IsZero(), !c.fires.IsZero() && !at.Before(c.fires):
		return
	case c.timer == nil:
		c.timer = time.AfterFunc(time.Until(at), c.expire)
	default:
		c.timer.Reset(time.Until(at))
	}
	c.fires = at
}

// nextTimeout is the earliest stage timeout of st and when it falls due
// (zero: none applies).
func (c *conn) nextTimeout(st state) (at time.Time, which timeout) {
	if int(st) >= len(stageTimeouts) {
		return at, which
	}
	for _, t := range stageTimeouts[st] {
		if d := c.deadline(t); !d.IsZero() && (at.IsZero() || d.Before(at)) {
			at, which = d, t
		}
	}
	return at, which
}

// deadline is when t falls due (zero: not for c).
func (c *conn) deadline(t timeout) time.Time {
	cfg := &c.s.cfg
	switch t {
	case toHandshake:
		return c.since.Add(cfg.HandshakeTimeout)
	case toInactive:
		if c.fl == nil || !c.fl.keepMesh {
			return c.since.Add(cfg.InactiveTimeout)
		}
	case toAuth:
		return c.view().authAt.Add(cfg.AuthTimeout)
	case toRPC:
		return c.view().authAt.Add(cfg.RPCTimeout)
	case toAlone:
		return c.view().joined.Add(cfg.AloneTimeout)
	}
	return time.Time{}
}

func (c *conn) stopTimer() {
	if c.timer != nil {
		c.timer.Stop()
		c.fires = time.Time{}
	}
}

// expire runs when c's timer fires: it ends c for the stage timeout that
// fell due, or arms the timer again (it was set for a stage c has left).
func (c *conn) expire() {
	c.mu.Lock()
	held := true // mu, until expire lets go of it: only then may the barrier end c
	defer c.containExpire(&held)
	if h := c.s.timerHook; h != nil {
		h()
	}
	c.fires = time.Time{}
	at, which := c.nextTimeout(state(c.st.Load()))
	if at.IsZero() || time.Now().Before(at) {
		c.arm()
		held = false
		c.unlock()
		return
	}
	switch which {
	case toHandshake:
		c.s.log.Debug("handshake timeout", "peer", c.peer.String())
		c.close(reason.HandshakeTimeout)
	case toInactive:
		c.s.log.Debug("inactive timeout", "peer", c.peer.String())
		c.fail(reason.InactiveTimeout, "")
	case toAuth:
		held = false              // the relay's answer to an authenticator: pairing, a subsystem's then (not contained, as under containAuth)
		c.authResult(AuthTimeout) // unlocks
		return
	case toRPC:
		if c.upgrade != nil {
			c.refuseAuth(AuthTimeout, reason.RPCTimeout, "")
		} else {
			c.rpcFailFor(reason.RPCTimeout, c.view().authID, "Command timed out")
		}
	case toAlone:
		c.s.log.Debug("alone timeout", "peer", c.peer.String())
		text := fmt.Sprintf("No partner arrived within %v", c.s.cfg.AloneTimeout)
		if c.stillDegraded() {
			text += " (relay fleet store unreachable: only partners on this relay could pair)"
		}
		c.fail(reason.AloneTimeout, text)
	}
	held = false
	c.unlock()
}

// containExpire is expire's fault barrier (docs/architecture.md, "Fault
// barriers"): a panic while expire holds mu, in the connection's own
// stage logic, ends c as internal_fault, as feed's barrier does. Raised
// again: one once mu is let go (unlock's writes and release, the answer
// to an authenticator), one through a callout (c.calling), and any under
// the package's tests. Deferred by expire.
func (c *conn) containExpire(held *bool) {
	if !*held {
		return // no panic, or one this barrier does not vouch for: it goes on up
	}
	if v := recover(); v != nil {
		c.endFault(v, "internal error: the relay panicked on a connection's stage timeout; the connection is ended (internal_fault), the relay serves on")
		c.unlock()
	}
}

func (c *conn) shutdown() {
	c.mu.Lock()
	c.fail(reason.Shutdown, "")
	c.unlock()
}

// Claim implements Joiner.
func (c *conn) Claim() bool { return c.cas(stWaiting, stClaimed) }

// UUID implements Joiner.
func (c *conn) UUID() string { return c.view().uuid }

// released runs once the transport has let go of the socket (it is out of
// its loop's epoll set), on the goroutine of loop on (nil: not on a loop).
// A claimed connection's socket is detached and the connection handed to
// its target; any other is finished: closed at once, or passed to a loop
// to linger. Never with mu held.
func (c *conn) released(on *loop.Loop) {
	c.mu.Lock()
	c.on = on
	c.stopTimer()
	c.rel = relAsked
	for state(c.st.Load()) == stWaiting { // not yet claimed: it never will be now
		if c.cas(stWaiting, stClosing) {
			c.leave()
			c.reason = reason.PeerClosed
		}
	}
	if state(c.st.Load()) == stClaimed {
		sk, err := c.tr.detach()
		if err != nil {
			c.setFailed(reason.IOError)
		}
		c.sk = sk
		t := c.claim().target
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
	c.to(stDone)
	reason, linger := c.reason, c.linger
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
