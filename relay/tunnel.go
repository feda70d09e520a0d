package relay

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// A paired tunnel's two sockets leave their pre-tunnel transports and
// become a loop.Pair on one of the server's loops, which forwards them (splice
// between plain TCP ends, one pooled chunk per direction otherwise); the
// tunnel itself keeps what the relay knows of it: its key, its clients,
// its counters. Kept small: it is most of an idle tunnel's memory.
type tunnel struct {
	s      *Server
	key    PairKey
	joined int64 // unix ns when the second client authenticated
	setup  *tunnelSetup
	pair   loop.Pair // A is the waiting client, B the completing one
	start  int64     // unix ns when forwarding started; 0 before

	id           uint64        // set by registerTunnel
	infoA, infoB peerInfo      // for monitors and logs, fixed at set-up
	ab, ba       atomic.Uint64 // bytes read from A and from B (read by monitors)
	// link, set: B is a mesh link to the node where the partner is (the
	// tunnel has one conn, A).
	link *MeshLink
	// lp is the loop forwarding the pair (set before the tunnel is
	// tracked).
	lp *loop.Loop
	// leases are the fleet's holds on key (nil without a fleet), released
	// once when the key is freed.
	leases [2]Lease
}

// tunnelSetup is the hand-over state, dropped once both sides are in.
type tunnelSetup struct {
	mu     sync.Mutex
	ca, cb *conn // the two connections (dropped with setup, so they can be freed)
	nready int   // sides handed over (0..2)
}

// tokenHash is TokenHash of the tunnel's token, made when a monitor or
// a log line asks (a SHA-256 and a string: not paid by every tunnel).
func (t *tunnel) tokenHash() string { return TokenHash(t.key.Token) }

// peerInfo is what monitors and logs show of one side of a tunnel. Its
// address is kept as the socket's (formatted when shown).
type peerInfo struct {
	id        uint64
	address   net.Addr
	name      string
	uuid      string
	connected int64 // unix ns
	ws        bool
	identity  string
	node      string // a mesh link's: the fleet node it comes from
}

func peerInfoOf(c *conn) peerInfo {
	a := c.view()
	p := peerInfo{id: c.id, address: c.peer, name: a.name, uuid: a.uuid,
		connected: c.created.UnixNano(), ws: c.ws != nil}
	if c.isMesh() {
		p.identity, p.node = *c.subject.Load(), c.fl.node // "via NODE (IDENTITY)"
	} else {
		p.identity = c.identity().String()
	}
	return p
}

// clientInfo expands p for a snapshot.
func (p *peerInfo) clientInfo(tokenHash string, rx, tx uint64) ClientInfo {
	tr := "tcp"
	if p.ws {
		tr = "websocket"
	}
	return ClientInfo{ID: p.id, Address: p.address.String(), Transport: tr, Connected: time.Unix(0, p.connected),
		Authenticated: true, Tunnel: true, Name: p.name, UUID: p.uuid, TokenHash: tokenHash, RxBytes: rx, TxBytes: tx,
		Identity: p.identity}
}

// newTunnel builds the tunnel of a (waiting) and b (completing). Called
// with both connections' locks held.
func newTunnel(a, b *conn) *tunnel {
	av, bv := a.view(), b.view()
	t := &tunnel{s: a.s, key: bv.key, joined: bv.joined.UnixNano(), setup: &tunnelSetup{ca: a, cb: b}}
	t.infoA, t.infoB = peerInfoOf(a), peerInfoOf(b)
	a.claim().established = established(a, bv.name, bv.uuid)
	b.claim().established = established(b, av.name, av.uuid)
	_, tlsA := a.tr.(*tlsTransport)
	_, tlsB := b.tr.(*tlsTransport)
	t.pair.Splice = a.ws == nil && b.ws == nil && !tlsA && !tlsB
	t.pair.Owner = t
	return t
}

// established is the TunnelEstablished notification telling c that its
// partner is name (uuid): the relay's last JSON-RPC message to c.
func established(c *conn, name, uuid string) []byte {
	var buf [160]byte // built on the stack, copied once at its size
	msg := handshake.AppendNotification(buf[:0], c.notifID, "RemoteProxy.TunnelEstablished",
		handshake.Str("name", name), handshake.Str("uuid", uuid))
	c.notifID++
	return c.framed(msg)
}

// framed is msg as c's transport carries a relay message, in a slice of
// its own (msg may be on the caller's stack or someone else's): a TEXT
// frame on WebSocket, a copy on raw TCP.
func (c *conn) framed(msg []byte) []byte {
	if c.ws != nil {
		return handshake.AppendFrame(nil, ws.OpText, true, msg)
	}
	return bytes.Clone(msg)
}

// meshAddr names a mesh link in a tunnel's peerInfo: "mesh NODE ADDR".
type meshAddr string

// Network implements net.Addr.
func (meshAddr) Network() string { return "mesh" }

// String implements net.Addr.
func (a meshAddr) String() string { return string(a) }

// Claim implements Joiner: a tunnel is never waiting.
func (t *tunnel) Claim() bool { return false }

// UUID implements Joiner.
func (t *tunnel) UUID() string { return "" }

