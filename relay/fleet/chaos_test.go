package fleet_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/fleet"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// The fleet's faults with traffic flowing (make fleet-chaos; not in the
// default suite): each fault hits a fleet of three nodes while tunnels
// across and within them stream checksummed bytes both ways; every byte
// must be delivered, or the tunnel must end at both of its ends with a
// named reason. A table of the results is printed.

// chaosRow is one line of the table.
type chaosRow struct {
	fault             string
	tunnels, affected int
	recover           time.Duration
	lost              int64
	reasons           map[string]int
}

// chaosFleet is three nodes behind freezable proxies (their mesh
// addresses), node c dialling from 127.0.0.3 so that its own outgoing
// mesh connections can be frozen too.
type chaosFleet struct {
	redisSpec, round string
	nodes            []*node
	proxies          []*blackhole
}

// chaosIDs are the three nodes' ids.
var chaosIDs = []string{"chaos-a", "chaos-b", "chaos-c"}

func newChaosFleet(t *testing.T, redisSpec, round string) *chaosFleet {
	cf := &chaosFleet{redisSpec: redisSpec, round: round}
	for i := range chaosIDs {
		cf.proxies = append(cf.proxies, newBlackhole(t))
		cf.nodes = append(cf.nodes, cf.start(t, i))
	}
	relaytest.WaitFor(t, func() bool {
		for _, nd := range cf.nodes {
			if len(nd.f.Nodes()) != 3 {
				return false
			}
		}
		return true
	}, "every node sees the fleet")
	return cf
}

// start starts node i (its id, and its proxy's address as its advertised
// one) and points its proxy at it.
func (cf *chaosFleet) start(t *testing.T, i int) *node {
	p := cf.proxies[i]
	nd := startNodeWith(t, cf.redisSpec, chaosIDs[i], nil, func(c *fleet.Config) {
		c.Prefix = "meetpoint-" + cf.round + ":" // each round its own fleet
		c.MeshPing, c.MeshLost, c.Advertise = 500*time.Millisecond, 5*time.Second, p.addr()
		if i == 2 {
			c.SourceIPs = []net.IP{net.ParseIP("127.0.0.3")}
		}
	})
	p.target.Store(relaytest.Addr(nd.s))
	return nd
}

// traffic starts one tunnel per ordered pair of nodes (6 across, 3 within).
func (cf *chaosFleet) traffic(t *testing.T, tag string) []*relaytest.Stream {
	var out []*relaytest.Stream
	for i, a := range cf.nodes {
		for j, b := range cf.nodes {
			if j < i {
				continue
			}
			tok := fmt.Sprintf("%s-%d%d", tag, i, j)
			first := waitOn(t, a, client.Options{URL: url(a.s, true), Token: tok, Timeout: time.Minute})
			tb, err := dial(t, client.Options{URL: url(b.s, true), Token: tok})
			if err != nil {
				t.Fatalf("tunnel %s: %v", tok, err)
			}
			ta := <-first
			if ta == nil {
				t.FailNow()
			}
			out = append(out, relaytest.StartStream(a.id+"↔"+b.id, ta, tb))
		}
	}
	return out
}

// pairs reports whether a fresh pair meets across two nodes within 5 s.
func (cf *chaosFleet) pairs(a, b *node, tok string) bool {
	return relaytest.Meets(url(a.s, false), url(b.s, false), tok, 5*time.Second)
}

// run applies fault to a fresh round of traffic, waits until the fleet
// pairs across the given nodes again (recovered), and fills a row.
func (cf *chaosFleet) run(t *testing.T, name string, fault func(), recovered func(try int) bool) chaosRow {
	streams := cf.traffic(t, strings.ReplaceAll(name, " ", "-"))
	time.Sleep(300 * time.Millisecond) // bytes flowing
	start := time.Now()
	fault()
	try := 0
	for !recovered(try) {
		try++
		if time.Since(start) > time.Minute {
			t.Errorf("%s: the fleet did not recover within a minute", name)
			break
		}
	}
	row := chaosRow{fault: name, tunnels: len(streams), recover: time.Since(start), reasons: map[string]int{}}
	time.Sleep(time.Second) // traffic goes on after the recovery
	for _, s := range streams {
		lost, ended, reasons := s.Settle(t)
		if s.Corrupt() {
			t.Errorf("%s: tunnel %s delivered a byte out of sequence", name, s.Name)
		}
		row.lost += lost
		if ended {
			row.affected++
			row.reasons[reasons]++
		}
		s.Close()
	}
	return row
}

