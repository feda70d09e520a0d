// Package fleet lets any number of relays behind a balancer pair any two
// clients: the two ends of a (token, nonce) pair may land on different
// nodes. Redis (one server, Cluster or Sentinel) holds who owns each key
// and the node set; the bytes go one hop over a node-to-node mesh link on
// the relay port itself. See docs/fleet.md for the design.
//
// Who owns a pair: the node where its first client arrived. That node
// claims the key in Redis (an atomic script) for a lease, renewed while the
// client waits or its tunnel lives, released when the key is free. A
// client arriving on another node finds the owner there, dials the
// owner's advertised address and sends Mesh.Join, signed with the mesh
// key; the owner pairs the link with its waiting client, exactly as if the
// client had arrived there, and the dialling node tunnels its client to the
// link. Every single-node rule (a third client, a duplicate uuid, partner
// loss) is the owner's registry's, so it holds fleet-wide.
//
// Costs: one Redis round trip per client whose key this node does not
// hold (the claim script); none for a partner meeting on the same node;
// one (asynchronous) to release; renewals in pipelined batches, one
// command per held key per LeaseTTL/3. A dead node's keys expire with
// their lease; its node entry with its heartbeat.
package fleet

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay"
)

// Config is a node's part of a fleet (meetpoint serve --fleet ...).
type Config struct {
	// Redis is the fleet's store (ParseURL).
	Redis redis.UniversalClient
	// NodeID names this node; unique in the fleet (default: the host name).
	NodeID string
	// Advertise is where other nodes reach this one: HOST:PORT of a relay
	// listener. Empty: the server's first listen address, an unspecified
	// host (0.0.0.0, ::) replaced by this host's first non-loopback
	// address.
	Advertise string
	// MeshKey signs mesh requests (meetpoint token --gen-key); every node
	// of a fleet has the same one. At least 16 bytes.
	MeshKey []byte
	// Prefix starts every key the fleet writes (default "meetpoint:").
	Prefix string
	// LeaseTTL is how long a key outlives its node (default 30s); renewed
	// every LeaseTTL/3.
	LeaseTTL time.Duration
	// Heartbeat is how often the node announces itself (default 2s); a
	// node missing three heartbeats is dead to the others.
	Heartbeat time.Duration
	// MaxPlacing bounds placements in flight (default 4096); beyond it a
	// client is refused with the fleet reason.
	MaxPlacing int
	// Logger logs; default slog.Default().
	Logger *slog.Logger
	// CertFingerprint, set when the relay serves TLS, is the SHA-256
	// (hex) of its current certificate: announced in the heartbeat, so
	// that other nodes open their mesh links to this one over TLS, pinned
	// to it. Nil: mesh links to this node are plain TCP.
	CertFingerprint func() string
	// MeshPing is how often this node pings every other node over a
	// control connection (default 2s).
	MeshPing time.Duration
	// MeshLost is how long a node may leave every ping unanswered before
	// the tunnels crossing the mesh to it are ended (far_node_lost;
	// default 15s).
	MeshLost time.Duration
	// SourceIPs, if set, are the local addresses this node dials mesh
	// links from, in turn: each (source, owner) pair has its own ~28,000
	// ephemeral ports, so k addresses carry k times as many tunnels to
	// one owner. Empty: the kernel's choice.
	SourceIPs []net.IP
	// Reach, if set, serves Mesh.Reach: another node's TunnelProxy client
	// for a server registered here (tunnelproxy.Service.RegisterMeshClient).
	Reach relay.MethodHandler
}

