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
	"github.com/meetpoint/meetpoint/relay/auth"
	"github.com/meetpoint/meetpoint/relay/fleet"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/relaytest"
	"github.com/meetpoint/meetpoint/relay/tunnelproxy"
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
	return startNodeWith(t, redisAddr, id, mutate, nil)
}

// startNodeWith is startNode with the fleet's config changed by fmutate.
// redisAddr may be a whole --fleet URL (redis+cluster://...).
func startNodeWith(t testing.TB, redisAddr, id string, mutate func(*relay.Config), fmutate func(*fleet.Config)) *node {
	t.Helper()
	nd, err := joinNode(t, redisAddr, id, mutate, fmutate)
	if err != nil {
		t.Fatal(err)
	}
	return nd
}

// joinNode is startNodeWith returning the fleet's Start error instead of
// failing the test (the relay serves either way): for the nodes a fleet
// must refuse. A node that joined is closed at cleanup.
func joinNode(t testing.TB, redisAddr, id string, mutate func(*relay.Config), fmutate func(*fleet.Config)) (*node, error) {
	t.Helper()
	s := relaytest.New(t, mutate)
	spec := redisAddr
	if !strings.Contains(spec, "://") {
		spec = "redis://" + redisAddr + "/0"
	}
	rdb, err := fleet.ParseURL(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	// The heartbeat bounds each store round trip: 200 ms was short enough
	// for a loaded machine's Redis to miss it, and the node then paired
	// locally only (store "unreachable"), failing cross-node pairs.
	fc := fleet.Config{Redis: rdb, NodeID: id, MeshKey: meshKey, Heartbeat: testHeartbeat,
		LeaseTTL: 3 * time.Second, Logger: testutil.Logger(t)}
	if fmutate != nil {
		fmutate(&fc)
	}
	f, err := fleet.New(fc, s)
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, s)
	if err := f.Start(context.Background()); err != nil {
		return &node{id: id, s: s, f: f}, err
	}
	t.Cleanup(func() { f.Close() })
	return &node{id: id, s: s, f: f}, nil
}

// testHeartbeat is the fleet tests' heartbeat: quicker than the default
// (2 s) so that departures show soon, slow enough for a loaded Redis.
const testHeartbeat = time.Second

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
		_ = c.r.SetReadDeadline(time.Now().Add(relaytest.Patience))
		if _, err := io.ReadFull(c.r, got); err != nil || !bytes.Equal(got, c.want) {
			t.Fatalf("tunnel lost data: %v (%d bytes)", err, len(got))
		}
	}
	wg.Wait()
}

func dial(t testing.TB, o client.Options) (*client.Tunnel, error) {
	if o.Timeout == 0 { // a lone client waits for the relay to close it
		o.Timeout, o.WaitRelay = relaytest.Patience, true
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
			relaytest.WaitFor(t, func() bool { return fleet.HeldKey(a.f, tok, "") }, "first client waiting (its key held by its node)")
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
			if relaytest.Metric(t, b.s, `meetpoint_cross_node_pairs_total{side="dialled"}`) < 1 || relaytest.Metric(t, a.s, `meetpoint_cross_node_pairs_total{side="owner"}`) < 1 {
				t.Fatal("the pair did not go through the mesh")
			}
			exchange(t, ta, tb, 200_000)
			if !mix[0] && !mix[1] {
				// One 200 kB write each way: the first read of each
				// direction is buffered, the bulk after it spliced.
				if a.s.Stats().SplicedBytes-splicedA < 100_000 || b.s.Stats().SplicedBytes-splicedB < 100_000 {
					t.Errorf("TCP↔TCP across nodes not spliced on both: owner %d, dialler %d bytes",
						a.s.Stats().SplicedBytes-splicedA, b.s.Stats().SplicedBytes-splicedB)
				}
			}
			// Partner loss crosses the mesh: closing one end ends the other.
			ta.Close()
			_ = tb.SetReadDeadline(time.Now().Add(relaytest.Patience))
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
		relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, c.s, `meetpoint_closes_total{reason="tunnel_exists"}`) == 1 },
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

