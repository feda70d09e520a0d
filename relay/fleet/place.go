package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// hold is this node's hold on one pairing key: a relay.Lease shared by
// every local client of the key (refs).
type hold struct {
	f     *Fleet
	key   string // the Redis key
	value string // "NODE GEN ADDR", what Redis holds while this node owns the key
	// Guarded by f.mu.
	state     holdState
	refs      int           // placements that carry it (state held)
	published bool          // in Redis; false: taken while the store was unreachable
	wait      chan struct{} // placing, releasing: closed when that ends
	watchers  []watcher     // the clients waiting under the key (relay.Watcher)
	// taken: the key was found held by another node and counted lost
	// (leases_lost_total counts a key once, not every renewal that finds
	// it still taken); cleared when a renewal finds it this node's again.
	taken atomic.Bool
}

// watcher is one waiting client's relay.Watcher functions.
type watcher struct {
	waiting        func() bool
	replace, moved func()
}

// Watch implements relay.Watcher.
func (h *hold) Watch(waiting func() bool, replace, moved func()) {
	h.f.mu.Lock()
	h.watchers = append(h.watchers, watcher{waiting, replace, moved})
	h.f.mu.Unlock()
}

// lost handles a held key found held by another node: counted; if clients
// wait under it (no tunnel), the hold is dropped and they are placed
// again, to meet their partners where the key is now — unless that node
// is unreachable over the mesh: placed again they would only take the
// key back and split the pair, so they are told to reconnect instead (a
// balancer may bring them to a node that reaches the new holder).
func (f *Fleet) lost(ctx context.Context, h *hold) {
	if !h.taken.Swap(true) {
		f.leaseLost.Inc()
		f.log.Debug("fleet: a held key was taken by another node", "key", h.key)
	}
	f.mu.Lock()
	// Only the clients still waiting: one that waited and then paired
	// (its key is a tunnel's now) or left is no one to place again.
	var ws []watcher
	for _, w := range h.watchers {
		if w.waiting() {
			ws = append(ws, w)
		}
	}
	h.watchers = ws
	if len(ws) == 0 || f.held[h.key] != h {
		f.mu.Unlock()
		return
	}
	f.mu.Unlock()
	owner, err := f.rdb.Get(ctx, h.key).Result()
	node, _ := parseValue(owner)
	if err != nil || node == "" || node == f.cfg.NodeID {
		return
	}
	cut := f.unreachable(node)
	f.mu.Lock()
	if f.held[h.key] == h {
		delete(f.held, h.key)
		h.published = false // its release must not touch the new owner's value (it would not: compare-and-delete)
	}
	h.watchers = nil
	f.mu.Unlock()
	if cut {
		f.moved.Add(len(ws))
		f.log.Info("fleet: clients waiting here told to reconnect: their key moved to a node this one cannot reach",
			"node", f.cfg.NodeID, "holder", node, "clients", len(ws))
		for _, w := range ws {
			go w.moved()
		}
		return
	}
	f.replaced.Add(len(ws))
	for _, w := range ws {
		go w.replace()
	}
}

// Degraded implements relay.DegradedLease: the key was taken while the
// store was unreachable and is not in it yet (publishPending puts it
// there once the store answers again).
func (h *hold) Degraded() bool {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	return !h.published
}

type holdState uint8

const (
	placing   holdState = iota // the store is being asked; local partners wait
	held                       // this node owns the key
	releasing                  // the store is being told; a new placement waits
)

// Place implements relay.Fleet. Placements of one key on one node are
// serialised (a second local client waits for the first one's answer and
// then shares its lease), so the store sees one claim per key per node.
func (f *Fleet) Place(ctx context.Context, p relay.Placing) relay.Placement {
	select {
	case f.slots <- struct{}{}:
		defer func() { <-f.slots }()
	default:
		f.placed[outFailed].Inc()
		f.placeWarn("fleet: too many placements in flight", "max", f.cfg.MaxPlacing)
		return relay.Placement{Refuse: reason.Fleet}
	}
	key := f.pairKey(p.Key)
	for range 4 {
		f.mu.Lock()
		if h := f.held[key]; h != nil {
			if h.state == held {
				h.refs++
				f.mu.Unlock()
				f.placed[outLocal].Inc()
				return relay.Placement{Lease: h}
			}
			w := h.wait
			f.mu.Unlock()
			select {
			case <-w:
				continue
			case <-ctx.Done():
				f.placed[outFailed].Inc()
				return relay.Placement{Refuse: reason.Fleet}
			}
		}
		h := &hold{f: f, key: key, value: f.newValue(), state: placing, wait: make(chan struct{})}
		f.held[key] = h
		f.mu.Unlock()
		if pl, again := f.placeNew(ctx, h, p); !again {
			return pl
		}
	}
	f.placed[outFailed].Inc()
	return relay.Placement{Refuse: reason.Fleet}
}