// Fleet is one node's membership of a fleet: a relay.Fleet (placing
// clients), the Mesh.Join handler, the node set and its metrics.
type Fleet struct {
	cfg      Config
	rdb      redis.UniversalClient
	srv      *relay.Server
	log      *slog.Logger
	instance string // random per process: tells a restarted node from its old self
	started  time.Time
	keyCheck string // the mesh key's check value (keyCheck), announced in the heartbeat
	// incarnation counts the processes that have started under this node
	// id (an INCR at Start): a heartbeat never overwrites a later one's.
	incarnation int64
	slots       chan struct{} // placements in flight

	// up is whether the last store operation worked: cross-node pairing
	// needs it; pairs meeting on this node do not.
	up atomic.Bool

	mu sync.Mutex
	// held is every key this node holds or is placing, by pair key name.
	// Invariant: a key is in Redis with this node's value only while its
	// entry is here (held or releasing), so a node never releases a key it
	// (or another node) took since.
	held map[string]*hold
	// nodes is the node set as last read (id → info).
	nodes map[string]NodeInfo
	// strangers are the node instances found announcing another mesh key
	// (each logged and counted once).
	strangers  map[string]bool
	superseded bool // a later incarnation of this node id heartbeats: logged once

	stop chan struct{}
	done sync.WaitGroup

	replays    replayCache // mesh request signatures accepted, within their validity
	refusalLog logEvery    // one line per period for refused mesh requests
	placeLog   logEvery    // one line per period for failed placements
	// peers is every other node's liveness (ping.go), by id; guarded by mu.
	peers       map[string]*peer
	pings       sync.WaitGroup // pings in flight
	pingCtx     context.Context
	cancelPings context.CancelFunc
	nextSource  atomic.Uint64 // round robin over SourceIPs

	set       *metrics.Set
	placed    [nOutcomes]*metrics.Counter
	leaseLost *metrics.Counter
	storeErrs *metrics.Counter
	keyWrong  *metrics.Counter
	// Store loss (a restart without persistence, a failover that lost
	// writes): the store's epoch as last read, the losses seen and the
	// keys claimed again.
	epoch      string
	storeLoss  *metrics.Counter
	reasserted *metrics.Counter
	replaced   *metrics.Counter
	moved      *metrics.Counter
}

// NodeInfo is one node of the set, as its heartbeat describes it.
type NodeInfo struct {
	ID        string    `json:"id"`
	Addr      string    `json:"addr"`
	Instance  string    `json:"instance"`
	Started   time.Time `json:"started"`
	Seen      time.Time `json:"seen"`
	Tunnels   uint64    `json:"tunnels"`
	Held      int       `json:"held"`
	Available bool      `json:"available"`      // its store was reachable at its last heartbeat
	Cert      string    `json:"cert,omitempty"` // SHA-256 of its TLS certificate: mesh links to it use TLS
	// KeyCheck is a MAC of a fixed label under the node's mesh key (never
	// the key): nodes whose values differ cannot pair with each other.
	KeyCheck string `json:"keyCheck,omitempty"`
	// Incarnation numbers the processes that have run as this node id.
	Incarnation int64 `json:"inc,omitempty"`
}

