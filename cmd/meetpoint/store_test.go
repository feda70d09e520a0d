package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// fastProbes makes a dead dependency's probes come every 100 ms for the
// test (read when serve registers it).
func fastProbes(t *testing.T) {
	was := relay.ProbeEvery
	relay.ProbeEvery = 100 * time.Millisecond
	t.Cleanup(func() { relay.ProbeEvery = was })
}

// TestServeDeadStore: a relay whose authenticator's store (Redis, a
// webhook) or events Redis is down at start says so in one warning, shows
// it on /readyz and in meetpoint_dependency_up, logs nothing more however
// many clients it refuses (go-redis's own lines included: the JSON log
// stays JSON), and one line when the store is back, which the probe finds
// with no client asking.
func TestServeDeadStore(t *testing.T) {
	fastProbes(t)
	for _, tc := range []struct {
		name  string
		args  func(port int) []string
		start func(t *testing.T, port int)
		auth  bool // clients authenticate against it
	}{
		{"auth_redis", func(p int) []string { return []string{"--auth", fmt.Sprintf("redis://127.0.0.1:%d/0", p)} },
			func(t *testing.T, p int) { relaytest.RedisOn(t, p) }, true},
		{"auth_webhook", func(p int) []string { return []string{"--auth", fmt.Sprintf("webhook:http://127.0.0.1:%d/check", p)} },
			func(t *testing.T, p int) {
				l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
				if err != nil {
					t.Fatal(err)
				}
				srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					_, _ = w.Write([]byte(`{"allow":false}`))
				})}
				go srv.Serve(l)
				t.Cleanup(func() { srv.Close() })
			}, true},
		{"events_redis", func(p int) []string { return []string{"--events-redis", fmt.Sprintf("redis://127.0.0.1:%d/0", p)} },
			func(t *testing.T, p int) { relaytest.RedisOn(t, p) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := relaytest.FreePort(t)
			ts := startServe(t, append(tc.args(port), "--log-format", "json", "--log-level", "debug", "--admin-listen", "127.0.0.1:0")...)
			if tc.auth {
				for range 3 {
					_, err := client.Dial(context.Background(), client.Options{URL: "tcp://" + ts.addr(), Token: "t", Timeout: relaytest.Patience})
					var ae *client.AuthError
					if !errors.As(err, &ae) || ae.Result != "AuthenticationErrorProxyError" {
						t.Fatalf("a client while the store is down: %v, want ProxyError", err)
					}
				}
			}
			if code, body := adminGet(t, ts, "/readyz"); code != 200 || !strings.Contains(body, tc.name+": unreachable since ") {
				t.Errorf("/readyz: %d %q, want the relay ready and %s unreachable", code, body, tc.name)
			}
			if _, body := adminGet(t, ts, "/metrics"); !strings.Contains(body, `meetpoint_dependency_up{name="`+tc.name+`"} 0`) {
				t.Errorf("/metrics lacks %s down", tc.name)
			}
			tc.start(t, port)
			relaytest.WaitFor(t, func() error {
				if _, body := adminGet(t, ts, "/readyz"); !strings.Contains(body, tc.name+": ok") {
					return errors.New(body)
				}
				return nil
			}, tc.name+" back on /readyz")
			logs := ts.logs.String()
			for l := range strings.Lines(logs) {
				if !json.Valid([]byte(l)) {
					t.Errorf("a log line that is not JSON: %q", l)
				}
			}
			// go-redis's own lines (a failed dial each) come through the
			// relay's log, at debug, not on stderr in go-redis's format.
			if strings.HasSuffix(tc.name, "_redis") && !strings.Contains(logs, `"level":"DEBUG","msg":"redis: `) {
				t.Errorf("no go-redis line in the relay's log:\n%s", logs)
			}
			if n := strings.Count(logs, "unreachable: requests that need it fail"); n != 1 {
				t.Errorf("%d outage lines, want 1:\n%s", n, logs)
			}
			if n := strings.Count(logs, "reachable again"); n != 1 {
				t.Errorf("%d recovery lines, want 1:\n%s", n, logs)
			}
		})
	}
}

