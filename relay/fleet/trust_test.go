package fleet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/fleet"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// logTail is a logger whose lines a test reads (and prints if it fails).
func logTail(t testing.TB) (*slog.Logger, *testutil.Tail) {
	tail := &testutil.Tail{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", tail.String())
		}
	})
	return slog.New(slog.NewTextHandler(tail, nil)), tail
}

// lines counts the lines of tail that contain every one of words.
func lines(tail *testutil.Tail, words ...string) int {
	n := 0
	for l := range strings.Lines(tail.String()) {
		all := true
		for _, w := range words {
			all = all && strings.Contains(l, w)
		}
		if all {
			n++
		}
	}
	return n
}

// TestWrongMeshKeyRefusedAtJoin: a node started with another mesh key than
// the fleet's is refused when it joins: its Start fails with one clear
// error, the fleet's node logs one error line and counts it, and the
// stranger never enters the node set (pairing is not split silently).
func TestWrongMeshKeyRefusedAtJoin(t *testing.T) {
	addr := redisAddr(t)
	alog, atail := logTail(t)
	a := startNodeWith(t, addr, "key-a", nil, func(c *fleet.Config) { c.Logger = alog })

	blog, btail := logTail(t)
	b, err := joinNode(t, addr, "key-b", nil, func(c *fleet.Config) {
		c.MeshKey, c.Logger = []byte("another key, 32 bytes long......"), blog
	})
	if err == nil || !strings.Contains(err.Error(), "key-a") || !strings.Contains(err.Error(), "another mesh key") {
		t.Fatalf("a node with another mesh key joined: Start says %v", err)
	}
	if relaytest.Metric(t, b.s, "meetpoint_fleet_mesh_key_mismatch_total") != 1 {
		t.Error("the refused node did not count its refusal")
	}
	relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, a.s, "meetpoint_fleet_mesh_key_mismatch_total") == 1 },
		"the fleet's node counts the node with another mesh key")
	if n := lines(atail, "level=ERROR", "another mesh key", "other=key-b"); n != 1 {
		t.Errorf("the fleet's node logged %d error lines about the stranger, want 1", n)
	}
	if strings.Contains(atail.String()+btail.String(), string(meshKey)) {
		t.Error("a mesh key was logged")
	}
	// Another heartbeat or two: still one line, and the stranger is not a node.
	time.Sleep(2 * testHeartbeat)
	if n := lines(atail, "level=ERROR", "another mesh key"); n != 1 || len(a.f.Nodes()) != 1 ||
		relaytest.Metric(t, a.s, "meetpoint_fleet_nodes") != 1 {
		t.Errorf("after more heartbeats: %d error lines, node set %v", n, a.f.Nodes())
	}
}

