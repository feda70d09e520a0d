package limits

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Rates is a token bucket per address key (Limiter.Key), for a rate an
// API bounds on its own, such as the groups API's creations per address.
// A bucket that has filled up again is the same as a new one, so it is
// forgotten: memory follows the addresses active within one refill, not
// every address ever seen. Safe for concurrent use.
type Rates struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[netip.Addr]*rate.Limiter // guarded by mu
	calls   int                          // guarded by mu
}

// NewRates allows perSecond events per key, in bursts of up to burst
// (at least 1).
func NewRates(perSecond float64, burst int) *Rates {
	return &Rates{limit: rate.Limit(perSecond), burst: max(burst, 1), buckets: map[netip.Addr]*rate.Limiter{}}
}

// Allow takes one token from key's bucket at now; false if it is empty.
func (r *Rates) Allow(key netip.Addr, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.calls++; r.calls%1024 == 0 {
		for k, b := range r.buckets {
			if b.TokensAt(now) >= float64(r.burst) {
				delete(r.buckets, k)
			}
		}
	}
	b := r.buckets[key]
	if b == nil {
		b = rate.NewLimiter(r.limit, r.burst)
		r.buckets[key] = b
	}
	return b.AllowN(now, 1)
}

// Len is how many buckets are kept (tests, metrics).
func (r *Rates) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buckets)
}
