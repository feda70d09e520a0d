// Command redis-client-bench compares the fleet's Redis clients on its hot
// command, the claim script, from 32 concurrent callers for 5 s each (two
// rounds): go run . HOST:PORT (a throw-away redis-server). It is a module of
// its own so that rueidis stays out of meetpoint's go.mod; the figures are
// in docs/BENCHMARKS.md (fleet).
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

const script = `
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1}
end
return {0, v}
`

func run(name string, call func(ctx context.Context, key string) error) {
	ctx := context.Background()
	var n atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	end := time.Now().Add(5 * time.Second)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var mine []time.Duration
			for i := 0; time.Now().Before(end); i++ {
				t := time.Now()
				if err := call(ctx, fmt.Sprintf("rb:%s:%d:%d", name, w, i)); err != nil {
					panic(err)
				}
				mine = append(mine, time.Since(t))
				n.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("%-9s %7.0f scripts/s  p50 %v  p99 %v\n", name, float64(n.Load())/5, lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond))
}

func main() {
	addr := os.Args[1]
	gr := redis.NewClient(&redis.Options{Addr: addr})
	s := redis.NewScript(script)
	s.Load(context.Background(), gr)
	ru, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		panic(err)
	}
	rs := rueidis.NewLuaScript(script)
	for round := 0; round < 2; round++ {
		run("go-redis", func(ctx context.Context, k string) error {
			return s.Run(ctx, gr, []string{k}, "node gen addr", 30000).Err()
		})
		run("rueidis", func(ctx context.Context, k string) error {
			return rs.Exec(ctx, ru, []string{k}, []string{"node gen addr", "30000"}).Error()
		})
	}
}
