package limits

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/reason"
)

// refusal is Admit's answer as a word: "admitted" or the refusal's name.
func refusal(_ netip.Addr, r reason.Reason, ok bool) string {
	if ok {
		return "admitted"
	}
	return r.String()
}

func TestLimiterUnit(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(Limits{MaxConnsPerIP: 2, ConnRatePerIP: 1, AuthFailuresPerIP: 1, BanTime: time.Minute})
	l.now = func() time.Time { return now }
	ip := netip.MustParseAddr("192.0.2.1")
	admit := func() string { return refusal(l.Admit(ip)) }
	for range 2 {
		if r := admit(); r != "admitted" {
			t.Fatalf("burst of 2 refused: %v", r)
		}
	}
	if r := admit(); r != reason.LimitConnsPerIP.String() {
		t.Fatalf("3rd: %v", r)
	}
	l.Release(ip)
	if r := admit(); r != reason.LimitRate.String() {
		t.Fatalf("rate: %v", r)
	}
	now = now.Add(2 * time.Second)
	if r := admit(); r != "admitted" {
		t.Fatalf("after refill: %v", r)
	}
	if l.AuthFailed(ip) || !l.AuthFailed(ip) {
		t.Fatal("ban after the 2nd failure within a minute")
	}
	now = now.Add(30 * time.Second)
	if r := admit(); r != reason.Banned.String() {
		t.Fatalf("banned: %v", r)
	}
	now = now.Add(31 * time.Second)
	l.Release(ip)
	l.Release(ip)
	now = now.Add(2 * time.Minute)
	l.Sweep()
	if len(l.ips) != 0 {
		t.Fatal("idle address not swept")
	}
}

// TestLimiterIPv6Prefix: IPv6 clients share per-address state by /64 (a
// host owns its /64, so the full address would escape every limit); the
// prefix length is configurable; link-local addresses are keyed by their
// interface (zone).
func TestLimiterIPv6Prefix(t *testing.T) {
	l := New(Limits{MaxConnsPerIP: 2})
	a := netip.MustParseAddr("2001:db8:1:2::1")
	b := netip.MustParseAddr("2001:db8:1:2:ffff::9")
	other := netip.MustParseAddr("2001:db8:1:3::1")
	ka, _, ok1 := l.Admit(a)
	kb, _, ok2 := l.Admit(b)
	if !ok1 || !ok2 || ka != kb {
		t.Fatalf("first two from one /64: %v %v, keys %v %v", ok1, ok2, ka, kb)
	}
	if r := refusal(l.Admit(netip.MustParseAddr("2001:db8:1:2:1234::77"))); r != reason.LimitConnsPerIP.String() {
		t.Fatalf("third address of the same /64: %v, want limit_conns_per_ip", r)
	}
	if r := refusal(l.Admit(other)); r != "admitted" {
		t.Fatalf("another /64: %v", r)
	}
	l.Release(ka)
	if r := refusal(l.Admit(netip.MustParseAddr("2001:db8:1:2::42"))); r != "admitted" {
		t.Fatalf("after a release: %v", r)
	}
	ll := New(Limits{MaxConnsPerIP: 1, IPv6Prefix: 128})
	if r := refusal(ll.Admit(a)); r != "admitted" {
		t.Fatal(r)
	}
	if r := refusal(ll.Admit(b)); r != "admitted" {
		t.Fatalf("prefix 128 keys by address: %v", r)
	}
	// Link-local: a host picks as many fe80:: addresses as it likes, so
	// they count per interface (zone), all addresses on it together.
	zl := New(Limits{MaxConnsPerIP: 1})
	if r := refusal(zl.Admit(netip.MustParseAddr("fe80::1%eth0"))); r != "admitted" {
		t.Fatal(r)
	}
	if r := refusal(zl.Admit(netip.MustParseAddr("fe80::1%eth0"))); r != reason.LimitConnsPerIP.String() {
		t.Fatalf("the same link-local host again: %v, want limit_conns_per_ip", r)
	}
	if r := refusal(zl.Admit(netip.MustParseAddr("fe80::2:3:4:5%eth0"))); r != reason.LimitConnsPerIP.String() {
		t.Fatalf("another address on the same link: %v, want limit_conns_per_ip", r)
	}
	bl := New(Limits{AuthFailuresPerIP: 3, BanTime: time.Minute})
	for i := range 4 {
		bl.AuthFailed(netip.AddrFrom16([16]byte{0xfe, 0x80, 15: byte(i + 1)}).WithZone("eth0"))
	}
	if r := refusal(bl.Admit(netip.MustParseAddr("fe80::99%eth0"))); r != reason.Banned.String() {
		t.Fatalf("failures from four link-local addresses on one link, then a fifth address: %v, want banned", r)
	}
	if r := refusal(bl.Admit(netip.MustParseAddr("fe80::99%eth1"))); r != "admitted" {
		t.Fatalf("another link after a ban on eth0: %v", r)
	}
	if k, r, ok := zl.Admit(netip.MustParseAddr("fe80::1%eth1")); !ok || k.Zone() != "eth1" {
		t.Fatalf("the same address on another link: %v key %v", r, k)
	}
	ex := New(Limits{MaxConnsPerIP: 1, Exempt: []netip.Prefix{netip.MustParsePrefix("fe80::/10")}})
	for range 3 {
		if r := refusal(ex.Admit(netip.MustParseAddr("fe80::9%eth0"))); r != "admitted" {
			t.Fatalf("an exempt link-local prefix with a zone: %v", r)
		}
	}
	v4 := New(Limits{MaxConnsPerIP: 1})
	if k, _, _ := v4.Admit(netip.MustParseAddr("192.0.2.7")); k != netip.MustParseAddr("192.0.2.7") {
		t.Fatalf("IPv4 key %v", k)
	}
	// An IPv4 address in IPv6 form (a dual-stack socket's) is that IPv4
	// address: its own key, not the /64 every IPv4 client would share,
	// and exempt where its IPv4 form is.
	if k, _, ok := v4.Admit(netip.MustParseAddr("::ffff:192.0.2.8")); !ok || k != netip.MustParseAddr("192.0.2.8") {
		t.Fatalf("IPv4-mapped key %v (admitted %v), want 192.0.2.8", k, ok)
	}
	if r := refusal(v4.Admit(netip.MustParseAddr("::ffff:192.0.2.7"))); r != reason.LimitConnsPerIP.String() {
		t.Fatalf("192.0.2.7 again in IPv6 form: %v, want limit_conns_per_ip", r)
	}
	mx := New(Limits{MaxConnsPerIP: 1, Exempt: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	if _, exempt := mx.Key(netip.MustParseAddr("::ffff:127.0.0.1")); !exempt {
		t.Fatal("::ffff:127.0.0.1 not exempt under 127.0.0.1/32")
	}
}

// TestDefaultMaxConns: the default connection limit follows the
// descriptor limit, with headroom.
func TestDefaultMaxConns(t *testing.T) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Skip(err)
	}
	got := DefaultMaxConns()
	if got <= 0 || uint64(got) >= rl.Cur {
		t.Fatalf("DefaultMaxConns() = %d with RLIMIT_NOFILE %d", got, rl.Cur)
	}
	if DefaultLimits().MaxConns != got {
		t.Fatal("DefaultLimits does not use DefaultMaxConns")
	}
}

