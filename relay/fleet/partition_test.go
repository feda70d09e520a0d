package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
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
// client waits there for a partner that reaches it. The client that was
// waiting on the old owner is told to reconnect (fleet_moved, a close
// 1001 that says so) instead of waiting out its alone timeout: at once
// when its node's pings already call the new holder unreachable
// ("known"), or when its placement there fails ("unconfirmed": its node
// never judges the peer lost).
func TestMeshOnlyPartition(t *testing.T) {
	addr := redisAddr(t)
	for _, tc := range []struct {
		name  string
		aLost time.Duration // cut-a's MeshLost
		moved float64       // meetpoint_fleet_clients_moved_total on cut-a
	}{
		{"known", 3 * time.Second, 1},
		{"unconfirmed", time.Hour, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			aID, bID := "cut-a-"+tc.name, "cut-b-"+tc.name
			token := "cut-" + tc.name
			// Pairing waits out a failed placement (5 s): alone timeouts
			// out of reach.
			patient := func(c *relay.Config) { c.AloneTimeout = time.Hour }
			pa, pb := newBlackhole(t), newBlackhole(t)
			a := startNodeWith(t, addr, aID, patient, func(c *fleet.Config) {
				c.MeshPing, c.MeshLost, c.Advertise = 200*time.Millisecond, tc.aLost, pa.addr()
			})
			pa.target.Store(relaytest.Addr(a.s))
			b := startNodeWith(t, addr, bID, patient, func(c *fleet.Config) {
				c.MeshPing, c.MeshLost, c.Advertise = 200*time.Millisecond, 3*time.Second, pb.addr()
			})
			pb.target.Store(relaytest.Addr(b.s))
			relaytest.WaitFor(t, func() bool {
				return relaytest.Metric(t, b.s, `meetpoint_mesh_peer_reachable{peer="`+aID+`"}`) == 1
			}, bID+" reaches "+aID+" over the mesh")

			pa.frozen.Store(true)
			pb.frozen.Store(true)
			relaytest.WaitFor(t, func() bool {
				return relaytest.Metric(t, b.s, `meetpoint_mesh_peer_reachable{peer="`+aID+`"}`) == 0
			}, bID+" sees "+aID+" unreachable")
			if tc.moved == 1 {
				relaytest.WaitFor(t, func() bool {
					return relaytest.Metric(t, a.s, `meetpoint_mesh_peer_reachable{peer="`+bID+`"}`) == 0
				}, aID+" sees "+bID+" unreachable")
			}
			names, ok, details := b.s.ReadinessParts()
			for i, n := range names {
				if n == "mesh" && (ok[i] || !strings.Contains(details[i], aID)) {
					t.Errorf("readiness during the partition: %v %q, want not ready naming %s", ok[i], details[i], aID)
				}
			}
			if len(a.f.Nodes()) != 2 || len(b.f.Nodes()) != 2 {
				t.Fatal("a node left the node set: the partition is the mesh's only")
			}
			firstErr := make(chan error, 1)
			go func() {
				_, err := dial(t, client.Options{URL: url(a.s, true), Token: token, Timeout: relaytest.Patience})
				firstErr <- err
			}()
			relaytest.WaitFor(t, func() bool { return fleet.HeldKey(a.f, token, "") }, "a client waiting on "+aID)
			// Its partner lands on cut-b: not refused, it waits there...
			second := waitOn(t, b, client.Options{URL: url(b.s, false), Token: token, Name: "second"})
			// ...cut-a finds the key taken (its next renewal) by a node
			// it cannot reach, and its waiting client is told to
			// reconnect...
			err := <-firstErr
			var ce *client.CloseError
			if !errors.As(err, &ce) || ce.Code != 1001 || !strings.Contains(ce.Reason, "Reconnect") {
				t.Fatalf("the client waiting on %s got %v, want a close 1001 telling it to reconnect", aID, err)
			}
			relaytest.WaitFor(t, func() error {
				closes := relaytest.Metric(t, a.s, `meetpoint_closes_total{reason="fleet_moved"}`)
				moved := relaytest.Metric(t, a.s, `meetpoint_fleet_clients_moved_total`)
				if closes != 1 || moved != tc.moved {
					return fmt.Errorf("fleet_moved closes %v, clients moved %v (want 1, %v)", closes, moved, tc.moved)
				}
				return nil
			}, aID+" counts the client it told to reconnect")
			// ...and, coming back through the balancer to a node that
			// reaches cut-b, it pairs.
			again, err := dial(t, client.Options{URL: url(b.s, false), Token: token, Name: "again"})
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
		})
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

// TestMeshLinksNotCountedAsClients: a node's mesh links to another came
// from one address and counted toward that address's MaxConnsPerIP, as
// clients do: cross-node tunnels between two nodes topped out at the
// limit (10,000 by default), the next pair refused. Once its signature is
// checked, a mesh link (and the control connection) is off the
// per-address count; a plain connection from the same address is still
// held to it.
func TestMeshLinksNotCountedAsClients(t *testing.T) {
	const perIP, pairs = 2, 5
	limited := func(c *relay.Config) {
		// Clients come from 127.0.0.1 (exempt); node b's links from
		// 127.0.0.3 (not).
		c.Limits.MaxConnsPerIP = perIP
		c.Limits.Exempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	}
	addr := redisAddr(t)
	a := startNode(t, addr, "lim-a", limited)
	// Node b sends no mesh pings during the test: a ping link dialled
	// from 127.0.0.3 while the test holds that address's limit would
	// be refused too and counted beside the one refusal checked below
	// (seen under qemu, where the first ping came 2 s after the join).
	b := startNodeWith(t, addr, "lim-b", limited, func(c *fleet.Config) {
		c.SourceIPs = []net.IP{net.ParseIP("127.0.0.3")}
		c.MeshPing, c.MeshLost = time.Hour, 2*time.Hour
	})
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")
	for i := range pairs {
		ta, tb := pairAcross(t, a, b, fmt.Sprintf("lim-%d", i))
		exchange(t, ta, tb, 10)
	}
	if n := relaytest.Metric(t, a.s, `meetpoint_cross_node_pairs_total{side="owner"}`); n < pairs {
		t.Fatalf("%d pairs went through the mesh, want %d", int(n), pairs)
	}
	// The limit still holds for 127.0.0.3's own connections.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: relaytest.Patience}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := range perIP + 1 {
		c, err := d.Dial("tcp", relaytest.Addr(a.s))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
		if i < perIP {
			continue
		}
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("connection %d from 127.0.0.3 (limit %d) was not refused: %v", i+1, perIP, err)
		}
	}
	relaytest.WaitFor(t, func() error {
		if n := relaytest.Metric(t, a.s, `meetpoint_closes_total{reason="limit_conns_per_ip"}`); n != 1 {
			return fmt.Errorf("%v refusals at the per-address limit, want 1", n)
		}
		return nil
	}, "one plain connection refused at the limit")
}

