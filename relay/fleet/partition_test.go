package fleet_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/fleet"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// blackhole is a TCP proxy in front of a node's mesh address that a test
// can freeze: from then on it forwards nothing, either way, and holds new
// connections without answering, as a partition or a powered-off host
// does (no FIN, no RST).
type blackhole struct {
	ln     net.Listener
	target atomic.Value // string: the node's address
	frozen atomic.Bool
	from   atomic.Value // string: a source IP whose connections are frozen (freezeFrom)
	mu     sync.Mutex
	conns  []net.Conn
}

func newBlackhole(t *testing.T) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln}
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.keep(c)
			if b.frozen.Load() || b.frozenFor(c) {
				continue // held, never answered
			}
			up, err := net.Dial("tcp", b.target.Load().(string))
			if err != nil {
				c.Close()
				continue
			}
			b.keep(up)
			go b.pipe(up, c, c)
			go b.pipe(c, up, c)
		}
	}()
	return b
}

// freezeFrom freezes the connections from ip, those open and those to
// come.
func (b *blackhole) freezeFrom(ip string) { b.from.Store(ip) }

// frozenFor reports whether c comes from the frozen source.
func (b *blackhole) frozenFor(c net.Conn) bool {
	ip, _ := b.from.Load().(string)
	return ip != "" && strings.HasPrefix(c.RemoteAddr().String(), ip+":")
}

func (b *blackhole) keep(c net.Conn) {
	b.mu.Lock()
	b.conns = append(b.conns, c)
	b.mu.Unlock()
}

// pipe copies src to dst until either fails; frozen (all, or the
// client's source), it stops moving bytes (what it read is dropped) but
// closes nothing.
func (b *blackhole) pipe(dst, src, client net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if b.frozen.Load() || b.frozenFor(client) {
			if err != nil {
				return
			}
			continue
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if tc, ok := dst.(*net.TCPConn); ok && errors.Is(err, io.EOF) {
				tc.CloseWrite()
			} else {
				dst.Close()
			}
			return
		}
	}
}

func (b *blackhole) addr() string { return b.ln.Addr().String() }

// TestFarNodeLost: two nodes reach each other only through proxies that
// are then frozen (a partition: nothing is closed, nothing answers). A
// WebSocket tunnel across them ends at both ends within the mesh-lost
// time, with the close reason far_node_lost and a WebSocket close code
// that is not a normal 1000, instead of staying half-open; a tunnel
// within one node lives on.
func TestFarNodeLost(t *testing.T) {
	addr := redisAddr(t)
	const lost = 4 * time.Second
	quick := func(c *fleet.Config) { c.MeshPing, c.MeshLost = 200*time.Millisecond, lost }
	pa, pb := newBlackhole(t), newBlackhole(t)
	a := startNodeWith(t, addr, "lost-a", nil, func(c *fleet.Config) { quick(c); c.Advertise = pa.addr() })
	pa.target.Store(relaytest.Addr(a.s))
	b := startNodeWith(t, addr, "lost-b", nil, func(c *fleet.Config) { quick(c); c.Advertise = pb.addr() })
	pb.target.Store(relaytest.Addr(b.s))
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")

	first := waitOn(t, a, client.Options{URL: url(a.s, true), Token: "partition"})
	tb, err := dial(t, client.Options{URL: url(b.s, true), Token: "partition"})
	if err != nil {
		t.Fatal(err)
	}
	ta := <-first
	if ta == nil {
		t.FailNow()
	}
	exchange(t, ta, tb, 1000)
	local1, local2 := pairAcross(t, a, a, "partition-local")
	for _, nd := range []*node{a, b} {
		other := map[*node]string{a: "lost-b", b: "lost-a"}[nd]
		relaytest.WaitFor(t, func() bool {
			return relaytest.Metric(t, nd.s, `meetpoint_mesh_links_active{peer="`+other+`"}`) == 1 &&
				relaytest.Metric(t, nd.s, `meetpoint_mesh_rtt_seconds{peer="`+other+`"}`) > 0
		}, nd.id+" counts its mesh link and a ping round trip to "+other)
	}

	pa.frozen.Store(true)
	pb.frozen.Store(true)
	frozen := time.Now()
	for _, tu := range []*client.Tunnel{ta, tb} {
		_ = tu.SetReadDeadline(time.Now().Add(relaytest.Patience))
		_, err := tu.Read(make([]byte, 1))
		var ce *client.CloseError
		if !errors.As(err, &ce) || ce.Code == 1000 || !strings.Contains(ce.Reason, "relay node lost") {
			t.Errorf("a tunnel end across the partition: %v, want a WebSocket close (not 1000) saying the relay node was lost", err)
		}
	}
	took := time.Since(frozen)
	t.Logf("both ends closed %v after the partition (mesh-lost %v)", took.Round(time.Millisecond), lost)
	for _, nd := range []*node{a, b} {
		relaytest.WaitFor(t, func() bool {
			return relaytest.Metric(t, nd.s, `meetpoint_closes_total{reason="far_node_lost"}`) >= 1
		}, nd.id+" counts its ends as far_node_lost")
	}
	if relaytest.Metric(t, a.s, `meetpoint_mesh_peer_lost_total{peer="lost-b"}`) != 1 ||
		relaytest.Metric(t, b.s, `meetpoint_mesh_peer_lost_total{peer="lost-a"}`) != 1 {
		t.Error("the lost peer was not counted on both nodes")
	}
	exchange(t, local1, local2, 1000)
}

