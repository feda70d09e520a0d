package testutil

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// Redis starts a throw-away redis-server on 127.0.0.1:port (0: a free
// port) for the test and returns its address and a stop function (also
// run at cleanup). Without redis-server the test skips, unless
// MEETPOINT_REQUIRE_REDIS is set (CI), when it fails.
func Redis(t testing.TB, port int) (addr string, stop func()) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("MEETPOINT_REQUIRE_REDIS") != "" {
			t.Fatal("no redis-server and MEETPOINT_REQUIRE_REDIS is set (apt-get install redis-server)")
		}
		t.Skip("no redis-server: apt-get install redis-server to run the Redis tests")
	}
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
		if addr, stop, ok := startRedis(t, bin, p); ok {
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
func startRedis(t testing.TB, bin string, port int) (addr string, stop func(), ok bool) {
	addr = "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
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
