package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// nsFleet is three `meetpoint serve --fleet` processes, each in its own
// network namespace: node i at 198.18.i.1 (RFC 2544's benchmarking range),
// behind a "hub" namespace that routes between them as a switch would, and
// that this test's own namespace reaches through a veth (198.18.254.1, where
// Redis and the test's clients are). A fault is a rule in the hub that drops
// packets silently (a blackhole: no reset, no ICMP), as a failed link does.
type nsFleet struct {
	hub   string
	nodes []nsNode
}

// nsNode is one node of an nsFleet.
type nsNode struct {
	id, ns, ip string
}

func (n nsNode) url() string   { return "ws://" + n.ip + ":8443/" }
func (n nsNode) admin() string { return "http://" + n.ip + ":9090" }

// startNSFleet builds the namespaces, starts Redis and the three nodes,
// and waits until every node sees the whole fleet. It skips where the
// machine cannot make namespaces (not root, no ip(8), a container without
// the capability) or has no redis-server.
func startNSFleet(t *testing.T) *nsFleet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root (CI runs as root)")
	}
	for _, bin := range []string{"ip", "redis-server"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not found: apt-get install iproute2 redis-server", bin)
		}
	}
	id := strconv.Itoa(os.Getpid() % 100000)
	f := &nsFleet{hub: "mp-hub-" + id}
	sh := func(args ...string) { t.Helper(); ipSetup(t, args...) }
	addNS := func(name string) {
		sh("netns", "add", name)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		sh("-n", name, "link", "set", "lo", "up")
	}
	addNS(f.hub)
	if out, err := exec.Command("ip", "netns", "exec", f.hub, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Skipf("cannot make the hub namespace route: %v: %s", err, out)
	}
	host, hubSide := "mpH"+id, "mph"+id
	sh("link", "add", host, "type", "veth", "peer", "name", hubSide)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", host).Run() }) // its route goes with it
	sh("link", "set", hubSide, "netns", f.hub)
	sh("addr", "add", "198.18.254.1/24", "dev", host)
	sh("link", "set", host, "up")
	sh("-n", f.hub, "addr", "add", "198.18.254.254/24", "dev", hubSide)
	sh("-n", f.hub, "link", "set", hubSide, "up")
	sh("route", "add", "198.18.0.0/16", "via", "198.18.254.254")
	for i := 1; i <= 3; i++ {
		n := nsNode{id: "ns-" + strconv.Itoa(i), ns: fmt.Sprintf("mp-n%d-%s", i, id), ip: fmt.Sprintf("198.18.%d.1", i)}
		addNS(n.ns)
		a, b := fmt.Sprintf("mpa%d%s", i, id), fmt.Sprintf("mpb%d%s", i, id)
		sh("link", "add", a, "type", "veth", "peer", "name", b)
		sh("link", "set", a, "netns", f.hub)
		sh("link", "set", b, "netns", n.ns)
		sh("-n", f.hub, "addr", "add", fmt.Sprintf("198.18.%d.254/24", i), "dev", a)
		sh("-n", f.hub, "link", "set", a, "up")
		sh("-n", n.ns, "addr", "add", n.ip+"/24", "dev", b)
		sh("-n", n.ns, "link", "set", b, "up")
		sh("-n", n.ns, "route", "add", "default", "via", fmt.Sprintf("198.18.%d.254", i))
		f.nodes = append(f.nodes, n)
	}

	// Redis, on this namespace's end of the veth.
	l, err := net.Listen("tcp", "198.18.254.1:0")
	if err != nil {
		t.Fatal(err)
	}
	redisAddr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(redisAddr)
	rds := exec.Command("redis-server", "--port", port, "--bind", "198.18.254.1", "--save", "", "--appendonly", "no",
		"--protected-mode", "no", "--dir", t.TempDir())
	if err := rds.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rds.Process.Kill(); _ = rds.Wait() })

	key := meshKey(t)
	for _, n := range f.nodes {
		cmd := netns{name: n.ns}.meetpoint("serve", "--listen", n.ip+":8443", "--admin-listen", n.ip+":9090",
			"--auth", "dummy", "--fleet", "redis://"+redisAddr+"/0", "--node-id", n.id, "--mesh-key-file", key,
			"--mesh-ping", "500ms", "--mesh-lost-after", "5s", "--limit-exempt", "198.18.254.1/32", "--log-level", "warn")
		cmd.Stderr = testWriter{t, n.id}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	}
	for _, n := range f.nodes {
		relaytest.WaitFor(t, func() bool { return f.metric(t, n, "meetpoint_fleet_nodes") == 3 }, n.id+" sees the three nodes")
	}
	return f
}