// TestTunnelProxyFarNodeLost: a TunnelProxy client on one node reaches
// its server on another over a mesh link; when the two nodes are cut
// apart (nothing closed, nothing answers), both ends are ended as
// far_node_lost within the mesh-lost time: the client's tunnel on its
// node, and on the server's node the mesh link's client, whose server is
// told ClientDisconnected, instead of holding it until TCP gives up.
func TestTunnelProxyFarNodeLost(t *testing.T) {
	addr := redisAddr(t)
	pa, pb := newBlackhole(t), newBlackhole(t)
	quick := func(p *blackhole) func(*fleet.Config) {
		return func(c *fleet.Config) {
			c.MeshPing, c.MeshLost, c.Advertise = 200*time.Millisecond, 4*time.Second, p.addr()
		}
	}
	a := startTPNode(t, addr, "tplost-a", quick(pa))
	pa.target.Store(relaytest.Addr(a.s))
	b := startTPNode(t, addr, "tplost-b", quick(pb))
	pb.target.Store(relaytest.Addr(b.s))
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")

	const serverUUID = "88888888-8888-4888-8888-888888888888"
	srv, err := client.RegisterTPServer(context.Background(), client.TPOptions{URL: url(a.s, false), UUID: serverUUID, Name: "device", Timeout: relaytest.Patience})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cl, err := client.DialTPClient(context.Background(), client.TPOptions{URL: url(b.s, true), UUID: "99999999-9999-4999-8999-999999999999",
		Name: "app", ServerUUID: serverUUID, Timeout: relaytest.Patience})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sc, err := acceptWithin(srv, relaytest.Patience)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	_ = sc.SetReadDeadline(time.Now().Add(relaytest.Patience))
	if _, err := io.ReadFull(sc, got); err != nil || string(got) != "ping" {
		t.Fatalf("server read %q, %v", got, err)
	}
	relaytest.WaitFor(t, func() bool {
		return a.s.MeshPeers()["tplost-b"] == 1 && b.s.MeshPeers()["tplost-a"] == 1
	}, "each node counts the TunnelProxy session that crosses to the other")

	pa.frozen.Store(true)
	pb.frozen.Store(true)
	// The server hears that its client left (ClientDisconnected)...
	_ = sc.SetReadDeadline(time.Now().Add(relaytest.Patience))
	if _, err := sc.Read(got); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the server's side of the cut client: %v, want it ended", err)
	}
	// ...and the client's tunnel ends on its node.
	_ = cl.SetReadDeadline(time.Now().Add(relaytest.Patience))
	if _, err := cl.Read(got); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the client across the cut: %v, want it ended", err)
	}
	for _, nd := range []*node{a, b} {
		relaytest.WaitFor(t, func() bool {
			return relaytest.Metric(t, nd.s, `meetpoint_closes_total{reason="far_node_lost"}`) >= 1
		}, nd.id+" counts its end as far_node_lost")
	}
	relaytest.WaitFor(t, func() bool { return a.s.MeshPeers()["tplost-b"] == 0 }, "tplost-a no longer counts the session")
}

