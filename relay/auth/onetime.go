package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay"
)

var (
	_ relay.Authenticator = (*OneTime)(nil)
	_ relay.Reporter      = (*OneTime)(nil)
)

// TokenStore holds one-time tokens: Take returns a token's value and
// deletes it in one atomic step, so a token is handed out at most once
// however many relays ask.
type TokenStore interface {
	Take(ctx context.Context, token string) (value []byte, found bool, err error)
	Put(ctx context.Context, token string, value []byte, ttl time.Duration) error
}

// DefaultMaxAge is how long a one-time token minted with a "time" is good.
const DefaultMaxAge = 20 * time.Second

// OneTime accepts short-lived one-time tokens from a TokenStore (Redis, or
// the in-process MemStore): a token authorises exactly one tunnel — both
// of its ends, which present the same token and nonce — and never a second
// one, nor anything after it expires. Its value is JSON naming the user
// (who becomes the connection's identity) and its age, in the common
// web-app form {"user": "alice", "time": "01:12:2026:10:31:05"} (UTC,
// day:month:year:hour:minute:second, the mint time; good for MaxAge) or
// {"user": "alice", "exp": UNIX_SECONDS}.
//
// Unknown, expired, replayed or malformed tokens are AuthenticationFailed
// (each counted under meetpoint_onetime_total{result}); the store failing
// (Redis down) is AuthenticationErrorProxyError, and the next request
// tries again. Tokens are never logged: only their SHA-256 is kept, for
// as long as they are valid.
type OneTime struct {
	store  TokenStore
	maxAge time.Duration
	now    func() time.Time

	mu   sync.Mutex
	seen map[[32]byte]*taken // consumed tokens until they expire: the second end, replays

	set     *metrics.Set
	results map[string]*metrics.Counter
}

// taken is a token some end presented: ready is closed once the store
// answered; then, if it was good, left is 1 while the second end may
// still come. Fields other than ready are guarded by OneTime.mu.
type taken struct {
	ready       chan struct{}
	good        bool
	result      relay.AuthResult // the first end's answer when not good
	user, nonce string
	left        int
	until       time.Time
}

// oneTimeResults are the counted outcomes.
var oneTimeResults = []string{"ok", "partner", "unknown", "expired", "replayed", "malformed", "store_error"}

// NewOneTime serves tokens from store; maxAge (0: DefaultMaxAge) bounds a
// "time"-stamped token's life.
func NewOneTime(store TokenStore, maxAge time.Duration) *OneTime {
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	o := &OneTime{store: store, maxAge: maxAge, now: time.Now, seen: map[[32]byte]*taken{},
		set: metrics.NewSet(), results: map[string]*metrics.Counter{}}
	for _, r := range oneTimeResults {
		o.results[r] = o.set.NewCounter(fmt.Sprintf(`meetpoint_onetime_total{result=%q}`, r))
	}
	return o
}

// Store is the token store (for minting next to the relay).
func (o *OneTime) Store() TokenStore { return o.store }

// MaxAge is how long a minted token is good.
func (o *OneTime) MaxAge() time.Duration { return o.maxAge }

// Authenticate implements relay.Authenticator. The first end of a
// token takes it from the store; an end that presents it while that is
// under way waits for the answer (both ends usually arrive together).
func (o *OneTime) Authenticate(ctx context.Context, req relay.AuthRequest, done func(relay.AuthResult)) {
	key := sha256.Sum256([]byte(req.Token))
	o.mu.Lock()
	t := o.seen[key]
	first := t == nil
	if first {
		o.sweep()
		t = &taken{ready: make(chan struct{}), nonce: req.Nonce}
		o.seen[key] = t
	}
	o.mu.Unlock()
	if first {
		go func() { done(o.take(ctx, key, t, req)) }()
		return
	}
	go func() {
		select {
		case <-t.ready:
			done(o.second(key, t, req))
		case <-ctx.Done():
			done(relay.AuthTimeout)
		}
	}()
}

