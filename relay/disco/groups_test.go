package disco

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/ops"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// start serves the groups API on a fresh relay.
func start(t *testing.T, cfg Config) (*Service, string, *relay.Server) {
	t.Helper()
	srv := relaytest.New(t, nil)
	s, err := New(srv, cfg)
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, srv)
	t.Cleanup(func() { srv.Close(); s.Close() })
	return s, "http://" + relaytest.Addr(srv), srv
}

const babbleGroup = `{"Name":"office","AppID":"chat","PubKey":"0X04AB","Peers":[{"NetAddr":"0X04AB","PubKeyHex":"0X04AB","Moniker":"alice"}],"GenesisPeers":[{"NetAddr":"0X04AB","PubKeyHex":"0X04AB","Moniker":"alice"}]}`

// TestGroupsDiscoWire: the routes and the JSON as Disco's clients expect
// them, with owner secrets (OwnerSecrets) guarding update and delete.
func TestGroupsDiscoWire(t *testing.T) {
	_, base, _ := start(t, Config{OwnerSecrets: true})
	code, h, body := relaytest.HTTP(t, "POST", base+"/group", babbleGroup)
	var id string
	if code != 201 || json.Unmarshal([]byte(body), &id) != nil || len(id) != 36 {
		t.Fatalf("POST /group: %d %q (want 201 and the new id as a JSON string)", code, body)
	}
	secret := h.Get(SecretHeader)
	if len(secret) < 32 {
		t.Fatalf("no owner secret in %s: %q", SecretHeader, secret)
	}
	code, _, body = relaytest.HTTP(t, "GET", base+"/groups?app-id=chat", "")
	var all map[string]map[string]any
	if code != 200 || json.Unmarshal([]byte(body), &all) != nil || len(all) != 1 {
		t.Fatalf("GET /groups?app-id=chat: %d %q", code, body)
	}
	g := all[id]
	for _, k := range []string{"ID", "Name", "AppID", "PubKey", "LastUpdated", "Peers", "GenesisPeers"} {
		if _, ok := g[k]; !ok {
			t.Errorf("group JSON lacks Disco's key %s: %v", k, g)
		}
	}
	peer := g["Peers"].([]any)[0].(map[string]any)
	for _, k := range []string{"NetAddr", "PubKeyHex", "Moniker"} {
		if _, ok := peer[k]; !ok {
			t.Errorf("peer JSON lacks %s: %v", k, peer)
		}
	}
	if code, _, body := relaytest.HTTP(t, "GET", base+"/groups/"+id, ""); code != 200 || !strings.Contains(body, `"Moniker":"alice"`) {
		t.Errorf("GET /groups/{id}: %d %q", code, body)
	}
	upd := strings.Replace(babbleGroup, `"office"`, `"office 2"`, 1)
	if code, _, _ := relaytest.HTTP(t, "PATCH", base+"/groups/"+id, upd); code != 403 {
		t.Errorf("PATCH without the owner secret: %d, want 403", code)
	}
	if code, _, body := relaytest.HTTP(t, "PATCH", base+"/groups/"+id, upd, SecretHeader, secret); code != 200 || body != `"`+id+`"`+"\n" {
		t.Errorf("PATCH with the owner secret: %d %q, want 200 and the id as a JSON string (as Disco answers)", code, body)
	}
	// Create-or-replace with a given id: only its owner replaces it.
	withID := strings.Replace(babbleGroup, `{"Name"`, `{"ID":"`+id+`","Name"`, 1)
	if code, _, _ := relaytest.HTTP(t, "POST", base+"/group", withID); code != 409 {
		t.Errorf("POST over another's group: %d, want 409", code)
	}
	if code, _, _ := relaytest.HTTP(t, "POST", base+"/group", withID, SecretHeader, secret); code != 201 {
		t.Errorf("POST replacing one's own group: %d, want 201", code)
	}
	if code, _, _ := relaytest.HTTP(t, "DELETE", base+"/groups/"+id, "", SecretHeader, "wrong"); code != 403 {
		t.Errorf("DELETE with a wrong secret: %d, want 403", code)
	}
	if code, _, _ := relaytest.HTTP(t, "DELETE", base+"/groups/"+id, "", SecretHeader, secret); code != 200 {
		t.Errorf("DELETE with the owner secret: %d", code)
	}
	var msg string
	if code, _, body := relaytest.HTTP(t, "GET", base+"/groups/"+id, ""); code != 404 || json.Unmarshal([]byte(body), &msg) != nil {
		t.Errorf("GET a deleted group: %d %q, want 404 with the message as a JSON string", code, body)
	}
}

// create POSTs a group and returns its id.
func create(t *testing.T, base, body string, hdr ...string) string {
	t.Helper()
	code, _, b := relaytest.HTTP(t, "POST", base+"/group", body, hdr...)
	var id string
	if code != 201 || json.Unmarshal([]byte(b), &id) != nil {
		t.Fatalf("POST %.60s: %d %q", body, code, b)
	}
	return id
}