// TestMeshOnlyPartition: two nodes that still share Redis but no longer
// reach each other over the mesh say so (/readyz's mesh part, a gauge per
// peer), and a client whose key's owner is across the partition is not
// refused for as long as it lasts: its node takes the key over and the
// client waits there for a partner that reaches it.
func TestMeshOnlyPartition(t *testing.T) {
	addr := redisAddr(t)
	quick := func(c *fleet.Config) { c.MeshPing, c.MeshLost = 200*time.Millisecond, 3*time.Second }
	pa, pb := newBlackhole(t), newBlackhole(t)
	a := startNodeWith(t, addr, "cut-a", nil, func(c *fleet.Config) { quick(c); c.Advertise = pa.addr() })
	pa.target.Store(relaytest.Addr(a.s))
	b := startNodeWith(t, addr, "cut-b", nil, func(c *fleet.Config) { quick(c); c.Advertise = pb.addr() })
	pb.target.Store(relaytest.Addr(b.s))
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, b.s, `meetpoint_mesh_peer_reachable{peer="cut-a"}`) == 1
	}, "cut-b reaches cut-a over the mesh")

	pa.frozen.Store(true)
	pb.frozen.Store(true)
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, b.s, `meetpoint_mesh_peer_reachable{peer="cut-a"}`) == 0
	}, "cut-b sees cut-a unreachable")
	names, ok, details := b.s.ReadinessParts()
	for i, n := range names {
		if n == "mesh" && (ok[i] || !strings.Contains(details[i], "cut-a")) {
			t.Errorf("readiness during the partition: %v %q, want not ready naming cut-a", ok[i], details[i])
		}
	}
	if len(a.f.Nodes()) != 2 || len(b.f.Nodes()) != 2 {
		t.Fatal("a node left the node set: the partition is the mesh's only")
	}
	go func() { _, _ = dial(t, client.Options{URL: url(a.s, false), Token: "cut", Timeout: 3 * time.Second}) }()
	relaytest.WaitFor(t, func() bool { return fleet.HeldKey(a.f, "cut", "") }, "a client waiting on cut-a")
	// Its partner lands on cut-b: not refused, it waits there...
	second := waitOn(t, b, client.Options{URL: url(b.s, false), Token: "cut", Name: "second"})
	// ...and the first client, coming back through the balancer to a
	// node that reaches cut-b, pairs with it.
	again, err := dial(t, client.Options{URL: url(b.s, false), Token: "cut", Name: "again"})
	if err != nil {
		t.Fatal(err)
	}
	tb := <-second
	if tb == nil || tb.PeerName() != "again" {
		t.Fatal("the partner was not paired on the node that took the key over")
	}
	exchange(t, again, tb, 100)
	if relaytest.Metric(t, b.s, `meetpoint_fleet_placements_total{outcome="takeover"}`) < 1 {
		t.Error("the key's move was not counted as a takeover")
	}
}

// TestMeshSourceIPs: a node given several source addresses dials its
// mesh links from each in turn (each source has its own ephemeral ports
// toward one owner).
func TestMeshSourceIPs(t *testing.T) {
	addr := redisAddr(t)
	a := startNode(t, addr, "src-a", nil)
	b := startNodeWith(t, addr, "src-b", nil, func(c *fleet.Config) {
		c.SourceIPs = []net.IP{net.ParseIP("127.0.0.2"), net.ParseIP("127.0.0.3")}
	})
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")
	for i := range 4 {
		ta, tb := pairAcross(t, a, b, "src-"+string(rune('0'+i)))
		exchange(t, ta, tb, 10)
	}
	from := map[string]bool{}
	for _, tu := range a.s.Snapshot().Tunnels {
		for _, c := range []string{tu.A.Address, tu.B.Address} {
			if strings.HasPrefix(c, "127.0.0.2:") || strings.HasPrefix(c, "127.0.0.3:") {
				from[c[:len("127.0.0.2")]] = true
			}
		}
	}
	if !from["127.0.0.2"] || !from["127.0.0.3"] {
		t.Errorf("the owner saw mesh links from %v, want both source addresses", from)
	}
}