// take consumes the token from the store for its first end.
func (o *OneTime) take(ctx context.Context, key [32]byte, t *taken, req relay.AuthRequest) relay.AuthResult {
	val, found, err := o.store.Take(ctx, req.Token)
	var user, why string
	var until time.Time
	res := relay.AuthNoError
	switch {
	case err != nil:
		why, res = "store_error", relay.AuthProxyError
	case !found:
		why, res = "unknown", relay.AuthFailed
	default:
		if user, until, why = o.parse(val); why != "" {
			res = relay.AuthFailed
		}
	}
	o.mu.Lock()
	if res == relay.AuthNoError {
		t.good, t.user, t.until, t.left = true, user, until, 1
	} else {
		t.result = res
		delete(o.seen, key) // nothing was consumed (or nothing is left): a later try asks the store again
	}
	close(t.ready)
	o.mu.Unlock()
	if res != relay.AuthNoError {
		o.count(why)
		return res
	}
	o.count("ok")
	setSubject(req, user)
	return relay.AuthNoError
}

// second answers an end presenting a token another end took: the
// tunnel's partner (same nonce, once, before expiry), or a replay.
func (o *OneTime) second(key [32]byte, t *taken, req relay.AuthRequest) relay.AuthResult {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case !t.good:
		o.count("unknown")
		if t.result == relay.AuthProxyError {
			return relay.AuthProxyError
		}
		return relay.AuthFailed
	case !o.now().Before(t.until):
		delete(o.seen, key)
		o.count("expired")
		return relay.AuthFailed
	case t.left == 0 || t.nonce != req.Nonce:
		o.count("replayed")
		return relay.AuthFailed
	}
	t.left--
	o.count("partner")
	setSubject(req, t.user)
	return relay.AuthNoError
}

// sweep drops expired entries (called with mu held, for each new token:
// the map holds at most the tokens presented within one token lifetime).
func (o *OneTime) sweep() {
	now := o.now()
	for k, t := range o.seen {
		select {
		case <-t.ready:
			if t.good && !now.Before(t.until) {
				delete(o.seen, k)
			}
		default: // its store lookup is under way
		}
	}
}

// tokenTimeLayout is the web-app "time" form: day:month:year:hour:minute:second.
const tokenTimeLayout = "02:01:2006:15:04:05"

// parse reads a token's value: the user, the end of its life, or why not.
func (o *OneTime) parse(val []byte) (user string, until time.Time, why string) {
	var v struct {
		User string          `json:"user"`
		Time *string         `json:"time"`
		Exp  json.RawMessage `json:"exp"`
	}
	if err := json.Unmarshal(val, &v); err != nil || v.User == "" || (v.Time == nil) == (v.Exp == nil) {
		return "", time.Time{}, "malformed"
	}
	now := o.now()
	if v.Time != nil {
		minted, err := time.ParseInLocation(tokenTimeLayout, *v.Time, time.UTC)
		if err != nil || minted.After(now.Add(5*time.Second)) { // a little clock skew, not a token from the future
			return "", time.Time{}, "malformed"
		}
		until = minted.Add(o.maxAge)
	} else {
		sec, err := strconv.ParseInt(strings.TrimSpace(string(v.Exp)), 10, 64)
		if err != nil {
			return "", time.Time{}, "malformed"
		}
		until = time.Unix(sec, 0)
	}
	if !now.Before(until) {
		return "", time.Time{}, "expired"
	}
	return v.User, until, ""
}

func (o *OneTime) count(result string) { o.results[result].Inc() }

// Report implements relay.Reporter (one-time tokens add nothing to a
// snapshot).
func (o *OneTime) Report(*relay.Snapshot) {}

// Traffic implements relay.Reporter.
func (o *OneTime) Traffic() uint64 { return 0 }

// WriteMetrics implements relay.Reporter.
func (o *OneTime) WriteMetrics(w io.Writer) { o.set.WritePrometheus(w) }

// MetricDocs implements relay.MetricDocumenter.
func (o *OneTime) MetricDocs() map[string]relay.MetricDoc {
	return map[string]relay.MetricDoc{"meetpoint_onetime_total": {Type: "counter",
		Help: "One-time token checks by result: ok (first end), partner (second end), unknown, expired, replayed, malformed, store_error (the store unreachable)."}}
}