// startHAProxy starts HAProxy in TCP mode, round robin over the nodes,
// with health checks every 300 ms and a retry on another node when a
// connection is refused, as an operator would put it in front of a fleet;
// it returns the balancer's address. The test is skipped without haproxy.
func startHAProxy(t *testing.T, nodes []*node) string {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatal(err) // TestFleetChaos checked first
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb := l.Addr().String()
	l.Close()
	cfg := "global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1m\n  timeout server 1m\n" +
		"  retries 3\n  option redispatch\nfrontend relay\n  bind " + lb + "\n  default_backend nodes\nbackend nodes\n  balance roundrobin\n"
	for _, nd := range nodes {
		cfg += "  server " + nd.id + " " + relaytest.Addr(nd.s) + " check inter 300ms fall 2 rise 1\n"
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	relaytest.WaitFor(t, func() bool {
		c, err := net.Dial("tcp", lb)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "HAProxy listening")
	return lb
}

// pairVia reports whether a fresh pair meets through the balancer at lb
// (a raw-TCP client and a WebSocket client, wherever it sends them).
func pairVia(lb, tok string) bool {
	return relaytest.Meets("tcp://"+lb, "ws://"+lb+"/", tok, 5*time.Second)
}

// quiet is a go-redis logger that logs nothing.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// TestFleetChaos: the fleet's faults with traffic flowing (MEETPOINT_CHAOS=1,
// make fleet-chaos).
func TestFleetChaos(t *testing.T) {
	if os.Getenv("MEETPOINT_CHAOS") == "" {
		t.Skip("the fleet's fault table: make fleet-chaos (MEETPOINT_CHAOS=1)")
	}
	for _, bin := range []string{"haproxy", "redis-cli"} { // here, not half-way through the table
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not found: apt-get install haproxy redis-tools", bin)
		}
	}
	redis.SetLogger(quiet{}) // go-redis logs every failed dial of a fault
	var rows []chaosRow
	addr, stopRedis := testutil.Redis(t, 0)

	cf := newChaosFleet(t, addr, "r1")
	a, b, c := cf.nodes[0], cf.nodes[1], cf.nodes[2]
	rows = append(rows, cf.run(t, "mesh cut to one node (Redis reachable)", func() {
		cf.proxies[2].frozen.Store(true)   // nothing reaches c over the mesh
		for _, p := range cf.proxies[:2] { // c's own mesh connections to a and b
			p.freezeFrom("127.0.0.3")
		}
	}, func(try int) bool {
		time.Sleep(200 * time.Millisecond)
		return !c.f.Available() || (relaytest.Metric(t, a.s, `meetpoint_mesh_peer_reachable{peer="chaos-c"}`) == 0 &&
			relaytest.Metric(t, b.s, `meetpoint_mesh_peer_reachable{peer="chaos-c"}`) == 0 && cf.pairs(a, b, fmt.Sprintf("cut-%d", try)))
	}))

	cf = newChaosFleet(t, addr, "r2")
	a, b, c = cf.nodes[0], cf.nodes[1], cf.nodes[2]
	rows = append(rows, cf.run(t, "node killed (no goodbye)", func() {
		fleet.Kill(c.f)
		c.s.Close()
	}, func(try int) bool { return cf.pairs(a, b, fmt.Sprintf("kill-%d", try)) }))

	cf = newChaosFleet(t, addr, "r2b")
	a, c = cf.nodes[0], cf.nodes[2]
	rows = append(rows, cf.run(t, "node killed and restarted (same id and address)", func() {
		fleet.Kill(c.f)
		c.s.Close()
		cf.nodes[2] = cf.start(t, 2) // takes over its dead predecessor's record at once
	}, func(try int) bool {
		return len(a.f.Nodes()) == 3 && cf.pairs(a, cf.nodes[2], fmt.Sprintf("restart-%d", try))
	}))

	cf = newChaosFleet(t, addr, "r2c")
	a, b = cf.nodes[0], cf.nodes[1]
	rows = append(rows, cf.run(t, "a node with another mesh key tries to join", func() {
		if _, err := joinNode(t, addr, "chaos-stranger", nil, func(c *fleet.Config) {
			c.Prefix, c.MeshKey = "meetpoint-r2c:", []byte("another key, 32 bytes long......")
		}); err == nil {
			t.Error("a node with another mesh key joined the fleet")
		}
	}, func(try int) bool {
		time.Sleep(100 * time.Millisecond)
		return relaytest.Metric(t, a.s, "meetpoint_fleet_mesh_key_mismatch_total") == 1 && len(a.f.Nodes()) == 3 &&
			cf.pairs(a, b, fmt.Sprintf("stranger-%d", try))
	}))

	cf = newChaosFleet(t, addr, "r3")
	a, b = cf.nodes[0], cf.nodes[1]
	rows = append(rows, cf.run(t, "Redis restarted empty", func() {
		stopRedis()
		port := addr[strings.LastIndexByte(addr, ':')+1:]
		var p int
		fmt.Sscan(port, &p)
		testutil.Redis(t, p)
	}, func(try int) bool {
		time.Sleep(200 * time.Millisecond)
		return relaytest.Metric(t, a.s, "meetpoint_fleet_store_losses_total") == 1 && cf.pairs(a, b, fmt.Sprintf("redis-%d", try))
	}))

	sentinels, _, kill := testutil.RedisSentinel(t)
	cf = newChaosFleet(t, "redis+sentinel://"+sentinels[0]+"?master_name=mymaster&addr="+sentinels[1]+"&addr="+sentinels[2], "r4")
	a, b = cf.nodes[0], cf.nodes[1]
	rows = append(rows, cf.run(t, "Sentinel failover (primary killed)", kill,
		func(try int) bool { return cf.pairs(a, b, fmt.Sprintf("failover-%d", try)) }))

	cluster, kills := testutil.RedisClusterWith(t, 3, 1)
	cf = newChaosFleet(t, "redis+cluster://"+cluster[0]+"?addr="+strings.Join(cluster[1:], "&addr="), "r5")
	a, b = cf.nodes[0], cf.nodes[1]
	var replica *redis.Client // of the killed master
	rows = append(rows, cf.run(t, "Redis Cluster: a master killed (its replica takes over)", func() {
		// The master of the node set's hash slot ({nodes}), which every
		// node reads and writes each heartbeat.
		ctx := context.Background()
		cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster})
		defer cc.Close()
		m, err := cc.MasterForKey(ctx, "{nodes}")
		if err != nil {
			t.Fatalf("the master of {nodes}: %v", err)
		}
		_, port, _ := net.SplitHostPort(m.Options().Addr)
		victim := -1
		for i, ad := range cluster {
			if ad == m.Options().Addr {
				victim = i
				continue
			}
			c := redis.NewClient(&redis.Options{Addr: ad})
			if info, err := c.Info(ctx, "replication").Result(); err == nil && strings.Contains(info, "master_port:"+port+"\r\n") {
				replica = c
				t.Cleanup(func() { c.Close() })
			} else {
				c.Close()
			}
		}
		if victim < 0 || replica == nil {
			t.Fatalf("the master of {nodes}, %s, or its replica is not one of %v", m.Options().Addr, cluster)
		}
		kills[victim]()
	}, func(try int) bool {
		// Recovered when the replica serves as master and a fresh pair
		// meets (a pair whose key is on a surviving master meets even
		// before the failover, so pairing alone would prove nothing).
		if role, err := replica.Do(context.Background(), "ROLE").Slice(); err != nil || len(role) == 0 || role[0] != "master" {
			time.Sleep(100 * time.Millisecond)
			return false
		}
		// A 1 s try: a pair placed while the slot is down waits out its
		// timeout before the next, so a shorter one measures more finely.
		return relaytest.Meets(url(a.s, false), url(b.s, false), fmt.Sprintf("cluster-%d", try), time.Second)
	}))

	cf = newChaosFleet(t, addr, "r6")
	c = cf.nodes[2]
	lb := startHAProxy(t, cf.nodes)
	rows = append(rows, cf.run(t, "node killed behind HAProxy (clients reconnect)", func() {
		fleet.Kill(c.f)
		c.s.Close()
	}, func(try int) bool {
		// Recovered when fresh pairs through the balancer meet again
		// three times in a row: round robin has then tried every server.
		for i := range 3 {
			if !pairVia(lb, fmt.Sprintf("lb-%d-%d", try, i)) {
				time.Sleep(200 * time.Millisecond)
				return false
			}
		}
		return true
	}))

	var sb strings.Builder
	w := tabwriter.NewWriter(&sb, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "fault\ttunnels\tended (both ends)\thow they ended\ttime to recover\tbytes lost")
	for _, r := range rows {
		var how []string
		for k, n := range r.reasons {
			how = append(how, fmt.Sprintf("%d× %s", n, k))
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%v\t%d\n", r.fault, r.tunnels, r.affected, strings.Join(how, "; "), r.recover.Round(10*time.Millisecond), r.lost)
		if r.lost != 0 {
			t.Errorf("%s: %d bytes lost", r.fault, r.lost)
		}
	}
	w.Flush()
	fmt.Print(sb.String())
}
