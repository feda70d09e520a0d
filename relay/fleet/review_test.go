package fleet_test

import (
	"testing"

	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestNodeIDWithSpace: a node id may hold a space (a host name never does,
// but --node-id "relay a" is accepted): the lease value names it, and a
// client arriving on another node must still find the owner's waiting
// client, not take the key over as an unreadable owner's and wait alone.
func TestNodeIDWithSpace(t *testing.T) {
	addr := redisAddr(t)
	a := startNode(t, addr, "relay a", nil)
	b := startNode(t, addr, "relay b", nil)
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")
	ta, tb := pairAcross(t, a, b, "spaced-id")
	exchange(t, ta, tb, 100)
	if n := relaytest.Metric(t, b.s, `meetpoint_fleet_placements_total{outcome="remote"}`); n != 1 {
		t.Errorf("remote placements on node b: %v, want 1", n)
	}
}
