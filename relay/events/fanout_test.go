package events_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestHelperSubscribers is not a test: with MEETPOINT_SUBSCRIBERS=N it
// opens N raw-TCP subscribers to the relays in MEETPOINT_RELAYS (round
// robin), says "ready", and then "got K" once every subscriber has
// received MEETPOINT_EVENTS events (or after 60 s).
func TestHelperSubscribers(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("MEETPOINT_SUBSCRIBERS"))
	if n == 0 {
		t.Skip("helper process only")
	}
	want, _ := strconv.Atoi(os.Getenv("MEETPOINT_EVENTS"))
	relays := strings.Split(os.Getenv("MEETPOINT_RELAYS"), ",")
	var got atomic.Int64
	var ready, done sync.WaitGroup
	conns := make([]net.Conn, n)
	for i := range n {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			var c net.Conn
			var err error
			for try := 0; try < 50; try++ {
				if c, err = net.Dial("tcp", relays[i%len(relays)]); err == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				fmt.Println("dial:", err)
				os.Exit(1)
			}
			conns[i] = c
			c.Write([]byte(`{"id":1,"method":"Events.Subscribe","params":{"token":"t","channels":["all"]}}` + "\n"))
			br := bufio.NewReader(c)
			_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
			if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "AuthenticationErrorNoError") {
				fmt.Println("subscribe:", line, err)
				os.Exit(1)
			}
			ready.Done()
			for range want {
				line, err := br.ReadString('\n')
				if err != nil || !strings.Contains(line, `"Events.Event"`) {
					return
				}
				got.Add(1)
			}
		}()
	}
	ready.Wait()
	fmt.Println("ready")
	done.Wait()
	fmt.Printf("got %d\n", got.Load())
	runtime.KeepAlive(conns)
	os.Exit(0)
}

// rss is this process's resident set in bytes.
func rss() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestEventsFanOut10k: 10,000 idle subscribers spread over two relays
// sharing a Redis (the clients in a subprocess: 20,000 sockets do not fit
// one process's descriptor limit) each get every event, published over
// HTTP on one node and straight into Redis; the delivery counters add up.
// MEETPOINT_EVENTS_N changes the number (the default suite uses 10,000
// without -short, 1,000 with it).
func TestEventsFanOut10k(t *testing.T) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("MEETPOINT_SUBSCRIBERS")); err == nil && v > 0 && v <= 18000 {
		n = v // for a slope over two sizes (docs/BENCHMARKS.md)
	}
	if testing.Short() {
		n = 1000
	}
	if v, _ := strconv.Atoi(os.Getenv("MEETPOINT_EVENTS_N")); v > 0 {
		n = v
	}
	raddr := relaytest.Redis(t)
	a, _ := node(t, raddr)
	b, _ := node(t, raddr)
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before, heapBefore := rss(), ms.HeapInuse
	const events = 3
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSubscribers$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("MEETPOINT_SUBSCRIBERS=%d", n), fmt.Sprintf("MEETPOINT_EVENTS=%d", events),
		"MEETPOINT_RELAYS="+relaytest.Addr(a)+","+relaytest.Addr(b))
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(out)
	readLine := func() string {
		ch := make(chan string, 1)
		go func() {
			if lines.Scan() {
				ch <- lines.Text()
			} else {
				ch <- "EOF"
			}
		}()
		select {
		case l := <-ch:
			return l
		case <-time.After(2 * time.Minute):
			t.Fatal("the subscriber process is silent")
			return ""
		}
	}
	if l := readLine(); l != "ready" {
		t.Fatalf("subscribers: %q", l)
	}
	subs := func(s *relay.Server) int64 { return int64(relaytest.Metric(t, s, "meetpoint_events_subscribers")) }
	if sa, sb := subs(a), subs(b); sa+sb != int64(n) || sa == 0 || sb == 0 {
		t.Fatalf("subscribers: %d + %d, want %d over both", sa, sb, n)
	}
	runtime.GC() // twice: buffer pools (sync.Pool) keep their victims for one GC
	debug.FreeOSMemory()
	if path := os.Getenv("MEETPOINT_HEAP_PROFILE"); path != "" {
		f, _ := os.Create(path)
		_ = pprof.WriteHeapProfile(f)
		f.Close()
	}
	runtime.ReadMemStats(&ms)
	t.Logf("per subscriber: RSS +%.1f KiB, Go heap in use +%.1f KiB (both relays in this process; %d subscribers, %d goroutines; RSS +%d KiB, heap +%d KiB in all)",
		float64(rss()-before)/1024/float64(n), float64(int64(ms.HeapInuse)-int64(heapBefore))/1024/float64(n), n, runtime.NumGoroutine(),
		(rss()-before)/1024, (int64(ms.HeapInuse)-int64(heapBefore))/1024)
	for i := range events - 1 {
		req, _ := http.NewRequest("POST", "http://"+relaytest.Addr(a)+"/v1/events/all", strings.NewReader(fmt.Sprintf(`{"seq":%d}`, i)))
		req.Header.Set("Authorization", "Bearer admin-secret")
		resp, err := httpClient.Do(req)
		if err != nil || resp.StatusCode != 202 {
			t.Fatalf("publish: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	defer rdb.Close()
	if err := rdb.Publish(context.Background(), "meetpoint:events:all", `{"seq":"from redis"}`).Err(); err != nil {
		t.Fatal(err)
	}
	if l := readLine(); l != fmt.Sprintf("got %d", n*events) {
		t.Fatalf("deliveries: %q, want got %d", l, n*events)
	}
	delivered := func(s *relay.Server) float64 { return relaytest.Metric(t, s, "meetpoint_events_delivered_total") }
	// Counted once a fan-out loop ends, which may be just after the last
	// subscriber read its event.
	relaytest.WaitFor(t, func() bool { return delivered(a)+delivered(b) == float64(n*events) }, "delivered_total to add up")
}