// TestServeRequireStore: with --require-store a relay whose store does
// not answer does not start: exit 1 (a supervisor retries) and one line.
func TestServeRequireStore(t *testing.T) {
	var stderr lockedBuffer
	o, code := parseServeOptions([]string{"--listen", "127.0.0.1:0", "--log-level", "error", "--require-store",
		"--auth", fmt.Sprintf("redis://127.0.0.1:%d/0", relaytest.FreePort(t))}, nil, &stderr, &stderr, &stderr)
	if code != -1 {
		t.Fatalf("parse %d %s", code, stderr.String())
	}
	if code := serveUntilSignal(o, make(chan os.Signal), &stderr, nil); code != 1 || strings.Count(stderr.String(), "\n") != 1 ||
		!strings.Contains(stderr.String(), "unreachable") || !strings.Contains(stderr.String(), "--require-store") {
		t.Errorf("exit %d, stderr %q; want 1 and one line", code, stderr.String())
	}
}

// TestFleetNodeWaitsForStore: a fleet node that starts before its Redis
// waits for it, logging each try, and joins once it answers; stopped
// while it waits, it exits 0.
func TestFleetNodeWaitsForStore(t *testing.T) {
	defer func(a, b time.Duration) { storeRetry, storeRetryMax = a, b }(storeRetry, storeRetryMax)
	storeRetry, storeRetryMax = 20*time.Millisecond, 100*time.Millisecond
	key := meshKey(t)
	port := relaytest.FreePort(t)
	args := []string{"--fleet", fmt.Sprintf("redis://127.0.0.1:%d/0", port), "--mesh-key-file", key, "--node-id", "early"}

	stopped := launchServe(t, nil, args...)
	relaytest.WaitFor(t, func() bool { return strings.Contains(stopped.logs.String(), "fleet store unreachable") }, "a try logged")
	stopped.sigs <- syscall.SIGTERM
	if code := stopped.wait(t, relaytest.Patience); code != 0 {
		t.Errorf("stopped while waiting: exit %d, want 0", code)
	}

	ts := launchServe(t, nil, args...)
	relaytest.WaitFor(t, func() bool { return strings.Count(ts.logs.String(), "fleet store unreachable") >= 2 }, "two tries logged")
	relaytest.RedisOn(t, port)
	ts.waitStarted(t)
	if logs := ts.logs.String(); !strings.Contains(logs, "fleet store reachable: joining the fleet") || !strings.Contains(logs, "fleet joined") {
		t.Errorf("no line saying the node joined:\n%s", logs)
	}
}

// redisGoroutines counts the goroutines of go-redis clients: each client
// made and never closed leaves its own behind.
func redisGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/redis/go-redis/") {
			count++
		}
	}
	return count
}

// TestSIGHUPLeavesNoRedisClients: a reload re-parses the command line and
// config files, which makes a Redis client for --fleet's check and for
// --auth redis://…: neither is the one the relay runs with, so each is
// closed again (also when the re-parse fails), or every `systemctl reload` leaves goroutines (and
// go-redis's timers) behind for the life of the process.
func TestSIGHUPLeavesNoRedisClients(t *testing.T) {
	const reloads = 20
	keyFile := filepath.Join(t.TempDir(), "mesh.key")
	os.WriteFile(keyFile, []byte(strings.Repeat("ab", 32)+"\n"), 0o600)
	reparse := reparser([]string{"--listen", "127.0.0.1:0", "--fleet", "redis://127.0.0.1:1/0", "--mesh-key-file", keyFile}, nil)
	before := redisGoroutines()
	for range reloads {
		if _, err := reparse(); err != nil {
			t.Fatal(err)
		}
	}
	if n := redisGoroutines() - before; n >= reloads {
		t.Errorf("%d re-parses of --fleet left %d go-redis goroutines behind", reloads, n)
	}
	// A re-parse that fails after making the authenticator (a reload that
	// fails) closes it too.
	failing := reparser([]string{"--listen", "127.0.0.1:0", "--auth", "redis://127.0.0.1:1/0", "--admin-key-file", keyFile + ".missing"}, nil)
	before = redisGoroutines()
	for range reloads {
		if _, err := failing(); err == nil {
			t.Fatal("a missing --admin-key-file was accepted")
		}
	}
	if n := redisGoroutines() - before; n >= reloads {
		t.Errorf("%d failed re-parses with --auth redis://… left %d go-redis goroutines behind", reloads, n)
	}

	ts := startServe(t, "--auth", "redis://127.0.0.1:1/0", "--log-level", "info")
	before = redisGoroutines()
	for i := 1; i <= reloads; i++ {
		ts.sigs <- syscall.SIGHUP
		relaytest.WaitFor(t, func() bool { return strings.Count(ts.logs.String(), "reloaded:") >= i }, "the reload")
	}
	if n := redisGoroutines() - before; n >= reloads {
		t.Errorf("%d reloads with --auth redis://… left %d go-redis goroutines behind", reloads, n)
	}
}
