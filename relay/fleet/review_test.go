package fleet_test

import (
	"bufio"
	"io"
	"strings"

	"context"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/meetpoint/meetpoint/client"
	"time"

	"github.com/meetpoint/meetpoint/relay/fleet"
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

// TestLeaseLostCountedOnce: a live tunnel's key found held by another
// node is one lease lost, however many renewals find it so afterwards
// (meetpoint_fleet_leases_lost_total counts held keys found taken, not
// renewals).
func TestLeaseLostCountedOnce(t *testing.T) {
	addr := redisAddr(t)
	a := startNodeWith(t, addr, "once-a", nil, func(c *fleet.Config) { c.LeaseTTL = time.Minute }) // renewals only when the test asks
	b := startNode(t, addr, "once-b", nil)
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")
	ta, tb := pairAcross(t, a, a, "once-live")
	rdb, _ := fleet.ParseURL("redis://" + addr + "/0")
	defer rdb.Close()
	key := fleet.PairKeyName(a.f, "once-live", "")
	if err := rdb.Set(context.Background(), key, b.id+" 0123456789abcdef "+relaytest.Addr(b.s), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		fleet.Renew(a.f)
	}
	if n := relaytest.Metric(t, a.s, "meetpoint_fleet_leases_lost_total"); n != 1 {
		t.Errorf("meetpoint_fleet_leases_lost_total %v after three renewals of one taken key, want 1", n)
	}
	exchange(t, ta, tb, 100)
}

// TestCrossNodeNameNotUTF8: a WebSocket client's URL parameters are
// percent-decoded, so its name may be bytes that are not UTF-8 (%FF).
// The Mesh.Join that carries it to the owner must still hold its
// signature: a refusal would fail the pair as "fleet" and count as a
// forged request from the dialling node's address, toward its ban.
func TestCrossNodeNameNotUTF8(t *testing.T) {
	addr := redisAddr(t)
	a := startNode(t, addr, "utf-a", nil)
	b := startNode(t, addr, "utf-b", nil)
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")
	first := waitOn(t, a, client.Options{URL: url(a.s, false), Token: "utf-pair"})
	ctx, cancel := context.WithTimeout(context.Background(), relaytest.Patience)
	defer cancel()
	c, br, _, err := ws.Dialer{}.Dial(ctx, relaytest.WSURL(b.s)+"?token=utf-pair&name=%FF")
	if err != nil {
		t.Fatalf("the WebSocket client on node b: %v", err)
	}
	defer c.Close()
	if br == nil {
		br = bufio.NewReader(c)
	}
	_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
	msg, err := wsutil.ReadServerText(struct {
		io.Reader
		io.Writer
	}{br, c})
	if err != nil || !strings.Contains(string(msg), "TunnelEstablished") {
		t.Fatalf("the client named %%FF on node b: %q %v, want TunnelEstablished", msg, err)
	}
	if ta := <-first; ta == nil {
		t.Fatal("the client waiting on node a was not paired")
	}
	if n := relaytest.Metric(t, a.s, "meetpoint_mesh_refused_total"); n != 0 {
		t.Errorf("meetpoint_mesh_refused_total on the owner %v, want 0", n)
	}
}
