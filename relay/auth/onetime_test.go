package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// ends authenticates n ends with token and nonce at once.
func ends(t *testing.T, o *OneTime, token, nonce string, n int) []relay.AuthResult {
	t.Helper()
	out := make([]relay.AuthResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], _ = ask1(t, o, token, nonce)
		}()
	}
	wg.Wait()
	return out
}

func ask1(t *testing.T, o *OneTime, token, nonce string) (relay.AuthResult, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := make(chan relay.AuthResult, 1)
	var subject string
	var mu sync.Mutex
	o.Authenticate(ctx, relay.AuthRequest{Token: token, Nonce: nonce, SetSubject: func(s string) { mu.Lock(); subject = s; mu.Unlock() }},
		func(r relay.AuthResult) { res <- r })
	r := <-res
	mu.Lock()
	defer mu.Unlock()
	return r, subject
}

func count(rs []relay.AuthResult, want relay.AuthResult) int {
	n := 0
	for _, r := range rs {
		if r == want {
			n++
		}
	}
	return n
}

// TestOneTimeSemantics: both ends of one tunnel, never a third, never a
// replay, never after expiry; the web-app time format read exactly.
func TestOneTimeSemantics(t *testing.T) {
	store := NewMemStore()
	o := NewOneTime(store, 0)
	ctx := context.Background()
	tok, _, err := Mint(ctx, store, "alice", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rs := ends(t, o, tok, "room", 3) // two ends and a third, at once
	if count(rs, relay.AuthNoError) != 2 || count(rs, relay.AuthFailed) != 1 {
		t.Fatalf("three ends at once: %v, want two accepted", rs)
	}
	if r, _ := ask1(t, o, tok, "room"); r != relay.AuthFailed {
		t.Fatalf("a replay after the tunnel: %v", r)
	}
	tok2, _, _ := Mint(ctx, store, "bob", 20*time.Second)
	if r, s := ask1(t, o, tok2, "a"); r != relay.AuthNoError || s != "bob" {
		t.Fatalf("first end: %v %q", r, s)
	}
	if r, _ := ask1(t, o, tok2, "b"); r != relay.AuthFailed {
		t.Fatalf("a second end on another nonce (another tunnel): %v", r)
	}
	if r, _ := ask1(t, o, "never-minted", ""); r != relay.AuthFailed {
		t.Fatalf("unknown: %v", r)
	}

	// The web-app format: day:month:year:hour:minute:second, UTC.
	minted := time.Date(2026, 12, 1, 10, 31, 5, 0, time.UTC)
	put := func(tok, val string) { store.Put(ctx, tok, []byte(val), time.Hour) }
	for _, c := range []struct {
		name, val string
		age       time.Duration
		want      relay.AuthResult
	}{
		{"19 s old", `{"user":"u","time":"01:12:2026:10:31:05"}`, 19 * time.Second, relay.AuthNoError},
		{"21 s old", `{"user":"u","time":"01:12:2026:10:31:05"}`, 21 * time.Second, relay.AuthFailed},
		{"month and day not swapped", `{"user":"u","time":"12:01:2026:10:31:05"}`, 19 * time.Second, relay.AuthFailed},
		{"exp in the future", fmt.Sprintf(`{"user":"u","exp":%d}`, minted.Add(time.Minute).Unix()), 30 * time.Second, relay.AuthNoError},
		{"exp passed", fmt.Sprintf(`{"user":"u","exp":%d}`, minted.Unix()), time.Second, relay.AuthFailed},
		{"from the future", `{"user":"u","time":"01:12:2026:10:32:05"}`, 0, relay.AuthFailed},
		{"no user", `{"time":"01:12:2026:10:31:05"}`, time.Second, relay.AuthFailed},
		{"both time and exp", fmt.Sprintf(`{"user":"u","time":"01:12:2026:10:31:05","exp":%d}`, minted.Unix()+60), time.Second, relay.AuthFailed},
		{"not JSON", `alice`, time.Second, relay.AuthFailed},
		{"bad time", `{"user":"u","time":"2026-12-01T10:31:05Z"}`, time.Second, relay.AuthFailed},
	} {
		o.now = func() time.Time { return minted.Add(c.age) }
		tok := "fmt-" + c.name
		put(tok, c.val)
		if r, _ := ask1(t, o, tok, ""); r != c.want {
			t.Errorf("%s: %v, want %v", c.name, r, c.want)
		}
	}
	// The second end after the token expired.
	o.now = func() time.Time { return minted.Add(10 * time.Second) }
	put("late-partner", `{"user":"u","time":"01:12:2026:10:31:05"}`)
	if r, _ := ask1(t, o, "late-partner", "n"); r != relay.AuthNoError {
		t.Fatal(r)
	}
	o.now = func() time.Time { return minted.Add(25 * time.Second) }
	if r, _ := ask1(t, o, "late-partner", "n"); r != relay.AuthFailed {
		t.Fatalf("a second end after expiry: %v", r)
	}
	for _, res := range []string{"ok", "partner", "unknown", "expired", "replayed", "malformed"} {
		if o.results[res].Get() == 0 {
			t.Errorf("result %s never counted", res)
		}
	}
}

// TestOneTimeRedis: tokens minted into Redis under a prefix, consumed
// in one atomic take (a Lua script); Redis down is AuthenticationErrorProxyError, and it
// recovers by itself when Redis is back.
func TestOneTimeRedis(t *testing.T) {
	addr, stop := testutil.Redis(t, 0)
	store, maxAge, err := ParseRedisAuth("redis://" + addr + "/0?prefix=mp:&max-age=15s")
	if err != nil || maxAge != 15*time.Second {
		t.Fatal(err, maxAge)
	}
	defer store.Close()
	o := NewOneTime(store, maxAge)
	ctx := context.Background()
	tok, _, err := Mint(ctx, store, "carol", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := store.rdb.Exists(ctx, "mp:"+tok).Result(); n != 1 {
		t.Fatal("the token is not under its prefix")
	}
	rs := ends(t, o, tok, "", 3)
	if count(rs, relay.AuthNoError) != 2 || count(rs, relay.AuthFailed) != 1 {
		t.Fatalf("three ends at once: %v, want two accepted", rs)
	}
	// Two relays sharing the Redis: the first end on one, its partner on
	// the other, a third on either refused.
	o2 := NewOneTime(store, maxAge)
	tok3, _, _ := Mint(ctx, store, "gina", 20*time.Second)
	if r, s := ask1(t, o, tok3, "n"); r != relay.AuthNoError || s != "gina" {
		t.Fatalf("first end on relay 1: %v %q", r, s)
	}
	if r, s := ask1(t, o2, tok3, "n"); r != relay.AuthNoError || s != "gina" {
		t.Fatalf("partner on relay 2: %v %q", r, s)
	}
	for _, x := range []*OneTime{o, o2} {
		if r, _ := ask1(t, x, tok3, "n"); r != relay.AuthFailed {
			t.Fatalf("a third end: %v", r)
		}
	}
	// A backend minting with redis-cli in the web-app format.
	now := time.Now().UTC().Format("02:01:2006:15:04:05")
	store.rdb.Set(ctx, "mp:from-django", fmt.Sprintf(`{"user": "dave", "time": %q}`, now), 20*time.Second)
	if r, s := ask1(t, o, "from-django", ""); r != relay.AuthNoError || s != "dave" {
		t.Fatalf("web-app token: %v %q", r, s)
	}
	stop()
	if r, _ := ask1(t, o, "anything", ""); r != relay.AuthProxyError {
		t.Fatalf("Redis down: %v, want ProxyError", r)
	}
	port, _ := strconv.Atoi(addr[len("127.0.0.1:"):])
	testutil.Redis(t, port)
	tok, _, err = Mint(ctx, store, "erin", 20*time.Second)
	if err != nil {
		t.Fatalf("mint after Redis came back: %v", err)
	}
	if r, _ := ask1(t, o, tok, ""); r != relay.AuthNoError {
		t.Fatalf("after Redis came back: %v", r)
	}
	if o.results["store_error"].Get() == 0 {
		t.Fatal("store errors not counted")
	}
}

// TestOneTimeWhole: a token used outside a tunnel (AuthRequest.Whole: an
// events subscription, TURN credentials) is spent whole — no partner's use
// is left for a second subscription or a tunnel end — and a token one
// tunnel end took already is not good for a whole use; in memory and in
// Redis alike.
func TestOneTimeWhole(t *testing.T) {
	stores := map[string]TokenStore{"memory": NewMemStore()}
	if _, err := exec.LookPath("redis-server"); err == nil {
		addr, _ := testutil.Redis(t, 0)
		rs, _, err := ParseRedisAuth("redis://" + addr + "/0")
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		stores["redis"] = rs
	}
	for name, store := range stores {
		o := NewOneTime(store, 0)
		ask := func(tok, nonce string, whole bool) relay.AuthResult {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res := make(chan relay.AuthResult, 1)
			o.Authenticate(ctx, relay.AuthRequest{Token: tok, Nonce: nonce, Whole: whole, SetSubject: func(string) {}},
				func(r relay.AuthResult) { res <- r })
			return <-res
		}
		mint := func() string {
			tok, _, err := Mint(context.Background(), store, "device-7", 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}
		tok := mint()
		for i, c := range []struct {
			nonce string
			whole bool
			want  relay.AuthResult
		}{
			{"", true, relay.AuthNoError}, // a subscription
			{"", true, relay.AuthFailed},  // a second one
			{"", false, relay.AuthFailed}, // a tunnel end with no nonce: the partner slot is gone
		} {
			if r := ask(tok, c.nonce, c.whole); r != c.want {
				t.Errorf("%s: use %d (whole %v): %v, want %v", name, i+1, c.whole, r, c.want)
			}
		}
		tok = mint()
		if r := ask(tok, "n", false); r != relay.AuthNoError {
			t.Fatalf("%s: a tunnel's first end: %v", name, r)
		}
		if r := ask(tok, "n", true); r != relay.AuthFailed {
			t.Errorf("%s: a whole use of a token a tunnel end took: %v, want AuthenticationFailed", name, r)
		}
		if r := ask(tok, "n", false); r != relay.AuthNoError {
			t.Errorf("%s: the tunnel's partner after a refused whole use: %v", name, r)
		}
	}
}

// TestOneTimeFirstEndAgain: the first end of a tunnel taking its token
// again before its partner came — a take retried after its answer was
// lost, a client reconnecting while it waits — was admitted as its own
// partner, and the real partner was then refused as a replay. Now the
// first end's uuid is its own again; the partner (another uuid) is
// admitted once, then nobody; an end with no uuid is never taken for the
// first. In memory and in Redis alike, and in Redis also for a token an
// earlier version marked (no uuid in the marker).
func TestOneTimeFirstEndAgain(t *testing.T) {
	stores := map[string]TokenStore{"memory": NewMemStore()}
	var rs *RedisStore
	if _, err := exec.LookPath("redis-server"); err == nil {
		addr, _ := testutil.Redis(t, 0)
		var err error
		if rs, _, err = ParseRedisAuth("redis://" + addr + "/0?prefix=ft:"); err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		stores["redis"] = rs
	}
	ctx := context.Background()
	const first, partner = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
	for name, store := range stores {
		tok, _, err := Mint(ctx, store, "frank", 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range []struct {
			nonce, uuid string
			want        TakeResult
		}{
			{"n", first, TakeFirst},
			{"n", first, TakeFirst},      // the first end again
			{"m", first, TakeReplayed},   // another nonce: another tunnel
			{"n", partner, TakePartner},  // its partner
			{"n", first, TakeReplayed},   // the tunnel is made: nobody else
			{"n", partner, TakeReplayed}, //
		} {
			if _, res, err := store.Take(ctx, tok, c.nonce, c.uuid, false); err != nil || res != c.want {
				t.Errorf("%s: take %d (nonce %s, uuid %.8s): %v %v, want %v", name, i+1, c.nonce, c.uuid, res, err, c.want)
			}
		}
		tok, _, _ = Mint(ctx, store, "frank", 20*time.Second)
		for i, want := range []TakeResult{TakeFirst, TakePartner, TakeReplayed} { // no uuid: as before
			if _, res, _ := store.Take(ctx, tok, "n", "", false); res != want {
				t.Errorf("%s: uuid-less take %d: %v, want %v", name, i+1, res, want)
			}
		}
	}
	if rs == nil {
		return
	}
	// A marker of an earlier version, its first end taken: the partner is
	// admitted once, and the value comes back whole.
	val := `{"user":"gail","exp":` + strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10) + `}`
	rs.rdb.Set(ctx, "ft:old", "\x00mp|1|1|n"+val, time.Minute)
	for i, want := range []TakeResult{TakePartner, TakeReplayed} {
		got, res, err := rs.Take(ctx, "old", "n", partner, false)
		if err != nil || res != want || res == TakePartner && string(got) != val {
			t.Errorf("an earlier version's marker, take %d: %v %q %v, want %v", i+1, res, got, err, want)
		}
	}
}

// TestOneTimeRedisCluster: --auth redis+cluster://… keeps one-time tokens
// in a real Redis Cluster (every take is one key, so any slot): a token
// admits its two ends and nothing else.
func TestOneTimeRedisCluster(t *testing.T) {
	addrs := testutil.RedisCluster(t, 3)
	store, _, err := ParseRedisAuth("redis+cluster://" + addrs[0] + "?addr=" + addrs[1] + "&prefix=mp:")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if s := store.String(); s != "redis+cluster://"+addrs[0] {
		t.Errorf("the store is shown as %q", s)
	}
	o := NewOneTime(store, 20*time.Second)
	for i := range 4 { // tokens hash to several slots
		tok, _, err := Mint(context.Background(), store, "erin", 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if rs := ends(t, o, tok, "", 3); count(rs, relay.AuthNoError) != 2 || count(rs, relay.AuthFailed) != 1 {
			t.Fatalf("token %d, three ends at once: %v, want two accepted", i, rs)
		}
	}
}

// TestOneTimeRedisLeavesOtherKeysAlone: the token a client presents names
// a Redis key, and with no prefix (the default) any key of a Redis shared
// with the fleet, the groups API or another application. A key that holds
// no token is not a token: refused (malformed), never rewritten (the
// marker of a taken token would corrupt the other owner's value), and a
// key of another type (a set, a hash) is no store outage either — no
// AuthenticationErrorProxyError, no store_error, which would mark the
// store down (/readyz) on a client's made-up token and never count
// toward its ban.
func TestOneTimeRedisLeavesOtherKeysAlone(t *testing.T) {
	addr, _ := testutil.Redis(t, 0)
	store, _, err := ParseRedisAuth("redis://" + addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	o := NewOneTime(store, 0)
	ctx := context.Background()
	others := map[string]string{
		"meetpoint:{nodes}:node:n1": "10.0.0.1:8443",
		"meetpoint:{nodes}:epoch":   "7",
		"app:session":               `{"cart": [1, 2]}`,
	}
	for k, v := range others {
		if err := store.rdb.Set(ctx, k, v, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.rdb.SAdd(ctx, "meetpoint:{nodes}:set", "n1").Err(); err != nil {
		t.Fatal(err)
	}
	if err := store.rdb.HSet(ctx, "app:user:1", "name", "alice").Err(); err != nil {
		t.Fatal(err)
	}
	for k, v := range others {
		if r, _ := ask1(t, o, k, "n"); r != relay.AuthFailed {
			t.Errorf("token %q (a string key holding no token): %v, want AuthenticationFailed", k, r)
		}
		if got, err := store.rdb.Get(ctx, k).Result(); err != nil || got != v {
			t.Errorf("key %q after a client presented it as a token: %q (%v), want %q untouched", k, got, err, v)
		}
	}
	for _, k := range []string{"meetpoint:{nodes}:set", "app:user:1"} {
		if r, _ := ask1(t, o, k, "n"); r != relay.AuthFailed {
			t.Errorf("token %q (a key of another type): %v, want AuthenticationFailed", k, r)
		}
	}
	if n := o.results["store_error"].Get(); n != 0 {
		t.Errorf("store_error counted %d times for tokens naming other keys: the store answered", n)
	}
	if n := o.results["malformed"].Get(); n != uint64(len(others)+2) {
		t.Errorf("malformed counted %d times, want %d", n, len(others)+2)
	}
	// A real token still works: its two ends, then nothing.
	tok, _, err := Mint(ctx, store, "alice", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rs := ends(t, o, tok, "n", 3); count(rs, relay.AuthNoError) != 2 || count(rs, relay.AuthFailed) != 1 {
		t.Fatalf("three ends at once: %v, want two accepted", rs)
	}
}

// TestMintedTokensAreGoodWhenMinted: both token formats carry their
// expiry in whole seconds, rounded down, so a ttl under a second made a
// token already expired when it was handed out (an HMAC token from
// MintHMAC or `meetpoint token --ttl 500ms`, a one-time token from Mint
// and POST /v1/tokens, answered 201). A ttl is either refused or gives a
// token that is good at the moment it is minted.
func TestMintedTokensAreGoodWhenMinted(t *testing.T) {
	now := t0.Add(200 * time.Millisecond) // any fraction of a second past t0
	a := newHMAC(t, &now)
	for _, ttl := range []time.Duration{time.Nanosecond, 500 * time.Millisecond, 999 * time.Millisecond, time.Second, MaxHMACTTL} {
		tok, err := MintHMAC(testKey, "dev", ttl, now)
		if err != nil {
			continue
		}
		if !a.valid(tok, now) {
			t.Errorf("MintHMAC with ttl %v: a token already expired when minted", ttl)
		}
	}
	store := NewMemStore()
	o := NewOneTime(store, 0)
	for _, ttl := range []time.Duration{time.Nanosecond, 500 * time.Millisecond, 5 * time.Second} {
		tok, exp, err := Mint(context.Background(), store, "alice", ttl)
		if err != nil {
			continue
		}
		if r, _ := ask1(t, o, tok, "n"); r != relay.AuthNoError {
			t.Errorf("Mint with ttl %v: %v (expires %v), want a token good at once", ttl, r, exp.Unix())
		}
	}
	srv := httptest.NewServer(MintHandler(o, "adminkey"))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(`{"user": "alice", "ttl": "1ns"}`))
	req.Header.Set("Authorization", "Bearer adminkey")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ans struct {
		Token   string
		Expires int64
	}
	_ = json.NewDecoder(resp.Body).Decode(&ans)
	resp.Body.Close()
	if resp.StatusCode == http.StatusCreated {
		if r, _ := ask1(t, o, ans.Token, "n"); r != relay.AuthNoError {
			t.Errorf(`POST /v1/tokens {"ttl": "1ns"}: 201 with a token that is %v (expires %d)`, r, ans.Expires)
		}
	} else if resp.StatusCode != http.StatusBadRequest {
		t.Errorf(`POST /v1/tokens {"ttl": "1ns"}: %d, want 201 with a good token or 400`, resp.StatusCode)
	}
}

// TestMemStoreDropsExpiredTokens: "expired tokens are dropped as new ones
// come" — a relay minting steadily (POST /v1/tokens) keeps about the
// tokens still alive, not every token it ever minted until MaxMemTokens
// (a million, hundreds of MB) and then a sweep of all of them under the
// store's lock.
func TestMemStoreDropsExpiredTokens(t *testing.T) {
	m := NewMemStore()
	ctx := context.Background()
	const n = 20000
	for i := range n {
		// Expired as soon as stored: a day of tokens, minted and used.
		if err := m.Put(ctx, fmt.Sprintf("old-%d", i), []byte(`{"user":"u","exp":1}`), time.Nanosecond); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		if err := m.Put(ctx, fmt.Sprintf("live-%d", i), []byte(`{"user":"u","exp":1}`), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	m.mu.Lock()
	held := len(m.tokens)
	m.mu.Unlock()
	if held > n/4 {
		t.Fatalf("the store holds %d tokens after %d expired and 10 live ones were put: expired tokens are kept", held, n)
	}
	for i := range 10 {
		if _, res, _ := m.Take(ctx, fmt.Sprintf("live-%d", i), "", "", true); res != TakeFirst {
			t.Fatalf("live token %d: %v, want it kept", i, res)
		}
	}
}

// TestMintDefaultTTLWithinBounds: POST /v1/tokens without a ttl mints for
// the authenticator's max age ("ttl optional"), and max-age may be longer
// than the hour a minted token may live (a web app's "time" tokens good
// for 2h): a request with a good body got 400 "ttl: …" for a ttl it never
// sent. It gets a token good for the longest a minted one may live.
func TestMintDefaultTTLWithinBounds(t *testing.T) {
	o := NewOneTime(NewMemStore(), 2*time.Hour)
	srv := httptest.NewServer(MintHandler(o, "adminkey"))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(`{"user": "alice"}`))
	req.Header.Set("Authorization", "Bearer adminkey")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ans struct {
		Token   string
		Expires int64
		Error   string
	}
	_ = json.NewDecoder(resp.Body).Decode(&ans)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf(`{"user": "alice"} with max-age 2h: %d %q, want 201`, resp.StatusCode, ans.Error)
	}
	if left := time.Until(time.Unix(ans.Expires, 0)); left <= 59*time.Minute || left > time.Hour {
		t.Errorf("the token expires in %v, want the longest a minted token may live (1h)", left)
	}
	if r, s := ask1(t, o, ans.Token, "n"); r != relay.AuthNoError || s != "alice" {
		t.Errorf("the minted token: %v %q", r, s)
	}
}

// TestMintBodyTooLargeIs413: a mint request whose body the relay cut at
// --http-max-body is 413 (it was 400, as for a malformed body).
func TestMintBodyTooLargeIs413(t *testing.T) {
	o := NewOneTime(NewMemStore(), 0)
	srv := httptest.NewServer(http.MaxBytesHandler(MintHandler(o, "adminkey"), 64))
	defer srv.Close()
	for _, c := range []struct {
		body string
		want int
	}{
		{`{"user":"` + strings.Repeat("u", 100) + `"}`, 413},
		{`{"user":`, 400},
		{`{"user":"ida"}`, 201},
	} {
		req, _ := http.NewRequest("POST", srv.URL, strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer adminkey")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("minting with a %d-byte body: %d, want %d", len(c.body), resp.StatusCode, c.want)
		}
	}
}