// TestRestartedNodeTakesOverItsID: a node killed without a goodbye (its
// record still live in the store) restarts with the same id and address
// and joins at once, and the dead process's record no longer counts; a
// node with the same id at another address is still refused, and so is
// one that gives the same address (--advertise) while the first process
// still runs and answers there. A node that advertises another node's
// address joins with a warning.
func TestRestartedNodeTakesOverItsID(t *testing.T) {
	addr := redisAddr(t)
	old := startNode(t, addr, "phoenix", nil)
	adv := relaytest.Addr(old.s)
	if _, err := joinNode(t, addr, "phoenix", nil, func(c *fleet.Config) { c.Advertise = adv }); err == nil ||
		!strings.Contains(err.Error(), "in use by a live process") {
		t.Fatalf("the same node id and address while its process runs: %v, want refused", err)
	}
	logs := &testutil.Tail{}
	copycat, err := joinNode(t, addr, "copycat", nil, func(c *fleet.Config) {
		c.Advertise = adv
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "another node advertises this node's address") {
		t.Errorf("a node advertising phoenix's address joined without a warning:\n%s", logs.String())
	}
	copycat.f.Close()
	copycat.s.Close()
	fleet.Kill(old.f)
	old.s.Close()

	// Another address under that id: refused while the record lives.
	if _, err := joinNode(t, addr, "phoenix", nil, nil); err == nil || !strings.Contains(err.Error(), "in use by a live node") {
		t.Fatalf("the same node id at another address: %v, want refused", err)
	}

	// The same address: taken over at once.
	again := startNode(t, addr, "phoenix", func(c *relay.Config) { c.Listen = []string{adv} })
	other := startNode(t, addr, "witness", nil)
	relaytest.WaitFor(t, func() bool { return len(other.f.Nodes()) == 2 }, "the witness sees the restarted node")
	ta, tb := pairAcross(t, again, other, "phoenix-pair")
	exchange(t, ta, tb, 1000)
}

// TestStoreLossReasserted: Redis restarts empty (no persistence) while a
// client waits on one node and a cross-node tunnel lives. Every node sees
// the store's epoch change and claims its keys again: the waiting client
// is still found by its partner arriving on another node, a third client
// of the live tunnel's token is refused (one tunnel per token holds), and
// no lease is counted lost.
func TestStoreLossReasserted(t *testing.T) {
	addr, stop := testutil.Redis(t, 0)
	// Renewals far apart: what the test sees comes from the store-loss
	// detection, not from a renewal that happens to follow the restart.
	long := func(c *fleet.Config) { c.LeaseTTL = time.Minute }
	a := startNodeWith(t, addr, "loss-a", nil, long)
	b := startNodeWith(t, addr, "loss-b", nil, long)
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")
	live1, live2 := pairAcross(t, a, b, "loss-live")
	waiting := waitOn(t, a, client.Options{URL: url(a.s, false), Token: "loss-wait", Name: "waiter"})

	stop()
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	var p int
	fmt.Sscan(port, &p)
	testutil.Redis(t, p) // empty: no persistence
	for _, nd := range []*node{a, b} {
		relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, nd.s, "meetpoint_fleet_store_losses_total") == 1 },
			nd.id+" sees the store's data lost and claims its keys again")
	}
	if relaytest.Metric(t, a.s, "meetpoint_fleet_keys_reasserted_total") < 2 {
		t.Errorf("loss-a claimed %v keys again, want its waiting client's and its tunnel's",
			relaytest.Metric(t, a.s, "meetpoint_fleet_keys_reasserted_total"))
	}
	// The waiting client's partner, on the other node, finds it.
	tb, err := dial(t, client.Options{URL: url(b.s, false), Token: "loss-wait", Name: "partner"})
	if err != nil {
		t.Fatalf("the waiting client's partner after the store loss: %v", err)
	}
	ta := <-waiting
	if ta == nil || ta.PeerName() != "partner" || tb.PeerName() != "waiter" {
		t.Fatal("the waiting client was not paired with its partner across nodes")
	}
	exchange(t, ta, tb, 1000)
	// A third client of the live tunnel's token is refused, on either node.
	if _, err := dial(t, client.Options{URL: url(b.s, false), Token: "loss-live", Timeout: 5 * time.Second}); err == nil {
		t.Fatal("a third client of a live tunnel's token paired after the store loss")
	}
	relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, b.s, `meetpoint_closes_total{reason="tunnel_exists"}`) == 1 },
		"the third client refused as tunnel_exists")
	exchange(t, live1, live2, 1000)
	for _, nd := range []*node{a, b} {
		if n := relaytest.Metric(t, nd.s, "meetpoint_fleet_leases_lost_total"); n != 0 {
			t.Errorf("%s counted %v leases lost", nd.id, n)
		}
	}
}

// TestMissingKeyReclaimedAtRenewal: a held key that vanished from the
// store (a failover that lost the write; the store's epoch unchanged) is
// claimed again at the next renewal, not counted lost, and the waiting
// client is still found from another node.
func TestMissingKeyReclaimedAtRenewal(t *testing.T) {
	addr := redisAddr(t)
	nodes := startFleet(t, addr, 2, nil)
	a, b := nodes[0], nodes[1]
	waiting := waitOn(t, a, client.Options{URL: url(a.s, false), Token: "vanish"})
	rdb, _ := fleet.ParseURL("redis://" + addr + "/0")
	defer rdb.Close()
	key := fleet.PairKeyName(a.f, "vanish", "")
	if n, err := rdb.Del(context.Background(), key).Result(); n != 1 || err != nil {
		t.Fatalf("deleting the waiting client's key: %d %v", n, err)
	}
	relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, a.s, "meetpoint_fleet_keys_reasserted_total") == 1 },
		"node a claims the vanished key again at renewal")
	if v, err := rdb.Get(context.Background(), key).Result(); err != nil || !strings.HasPrefix(v, a.id+" ") {
		t.Errorf("the key after renewal: %q %v, want node a's", v, err)
	}
	if n := relaytest.Metric(t, a.s, "meetpoint_fleet_leases_lost_total"); n != 0 {
		t.Errorf("a vanished key counted as lost %v times", n)
	}
	tb, err := dial(t, client.Options{URL: url(b.s, false), Token: "vanish"})
	if err != nil {
		t.Fatal(err)
	}
	ta := <-waiting
	if ta == nil {
		t.FailNow()
	}
	exchange(t, ta, tb, 100)
}

