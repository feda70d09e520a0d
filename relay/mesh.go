package relay

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// The engine's side of a fleet of relays (package relay/fleet is the
// other side). Without a Fleet nothing here runs: the local registry pairs
// every client.
//
// With one, an authenticated client whose key the local registry does not
// hold is placed first (Fleet.Place, off every lock, on a goroutine of its
// own): either it pairs here (the fleet now holds the key for this node
// until the Lease is released), or its partner waits on another node and
// the fleet has already opened a mesh link to that node, which paired the
// partner with the link (Conn.JoinMesh there); the client is then
// tunnelled to the link, one hop: client → this node → owner → partner. A
// client whose key the local registry holds pairs (or is refused) at once,
// without asking the fleet.

// Fleet places pairing keys across a fleet of relays.
type Fleet interface {
	// Place decides where the client described by p pairs. It may block
	// (it asks the fleet's store and may dial another node); ctx bounds it.
	Place(ctx context.Context, p Placing) Placement
}

// Placing is a client the fleet is asked to place.
type Placing struct {
	Key        PairKey
	UUID, Name string
	// Identity is the client's identity as logs show it.
	Identity string
}

// Placement is where a client pairs. Exactly one field is set.
type Placement struct {
	// Lease: the client pairs on this node; the fleet holds its key for
	// this node until Release (called once the key is free again).
	Lease Lease
	// Link: the partner waits on another node, already paired with this
	// mesh link; the client is tunnelled to it.
	Link *MeshLink
	// Refuse: the client is refused, for this reason (TunnelExists,
	// DuplicateUUID: the fleet-wide rules; Fleet: the key could not be
	// placed).
	Refuse reason.Reason
	// Degraded, with Lease: the fleet's store was unreachable, so only a
	// partner arriving on this node can pair (the client is told so if
	// none arrives).
	Degraded bool
}

// Lease is a fleet's hold on a pairing key for this node.
type Lease interface {
	// Release frees the key fleet-wide. Called once per Placement that
	// carried the lease; it must not block.
	Release()
}

// DegradedLease is a Lease that can tell whether its key is still known
// to this node only: a lease placed while the fleet's store was
// unreachable (Placement.Degraded) is published once the store answers
// again, and from then on a partner on any node finds its client.
type DegradedLease interface {
	Lease
	// Degraded reports whether the key is still missing from the
	// fleet's store (only a partner on this node can pair).
	Degraded() bool
}

// stillDegraded reports whether c, placed while the fleet's store was
// unreachable, still waits under a lease only this node knows (a lease
// that cannot tell is taken at its placement's word). Called with mu
// held.
func (c *conn) stillDegraded() bool {
	if c.fl == nil || !c.fl.degraded {
		return false
	}
	d, ok := c.fl.lease.(DegradedLease)
	if !ok {
		return true
	}
	c.calling++ // the fleet's code (callout)
	still := d.Degraded()
	c.calling--
	return still
}

// Watcher is a Lease that wants to know the clients waiting under it:
// Watch is called once per client that waits on this node under the
// lease, with three functions for that client. waiting reports whether
// the client still waits (not paired, not gone): the fleet forgets the
// clients that no longer do. The fleet calls replace or moved when it
// finds the key held by another node while the client waits. replace (a
// store that lost the key, a partition that healed): the client leaves
// this node's registry and is placed as if it had just authenticated, so
// it meets its partner where the key is now. moved (the new holder is
// across a mesh partition from this node): the client is ended as
// fleet_moved and told to reconnect, which through a balancer may bring
// it to a node that reaches its partner, instead of waiting out its alone
// timeout. Both do nothing once the client is paired or gone.
type Watcher interface {
	Watch(waiting func() bool, replace, moved func())
}

// MeshLink is a node-to-node connection that has become the far end of a
// client's tunnel: the owner node paired it with the waiting partner and
// sent TunnelEstablished over it.
type MeshLink struct {
	// Sock is the link's socket: a non-blocking plain TCP socket
	// (loop.PlainSock) or a TLS session (loop.ClientTLS), owned by the
	// engine from now on (it closes it).
	Sock loop.Sock
	// Node and Addr name the owner node (logs, monitors).
	Node, Addr string
	// Name and UUID are the partner's, for the client's TunnelEstablished.
	Name, UUID string
	// Identity is the partner's identity as the owner logs it.
	Identity string
	// Ender is told when the link's socket closes (the fleet counts it).
	Ender reason.Ender
}

// SetFleet makes the server pair across the fleet f. Call it before Start.
func (s *Server) SetFleet(f Fleet) { s.fleet = f }

// placeTimeout bounds a placement: the store's round trips and, for a
// remote owner, dialling it and its answer.
const placeTimeout = 5 * time.Second

