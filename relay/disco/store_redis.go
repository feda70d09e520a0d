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
//	PREFIX{groups}:apps     set of app ids with groups
//
// A write compares the stored JSON with the one the handler read (a
// compare-and-set), so racing requests on one group cannot both win.
type redisStore struct {
	rdb    redis.UniversalClient
	prefix string
}

func (s *redisStore) key(id string) string     { return s.prefix + "{groups}:g:" + id }
func (s *redisStore) appKey(app string) string { return s.prefix + "{groups}:app:" + app }
func (s *redisStore) appsKey() string          { return s.prefix + "{groups}:apps" }

func (s *redisStore) op() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Second)
}

// putScript: KEYS group, app set, apps; ARGV old JSON ("" = absent), new
// JSON, expiry (unix ms), id, now (unix ms), max groups, app.
var putScript = redis.NewScript(`
local cur = redis.call("GET", KEYS[1])
if (ARGV[1] == "" and cur) or (ARGV[1] ~= "" and cur ~= ARGV[1]) then return "changed" end
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", ARGV[5])
if ARGV[1] == "" and redis.call("ZCARD", KEYS[2]) >= tonumber(ARGV[6]) then return "limit" end
redis.call("SET", KEYS[1], ARGV[2], "PXAT", ARGV[3])
redis.call("ZADD", KEYS[2], ARGV[3], ARGV[4])
redis.call("SADD", KEYS[3], ARGV[7])
return "ok"`)

// delScript: KEYS group, app set; ARGV old JSON, id.
var delScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return "changed" end
redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[2], ARGV[2])
return "ok"`)

// tidyScript forgets an app without groups: KEYS app set, apps; ARGV app,
// now.
var tidyScript = redis.NewScript(`
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", ARGV[2])
if redis.call("ZCARD", KEYS[1]) == 0 then redis.call("SREM", KEYS[2], ARGV[1]) end
return 0`)

// unreachable wraps a failed Redis operation (the handler answers 503).
func unreachable(err error) error { return fmt.Errorf("groups: the fleet's Redis: %v", err) }

func decode(v string) (*record, error) {
	var r record
	if err := json.Unmarshal([]byte(v), &r); err != nil {
		return nil, fmt.Errorf("groups: a stored group is not JSON: %v", err)
	}
	r.raw = v
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

func (s *redisStore) put(rec, old *record, maxGroups int, now time.Time) error {
	b, err := json.Marshal(rec)
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
	res, err := putScript.Run(ctx, s.rdb, []string{s.key(g.ID), s.appKey(g.AppID), s.appsKey()},
		prev, string(b), rec.Expires, g.ID, now.UnixMilli(), maxGroups, g.AppID).Text()
	switch {
	case err != nil:
		return unreachable(err)
	case res == "changed":
		return errChanged
	case res == "limit":
		return errLimit
	}
	rec.raw = string(b)
	return nil
}

func (s *redisStore) del(old *record) error {
	ctx, cancel := s.op()
	defer cancel()
	res, err := delScript.Run(ctx, s.rdb, []string{s.key(old.Group.ID), s.appKey(old.Group.AppID)}, old.raw, old.Group.ID).Text()
	if err != nil {
		return unreachable(err)
	}
	if res == "changed" {
		return errChanged
	}
	return nil
}

func (s *redisStore) list(app string, now time.Time) ([]*record, error) {
	ctx, cancel := s.op()
	defer cancel()
	apps := []string{app}
	if app == "" {
		var err error
		if apps, err = s.rdb.SMembers(ctx, s.appsKey()).Result(); err != nil {
			return nil, unreachable(err)
		}
	}
	ms := strconv.FormatInt(now.UnixMilli(), 10)
	var out []*record
	for _, a := range apps {
		ids, err := s.rdb.ZRangeByScore(ctx, s.appKey(a), &redis.ZRangeBy{Min: "(" + ms, Max: "+inf"}).Result()
		if err != nil {
			return nil, unreachable(err)
		}
		if len(ids) == 0 {
			tidyScript.Run(ctx, s.rdb, []string{s.appKey(a), s.appsKey()}, a, ms)
			continue
		}
		keys := make([]string, len(ids))
		for i, id := range ids {
			keys[i] = s.key(id)
		}
		vals, err := s.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, unreachable(err)
		}
		for _, v := range vals {
			if str, ok := v.(string); ok {
				if r, err := decode(str); err == nil {
					out = append(out, r)
				}
			}
		}
	}
	return out, nil
}

// count is the fleet's groups (one ZCARD per app; bounded by the scrape's
// two seconds).
func (s *redisStore) count() int {
	ctx, cancel := s.op()
	defer cancel()
	apps, err := s.rdb.SMembers(ctx, s.appsKey()).Result()
	if err != nil {
		return 0
	}
	ms := "(" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	n := 0
	for _, a := range apps {
		c, _ := s.rdb.ZCount(ctx, s.appKey(a), ms, "+inf").Result()
		n += int(c)
	}
	return n
}

func (s *redisStore) sweep(time.Time) {} // Redis expires the groups itself
func (s *redisStore) close() error    { return nil }
