package testutil

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis starts a throw-away redis-server on 127.0.0.1:port (0: a free
// port) for the test and returns its address and a stop function (also
// run at cleanup). Without redis-server the test skips, unless
// MEETPOINT_REQUIRE_REDIS is set (CI), when it fails.
func Redis(t testing.TB, port int) (addr string, stop func()) {
	t.Helper()
	return redisWith(t, port)
}

// redisBin is redis-server's path; the test skips without it (or fails,
// with MEETPOINT_REQUIRE_REDIS).
func redisBin(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("MEETPOINT_REQUIRE_REDIS") != "" {
			t.Fatal("no redis-server and MEETPOINT_REQUIRE_REDIS is set (apt-get install redis-server)")
		}
		t.Skip("no redis-server: apt-get install redis-server to run the Redis tests")
	}
	return bin
}

// redisWith is Redis with extra redis-server arguments.
func redisWith(t testing.TB, port int, extra ...string) (addr string, stop func()) {
	t.Helper()
	bin := redisBin(t)
	for try := 0; ; try++ {
		p := port
		if p == 0 { // a free port; another process may take it first: then again
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			p = l.Addr().(*net.TCPAddr).Port
			l.Close()
		}
		if addr, stop, ok := startRedis(t, bin, p, extra...); ok {
			return addr, stop
		}
		if port != 0 || try == 5 {
			t.Fatalf("redis-server did not start on port %d", p)
		}
	}
}

// startRedis runs redis-server on port and waits until it answers; ok is
// false if it exited instead (the port was taken) or never answered. A
// connection only counts while our process still runs: another server
// may hold the port.
func startRedis(t testing.TB, bin string, port int, extra ...string) (addr string, stop func(), ok bool) {
	return runRedis(t, port, exec.Command(bin, append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir()}, extra...)...))
}

// runRedis starts cmd, a redis-server that will listen on port, and waits
// as startRedis does.
func runRedis(t testing.TB, port int, cmd *exec.Cmd) (addr string, stop func(), ok bool) {
	addr = "127.0.0.1:" + strconv.Itoa(port)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop = func() { _ = cmd.Process.Kill(); <-exited }
	t.Cleanup(stop)
	for end := time.Now().Add(Patience); time.Now().Before(end); {
		select {
		case <-exited:
			return "", nil, false
		default:
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			select {
			case <-exited:
				return "", nil, false
			case <-time.After(20 * time.Millisecond): // still ours
				return addr, stop, true
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	stop()
	return "", nil, false
}

// RedisCluster starts a Redis Cluster of n masters (no replicas) on
// loopback for the test (redis-server in cluster mode, joined by
// redis-cli --cluster create) and returns the masters' addresses once the
// cluster answers "cluster_state:ok".
func RedisCluster(t testing.TB, n int) []string {
	t.Helper()
	addrs, _ := RedisClusterWith(t, n, 0)
	return addrs
}

// RedisClusterWith starts a Redis Cluster of n masters, each with
// replicas replicas, and returns every server's address (masters and
// replicas, in no promised order; ask a server its ROLE) and a function
// per server that kills it.
func RedisClusterWith(t testing.TB, n, replicas int) (addrs []string, kill []func()) {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		redisBin(t) // skips (or fails) the same way without Redis
		t.Skip("no redis-cli: apt-get install redis-tools to run the Redis Cluster tests")
	}
	for len(addrs) < n*(1+replicas) {
		p := clusterPort(t)
		// The cluster bus is the port + 10000: taken, the server exits
		// and Redis' loop picks no other port, so try another.
		if a, stop, ok := startRedis(t, redisBin(t), p, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000", "--repl-diskless-sync-delay", "0"); ok {
			addrs, kill = append(addrs, a), append(kill, stop)
		}
	}
	out, err := exec.Command(cli, append(append([]string{"--cluster", "create"}, addrs...),
		"--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	// Every server must see the whole cluster, and every replica must have
	// synchronised with its master: a replica that never has refuses to
	// fail over ("Disconnected from master for longer than allowed"), so a
	// master killed before would take its slots down for good.
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		for end := time.Now().Add(Patience); ; time.Sleep(50 * time.Millisecond) {
			info, err := exec.Command(cli, "-h", host, "-p", port, "cluster", "info").CombinedOutput()
			repl, rerr := exec.Command(cli, "-h", host, "-p", port, "info", "replication").CombinedOutput()
			synced := rerr == nil && (strings.Contains(string(repl), "role:master") || strings.Contains(string(repl), "master_link_status:up"))
			if err == nil && strings.Contains(string(info), "cluster_state:ok") && synced {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("the Redis Cluster did not come up on %s: %s %v\n%s %v", a, info, err, repl, rerr)
			}
		}
	}
	return addrs, kill
}

// clusterPort is a free loopback port whose cluster bus port (+10000) is
// free too.
func clusterPort(t testing.TB) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if p+10000 > 65535 {
			continue
		}
		if b, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000)); err == nil {
			b.Close()
			return p
		}
	}
}