// TestDataBeforeTunnelAcrossNodes: a client that sends data after its
// Authenticate reply, before TunnelEstablished, is closed by its own node
// (data_before_tunnel) whether its placement is still in flight or its
// mesh link already paired, and its partner waiting on the owner node
// learns that its partner left instead of keeping a half tunnel.
func TestDataBeforeTunnelAcrossNodes(t *testing.T) {
	nodes := startFleet(t, redisAddr(t), 2, nil)
	a, b := nodes[0], nodes[1]
	first := make(chan error, 1)
	go func() {
		tu, err := dial(t, client.Options{URL: url(a.s, false), Token: "early"})
		if err == nil {
			_ = tu.SetReadDeadline(time.Now().Add(relaytest.Patience))
			_, err = tu.Read(make([]byte, 1))
			if isTimeout(err) {
				err = errors.New("still open")
			} else {
				err = nil // the tunnel ended: partner left
			}
		}
		first <- err
	}()
	relaytest.WaitFor(t, func() bool { return fleet.HeldKey(a.f, "early", "") }, "the first client waiting on node a")
	c, err := net.Dial("tcp", relaytest.Addr(b.s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u-early","name":"n","token":"early"}}`+"\n")
	_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
	reply := make([]byte, 512)
	n, err := c.Read(reply) // the Authenticate reply
	if err != nil || !bytes.Contains(reply[:n], []byte("AuthenticationErrorNoError")) {
		t.Fatalf("authenticate: %q %v", reply[:n], err)
	}
	if bytes.Contains(reply[:n], []byte("TunnelEstablished")) {
		t.Skip("paired before the early data could be sent: nothing to test this time")
	}
	fmt.Fprint(c, "EARLY DATA")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second)) // a close, or a live tunnel after it
	got, err := io.ReadAll(c)
	if bytes.Contains(got, []byte("TunnelEstablished")) {
		if isTimeout(err) {
			// TunnelEstablished was on its way in a read of its own (a
			// loaded machine): the data came after it, into a live tunnel.
			t.Skip("paired before the early data could be sent: nothing to test this time")
		}
		t.Errorf("the early sender was paired: %q", got)
	}
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, b.s, `meetpoint_closes_total{reason="data_before_tunnel"}`) == 1
	},
		"the early sender closed as data_before_tunnel on its node")
	if err := <-first; err != nil {
		t.Errorf("the waiting partner on the owner: %v", err)
	}
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