// TestGroupsDiscoCompat: by default an unregistered application's groups
// behave as Disco's clients need: a re-POST with the group's ID replaces
// and refreshes it (Disco's update, and babble-android's heartbeat),
// PATCH and DELETE need no secret, PATCH answers the id, and a missing
// group's 404 is not a JSON object (Disco's client would decode it into
// an empty group and report no error).
func TestGroupsDiscoCompat(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	s, base, _ := start(t, Config{TTL: time.Minute, SweepEvery: 10 * time.Millisecond, nowForTests: clk.now})
	id := create(t, base, babbleGroup)
	withID := strings.Replace(babbleGroup, `{"Name":"office"`, `{"ID":"`+id+`","Name":"renamed"`, 1)
	for range 3 { // a heartbeat every 40 s outlives the 1-minute TTL
		clk.add(40 * time.Second)
		if got := create(t, base, withID); got != id {
			t.Fatalf("re-POST with the ID answered %q, want %q", got, id)
		}
	}
	if len(s.ids()) != 1 {
		t.Fatalf("groups %v after re-POSTs of one ID, want one", s.ids())
	}
	code, _, body := relaytest.HTTP(t, "GET", base+"/groups/"+id, "")
	var g Group
	if code != 200 || json.Unmarshal([]byte(body), &g) != nil || g.Name != "renamed" || g.LastUpdated != clk.now().Unix() {
		t.Fatalf("GET after the re-POSTs: %d %q, want the replaced group updated now", code, body)
	}
	if code, _, body := relaytest.HTTP(t, "PATCH", base+"/groups/"+id, babbleGroup); code != 200 || body != `"`+id+`"`+"\n" {
		t.Errorf("PATCH without a secret: %d %q, want 200 and the id as a JSON string", code, body)
	}
	other := strings.Replace(withID, `"AppID":"chat"`, `"AppID":"other"`, 1)
	if code, _, _ := relaytest.HTTP(t, "POST", base+"/group", other); code != 409 {
		t.Errorf("re-POST of the ID under another application: %d, want 409", code)
	}
	if code, _, _ := relaytest.HTTP(t, "DELETE", base+"/groups/"+id, ""); code != 200 {
		t.Errorf("DELETE without a secret: %d, want 200", code)
	}
	code, _, body = relaytest.HTTP(t, "GET", base+"/groups/"+id, "")
	var asGroup *Group
	if code != 404 || json.Unmarshal([]byte(body), &asGroup) == nil {
		t.Errorf("GET a missing group: %d %q, want 404 with a body that does not decode into a group", code, body)
	}
	if code, _, _ := relaytest.HTTP(t, "DELETE", base+"/groups/"+id, ""); code != 404 {
		t.Errorf("DELETE a missing group: %d, want 404", code)
	}
}

// TestGroupsAppURL: a registered application's clients that cannot send
// a header reach its groups with the key in the URL (/app/KEY/…), and
// through it only that application's groups.
func TestGroupsAppURL(t *testing.T) {
	key, key2 := "chat-key-0123456789abcdef", "board-key-0123456789abcdef"
	_, base, _ := start(t, Config{Apps: map[string]string{"chat": key, "board": key2}, AppsOnly: true})
	app := base + "/app/" + key
	id := create(t, app, babbleGroup)
	noApp := create(t, app, `{"Name":"AppID from the URL"}`)
	if code, _, _ := relaytest.HTTP(t, "POST", app+"/group", `{"AppID":"board"}`); code != 403 {
		t.Errorf("another app's group through this app's URL: %d, want 403", code)
	}
	board := create(t, base+"/app/"+key2, `{"AppID":"board"}`)
	if code, _, _ := relaytest.HTTP(t, "POST", base+"/app/wrong-key-0123456789/group", babbleGroup); code != 401 {
		t.Errorf("an unknown key in the URL: %d, want 401", code)
	}
	var all map[string]Group
	code, _, body := relaytest.HTTP(t, "GET", app+"/groups", "")
	if code != 200 || json.Unmarshal([]byte(body), &all) != nil || len(all) != 2 || all[noApp].AppID != "chat" {
		t.Fatalf("GET %s/groups: %d %q, want chat's two groups", "/app/KEY", code, body)
	}
	if code, _, _ := relaytest.HTTP(t, "GET", app+"/groups?app-id=board", ""); code != 403 {
		t.Errorf("listing another app through this app's URL: %d, want 403", code)
	}
	if code, _, _ := relaytest.HTTP(t, "GET", app+"/groups/"+board, ""); code != 404 {
		t.Errorf("another app's group through this app's URL: %d, want 404", code)
	}
	var asGroup *Group
	if code, _, body := relaytest.HTTP(t, "GET", base+"/groups/"+id, ""); code != 401 || json.Unmarshal([]byte(body), &asGroup) == nil {
		t.Errorf("the app's group without its key: %d %q, want 401 with a body that does not decode into a group", code, body)
	}
	if code, _, body := relaytest.HTTP(t, "PATCH", app+"/groups/"+id, `{"Name":"patched"}`); code != 200 || body != `"`+id+`"`+"\n" {
		t.Errorf("PATCH through the URL: %d %q", code, body)
	}
	if code, _, _ := relaytest.HTTP(t, "DELETE", app+"/groups/"+id, ""); code != 200 {
		t.Errorf("DELETE through the URL: %d", code)
	}
}

