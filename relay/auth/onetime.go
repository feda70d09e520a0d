package auth

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/redisurl"
)

var _ relay.Authenticator = (*OneTime)(nil)

// TokenStore holds one-time tokens. Take is one atomic step however many
// relays share the store: the first end of a token takes it (TakeFirst,
// the token now marked taken for its nonce and uuid with one partner
// left), the one other end presenting it with the same nonce is
// TakePartner — on any relay — and everything after that, or with another
// nonce, TakeReplayed. The first end's uuid (when not empty) taking it
// again before its partner came is TakeFirst again: a take retried after
// its answer was lost, or a client reconnecting while it waits, is not
// its own partner (which would leave its real partner refused). A whole
// take (a token used outside a tunnel) leaves no partner: it is
// TakeFirst once and then spent, and a token taken already is
// TakeReplayed to it. value is the token's value as minted (for its user
// and age).
type TokenStore interface {
	Take(ctx context.Context, token, nonce, uuid string, whole bool) (value []byte, res TakeResult, err error)
	Put(ctx context.Context, token string, value []byte, ttl time.Duration) error
}

// TakeResult is what TokenStore.Take found.
type TakeResult int

// Take results.
const (
	TakeUnknown   TakeResult = iota // no such token (never minted, or expired in the store)
	TakeFirst                       // the token's first end
	TakePartner                     // its one partner: same nonce
	TakeReplayed                    // used up, or another nonce
	TakeMalformed                   // the key holds something that is not a token (left as it is)
)

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
// tries again. The store decides first end, partner or replay in one
// atomic step, so the two ends may reach different relays sharing a
// Redis. Tokens are never logged, and a relay keeps none in memory
// (MemStore excepted, which is the store).
type OneTime struct {
	store  TokenStore
	maxAge time.Duration
	now    func() time.Time

	set     *metrics.Set
	results map[string]*metrics.Counter
	dep     *relay.Dependency // the store's health (Watch), or nil
}

// oneTimeResults are the counted outcomes.
var oneTimeResults = []string{"ok", "partner", "unknown", "expired", "replayed", "malformed", "store_error"}

// NewOneTime serves tokens from store; maxAge (0: DefaultMaxAge) bounds a
// "time"-stamped token's life.
func NewOneTime(store TokenStore, maxAge time.Duration) *OneTime {
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	o := &OneTime{store: store, maxAge: maxAge, now: time.Now, set: metrics.NewSet(), results: map[string]*metrics.Counter{}}
	for _, r := range oneTimeResults {
		o.results[r] = o.set.NewCounter(fmt.Sprintf(`meetpoint_onetime_total{result=%q}`, r))
	}
	return o
}

// Watch makes o report to d whether its store answered each Take (d
// tracks the store's outages: relay.Server.AddDependency). Call it before
// the relay starts.
func (o *OneTime) Watch(d *relay.Dependency) { o.dep = d }

// Store is the token store (for minting next to the relay).
func (o *OneTime) Store() TokenStore { return o.store }

// MaxAge is how long a minted token is good.
func (o *OneTime) MaxAge() time.Duration { return o.maxAge }