// TestAddrOfKeepsZone: the zone of a link-local peer survives into the key.
func TestAddrOfKeepsZone(t *testing.T) {
	a := AddrOf(&net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 1, Zone: "veth0"})
	if a != netip.MustParseAddr("fe80::1%veth0") {
		t.Fatalf("AddrOf = %v", a)
	}
	if a := AddrOf(&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 1}); a != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("mapped: %v", a)
	}
}

// TestRatesForgetFullBuckets: Rates bounds each key to its burst, then its
// rate, and forgets buckets that have filled up again, so its memory
// follows the addresses active within one refill.
func TestRatesForgetFullBuckets(t *testing.T) {
	r := NewRates(1, 2) // one a second, bursts of two
	now := time.Unix(1_800_000_000, 0)
	a := netip.MustParseAddr("192.0.2.1")
	for i, want := range []bool{true, true, false} {
		if got := r.Allow(a, now); got != want {
			t.Fatalf("request %d at once: allowed %v, want a burst of 2, then refused", i+1, got)
		}
	}
	if !r.Allow(a, now.Add(time.Second)) {
		t.Fatal("refilled after a second")
	}
	for i := range 2000 {
		r.Allow(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), now)
	}
	later := now.Add(10 * time.Second) // every bucket full again
	for i := range 1024 {
		r.Allow(a, later.Add(time.Duration(i)*time.Second))
	}
	if n := r.Len(); n > 1 {
		t.Fatalf("%d buckets kept after every one refilled, want at most the active one", n)
	}
}

// TestSweepKeepsRefillingBucket: Sweep forgets an idle address only once
// its rate bucket has filled up again, as a new one would be. With a rate
// under one connection a minute (conn-rate-per-ip 0.01: one per 100 s)
// the bucket is not full a minute after the last connection closed, and
// forgetting it then gave the address a full bucket: one connection every
// minute and a bit, not every 100 s.
func TestSweepKeepsRefillingBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(Limits{ConnRatePerIP: 0.01})
	l.now = func() time.Time { return now }
	ip := netip.MustParseAddr("192.0.2.7")
	key, r, ok := l.Admit(ip)
	if !ok {
		t.Fatalf("first connection refused: %v", r)
	}
	l.Release(key)
	now = now.Add(61 * time.Second)
	l.Sweep()
	now = now.Add(time.Second)
	if got := refusal(l.Admit(ip)); got != reason.LimitRate.String() {
		t.Fatalf("62 s after a connection, at one per 100 s: %s, want %s", got, reason.LimitRate)
	}
	now = now.Add(40 * time.Second)
	if got := refusal(l.Admit(ip)); got != "admitted" {
		t.Fatalf("102 s after a connection, at one per 100 s: %s", got)
	}
}