// TestGroupsAppURLRefusalsAreJSON: with the relay's catch-all (ops, as
// serve registers it), a wrong method or an unknown path under
// /app/KEY/group… is refused in JSON, as the same request without the
// /app/KEY prefix is: the groups API's clients decode every answer.
func TestGroupsAppURLRefusalsAreJSON(t *testing.T) {
	key := "chat-key-0123456789abcdef"
	srv := relaytest.New(t, nil)
	s, err := New(srv, Config{Apps: map[string]string{"chat": key}})
	if err != nil {
		t.Fatal(err)
	}
	ops.Register(srv)
	relaytest.Start(t, srv)
	t.Cleanup(func() { srv.Close(); s.Close() })
	base := "http://" + relaytest.Addr(srv)
	for _, prefix := range []string{"", "/app/" + key} {
		for _, c := range []struct {
			method, path string
			code         int
		}{
			{"PUT", "/groups/x", 405},
			{"POST", "/groups", 405},
			{"GET", "/groups/x/y", 404},
		} {
			code, _, body := relaytest.HTTP(t, c.method, base+prefix+c.path, "")
			var e struct{ Error string }
			if code != c.code || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
				t.Errorf("%s %s%s: %d %q, want %d with a JSON error", c.method, strings.ReplaceAll(prefix, key, "KEY"), c.path, code, body, c.code)
			}
		}
	}
	// Elsewhere under /app/ is not the groups API.
	if code, _, body := relaytest.HTTP(t, "GET", base+"/app/"+key+"/elsewhere", ""); code != 404 || strings.HasPrefix(body, "{") {
		t.Errorf("GET /app/KEY/elsewhere: %d %q, want a text 404", code, body)
	}
}

