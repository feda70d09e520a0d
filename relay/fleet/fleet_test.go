package fleet_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/fleet"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

var meshKey = []byte("0123456789abcdef0123456789abcdef")

// node is one relay of a test fleet.
type node struct {
	id string
	s  *relay.Server
	f  *fleet.Fleet
}

// startNode starts a relay joined to the fleet on redisAddr.
func startNode(t testing.TB, redisAddr, id string, mutate func(*relay.Config)) *node {
	t.Helper()
	s := relaytest.New(t, mutate)
	rdb, err := fleet.ParseURL("redis://" + redisAddr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	f, err := fleet.New(fleet.Config{Redis: rdb, NodeID: id, MeshKey: meshKey, Heartbeat: 200 * time.Millisecond,
		LeaseTTL: 3 * time.Second, Logger: testutil.Logger(t)}, s)
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, s)
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &node{id: id, s: s, f: f}
}

// startFleet starts n nodes on one Redis and waits until each sees all.
func startFleet(t testing.TB, redisAddr string, n int, mutate func(*relay.Config)) []*node {
	t.Helper()
	nodes := make([]*node, n)
	for i := range nodes {
		nodes[i] = startNode(t, redisAddr, fmt.Sprintf("node-%c", 'a'+i), mutate)
	}
	relaytest.WaitFor(t, func() bool {
		for _, nd := range nodes {
			if len(nd.f.Nodes()) != n {
				return false
			}
		}
		return true
	}, "every node sees the fleet")
	return nodes
}

func redisAddr(t testing.TB) string {
	addr, _ := testutil.Redis(t, 0)
	return addr
}

func url(s *relay.Server, ws bool) string {
	if ws {
		return relaytest.WSURL(s)
	}
	return relaytest.TCPURL(s)
}

// exchange checks bytes both ways through a tunnel.
func exchange(t testing.TB, a, b *client.Tunnel, n int) {
	t.Helper()
	msgA := bytes.Repeat([]byte("a"), n)
	msgB := bytes.Repeat([]byte("b"), n)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.Write(msgA) }()
	go func() { defer wg.Done(); b.Write(msgB) }()
	for _, c := range []struct {
		r    *client.Tunnel
		want []byte
	}{{b, msgA}, {a, msgB}} {
		got := make([]byte, len(c.want))
		_ = c.r.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c.r, got); err != nil || !bytes.Equal(got, c.want) {
			t.Fatalf("tunnel lost data: %v (%d bytes)", err, len(got))
		}
	}
	wg.Wait()
}

func dial(t testing.TB, o client.Options) (*client.Tunnel, error) {
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	tu, err := client.Dial(context.Background(), o)
	if err == nil {
		t.Cleanup(func() { tu.Close() })
	}
	return tu, err
}