// metric reads one sample from node n's admin listener (-1: none, or the
// node does not answer).
func (f *nsFleet) metric(t *testing.T, n nsNode, name string) float64 {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(n.admin() + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return relaytest.MetricIn(t, string(b), name)
}

// cut drops, in the hub, every packet between node i and node j (both
// ways), silently; the returned function mends it.
func (f *nsFleet) cut(t *testing.T, i, j int) (mend func()) {
	t.Helper()
	var rules [][]string
	for _, d := range [][2]int{{i, j}, {j, i}} {
		rules = append(rules, []string{"from", f.nodes[d[0]].ip + "/32", "to", f.nodes[d[1]].ip + "/32", "blackhole"})
	}
	for _, r := range rules {
		if out, err := exec.Command("ip", append([]string{"-n", f.hub, "rule", "add"}, r...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip rule add %v: %v: %s", r, err, out)
		}
	}
	return func() {
		for _, r := range rules {
			_ = exec.Command("ip", append([]string{"-n", f.hub, "rule", "del"}, r...)...).Run()
		}
	}
}

// TestFleetChaosNetns: the fleet's mesh cut for real — three node
// processes in their own network namespaces, node 3's packets to and from
// nodes 1 and 2 dropped by the router between them (nothing closed,
// nothing answered; Redis and the clients still reach every node), with
// numbered bytes streaming through a tunnel for every pair of nodes. The
// tunnels crossing to node 3 end at both ends with far_node_lost within
// the mesh-lost time (5 s here); the others deliver every byte; nodes 1
// and 2 then pair without node 3. MEETPOINT_CHAOS=1 (make fleet-chaos).
func TestFleetChaosNetns(t *testing.T) {
	if os.Getenv("MEETPOINT_CHAOS") == "" {
		t.Skip("the fleet's fault table: make fleet-chaos (MEETPOINT_CHAOS=1)")
	}
	f := startNSFleet(t)
	var streams []*relaytest.Stream
	crosses := map[*relaytest.Stream]bool{} // a tunnel with node 3 at one end only
	for i, a := range f.nodes {
		for j, b := range f.nodes[i:] {
			j += i
			tok := fmt.Sprintf("netns-%d%d", i, j)
			ta, tb := relaytest.DialPair(t, client.Options{URL: a.url(), Token: tok, Name: "a", Timeout: time.Minute},
				client.Options{URL: b.url(), Token: tok, Name: "b"})
			s := relaytest.StartStream(a.id+"↔"+b.id, ta, tb)
			streams = append(streams, s)
			crosses[s] = (i == 2) != (j == 2)
		}
	}
	time.Sleep(300 * time.Millisecond) // bytes flowing
	start := time.Now()
	mend1, mend2 := f.cut(t, 0, 2), f.cut(t, 1, 2)
	defer mend1()
	defer mend2()
	n1, n2, n3 := f.nodes[0], f.nodes[1], f.nodes[2]
	relaytest.WaitFor(t, func() bool {
		return f.metric(t, n1, `meetpoint_mesh_peer_reachable{peer="ns-3"}`) == 0 &&
			f.metric(t, n2, `meetpoint_mesh_peer_reachable{peer="ns-3"}`) == 0
	}, "nodes 1 and 2 call node 3 unreachable")
	for try := 0; !relaytest.Meets(n1.url(), n2.url(), fmt.Sprintf("netns-after-%d", try), 5*time.Second); try++ {
		if time.Since(start) > time.Minute {
			t.Fatal("nodes 1 and 2 did not pair within a minute of the cut")
		}
	}
	recovered := time.Since(start)
	time.Sleep(time.Second) // traffic goes on after the recovery
	var ended int
	var lostAll int64
	how := map[string]int{}
	for _, s := range streams {
		lost, endedBoth, reasons := s.Settle(t)
		if s.Corrupt() {
			t.Errorf("tunnel %s delivered a byte out of sequence", s.Name)
		}
		lostAll += lost // Settle reports a tunnel that lost bytes as an error
		switch {
		case crosses[s] && !endedBoth:
			t.Errorf("tunnel %s crosses the cut but did not end", s.Name)
		case crosses[s] && !strings.Contains(reasons, `"relay node lost"`):
			t.Errorf("tunnel %s ended as %s, want WebSocket 1011 \"relay node lost\" (far_node_lost)", s.Name, reasons)
		case !crosses[s] && endedBoth:
			t.Errorf("tunnel %s does not cross the cut but ended: %s", s.Name, reasons)
		}
		if endedBoth {
			ended++
			how[reasons]++
		}
		s.Close()
	}
	for _, n := range []nsNode{n1, n2, n3} { // each ended its own ends of the crossing tunnels
		// A WebSocket end that got its close frame is counted when its
		// socket closes: after the client's close (just above), or its
		// lingering second.
		relaytest.WaitFor(t, func() error {
			if v := f.metric(t, n, `meetpoint_closes_total{reason="far_node_lost"}`); v < 1 {
				return fmt.Errorf("%s counted %v far_node_lost closes", n.id, v)
			}
			return nil
		}, n.id+" to count its far_node_lost closes")
	}
	var hows []string
	for k, v := range how {
		hows = append(hows, fmt.Sprintf("%d× %s", v, k))
	}
	fmt.Printf("fault\ttunnels\tended (both ends)\thow they ended\ttime to recover\tbytes lost\n"+
		"mesh cut to one node, network namespaces (Redis and clients reach it)\t%d\t%d\t%s\t%v\t%d\n",
		len(streams), ended, strings.Join(hows, "; "), recovered.Round(10*time.Millisecond), lostAll)
}