// TestGroupsGrowthBounded: unregistered application ids are free to
// invent, so what anonymous clients can store is bounded in all — groups
// and bytes (503, reason full) — and per address in creations per minute
// (429, reason rate); a listing is one bounded page with a Link to the
// next. A registered application, reached with its key, still creates
// its groups when the open ones fill the relay.
func TestGroupsGrowthBounded(t *testing.T) {
	key := "chat-key-0123456789abcdef"
	srv := relaytest.New(t, func(c *relay.Config) { c.Limits.Exempt = nil }) // loopback counts as clients' addresses
	s, err := New(srv, Config{Apps: map[string]string{"chat": key}, MaxTotal: 40, MaxBytes: 1 << 20, PageBytes: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, srv)
	t.Cleanup(func() { srv.Close(); s.Close() })
	base := "http://" + relaytest.Addr(srv)
	big := func(i int) string { // 62 KB, each of its own invented application
		return fmt.Sprintf(`{"AppID":"app-%d","Name":"%s"}`, i, strings.Repeat("x", 62_000))
	}

	// One address creates 30 groups a minute (the default), then 429.
	var first string
	for i := range 31 {
		code, _, body := relaytest.HTTPFrom(t, "127.0.0.2", "POST", base+"/group", fmt.Sprintf(`{"AppID":"small-%d"}`, i))
		switch {
		case i < 30 && code != 201:
			t.Fatalf("creation %d from one address: %d %q", i, code, body)
		case i == 30 && code != 429:
			t.Fatalf("creation 31 within a minute from one address: %d %q, want 429", code, body)
		case i == 0:
			_ = json.Unmarshal([]byte(body), &first)
		}
	}
	refresh := fmt.Sprintf(`{"ID":%q,"AppID":"small-0"}`, first)
	if code, _, body := relaytest.HTTPFrom(t, "127.0.0.2", "POST", base+"/group", refresh); code != 201 {
		t.Errorf("refreshing a group from an address out of creations: %d %q (a refresh is not a creation)", code, body)
	}

	// 62 KB groups from other addresses: the bytes bound (1 MiB) stops them.
	stored := 0
	for i := range 30 {
		code, h, body := relaytest.HTTPFrom(t, fmt.Sprintf("127.0.1.%d", i%10+1), "POST", base+"/group", big(i))
		if code == 503 {
			if h.Get("Retry-After") == "" || !strings.Contains(body, `"error"`) {
				t.Errorf("a full relay's answer: %d %v %q, want Retry-After and a JSON error", code, h, body)
			}
			break
		}
		if code != 201 {
			t.Fatalf("62 KB group %d: %d %q", i, code, body)
		}
		stored++
	}
	if n := relaytest.Metric(t, srv, "meetpoint_groups_bytes"); stored == 0 || stored >= 30 || n > 1<<20 {
		t.Fatalf("%d of 30 62 KB groups stored, %v bytes: want the 1 MiB bound to stop them", stored, n)
	}
	// The count bound (40): small groups fill what is left.
	for i := 0; ; i++ {
		code, _, body := relaytest.HTTPFrom(t, fmt.Sprintf("127.0.2.%d", i%20+1), "POST", base+"/group", fmt.Sprintf(`{"AppID":"fill-%d"}`, i))
		if code == 503 {
			break
		}
		if code != 201 || i > 40 {
			t.Fatalf("filling up to 40 groups: group %d: %d %q", i, code, body)
		}
	}
	if n := len(s.ids()); n != 40 {
		t.Errorf("%d groups stored, want the bound, 40", n)
	}
	create(t, base, babbleGroup, "Authorization", "Bearer "+key) // a registered app still fits

	// The open listing comes in pages of at most 256 KiB and 100 groups;
	// following the Links reads every open group once.
	seen := map[string]bool{}
	next := base + "/groups"
	for pages := 0; next != ""; pages++ {
		code, h, body := relaytest.HTTP(t, "GET", next, "")
		var page map[string]Group
		if code != 200 || json.Unmarshal([]byte(body), &page) != nil || len(body) > 256<<10+64_000 || len(page) > 100 || pages > 40 {
			t.Fatalf("page %d: %d, %d bytes, %d groups", pages, code, len(body), len(page))
		}
		for id := range page {
			if seen[id] {
				t.Fatalf("group %s on two pages", id)
			}
			seen[id] = true
		}
		next = ""
		if l := h.Get("Link"); l != "" {
			next = base + strings.TrimSuffix(strings.TrimPrefix(l, "<"), `>; rel="next"`)
		}
	}
	if len(seen) != 40 {
		t.Errorf("the pages listed %d groups, want the 40 open ones", len(seen))
	}
	for reason, want := range map[string]float64{"rate": 1, "full": 2} {
		if n := relaytest.Metric(t, srv, `meetpoint_groups_rejected_total{reason="`+reason+`"}`); n != want {
			t.Errorf("rejected{reason=%q} %v, want %v", reason, n, want)
		}
	}
}

// TestGroupsErrorsAndBounds: real status codes where Disco answers 200 or
// 500, each counted.
func TestGroupsErrorsAndBounds(t *testing.T) {
	s, base, srv := start(t, Config{MaxBody: 2048, MaxGroups: 2, MaxPeers: 2})
	for _, c := range []struct {
		body string
		want int
	}{
		{`{"Name":`, 400},
		{`{"Name":"no app"}`, 400},
		{`{"AppID":"a","TTL":-1}`, 400},
		{`{"AppID":"a","TTL":9223372037}`, 400}, // seconds: overflows as a Duration
		{`{"AppID":"a","ID":"a/b"}`, 400},       // no /groups/{id} reaches it
		{`{"AppID":"a","ID":".."}`, 400},
		{`{"AppID":"a","ID":"` + strings.Repeat("i", 129) + `"}`, 400},
		{`{"AppID":"` + strings.Repeat("a", 257) + `"}`, 400},
		{`{"AppID":"a","Peers":[{},{},{}]}`, 413},
		{`{"AppID":"a","Name":"` + strings.Repeat("x", 4096) + `"}`, 413},
	} {
		if code, _, body := relaytest.HTTP(t, "POST", base+"/group", c.body); code != c.want || !strings.Contains(body, `"error"`) {
			t.Errorf("POST %.40q: %d %q, want %d with a JSON error", c.body, code, body, c.want)
		}
	}
	for i := range 2 {
		if code, _, _ := relaytest.HTTP(t, "POST", base+"/group", fmt.Sprintf(`{"AppID":"a","Name":"g%d"}`, i)); code != 201 {
			t.Fatalf("group %d: %d", i, code)
		}
	}
	if code, _, _ := relaytest.HTTP(t, "POST", base+"/group", `{"AppID":"a","Name":"one too many"}`); code != 429 {
		t.Errorf("over MaxGroups: %d, want 429", code)
	}
	if n := len(s.ids()); n != 2 {
		t.Errorf("%d groups stored, want 2", n)
	}
	for name, want := range map[string]float64{`meetpoint_groups_rejected_total{reason="bad_request"}`: 8,
		`meetpoint_groups_rejected_total{reason="too_large"}`: 2, `meetpoint_groups_rejected_total{reason="limit"}`: 1, "meetpoint_groups": 2} {
		if got := relaytest.Metric(t, srv, name); got != want {
			t.Errorf("/metrics: %s %v, want %v", name, got, want)
		}
	}
}

// TestGroupsRealms: a registered application's groups are reached only
// with its key; with AppsOnly, unregistered applications are refused.
func TestGroupsRealms(t *testing.T) {
	key := "chat-key-0123456789abcdef"
	_, base, _ := start(t, Config{Apps: map[string]string{"chat": key}})
	if code, _, _ := relaytest.HTTP(t, "POST", base+"/group", babbleGroup); code != 401 {
		t.Errorf("a registered app's group without its key: %d, want 401", code)
	}
	code, _, body := relaytest.HTTP(t, "POST", base+"/group", babbleGroup, "Authorization", "Bearer "+key)
	var id string
	if code != 201 || json.Unmarshal([]byte(body), &id) != nil {
		t.Fatalf("with the key: %d %q", code, body)
	}
	if code, _, _ := relaytest.HTTP(t, "GET", base+"/groups?app-id=chat", ""); code != 401 {
		t.Errorf("listing a registered app without its key: %d, want 401", code)
	}
	if code, _, body := relaytest.HTTP(t, "GET", base+"/groups?app-id=chat", "", "Authorization", "Bearer "+key); code != 200 || !strings.Contains(body, id) {
		t.Errorf("listing with the key: %d %q", code, body)
	}
	// The scheme in any case (RFC 7235): "bearer KEY" is the key too,
	// not a wrong one (which would count toward a ban).
	if code, _, body := relaytest.HTTP(t, "GET", base+"/groups?app-id=chat", "", "Authorization", "bearer "+key); code != 200 || !strings.Contains(body, id) {
		t.Errorf(`listing with "bearer KEY": %d %q`, code, body)
	}
	if code, _, body := relaytest.HTTP(t, "GET", base+"/groups", ""); code != 200 || strings.Contains(body, id) {
		t.Errorf("the open listing shows a registered app's group: %d %q", code, body)
	}
	if code, _, _ := relaytest.HTTP(t, "GET", base+"/groups/"+id, ""); code != 401 {
		t.Errorf("reading a registered app's group without its key: %d, want 401", code)
	}
	// The app key updates and deletes any of its groups.
	if code, _, _ := relaytest.HTTP(t, "DELETE", base+"/groups/"+id, "", "Authorization", "Bearer "+key); code != 200 {
		t.Errorf("DELETE with the app key: %d", code)
	}
	_, base2, _ := start(t, Config{Apps: map[string]string{"chat": key}, AppsOnly: true})
	if code, _, _ := relaytest.HTTP(t, "POST", base2+"/group", `{"AppID":"stranger"}`); code != 403 {
		t.Errorf("an unregistered app with AppsOnly: %d, want 403", code)
	}
}

// TestGroupsTTLAndPersistence: groups expire after their TTL (the
// default, or their own, bounded), PATCH refreshes it, and groups survive
// a restart with their remaining TTL.
func TestGroupsTTLAndPersistence(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	cfg := Config{DataDir: dir, TTL: time.Minute, MaxTTL: time.Hour, SweepEvery: 10 * time.Millisecond, nowForTests: clk.now}
	s, base, srv := start(t, cfg)
	short := create(t, base, `{"AppID":"a","Name":"default ttl"}`)
	long := create(t, base, `{"AppID":"a","Name":"own ttl","TTL":1800}`)
	if code, _, _ := relaytest.HTTP(t, "POST", base+"/group", `{"AppID":"a","TTL":7200}`); code != 400 {
		t.Errorf("a TTL over MaxTTL: %d, want 400", code)
	}
	clk.add(50 * time.Second)
	if code, _, _ := relaytest.HTTP(t, "PATCH", base+"/groups/"+short, `{"AppID":"a","Name":"refreshed"}`); code != 200 {
		t.Fatalf("PATCH: %d", code)
	}
	clk.add(50 * time.Second) // 100 s after creation, 50 s after the refresh
	relaytest.WaitFor(t, func() bool { return len(s.ids()) == 2 }, "nothing swept yet")
	if code, _, _ := relaytest.HTTP(t, "GET", base+"/groups/"+short, ""); code != 200 {
		t.Errorf("the refreshed group expired: %d", code)
	}
	clk.add(20 * time.Second)
	relaytest.WaitFor(t, func() bool { return len(s.ids()) == 1 }, "the default-TTL group swept")

	// Restart on the same data dir.
	srv.Close()
	s.Close()
	clk.add(10 * time.Minute) // 30 min TTL: 20 min left
	s2, base2, _ := start(t, cfg)
	if code, _, body := relaytest.HTTP(t, "GET", base2+"/groups/"+long, ""); code != 200 || !strings.Contains(body, "own ttl") {
		t.Fatalf("after a restart: %d %q", code, body)
	}
	clk.add(21 * time.Minute)
	relaytest.WaitFor(t, func() bool { return len(s2.ids()) == 0 }, "the restored group expires with its remaining TTL")
	if code, _, _ := relaytest.HTTP(t, "GET", base2+"/groups/"+long, ""); code != 404 {
		t.Errorf("expired group after restart: %d, want 404", code)
	}
}

// TestGroupsUnreadableFileSetAside: a groups.db that bbolt cannot read
// (damaged storage, a partial copy) does not keep the relay from starting
// (serve exits 2 on it, which systemd is told never to restart): the
// groups are soft state, so the file is set aside as groups.db.corrupt,
// its bytes kept, and the groups start empty and are kept again.
func TestGroupsUnreadableFileSetAside(t *testing.T) {
	dir := t.TempDir()
	garbage := []byte("not a bbolt database\n")
	if err := os.WriteFile(filepath.Join(dir, "groups.db"), garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{DataDir: dir}
	srv := relaytest.New(t, nil)
	s, err := New(srv, cfg)
	if err != nil {
		t.Fatalf("an unreadable groups.db: %v, want a start without it", err)
	}
	relaytest.Start(t, srv)
	t.Cleanup(func() { srv.Close(); s.Close() })
	if b, err := os.ReadFile(filepath.Join(dir, "groups.db.corrupt")); err != nil || !bytes.Equal(b, garbage) {
		t.Fatalf("the unreadable file set aside: %q %v", b, err)
	}
	id := create(t, "http://"+relaytest.Addr(srv), `{"AppID":"a","Name":"after"}`)
	srv.Close()
	s.Close()
	_, base, _ := start(t, cfg)
	if code, _, body := relaytest.HTTP(t, "GET", base+"/groups/"+id, ""); code != 200 || !strings.Contains(body, "after") {
		t.Fatalf("a group kept after the file was set aside, after a restart: %d %q", code, body)
	}
}

// TestGroupsDamagedFreelistSetAside: a groups.db whose freelist pages were
// zeroed (meta checksums do not cover them) made bbolt panic inside Open:
// the relay died at every start, and systemd restarted it in a loop. Now
// the panic is taken as a damaged file, which is set aside like any
// unreadable one.
func TestGroupsDamagedFreelistSetAside(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir}
	svc, base, rs := start(t, cfg)
	create(t, base, `{"AppID":"a","Name":"before"}`)
	rs.Close()
	svc.Close()
	path := filepath.Join(dir, "groups.db")
	f, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Each meta page (0 and 1): a 16-byte page header, then magic,
	// version, page size, flags (4 bytes each), the root bucket (16
	// bytes), the freelist's page id.
	ps := int(binary.LittleEndian.Uint32(f[16+8:]))
	for m := range 2 {
		fl := int(binary.LittleEndian.Uint64(f[m*ps+16+32:]))
		if fl < 2 || (fl+1)*ps > len(f) {
			t.Fatalf("meta %d names freelist page %d of a %d-byte file", m, fl, len(f))
		}
		clear(f[fl*ps : (fl+1)*ps])
	}
	startsWithout(t, cfg, f, "a zeroed freelist")
}

// startsWithout writes damaged as cfg's groups.db and starts a relay on it:
// it must start, the file set aside whole as groups.db.corrupt, and keep
// a group created after.
func startsWithout(t *testing.T, cfg Config, damaged []byte, what string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(cfg.DataDir, "groups.db"), damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := relaytest.New(t, nil)
	s, err := New(srv, cfg)
	if err != nil {
		t.Fatalf("a groups.db with %s: %v, want a start without it", what, err)
	}
	relaytest.Start(t, srv)
	t.Cleanup(func() { srv.Close(); s.Close() })
	if b, err := os.ReadFile(filepath.Join(cfg.DataDir, "groups.db.corrupt")); err != nil || !bytes.Equal(b, damaged) {
		t.Fatalf("the damaged file set aside: %d bytes, %v", len(b), err)
	}
	base := "http://" + relaytest.Addr(srv)
	id := create(t, base, `{"AppID":"a","Name":"after"}`)
	if code, _, body := relaytest.HTTP(t, "GET", base+"/groups/"+id, ""); code != 200 || !strings.Contains(body, "after") {
		t.Fatalf("a group created after the file was set aside: %d %q", code, body)
	}
}

// TestGroupsDamagedLeafSetAside: a groups.db whose leaf pages were damaged
// (checksums cover only the meta pages) opens, and bbolt panicked while
// openLocal read the groups back: the relay died at every start (a
// restart loop under systemd) where docs/discovery.md promises that a file
// bbolt cannot read is set aside and the relay starts without its groups.
func TestGroupsDamagedLeafSetAside(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir}
	svc, base, rs := start(t, cfg)
	for i := range 40 {
		create(t, base, fmt.Sprintf(`{"AppID":"a","Name":"before %d %s"}`, i, strings.Repeat("x", 400)))
	}
	rs.Close()
	svc.Close()
	path := filepath.Join(dir, "groups.db")
	f, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A page: its id (8 bytes), flags (2; 0x02 a leaf), count (2), overflow
	// (4), then its elements: flags, pos, ksize, vsize (4 bytes each). Each
	// leaf's first key is made to run far past the file.
	ps := int(binary.LittleEndian.Uint32(f[16+8:]))
	leaves := 0
	for p := 2; (p+1)*ps <= len(f); p++ {
		h := f[p*ps:]
		if binary.LittleEndian.Uint16(h[8:]) == 0x02 && binary.LittleEndian.Uint16(h[10:]) > 0 {
			binary.LittleEndian.PutUint32(h[16+8:], 0x7ffffff0)
			leaves++
		}
	}
	if leaves == 0 {
		t.Fatalf("no leaf page in a %d-byte groups.db", len(f))
	}
	startsWithout(t, cfg, f, "damaged leaves")
}

