// Package limits is a relay's admission control: how many connections in
// total and per source address (IPv6 by prefix), how fast one address may
// connect, and bans after repeated failed authentications. It knows
// addresses, not protocols, so any part of the relay (the engine, an HTTP
// API) can admit through one Limiter.
package limits

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/meetpoint/meetpoint/relay/reason"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Limits are the abuse limits. A zero field disables that limit (except
// IPv6Prefix, where 0 means the default). Every refusal is counted under
// meetpoint_closes_total with its reason.
type Limits struct {
	// MaxConns bounds open connections (before and in tunnels) in total.
	// The default is derived from the process's descriptor limit
	// (DefaultMaxConns).
	MaxConns int
	// MaxConnsPerIP bounds open connections from one source address (for
	// IPv6: from one IPv6Prefix).
	MaxConnsPerIP int
	// ConnRatePerIP bounds new connections per second from one source
	// address or IPv6 prefix (token bucket, burst of twice the rate).
	ConnRatePerIP float64
	// AuthFailuresPerIP is how many failed authentications one source
	// address (or IPv6 prefix) may have within a minute; one more bans it
	// for BanTime.
	AuthFailuresPerIP int
	// BanTime is how long a banned address is refused.
	BanTime time.Duration
	// TunnelRate bounds each tunnel direction to this many bytes per second
	// by delaying reads (TCP flow control slows the sender; nothing is
	// dropped).
	TunnelRate int64
	// IPv6Prefix is the prefix length under which IPv6 clients share their
	// per-address state: one host usually owns a whole /64, so keying by
	// the full address would let it escape every per-address limit. 0 means
	// 64; 128 keys by the full address.
	IPv6Prefix int
	// Exempt addresses are not subject to the per-address limits (default:
	// loopback, where a local proxy or the bench harness connects from).
	Exempt []netip.Prefix
}

// DefaultLimits are sane limits for a public relay.
func DefaultLimits() Limits {
	return Limits{
		MaxConns:          DefaultMaxConns(),
		MaxConnsPerIP:     10000,
		ConnRatePerIP:     1000,
		AuthFailuresPerIP: 30,
		BanTime:           10 * time.Minute,
		IPv6Prefix:        64,
		Exempt:            []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
	}
}

// fdHeadroom is how many descriptors DefaultMaxConns leaves for everything
// that is not a connection: listeners, epoll sets, the splice pipe pool,
// files, the admin and monitor sockets.
const fdHeadroom = 256

// DefaultMaxConns derives a connection limit from the process's open-files
// limit (RLIMIT_NOFILE, which Go raises to the hard limit at start): 80% of
// what is left after fdHeadroom, because a connection holds one descriptor
// and a busy spliced tunnel borrows a pipe (two more) per direction (one
// that finds no descriptor for a pipe forwards through a buffer). With
// no readable limit it is 10000; it is never below 64.
func DefaultMaxConns() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY {
		return 10000
	}
	n := (int64(rl.Cur) - fdHeadroom) * 4 / 5
	return int(max(n, 64))
}

// Limiter enforces the per-address and total connection limits. Safe for
// concurrent use.
type Limiter struct {
	now func() time.Time

	mu    sync.Mutex
	lim   Limits
	total int
	ips   map[netip.Addr]*ipState // by limiter key (address or IPv6 prefix)
}

// ipState is one source address's (or IPv6 prefix's) history. Kept until
// idle for a minute, and its rate bucket full, so that disconnecting does
// not reset the rate bucket.
type ipState struct {
	conns      int
	rate       *rate.Limiter // connection rate bucket; nil without ConnRatePerIP
	fails      int           // failed authentications in the current minute
	failsSince time.Time
	bannedTill time.Time
	lastSeen   time.Time
}

// New returns a Limiter enforcing l.
func New(l Limits) *Limiter {
	return &Limiter{lim: l, now: time.Now, ips: make(map[netip.Addr]*ipState)}
}

// AddrOf is the IP address of a, unmapped (IPv4-in-IPv6 as IPv4), with
// its zone (the interface of a link-local address); zero if a has none.
func AddrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		ip = ip.Unmap()
		if ta.Zone != "" && ip.Is6() {
			ip = ip.WithZone(ta.Zone)
		}
		return ip
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// key is ip's limiter key: IPv4 addresses as they are (also in their
// IPv4-mapped IPv6 form), global IPv6
// addresses cut to IPv6Prefix bits, link-local IPv6 addresses by their
// interface (fe80:: with the zone) — a host on the link picks as many
// fe80:: addresses as it likes, so one key per address would give it as
// many limits and ban buckets; the link is the unit an operator can
// name. Called with mu held.
func (l *Limiter) key(ip netip.Addr) netip.Addr {
	if ip.Is4In6() { // a dual-stack socket's IPv4 client: its IPv4 address
		ip = ip.Unmap()
	}
	if !ip.Is6() {
		return ip
	}
	if ip.IsLinkLocalUnicast() {
		return linkLocal.WithZone(ip.Zone())
	}
	bits := l.lim.IPv6Prefix
	if bits <= 0 || bits > 128 {
		bits = 64
	}
	p, err := ip.WithZone("").Prefix(bits)
	if err != nil {
		return ip
	}
	return p.Addr()
}

