package disco

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestGroupsFleet: two relays sharing one Redis serve one set of groups:
// created on one, read, listed, updated and deleted on the other, with the
// per-app bound counted fleet-wide and expiry left to Redis.
func TestGroupsFleet(t *testing.T) {
	addr := relaytest.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	cfg := Config{Redis: rdb, MaxGroups: 2, Prefix: "t1:", OwnerSecrets: true}
	_, u1, _ := start(t, cfg)
	_, u2, srv2 := start(t, cfg)

	code, hdr, body := relaytest.HTTP(t, "POST", u1+"/group", babbleGroup)
	if code != 201 {
		t.Fatalf("POST on node 1: %d %s", code, body)
	}
	var id string
	_ = json.Unmarshal([]byte(body), &id)
	secret := hdr.Get(SecretHeader)
	if code, body = get(t, u2+"/groups/"+id); code != 200 || !strings.Contains(body, `"office"`) {
		t.Fatalf("GET on node 2: %d %s", code, body)
	}
	if code, body = get(t, u2+"/groups?app-id=chat"); code != 200 || !strings.Contains(body, id) {
		t.Fatalf("list on node 2: %d %s", code, body)
	}
	// Node 2 updates it with the owner secret; node 1 sees the change.
	upd := strings.Replace(babbleGroup, `"office"`, `"moved"`, 1)
	if code, _, body = relaytest.HTTP(t, "PATCH", u2+"/groups/"+id, upd); code != 403 {
		t.Fatalf("PATCH without the secret: %d %s", code, body)
	}
	if code, _, body = relaytest.HTTP(t, "PATCH", u2+"/groups/"+id, upd, SecretHeader, secret); code != 200 {
		t.Fatalf("PATCH on node 2: %d %s", code, body)
	}
	if _, body = get(t, u1+"/groups/"+id); !strings.Contains(body, `"moved"`) {
		t.Fatalf("node 1 after node 2's PATCH: %s", body)
	}
	// The bound is the fleet's: one more on node 2 fits, a third does not.
	if code, _, body = relaytest.HTTP(t, "POST", u2+"/group", babbleGroup); code != 201 {
		t.Fatalf("second group: %d %s", code, body)
	}
	if code, _, body = relaytest.HTTP(t, "POST", u1+"/group", babbleGroup); code != 429 {
		t.Fatalf("third group of an app bounded to 2: %d %s", code, body)
	}
	if n := relaytest.Metric(t, srv2, "meetpoint_groups"); n != 2 {
		t.Fatalf("meetpoint_groups %v, want the fleet's 2", n)
	}
	// Delete on node 1; gone on node 2.
	if code, _, body = relaytest.HTTP(t, "DELETE", u1+"/groups/"+id, "", SecretHeader, secret); code != 200 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if code, _ = get(t, u2+"/groups/"+id); code != 404 {
		t.Fatalf("GET after DELETE on the other node: %d", code)
	}
	// Redis expires a group with its TTL.
	short := strings.Replace(babbleGroup, `{"Name"`, `{"TTL":1,"Name"`, 1)
	code, _, body = relaytest.HTTP(t, "POST", u1+"/group", short)
	if code != 201 {
		t.Fatalf("POST with TTL 1: %d %s", code, body)
	}
	_ = json.Unmarshal([]byte(body), &id)
	if ttl := rdb.PTTL(t.Context(), "t1:{groups}:g:"+id).Val(); ttl <= 0 || ttl > time.Second {
		t.Fatalf("the group's key expires in %v, want within its 1 s TTL", ttl)
	}
	relaytest.WaitFor(t, func() bool { c, _ := get(t, u2+"/groups/"+id); return c == 404 }, "the 1 s group expired")
}