// TestLoadApps: the apps file's format and its errors.
func TestLoadApps(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := dir + "/apps"
		if err := writeFile(p, s); err != nil {
			t.Fatal(err)
		}
		return p
	}
	apps, err := LoadApps(write("# apps\nchat 0123456789abcdef0123\n\nboard fedcba9876543210fedc\n"))
	if err != nil || len(apps) != 2 || apps["chat"] != "0123456789abcdef0123" {
		t.Fatalf("%v %v", apps, err)
	}
	for _, bad := range []string{"chat\n", "chat short\n", "a 0123456789abcdef\na 0123456789abcdef\n"} {
		if _, err := LoadApps(write(bad)); err == nil || !strings.Contains(err.Error(), "apps:") {
			t.Errorf("%q: %v, want an error naming the file and line", bad, err)
		}
	}
}

// TestLoadAppsRefusesASharedKey: an application is found by its key alone
// in an /app/KEY/ URL (groups, signalling) and as a TURN credential, so
// two applications with one key would be picked between at random (map
// order) on every request: groups created through the URL went to either
// application. The apps file refuses it.
func TestLoadAppsRefusesASharedKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "apps")
	if err := writeFile(p, "chat 0123456789abcdef0123\nboard 0123456789abcdef0123\n"); err != nil {
		t.Fatal(err)
	}
	if apps, err := LoadApps(p); err == nil || !strings.Contains(err.Error(), "apps:2:") {
		t.Fatalf("two applications with one key: %v %v, want an error naming line 2", apps, err)
	}
}

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o600) }