// TestCrossNodePairs pairs two clients on different nodes over every
// transport mix: each gets TunnelEstablished with the other's name and
// uuid, bytes go both ways, and TCP↔TCP is spliced on both nodes.
func TestCrossNodePairs(t *testing.T) {
	nodes := startFleet(t, redisAddr(t), 3, nil)
	for i, mix := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
		a, b := nodes[i%3], nodes[(i+1)%3]
		t.Run(fmt.Sprintf("ws=%v/%v", mix[0], mix[1]), func(t *testing.T) {
			splicedA, splicedB := a.s.Stats().SplicedBytes, b.s.Stats().SplicedBytes
			tok := fmt.Sprintf("tok-%d", i)
			first := make(chan *client.Tunnel, 1)
			go func() {
				tu, err := dial(t, client.Options{URL: url(a.s, mix[0]), Token: tok, Name: "first", UUID: "11111111-1111-4111-8111-111111111111"})
				if err != nil {
					t.Error(err)
				}
				first <- tu
			}()
			relaytest.WaitFor(t, func() bool { return a.s.Snapshot().Clients != nil && len(a.s.Snapshot().Clients) == 1 }, "first client waiting")
			tb, err := dial(t, client.Options{URL: url(b.s, mix[1]), Token: tok, Name: "second", UUID: "22222222-2222-4222-8222-222222222222"})
			if err != nil {
				t.Fatal(err)
			}
			ta := <-first
			if ta == nil {
				t.FailNow()
			}
			if ta.PeerName() != "second" || tb.PeerName() != "first" || tb.PeerUUID() != "11111111-1111-4111-8111-111111111111" ||
				ta.PeerUUID() != "22222222-2222-4222-8222-222222222222" {
				t.Errorf("TunnelEstablished: a sees %q %q, b sees %q %q", ta.PeerName(), ta.PeerUUID(), tb.PeerName(), tb.PeerUUID())
			}
			if metric(t, b.s, `meetpoint_cross_node_pairs_total{side="dialled"}`) < 1 || metric(t, a.s, `meetpoint_cross_node_pairs_total{side="owner"}`) < 1 {
				t.Fatal("the pair did not go through the mesh")
			}
			exchange(t, ta, tb, 200_000)
			if !mix[0] && !mix[1] {
				if a.s.Stats().SplicedBytes-splicedA < 400_000 || b.s.Stats().SplicedBytes-splicedB < 400_000 {
					t.Errorf("TCP↔TCP across nodes not spliced on both: owner %d, dialler %d bytes",
						a.s.Stats().SplicedBytes-splicedA, b.s.Stats().SplicedBytes-splicedB)
				}
			}
			// Partner loss crosses the mesh: closing one end ends the other.
			ta.Close()
			_ = tb.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := tb.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
				t.Fatalf("partner's close did not cross the mesh: %v", err)
			}
		})
	}
	// Keys are released once the tunnels are gone.
	for _, nd := range nodes {
		relaytest.WaitFor(t, func() bool { return fleet.Held(nd.f) == 0 }, nd.id+" releases its keys")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestFleetRules: the single-node rules hold across nodes — a third client
// on a third node is refused, a duplicate uuid on another node refuses
// both, and data before the tunnel still fails.
func TestFleetRules(t *testing.T) {
	nodes := startFleet(t, redisAddr(t), 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]

	t.Run("third client", func(t *testing.T) {
		ta, tb := pairAcross(t, a, b, "rule-third")
		if _, err := dial(t, client.Options{URL: url(c.s, false), Token: "rule-third"}); err == nil {
			t.Fatal("third client on a third node paired")
		}
		relaytest.WaitFor(t, func() bool { return metric(t, c.s, `meetpoint_closes_total{reason="tunnel_exists"}`) == 1 },
			"the third client refused as tunnel_exists on its node")
		exchange(t, ta, tb, 10)
	})
	t.Run("duplicate uuid", func(t *testing.T) {
		uuid := "33333333-3333-4333-8333-333333333333"
		errs := make(chan error, 1)
		go func() {
			_, err := dial(t, client.Options{URL: url(a.s, true), Token: "rule-dup", UUID: uuid})
			errs <- err
		}()
		relaytest.WaitFor(t, func() bool { return fleet.Held(a.f) == 1 }, "first client waiting")
		if _, err := dial(t, client.Options{URL: url(b.s, false), Token: "rule-dup", UUID: uuid}); err == nil {
			t.Fatal("duplicate uuid on another node paired")
		}
		if err := <-errs; err == nil {
			t.Fatal("the waiting client with the duplicate uuid was paired")
		}
	})
}

// metric reads one sample of s's /metrics.
func metric(t testing.TB, s *relay.Server, name string) float64 {
	t.Helper()
	var b bytes.Buffer
	s.WritePrometheus(&b)
	for _, l := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

// pairAcross pairs two raw-TCP clients of token on a (first) and b.
func pairAcross(t testing.TB, a, b *node, token string) (*client.Tunnel, *client.Tunnel) {
	t.Helper()
	first := make(chan *client.Tunnel, 1)
	go func() {
		tu, err := dial(t, client.Options{URL: url(a.s, false), Token: token})
		if err != nil {
			t.Error(err)
		}
		first <- tu
	}()
	relaytest.WaitFor(t, func() bool { return fleet.HeldKey(a.f, token, "") }, "first client waiting on "+a.id)
	tb, err := dial(t, client.Options{URL: url(b.s, false), Token: token})
	if err != nil {
		t.Fatal(err)
	}
	ta := <-first
	if ta == nil {
		t.FailNow()
	}
	return ta, tb
}
