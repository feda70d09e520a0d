package relay

import (
	"hash/maphash"
	"sync"

	"github.com/gobwas/ws"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// PairKey identifies a rendezvous: clients presenting the same token and the
// same nonce meet. A client with a nonce never meets one without (nymea pairs
// on the nonce alone, which lets different tokens meet; we do not).
type PairKey struct {
	Token string
	Nonce string
}

// Joiner is the registry's view of a client waiting for its partner.
type Joiner interface {
	// Claim atomically takes a waiting client out of the waiting state. It
	// returns false when the client is already gone (closed or timed out), in
	// which case the registry forgets it.
	Claim() bool
	// UUID is the client's uuid as sent in Authenticate.
	UUID() string
}

// JoinResult says what Join did.
type JoinResult uint8

// The outcomes of Join.
const (
	// JoinWaiting: the caller is now the waiting client of its key.
	JoinWaiting JoinResult = iota
	// JoinPaired: the returned partner was waiting and has been claimed; the
	// key is now held by an active tunnel until Leave.
	JoinPaired
	// JoinFull: a tunnel already exists for this key; the caller is refused.
	JoinFull
	// JoinDuplicateUUID: the waiting client has the caller's uuid; both
	// must be closed (the partner has been claimed and the key is free).
	JoinDuplicateUUID
	// JoinAbsent: JoinExisting found nobody under the key; the caller was
	// not registered.
	JoinAbsent
)

// Registry pairs clients. The in-memory implementation is ShardedRegistry; a
// cluster-wide one can replace it.
type Registry interface {
	// Join registers j under k, or pairs it with the client already waiting.
	Join(k PairKey, j Joiner) (JoinResult, Joiner)
	// JoinExisting is Join for a key the registry already holds (a client
	// waiting, or a tunnel); for any other key it registers nothing and
	// answers JoinAbsent. A fleet places the keys this node does not hold.
	JoinExisting(k PairKey, j Joiner) (JoinResult, Joiner)
	// Paired records that the pair under k became tunnel t: t replaces the
	// two clients, so the registry no longer keeps them alive.
	Paired(k PairKey, t Joiner)
	// Leave forgets k if it is held by j (a waiting client, either client of
	// a pair, or the tunnel they became).
	Leave(k PairKey, j Joiner)
	// Len reports the number of keys held (waiting clients plus tunnels).
	Len() int
}

const shardCount = 64

// ShardedRegistry is a Registry of 64 independently locked maps, so that
// pairing never takes a global lock. Memory: one map entry (~100 B) per key.
type ShardedRegistry struct {
	seed   maphash.Seed
	shards [shardCount]shard
}

type shard struct {
	mu sync.Mutex
	// m holds, per key, either the waiting client (b == nil) or both sides of
	// an active tunnel. Invariant: an entry exists iff its key is waiting or
	// paired.
	m map[PairKey]entry
	_ [40]byte // keep shards on separate cache lines
}

type entry struct {
	a, b Joiner
}

// NewShardedRegistry returns an empty registry.
func NewShardedRegistry() *ShardedRegistry {
	r := &ShardedRegistry{seed: maphash.MakeSeed()}
	for i := range r.shards {
		r.shards[i].m = make(map[PairKey]entry)
	}
	return r
}

func (r *ShardedRegistry) shard(k PairKey) *shard {
	var h maphash.Hash
	h.SetSeed(r.seed)
	h.WriteString(k.Token)
	h.WriteByte(0)
	h.WriteString(k.Nonce)
	return &r.shards[h.Sum64()%shardCount]
}

// Join implements Registry.
func (r *ShardedRegistry) Join(k PairKey, j Joiner) (JoinResult, Joiner) {
	return r.join(k, j, false)
}

// JoinExisting implements Registry.
func (r *ShardedRegistry) JoinExisting(k PairKey, j Joiner) (JoinResult, Joiner) {
	return r.join(k, j, true)
}

func (r *ShardedRegistry) join(k PairKey, j Joiner, existing bool) (JoinResult, Joiner) {
	s := r.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[k]
	switch {
	case !ok && existing:
		return JoinAbsent, nil
	case !ok:
		s.m[k] = entry{a: j}
		return JoinWaiting, nil
	case e.b != nil:
		return JoinFull, nil
	case !e.a.Claim():
		// The waiting client left without telling us yet.
		if existing {
			delete(s.m, k)
			return JoinAbsent, nil
		}
		s.m[k] = entry{a: j}
		return JoinWaiting, nil
	case e.a.UUID() == j.UUID():
		delete(s.m, k)
		return JoinDuplicateUUID, e.a
	default:
		s.m[k] = entry{a: e.a, b: j}
		return JoinPaired, e.a
	}
}

// Paired implements Registry.
func (r *ShardedRegistry) Paired(k PairKey, t Joiner) {
	s := r.shard(k)
	s.mu.Lock()
	if e, ok := s.m[k]; ok && e.b != nil {
		s.m[k] = entry{a: t, b: t}
	}
	s.mu.Unlock()
}

// Leave implements Registry.
func (r *ShardedRegistry) Leave(k PairKey, j Joiner) {
	s := r.shard(k)
	s.mu.Lock()
	if e, ok := s.m[k]; ok && (e.a == j || e.b == j) {
		delete(s.m, k)
	}
	s.mu.Unlock()
}

// Len implements Registry.
func (r *ShardedRegistry) Len() int {
	n := 0
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// pairUp makes a tunnel of a (the waiting client, claimed by b's Join) and
// b (just authenticated, its state already stClaimed). Both locks are held
// while the tunnel is built: b's by the caller, then a's (lock order:
// completing side, then waiting side), so nothing a receives meanwhile —
// pings, data, its hang-up — can interleave with reading its state. Both
// transports are then asked to let go; each released calls t.ready. If a
// was already released (gone: its client hung up between the claim and
// now), the caller calls t.ready(a) after unlocking b.
func pairUp(a, b *conn) (t *tunnel, gone bool) {
	a.mu.Lock()
	t = newTunnel(a, b)
	for i, c := range [2]*conn{a, b} { // the tunnel holds the key now
		if c.fl != nil {
			t.leases[i], c.fl.lease = c.fl.lease, nil
		}
	}
	b.s.reg.Paired(b.view().key, t)
	ca, cb := a.claim(), b.claim()
	ca.target, cb.target = t, t
	ca.partner, cb.partner = b, a
	b.wantRelease()
	a.wantRelease()
	gone = a.gone
	a.unlock()
	return t, gone
}

// refusal is the target of a claimed client that will get no tunnel (its
// partner presented the same uuid): it is told why and closed.
type refusal struct {
	reason reason.Reason
	text   string
}

// ready implements target.
func (r refusal) ready(c *conn) {
	c.s.dismissFor(c, r.reason, r.text)
}

// dismiss ends a claimed connection that got no target of its own (or
// whose target gave up on it): what the relay still owed the client, then
// a close frame on WebSocket, then a lingering close. A connection whose
// set-up failed ends with its own reason, any other with r.
func (s *Server) dismissFor(c *conn, r reason.Reason, text string) {
	if text == "" {
		text = closeText(r)
	}
	s.dismiss(c, r, closeCode(r), text)
}

// dismiss is dismissFor with the close code given.
func (s *Server) dismiss(c *conn, r reason.Reason, code ws.StatusCode, text string) {
	if c.sk == nil {
		c.tk.End(c.reason)
		return
	}
	if c.failed {
		r = c.reason
		if r == reason.PeerClosed && c.ws != nil && c.ws.CloseRecv {
			// The client's close frame: answered (its reply is queued),
			// then closed at once, as a tunnel's end is (nothing may
			// follow the client's close frame).
			s.goodbye(c.sk, c.out.Take(), false, c.tk, r)
			return
		}
		if r == reason.PeerClosed || r == reason.IOError || r == reason.SlowReader || r == reason.PreAuthLimit || r == reason.Fault {
			c.sk.Close() // the client is gone or misbehaving, or the relay faulted on it: nothing more to say
			c.tk.End(r)
			return
		}
		switch {
		case c.cl != nil && c.cl.failCode != 0: // fail chose the close frame (a WebSocket protocol error's code)
			code, text = c.cl.failCode, c.cl.failText
		case r == reason.DataBeforeTunnel, r == reason.Shutdown:
			code, text = closeCode(r), closeText(r)
		}
	}
	final := c.out.Take()
	if c.ws != nil {
		q := handshake.Queue{B: final}
		c.ws.SendClose(&q, code, text)
		final = q.B
	} else {
		final = append(final, c.closingNote(r, text)...)
	}
	s.goodbye(c.sk, final, true, c.tk, r)
}