// TestFleetOnRedisCluster: three nodes on a real 3-master Redis Cluster
// (every script keeps its keys in one hash slot, or the cluster refuses
// it): the nodes see each other, pairs meet across nodes whatever slot
// their key hashes to, a third client is refused, and a held key that
// vanished is claimed again.
func TestFleetOnRedisCluster(t *testing.T) {
	addrs := testutil.RedisCluster(t, 3)
	spec := "redis+cluster://" + addrs[0] + "?addr=" + addrs[1] + "&addr=" + addrs[2]
	nodes := startFleet(t, spec, 3, nil)
	for i := range 6 {
		a, b := nodes[i%3], nodes[(i+1)%3]
		tok := fmt.Sprintf("cluster-%d", i)
		ta, tb := pairAcross(t, a, b, tok)
		exchange(t, ta, tb, 1000)
		if i == 0 {
			if _, err := dial(t, client.Options{URL: url(nodes[2].s, false), Token: tok, Timeout: 5 * time.Second}); err == nil {
				t.Fatal("a third client paired on the cluster")
			}
		}
	}
	for _, nd := range nodes {
		if n := relaytest.Metric(t, nd.s, "meetpoint_fleet_store_errors_total"); n != 0 {
			t.Errorf("%s: %v store errors on the cluster", nd.id, n)
		}
	}
}

// TestFleetSentinelFailover: two nodes on a Sentinel-managed primary with
// one replica; the primary is killed while a cross-node tunnel carries
// data and a client waits. The tunnel never drops, the nodes follow the
// failover to the promoted replica by themselves, the waiting client is
// still found from the other node, and new pairs meet across nodes.
func TestFleetSentinelFailover(t *testing.T) {
	sentinels, _, kill := testutil.RedisSentinel(t)
	spec := "redis+sentinel://" + sentinels[0] + "?master_name=mymaster&addr=" + sentinels[1] + "&addr=" + sentinels[2]
	long := func(c *relay.Config) { c.AloneTimeout = time.Minute }
	nodes := startFleet(t, spec, 2, long)
	a, b := nodes[0], nodes[1]
	live1, live2 := pairAcross(t, a, b, "sentinel-live")
	waiting := waitOn(t, a, client.Options{URL: url(a.s, false), Token: "sentinel-wait", Name: "waiter", Timeout: time.Minute})
	// The replica has the waiting client's key before the primary dies.
	rdb, _ := fleet.ParseURL(spec)
	defer rdb.Close()
	relaytest.WaitFor(t, func() bool {
		return rdb.Exists(context.Background(), fleet.PairKeyName(a.f, "sentinel-wait", "")).Val() == 1
	}, "the waiting client's key in the store")

	kill()
	killed := time.Now()
	relaytest.WaitFor(t, func() bool {
		m, err := rdb.Do(context.Background(), "ROLE").Slice()
		return err == nil && len(m) > 0 && m[0] == "master" // the killed primary answers nothing
	}, "the Sentinels promote the replica")
	exchange(t, live1, live2, 10_000) // the live tunnel never noticed
	tb, err := dial(t, client.Options{URL: url(b.s, false), Token: "sentinel-wait", Name: "partner"})
	if err != nil {
		t.Fatalf("the waiting client's partner after the failover: %v", err)
	}
	ta := <-waiting
	if ta == nil || ta.PeerName() != "partner" {
		t.Fatal("the waiting client was not paired with its partner after the failover")
	}
	exchange(t, ta, tb, 1000)
	tc, td := pairAcross(t, b, a, "sentinel-after")
	exchange(t, tc, td, 1000)
	t.Logf("pairing across nodes again %v after the primary was killed", time.Since(killed).Round(time.Millisecond))
}

