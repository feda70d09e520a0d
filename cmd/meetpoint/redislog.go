package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// quietRedis routes go-redis's own log — a line per failed dial while a
// Redis is away, in its own format, which would break --log-format json —
// to log at Debug: the relay reports each outage once itself (the
// dependency's warning, the fleet's line). go-redis has one logger per
// process; the last call's log gets its lines.
func quietRedis(log *slog.Logger) {
	redisLogTo.Store(log)
	redisLogOnce.Do(func() { redis.SetLogger(redisLog{}) })
}

var (
	redisLogTo   atomic.Pointer[slog.Logger]
	redisLogOnce sync.Once
)

type redisLog struct{}

func (redisLog) Printf(_ context.Context, format string, v ...any) {
	redisLogTo.Load().Debug("redis: " + fmt.Sprintf(format, v...))
}