// keyCheck is the check value of a mesh key: the first 8 bytes of an
// HMAC-SHA256 of a fixed label, in hex. It tells two keys apart without
// revealing either.
func keyCheck(key []byte) string {
	m := hmac.New(sha256.New, key)
	io.WriteString(m, "meetpoint mesh key check v1")
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// outcome is how a placement ended (meetpoint_fleet_placements_total).
type outcome uint8

const (
	outNew      outcome = iota // this node took the key
	outLocal                   // the key was already held here (a partner placing too)
	outTakeover                // the owner was dead or had nobody waiting: taken over
	outRemote                  // the partner was on another node: a mesh link
	outRefused                 // a fleet-wide rule refused the client (third client, duplicate uuid)
	outDegraded                // the store was unreachable: paired here only
	outFailed                  // the owner could not be reached, or too many placements
	nOutcomes
)

var outcomeNames = [nOutcomes]string{"new", "local", "takeover", "remote", "refused", "degraded", "failed"}

// New joins srv to the fleet described by cfg: it registers Mesh.Join,
// the placement hook and the fleet's metrics on srv. Call it before
// srv.Start, then Start.
func New(cfg Config, srv *relay.Server) (*Fleet, error) {
	if cfg.Redis == nil {
		return nil, errors.New("fleet: no Redis client")
	}
	if len(cfg.MeshKey) < 16 {
		return nil, errors.New("fleet: the mesh key must be at least 16 bytes (meetpoint token --gen-key)")
	}
	if cfg.NodeID == "" {
		return nil, errors.New("fleet: a node id is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "meetpoint:"
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 30 * time.Second
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 2 * time.Second
	}
	if cfg.MeshPing <= 0 {
		cfg.MeshPing = 2 * time.Second
	}
	if cfg.MeshLost <= 0 {
		cfg.MeshLost = 15 * time.Second
	}
	if cfg.MaxPlacing <= 0 {
		cfg.MaxPlacing = 4096
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var inst [8]byte
	_, _ = rand.Read(inst[:])
	f := &Fleet{cfg: cfg, rdb: cfg.Redis, srv: srv, log: cfg.Logger, instance: hex.EncodeToString(inst[:]),
		started: time.Now(), keyCheck: keyCheck(cfg.MeshKey), slots: make(chan struct{}, cfg.MaxPlacing),
		held: make(map[string]*hold), nodes: make(map[string]NodeInfo), strangers: make(map[string]bool),
		stop: make(chan struct{}), set: metrics.NewSet(), peers: make(map[string]*peer),
		refusalLog: logEvery{period: 10 * time.Second}, placeLog: logEvery{period: 10 * time.Second}}
	f.pingCtx, f.cancelPings = context.WithCancel(context.Background())
	for i := range f.placed {
		f.placed[i] = f.set.NewCounter(fmt.Sprintf(`meetpoint_fleet_placements_total{outcome=%q}`, outcomeNames[i]))
	}
	f.leaseLost = f.set.NewCounter(`meetpoint_fleet_leases_lost_total`)
	f.storeErrs = f.set.NewCounter(`meetpoint_fleet_store_errors_total`)
	f.keyWrong = f.set.NewCounter(`meetpoint_fleet_mesh_key_mismatch_total`)
	f.storeLoss = f.set.NewCounter(`meetpoint_fleet_store_losses_total`)
	f.reasserted = f.set.NewCounter(`meetpoint_fleet_keys_reasserted_total`)
	f.replaced = f.set.NewCounter(`meetpoint_fleet_clients_replaced_total`)
	f.moved = f.set.NewCounter(`meetpoint_fleet_clients_moved_total`)
	f.set.NewGauge(`meetpoint_fleet_available`, func() float64 { return b2f(f.up.Load()) })
	f.set.NewGauge(`meetpoint_fleet_nodes`, func() float64 { f.mu.Lock(); defer f.mu.Unlock(); return float64(len(f.nodes)) })
	f.set.NewGauge(`meetpoint_fleet_keys_held`, func() float64 { f.mu.Lock(); defer f.mu.Unlock(); return float64(len(f.held)) })
	srv.HandleMethod("Mesh.Join", f.handleJoin)
	srv.HandleMethod("Mesh.Ping", f.handlePing)
	if cfg.Reach != nil {
		srv.HandleMethod("Mesh.Reach", f.handleReach)
	}
	srv.SetFleet(f)
	srv.AddReporter(f)
	srv.AddMetrics(f.set, fleetDocs)
	srv.AddReadiness("fleet", f.ready)
	srv.AddReadiness("mesh", f.meshReady)
	return f, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Start checks the store, announces the node and starts its heartbeat and
// lease renewal. It fails if the store cannot be reached or another live
// process announces the same node id.
func (f *Fleet) Start(ctx context.Context) error {
	if f.cfg.Advertise == "" {
		addrs := f.srv.Addrs()
		if len(addrs) == 0 {
			return errors.New("fleet: start the server first, or give an advertised address")
		}
		f.cfg.Advertise = advertised(addrs[0])
	}
	for _, s := range []*redis.Script{claimScript, takeoverScript, releaseScript, renewScript, announceScript} {
		if err := s.Load(ctx, f.rdb).Err(); err != nil {
			return fmt.Errorf("fleet: store: %v", err)
		}
	}
	inc, err := f.rdb.Incr(ctx, f.incKey(f.cfg.NodeID)).Result()
	if err != nil {
		return fmt.Errorf("fleet: store: %v", err)
	}
	f.incarnation = inc
	nodes, err := f.readNodes(ctx)
	if err != nil {
		return fmt.Errorf("fleet: store: %v", err)
	}
	if other, ok := nodes[f.cfg.NodeID]; ok && other.Instance != f.instance {
		if other.Addr != f.cfg.Advertise {
			return fmt.Errorf("fleet: node id %q is in use by a live node at %s (last seen %s); give each node its own --node-id",
				f.cfg.NodeID, other.Addr, other.Seen.Format(time.RFC3339))
		}
		// Our own address: the record is a dead predecessor's (a crash,
		// a kill -9) unless another process answers there as this node —
		// an address given (--advertise, a copied unit) is no proof that
		// it is ours. This incarnation takes a dead one's over; its keys
		// are taken over as clients come.
		if f.liveAt(ctx, other.Addr) {
			return fmt.Errorf("fleet: node id %q is in use by a live process at %s (it answers there as this node); give each node its own --node-id and --advertise",
				f.cfg.NodeID, other.Addr)
		}
		f.log.Info("fleet: taking over this node id from its previous process at the same address",
			"node", f.cfg.NodeID, "addr", other.Addr, "incarnation", inc)
	}
	for _, n := range nodes {
		if n.ID != f.cfg.NodeID && n.Addr == f.cfg.Advertise {
			f.log.Warn("fleet: another node advertises this node's address: mesh links meant for one reach the other; give each node its own --advertise",
				"node", f.cfg.NodeID, "other", n.ID, "addr", n.Addr)
		}
		if n.KeyCheck != "" && n.KeyCheck != f.keyCheck {
			// Announce ourselves once, so that the fleet's nodes log the
			// refusal too, and stay out.
			_, _ = f.announce(ctx)
			f.keyWrong.Inc()
			return fmt.Errorf("fleet: node %s at %s uses another mesh key than this node (key check %s, ours %s): not joining; give every node the same --mesh-key-file",
				n.ID, n.Addr, n.KeyCheck, f.keyCheck)
		}
	}
	f.heartbeat(ctx)
	f.done.Add(2)
	go f.run()
	go f.pingLoop()
	f.log.Info("fleet joined", "node", f.cfg.NodeID, "advertise", f.cfg.Advertise, "nodes", len(f.Nodes()))
	return nil
}

// Close stops the heartbeat, releases every key this node holds and takes
// the node out of the set (unless a later process runs as its id). The tunnels themselves end with the server.
func (f *Fleet) Close() error {
	select {
	case <-f.stop:
		return nil
	default:
	}
	close(f.stop)
	f.done.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	f.mu.Lock()
	var keys, vals []string
	for k, h := range f.held {
		if h.published {
			keys, vals = append(keys, k), append(vals, h.value)
		}
	}
	f.mu.Unlock()
	pipe := f.rdb.Pipeline()
	for i := range keys {
		releaseScript.Eval(ctx, pipe, []string{keys[i]}, vals[i])
	}
	// Only this process's record: a later one may run as this node id.
	leaveScript.Eval(ctx, pipe, []string{f.nodeKey(f.cfg.NodeID), f.setKey()}, f.instance, f.cfg.NodeID)
	_, err := pipe.Exec(ctx)
	return err
}

// advertised is where other nodes can reach a listener on a.
func advertised(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ifs, err := net.InterfaceAddrs(); err == nil {
			for _, ia := range ifs {
				if n, ok := ia.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
					host = n.IP.String()
					break
				}
			}
		}
	}
	return net.JoinHostPort(host, port)
}

func (f *Fleet) nodeKey(id string) string { return f.cfg.Prefix + "{nodes}:node:" + id }
func (f *Fleet) epochKey() string         { return f.cfg.Prefix + "{nodes}:epoch" }
func (f *Fleet) setKey() string           { return f.cfg.Prefix + "{nodes}:set" }
func (f *Fleet) incKey(id string) string  { return f.cfg.Prefix + "{nodes}:inc:" + id }

// pairKey is the Redis key of a pairing key: a MAC of the token and nonce
// under the mesh key, so the store never holds a token.
func (f *Fleet) pairKey(k relay.PairKey) string {
	m := hmac.New(sha256.New, f.cfg.MeshKey)
	io.WriteString(m, "meetpoint pair\x00")
	io.WriteString(m, k.Token)
	m.Write([]byte{0})
	io.WriteString(m, k.Nonce)
	return f.cfg.Prefix + "pair:" + hex.EncodeToString(m.Sum(nil)[:16])
}

func (f *Fleet) run() {
	defer f.done.Done()
	hb := time.NewTicker(f.cfg.Heartbeat)
	renew := time.NewTicker(f.cfg.LeaseTTL / 3)
	defer hb.Stop()
	defer renew.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-hb.C:
			ctx, cancel := context.WithTimeout(context.Background(), f.cfg.Heartbeat)
			f.heartbeat(ctx)
			cancel()
		case <-renew.C:
			ctx, cancel := context.WithTimeout(context.Background(), f.cfg.LeaseTTL/3)
			f.renew(ctx)
			cancel()
		}
	}
}