// place asks the fleet where c pairs. Called with mu held, c authenticated
// and its reply flushed; the answer comes back through placed.
func (c *conn) place() {
	c.to(stPlacing)
	c.askFleet()
}

// askFleet asks the fleet where c, placing, goes (placed acts on the
// answer). Called with mu held.
func (c *conn) askFleet() {
	a := c.view()
	p := Placing{Key: a.key, UUID: a.uuid, Name: a.name, Identity: c.identity().String()}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), placeTimeout)
		pl := c.s.fleet.Place(ctx, p)
		cancel()
		c.placed(pl)
	}()
}

// placed acts on the fleet's answer for c.
func (c *conn) placed(pl Placement) {
	c.mu.Lock()
	if state(c.st.Load()) != stPlacing { // the client left meanwhile
		c.unlock()
		if pl.Lease != nil {
			pl.Lease.Release()
		}
		if pl.Link != nil {
			closeLink(pl.Link, reason.PartnerClosed)
		}
		return
	}
	switch {
	case pl.Lease != nil:
		c.fleet().lease, c.fl.degraded = pl.Lease, pl.Degraded
		c.auth().joined = time.Now() // the alone timeout counts from here
		c.to(stWaiting)
		res, partner := c.s.reg.Join(c.view().key, c)
		after := c.joinedAs(res, partner, -1)
		if w, ok := pl.Lease.(Watcher); ok && res == JoinWaiting {
			w.Watch(c.waiting, c.replace, c.moved)
		}
		c.unlock()
		if after != nil {
			after()
		}
	case pl.Link != nil:
		c.s.stats.meshOut.Inc()
		t := newMeshTunnel(c, pl.Link, nil)
		c.to(stClaimed)
		c.claim().target = t
		c.wantRelease()
		c.unlock()
	default:
		r := pl.Refuse
		if c.fl != nil && c.fl.replaced && (r == reason.Fleet || r == reason.Mesh) {
			// It waited here until its key moved; the new holder cannot
			// be reached from here (a partition the pings have not
			// confirmed yet): a reconnect may land where it can.
			r = reason.Moved
		}
		c.to(stRPC)
		c.fail(r, "")
		c.unlock()
	}
}

// waiting reports whether c still waits in the registry (Watcher).
func (c *conn) waiting() bool { return state(c.st.Load()) == stWaiting }

// replace places c again if it still waits (Watcher).
func (c *conn) replace() {
	c.mu.Lock()
	defer c.unlock()
	// As a partner's Claim does: whoever moves c out of waiting first wins.
	if !c.cas(stWaiting, stPlacing) {
		return
	}
	c.s.reg.Leave(c.view().key, c)
	c.arm() // placing: no timeout until it waits again
	c.releaseLease()
	c.fleet().replaced = true
	c.s.log.Debug("placing a waiting client again: its key is held by another node now", "peer", c.peer.String())
	c.askFleet() // placing already (the compare-and-swap above)
}

// moved ends c if it still waits (Watcher): its key is held by a node
// this one cannot reach.
func (c *conn) moved() {
	c.mu.Lock()
	if state(c.st.Load()) == stWaiting {
		c.s.log.Debug("waiting client told to reconnect: its key moved to a node across a mesh partition", "peer", c.peer.String())
		c.fail(reason.Moved, "")
	}
	c.unlock()
}

// joinedAs acts on a registry answer for c (state stWaiting, mu held).
// id >= 0 is a Mesh.Join request's id: its refusals are answered with an
// error the requesting node reads. What it returns, if anything, must run
// once c's lock is released (it delivers a partner to its target).
func (c *conn) joinedAs(res JoinResult, partner Joiner, id int) (after func()) {
	refuse := func(r reason.Reason, code string) {
		c.to(stRPC) // not in the registry
		c.releaseLease()
		if id >= 0 {
			c.send(handshake.AppendError(nil, id, code))
		}
		c.fail(r, "")
	}
	switch res {
	case JoinWaiting: // to(stWaiting) armed the alone timeout
	case JoinAbsent:
		absent := "" // the link's answer (JoinMesh sets it)
		if c.fl != nil {
			absent = c.fl.absent
		}
		refuse(reason.Mesh, absent)
	case JoinFull:
		refuse(reason.TunnelExists, MeshTunnelExists)
	case JoinDuplicateUUID:
		refuse(reason.DuplicateUUID, MeshDuplicateUUID)
		// The partner was claimed for us: its target is the refusal (lock
		// order: the completing side, then the waiting one).
		p := partner.(*conn)
		p.mu.Lock()
		p.releaseLease()
		p.claim().target = refusal{reason.DuplicateUUID, "Duplicated client UUID."}
		p.wantRelease()
		gone := p.gone
		p.unlock()
		if gone {
			return func() { p.cl.target.ready(p) }
		}
	case JoinPaired:
		c.to(stClaimed)
		p := partner.(*conn)
		if t, gone := pairUp(p, c); gone {
			return func() { t.ready(p) }
		}
	}
	return nil
}