// RedisSentinel starts a Redis primary, one replica of it and three
// Sentinels watching it under the name "mymaster" (quorum 2, the primary
// is down after 1 s) for the test. It returns once every Sentinel knows
// the replica, in sync, and the two other Sentinels, so a failover can
// follow at once: the Sentinels' addresses, the primary's, and a function
// that kills the primary (a failover follows). If the test fails, the
// Sentinels' logs are printed.
//
// Without that wait a kill soon after start could leave no failover at
// all: a Sentinel learns of replicas from the primary's INFO, which it
// asks every 10 s, and a replica connects to its primary up to a second
// after it starts; a Sentinel that knows no replica never promotes one.
func RedisSentinel(t testing.TB) (sentinels []string, primary string, kill func()) {
	t.Helper()
	primary, kill = Redis(t, 0)
	_, mport, _ := net.SplitHostPort(primary)
	replica, _ := redisWith(t, 0, "--replicaof", "127.0.0.1", mport)
	bin := redisBin(t)
	var logs []string
	for len(sentinels) < 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		dir := t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		// failover-timeout bounds how long a Sentinel waits before it
		// tries again after a split vote (twice it): 5 s keeps a retry
		// inside a test's patience.
		text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\nsentinel monitor mymaster 127.0.0.1 %s 2\n"+
			"sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\nsentinel parallel-syncs mymaster 1\n",
			p, dir, filepath.Join(dir, "sentinel.log"), mport)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if a, _, ok := runRedis(t, p, exec.Command(bin, conf, "--sentinel")); ok {
			sentinels = append(sentinels, a)
			logs = append(logs, filepath.Join(dir, "sentinel.log"))
		}
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for i, f := range logs {
			b, _ := os.ReadFile(f)
			t.Logf("sentinel %s log:\n%s", sentinels[i], b)
		}
	})
	WaitFor(t, func() error { return sentinelsReady(sentinels, replica) }, "the Sentinels know the replica and each other")
	return sentinels, primary, kill
}

// sentinelsReady says why a failover could not follow yet: the replica is
// not in sync, or a Sentinel does not know it or the other Sentinels.
func sentinelsReady(sentinels []string, replica string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r := redis.NewClient(&redis.Options{Addr: replica})
	defer r.Close()
	info, err := r.Info(ctx, "replication").Result()
	if err != nil || !strings.Contains(info, "master_link_status:up") {
		return fmt.Errorf("replica %s not in sync: %v %q", replica, err, info)
	}
	for _, a := range sentinels {
		s := redis.NewSentinelClient(&redis.Options{Addr: a})
		defer s.Close()
		reps, err := s.Replicas(ctx, "mymaster").Result()
		if err != nil || len(reps) != 1 || reps[0]["flags"] != "slave" || reps[0]["master-link-status"] != "ok" {
			return fmt.Errorf("sentinel %s: replicas %v %v", a, reps, err)
		}
		peers, err := s.Sentinels(ctx, "mymaster").Result()
		if err != nil || len(peers) != len(sentinels)-1 {
			return fmt.Errorf("sentinel %s: knows %d other sentinels, want %d (%v)", a, len(peers), len(sentinels)-1, err)
		}
	}
	return nil
}