// linkLocal is the key of every link-local IPv6 address on one interface
// (with that interface as its zone).
var linkLocal = netip.MustParseAddr("fe80::")

// Key is the key under which the per-address limits count ip (global
// IPv6 addresses by their IPv6Prefix), and whether ip is exempt from them:
// a subsystem that bounds something per address on its own counts by it.
func (l *Limiter) Key(ip netip.Addr) (key netip.Addr, exempt bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.key(ip), l.exempt(ip)
}

// exempt reports whether ip is exempt. Called with mu held.
func (l *Limiter) exempt(ip netip.Addr) bool {
	ip = ip.WithZone("")
	v4 := ip.Unmap() // an IPv4 client in IPv6 form is exempt where its IPv4 form is
	for _, p := range l.lim.Exempt {
		if p.Contains(ip) || p.Contains(v4) {
			return true
		}
	}
	return false
}

// Admit decides on a new connection from ip: admitted (ok), with the
// limiter key the connection is counted under (release it when the
// connection ends), or refused for r.
func (l *Limiter) Admit(ip netip.Addr) (key netip.Addr, r reason.Reason, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.MaxConns > 0 && l.total >= l.lim.MaxConns {
		return netip.Addr{}, reason.LimitConns, false
	}
	if l.exempt(ip) {
		l.total++
		return netip.Addr{}, 0, true // the zero key: no per-address state
	}
	k := l.key(ip)
	now := l.now()
	st := l.state(k, now)
	if now.Before(st.bannedTill) {
		return netip.Addr{}, reason.Banned, false
	}
	if l.lim.MaxConnsPerIP > 0 && st.conns >= l.lim.MaxConnsPerIP {
		return netip.Addr{}, reason.LimitConnsPerIP, false
	}
	if st.rate != nil && !st.rate.AllowN(now, 1) {
		return netip.Addr{}, reason.LimitRate, false
	}
	st.conns++
	l.total++
	return k, 0, true
}

// state is key's record, created with a full rate bucket; it is marked
// seen at now. Called with mu held.
func (l *Limiter) state(key netip.Addr, now time.Time) *ipState {
	st := l.ips[key]
	if st == nil {
		st = &ipState{}
		if r := l.lim.ConnRatePerIP; r > 0 {
			st.rate = rate.NewLimiter(rate.Limit(r), max(int(2*r), 1))
		}
		l.ips[key] = st
	}
	st.lastSeen = now
	return st
}

// Release gives back a connection admitted under key.
func (l *Limiter) Release(key netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	l.uncount(key)
}

// uncount takes one connection off key's per-address count (none for the
// zero key). Called with mu held.
func (l *Limiter) uncount(key netip.Addr) {
	if st := l.ips[key]; key.IsValid() && st != nil && st.conns > 0 {
		st.conns--
		st.lastSeen = l.now()
	}
}

// Unlimit takes a connection admitted under key off its address's count
// (it stays in the total): a fleet node's mesh link, once its signature is
// checked, is no client of that address. Release it with the zero key.
func (l *Limiter) Unlimit(key netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.uncount(key)
}

// AuthFailed records a failed authentication from ip; it reports whether
// the address (or its IPv6 prefix) is now banned.
func (l *Limiter) AuthFailed(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.AuthFailuresPerIP <= 0 || l.exempt(ip) {
		return false
	}
	now := l.now()
	st := l.state(l.key(ip), now)
	if now.Before(st.bannedTill) {
		return false // banned already: a late answer neither extends the ban nor bans again
	}
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

// Banned reports whether ip (or its IPv6 prefix) is banned now.
func (l *Limiter) Banned(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.exempt(ip) {
		return false
	}
	st := l.ips[l.key(ip)]
	return st != nil && l.now().Before(st.bannedTill)
}

// Sweep forgets addresses idle for a minute with no connection, no ban
// and a full rate bucket (a new one is full: forgetting one that is still
// refilling, under a rate below one a minute, would lift the rate).
func (l *Limiter) Sweep() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for ip, st := range l.ips {
		if st.conns == 0 && now.After(st.bannedTill) && now.Sub(st.lastSeen) > time.Minute &&
			(st.rate == nil || st.rate.TokensAt(now) >= float64(st.rate.Burst())) {
			delete(l.ips, ip)
		}
	}
}

// SetLimits replaces the limits (SIGHUP); counts and bans are kept, rate
// buckets follow the new rate.
func (l *Limiter) SetLimits(lim Limits) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lim = lim
	for _, st := range l.ips {
		switch r := lim.ConnRatePerIP; {
		case r <= 0:
			st.rate = nil
		case st.rate == nil:
			st.rate = rate.NewLimiter(rate.Limit(r), max(int(2*r), 1))
		default:
			st.rate.SetLimit(rate.Limit(r))
			st.rate.SetBurst(max(int(2*r), 1))
		}
	}
}

// BanTime is the current ban duration.
func (l *Limiter) BanTime() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lim.BanTime
}