// heartbeat announces the node, reads the node set and, if the store has
// just come back, publishes the keys held while it was away.
func (f *Fleet) heartbeat(ctx context.Context) {
	epoch, ok := f.announce(ctx)
	if !ok {
		return
	}
	if f.epoch == "" {
		f.epoch = epoch
	} else if epoch != f.epoch {
		f.epoch = epoch
		f.storeLost(ctx)
	}
	all, err := f.readNodes(ctx)
	if err != nil {
		f.storeDown(err)
		return
	}
	nodes := make(map[string]NodeInfo, len(all))
	for id, n := range all {
		if n.KeyCheck != "" && n.KeyCheck != f.keyCheck {
			f.stranger(n)
			continue
		}
		nodes[id] = n
	}
	wasUp := f.up.Swap(true)
	f.mu.Lock()
	f.nodes = nodes
	f.mu.Unlock()
	if !wasUp {
		f.log.Info("fleet store reachable", "node", f.cfg.NodeID, "nodes", len(nodes))
		f.publishPending(ctx)
	}
}

// storeLost claims again every key this node holds: the store has lost
// its data (its epoch changed). Claims are idempotent: a key still there
// with this node's value is only renewed, one another node took
// meanwhile is left to it (counted lost).
func (f *Fleet) storeLost(ctx context.Context) {
	f.mu.Lock()
	n := len(f.held)
	f.mu.Unlock()
	f.log.Warn("fleet store lost its data (restarted without persistence, or failed over): claiming this node's keys again",
		"node", f.cfg.NodeID, "keys", n)
	f.renew(ctx)
	f.publishPending(ctx)
	f.storeLoss.Inc()
}