// ids returns the stored group ids, sorted (tests).
func (s *Service) ids() []string {
	st := s.st.(*localStore)
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]string, 0, len(st.groups))
	for id := range st.groups {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// TestGroupsAppCountsFollowTheGroup: an expired group the sweep has not
// removed yet may be re-created by another application; the group then
// counts for the new application, not for both. (Counted for both, an
// anonymous client could push any open application to MaxGroups for good
// by re-creating its expired groups under another name.) Once every group
// is gone, no application is counted.
func TestGroupsAppCountsFollowTheGroup(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	s, base, _ := start(t, Config{MaxGroups: 3, TTL: time.Minute, SweepEvery: time.Hour, nowForTests: clk.now})
	for i := range 3 {
		create(t, base, fmt.Sprintf(`{"ID":"g%d","AppID":"victim"}`, i))
	}
	clk.add(2 * time.Minute) // expired, not swept
	for i := range 3 {
		create(t, base, fmt.Sprintf(`{"ID":"g%d","AppID":"other"}`, i))
	}
	create(t, base, `{"AppID":"victim","Name":"mine"}`) // fails (429) if the moved groups still count
	clk.add(2 * time.Minute)
	s.sweep()
	ls := s.st.(*localStore)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if len(ls.groups) != 0 || len(ls.perApp) != 0 || ls.bytes != 0 {
		t.Fatalf("after every group expired: %d groups, counts %v, %d bytes", len(ls.groups), ls.perApp, ls.bytes)
	}
}

// TestGroupsDiskFailureChangesNothing: a group the disk store refuses is
// answered 503 and not kept in memory either (it would be served until a
// restart lost it).
func TestGroupsDiskFailureChangesNothing(t *testing.T) {
	s, base, srv := start(t, Config{DataDir: t.TempDir()})
	if err := s.st.(*localStore).db.Close(); err != nil { // every write fails now
		t.Fatal(err)
	}
	if code, _, body := relaytest.HTTP(t, "POST", base+"/group", `{"AppID":"a","Name":"lost"}`); code != 503 {
		t.Fatalf("a group the disk refused: %d %s, want 503", code, body)
	}
	if n := len(s.ids()); n != 0 || relaytest.Metric(t, srv, "meetpoint_groups") != 0 {
		t.Fatalf("a group the disk refused is kept in memory (%d groups)", n)
	}
}

// TestGroupsDiskFailureOnDeleteChangesNothing: a delete the disk store
// refuses is answered 503 and the group stays in memory too (dropped
// there, it would come back from the disk at the next start).
func TestGroupsDiskFailureOnDeleteChangesNothing(t *testing.T) {
	s, base, _ := start(t, Config{DataDir: t.TempDir()})
	id := create(t, base, `{"AppID":"a","Name":"kept"}`)
	if err := s.st.(*localStore).db.Close(); err != nil { // every write fails now
		t.Fatal(err)
	}
	if code, _, body := relaytest.HTTP(t, "DELETE", base+"/groups/"+id, ""); code != 503 {
		t.Fatalf("a delete the disk refused: %d %s, want 503", code, body)
	}
	if code, _, _ := relaytest.HTTP(t, "GET", base+"/groups/"+id, ""); code != 200 {
		t.Fatalf("after a refused delete the group answers %d, want 200 (memory as the disk)", code)
	}
}

// TestGroupsKeyGuessesBanned: every secret the groups API refuses — a
// key in an /app/KEY/ URL, an application's bearer key, a group's owner
// secret — counts toward the address's ban as a refused relay token
// does; a request that brings no secret does not.
func TestGroupsKeyGuessesBanned(t *testing.T) {
	const key = "0123456789abcdef0123"
	srv := relaytest.New(t, func(c *relay.Config) {
		c.Limits.Exempt = nil // 127.0.0.2 is an ordinary client
		c.Limits.AuthFailuresPerIP = 3
	})
	s, err := New(srv, Config{Apps: map[string]string{"reg": key}, OwnerSecrets: true})
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, srv)
	t.Cleanup(func() { srv.Close(); s.Close() })
	base := "http://" + relaytest.Addr(srv)
	from := func(method, url string, hdr ...string) int { // 0: the connection refused
		return relaytest.StatusFrom("127.0.0.2", method, url, hdr...)
	}
	id := create(t, base, `{"AppID":"open","Name":"mine"}`) // from loopback's 127.0.0.1
	// No secret: refused, never counted.
	for range 5 {
		if code := from("DELETE", base+"/groups/"+id); code != 403 && code != 409 {
			t.Fatalf("a delete without the owner secret: %d", code)
		}
	}
	for _, c := range []struct {
		method, url string
		hdr         []string
	}{
		{"GET", base + "/app/" + strings.Repeat("x", 20) + "/groups", nil},
		{"GET", base + "/groups?app-id=reg", []string{"Authorization", "Bearer " + strings.Repeat("y", 20)}},
		{"DELETE", base + "/groups/" + id, []string{SecretHeader, "not-the-secret"}},
	} {
		if code := from(c.method, c.url, c.hdr...); code < 400 {
			t.Fatalf("%s %s with a wrong secret: %d", c.method, c.url, code)
		}
	}
	if code := from("GET", base+"/groups?app-id=reg", "Authorization", "Bearer "+key); code != 200 {
		t.Fatalf("the right key after three guesses (the ban is past 3): %d, want 200", code)
	}
	from("GET", base+"/groups?app-id=reg", "Authorization", "Bearer "+strings.Repeat("z", 20))
	if code := from("GET", base+"/groups?app-id=reg", "Authorization", "Bearer "+key); code == 200 {
		t.Fatal("four wrong secrets from one address: the right key is still served")
	}
	if n := relaytest.Metric(t, srv, "meetpoint_bans_total"); n != 1 {
		t.Errorf("meetpoint_bans_total %v, want 1", n)
	}
}