// The errors a Mesh.Join is refused with (the requesting node maps them
// back to its client's refusal).
const (
	MeshNotWaiting    = "not_waiting"   // nobody waits here under that key (any more)
	MeshTunnelExists  = "tunnel_exists" // the key's tunnel exists: a third client
	MeshDuplicateUUID = "duplicate_uuid"
	MeshBadRequest    = "bad_request" // unsigned, badly signed or too old
	// MeshRetry: nobody waits under the key yet, but this node holds it
	// (its client is joining, or its release is on its way): ask again.
	MeshRetry = "retry"
)

// releaseLease gives back c's hold on its key in the fleet, if any.
// Called with mu held, or on a frozen connection.
func (c *conn) releaseLease() {
	if c.fl != nil && c.fl.lease != nil {
		c.calling++ // the fleet's code (callout)
		c.fl.lease.Release()
		c.calling--
		c.fl.lease = nil
	}
}

// leave takes c out of the registry (it was waiting) and the fleet.
func (c *conn) leave() {
	c.s.reg.Leave(c.view().key, c)
	c.releaseLease()
}

// JoinMesh pairs this connection, a mesh link from another node that
// authenticated a client, with the client waiting here under k: the
// connection becomes that client's end of the tunnel (uuid, name and
// identity are the client's). Refusals are answered as JSON-RPC errors
// with request id and close the link: absent (MeshNotWaiting or
// MeshRetry) when nobody waits, MeshTunnelExists, MeshDuplicateUUID. Call
// it from the Mesh.Join handler only, once the request's signature has
// been checked.
func (c Conn) JoinMesh(id int, k PairKey, uuid, name, node, identity, absent string) {
	cc := c.c
	a := cc.auth()
	a.uuid, a.name, a.key, a.authed = uuid, name, k, true
	c.MarkMesh(node, identity)
	cc.s.stats.meshIn.Inc()
	a.joined = time.Now()
	cc.to(stWaiting)
	res, partner := cc.s.reg.JoinExisting(k, cc)
	cc.fleet().absent = absent
	if after := cc.joinedAs(res, partner, id); after != nil {
		go after() // handlers run under the lock; the partner is delivered without it
	}
}

// Bridge makes a tunnel of a handed-over connection and a mesh link (a
// TunnelProxy client whose server is on another node): first, a JSON-RPC
// message (framed here on WebSocket), goes to the client before any data.
// The tunnel owns h and the link from then on; a handover whose set-up
// failed, or whose client sent data before first, is dismissed and the
// link closed.
func (s *Server) Bridge(h *Handover, l *MeshLink, first []byte) {
	c := h.c
	c.out.B = h.Out
	t := newMeshTunnel(c, l, first)
	s.stats.meshOut.Inc()
	t.readyLinked(c)
}

// MarkMesh records that this connection is a mesh link from another
// node whose request (signature checked) speaks for a client there with
// identity: monitors and logs show it as "via NODE (IDENTITY)". It is
// taken off its address's per-address count (MaxConnsPerIP), which
// bounds clients: a node's links to another would otherwise top out
// there. Call it from a Mesh.* handler only, once the signature was
// checked.
func (c Conn) MarkMesh(node, identity string) {
	c.c.fleet().mesh, c.c.fl.node = true, node
	c.c.subject.Store(&identity)
	c.c.tk.unlimit()
}

// KeepMesh makes this connection a fleet node's control connection
// (its liveness pings): marked as from node, and exempt from the
// inactive timeout. Call it from a Mesh.* handler only, once the
// request's signature has been checked.
func (c Conn) KeepMesh(node string) {
	c.MarkMesh(node, "mesh control from "+node)
	c.c.fleet().keepMesh = true
	c.c.arm()
}

// farNode is the fleet node at the tunnel's far end: the node its mesh
// link goes to, or comes from ("": no mesh link).
func (t *tunnel) farNode() string {
	switch {
	case t.link != nil:
		return t.link.Node
	case t.infoA.node != "":
		return t.infoA.node
	}
	return t.infoB.node
}

// MeshSessions is a subsystem's sessions that cross the mesh outside the
// engine's tunnels (a TunnelProxy client reached from another node: its
// mesh link is a client of a server here). The fleet counts them per far
// node, as it counts tunnels, and ends them when that node is lost.
type MeshSessions interface {
	// MeshPeers adds the sessions to into, by the fleet node at their far
	// end.
	MeshPeers(into map[string]int)
	// EndMesh ends every session whose far end is node, counted under r
	// (text is for a client that can be told), and returns how many.
	EndMesh(node string, r reason.Reason, text string) int
}