// TestMeshPingsUnderASecond: liveness pings more often than once a second
// are all answered. Each ping's signature is unique (its rid): two pings
// in the same second once signed the same fields, and the node accepting
// a signature once refused every other ping as a replay.
func TestMeshPingsUnderASecond(t *testing.T) {
	addr := redisAddr(t)
	quick := func(c *fleet.Config) { c.MeshPing, c.MeshLost = 100*time.Millisecond, 30*time.Second }
	a := startNodeWith(t, addr, "ping-a", nil, quick)
	b := startNodeWith(t, addr, "ping-b", nil, quick)
	relaytest.WaitFor(t, func() bool { return len(a.f.Nodes()) == 2 && len(b.f.Nodes()) == 2 }, "both nodes see each other")
	// 20 answered pings at 100 ms span two seconds or more: several pairs
	// of them fall in the same second.
	for _, nd := range []*node{a, b} {
		other := map[*node]string{a: "ping-b", b: "ping-a"}[nd]
		relaytest.WaitFor(t, func() bool {
			return relaytest.Metric(t, nd.s, `meetpoint_mesh_pings_total{peer="`+other+`"}`) >= 20
		}, nd.id+" has 20 pings answered by "+other)
	}
	for _, nd := range []*node{a, b} {
		other := map[*node]string{a: "ping-b", b: "ping-a"}[nd]
		if n := relaytest.Metric(t, nd.s, `meetpoint_mesh_ping_failures_total{peer="`+other+`"}`); n != 0 {
			t.Errorf("%s: %v pings to %s failed", nd.id, n, other)
		}
		if n := relaytest.Metric(t, nd.s, "meetpoint_mesh_refused_total"); n != 0 {
			t.Errorf("%s refused %v mesh requests", nd.id, n)
		}
	}
}