// newValue is a fresh lease value for this node.
func (f *Fleet) newValue() string {
	var g [8]byte
	_, _ = rand.Read(g[:])
	return f.cfg.NodeID + " " + hex.EncodeToString(g[:]) + " " + f.cfg.Advertise
}

// placeNew asks the store about a key this node does not hold (h is its
// placing entry). again: the key changed hands meanwhile, start over.
func (f *Fleet) placeNew(ctx context.Context, h *hold, p relay.Placing) (pl relay.Placement, again bool) {
	taken, owner, err := f.claim(ctx, h)
	switch {
	case err != nil:
		// The store is away: the client may still meet its partner here.
		h.finish(true, false)
		f.placed[outDegraded].Inc()
		return relay.Placement{Lease: h, Degraded: true}, false
	case taken:
		h.finish(true, true)
		f.placed[outNew].Inc()
		return relay.Placement{Lease: h}, false
	}
	node, addr := parseValue(owner)
	if node == f.cfg.NodeID || !f.aliveNow(ctx, node) {
		// This node's own leftover (a release that never reached the
		// store) or a dead node's: take it over.
		return f.takeover(ctx, h, owner)
	}
	if f.unreachable(node) {
		// Alive in the store but silent over the mesh (a partition between
		// the two): waiting here beats a refusal for as long as the
		// partition lasts. Its waiting client ends at its alone timeout
		// and comes back, through the balancer, to a node that reaches
		// this one.
		f.log.Info("fleet: owner node unreachable over the mesh: taking its key over", "node", node, "addr", addr)
		return f.takeover(ctx, h, owner)
	}
	link, code, err := f.dial(ctx, addr, node, p)
	for wait := time.Millisecond; err == nil && code == relay.MeshRetry; wait = min(2*wait, 50*time.Millisecond) {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			err = ctx.Err()
			continue
		}
		link, code, err = f.dial(ctx, addr, node, p)
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		// Nothing listens at the owner's address: its process is gone
		// (its heartbeat has not expired yet), and its waiting client
		// with it. The key is this node's now.
		f.log.Info("fleet: owner node refuses connections: taking its key over", "node", node, "addr", addr)
		return f.takeover(ctx, h, owner)
	case err != nil:
		h.finish(false, false)
		f.placed[outFailed].Inc()
		f.dialFailed(node)
		f.placeWarn("fleet: owner node unreachable", "node", node, "addr", addr, "error", err)
		return relay.Placement{Refuse: reason.Fleet}, false
	case link != nil:
		h.finish(false, false)
		f.placed[outRemote].Inc()
		return relay.Placement{Link: link}, false
	case code == relay.MeshNotWaiting:
		// The owner's client left (its release is on its way): the key is
		// this node's now.
		return f.takeover(ctx, h, owner)
	case code == relay.MeshTunnelExists:
		h.finish(false, false)
		f.placed[outRefused].Inc()
		return relay.Placement{Refuse: reason.TunnelExists}, false
	case code == relay.MeshDuplicateUUID:
		h.finish(false, false)
		f.placed[outRefused].Inc()
		return relay.Placement{Refuse: reason.DuplicateUUID}, false
	}
	h.finish(false, false)
	f.placed[outFailed].Inc()
	f.placeWarn("fleet: owner node refused the mesh request", "node", node, "answer", code)
	return relay.Placement{Refuse: reason.Fleet}, false
}

// claim asks the store for h's key: taken (it is this node's now, under
// h's value), or held by owner; err: the store is away (recorded).
func (f *Fleet) claim(ctx context.Context, h *hold) (taken bool, owner string, err error) {
	res, err := claimScript.Run(ctx, f.rdb, []string{h.key}, h.value, f.cfg.LeaseTTL.Milliseconds()).Slice()
	if err == nil && len(res) == 0 {
		err = errors.New("claim script: empty answer")
	}
	if err != nil {
		f.storeDown(err)
		return false, "", err
	}
	if n, _ := res[0].(int64); n == 1 {
		return true, "", nil
	}
	owner, _ = res[1].(string)
	return false, owner, nil
}

// finish settles a placing hold: kept (held by this node; published: in
// the store) or dropped; placements waiting on it go on.
func (h *hold) finish(keep, published bool) {
	f := h.f
	f.mu.Lock()
	if keep {
		h.state, h.refs, h.published = held, 1, published
	} else if f.held[h.key] == h {
		delete(f.held, h.key)
	}
	close(h.wait)
	f.mu.Unlock()
}

// takeover replaces old (a stale owner's value) with h's and settles h.
func (f *Fleet) takeover(ctx context.Context, h *hold, old string) (relay.Placement, bool) {
	n, err := takeoverScript.Run(ctx, f.rdb, []string{h.key}, old, h.value, f.cfg.LeaseTTL.Milliseconds()).Int()
	switch {
	case err != nil:
		f.storeDown(err)
		h.finish(true, false)
		f.placed[outDegraded].Inc()
		return relay.Placement{Lease: h, Degraded: true}, false
	case n == 1:
		h.finish(true, true)
		f.placed[outTakeover].Inc()
		return relay.Placement{Lease: h}, false
	}
	h.finish(false, false)
	return relay.Placement{}, true
}