// AddMeshSessions makes m's sessions count in MeshPeers and end with
// EndMeshTunnels. Call it before Start.
func (s *Server) AddMeshSessions(m MeshSessions) { s.meshSessions = append(s.meshSessions, m) }

// MeshPeers counts this node's tunnels and sessions that cross the mesh,
// by the fleet node at their far end (links it dialled and links it
// accepted).
func (s *Server) MeshPeers() map[string]int {
	s.mu.Lock()
	out := make(map[string]int, len(s.meshPeers))
	for n, c := range s.meshPeers {
		out[n] = c
	}
	s.mu.Unlock()
	for _, m := range s.meshSessions {
		m.MeshPeers(out)
	}
	return out
}

// EndMeshTunnels ends every tunnel (and MeshSessions session) whose far
// end is node (the fleet found it lost): both of its sockets are counted
// under r, and a WebSocket client gets a close with code 1011 and text,
// not a normal "partner closed". It returns how many it ended.
func (s *Server) EndMeshTunnels(node string, r reason.Reason, text string) int {
	s.mu.Lock()
	var ts []*tunnel
	for t := range s.tunnels {
		if t.farNode() == node {
			ts = append(ts, t)
		}
	}
	s.mu.Unlock()
	for _, t := range ts {
		l := t.lp
		l.Do(func() { l.Abort(&t.pair, r, closeCode(r), text) })
	}
	n := len(ts)
	for _, m := range s.meshSessions {
		n += m.EndMesh(node, r, text)
	}
	return n
}

// RefuseMesh answers a mesh request that cannot be trusted (a bad
// signature, a replay, a time too far from this node's clock) and closes.
// A guess (the signature did not hold, or a replay) counts as a failed
// authentication of the address, toward its ban; a request signed with
// the mesh key that is refused for its time is a node whose clock is off,
// which its pings would otherwise get banned for ten minutes.
func (c Conn) RefuseMesh(id int, guess bool) {
	c.c.s.stats.meshBad.Inc()
	if guess {
		c.c.s.failedFrom(c.c.peer)
	}
	c.c.send(handshake.AppendError(nil, id, MeshBadRequest))
	c.c.failWith(reason.Mesh, 0, "")
}

// newMeshTunnel builds the tunnel of c (authenticated here) and a mesh
// link to the node where its partner is; first (nil: TunnelEstablished
// naming the partner) is the relay's last message to c. Called with c's
// lock held, or on a released connection.
func newMeshTunnel(c *conn, l *MeshLink, first []byte) *tunnel {
	a := c.view()
	t := &tunnel{s: c.s, key: a.key, joined: a.joined.UnixNano(), setup: &tunnelSetup{ca: c}, link: l}
	t.infoA = peerInfoOf(c)
	t.infoB = peerInfo{address: meshAddr("mesh " + l.Node + " " + l.Addr), name: l.Name, uuid: l.UUID,
		connected: time.Now().UnixNano(), identity: l.Identity}
	if first == nil {
		c.claim().established = established(c, l.Name, l.UUID)
	} else {
		c.claim().established = c.framed(first)
	}
	_, isTLS := c.tr.(*tlsTransport)
	_, plainLink := l.Sock.(loop.PlainSock)
	t.pair.Splice = c.ws == nil && !isTLS && plainLink
	t.pair.Owner = t
	return t
}

// linkEnd fills the pair's B end with the mesh link.
func (t *tunnel) linkEnd(e *loop.End, rx *atomic.Uint64) {
	l := t.link
	e.Sock, e.Ender, e.RX, e.RXT = l.Sock, l.Ender, t.s.stats.bytesDn, rx
}

// closeLink closes a link nobody will use.
func closeLink(l *MeshLink, r reason.Reason) {
	l.Sock.Close()
	if l.Ender != nil {
		l.Ender.End(r)
	}
}

// readyLinked is ready for a tunnel whose B end is a mesh link: a client
// whose set-up failed (or that sent data before TunnelEstablished) is
// dismissed and the link closed, which ends the partner's side on the
// owner node; otherwise both go to a loop.
func (t *tunnel) readyLinked(a *conn) {
	if !a.failed && a.sentEarly() {
		a.failed, a.reason = true, reason.DataBeforeTunnel
	}
	if a.failed {
		t.s.log.Debug("tunnel set-up abandoned", "token", t.tokenHash(), "reason", a.reason.String())
		closeLink(t.link, reason.PartnerClosed)
		t.s.dismissFor(a, reason.PartnerClosed, "")
		return
	}
	t.end(&t.pair.A, a, t.s.stats.bytesUp, &t.ab)
	t.linkEnd(&t.pair.B, &t.ba)
	t.pair.A.Peer, t.pair.B.Peer = t.infoA.address, t.infoB.address
	t.start0(a.sk.Fd())
}