// Mint makes a new random token for user valid for ttl, stores it and
// returns it.
func Mint(ctx context.Context, store TokenStore, user string, ttl time.Duration) (string, time.Time, error) {
	if user == "" || len(user) > 256 {
		return "", time.Time{}, errors.New("user: 1 to 256 characters")
	}
	if ttl <= 0 || ttl > time.Hour {
		return "", time.Time{}, errors.New("ttl: more than 0, at most 1h")
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", time.Time{}, err
	}
	tok := base64.RawURLEncoding.EncodeToString(b)
	exp := time.Now().Add(ttl).Truncate(time.Second)
	val, _ := json.Marshal(map[string]any{"user": user, "exp": exp.Unix()})
	if err := store.Put(ctx, tok, val, ttl+time.Second); err != nil {
		return "", time.Time{}, err
	}
	return tok, exp, nil
}

// MemStore is an in-process TokenStore (one relay, no Redis: `make run`,
// single-node deployments). Expired tokens are dropped as new ones come.
type MemStore struct {
	mu     sync.Mutex
	tokens map[string]memToken
}

type memToken struct {
	val   []byte
	until time.Time
}

// MaxMemTokens bounds a MemStore.
const MaxMemTokens = 1 << 20

// NewMemStore returns an empty store.
func NewMemStore() *MemStore { return &MemStore{tokens: map[string]memToken{}} }

// Take implements TokenStore.
func (m *MemStore) Take(_ context.Context, token string) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tokens[token]
	delete(m.tokens, token)
	if !ok || !time.Now().Before(t.until) {
		return nil, false, nil
	}
	return t.val, true, nil
}

// Put implements TokenStore.
func (m *MemStore) Put(_ context.Context, token string, value []byte, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if len(m.tokens) >= MaxMemTokens {
		for k, t := range m.tokens {
			if !now.Before(t.until) {
				delete(m.tokens, k)
			}
		}
		if len(m.tokens) >= MaxMemTokens {
			return errors.New("one-time token store full")
		}
	}
	m.tokens[token] = memToken{val: append([]byte(nil), value...), until: now.Add(ttl)}
	return nil
}

// RedisStore keeps one-time tokens in Redis under Prefix+token; Take is
// GETDEL (Redis ≥ 6.2), so exactly one relay of a fleet gets a token.
type RedisStore struct {
	rdb    *redis.Client
	prefix string
}

// ParseRedisAuth reads --auth redis://[:PASSWORD@]HOST:PORT/DB[?prefix=P&max-age=20s]
// (rediss:// for TLS) into a store and the tokens' max age.
func ParseRedisAuth(spec string) (*RedisStore, time.Duration, error) {
	u, err := url.Parse(spec)
	if err != nil {
		return nil, 0, fmt.Errorf("redis URL: %v", err)
	}
	q := u.Query()
	prefix, maxAge := q.Get("prefix"), time.Duration(0)
	if s := q.Get("max-age"); s != "" {
		if maxAge, err = time.ParseDuration(s); err != nil || maxAge <= 0 {
			return nil, 0, fmt.Errorf("redis URL: max-age %q: want a duration such as 20s", s)
		}
	}
	q.Del("prefix")
	q.Del("max-age")
	u.RawQuery = q.Encode()
	opt, err := redis.ParseURL(u.String())
	if err != nil {
		return nil, 0, fmt.Errorf("redis URL: %v", err)
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = 2*time.Second, 2*time.Second, 2*time.Second
	return &RedisStore{rdb: redis.NewClient(opt), prefix: prefix}, maxAge, nil
}

// Take implements TokenStore.
func (r *RedisStore) Take(ctx context.Context, token string) ([]byte, bool, error) {
	v, err := r.rdb.GetDel(ctx, r.prefix+token).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return v, true, nil
}

// Put implements TokenStore.
func (r *RedisStore) Put(ctx context.Context, token string, value []byte, ttl time.Duration) error {
	return r.rdb.Set(ctx, r.prefix+token, value, ttl).Err()
}

// Close closes the connections to Redis.
func (r *RedisStore) Close() error { return r.rdb.Close() }