// parseValue splits a lease value into its node and mesh address. The
// generation and the address hold no space; the node id may (--node-id
// is free text), so the value is split at its last two spaces.
func parseValue(v string) (node, addr string) {
	i := strings.LastIndexByte(v, ' ')
	if i < 0 {
		return "", ""
	}
	j := strings.LastIndexByte(v[:i], ' ')
	if j <= 0 || i == j+1 || i == len(v)-1 {
		return "", ""
	}
	return v[:j], v[i+1:]
}

// aliveNow reports whether node heartbeats: from the node set as last
// read, or, for a node not in it (it may have joined since), from the
// store.
func (f *Fleet) aliveNow(ctx context.Context, node string) bool {
	if node == "" {
		return false
	}
	if f.alive(node) {
		return true
	}
	n, err := f.rdb.Exists(ctx, f.nodeKey(node)).Result()
	return err == nil && n == 1
}

// Release implements relay.Lease: the last local client of the key gone,
// the store is told (off the caller's goroutine); a placement of the same
// key meanwhile waits for it.
func (h *hold) Release() {
	f := h.f
	f.mu.Lock()
	h.refs--
	if h.refs > 0 {
		f.mu.Unlock()
		return
	}
	if !h.published {
		if f.held[h.key] == h { // not a later hold of the key (lost)
			delete(f.held, h.key)
		}
		f.mu.Unlock()
		return
	}
	h.state, h.wait = releasing, make(chan struct{})
	f.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		// On failure the key expires with its lease; until then a client
		// of the key elsewhere finds this node, which has nobody waiting,
		// and takes it over.
		if err := releaseScript.Run(ctx, f.rdb, []string{h.key}, h.value).Err(); err != nil {
			f.storeDown(err)
		}
		cancel()
		f.mu.Lock()
		if f.held[h.key] == h {
			delete(f.held, h.key)
		}
		close(h.wait)
		f.mu.Unlock()
	}()
}

// renewBatch is how many renewals go in one pipeline.
const renewBatch = 512

// renew extends every key this node holds, in pipelined batches, and
// claims again (idempotently) any the store has lost.
func (f *Fleet) renew(ctx context.Context) {
	f.mu.Lock()
	hs := make([]*hold, 0, len(f.held))
	for _, h := range f.held {
		if h.state == held && h.published {
			hs = append(hs, h)
		}
	}
	f.mu.Unlock()
	ttl := f.cfg.LeaseTTL.Milliseconds()
	for len(hs) > 0 {
		batch := hs[:min(len(hs), renewBatch)]
		hs = hs[len(batch):]
		pipe := f.rdb.Pipeline()
		for _, h := range batch {
			renewScript.Eval(ctx, pipe, []string{h.key}, h.value, ttl) // EVAL: a pipeline cannot fall back from EVALSHA
		}
		cmds, err := pipe.Exec(ctx)
		if err != nil && len(cmds) == 0 {
			f.storeDown(err)
			return
		}
		for i, c := range cmds {
			n, err := c.(interface{ Int() (int, error) }).Int()
			switch {
			case err != nil:
				f.storeDown(err)
				return
			case n == 0:
				f.lost(ctx, batch[i])
			case n == 2:
				f.reasserted.Inc()
				batch[i].taken.Store(false)
			default:
				batch[i].taken.Store(false)
			}
		}
	}
}

// publishPending claims in the store the keys taken while it was away.
func (f *Fleet) publishPending(ctx context.Context) {
	f.mu.Lock()
	var hs []*hold
	for _, h := range f.held {
		if h.state == held && !h.published {
			hs = append(hs, h)
		}
	}
	f.mu.Unlock()
	for _, h := range hs {
		taken, _, err := f.claim(ctx, h)
		if err != nil {
			return
		}
		if taken {
			f.mu.Lock()
			kept := f.held[h.key] == h && h.state == held
			if kept {
				h.published = true
			}
			f.mu.Unlock()
			if !kept { // its clients left meanwhile
				releaseScript.Run(ctx, f.rdb, []string{h.key}, h.value)
			}
			continue
		}
		// Another node took the key during the outage: clients waiting
		// here go to it.
		f.lost(ctx, h)
	}
}

// placeWarn logs a failed placement, one line per period (placeLog) with
// how many were held back: a partition or a burst of clients fails
// placements by the thousand, each counted in
// meetpoint_fleet_placements_total{outcome="failed"}.
func (f *Fleet) placeWarn(msg string, args ...any) {
	ok, held := f.placeLog.allow(time.Now())
	if !ok {
		return
	}
	if held > 0 {
		args = append(args, "held_back", held)
	}
	f.log.Warn(msg+" (failed placements are counted; this line comes at most once every 10 s)", args...)
}