// announce writes this node's record (unless a later incarnation of its
// id has written one) and adds it to the node set, and returns the
// store's epoch; false: the store is away (recorded).
func (f *Fleet) announce(ctx context.Context) (epoch string, ok bool) {
	f.mu.Lock()
	held := len(f.held)
	f.mu.Unlock()
	me := NodeInfo{ID: f.cfg.NodeID, Addr: f.cfg.Advertise, Instance: f.instance, Started: f.started,
		Seen: time.Now(), Held: held, Available: true, KeyCheck: f.keyCheck, Incarnation: f.incarnation}
	if f.cfg.CertFingerprint != nil {
		me.Cert = f.cfg.CertFingerprint()
	}
	me.Tunnels = f.srv.Stats().TunnelsActive
	b, _ := json.Marshal(me)
	var fresh [8]byte
	_, _ = rand.Read(fresh[:])
	res, err := announceScript.Run(ctx, f.rdb, []string{f.nodeKey(me.ID), f.setKey(), f.epochKey(), f.incKey(me.ID)}, b,
		(3 * f.cfg.Heartbeat).Milliseconds(), f.incarnation, me.ID, hex.EncodeToString(fresh[:])).Slice()
	if err == nil && len(res) != 2 {
		err = errors.New("announce script: unexpected answer")
	}
	if err != nil {
		f.storeDown(err)
		return "", false
	}
	n, _ := res[0].(int64)
	epoch, _ = res[1].(string)
	if n == 0 {
		f.mu.Lock()
		first := !f.superseded
		f.superseded = true
		f.mu.Unlock()
		if first {
			f.log.Error("fleet: a later process runs as this node id (same id and address): this one no longer announces itself; stop it",
				"node", f.cfg.NodeID, "incarnation", f.incarnation)
		}
	}
	return epoch, true
}

