package disco

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisStore keeps a fleet's groups in Redis, so every node serves the
// same set. Keys share the {groups} hash tag (one Cluster slot: each
// change is one atomic script):
//
//	PREFIX{groups}:g:ID     the record's JSON, expiring with the group (PXAT)
//	PREFIX{groups}:app:APP  sorted set of the app's group ids, scored by expiry
//	PREFIX{groups}:all      sorted set of every group id, scored by expiry
//	PREFIX{groups}:size     hash id → bytes of the record's JSON
//	PREFIX{groups}:bytes    the sum of :size
//
// A write first forgets the groups that expired (from :all, :size,
// :bytes and its app's set), so the fleet-wide bounds count live groups;
// each index expires itself with the last group it holds, so an
// application id nobody writes again leaves nothing behind. A write
// compares the stored JSON with the one the handler read (a
// compare-and-set), so racing requests on one group cannot both win.
type redisStore struct {
	rdb    redis.UniversalClient
	prefix string
	batch  int // expired groups a sweep forgets per script
}

func (s *redisStore) key(id string) string     { return s.prefix + "{groups}:g:" + id }
func (s *redisStore) appKey(app string) string { return s.prefix + "{groups}:app:" + app }
func (s *redisStore) allKeys() []string {
	return []string{s.prefix + "{groups}:all", s.prefix + "{groups}:size", s.prefix + "{groups}:bytes"}
}

func (s *redisStore) op() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Second)
}

// putScript: KEYS group, app set, all, size, bytes; ARGV old JSON ("" =
// absent), new JSON, expiry (unix ms), id, now (unix ms), max groups of
// the app, max groups, max bytes (0: unbounded).
var putScript = redis.NewScript(`
local cur = redis.call("GET", KEYS[1])
if (ARGV[1] == "" and cur) or (ARGV[1] ~= "" and cur ~= ARGV[1]) then return "changed" end
for _, id in ipairs(redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", ARGV[5])) do
	redis.call("DECRBY", KEYS[5], tonumber(redis.call("HGET", KEYS[4], id) or "0"))
	redis.call("HDEL", KEYS[4], id)
end
redis.call("ZREMRANGEBYSCORE", KEYS[3], "-inf", ARGV[5])
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", ARGV[5])
if ARGV[1] == "" then
	if tonumber(ARGV[6]) > 0 and redis.call("ZCARD", KEYS[2]) >= tonumber(ARGV[6]) then return "limit" end
	if tonumber(ARGV[7]) > 0 and redis.call("ZCARD", KEYS[3]) >= tonumber(ARGV[7]) then return "full" end
end
local was = tonumber(redis.call("HGET", KEYS[4], ARGV[4]) or "0")
local size = string.len(ARGV[2])
local total = tonumber(redis.call("GET", KEYS[5]) or "0")
if tonumber(ARGV[8]) > 0 and size > was and total - was + size > tonumber(ARGV[8]) then return "full" end
redis.call("SET", KEYS[1], ARGV[2], "PXAT", ARGV[3])
for i = 2, 3 do
	redis.call("ZADD", KEYS[i], ARGV[3], ARGV[4])
end
redis.call("HSET", KEYS[4], ARGV[4], size)
redis.call("INCRBY", KEYS[5], size - was)
for i = 2, 5 do
	local last = redis.call("ZRANGE", KEYS[i == 2 and 2 or 3], -1, -1, "WITHSCORES")
	redis.call("PEXPIREAT", KEYS[i], last[2])
end
return "ok"`)

// delScript: KEYS group, app set, all, size, bytes; ARGV old JSON, id.
var delScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return "changed" end
redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[2], ARGV[2])
redis.call("ZREM", KEYS[3], ARGV[2])
redis.call("DECRBY", KEYS[5], tonumber(redis.call("HGET", KEYS[4], ARGV[2]) or "0"))
redis.call("HDEL", KEYS[4], ARGV[2])
return "ok"`)

// forgetScript: KEYS all, size, bytes; ARGV now (unix ms), batch. It
// forgets up to batch groups that expired from the fleet-wide index and
// their bytes (as a write does first) and answers how many.
var forgetScript = redis.NewScript(`
local gone = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[2]))
for _, id in ipairs(gone) do
	redis.call("DECRBY", KEYS[3], tonumber(redis.call("HGET", KEYS[2], id) or "0"))
	redis.call("HDEL", KEYS[2], id)
	redis.call("ZREM", KEYS[1], id)
