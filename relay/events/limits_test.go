package events_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/events"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// local starts a relay without Redis serving events with cfg; both end
// with the test.
func local(t *testing.T, cfg events.Config) (*relay.Server, *events.Service) {
	t.Helper()
	s := relaytest.New(t, func(c *relay.Config) { c.Access = onlyChannels{} })
	ev, err := events.New(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ev.Close() })
	relaytest.Start(t, s)
	return s, ev
}

// TestEventOfMaxSize: an event as large as the publish API accepts (64
// KiB of JSON, answered 202) reaches a subscriber that reads, over raw
// TCP and WebSocket; it does not disconnect it as slow_reader.
func TestEventOfMaxSize(t *testing.T) {
	s, _ := local(t, events.Config{AdminKey: "k"})
	body := `{"pad":"` + strings.Repeat("x", 64<<10-len(`{"pad":""}`)) + `"}`
	for _, overWS := range []bool{false, true} {
		sb, _ := subscribe(t, relaytest.Addr(s), overWS, "dev-big")
		req, _ := http.NewRequest("POST", "http://"+relaytest.Addr(s)+"/v1/events/dev-big", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer k")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 202 {
			t.Fatalf("publishing 64 KiB: %d, want 202", resp.StatusCode)
		}
		if ch, data := eventOf(sb.next(t)); ch != "dev-big" || len(data.(map[string]any)["pad"].(string)) != len(body)-len(`{"pad":""}`) {
			t.Fatalf("ws %v: got %q, want the 64 KiB event", overWS, ch)
		}
		sb.c.Close()
	}
	if n := s.Stats().Closes["slow_reader"]; n != 0 {
		t.Fatalf("%d subscribers closed as slow_reader", n)
	}
}

// TestDeliverCountsTheEventThatOverflows: the event a subscriber that does
// not read cannot take — the one that disconnects it as slow_reader — is
// not counted as delivered: Deliver's count and
// meetpoint_events_delivered_total are the events the subscriber was
// handed (written, or queued for its socket: at most the queue's 64 KiB
// of those are lost with the disconnect), and
// meetpoint_events_dropped_total counts the others.
func TestDeliverCountsTheEventThatOverflows(t *testing.T) {
	s, ev := local(t, events.Config{})
	sb, _ := subscribe(t, relaytest.Addr(s), false, "dev-slow")
	relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, s, "meetpoint_events_subscribers") == 1 }, "subscribed")
	data := []byte(`{"pad":"` + strings.Repeat("x", 1000) + `"}`)
	delivered, tries := 0, 0
	for ; tries < 100000; tries++ {
		n := ev.Deliver("dev-slow", data)
		if n == 0 {
			break
		}
		delivered += n
	}
	if tries == 100000 {
		t.Fatal("the subscriber that does not read was never disconnected")
	}
	got := 0
	_ = sb.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		line, err := sb.br.ReadBytes('\n')
		if err != nil {
			break
		}
		if ch, _ := eventOf(mustJSON(t, line)); ch == "dev-slow" {
			got++
		}
	}
	if queued := handshake.QueueMax/len(data) + 1; got > delivered || delivered > got+queued {
		t.Errorf("Deliver reported %d events delivered, the subscriber received %d whole (at most %d may have been queued and lost)", delivered, got, queued)
	}
	if m := relaytest.Metric(t, s, "meetpoint_events_delivered_total"); int(m) != delivered {
		t.Errorf("meetpoint_events_delivered_total = %v, Deliver reported %d", m, delivered)
	}
	if m := relaytest.Metric(t, s, "meetpoint_events_dropped_total"); int(m) != tries+1-delivered {
		t.Errorf("meetpoint_events_dropped_total = %v, want %d (of %d events, %d delivered)", m, tries+1-delivered, tries+1, delivered)
	}
}

func mustJSON(t *testing.T, line []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("%v: %q", err, line)
	}
	return m
}

// TestPublishFailedIsNotCounted: a publish the broker did not take
// (Redis unreachable: 503) is not counted in
// meetpoint_events_published_total; one it took is.
func TestPublishFailedIsNotCounted(t *testing.T) {
	raddr, _ := testutil.Redis(t, 0)
	a, _ := node(t, raddr)
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
	if code := post(); code != 202 {
		t.Fatalf("publishing: %d", code)
	}
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
	for range 3 {
		if code := post(); code != 503 {
			t.Fatalf("publishing with Redis down: %d, want 503", code)
		}
	}
	if n := relaytest.Metric(t, a, "meetpoint_events_published_total"); n != 1 {
		t.Fatalf("meetpoint_events_published_total = %v after one publish taken and three refused (503), want 1", n)
	}
}