// readNodes reads every node record of the set; members whose record
// expired are taken out of the set.
func (f *Fleet) readNodes(ctx context.Context) (map[string]NodeInfo, error) {
	ids, err := f.rdb.SMembers(ctx, f.setKey()).Result()
	if err != nil {
		return nil, err
	}
	nodes := make(map[string]NodeInfo, len(ids))
	if len(ids) == 0 {
		return nodes, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = f.nodeKey(id)
	}
	vals, err := f.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, err
	}
	var gone []any
	for i, v := range vals {
		s, ok := v.(string)
		var n NodeInfo
		if !ok || json.Unmarshal([]byte(s), &n) != nil {
			gone = append(gone, ids[i])
			continue
		}
		nodes[n.ID] = n
	}
	if len(gone) > 0 {
		f.rdb.SRem(ctx, f.setKey(), gone...)
	}
	return nodes, nil
}

// stranger records a node announcing another mesh key: left out of the
// node set, logged and counted once per process.
func (f *Fleet) stranger(n NodeInfo) {
	f.mu.Lock()
	seen := f.strangers[n.ID+" "+n.Instance]
	f.strangers[n.ID+" "+n.Instance] = true
	f.mu.Unlock()
	if !seen {
		f.keyWrong.Inc()
		f.log.Error("fleet: a node uses another mesh key than this one: refused (it cannot pair with this node); give every node the same --mesh-key-file",
			"node", f.cfg.NodeID, "other", n.ID, "addr", n.Addr, "key_check", n.KeyCheck, "ours", f.keyCheck)
	}
}

// storeDown records a failed store operation.
func (f *Fleet) storeDown(err error) {
	f.storeErrs.Inc()
	if f.up.Swap(false) {
		f.log.Warn("fleet store unreachable: pairing only clients that meet on this node", "node", f.cfg.NodeID, "error", err)
	}
}

// alive reports whether node id heartbeats, as last read: its heartbeat
// key existed then (it expires 3 heartbeats after the last one; no clock
// of another node is compared with ours).
func (f *Fleet) alive(id string) bool {
	f.mu.Lock()
	_, ok := f.nodes[id]
	f.mu.Unlock()
	return ok
}

