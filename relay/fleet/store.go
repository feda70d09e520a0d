package fleet

import (
	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay/redisurl"
)

// ParseURL reads --fleet into a Redis client (redisurl.Parse):
//
//	redis://[USER:PASSWORD@]HOST:PORT/DB        one server (rediss:// for TLS)
//	redis+cluster://HOST:PORT?addr=HOST2:PORT2  Redis Cluster, seed nodes
//	redis+sentinel://HOST:PORT?master_name=M&addr=HOST2:PORT2
//	                                            a Sentinel-managed primary
//
// Every pair key the fleet writes is single-key (scripts included) so
// that a Cluster spreads them; the node set shares one hash slot
// ({nodes}).
func ParseURL(spec string) (redis.UniversalClient, error) { return redisurl.Parse("fleet URL", spec) }

// The scripts. Each touches one key, so it runs on any deployment, and is
// atomic: two nodes racing for a key are ordered by Redis.
//
// A pair key's value is "NODE GEN ADDR": the owner node, the lease's
// generation (random, so a node releases only its own lease, never one it
// or another node took since) and the owner's mesh address.
var (
	// claimScript takes KEYS[1] for ARGV[1] (ttl ARGV[2] ms) if nobody
	// holds it: {1} taken, or {0, value} held by value.
	claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1}
end
return {0, v}
`)
	// takeoverScript replaces ARGV[1] (a dead or stale owner's value) by
	// ARGV[2]: 1 done, 0 someone changed it meanwhile. An absent key is
	// taken too.
	takeoverScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`)
	// releaseScript deletes KEYS[1] if it still holds ARGV[1].
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)
	// announceScript writes a node's record KEYS[1] (ARGV[1], ttl ARGV[2]
	// ms) unless the record there has a later incarnation than ARGV[3],
	// and adds ARGV[4] to the node set KEYS[2]; it sets the store's epoch
	// KEYS[3] to ARGV[5] if it has none, and raises the node id's
	// incarnation counter KEYS[4] to ARGV[3] if it is below (a store that
	// lost its data lost the counter: the next process of this id must
	// still count as a later one). All four keys are in the {nodes} slot.
	// It answers {1 written or 0 superseded, the epoch}.
	announceScript = redis.NewScript(`
local e = redis.call('GET', KEYS[3])
if not e then
  redis.call('SET', KEYS[3], ARGV[5])
  e = ARGV[5]
end
if tonumber(redis.call('GET', KEYS[4]) or 0) < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[4], ARGV[3])
end
local v = redis.call('GET', KEYS[1])
if v then
  local ok, n = pcall(cjson.decode, v)
  if ok and type(n) == 'table' and tonumber(n['inc'] or 0) > tonumber(ARGV[3]) then return {0, e} end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
return {1, e}
`)
	// leaveScript deletes a node's record KEYS[1] and takes ARGV[2] out
	// of the node set KEYS[2] (both in the {nodes} slot), unless the
	// record is another process's than ARGV[1] (a later one took the
	// node id over): 1 done, 0 left alone.
	leaveScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then
  local ok, n = pcall(cjson.decode, v)
  if ok and type(n) == 'table' and n['instance'] ~= ARGV[1] then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
`)
	// renewScript extends KEYS[1] to ARGV[2] ms if it still holds ARGV[1]
	// (1), claims it again under ARGV[1] if it is gone (2: the store lost
	// it), and leaves another node's value alone (0).
	renewScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
`)
)