// Authenticate implements relay.Authenticator: one atomic Take in the
// store (which decides first end, partner or replay, also across relays),
// then the token's age.
func (o *OneTime) Authenticate(ctx context.Context, req relay.AuthRequest, done func(relay.AuthResult)) {
	go func() {
		val, res, err := o.store.Take(ctx, req.Token, req.Nonce, req.UUID, req.Whole)
		if o.dep != nil && ctx.Err() == nil {
			o.dep.Report(err)
		}
		switch {
		case err != nil:
			o.count("store_error")
			done(relay.AuthProxyError)
			return
		case res == TakeUnknown:
			o.count("unknown")
			done(relay.AuthFailed)
			return
		case res == TakeReplayed:
			o.count("replayed")
			done(relay.AuthFailed)
			return
		case res == TakeMalformed:
			o.count("malformed")
			done(relay.AuthFailed)
			return
		}
		user, _, why := o.parse(val)
		if why != "" {
			o.count(why)
			done(relay.AuthFailed)
			return
		}
		if res == TakePartner {
			o.count("partner")
		} else {
			o.count("ok")
		}
		setSubject(req, user)
		done(relay.AuthNoError)
	}()
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

// Metrics is what relay.Server.AddMetrics takes: the one-time checks'
// metric set and its docs.
func (o *OneTime) Metrics() (*metrics.Set, map[string]relay.MetricDoc) {
	return o.set, map[string]relay.MetricDoc{"meetpoint_onetime_total": {Type: "counter",
		Help: "One-time token checks by result: ok (first end), partner (second end), unknown, expired, replayed, malformed, store_error (the store unreachable)."}}
}

// MaxMintTTL is the longest lifetime of a minted one-time token.
const MaxMintTTL = time.Hour

// CheckMint reports what is wrong with a one-time token's user and ttl,
// the checks Mint makes before it asks the store.
func CheckMint(user string, ttl time.Duration) error {
	if user == "" || len(user) > 256 {
		return errors.New("user: 1 to 256 characters")
	}
	if ttl < MinTokenTTL || ttl > MaxMintTTL {
		return errors.New("ttl: at least 1s, at most 1h")
	}
	return nil
}

// Mint makes a new random token for user valid for ttl, stores it and
// returns it.
func Mint(ctx context.Context, store TokenStore, user string, ttl time.Duration) (string, time.Time, error) {
	if err := CheckMint(user, ttl); err != nil {
		return "", time.Time{}, err
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
// single-node deployments). Expired tokens are dropped as new ones come:
// Put sweeps them out whenever the store has doubled since the last
// sweep (amortised O(1) a Put), so it holds about twice the live tokens.
type MemStore struct {
	mu      sync.Mutex
	tokens  map[string]*memToken
	sweepAt int // Put sweeps expired tokens once len(tokens) reaches it
}

// memSweepMin is the least size at which MemStore sweeps.
const memSweepMin = 1024

type memToken struct {
	val   []byte
	until time.Time
	taken bool   // its first end came
	nonce string // the first end's
	uuid  string // the first end's
	left  int    // partners still admitted (1, then 0)
}

// MaxMemTokens bounds a MemStore.
const MaxMemTokens = 1 << 20

// NewMemStore returns an empty store.
func NewMemStore() *MemStore { return &MemStore{tokens: map[string]*memToken{}} }

// Take implements TokenStore.
func (m *MemStore) Take(_ context.Context, token, nonce, uuid string, whole bool) ([]byte, TakeResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tokens[token]
	switch {
	case !ok || !time.Now().Before(t.until):
		delete(m.tokens, token)
		return nil, TakeUnknown, nil
	case !t.taken:
		t.taken, t.nonce, t.uuid, t.left = true, nonce, uuid, 1
		if whole {
			t.left = 0
		}
		return t.val, TakeFirst, nil
	case t.left == 1 && same(t.nonce, nonce) && !whole && uuid != "" && same(t.uuid, uuid):
		return t.val, TakeFirst, nil // the first end again
	case t.left == 1 && same(t.nonce, nonce) && !whole:
		t.left = 0
		return t.val, TakePartner, nil
	}
	return nil, TakeReplayed, nil
}

// same compares what a one-time token's ends present in constant time
// (the nonce decides who is the partner).
func same(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// Put implements TokenStore.
func (m *MemStore) Put(_ context.Context, token string, value []byte, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if len(m.tokens) >= max(m.sweepAt, memSweepMin) || len(m.tokens) >= MaxMemTokens {
		for k, t := range m.tokens {
			if !now.Before(t.until) {
				delete(m.tokens, k)
			}
		}
		m.sweepAt = 2 * len(m.tokens)
		if len(m.tokens) >= MaxMemTokens {
			return errors.New("one-time token store full")
		}
	}
	m.tokens[token] = &memToken{val: append([]byte(nil), value...), until: now.Add(ttl)}
	return nil
}

// RedisStore keeps one-time tokens in Redis under Prefix+token. Take is
// one Lua script (Redis ≥ 6.0): the first end replaces the value with a
// marker "\x00mq|LEFT|NONCELEN|UUIDLEN|NONCE UUID" + value under the same
// TTL, the partner turns LEFT to 0, so any relay of a fleet admits exactly
// the two ends of one tunnel (a whole take writes LEFT 0 at once). Markers
// of earlier versions ("\x00mp|LEFT|NONCELEN|NONCE", no uuid) are read
// too. The key is the client's choice, so the script marks only a token's
// value (a JSON object naming a "user"): any other key of a shared Redis
// (the fleet's, another application's, of any type) is TakeMalformed and
// left as it is.
type RedisStore struct {
	rdb    redis.UniversalClient
	what   string // the URL, redacted, for logs
	prefix string
}

// ParseRedisAuth reads --auth redis://[:PASSWORD@]HOST:PORT/DB[?prefix=P&max-age=20s]
// (rediss:// for TLS; redis+cluster:// and redis+sentinel:// as --fleet,
// redisurl.Parse) into a store and the tokens' max age.
func ParseRedisAuth(spec string) (*RedisStore, time.Duration, error) {
	u, err := url.Parse(spec)
	if err != nil {
		return nil, 0, redisurl.NotAURL("redis URL", err)
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
	rdb, err := redisurl.Parse("redis URL", u.String())
	if err != nil {
		return nil, 0, err
	}
	return &RedisStore{rdb: rdb, what: redisurl.Describe(spec), prefix: prefix}, maxAge, nil
}

// takeScript is RedisStore.Take (ARGV: nonce, "1" for a whole take,
// uuid): {0} unknown, {1, value} first (also the first end's uuid again
// while LEFT is 1), {2, value} partner, {3} replayed, {4} not a token
// (another type, or a string that is no JSON object with a string "user":
// untouched).
var takeScript = redis.NewScript(`
local ty = redis.call('TYPE', KEYS[1])['ok']
if ty == 'none' then return {0} end
if ty ~= 'string' then return {4} end
local v = redis.call('GET', KEYS[1])
local head = string.sub(v, 1, 4)
if head ~= '\0mq|' and head ~= '\0mp|' then
  local ok, t = pcall(cjson.decode, v)
  if not ok or type(t) ~= 'table' or type(t['user']) ~= 'string' then return {4} end
  local left = '1'
  if ARGV[2] == '1' then left = '0' end
  redis.call('SET', KEYS[1], '\0mq|' .. left .. '|' .. string.len(ARGV[1]) .. '|' .. string.len(ARGV[3]) .. '|' .. ARGV[1] .. ARGV[3] .. v, 'KEEPTTL')
  return {1, v}
end
local left, nlen, ulen, tail
if head == '\0mp|' then
  left, nlen, tail = string.match(string.sub(v, 5), '^(%d)|(%d+)|(.*)$')
  ulen = '0'
else
  left, nlen, ulen, tail = string.match(string.sub(v, 5), '^(%d)|(%d+)|(%d+)|(.*)$')
end
if not left then return {3} end
nlen, ulen = tonumber(nlen), tonumber(ulen)
local nonce = string.sub(tail, 1, nlen)
local uuid = string.sub(tail, nlen + 1, nlen + ulen)
local orig = string.sub(tail, nlen + ulen + 1)
if left == '1' and nonce == ARGV[1] and ARGV[2] ~= '1' then
  if uuid ~= '' and uuid == ARGV[3] then return {1, orig} end
  redis.call('SET', KEYS[1], '\0mq|0|' .. nlen .. '|' .. ulen .. '|' .. nonce .. uuid .. orig, 'KEEPTTL')
  return {2, orig}
end
return {3}
`)

// Take implements TokenStore.
func (r *RedisStore) Take(ctx context.Context, token, nonce, uuid string, whole bool) ([]byte, TakeResult, error) {
	w := "0"
	if whole {
		w = "1"
	}
	out, err := takeScript.Run(ctx, r.rdb, []string{r.prefix + token}, nonce, w, uuid).Slice()
	if err != nil {
		return nil, 0, err
	}
	if len(out) == 0 {
		return nil, 0, errors.New("one-time token script: empty answer")
	}
	code, _ := out[0].(int64)
	var val []byte
	if len(out) > 1 {
		s, _ := out[1].(string)
		val = []byte(s)
	}
	switch code {
	case 1:
		return val, TakeFirst, nil
	case 2:
		return val, TakePartner, nil
	case 3:
		return nil, TakeReplayed, nil
	case 4:
		return nil, TakeMalformed, nil
	}
	return nil, TakeUnknown, nil
}

// Put implements TokenStore.
func (r *RedisStore) Put(ctx context.Context, token string, value []byte, ttl time.Duration) error {
	return r.rdb.Set(ctx, r.prefix+token, value, ttl).Err()
}

// Close closes the connections to Redis.
func (r *RedisStore) Close() error { return r.rdb.Close() }

// Ping checks that Redis answers.
func (r *RedisStore) Ping(ctx context.Context) error { return r.rdb.Ping(ctx).Err() }

// String names the store for people: its address, never its password.
func (r *RedisStore) String() string { return r.what }