// TestGroupsFleetCompareAndSet: a write based on a record that changed
// meanwhile is refused, in Redis as in memory.
func TestGroupsFleetCompareAndSet(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: relaytest.Redis(t)})
	t.Cleanup(func() { rdb.Close() })
	now := time.Now()
	for name, st := range map[string]store{"redis": &redisStore{rdb: rdb, prefix: "cas:"}, "local": &localStore{groups: map[string]*record{}, perApp: map[string]int{}}} {
		rec := func(name string) *record {
			return &record{Group: Group{ID: "g1", AppID: "chat", Name: name}, Expires: now.Add(time.Minute).UnixMilli()}
		}
		if err := st.put(rec("a"), nil, bounds{perApp: 10}, now); err != nil {
			t.Fatalf("%s: create: %v", name, err)
		}
		if err := st.put(rec("again"), nil, bounds{perApp: 10}, now); err != errChanged {
			t.Fatalf("%s: second create of one id: %v", name, err)
		}
		read, _ := st.get("g1")
		stale, _ := st.get("g1")
		if err := st.put(rec("b"), read, bounds{perApp: 10}, now); err != nil {
			t.Fatalf("%s: update: %v", name, err)
		}
		if err := st.put(rec("c"), stale, bounds{perApp: 10}, now); err != errChanged {
			t.Fatalf("%s: update from a stale read: %v", name, err)
		}
		if err := st.del(stale); err != errChanged {
			t.Fatalf("%s: delete from a stale read: %v", name, err)
		}
		if cur, _ := st.get("g1"); cur == nil || cur.Group.Name != "b" {
			t.Fatalf("%s: stored %+v, want b", name, cur)
		}
	}
}

// TestGroupsFleetRedisDown: with the store unreachable the API answers
// 503 with a JSON error, counted, and recovers with it.
func TestGroupsFleetRedisDown(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	_, u, srv := start(t, Config{Redis: rdb})
	if code, _, body := relaytest.HTTP(t, "POST", u+"/group", babbleGroup); code != 503 || !strings.Contains(body, `"error"`) {
		t.Fatalf("POST with Redis down: %d %s", code, body)
	}
	if code, _ := get(t, u+"/groups/x"); code != 503 {
		t.Fatalf("GET with Redis down: %d", code)
	}
	if n := relaytest.Metric(t, srv, `meetpoint_groups_rejected_total{reason="unavailable"}`); n != 2 {
		t.Fatalf("unavailable counted %v, want 2", n)
	}
}

// get is a GET returning status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	code, _, body := relaytest.HTTP(t, "GET", url, "")
	return code, body
}

// TestGroupsStoreBounds: both stores refuse past an app's bound (limit),
// past the groups in all and past their bytes (full), let a group shrink
// or be refreshed when full, and stop counting a group once it is
// deleted or expired.
func TestGroupsStoreBounds(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: relaytest.Redis(t)})
	t.Cleanup(func() { rdb.Close() })
	now := time.Now()
	for name, st := range map[string]store{"redis": &redisStore{rdb: rdb, prefix: "bounds:"}, "local": &localStore{groups: map[string]*record{}, perApp: map[string]int{}, batch: 256}} {
		rec := func(id, app string, size int, life time.Duration) *record {
			return &record{Group: Group{ID: id, AppID: app, Name: strings.Repeat("x", size)}, Expires: now.Add(life).UnixMilli()}
		}
		b := bounds{perApp: 2, total: 3, bytes: 3000}
		put := func(r, old *record, want error) {
			t.Helper()
			if err := st.put(r, old, b, now); err != want {
				t.Fatalf("%s: put %s (%d bytes): %v, want %v", name, r.Group.ID, r.size, err, want)
			}
		}
		a1 := rec("a1", "a", 100, time.Hour)
		put(a1, nil, nil)
		put(rec("a2", "a", 100, time.Hour), nil, nil)
		put(rec("a3", "a", 100, time.Hour), nil, errLimit)
		short := rec("b1", "b", 100, time.Minute) // never expires in Redis while the test runs, however slow the machine
		put(short, nil, nil)
		put(rec("c1", "c", 100, time.Hour), nil, errFull) // three groups in all
		put(rec("a1", "a", 2900, time.Hour), a1, errFull) // over 3000 bytes
		small := rec("a1", "a", 10, time.Hour)
		put(small, a1, nil) // shrinking always fits
		if n, bytes := st.count(); n != 3 || bytes <= 0 || bytes > 3000 {
			t.Fatalf("%s: count %d groups, %d bytes", name, n, bytes)
		}
		if err := st.del(small); err != nil {
			t.Fatal(err)
		}
		put(rec("c1", "c", 100, time.Hour), nil, nil) // the deleted group's room
		// b1 expires (on the stores' clock, the now they are given): the
		// next write forgets it (Redis) or the sweep does.
		now = now.Add(2 * time.Minute)
		st.sweep(now)
		put(rec("d1", "d", 100, time.Hour), nil, nil)
		if ids, _ := st.ids("", now); len(ids) != 3 {
			t.Fatalf("%s: live ids %v, want a2, c1, d1", name, ids)
		}
		if _, bytes := st.count(); bytes > 3000 {
			t.Fatalf("%s: %d bytes counted after deletes and expiry", name, bytes)
		}
	}
}

