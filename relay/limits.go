package relay

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Limits are the abuse limits. A zero field disables that limit. Every
// refusal is counted under meetpoint_closes_total with its reason.
type Limits struct {
	// MaxConns bounds open connections (before and in tunnels) in total.
	MaxConns int
	// MaxConnsPerIP bounds open connections from one source address.
	MaxConnsPerIP int
	// ConnRatePerIP bounds new connections per second from one source
	// address (token bucket, burst of twice the rate).
	ConnRatePerIP float64
	// AuthFailuresPerIP is how many failed authentications one source
	// address may have within a minute; one more bans it for BanTime.
	AuthFailuresPerIP int
	// BanTime is how long a banned address is refused.
	BanTime time.Duration
	// TunnelRate bounds each tunnel direction to this many bytes per second
	// by delaying reads (TCP flow control slows the sender; nothing is
	// dropped).
	TunnelRate int64
	// Exempt addresses are not subject to the per-IP limits (default:
	// loopback, where a local proxy or the bench harness connects from).
	Exempt []netip.Prefix
}

// DefaultLimits are sane limits for a public relay.
func DefaultLimits() Limits {
	return Limits{
		MaxConnsPerIP:     10000,
		ConnRatePerIP:     1000,
		AuthFailuresPerIP: 30,
		BanTime:           10 * time.Minute,
		Exempt:            []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
	}
}

// limiter enforces the per-IP and total connection limits.
type limiter struct {
	lim Limits
	now func() time.Time

	mu    sync.Mutex
	total int
	ips   map[netip.Addr]*ipState
}

// ipState is one source address's history. Kept until idle for a minute so
// that disconnecting does not reset the rate bucket.
type ipState struct {
	conns      int
	tokens     float64 // connection rate bucket
	refilled   time.Time
	fails      int // failed authentications in the current minute
	failsSince time.Time
	bannedTill time.Time
	lastSeen   time.Time
}

func newLimiter(l Limits) *limiter {
	return &limiter{lim: l, now: time.Now, ips: make(map[netip.Addr]*ipState)}
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// exempt reports whether ip is exempt. Called with mu held.
func (l *limiter) exempt(ip netip.Addr) bool {
	for _, p := range l.lim.Exempt {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// admit decides on a new connection from ip; on success the caller must call
// release when the connection ends. It returns the refusal reason, or
// reasonCount when admitted.
func (l *limiter) admit(ip netip.Addr) Reason {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.MaxConns > 0 && l.total >= l.lim.MaxConns {
		return ReasonLimitConns
	}
	if l.exempt(ip) {
		l.total++
		return reasonCount
	}
	now := l.now()
	st := l.state(ip, now)
	if now.Before(st.bannedTill) {
		return ReasonBanned
	}
	if l.lim.MaxConnsPerIP > 0 && st.conns >= l.lim.MaxConnsPerIP {
		return ReasonLimitConnsPerIP
	}
	if r := l.lim.ConnRatePerIP; r > 0 {
		st.tokens = min(2*r, st.tokens+now.Sub(st.refilled).Seconds()*r)
		st.refilled = now
		if st.tokens < 1 {
			return ReasonLimitRate
		}
		st.tokens--
	}
	st.conns++
	l.total++
	return reasonCount
}

// state is ip's record, created with a full rate bucket; it is marked seen
// at now. Called with mu held.
func (l *limiter) state(ip netip.Addr, now time.Time) *ipState {
	st := l.ips[ip]
	if st == nil {
		st = &ipState{tokens: 2 * l.lim.ConnRatePerIP, refilled: now}
		l.ips[ip] = st
	}
	st.lastSeen = now
	return st
}

func (l *limiter) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if st := l.ips[ip]; st != nil && st.conns > 0 {
		st.conns--
		st.lastSeen = l.now()
	}
}

// authFailed records a failed authentication; it reports whether the
// address is now banned.
func (l *limiter) authFailed(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.AuthFailuresPerIP <= 0 || l.exempt(ip) {
		return false
	}
	now := l.now()
	st := l.state(ip, now)
	if now.Sub(st.failsSince) > time.Minute {
		st.fails, st.failsSince = 0, now
	}
	st.fails++
	if st.fails > l.lim.AuthFailuresPerIP {
		st.bannedTill = now.Add(l.lim.BanTime)
		st.fails = 0
		return true
	}
	return false
}

// sweep forgets addresses idle for a minute with no connection and no ban.
func (l *limiter) sweep() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for ip, st := range l.ips {
		if st.conns == 0 && now.After(st.bannedTill) && now.Sub(st.lastSeen) > time.Minute {
			delete(l.ips, ip)
		}
	}
}

// bucket is a token bucket for TunnelRate: it delays reads.
type bucket struct {
	tokens   float64
	refilled time.Time
}

// bucketQuantum is the least a throttled read waits for, so that a
// rate-limited tunnel makes few large reads rather than many tiny ones.
const bucketQuantum = 4 << 10

// allow returns how many bytes may be read now, or 0 and how long to wait.
func (b *bucket) allow(rate int64, now time.Time, want int) (int, time.Duration) {
	burst := float64(max(rate/4, 16<<10))
	if b.refilled.IsZero() {
		b.tokens, b.refilled = burst, now
	}
	b.tokens = min(burst, b.tokens+now.Sub(b.refilled).Seconds()*float64(rate))
	b.refilled = now
	if need := float64(min(want, bucketQuantum)); b.tokens < need {
		return 0, time.Duration((need - b.tokens) / float64(rate) * float64(time.Second))
	}
	return min(want, int(b.tokens)), 0
}

// take spends n tokens; a nil bucket (no rate) takes nothing.
func (b *bucket) take(n int) {
	if b != nil {
		b.tokens -= float64(n)
	}
}

// setLimits replaces the limits (SIGHUP); counts and bans are kept.
func (l *limiter) setLimits(lim Limits) {
	l.mu.Lock()
	l.lim = lim
	l.mu.Unlock()
}

// banTime is the current ban duration.
func (l *limiter) banTime() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lim.BanTime
}

// SetLimits replaces the server's abuse limits while it runs (e.g. on
// SIGHUP). Connections already admitted stay; new ones meet the new limits.
func (s *Server) SetLimits(lim Limits) error {
	c := s.cfg
	c.Limits = lim
	if err := c.Validate(); err != nil {
		return err
	}
	s.lim.setLimits(lim)
	s.tunnelRate.Store(lim.TunnelRate)
	return nil
}