// TestEventIsOneLine: an event whose JSON data is pretty-printed (newlines
// between its tokens, as jq or json.dumps(indent=2) write it), published
// over HTTP or straight into Redis, reaches a raw-TCP subscriber as one
// line (docs/events.md: "one line each over TCP").
func TestEventIsOneLine(t *testing.T) {
	raddr := relaytest.Redis(t)
	a, _ := node(t, raddr)
	sb, _ := subscribe(t, relaytest.Addr(a), false, "dev-lines")
	pretty := "{\n  \"connect\": {\n    \"token\": \"T\",\r\n    \"nonce\": \"N\"\n  }\n}\n"
	req, _ := http.NewRequest("POST", "http://"+relaytest.Addr(a)+"/v1/events/dev-lines", strings.NewReader(pretty))
	req.Header.Set("Authorization", "Bearer admin-secret")
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("publish: %d", resp.StatusCode)
	}
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	defer rdb.Close()
	if err := rdb.Publish(context.Background(), "meetpoint:events:dev-lines", pretty).Err(); err != nil {
		t.Fatal(err)
	}
	for _, via := range []string{"HTTP", "Redis"} {
		ch, data := eventOf(sb.next(t))
		d, _ := data.(map[string]any)
		if c, _ := d["connect"].(map[string]any); ch != "dev-lines" || c["token"] != "T" || c["nonce"] != "N" {
			t.Fatalf("the event published over %s: %s %v", via, ch, data)
		}
	}
}