end
return #gone`)

// unreachable wraps a failed Redis operation (the handler answers 503).
func unreachable(err error) error { return fmt.Errorf("groups: the fleet's Redis: %v", err) }

func decode(v string) (*record, error) {
	var r record
	if err := json.Unmarshal([]byte(v), &r); err != nil {
		return nil, fmt.Errorf("groups: a stored group is not JSON: %v", err)
	}
	r.raw, r.size = v, int64(len(v))
	return &r, nil
}

func (s *redisStore) get(id string) (*record, error) {
	ctx, cancel := s.op()
	defer cancel()
	v, err := s.rdb.Get(ctx, s.key(id)).Result()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, unreachable(err)
	}
	return decode(v)
}

func (s *redisStore) put(rec, old *record, b bounds, now time.Time) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	prev := ""
	if old != nil {
		prev = old.raw
	}
	g := rec.Group
	ctx, cancel := s.op()
	defer cancel()
	res, err := putScript.Run(ctx, s.rdb, append([]string{s.key(g.ID), s.appKey(g.AppID)}, s.allKeys()...),
		prev, string(v), rec.Expires, g.ID, now.UnixMilli(), b.perApp, b.total, b.bytes).Text()
	switch {
	case err != nil:
		return unreachable(err)
	case res == "changed":
		return errChanged
	case res == "limit":
		return errLimit
	case res == "full":
		return errFull
	}
	rec.raw, rec.size = string(v), int64(len(v))
	return nil
}

func (s *redisStore) del(old *record) error {
	ctx, cancel := s.op()
	defer cancel()
	res, err := delScript.Run(ctx, s.rdb, append([]string{s.key(old.Group.ID), s.appKey(old.Group.AppID)}, s.allKeys()...),
		old.raw, old.Group.ID).Text()
	if err != nil {
		return unreachable(err)
	}
	if res == "changed" {
		return errChanged
	}
	return nil
}

func (s *redisStore) ids(app string, now time.Time) ([]string, error) {
	ctx, cancel := s.op()
	defer cancel()
	key := s.allKeys()[0]
	if app != "" {
		key = s.appKey(app)
	}
	ids, err := s.rdb.ZRangeByScore(ctx, key, &redis.ZRangeBy{Min: "(" + strconv.FormatInt(now.UnixMilli(), 10), Max: "+inf"}).Result()
	if err != nil {
		return nil, unreachable(err)
	}
	return ids, nil
}

func (s *redisStore) getMany(ids []string) ([]*record, error) {
	out := make([]*record, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.key(id)
	}
	ctx, cancel := s.op()
	defer cancel()
	vals, err := s.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, unreachable(err)
	}
	for i, v := range vals {
		if str, ok := v.(string); ok {
			if r, err := decode(str); err == nil {
				out[i] = r
			}
		}
	}
	return out, nil
}

// count is the fleet's live groups and their bytes (the bytes as of the
// last write or sweep, each of which forgets the expired ones).
func (s *redisStore) count() (int, int64) {
	ctx, cancel := s.op()
	defer cancel()
	keys := s.allKeys()
	n, _ := s.rdb.ZCount(ctx, keys[0], "("+strconv.FormatInt(time.Now().UnixMilli(), 10), "+inf").Result()
	b, _ := s.rdb.Get(ctx, keys[2]).Int64()
	return int(n), b
}

// sweep forgets the groups Redis expired from the fleet-wide index and
// their bytes, a batch at a time (Redis expires the groups themselves):
// without it their bytes stayed counted until the next write. An
// application's index is left to its next write, or to its own expiry.
func (s *redisStore) sweep(now time.Time) {
	batch := s.batch
	if batch <= 0 {
		batch = 256
	}
	for {
		ctx, cancel := s.op()
		n, err := forgetScript.Run(ctx, s.rdb, s.allKeys(), now.UnixMilli(), batch).Int()
		cancel()
		if err != nil || n < batch {
			return // unreachable: the next sweep, or write, forgets them
		}
	}
}

func (s *redisStore) close() error { return nil }