// TestGroupsTooLargeNamesTheLimit: a body over the relay's --http-max-body
// (smaller than the groups API's own MaxBody) is refused 413 with the
// limit that refused it, not the API's own: the client learns how much
// it may send.
func TestGroupsTooLargeNamesTheLimit(t *testing.T) {
	srv := relaytest.New(t, func(c *relay.Config) { c.HTTPMaxBody = 1000 })
	s, err := New(srv, Config{MaxBody: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, srv)
	t.Cleanup(func() { srv.Close(); s.Close() })
	base := "http://" + relaytest.Addr(srv)
	body := `{"AppID":"a","Name":"` + strings.Repeat("x", 5000) + `"}`
	code, _, got := relaytest.HTTP(t, "POST", base+"/group", body)
	if code != 413 || !strings.Contains(got, "body over 1000 bytes") {
		t.Errorf("POST of 5 kB under --http-max-body 1000: %d %q, want 413 naming 1000 bytes", code, got)
	}
	code, _, got = relaytest.HTTP(t, "POST", base+"/group", `{"AppID":"a","Name":"`+strings.Repeat("x", 900)+`"}`)
	if code != 201 {
		t.Errorf("POST under both limits: %d %q, want 201", code, got)
	}
}

// TestGroupsSweepKeepsARecreatedGroupOnDisk: the sweep drops an expired
// group from memory, releases the lock, then deletes it from groups.db;
// a heartbeat re-POST of that group in between (its client was a little
// late) creates it afresh, and its write may reach bbolt before the
// sweep's delete. The delete then erased the new group from disk while it
// lived on in memory: the next restart lost it. Here the test holds
// bbolt's writer lock so that the sweep waits in its delete, and writes
// the re-created group as put does, ahead of it.
func TestGroupsSweepKeepsARecreatedGroupOnDisk(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	log := slog.New(slog.DiscardHandler)
	st, err := openLocal(dir, now, 256, log)
	if err != nil {
		t.Fatal(err)
	}
	g := Group{ID: "g", AppID: "a"}
	if err := st.put(&record{Group: g, Expires: now.Add(-time.Second).UnixMilli()}, nil, bounds{}, now); err != nil {
		t.Fatal(err)
	}
	tx, err := st.db.Begin(true) // the sweep's delete waits for it
	if err != nil {
		t.Fatal(err)
	}
	swept := make(chan struct{})
	go func() { st.sweep(now); close(swept) }()
	relaytest.WaitFor(t, func() bool { r, _ := st.get("g"); return r == nil }, "the sweep drops the expired group")
	// The heartbeat: put finds no group and stores a new one (memory,
	// and the disk ahead of the sweep's delete).
	rec := &record{Group: g, Expires: now.Add(time.Hour).UnixMilli()}
	v, _ := json.Marshal(rec)
	rec.size = int64(len(v))
	if err := tx.Bucket(bucket).Put([]byte("g"), v); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	st.groups["g"], st.bytes = rec, st.bytes+rec.size
	st.perApp["a"]++
	st.mu.Unlock()
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	<-swept
	st.close()
	st2, err := openLocal(dir, now, 256, log)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.close()
	if r, _ := st2.get("g"); r == nil {
		t.Fatal("a group re-created while the sweep deleted its expired predecessor is gone after a restart")
	}
}

// TestGroupsLinkKeepsTheURLsEscapes: a listing's Link names the next page
// with the path as the URL carries it: an application key with a byte a
// path carries only escaped ('%', '?', '#', '>': the apps file takes any
// key without spaces) stays escaped, so the Link reaches the application's
// next page. Unescaped, '?' and '#' cut the path short and '%' makes an
// escape of what follows: the Link led to a 404.
func TestGroupsLinkKeepsTheURLsEscapes(t *testing.T) {
	key := "ab%cd?ef#gh>0123456789"
	_, base, _ := start(t, Config{Apps: map[string]string{"chat": key}})
	app := base + "/app/" + url.PathEscape(key)
	for range 3 {
		create(t, app, `{"Name":"x"}`)
	}
	pages := 0
	for next := app + "/groups?limit=1"; next != ""; pages++ {
		code, h, body := relaytest.HTTP(t, "GET", next, "")
		if code != 200 || pages > 3 {
			t.Fatalf("page %d (%s): %d %s", pages, next, code, body)
		}
		next = ""
		if l := h.Get("Link"); l != "" {
			next = base + strings.TrimSuffix(strings.TrimPrefix(l, "<"), `>; rel="next"`)
		}
	}
	if pages != 3 {
		t.Errorf("%d pages of one group, want 3", pages)
	}
}

// TestGroupsAppsOnlyRefusesTheOpenListing: with AppsOnly, unregistered
// applications' groups are refused everywhere, the open listing too.
// Groups kept from before AppsOnly (the data dir, or a fleet's Redis that
// nodes without it write) were listed to anyone by GET /groups, while
// reading, updating or deleting each was 403.
func TestGroupsAppsOnlyRefusesTheOpenListing(t *testing.T) {
	key := "chat-key-0123456789abcdef"
	cfg := Config{DataDir: t.TempDir(), Apps: map[string]string{"chat": key}}
	s, base, srv := start(t, cfg)
	id := create(t, base, `{"AppID":"stranger","Name":"kept"}`)
	srv.Close()
	s.Close()
	cfg.AppsOnly = true
	_, base, _ = start(t, cfg)
	if code, _, _ := relaytest.HTTP(t, "GET", base+"/groups/"+id, ""); code != 403 {
		t.Fatalf("reading an unregistered app's group with AppsOnly: %d, want 403", code)
	}
	for _, hdr := range [][]string{nil, {"Authorization", "Bearer " + key}} {
		if code, _, body := relaytest.HTTP(t, "GET", base+"/groups", "", hdr...); code != 403 || strings.Contains(body, id) {
			t.Errorf("the open listing with AppsOnly (%v): %d %q, want 403", hdr, code, body)
		}
	}
	if code, _, _ := relaytest.HTTP(t, "GET", base+"/groups?app-id=chat", "", "Authorization", "Bearer "+key); code != 200 {
		t.Errorf("a registered app's listing with AppsOnly: %d, want 200", code)
	}
}