// TestGroupsListingReadsAPage: an anonymous listing on the fleet's Redis
// reads what its page holds, not every group: registered applications'
// groups (not listed without their key) are left out by id before any
// record is read, and records are read a batch at a time until the page
// is full. Measured as the bytes Redis sent the node for one request.
func TestGroupsListingReadsAPage(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: relaytest.Redis(t)})
	t.Cleanup(func() { rdb.Close() })
	const key = "0123456789abcdef0123"
	_, base, _ := start(t, Config{Redis: rdb, Prefix: "page:", Apps: map[string]string{"reg": key}, PageBytes: 64 << 10})
	big := strings.Repeat("x", 60<<10)
	for i := range 40 {
		create(t, base, fmt.Sprintf(`{"ID":"a%04d","AppID":"reg","Name":%q}`, i, big), "Authorization", "Bearer "+key)
		create(t, base, fmt.Sprintf(`{"ID":"o%04d","AppID":"open","Name":%q}`, i, big))
	}
	sent := func() int64 {
		for l := range strings.SplitSeq(rdb.Info(t.Context(), "stats").Val(), "\r\n") {
			if v, ok := strings.CutPrefix(l, "total_net_output_bytes:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		t.Fatal("no total_net_output_bytes in INFO stats")
		return 0
	}
	before := sent()
	code, hdr, body := relaytest.HTTP(t, "GET", base+"/groups?limit=1000", "")
	read := sent() - before
	if code != 200 || !strings.Contains(body, "o0000") || strings.Contains(body, "a0000") || hdr.Get("Link") == "" {
		t.Fatalf("listing: %d, Link %q, %d bytes", code, hdr.Get("Link"), len(body))
	}
	// One page (64 KiB: one group, as each is 60 KiB) and a batch more at
	// most; all 80 groups are 4.8 MB.
	if bound := int64(64<<10 + pageBatch*61<<10); read > bound {
		t.Fatalf("one listing of a %d-byte page read %d bytes from Redis, want at most %d", len(body), read, bound)
	}
}

// TestGroupsFleetBytesFollowExpiry: meetpoint_groups_bytes is the bytes
// of the fleet's live groups, as meetpoint_groups is their number. The
// bytes of groups Redis expired stayed counted until the next write
// somewhere in the fleet: a quiet fleet reported them for as long as any
// group lived (the total's expiry is its longest-lived group's).
func TestGroupsFleetBytesFollowExpiry(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: relaytest.Redis(t)})
	t.Cleanup(func() { rdb.Close() })
	_, u, srv := start(t, Config{Redis: rdb, Prefix: "bytes:", SweepEvery: 50 * time.Millisecond})
	create(t, u, `{"AppID":"a","Name":"long"}`)
	one := relaytest.Metric(t, srv, "meetpoint_groups_bytes")
	create(t, u, fmt.Sprintf(`{"AppID":"a","TTL":1,"Name":%q}`, strings.Repeat("x", 1000)))
	if two := relaytest.Metric(t, srv, "meetpoint_groups_bytes"); two < one+1000 {
		t.Fatalf("bytes %v with both groups, want over %v", two, one+1000)
	}
	relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, srv, "meetpoint_groups") == 1 }, "the 1 s group expired")
	relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, srv, "meetpoint_groups_bytes") == one }, "the expired group's bytes no longer counted")
}