// TestURLSubscribeRefusalsCounted: a URL subscription refused for its
// token (401) counts in meetpoint_events_subscriptions_refused_total, as
// one refused for a channel (403) and an Events.Subscribe refused for
// either do.
func TestURLSubscribeRefusalsCounted(t *testing.T) {
	s := relaytest.New(t, func(c *relay.Config) { c.Auth = relaytest.RefuseBad{}; c.Access = onlyChannels{} })
	ev, err := events.New(s, events.Config{AdminKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	relaytest.Start(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, _, err := ws.Dial(ctx, "ws://"+relaytest.Addr(s)+"/?token=bad&channels=dev-1"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("a refused token: %v, want a 401", err)
	}
	relaytest.WaitFor(t, func() bool { return s.Stats().Closes["auth_failed"] == 1 }, "the refusal closed")
	if _, _, _, err := ws.Dial(ctx, "ws://"+relaytest.Addr(s)+"/?token=good&channels=secret"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a refused channel: %v, want a 403", err)
	}
	relaytest.WaitFor(t, func() bool { return s.Stats().Closes["access_denied"] == 1 }, "the refusal closed")
	for _, token := range []string{"bad", "good"} {
		sb, _ := subscribeAs(t, relaytest.Addr(s), false, token, "secret")
		sb.c.Close()
	}
	if n := relaytest.Metric(t, s, "meetpoint_events_subscriptions_refused_total"); n != 4 {
		t.Fatalf("meetpoint_events_subscriptions_refused_total = %v after 4 refusals (a token and a channel, in the URL and by Events.Subscribe), want 4", n)
	}
}

// TestReadyIsThisNodes: Ready waits for this relay's own Redis
// subscription, not any client's: a relay whose subscription cannot be
// made (its Redis user may not PSUBSCRIBE) is not ready, though another
// relay on the same Redis holds one.
func TestReadyIsThisNodes(t *testing.T) {
	raddr := relaytest.Redis(t)
	node(t, raddr) // subscribed: Redis counts its pattern
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	defer rdb.Close()
	if err := rdb.Do(context.Background(), "ACL", "SETUSER", "nosub", "on", ">pw", "~*", "&*", "+@all", "-psubscribe").Err(); err != nil {
		t.Fatal(err)
	}
	s := relaytest.New(t, nil)
	ev, err := events.New(s, events.Config{Redis: "redis://nosub:pw@" + raddr + "/0"})
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	relaytest.Start(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := ev.Ready(ctx); err == nil {
		t.Fatal("Ready reported a relay without a Redis subscription ready")
	}
}

// TestBurstToAFarSubscriber: a burst of events larger than what the
// sockets hold between relay and subscriber (a fresh connection to a
// reader far away: small buffers, a round trip before the window grows)
// waits in the subscriber's queue, up to its 64 KiB, and reaches the
// subscriber whole once it reads; it is not disconnected as slow_reader
// at the first write the socket takes only part of.
func TestBurstToAFarSubscriber(t *testing.T) {
	s, ev := local(t, events.Config{})
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", relaytest.Addr(s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sb := &sub{c: c, br: bufio.NewReader(c)}
	if _, err := c.Write([]byte(`{"id":1,"method":"Events.Subscribe","params":{"token":"t","channels":["dev-far"]}}` + "\n")); err != nil {
		t.Fatal(err)
	}
	if m := sb.next(t); m["status"] != "success" {
		t.Fatalf("subscribe: %v", m)
	}
	shrinkRelaySide(t, c)

	data := []byte(`{"pad":"` + strings.Repeat("x", 1000) + `"}`)
	const burst = 40 // 40 KiB: more than the sockets hold, less than the queue
	for i := range burst {
		if n := ev.Deliver("dev-far", data); n != 1 {
			t.Fatalf("event %d of the burst reached %d subscribers: disconnected (slow_reader) though it waited for less than 64 KiB", i, n)
		}
	}
	for i := range burst {
		if ch, _ := eventOf(sb.next(t)); ch != "dev-far" {
			t.Fatalf("event %d of the burst: channel %q", i, ch)
		}
	}
	if n := ev.Deliver("dev-far", data); n != 1 {
		t.Fatal("the subscriber is gone after reading the burst")
	}
}

// shrinkRelaySide gives the relay's socket of client connection c (the
// relay runs in this process) a send buffer of a few KiB, as a fresh
// connection to a reader far away has.
func shrinkRelaySide(t *testing.T, c net.Conn) {
	t.Helper()
	local := c.LocalAddr().(*net.TCPAddr)
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := unix.Getpeername(fd)
		if in4, ok := sa.(*unix.SockaddrInet4); err == nil && ok && in4.Port == local.Port && net.IP(in4.Addr[:]).Equal(local.IP) {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatal("the relay's side of the connection not found")
}

// TestRedisPublishChecked: an event published straight into Redis (not
// through the HTTP API, which checks it) that is not JSON, or is larger
// than the events' bound, reaches no subscriber — every subscriber would
// queue a copy of a 1 MiB one — and is counted and logged; a good one
// after them arrives.
func TestRedisPublishChecked(t *testing.T) {
	raddr, _ := testutil.Redis(t, 0)
	logs := &testutil.Tail{}
	s := relaytest.New(t, func(c *relay.Config) {
		c.Access = onlyChannels{}
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	ev, err := events.New(s, events.Config{Redis: "redis://" + raddr + "/0"})
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	relaytest.Start(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), relaytest.Patience)
	defer cancel()
	if err := ev.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	sb, _ := subscribe(t, relaytest.Addr(s), false, "dev-r")
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	defer rdb.Close()
	for _, payload := range []string{"not json", `{"big":"` + strings.Repeat("x", 1<<20) + `"}`, `{"ok":1}`} {
		if err := rdb.Publish(ctx, "meetpoint:events:dev-r", payload).Err(); err != nil {
			t.Fatal(err)
		}
	}
	m := sb.next(t)
	if _, data := eventOf(m); fmt.Sprint(data) != "map[ok:1]" {
		t.Fatalf("the first event to arrive: %v; want the good one, after the two dropped", m)
	}
	for reason, want := range map[string]float64{"not_json": 1, "too_large": 1} {
		if got := relaytest.Metric(t, s, `meetpoint_events_invalid_total{reason="`+reason+`"}`); got != want {
			t.Errorf("meetpoint_events_invalid_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	if n := strings.Count(logs.String(), "an event published in Redis is dropped"); n != 1 {
		t.Errorf("%d warnings for two dropped events, want one a minute:\n%s", n, logs.String())
	}
}

// TestEventOverMaxSizeIs413: a body over the largest event is 413 (it was
// 400, as for bad JSON): the publisher is told it sent too much, not
// something malformed.
func TestEventOverMaxSizeIs413(t *testing.T) {
	s, _ := local(t, events.Config{AdminKey: "k"})
	for _, c := range []struct {
		body string
		want int
	}{
		{`{"pad":"` + strings.Repeat("x", 64<<10) + `"}`, 413},
		{`{"pad":`, 400},
	} {
		req, _ := http.NewRequest("POST", "http://"+relaytest.Addr(s)+"/v1/events/dev-big", strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer k")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("publishing %d bytes: %d, want %d", len(c.body), resp.StatusCode, c.want)
		}
	}
}