// TestConcurrentArrivals: both halves of 1000 pairs arrive at the same
// moment on two different nodes (chosen per pair among three): every pair
// is tunnelled to its own partner, none is lost or paired twice.
func TestConcurrentArrivals(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 200
	}
	nodes := startFleet(t, redisAddr(t), 3, func(c *relay.Config) { c.AloneTimeout = 20 * time.Second })
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			na, nb := nodes[i%3], nodes[(i+1+i/3%2)%3]
			tok := fmt.Sprintf("race-%d", i)
			a, b, err := client.DialPair(context.Background(),
				client.Options{URL: url(na.s, i%2 == 0), Token: tok, Name: "a" + tok, Timeout: 15 * time.Second},
				client.Options{URL: url(nb.s, i%4 == 1), Token: tok, Name: "b" + tok, Timeout: 15 * time.Second})
			if err == nil {
				defer a.Close()
				defer b.Close()
				if a.PeerName() != "b"+tok || b.PeerName() != "a"+tok {
					err = fmt.Errorf("paired with the wrong partner: %q and %q", a.PeerName(), b.PeerName())
				} else {
					err = echo(a, b, tok)
				}
			}
			if err != nil {
				mu.Lock()
				failures = append(failures, fmt.Sprintf("pair %d (%s→%s): %v", i, na.id, nb.id, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d pairs failed, e.g. %v", len(failures), n, failures[:min(5, len(failures))])
	}
	var tunnels, remote float64
	for _, nd := range nodes {
		tunnels += relaytest.Metric(t, nd.s, "meetpoint_tunnels_total")
		remote += relaytest.Metric(t, nd.s, `meetpoint_cross_node_pairs_total{side="dialled"}`)
	}
	// A cross-node pair is a tunnel on each of its two nodes.
	if tunnels != float64(n)+remote || remote == 0 {
		t.Errorf("%v tunnels for %d pairs, %v of them across nodes", tunnels, n, remote)
	}
	t.Logf("%d pairs, %v across nodes", n, remote)
}

// echo sends tok from a to b and back.
func echo(a, b *client.Tunnel, tok string) error {
	for _, d := range [][2]*client.Tunnel{{a, b}, {b, a}} {
		if _, err := d[0].Write([]byte(tok)); err != nil {
			return err
		}
		got := make([]byte, len(tok))
		_ = d[1].SetReadDeadline(time.Now().Add(relaytest.Patience))
		if _, err := io.ReadFull(d[1], got); err != nil {
			return err
		}
		if string(got) != tok {
			return fmt.Errorf("got %q, want %q: crossed tunnels", got, tok)
		}
	}
	return nil
}

// TestAloneOwnerThenAnotherNode: the first client times out alone on its
// node; the key is released, so a later pair of the same token meets on
// other nodes.
func TestAloneOwnerThenAnotherNode(t *testing.T) {
	// Only node a sends a lone client away soon: b and c, which pair
	// across the mesh afterwards, keep a timeout pairing never races under
	// load.
	first := true
	nodes := startFleet(t, redisAddr(t), 3, func(c *relay.Config) {
		if first {
			c.AloneTimeout, first = 300*time.Millisecond, false
		}
	})
	a, b, c := nodes[0], nodes[1], nodes[2]
	if _, err := dial(t, client.Options{URL: url(a.s, false), Token: "alone"}); err == nil {
		t.Fatal("a lone client was paired")
	}
	relaytest.WaitFor(t, func() bool { return fleet.Held(a.f) == 0 }, "the lone client's key released")
	ta, tb := pairAcross(t, b, c, "alone")
	exchange(t, ta, tb, 1000)
}

// TestStoreOutage: with Redis stopped, a node still pairs clients that
// meet on it, says so on /readyz and in a metric, refuses nothing it can
// pair; when Redis is back it recovers by itself and pairs across nodes
// again.
func TestStoreOutage(t *testing.T) {
	addr, stop := testutil.Redis(t, 0)
	// Short enough for the lone client below, long enough for the
	// cross-node pairs under load.
	nodes := startFleet(t, addr, 2, func(c *relay.Config) { c.AloneTimeout = 3 * time.Second })
	a, b := nodes[0], nodes[1]
	running1, running2 := pairAcross(t, a, b, "outage-running")
	stop()
	relaytest.WaitFor(t, func() bool { return !a.f.Available() && !b.f.Available() }, "both nodes see the store gone")
	if relaytest.Metric(t, a.s, "meetpoint_fleet_available") != 0 {
		t.Error("meetpoint_fleet_available is not 0 during the outage")
	}
	ok, detail := fleet.Ready(a.f)
	if ok || !strings.Contains(detail, "cross-node") {
		t.Errorf("readiness during the outage: %v %q", ok, detail)
	}
	// A cross-node tunnel made before the outage goes on.
	exchange(t, running1, running2, 10_000)
	// A client left alone is told why its partner could not be found.
	if _, err := dial(t, client.Options{URL: url(b.s, true), Token: "outage-alone"}); err == nil || !strings.Contains(err.Error(), "store unreachable") {
		t.Errorf("a lone client during the outage: %v, want the close to say the fleet store is unreachable", err)
	}
	// Same-node pairs still work.
	ta, tb := pairAcross(t, a, a, "outage-local")
	exchange(t, ta, tb, 1000)

	// Redis back on the same port: the nodes recover by themselves.
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	var p int
	fmt.Sscan(port, &p)
	testutil.Redis(t, p)
	relaytest.WaitFor(t, func() bool { return a.f.Available() && b.f.Available() }, "both nodes see the store back")
	tc, td := pairAcross(t, a, b, "outage-after")
	exchange(t, tc, td, 1000)
}

// TestNodeDeath: a node stops abruptly while tunnels run through the
// others: only its tunnels end; a key it held expires with its lease, so
// a client of that token elsewhere is not paired to a ghost but waits and
// pairs with the next arrival.
func TestNodeDeath(t *testing.T) {
	nodes := startFleet(t, redisAddr(t), 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	survivor1, survivor2 := pairAcross(t, b, c, "death-survives")
	doomed1, doomed2 := pairAcross(t, a, b, "death-doomed")
	// A client waits on a for a partner that arrives after a's death.
	waitErr := make(chan error, 1)
	go func() {
		_, err := dial(t, client.Options{URL: url(a.s, false), Token: "death-ghost", Timeout: 10 * time.Second})
		waitErr <- err
	}()
	relaytest.WaitFor(t, func() bool { return fleet.HeldKey(a.f, "death-ghost", "") }, "a client waiting on the doomed node")
	fleet.Kill(a.f) // no release, no goodbye: as SIGKILL leaves the store
	a.s.Close()
	if err := <-waitErr; err == nil {
		t.Fatal("the doomed node's waiting client was paired")
	}
	for _, tu := range []*client.Tunnel{doomed1, doomed2} {
		_ = tu.SetReadDeadline(time.Now().Add(relaytest.Patience))
		if _, err := tu.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("a tunnel through the dead node lives on: %v", err)
		}
	}
	exchange(t, survivor1, survivor2, 10_000)
	// The ghost's key: its owner is gone from the node set, so the next
	// client takes it over instead of dialling a dead node.
	relaytest.WaitFor(t, func() bool { return len(b.f.Nodes()) == 2 }, "the dead node leaves the node set")
	te, tf := pairAcross(t, b, c, "death-ghost")
	exchange(t, te, tf, 10)
}

// TestCrossNodeTLSAndOneTime: nodes with TLS and one-time tokens in the
// same Redis. A wss:// client and a tls:// client on two nodes pair on
// one minted token (both of its ends, across nodes); a third client with
// that token is refused, on any node, and so is a later pair.
func TestCrossNodeTLSAndOneTime(t *testing.T) {
	addr := redisAddr(t)
	store, clientTLS := relaytest.TLS(t)
	tokens, _, err := auth.ParseRedisAuth("redis://" + addr + "/0?prefix=ot:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tokens.Close() })
	nodes := startFleet(t, addr, 3, func(c *relay.Config) {
		c.TLS = store.TLSConfig()
		c.Auth = auth.NewOneTime(tokens, 20*time.Second)
	})
	a, b, c := nodes[0], nodes[1], nodes[2]
	tok, _, err := auth.Mint(context.Background(), tokens, "alice", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan *client.Tunnel, 1)
	go func() {
		tu, err := dial(t, client.Options{URL: "wss://" + relaytest.Addr(a.s) + "/", Token: tok, TLSConfig: clientTLS, Name: "web"})
		if err != nil {
			t.Error(err)
		}
		first <- tu
	}()
	relaytest.WaitFor(t, func() bool { return fleet.HeldKey(a.f, tok, "") }, "the first end waiting on node a")
	tb, err := dial(t, client.Options{URL: "tls://" + relaytest.Addr(b.s), Token: tok, TLSConfig: clientTLS, Name: "device"})
	if err != nil {
		t.Fatalf("the token's second end on another node: %v", err)
	}
	ta := <-first
	if ta == nil {
		t.FailNow()
	}
	if ta.PeerName() != "device" || tb.PeerName() != "web" {
		t.Errorf("partners: %q, %q", ta.PeerName(), tb.PeerName())
	}
	exchange(t, ta, tb, 100_000)
	for _, nd := range []*node{c, a} {
		var ae *client.AuthError
		if _, err := dial(t, client.Options{URL: url(nd.s, false), Token: tok}); !errors.As(err, &ae) {
			t.Errorf("a third end of a one-time token on %s: %v, want an authentication error", nd.id, err)
		}
	}
}

// TestTunnelProxyAcrossNodes: a TunnelProxy server registered on one node
// is reachable by clients on the others (raw TCP and WebSocket), its uuid
// is refused as AlreadyRegistered on another node, and an unknown server
// is ServerNotFound everywhere.
func TestTunnelProxyAcrossNodes(t *testing.T) {
	addr := redisAddr(t)
	nodes := make([]*node, 3)
	for i := range nodes {
		nodes[i] = startTPNode(t, addr, fmt.Sprintf("tp-%d", i), nil)
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	serverUUID := "44444444-4444-4444-8444-444444444444"
	srv, err := client.RegisterTPServer(context.Background(), client.TPOptions{URL: url(a.s, false), UUID: serverUUID, Name: "device", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// The same uuid on another node.
	if _, err := client.RegisterTPServer(context.Background(), client.TPOptions{URL: url(b.s, true), UUID: serverUUID, Name: "twin", Timeout: 5 * time.Second}); err == nil ||
		!strings.Contains(err.Error(), "AlreadyRegistered") {
		t.Errorf("a duplicate server uuid on another node: %v, want AlreadyRegistered", err)
	}
	for i, nd := range []*node{b, c} {
		cl, err := client.DialTPClient(context.Background(), client.TPOptions{URL: url(nd.s, i == 1), UUID: fmt.Sprintf("5555555%d-5555-4555-8555-555555555555", i),
			Name: "app", ServerUUID: serverUUID, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatalf("client on %s: %v", nd.id, err)
		}
		defer cl.Close()
		conn, err := acceptWithin(srv, 5*time.Second)
		if err != nil {
			t.Fatalf("server did not see the client from %s: %v", nd.id, err)
		}
		msg := []byte(fmt.Sprintf("hello through %s", nd.id))
		if _, err := cl.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("server read %q, %v", got, err)
		}
		if _, err := conn.Write([]byte("pong")); err != nil {
			t.Fatal(err)
		}
		back := make([]byte, 4)
		_ = cl.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(cl, back); err != nil || string(back) != "pong" {
			t.Fatalf("client read %q, %v", back, err)
		}
		if relaytest.Metric(t, nd.s, "meetpoint_tunnelproxy_remote_clients_total") != 1 {
			t.Errorf("the client on %s was not bridged to the server's node", nd.id)
		}
	}
	if _, err := client.DialTPClient(context.Background(), client.TPOptions{URL: url(c.s, false), UUID: "66666666-6666-4666-8666-666666666666",
		Name: "app", ServerUUID: "77777777-7777-4777-8777-777777777777", Timeout: 5 * time.Second}); err == nil || !strings.Contains(err.Error(), "ServerNotFound") {
		t.Errorf("an unknown server: %v, want ServerNotFound", err)
	}
}

// startTPNode starts a fleet node that serves the TunnelProxy API
// fleet-wide; fmutate (if not nil) changes its fleet config.
func startTPNode(t *testing.T, addr, id string, fmutate func(*fleet.Config)) *node {
	t.Helper()
	s := relaytest.New(t, nil)
	tp, err := tunnelproxy.New(s, tunnelproxy.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	rdb, _ := fleet.ParseURL("redis://" + addr + "/0")
	t.Cleanup(func() { rdb.Close() })
	fc := fleet.Config{Redis: rdb, NodeID: id, MeshKey: meshKey,
		Heartbeat: testHeartbeat, LeaseTTL: 3 * time.Second, Logger: testutil.Logger(t), Reach: tp.RegisterMeshClient}
	if fmutate != nil {
		fmutate(&fc)
	}
	f, err := fleet.New(fc, s)
	if err != nil {
		t.Fatal(err)
	}
	tp.SetDirectory(f)
	relaytest.Start(t, s)
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &node{id: id, s: s, f: f}
}

// acceptWithin is srv.Accept with a deadline.
func acceptWithin(srv *client.TPServer, d time.Duration) (*client.TPConn, error) {
	type res struct {
		c   *client.TPConn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := srv.Accept(); ch <- res{c, err} }()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-time.After(d):
		return nil, errors.New("no client within the deadline")
	}
}

// TestMeshOverTLS: nodes whose relays serve TLS only announce their
// certificate, and the mesh links between them are TLS sessions pinned to
// it; a plain client pairs with a TLS client across them.
func TestMeshOverTLS(t *testing.T) {
	addr := redisAddr(t)
	store, clientTLS := relaytest.TLS(t)
	var nodes []*node
	for _, id := range []string{"tls-a", "tls-b"} {
		nodes = append(nodes, startNodeWith(t, addr, id, func(c *relay.Config) { c.TLS, c.TLSOnly = store.TLSConfig(), true },
			func(fc *fleet.Config) { fc.CertFingerprint = store.Fingerprint }))
	}
	relaytest.WaitFor(t, func() bool { return len(nodes[0].f.Nodes()) == 2 && len(nodes[1].f.Nodes()) == 2 }, "both nodes see each other")
	a, b := nodes[0], nodes[1]
	first := make(chan *client.Tunnel, 1)
	go func() {
		tu, err := dial(t, client.Options{URL: "tls://" + relaytest.Addr(a.s), Token: "mesh-tls", TLSConfig: clientTLS, Name: "one"})
		if err != nil {
			t.Error(err)
		}
		first <- tu
	}()
	relaytest.WaitFor(t, func() bool { return fleet.HeldKey(a.f, "mesh-tls", "") }, "the first end waiting on tls-a")
	tb, err := dial(t, client.Options{URL: "wss://" + relaytest.Addr(b.s) + "/", Token: "mesh-tls", TLSConfig: clientTLS, Name: "two"})
	if err != nil {
		t.Fatalf("cross-node pair between TLS-only nodes: %v", err)
	}
	ta := <-first
	if ta == nil {
		t.FailNow()
	}
	exchange(t, ta, tb, 300_000)
	if relaytest.Metric(t, a.s, `meetpoint_tls_handshakes_total{result="ok"}`) < 2 {
		t.Error("the owner did not take the mesh link over TLS")
	}

	// A node announcing another certificate than it serves is refused.
	other, _ := relaytest.TLS(t)
	c := startNodeWith(t, addr, "tls-liar", func(c *relay.Config) { c.TLS, c.TLSOnly = store.TLSConfig(), true },
		func(fc *fleet.Config) { fc.CertFingerprint = other.Fingerprint })
	relaytest.WaitFor(t, func() bool { return len(b.f.Nodes()) == 3 }, "the liar in the node set")
	go func() {
		_, _ = dial(t, client.Options{URL: "tls://" + relaytest.Addr(c.s), Token: "mesh-liar", TLSConfig: clientTLS, Timeout: 3 * time.Second})
	}()
	relaytest.WaitFor(t, func() bool { return fleet.HeldKey(c.f, "mesh-liar", "") }, "a client waiting on the liar")
	if _, err := dial(t, client.Options{URL: "tls://" + relaytest.Addr(b.s), Token: "mesh-liar", TLSConfig: clientTLS, Timeout: 3 * time.Second}); err == nil {
		t.Fatal("paired through a node whose certificate is not the one it announces")
	}
	if relaytest.Metric(t, b.s, `meetpoint_fleet_placements_total{outcome="failed"}`) < 1 {
		t.Error("the pinning failure was not counted as a failed placement")
	}
	if relaytest.Metric(t, b.s, `meetpoint_mesh_dial_failures_total{peer="tls-liar"}`) < 1 {
		t.Error("the pinning failure was not counted as a dial failure to that node")
	}
}

// TestDegradedClientPublishedAfterOutage: a client arrives while the
// fleet's store is away (it waits on its node only), the store comes back
// and the node publishes its key, so a partner on any node could find it
// from then on. When it then waits out its alone timeout, its close does
// not blame the store (which answered again and knew its key) for the
// missing partner.
func TestDegradedClientPublishedAfterOutage(t *testing.T) {
	addr, stop := testutil.Redis(t, 0)
	a := startNode(t, addr, "blip-a", func(c *relay.Config) { c.AloneTimeout = 10 * time.Second })
	stop()
	relaytest.WaitFor(t, func() bool { return !a.f.Available() }, "the node sees the store gone")
	closed := make(chan error, 1)
	go func() {
		_, err := dial(t, client.Options{URL: url(a.s, true), Token: "blip"})
		closed <- err
	}()
	relaytest.WaitFor(t, func() bool { return fleet.HeldKey(a.f, "blip", "") }, "the client waiting on its node only")

	port := addr[strings.LastIndexByte(addr, ':')+1:]
	var p int
	fmt.Sscan(port, &p)
	testutil.Redis(t, p)
	rdb, _ := fleet.ParseURL("redis://" + addr + "/0")
	defer rdb.Close()
	key := fleet.PairKeyName(a.f, "blip", "")
	relaytest.WaitFor(t, func() bool {
		v, err := rdb.Get(context.Background(), key).Result()
		return err == nil && strings.HasPrefix(v, a.id+" ")
	}, "the node publishes the waiting client's key once the store is back")
	select {
	case err := <-closed:
		t.Fatalf("the client ended before the test could check its key was published: %v", err)
	default:
	}
	err := <-closed
	if err == nil || !strings.Contains(err.Error(), "No partner arrived") {
		t.Fatalf("the lone client: %v, want its alone timeout", err)
	}
	if strings.Contains(err.Error(), "store unreachable") {
		t.Errorf("the lone client's close blames the store, which was back and held its key: %v", err)
	}
}

// serverOnKilledNode starts two TunnelProxy nodes, PREFIX-a and
// PREFIX-b, registers server uuid on a and kills a (no goodbye: the
// uuid's key and a's heartbeat, good for a minute, stay in the store). It
// returns b.
func serverOnKilledNode(t *testing.T, prefix, uuid string) *node {
	t.Helper()
	addr := redisAddr(t)
	a := startTPNode(t, addr, prefix+"-a", func(c *fleet.Config) { c.Heartbeat = time.Minute })
	b := startTPNode(t, addr, prefix+"-b", nil)
	relaytest.WaitFor(t, func() bool { return len(b.f.Nodes()) == 2 }, "node b sees node a")
	srv, err := client.RegisterTPServer(context.Background(), client.TPOptions{URL: url(a.s, false), UUID: uuid, Name: "device", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	fleet.Kill(a.f)
	a.s.Close()
	return b
}

// TestTunnelProxyServerAfterNodeKilled: a TunnelProxy server's node is
// killed (no goodbye: its uuid's key and its heartbeat stay in the store)
// and the server registers again on another node, as its reconnect
// through a balancer does. Nothing listens at the dead node's address, so
// the uuid is taken over at once, as a pair key is; it is not refused as
// AlreadyRegistered until the dead node's heartbeat expires.
func TestTunnelProxyServerAfterNodeKilled(t *testing.T) {
	const serverUUID = "88888888-8888-4888-8888-888888888888"
	b := serverOnKilledNode(t, "tpk", serverUUID)
	again, err := client.RegisterTPServer(context.Background(), client.TPOptions{URL: url(b.s, false), UUID: serverUUID, Name: "device", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("the server registering again on another node after its node was killed: %v", err)
	}
	defer again.Close()
	cl, err := client.DialTPClient(context.Background(), client.TPOptions{URL: url(b.s, true), UUID: "99999999-9999-4999-8999-999999999999",
		Name: "app", ServerUUID: serverUUID, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("a client of the server registered again: %v", err)
	}
	cl.Close()
}

// TestTunnelProxyClientOfKilledNode: a client asks for a TunnelProxy
// server whose node was killed a moment ago (its registration and
// heartbeat still in the store). Nothing listens there: the server is
// gone, so the client is told ServerNotFound, as for any unknown server,
// not InternalServerError, and the refused connection is not counted as
// a mesh dial failure (the node's host answered).
func TestTunnelProxyClientOfKilledNode(t *testing.T) {
	const serverUUID = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
	b := serverOnKilledNode(t, "tpc", serverUUID)
	_, err := client.DialTPClient(context.Background(), client.TPOptions{URL: url(b.s, false), UUID: "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb",
		Name: "app", ServerUUID: serverUUID, Timeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "ServerNotFound") {
		t.Errorf("a client of a server whose node was killed: %v, want ServerNotFound", err)
	}
	if n := relaytest.Metric(t, b.s, `meetpoint_mesh_dial_failures_total{peer="tpc-a"}`); n > 0 { // -1: never counted
		t.Errorf("a refused connection to the dead node counted as %v mesh dial failures", n)
	}
}
