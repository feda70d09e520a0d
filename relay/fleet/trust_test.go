package fleet_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

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

	s := relaytest.New(t, nil)
	rdb, _ := fleet.ParseURL("redis://" + addr + "/0")
	t.Cleanup(func() { rdb.Close() })
	blog, btail := logTail(t)
	f, err := fleet.New(fleet.Config{Redis: rdb, NodeID: "key-b", MeshKey: []byte("another key, 32 bytes long......"),
		Heartbeat: testHeartbeat, Logger: blog}, s)
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, s)
	err = f.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "key-a") || !strings.Contains(err.Error(), "another mesh key") {
		t.Fatalf("a node with another mesh key joined: Start says %v", err)
	}
	if relaytest.Metric(t, s, "meetpoint_fleet_mesh_key_mismatch_total") != 1 {
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
// node with the same id at another address is still refused.
func TestRestartedNodeTakesOverItsID(t *testing.T) {
	addr := redisAddr(t)
	old := startNode(t, addr, "phoenix", nil)
	adv := relaytest.Addr(old.s)
	fleet.Kill(old.f)
	old.s.Close()

	// Another address under that id: refused while the record lives.
	s := relaytest.New(t, nil)
	rdb, _ := fleet.ParseURL("redis://" + addr + "/0")
	t.Cleanup(func() { rdb.Close() })
	f, err := fleet.New(fleet.Config{Redis: rdb, NodeID: "phoenix", MeshKey: meshKey, Heartbeat: testHeartbeat, Logger: testutil.Logger(t)}, s)
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, s)
	if err := f.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "in use by a live node") {
		t.Fatalf("the same node id at another address: %v, want refused", err)
	}

	// The same address: taken over at once.
	again := startNode(t, addr, "phoenix", func(c *relay.Config) { c.Listen = []string{adv} })
	other := startNode(t, addr, "witness", nil)
	relaytest.WaitFor(t, func() bool { return len(other.f.Nodes()) == 2 }, "the witness sees the restarted node")
	ta, tb := pairAcross(t, again, other, "phoenix-pair")
	exchange(t, ta, tb, 1000)
}