// waitOn dials a client that waits on nd (until nd holds its key) and
// returns where its tunnel will come, once paired (nil: it failed).
func waitOn(t *testing.T, nd *node, o client.Options) <-chan *client.Tunnel {
	t.Helper()
	ch := make(chan *client.Tunnel, 1)
	go func() {
		tu, err := dial(t, o)
		if err != nil {
			t.Error(err)
		}
		ch <- tu
	}()
	relaytest.WaitFor(t, func() bool { return fleet.HeldKey(nd.f, o.Token, o.Nonce) }, "a client waiting on "+nd.id)
	return ch
}

// TestWaitingClientReplaced: a client waits on node a; its key vanishes
// from the store and its partner, arriving on node b before a renews,
// takes the key and waits there. a's renewal finds the key held by b and
// places its waiting client again: it joins b over the mesh and the two
// pair, instead of each waiting alone until its timeout.
func TestWaitingClientReplaced(t *testing.T) {
	addr := redisAddr(t)
	a := startNodeWith(t, addr, "moved-a", nil, func(c *fleet.Config) { c.LeaseTTL = time.Minute }) // renewals only when the test asks
	b := startNode(t, addr, "moved-b", nil)
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")
	waiting := waitOn(t, a, client.Options{URL: url(a.s, true), Token: "moved", Name: "waiter"})
	rdb, _ := fleet.ParseURL("redis://" + addr + "/0")
	defer rdb.Close()
	if n, err := rdb.Del(context.Background(), fleet.PairKeyName(a.f, "moved", "")).Result(); n != 1 || err != nil {
		t.Fatalf("deleting the waiting client's key: %d %v", n, err)
	}
	second := waitOn(t, b, client.Options{URL: url(b.s, false), Token: "moved", Name: "partner"})
	fleet.Renew(a.f)
	ta, tb := <-waiting, <-second
	if ta == nil || tb == nil || ta.PeerName() != "partner" || tb.PeerName() != "waiter" {
		t.Fatal("the waiting client was not placed again with its partner's node")
	}
	exchange(t, ta, tb, 1000)
	if relaytest.Metric(t, a.s, "meetpoint_fleet_clients_replaced_total") != 1 {
		t.Error("the move was not counted")
	}
}

// TestRestartBesideANodeSharingItsAddress: a node killed without a
// goodbye whose --advertise another node shares (a misconfiguration,
// warned at join) restarts under its id: the other node answers the
// liveness ping at that address as itself, not as this node.
func TestRestartBesideANodeSharingItsAddress(t *testing.T) {
	addr := redisAddr(t)
	other := startNode(t, addr, "sharer", nil)
	shared := func(c *fleet.Config) { c.Advertise = relaytest.Addr(other.s) }
	old := startNodeWith(t, addr, "phoenix", nil, shared)
	fleet.Kill(old.f) // its record stays until it expires
	old.s.Close()
	if _, err := joinNode(t, addr, "phoenix", nil, shared); err != nil {
		t.Fatalf("restarting after a kill, beside the node sharing its address: %v", err)
	}
}