// Nodes is the node set as last read, sorted by id.
func (f *Fleet) Nodes() []NodeInfo {
	f.mu.Lock()
	out := make([]NodeInfo, 0, len(f.nodes))
	for _, n := range f.nodes {
		out = append(out, n)
	}
	f.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Available reports whether the store answered the last operation.
func (f *Fleet) Available() bool { return f.up.Load() }

// ready is the fleet's readiness (relay.Server.AddReadiness).
func (f *Fleet) ready() (bool, string) {
	if f.up.Load() {
		return true, "ready"
	}
	return false, "store unreachable: cross-node pairing refused, clients meeting on this node still paired"
}

// Report implements relay.Reporter.
func (f *Fleet) Report(snap *relay.Snapshot) {
	snap.Fleet = &relay.FleetInfo{Node: f.cfg.NodeID, Advertise: f.cfg.Advertise, Available: f.up.Load()}
	for _, n := range f.Nodes() {
		snap.Fleet.Nodes = append(snap.Fleet.Nodes, relay.FleetNode{ID: n.ID, Addr: n.Addr, Started: n.Started,
			Seen: n.Seen, Tunnels: n.Tunnels})
	}
	for _, n := range f.srv.MeshPeers() {
		snap.Fleet.MeshLinks += uint64(n)
	}
}

// Traffic implements relay.Reporter: the bytes are the engine's tunnels'.
func (f *Fleet) Traffic() uint64 { return 0 }

// fleetDocs documents the fleet's metric families.
var fleetDocs = map[string]relay.MetricDoc{
	"meetpoint_fleet_placements_total":        {Type: "counter", Help: "Clients placed by the fleet, by outcome: new (this node took the key), local, takeover (a dead or empty owner), remote (tunnelled to the owner over a mesh link), refused (third client, duplicate uuid), degraded (store unreachable: paired here only), failed."},
	"meetpoint_fleet_leases_lost_total":       {Type: "counter", Help: "Held keys found taken by another node at renewal."},
	"meetpoint_fleet_store_losses_total":      {Type: "counter", Help: "Times the fleet's Redis was found to have lost its data (its epoch changed: a restart without persistence, a failover that lost writes); this node then claimed its keys again."},
	"meetpoint_fleet_keys_reasserted_total":   {Type: "counter", Help: "Held keys found missing from the store at renewal (or after a store loss) and claimed again under this node."},
	"meetpoint_fleet_clients_replaced_total":  {Type: "counter", Help: "Clients waiting here whose key another node took (a store that lost it, an outage): placed again, to meet their partners on that node."},
	"meetpoint_fleet_clients_moved_total":     {Type: "counter", Help: "Clients waiting here whose key a node across a mesh partition took: ended as fleet_moved and told to reconnect."},
	"meetpoint_fleet_store_errors_total":      {Type: "counter", Help: "Failed operations on the fleet's Redis."},
	"meetpoint_mesh_links_active":             {Type: "gauge", Help: "Tunnels of this node that cross the mesh now, by the node at their far end (peer): links this node dialled and links it accepted."},
	"meetpoint_mesh_dial_failures_total":      {Type: "counter", Help: "Mesh connections to a node (peer) that could not be opened: placements and liveness pings (a refused connection is not counted: the node's host answered)."},
	"meetpoint_mesh_peer_reachable":           {Type: "gauge", Help: "1 while a node (peer) answers this node's liveness pings, 0 once it has answered none for the mesh-lost time (a partition between the two)."},
	"meetpoint_mesh_rtt_seconds":              {Type: "gauge", Help: "Round trip of the last liveness ping answered by a node (peer)."},
	"meetpoint_mesh_pings_total":              {Type: "counter", Help: "Liveness pings a node (peer) answered with success."},
	"meetpoint_mesh_ping_failures_total":      {Type: "counter", Help: "Liveness pings sent to a node (peer) over an open control connection that it refused or did not answer in time (the connection is then dropped and dialled again)."},
	"meetpoint_mesh_peer_lost_total":          {Type: "counter", Help: "Times a node (peer) answered no liveness ping for the mesh-lost time while tunnels crossed to it: those tunnels were ended (far_node_lost)."},
	"meetpoint_fleet_available":               {Type: "gauge", Help: "1 while the fleet's Redis answers (cross-node pairing possible)."},
	"meetpoint_fleet_nodes":                   {Type: "gauge", Help: "Nodes in the fleet's node set (heartbeating with this node's mesh key)."},
	"meetpoint_fleet_mesh_key_mismatch_total": {Type: "counter", Help: "Nodes refused because they announce another mesh key (each process once; on the refused node, its refusal to join)."},
	"meetpoint_fleet_keys_held":               {Type: "gauge", Help: "Pairing keys this node holds in the fleet (waiting clients and tunnels)."},
}