// ready implements target. The second side in decides: if either side's
// set-up failed, or a client sent data before it could have seen
// TunnelEstablished, the tunnel is abandoned (each side told why, or that
// its partner left); otherwise it goes to a loop.
func (t *tunnel) ready(c *conn) {
	su := t.setup // set until the second side is in; both sides read it before either clears it
	su.mu.Lock()
	su.nready++
	done := su.nready == 2 || t.link != nil
	su.mu.Unlock()
	if !done {
		return
	}
	t.setup = nil // frees the conns behind it
	a, b := su.ca, su.cb
	if t.link != nil {
		t.readyLinked(a)
		return
	}
	for _, c := range []*conn{a, b} {
		if !c.failed && c.sentEarly() {
			c.failed, c.reason = true, reason.DataBeforeTunnel
		}
	}
	if a.failed || b.failed {
		t.abandon(a, b)
		return
	}
	t.end(&t.pair.A, a, t.s.stats.bytesUp, &t.ab)
	t.end(&t.pair.B, b, t.s.stats.bytesDn, &t.ba)
	t.pair.A.Peer, t.pair.B.Peer = t.infoA.address, t.infoB.address
	if c.on != nil {
		t.startOn(c.on) // on the loop that let go of the second side: no hop
		return
	}
	t.start0(a.sk.Fd())
}

// start0 hands the filled pair to the loop of fd.
func (t *tunnel) start0(fd int) {
	l := t.s.pickLoop(fd)
	if !l.Do(func() { t.startOn(l) }) {
		for _, e := range []*loop.End{&t.pair.A, &t.pair.B} {
			e.Sock.Close()
			e.Ender.End(reason.Shutdown)
		}
	}
}

// end fills a pair end from the connection: its socket, its stream state
// and what the relay owes it (what is still queued — the Authenticate
// reply of the side that completed the pair, pongs owed since the claim —
// then TunnelEstablished), all of it in the pair's first write.
func (t *tunnel) end(e *loop.End, c *conn, rx *metrics.Counter, rxT *atomic.Uint64) {
	e.Sock, e.WS, e.Ender, e.RX, e.RXT = c.sk, c.ws, c.tk, rx, rxT
	if out := c.out.Take(); len(out) > 0 { // the completing side's Authenticate reply goes first
		e.Ctrl.B = append(out, c.claim().established...)
	} else {
		e.Ctrl.B = c.claim().established // the notification's own copy: nothing else holds it
	}
	e.Text.Binary = t.s.cfg.WSBinaryOnly
	if c.ws == nil && c.hello {
		e.Settle = t.s.cfg.TCPSettle
	}
}

// startOn starts forwarding on l (the loop goroutine).
func (t *tunnel) startOn(l *loop.Loop) {
	t.start = time.Now().UnixNano()
	t.lp = l
	st := t.s.stats
	st.tunnelsActive.Inc()
	st.tunnelsTotal.Inc()
	st.pairLatency.Update(time.Duration(t.start - t.joined).Seconds())
	t.s.registerTunnel(t)
	if t.s.log.Enabled(context.Background(), slog.LevelDebug) { // the arguments cost allocations even when not logged
		t.s.log.Debug("tunnel established", "tunnel", t.id, "token", t.tokenHash(),
			"a", t.infoA.address.String(), "b", t.infoB.address.String(), "a_identity", t.infoA.identity, "b_identity", t.infoB.identity,
			"splice", t.pair.Splice)
	}
	l.StartPair(&t.pair)
}

// PairClosing implements loop.PairOwner: the key is free from now on (a
// WebSocket client may read its close frame and come back before the
// sockets are closed).
func (t *tunnel) PairClosing(_ *loop.Pair, _ reason.Reason) { t.leave() }

// leave frees the tunnel's key, here and in the fleet.
func (t *tunnel) leave() {
	t.s.reg.Leave(t.key, t)
	for i, l := range t.leases {
		if l != nil {
			l.Release()
			t.leases[i] = nil
		}
	}
}

// PairDone implements loop.PairOwner.
func (t *tunnel) PairDone(_ *loop.Pair, r reason.Reason) {
	t.s.stats.tunnelsActive.Dec()
	t.s.unregisterTunnel(t)
	if t.s.log.Enabled(context.Background(), slog.LevelDebug) {
		t.s.log.Debug("tunnel closed", "tunnel", t.id, "token", t.tokenHash(), "reason", r.String(),
			"duration", time.Since(time.Unix(0, t.start)).Round(time.Millisecond), "bytes_a_to_b", t.ab.Load(), "bytes_b_to_a", t.ba.Load())
	}
}

// sentEarly reports whether a claimed legacy client sent data (anything
// but whitespace between JSON-RPC messages) before TunnelEstablished.
func (c *conn) sentEarly() bool {
	cl := c.claim()
	if cl.lateMsg || (c.ws != nil && c.ws.InMessage()) {
		return true
	}
	return len(trimSpace(cl.late)) > 0
}

// abandon ends a tunnel whose set-up failed: the key is freed first (a
// client that sees its connection end may come back at once), then a side
// that failed ends with its own reason and the other is told its partner
// left.
func (t *tunnel) abandon(a, b *conn) {
	why := a.reason
	if !a.failed {
		why = b.reason
	}
	t.s.log.Debug("tunnel set-up abandoned", "token", t.tokenHash(), "reason", why.String())
	t.leave()
	for _, c := range []*conn{a, b} {
		t.s.dismissFor(c, reason.PartnerClosed, "")
	}
}
