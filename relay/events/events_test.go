package events_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/events"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// onlyChannels lets every identity join channels starting with "dev-" or
// "all", and nothing else (the events action only).
type onlyChannels struct{}

func (onlyChannels) Allow(_ *relay.Identity, action, target string) (bool, string) {
	if action != relay.ActionEvents {
		return true, "others"
	}
	return strings.HasPrefix(target, "dev-") || target == "all", "channels"
}

// node is one relay of the fleet, with events over Redis.
func node(t *testing.T, redisAddr string) (*relay.Server, *events.Service) {
	t.Helper()
	s := relaytest.New(t, func(c *relay.Config) { c.Access = onlyChannels{} })
	url := redisAddr // a whole URL (redis+cluster://…), or HOST:PORT
	if !strings.Contains(url, "://") {
		url = "redis://" + redisAddr + "/0"
	}
	ev, err := events.New(s, events.Config{Redis: url, AdminKey: "admin-secret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ev.Close() })
	relaytest.Start(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), relaytest.Patience)
	defer cancel()
	if err := ev.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return s, ev
}

// sub is a subscriber over WebSocket or raw TCP.
type sub struct {
	c  net.Conn
	br *bufio.Reader
	ws bool
}

func subscribe(t testing.TB, addr string, overWS bool, channels ...string) (*sub, map[string]any) {
	t.Helper()
	return subscribeAs(t, addr, overWS, "t", channels...)
}

// subscribeAs is subscribe with token.
func subscribeAs(t testing.TB, addr string, overWS bool, token string, channels ...string) (*sub, map[string]any) {
	t.Helper()
	var s sub
	var err error
	if overWS {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.c, s.br, _, err = ws.Dial(ctx, "ws://"+addr+"/")
		s.ws = true
	} else {
		s.c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if s.br == nil {
		s.br = bufio.NewReader(s.c)
	}
	req, _ := json.Marshal(map[string]any{"id": 1, "method": "Events.Subscribe", "params": map[string]any{"token": token, "channels": channels}})
	if overWS {
		err = wsutil.WriteClientText(s.c, req)
	} else {
		_, err = s.c.Write(append(req, '\n'))
	}
	if err != nil {
		t.Fatal(err)
	}
	return &s, s.next(t)
}

func (s *sub) next(t testing.TB) map[string]any {
	t.Helper()
	_ = s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var line []byte
	var err error
	if s.ws {
		line, err = wsutil.ReadServerText(struct {
			io.Reader
			io.Writer
		}{s.br, s.c})
	} else {
		line, err = s.br.ReadBytes('\n')
	}
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("%v: %q", err, line)
	}
	return m
}

func eventOf(m map[string]any) (channel string, data any) {
	p, _ := m["params"].(map[string]any)
	if m["notification"] != "Events.Event" {
		return "", nil
	}
	c, _ := p["channel"].(string)
	return c, p["data"]
}

// TestEventsAcrossNodes: subscribers on two relays sharing a Redis get
// every event of their channels once, in order, published by HTTP on
// either node or straight into Redis; a channel the rules refuse is
// refused; a subscriber that never reads is cut off, the others go on.
func TestEventsAcrossNodes(t *testing.T) {
	raddr := relaytest.Redis(t)
	a, _ := node(t, raddr)
	b, _ := node(t, raddr)
	var subs []*sub
	for i := range 40 {
		addr := relaytest.Addr(a)
		if i%2 == 1 {
			addr = relaytest.Addr(b)
		}
		s, reply := subscribe(t, addr, i%4 < 2, "dev-7", "all")
		if p, _ := reply["params"].(map[string]any); p["authenticationError"] != "AuthenticationErrorNoError" {
			t.Fatalf("subscribe: %v", reply)
		}
		subs = append(subs, s)
	}
	other, _ := subscribe(t, relaytest.Addr(a), true, "dev-8")
	if _, r := subscribe(t, relaytest.Addr(b), false, "secret"); r["params"].(map[string]any)["authenticationError"] != "AuthenticationErrorAuthenticationFailed" {
		t.Fatalf("a refused channel: %v", r)
	}
	post := func(s *relay.Server, channel, key, body string) int {
		req, _ := http.NewRequest("POST", "http://"+relaytest.Addr(s)+"/v1/events/"+channel, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(a, "dev-7", "wrong", `{}`); code != 401 {
		t.Fatalf("wrong admin key: %d", code)
	}
	if code := post(a, "dev-7", "admin-secret", `not json`); code != 400 {
		t.Fatalf("not JSON: %d", code)
	}
	// A control character in a name: refused, not taken in Redis for a
	// node's readiness probe (NUL-prefixed) and never delivered.
	for _, ch := range []string{"%00ready:x", "dev%0A7", "dev%7F"} {
		if code := post(a, ch, "admin-secret", `{}`); code != 400 {
			t.Fatalf("channel %s: %d, want 400", ch, code)
		}
	}
	for i := range 5 {
		if code := post([]*relay.Server{a, b}[i%2], "dev-7", "admin-secret", fmt.Sprintf(`{"n":%d}`, i)); code != 202 {
			t.Fatalf("publish: %d", code)
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	defer rdb.Close()
	if err := rdb.Publish(context.Background(), "meetpoint:events:all", `{"connect":{"token":"T","nonce":"N"}}`).Err(); err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		for n := range 5 {
			ch, data := eventOf(s.next(t))
			if d, _ := data.(map[string]any); ch != "dev-7" || d["n"] != float64(n) {
				t.Fatalf("subscriber %d event %d: %s %v", i, n, ch, data)
			}
		}
		if ch, data := eventOf(s.next(t)); ch != "all" || data.(map[string]any)["connect"] == nil {
			t.Fatalf("subscriber %d: the Redis event: %s %v", i, ch, data)
		}
	}
	_ = other.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := other.br.ReadByte(); err == nil {
		t.Fatal("a subscriber of dev-8 got dev-7's or all's events")
	}
	// A subscriber that never reads: cut off once its queue is full; the
	// rest still get every event.
	slow, _ := subscribe(t, relaytest.Addr(a), false, "dev-9")
	_ = slow.c.(*net.TCPConn).SetReadBuffer(4 << 10)
	fast, _ := subscribe(t, relaytest.Addr(b), false, "dev-9")
	big := `{"pad":"` + strings.Repeat("x", 32<<10) + `"}` // 600 of them: more than the kernel's socket buffers hold
	var got atomic.Int32
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 600 {
			fast.next(t)
			got.Add(1)
		}
	}()
	for range 600 {
		post(a, "dev-9", "admin-secret", big)
	}
	wg.Wait()
	relaytest.WaitFor(t, func() bool { return a.Stats().Closes["slow_reader"] >= 1 }, "the slow subscriber disconnected (slow_reader)")
	if got.Load() != 600 {
		t.Fatalf("the reading subscriber got %d of 600", got.Load())
	}
	runtime.KeepAlive(subs) // an unreferenced net.Conn is closed by its finalizer
	runtime.KeepAlive(other)
	runtime.KeepAlive(slow)
}

// TestEventsOnRedisHA: --events-redis takes the same URL forms as
// --fleet: events published on one node reach a subscriber on another
// through a 3-master Redis Cluster (whose nodes broadcast every PUBLISH)
// and through a Sentinel-managed primary.
func TestEventsOnRedisHA(t *testing.T) {
	t.Run("cluster", func(t *testing.T) {
		addrs := testutil.RedisCluster(t, 3)
		eventsBetweenNodes(t, "redis+cluster://"+addrs[0]+"?addr="+addrs[1]+"&addr="+addrs[2])
	})
	t.Run("sentinel", func(t *testing.T) {
		sentinels, _, _ := testutil.RedisSentinel(t)
		eventsBetweenNodes(t, "redis+sentinel://"+sentinels[0]+"?master_name=mymaster&addr="+sentinels[1]+"&addr="+sentinels[2])
	})
}

// eventsBetweenNodes starts two nodes on the Redis of url and checks that
// events posted to either reach a subscriber of the other.
func eventsBetweenNodes(t *testing.T, url string) {
	a, _ := node(t, url)
	b, _ := node(t, url)
	for i, pair := range [][2]*relay.Server{{a, b}, {b, a}} {
		s, reply := subscribe(t, relaytest.Addr(pair[1]), i == 0, "dev-ha")
		if p, _ := reply["params"].(map[string]any); p["authenticationError"] != "AuthenticationErrorNoError" {
			t.Fatalf("subscribe: %v", reply)
		}
		req, _ := http.NewRequest("POST", "http://"+relaytest.Addr(pair[0])+"/v1/events/dev-ha", strings.NewReader(fmt.Sprintf(`{"n":%d}`, i)))
		req.Header.Set("Authorization", "Bearer admin-secret")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 202 {
			t.Fatalf("publish: %d", resp.StatusCode)
		}
		if ch, data := eventOf(s.next(t)); ch != "dev-ha" || data.(map[string]any)["n"] != float64(i) {
			t.Fatalf("the subscriber on the other node got %s %v", ch, data)
		}
		s.c.Close()
	}
}

// TestURLSubscribe: ?token=T&channels=a,b on a WebSocket URL subscribes
// during the upgrade (no JSON-RPC, no reply): a refused token is a 401;
// without Redis, events reach this relay's subscribers.
func TestURLSubscribe(t *testing.T) {
	s := relaytest.New(t, func(c *relay.Config) { c.Auth = relaytest.RefuseBad{}; c.Access = onlyChannels{} })
	ev, err := events.New(s, events.Config{AdminKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	relaytest.Start(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, _, err := ws.Dial(ctx, "ws://"+relaytest.Addr(s)+"/?token=bad&channels=dev-1"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("a refused token: %v, want a 401", err)
	}
	if _, _, _, err := ws.Dial(ctx, "ws://"+relaytest.Addr(s)+"/?token=good&channels=dev-1,secret"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a channel the rules refuse: %v, want a 403 before the upgrade", err)
	}
	c, br, _, err := ws.Dial(ctx, "ws://"+relaytest.Addr(s)+"/events?token=good&channels=dev-1,all")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if br == nil {
		br = bufio.NewReader(c)
	}
	relaytest.WaitFor(t, func() bool { return ev.Deliver("all", []byte(`{"hello":1}`)) == 1 }, "the URL subscriber subscribed")
	sb := &sub{c: c, br: br, ws: true}
	if ch, data := eventOf(sb.next(t)); ch != "all" || data.(map[string]any)["hello"] != float64(1) {
		t.Fatalf("first message: %s %v", ch, data)
	}
}

// subjectAuth accepts every token a subscriber spends whole
// (AuthRequest.Whole); "sub:NAME" has the subject NAME, any other token
// none (a file token's anonymous identity).
type subjectAuth struct{}

func (subjectAuth) Authenticate(_ context.Context, r relay.AuthRequest, done func(relay.AuthResult)) {
	if !r.Whole { // a subscriber is nobody's partner: its token has no other use left
		done(relay.AuthFailed)
		return
	}
	if name, ok := strings.CutPrefix(r.Token, "sub:"); ok {
		r.SetSubject(name)
	}
	done(relay.AuthNoError)
}

// TestSubscribeDenyByDefault: without access rules a token subscribes to
// the channel named after its own subject and to nothing else — a
// stranger with a good token of its own cannot listen on device-7's
// channel (and take the connect token published there), an anonymous
// token listens nowhere; with rules, a channel they grant too.
func TestSubscribeDenyByDefault(t *testing.T) {
	for _, rules := range []bool{false, true} {
		s := relaytest.New(t, func(c *relay.Config) {
			c.Auth = subjectAuth{}
			if rules {
				c.Access = onlyChannels{}
			}
		})
		ev, err := events.New(s, events.Config{AdminKey: "k"})
		if err != nil {
			t.Fatal(err)
		}
		defer ev.Close()
		relaytest.Start(t, s)
		addr := relaytest.Addr(s)
		for _, c := range []struct {
			token, channel string
			ok             bool
		}{
			{"sub:device-7", "device-7", true},
			{"sub:alice", "device-7", false},
			{"sub:alice", "all", rules},
			{"anonymous", "device-7", false},
			{"anonymous", "dev-1", rules},
			{"sub:dev-1", "dev-1", true},
		} {
			for _, overWS := range []bool{false, true} {
				sb, reply := subscribeAs(t, addr, overWS, c.token, c.channel)
				got := reply["params"].(map[string]any)["authenticationError"]
				want := "AuthenticationErrorAuthenticationFailed"
				if c.ok {
					want = "AuthenticationErrorNoError"
				}
				if got != want {
					t.Errorf("rules %v: %s on %s (ws %v): %v, want %s", rules, c.token, c.channel, overWS, got, want)
				}
				sb.c.Close()
			}
			code := 101
			if !c.ok {
				code = 403
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn, _, _, err := ws.Dial(ctx, "ws://"+addr+"/?token="+c.token+"&channels="+c.channel)
			cancel()
			if conn != nil {
				conn.Close()
			}
			if (err == nil) != (code == 101) || (err != nil && !strings.Contains(err.Error(), "403")) {
				t.Errorf("rules %v: %s on %s in the URL: %v, want %d", rules, c.token, c.channel, err, code)
			}
		}
		relaytest.WaitFor(t, func() bool {
			return s.Stats().Closes["access_denied"] >= 6
		}, "the refusals counted as access_denied")
	}
}

// TestEventsRedisOutage: with Redis down, publishing answers 503 and
// subscribers stay connected; once Redis is back the relay's subscription
// resumes by itself and events flow again.
func TestEventsRedisOutage(t *testing.T) {
	raddr, _ := testutil.Redis(t, 0)
	port, _ := strconv.Atoi(raddr[strings.LastIndexByte(raddr, ':')+1:])
	a, ev := node(t, raddr)
	s, _ := subscribe(t, relaytest.Addr(a), false, "dev-1")
	post := func() int {
		req, _ := http.NewRequest("POST", "http://"+relaytest.Addr(a)+"/v1/events/dev-1", strings.NewReader(`{"x":1}`))
		req.Header.Set("Authorization", "Bearer admin-secret")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Stop the first redis-server (SHUTDOWN NOSAVE), then restart one on
	// the same port.
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	_ = rdb.ShutdownNoSave(context.Background()).Err()
	rdb.Close()
	relaytest.WaitFor(t, func() bool {
		c, err := net.Dial("tcp", raddr)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, "Redis down")
	if code := post(); code != 503 {
		t.Fatalf("publishing with Redis down: %d, want 503", code)
	}
	testutil.Redis(t, port)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ev.Ready(ctx); err != nil {
		t.Fatalf("the subscription did not resume: %v", err)
	}
	if code := post(); code != 202 {
		t.Fatalf("publishing after Redis came back: %d", code)
	}
	if ch, _ := eventOf(s.next(t)); ch != "dev-1" {
		t.Fatalf("after the outage: %q", ch)
	}
	runtime.KeepAlive(s)
}

// httpClient bounds every publish the tests make: a relay that stops
// answering fails the test in seconds instead of hanging the suite.
var httpClient = &http.Client{Timeout: 15 * time.Second}
