package fleet_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/fleet"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
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

// TestReplayCacheFullIsNoGuess: a node whose replay cache is full (a
// fleet placing more cross-node tunnels than it holds signatures for in
// 30 s) refuses well-signed mesh requests, but they are no replays: they
// must not count as failed authentications of the sending node's address
// (toward a ban) nor be logged as replays.
func TestReplayCacheFullIsNoGuess(t *testing.T) {
	tail := &testutil.Tail{}
	n := startNodeWith(t, redisAddr(t), "full-a", func(c *relay.Config) {
		c.Limits.Exempt = nil // the test's requests come from loopback
		c.Limits.AuthFailuresPerIP = 1
	}, func(fc *fleet.Config) { fc.Logger = slog.New(slog.NewTextHandler(tail, nil)) })
	fleet.FillReplays(n.f, fleet.MaxReplayEntries)
	for i := range 3 {
		now := time.Now().Unix()
		rid := fmt.Sprintf("full-%d", i)
		mac := signJoin(meshKey, "node-b", now, "tok", "", "u", "n", "id", rid)
		c, err := net.Dial("tcp", relaytest.Addr(n.s))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(fmt.Sprintf(`{"id":1,"method":"Mesh.Join","params":{"node":"node-b","time":%d,"mac":%q,"token":"tok","uuid":"u","name":"n","identity":"id","rid":%q}}`+"\n", now, mac, rid)))
		_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if !strings.Contains(line, relay.MeshBadRequest) {
			t.Fatalf("request %d with the replay cache full: %q, want %s (the address banned?)", i+1, line, relay.MeshBadRequest)
		}
	}
	if b := relaytest.Metric(t, n.s, "meetpoint_bans_total"); b > 0 {
		t.Errorf("meetpoint_bans_total %v after well-signed requests refused for a full replay cache, want 0", b)
	}
	if strings.Contains(tail.String(), `why=replayed`) {
		t.Errorf("requests refused for a full replay cache logged as replays:\n%s", tail.String())
	}
}

// TestPlacementRefusalsLogOncePerPeriod: under a flood (every placement
// slot in flight, as a partition or a burst of clients makes it) each
// refused client is counted, but the warning is one line per period
// with the number held back, not one line per client.
func TestPlacementRefusalsLogOncePerPeriod(t *testing.T) {
	addr := redisAddr(t)
	logs := &testutil.Tail{}
	a := startNodeWith(t, addr, "flood-a", nil, func(c *fleet.Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	defer fleet.FillPlacements(a.f)()
	const n = 50
	for i := range n {
		p := a.f.Place(context.Background(), relay.Placing{Key: relay.PairKey{Token: fmt.Sprintf("flood-%d", i)}})
		if p.Refuse != reason.Fleet {
			t.Fatalf("placement %d with every slot taken: %+v, want refused (fleet)", i, p)
		}
	}
	if got := strings.Count(logs.String(), "too many placements in flight"); got != 1 {
		t.Fatalf("%d warnings for %d refused placements within one period, want 1:\n%s", got, n, logs.String())
	}
	if c := relaytest.Metric(t, a.s, `meetpoint_fleet_placements_total{outcome="failed"}`); c != n {
		t.Errorf("failed placements counted %v, want %d", c, n)
	}
}