// TestRestartAfterStoreLossTakesOverItsID: the store loses its data
// (here FLUSHALL: a restart without persistence) while a node that has
// restarted before runs; that node announces itself again, and is then
// killed and restarted under the same id and address. The restarted
// process takes its predecessor's place at once, as after any kill: the
// incarnation counter the store lost must not make it count as an
// earlier process than its dead predecessor (superseded: it would stop
// announcing itself and log that another process runs as this node).
func TestRestartAfterStoreLossTakesOverItsID(t *testing.T) {
	addr := redisAddr(t)
	first := startNode(t, addr, "lazarus", nil)
	adv := relaytest.Addr(first.s)
	fleet.Kill(first.f)
	first.s.Close()
	second := startNode(t, addr, "lazarus", func(c *relay.Config) { c.Listen = []string{adv} }) // incarnation 2

	rdb, _ := fleet.ParseURL("redis://" + addr + "/0")
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, second.s, "meetpoint_fleet_store_losses_total") == 1 },
		"the node sees the store's data lost and announces itself again")
	fleet.Kill(second.f)
	second.s.Close()

	logs := &testutil.Tail{}
	third := startNodeWith(t, addr, "lazarus", func(c *relay.Config) { c.Listen = []string{adv} },
		func(c *fleet.Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	var rec fleet.NodeInfo
	v, err := rdb.Get(ctx, "meetpoint:{nodes}:node:lazarus").Result()
	if err != nil || json.Unmarshal([]byte(v), &rec) != nil {
		t.Fatalf("the node's record: %q %v", v, err)
	}
	if rec.Instance != fleet.Instance(third.f) {
		t.Errorf("after its start the node's record is its dead predecessor's (incarnation %d), not the restarted process's", rec.Incarnation)
	}
	if strings.Contains(logs.String(), "a later process runs as this node id") {
		t.Errorf("the restarted process calls itself superseded:\n%s", logs.String())
	}
}

// TestLiveTunnelKeyTakenIsNotReplaced: a tunnel whose first client waited
// on node a lives when its key is found held by another node at a's
// renewal. Nobody waits under the key any more: the lease is counted
// lost, but no client is counted placed again (nor told to reconnect),
// and a keeps its hold, as for a tunnel whose clients met at once.
func TestLiveTunnelKeyTakenIsNotReplaced(t *testing.T) {
	addr := redisAddr(t)
	a := startNodeWith(t, addr, "taken-a", nil, func(c *fleet.Config) { c.LeaseTTL = time.Minute }) // renewals only when the test asks
	b := startNode(t, addr, "taken-b", nil)
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")
	ta, tb := pairAcross(t, a, a, "taken-live") // the first client waited, then its partner came
	rdb, _ := fleet.ParseURL("redis://" + addr + "/0")
	defer rdb.Close()
	key := fleet.PairKeyName(a.f, "taken-live", "")
	if err := rdb.Set(context.Background(), key, b.id+" 0123456789abcdef "+relaytest.Addr(b.s), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	fleet.Renew(a.f)
	if n := relaytest.Metric(t, a.s, "meetpoint_fleet_leases_lost_total"); n != 1 {
		t.Errorf("%v leases counted lost, want 1", n)
	}
	for _, m := range []string{"meetpoint_fleet_clients_replaced_total", "meetpoint_fleet_clients_moved_total"} {
		if n := relaytest.Metric(t, a.s, m); n != 0 {
			t.Errorf("%s = %v for a tunnel's key: nobody waited under it", m, n)
		}
	}
	if !fleet.HeldKey(a.f, "taken-live", "") {
		t.Error("node a dropped the hold of its live tunnel's key")
	}
	exchange(t, ta, tb, 1000)
}

// TestSupersededNodeLeavesItsSuccessorsRecord: a process that a later
// one took its node id over from (it stopped answering at its address, the
// later one started there) is then stopped, as its log line asks. Its
// goodbye takes only itself out of the store: the later process's record
// and node-set entry stay, so the fleet does not count that live node
// dead (and take its keys over) until its next heartbeat.
func TestSupersededNodeLeavesItsSuccessorsRecord(t *testing.T) {
	addr := redisAddr(t)
	old := startNode(t, addr, "janus", nil)
	adv := relaytest.Addr(old.s)
	old.s.Close() // its relay stops answering; its fleet membership runs on
	// The successor's own heartbeat comes only at its start here.
	succ := startNodeWith(t, addr, "janus", func(c *relay.Config) { c.Listen = []string{adv} },
		func(c *fleet.Config) { c.Heartbeat = time.Minute })
	old.f.Close()

	rdb, _ := fleet.ParseURL("redis://" + addr + "/0")
	defer rdb.Close()
	ctx := context.Background()
	var rec fleet.NodeInfo
	v, err := rdb.Get(ctx, "meetpoint:{nodes}:node:janus").Result()
	if err != nil || json.Unmarshal([]byte(v), &rec) != nil || rec.Instance != fleet.Instance(succ.f) {
		t.Errorf("the live process's record after the superseded one left: %q %v", v, err)
	}
	if in, err := rdb.SIsMember(ctx, "meetpoint:{nodes}:set", "janus").Result(); err != nil || !in {
		t.Errorf("the live node is out of the node set after the superseded one left: %v %v", in, err)
	}
	// The live process's own goodbye still takes the node out.
	succ.f.Close()
	if n, err := rdb.Exists(ctx, "meetpoint:{nodes}:node:janus").Result(); err != nil || n != 0 {
		t.Errorf("the node's record after its process closed: %d %v", n, err)
	}
	if in, err := rdb.SIsMember(ctx, "meetpoint:{nodes}:set", "janus").Result(); err != nil || in {
		t.Errorf("the node is still in the node set after its process closed: %v %v", in, err)
	}
}
