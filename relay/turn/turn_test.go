package turn

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/logging"
	pturn "github.com/pion/turn/v5"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/auth"
	"github.com/meetpoint/meetpoint/relay/limits"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

var secret = []byte("turn-test-secret-0123456789")

// loopbackPeers lets allocations reach plain sockets on loopback, which
// the peer policy refuses by default (peer_test.go tests the policy).
var loopbackPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// start serves TURN beside a relay that refuses tokens starting with "bad".
func start(t *testing.T, cfg Config) (*Service, *relay.Server) {
	return startWith(t, cfg, nil)
}

func startWith(t *testing.T, cfg Config, mutate func(*relay.Config)) (*Service, *relay.Server) {
	t.Helper()
	srv := relaytest.New(t, func(c *relay.Config) {
		c.Auth = relaytest.RefuseBad{}
		if mutate != nil {
			mutate(c)
		}
	})
	cfg.Secret, cfg.Listen = secret, "127.0.0.1:0"
	s, err := New(srv, cfg)
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, srv)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, srv
}

type creds struct {
	Username, Password string
	TTL                int64
	URIs               []string `json:"uris"`
}

func getCreds(t *testing.T, srv *relay.Server, token string) (int, creds) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+relaytest.Addr(srv)+"/v1/turn/credentials", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c creds
	_ = json.NewDecoder(resp.Body).Decode(&c)
	return resp.StatusCode, c
}

// client is a pion TURN client of s with the given credentials.
func client(t *testing.T, s *Service, user, pass string) *pturn.Client {
	t.Helper()
	return clientFrom(t, s, "127.0.0.1", user, pass)
}

// clientFrom is client from the local address ip (another client
// address on loopback).
func clientFrom(t *testing.T, s *Service, ip, user, pass string) *pturn.Client {
	t.Helper()
	conn, err := net.ListenPacket("udp4", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := pturn.NewClient(&pturn.ClientConfig{STUNServerAddr: s.Addr().String(), TURNServerAddr: s.Addr().String(),
		Conn: conn, Username: user, Password: pass, Realm: "meetpoint", LoggerFactory: logging.NewDefaultLoggerFactory()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); conn.Close() })
	return c
}

// TestTURNCredentialsHeadSpendsNoToken: net/http routes HEAD to the GET
// pattern, so a HEAD of /v1/turn/credentials took a one-time token and
// answered 200 without the credentials; the GET after it was refused.
// HEAD is now 405 (Allow: GET) before the token is looked at.
func TestTURNCredentialsHeadSpendsNoToken(t *testing.T) {
	store := auth.NewMemStore()
	_, srv := startWith(t, Config{PortMin: 40000, PortMax: 40100}, func(c *relay.Config) { c.Auth = auth.NewOneTime(store, 0) })
	tok, _, err := auth.Mint(context.Background(), store, "hanna", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("HEAD", "http://"+relaytest.Addr(srv)+"/v1/turn/credentials", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
		t.Errorf("HEAD: %s, Allow %q; want 405, Allow GET", resp.Status, resp.Header.Get("Allow"))
	}
	if code, cr := getCreds(t, srv, tok); code != 200 || !strings.HasSuffix(cr.Username, ":hanna") {
		t.Fatalf("GET with the token after a HEAD: %d %+v, want 200 and hanna's credentials", code, cr)
	}
}

// TestTURNRelaysWithRESTCredentials: credentials from the relay port (the
// relay's authenticator decides on the bearer token) allocate on the
// relay's TURN; two allocations relay datagrams to each other; STUN
// binding is answered on the same socket.
func TestTURNRelaysWithRESTCredentials(t *testing.T) {
	s, srv := start(t, Config{PortMin: 40000, PortMax: 40100})
	if code, _ := getCreds(t, srv, ""); code != 401 {
		t.Errorf("credentials without a token: %d, want 401", code)
	}
	if code, _ := getCreds(t, srv, "bad-token"); code != 401 {
		t.Errorf("credentials for a refused token: %d, want 401", code)
	}
	code, cr := getCreds(t, srv, "good-token")
	if code != 200 || !strings.HasSuffix(cr.Username, ":anonymous") || cr.TTL != 3600 || len(cr.URIs) != 3 || !strings.HasSuffix(cr.URIs[1], "?transport=tcp") ||
		!strings.HasPrefix(cr.URIs[0], "turn:") || !strings.Contains(cr.URIs[0], "transport=udp") {
		t.Fatalf("credentials: %d %+v", code, cr)
	}
	a, b := client(t, s, cr.Username, cr.Password), client(t, s, cr.Username, cr.Password)
	mapped, err := a.SendBindingRequest()
	if err != nil || !strings.HasPrefix(mapped.String(), "127.0.0.1:") {
		t.Fatalf("STUN binding: %v %v", mapped, err)
	}
	ra, err := a.Allocate()
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	defer ra.Close()
	rb, err := b.Allocate()
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	defer rb.Close()
	if p := ra.LocalAddr().(*net.UDPAddr).Port; p < 40000 || p > 40100 {
		t.Errorf("relayed port %d outside the range", p)
	}
	msg := []byte("through meetpoint's TURN")
	// Each side writes first: pion's client creates the permission.
	if _, err := rb.WriteTo([]byte("hi"), ra.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	relays(t, ra, rb, msg)
	if s.allocs.Get() != 2 || s.allocsTotal.Get() != 2 {
		t.Errorf("allocations counted %d active, %d total; want 2, 2", s.allocs.Get(), s.allocsTotal.Get())
	}
}

// TestTURNRefusals: bad and expired credentials are refused, and a user
// at the quota cannot allocate more.
func TestTURNRefusals(t *testing.T) {
	s, _ := start(t, Config{MaxPerUser: 1})
	user, pass := Credentials(secret, "alice", time.Minute, time.Now())
	if _, err := client(t, s, user, "wrong").Allocate(); err == nil {
		t.Error("allocated with a wrong password")
	}
	old, oldPass := Credentials(secret, "alice", -time.Minute, time.Now())
	if _, err := client(t, s, old, oldPass).Allocate(); err == nil {
		t.Error("allocated with expired credentials")
	}
	first, err := client(t, s, user, pass).Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := client(t, s, user, pass).Allocate(); err == nil {
		t.Error("a second allocation over the per-user quota")
	}
	if s.quotas.Get() != 1 || s.authFail.Get() < 2 {
		t.Errorf("refusals counted: quota %d, auth %d", s.quotas.Get(), s.authFail.Get())
	}
}

// TestTURNStaticUser: a static long-term user (--turn-user, as Disco's
// --ice-username and Babble's) allocates with its password, for as long
// as the relay runs (nothing in it expires); its allocations relay to
// each other; a wrong password is refused.
func TestTURNStaticUser(t *testing.T) {
	s, _ := start(t, Config{User: "babble", Password: "static-password", AllowPeers: loopbackPeers})
	if _, err := client(t, s, "babble", "wrong-password").Allocate(); err == nil {
		t.Error("the static user allocated with a wrong password")
	}
	a, err := client(t, s, "babble", "static-password").Allocate()
	if err != nil {
		t.Fatalf("the static user: %v", err)
	}
	defer a.Close()
	b, err := client(t, s, "babble", "static-password").Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.WriteTo([]byte("hi"), a.LocalAddr()); err != nil { // each side writes first: pion's client creates the permission
		t.Fatal(err)
	}
	relays(t, a, b, []byte("from a"))
	relays(t, b, a, []byte("from b"))
	for _, bad := range []Config{{User: "a:b", Password: "static-password"}, {User: "babble", Password: "short"}} {
		if _, err := New(relaytest.New(t, nil), Config{Secret: secret, User: bad.User, Password: bad.Password}); err == nil {
			t.Errorf("static user %q with password %q accepted", bad.User, bad.Password)
		}
	}
}

// TestTURNQuotaPerAddress: allocations are counted per credential and
// per client address. Every token without a subject shares the user
// "anonymous" (and a Babble group one static user), so one holder at
// one address stops at the address's bound and another address with the
// same credential still allocates; a credential's own bound holds across
// addresses.
func TestTURNQuotaPerAddress(t *testing.T) {
	s, srv := startWith(t, Config{MaxPerAddress: 3, MaxPerShared: 5, User: "babble", Password: "static-password"},
		func(c *relay.Config) { c.Limits.Exempt = nil }) // loopback addresses count as clients'
	_, cr := getCreds(t, srv, "any-token")
	if !strings.HasSuffix(cr.Username, ":"+Anonymous) {
		t.Fatalf("credentials %q, want the anonymous user", cr.Username)
	}
	for i, cred := range [][2]string{{cr.Username, cr.Password}, {"babble", "static-password"}} {
		ip := func(host int) string { return fmt.Sprintf("127.0.%d.%d", i+1, host) } // each credential its own addresses
		held := 0
		for ; held < 10; held++ {
			a, err := clientFrom(t, s, ip(2), cred[0], cred[1]).Allocate()
			if err != nil {
				break
			}
			defer a.Close()
		}
		if held != 3 {
			t.Fatalf("%s from one address: %d allocations, want the address's bound, 3", cred[0], held)
		}
		a, err := clientFrom(t, s, ip(3), cred[0], cred[1]).Allocate()
		if err != nil {
			t.Fatalf("%s from another address while the first holds its bound: %v", cred[0], err)
		}
		defer a.Close()
		b, err := clientFrom(t, s, ip(4), cred[0], cred[1]).Allocate()
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if _, err := clientFrom(t, s, ip(5), cred[0], cred[1]).Allocate(); err == nil {
			t.Errorf("%s: a sixth allocation over the shared credential's bound, 5", cred[0])
		}
	}
	if s.addrQuotas.Get() != 2 || s.quotas.Get() != 2 {
		t.Errorf("refusals counted: quota_address %d, quota %d; want 2 and 2", s.addrQuotas.Get(), s.quotas.Get())
	}
}

// TestTURNQuotaPerAddressAcrossReload: an allocation is uncounted as it
// was counted, whatever --limit-exempt (reloaded on SIGHUP) says by its
// end. One made while its address counted and deleted while the address
// was exempt left its count behind: once the exemption went again, the
// address was refused (486) for allocations it no longer held, until a
// restart.
func TestTURNQuotaPerAddressAcrossReload(t *testing.T) {
	var lim limits.Limits
	s, srv := startWith(t, Config{MaxPerAddress: 1}, func(c *relay.Config) {
		c.Limits.Exempt = nil // loopback addresses count as clients'
		lim = c.Limits
	})
	user, pass := Credentials(secret, "carol", time.Minute, time.Now())
	setExempt := func(p ...netip.Prefix) {
		t.Helper()
		l := lim
		l.Exempt = p
		if err := srv.SetLimits(l); err != nil {
			t.Fatal(err)
		}
	}
	c := client(t, s, user, pass)
	a, err := c.Allocate() // counted: 127.0.0.1 holds its bound, 1
	if err != nil {
		t.Fatal(err)
	}
	setExempt(netip.MustParsePrefix("127.0.0.0/8"))
	a.Close() // a Refresh with lifetime 0: deleted while exempt
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, srv, `meetpoint_turn_allocations_active`) == 0
	}, "the allocation deleted")
	setExempt()
	b, err := c.Allocate() // counted again: 127.0.0.1 holds none
	if err != nil {
		t.Fatalf("an allocation from an address that holds none (after its exemption came and went): %v", err)
	}
	defer b.Close()
	if n := s.addrQuotas.Get(); n != 0 {
		t.Errorf("quota_address refusals counted %d, want 0", n)
	}
}

// TestTURNQuotaConcurrentAllocates: the bounds hold for Allocates that
// are in flight together. pion serves each TCP control connection on its
// own goroutine and asks for the quota before it makes the allocation, so
// a check that counted only allocations already made let every Allocate
// between the two through. The test lines them up at the quota decision
// (it holds the service's lock until all are waiting there, as a loaded
// relay does by chance), a few times over: 30 Allocates of one user with
// a bound of 2 were granted up to all 30. Then the same for one address's
// bound, each connection its own user.
func TestTURNQuotaConcurrentAllocates(t *testing.T) {
	s, srv := startWith(t, Config{MaxPerUser: 2, MaxPerAddress: 3},
		func(c *relay.Config) { c.Limits.Exempt = nil }) // loopback addresses count as clients'
	const n = 30
	race := func(user func(i int) string, from string) int {
		t.Helper()
		var clients []*pturn.Client
		for i := range n {
			tc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).Dial("tcp", relaytest.Addr(srv))
			if err != nil {
				t.Fatal(err)
			}
			defer tc.Close()
			u, p := Credentials(secret, user(i), time.Minute, time.Now())
			clients = append(clients, newStreamClient(t, relaytest.Addr(srv), tc, u, p))
		}
		var mu sync.Mutex
		var granted []net.PacketConn
		var wg sync.WaitGroup
		func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, c := range clients {
				wg.Go(func() {
					if a, err := c.Allocate(); err == nil {
						mu.Lock()
						granted = append(granted, a)
						mu.Unlock()
					}
				})
			}
			relaytest.WaitFor(t, func() bool { return inQuota() == n }, "every Allocate at the quota decision")
		}()
		wg.Wait()
		for _, a := range granted {
			a.Close()
		}
		relaytest.WaitFor(t, func() bool {
			return relaytest.Metric(t, srv, `meetpoint_turn_allocations_active`) == 0
		}, "the allocations deleted")
		return len(granted)
	}
	for round := range 3 {
		if got := race(func(int) string { return "mallory" }, "127.0.0.2"); got != 2 {
			t.Fatalf("round %d: %d Allocates of one user at once (bound 2): %d granted", round, n, got)
		}
		if got := race(func(i int) string { return fmt.Sprintf("user%d", i) }, "127.0.0.3"); got != 3 {
			t.Fatalf("round %d: %d Allocates from one address at once (bound 3): %d granted", round, n, got)
		}
	}
	if q, qa := s.quotas.Get(), s.addrQuotas.Get(); q < 3*(n-2) || qa < 3*(n-3) {
		t.Errorf("refusals counted: quota %d, quota_address %d; want at least %d and %d", q, qa, 3*(n-2), 3*(n-3))
	}
}

// inQuota is how many goroutines are in Service.quota.
func inQuota() int {
	buf := make([]byte, 1<<20)
	for {
		if n := runtime.Stack(buf, true); n < len(buf) {
			return strings.Count(string(buf[:n]), "turn.(*Service).quota(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestCredentialsFormat: coturn's TURN REST scheme, byte for byte.
func TestCredentialsFormat(t *testing.T) {
	u, p := Credentials([]byte("north"), "bob", time.Hour, time.Unix(1_700_000_000, 0))
	// echo -n 1700003600:bob | openssl dgst -sha1 -hmac north -binary | base64
	if u != "1700003600:bob" || p != "v0IYSihM8PccX7hQh0Fbh4kDdk8=" {
		t.Errorf("%s %s", u, p)
	}
}

// TestTURNOverTCPOnTheRelayPort: a TURN client over TCP, and over TLS, to
// the relay's own port (the dispatch table's STUN branch, after TLS is
// unwrapped) allocates and relays.
func TestTURNOverTCPOnTheRelayPort(t *testing.T) {
	t.Run("tcp", func(t *testing.T) {
		s, srv := start(t, Config{AllowPeers: loopbackPeers})
		tc, err := net.Dial("tcp", relaytest.Addr(srv))
		if err != nil {
			t.Fatal(err)
		}
		turnOverStream(t, s, srv, tc)
	})
	t.Run("tls", func(t *testing.T) {
		store, clientTLS := relaytest.TLS(t)
		s, srv := startWith(t, Config{AllowPeers: loopbackPeers}, func(c *relay.Config) { c.TLS = store.TLSConfig() })
		tc, err := tls.Dial("tcp", relaytest.Addr(srv), clientTLS)
		if err != nil {
			t.Fatal(err)
		}
		turnOverStream(t, s, srv, tc)
	})
}

// turnOverStream allocates over tc and relays a datagram to a UDP peer.
func turnOverStream(t *testing.T, s *Service, srv *relay.Server, tc net.Conn) {
	t.Helper()
	user, pass := Credentials(secret, "stream-user", time.Minute, time.Now())
	defer tc.Close()
	c, err := pturn.NewClient(&pturn.ClientConfig{STUNServerAddr: relaytest.Addr(srv), TURNServerAddr: relaytest.Addr(srv),
		Conn: pturn.NewSTUNConn(tc), Username: user, Password: pass, Realm: "meetpoint", LoggerFactory: logging.NewDefaultLoggerFactory()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	relayed, err := c.Allocate()
	if err != nil {
		t.Fatalf("allocate over TCP on the relay port: %v", err)
	}
	defer relayed.Close()
	// A plain UDP peer exchanges datagrams with the allocation.
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	relays(t, relayed, peer, []byte("tcp-carried")) // the write creates the permission
	if s.allocsTotal.Get() != 1 {
		t.Errorf("allocations over TCP counted %d", s.allocsTotal.Get())
	}
}

// relays sends msg from one packet conn to another until it arrives (UDP
// may drop; 5 s at most), and checks it comes from the sender's address.
func relays(t *testing.T, from, to net.PacketConn, msg []byte) {
	t.Helper()
	buf := make([]byte, 1500)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := from.WriteTo(msg, to.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		_ = to.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, src, err := to.ReadFrom(buf)
		if err == nil && bytes.Equal(buf[:n], msg) && src.String() == from.LocalAddr().String() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no datagram from %s to %s: %v", from.LocalAddr(), to.LocalAddr(), err)
		}
	}
}

// TestTURNRateAndAllocations: with a rate per allocation, datagrams over
// it are dropped and counted; each allocation's counters are listed by
// GET /v1/turn/allocations (admin key only) and summed in the metrics.
func TestTURNRateAndAllocations(t *testing.T) {
	const admin = "turn-admin-key-0123456789"
	s, srv := start(t, Config{MaxRate: 20000, AdminKey: admin, AllowPeers: loopbackPeers})
	user, pass := Credentials(secret, "carol", time.Minute, time.Now())
	ra, err := client(t, s, user, pass).Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer ra.Close()
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	chunk := bytes.Repeat([]byte{7}, 1000)
	for i := 0; i < 200; i++ { // 200 KB at once: the 64 KiB burst and 20 KB/s pass
		if _, err := ra.WriteTo(chunk, peer.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	buf := make([]byte, 2000)
	for {
		_ = peer.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, _, err := peer.ReadFrom(buf); err != nil {
			break
		}
		got++
	}
	if got < 20 || got > 120 {
		t.Fatalf("the peer received %d of 200 datagrams through a 20 KB/s allocation, want the burst and the rate (about 66-100)", got)
	}
	get := func(key string) (int, []AllocationInfo) {
		req, _ := http.NewRequest("GET", "http://"+relaytest.Addr(srv)+"/v1/turn/allocations", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out []AllocationInfo
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if code, _ := get("not-the-key"); code != 401 {
		t.Fatalf("allocations without the admin key: %d", code)
	}
	code, list := get(admin)
	if code != 200 || len(list) != 1 {
		t.Fatalf("allocations: %d %+v", code, list)
	}
	a := list[0]
	// (Datagrams may also be lost before TURN reads them: loopback UDP
	// buffers overflow too, so dropped + relayed <= 200.)
	if a.User != "carol" || a.TxPackets != uint64(got) || a.TxBytes != uint64(got*1000) || a.Dropped == 0 || a.TxPackets+a.Dropped > 200 {
		t.Fatalf("allocation %+v; the peer got %d datagrams", a, got)
	}
	if n := relaytest.Metric(t, srv, `meetpoint_turn_dropped_total{reason="rate"}`); n != float64(a.Dropped) {
		t.Fatalf("dropped counted %v, want %d", n, a.Dropped)
	}
	if n := relaytest.Metric(t, srv, `meetpoint_turn_relayed_packets_total{dir="to_peers"}`); n != float64(got) {
		t.Fatalf("relayed counted %v, want %d", n, got)
	}
	ra.Close()
	relaytest.WaitFor(t, func() bool { _, l := get(admin); return len(l) == 0 }, "the allocation gone from the list")
}

// TestCredentialsForAppKey: a registered application's key is a bearer
// token for credentials too (the relay's authenticator would refuse this
// one: it starts with "bad"), with the app id as the TURN user.
func TestCredentialsForAppKey(t *testing.T) {
	const key = "bad-looking-but-the-app-key-0123"
	s, srv := start(t, Config{Apps: map[string]string{"chat": key, "other": "another-app-key-0123456"}})
	code, cr := getCreds(t, srv, key)
	if code != 200 || !strings.HasSuffix(cr.Username, ":chat") {
		t.Fatalf("credentials for an app key: %d %+v", code, cr)
	}
	if _, err := client(t, s, cr.Username, cr.Password).Allocate(); err != nil {
		t.Fatalf("allocating with them: %v", err)
	}
	if code, _ := getCreds(t, srv, "bad-not-an-app-key-0123456"); code != 401 {
		t.Fatalf("a refused token that is no app key: %d", code)
	}
}

// TestParsePorts: --turn-ports is MIN-MAX with 1 ≤ MIN ≤ MAX ≤ 65535.
func TestParsePorts(t *testing.T) {
	if lo, hi, err := ParsePorts("42000-42999"); err != nil || lo != 42000 || hi != 42999 {
		t.Fatalf("42000-42999: %d %d %v", lo, hi, err)
	}
	for _, v := range []string{"", "42000", "0-10", "9-1", "1-70000", "a-b", "-5", "5-"} {
		if _, _, err := ParsePorts(v); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}

// TestCredentialsTokenGuessesBanned: a token the relay's authenticator
// refuses at /v1/turn/credentials counts toward the address's ban as a
// refused Authenticate does, so the endpoint is no unbounded token
// oracle: past AuthFailuresPerIP the address is refused even its good
// token, and another address is served.
func TestCredentialsTokenGuessesBanned(t *testing.T) {
	_, srv := startWith(t, Config{}, func(c *relay.Config) {
		c.Limits.Exempt = nil // 127.0.0.2 is an ordinary client address
		c.Limits.AuthFailuresPerIP = 5
	})
	url := "http://" + relaytest.Addr(srv) + "/v1/turn/credentials"
	for i := range 6 {
		if code, _, _ := relaytest.HTTPFrom(t, "127.0.0.2", "GET", url, "", "Authorization", fmt.Sprintf("Bearer bad-guess-%d", i)); code != 401 {
			t.Fatalf("guess %d: %d, want 401", i, code)
		}
	}
	if n := relaytest.Metric(t, srv, "meetpoint_bans_total"); n != 1 {
		t.Errorf("meetpoint_bans_total %v after 6 refused tokens (limit 5 a minute), want 1", n)
	}
	if code := relaytest.StatusFrom("127.0.0.2", "GET", url, "Authorization", "Bearer good-token"); code == 200 {
		t.Error("the guessing address still gets credentials for a good token")
	}
	if code := relaytest.StatusFrom("127.0.0.3", "GET", url, "Authorization", "Bearer good-token"); code != 200 {
		t.Errorf("another address: %d, want 200", code)
	}
}

// TestCredentialsSchemeAndOutage: the Bearer scheme is taken in any case
// (RFC 7235; "bearer TOKEN" once read as no token at all), and a token
// the authenticator could not check (its store down) gets 503, counted
// as auth_error: it was not refused, so it is no 401 and no guess.
func TestCredentialsSchemeAndOutage(t *testing.T) {
	_, srv := startWith(t, Config{}, func(c *relay.Config) { c.Limits.Exempt = nil })
	url := "http://" + relaytest.Addr(srv) + "/v1/turn/credentials"
	if code := relaytest.StatusFrom("127.0.0.2", "GET", url, "Authorization", "bearer good-token"); code != 200 {
		t.Errorf(`"bearer good-token": %d, want 200`, code)
	}
	for i := range 3 {
		code, hdr, _ := relaytest.HTTPFrom(t, "127.0.0.2", "GET", url, "", "Authorization", fmt.Sprintf("Bearer down-%d", i))
		if code != 503 || hdr.Get("Retry-After") == "" {
			t.Fatalf("a token the authenticator could not check: %d (Retry-After %q), want 503 with Retry-After", code, hdr.Get("Retry-After"))
		}
	}
	if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="auth_error"}`); n != 3 {
		t.Errorf(`meetpoint_turn_refused_total{reason="auth_error"} = %v, want 3`, n)
	}
	if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="auth"}`); n > 0 {
		t.Errorf(`meetpoint_turn_refused_total{reason="auth"} = %v: an outage counted as a refused token`, n)
	}
}

// TestTURNUnpermittedPeersNotMetered: datagrams that reach an
// allocation's relay port from an address it holds no permission for are
// pion's to drop, unrelayed: they are neither counted as relayed nor
// charged to the allocation's rate. Counted first, anyone who knew a
// relayed address (ICE hands it to the other side) inflated its rx
// counters and, with --turn-max-rate, drained its bucket so that its
// permitted peer's datagrams were dropped.
func TestTURNUnpermittedPeersNotMetered(t *testing.T) {
	s, _ := start(t, Config{MaxRate: 20000, AllowPeers: loopbackPeers})
	user, pass := Credentials(secret, "dora", time.Minute, time.Now())
	ra, err := client(t, s, user, pass).Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer ra.Close()
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	stranger, err := net.ListenPacket("udp4", "127.0.0.2:0") // permissions are by IP address
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	if _, err := ra.WriteTo([]byte("hi"), peer.LocalAddr()); err != nil { // the peer's permission
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{9}, 1000)
	for i := 0; i < 100; i++ { // 100 KB, past the 64 KiB burst, from no permitted peer
		if _, err := stranger.WriteTo(chunk, ra.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	// The relay socket reads in order: once the peer's datagram arrives,
	// the stranger's have all been read (or lost before it).
	msg := []byte("from the permitted peer")
	sent := 0
	buf := make([]byte, 2000)
	deadline := time.Now().Add(relaytest.Patience)
	for {
		if _, err := peer.WriteTo(msg, ra.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		sent++
		_ = ra.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := ra.ReadFrom(buf)
		if err == nil && bytes.Equal(buf[:n], msg) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the permitted peer's datagram never arrived (%d sent): %v", sent, err)
		}
	}
	list := s.Allocations()
	if len(list) != 1 {
		t.Fatalf("allocations: %+v", list)
	}
	a := list[0]
	if a.RxPackets > uint64(sent) || a.RxBytes > uint64(sent*len(msg)) || a.Dropped != 0 || s.dropped.Get() != 0 {
		t.Fatalf("after 100 datagrams from an unpermitted address and %d from the peer: %+v (dropped metric %d); want only the peer's counted, none dropped",
			sent, a, s.dropped.Get())
	}
}

// TestTURNOneAllocationPerClientAddress: a relay listening on two
// addresses gets TURN over TCP on both, and a client can reach both from
// one transport address (SO_REUSEADDR). pion tells the quota and
// permission handlers only the client's address, so the relay keeps one
// allocation per client transport address: a second, through the
// relay's other address, is refused and counted (client_in_use). Allowed,
// its hold uncounted the first, so one address held more allocations
// than --turn-max-per-address (and deleting the first uncounted the
// second).
func TestTURNOneAllocationPerClientAddress(t *testing.T) {
	s, srv := startWith(t, Config{MaxPerAddress: 2}, func(c *relay.Config) {
		c.Listen = []string{"127.0.0.1:0", "127.0.0.2:0"}
		c.Limits.Exempt = nil // loopback addresses count as clients'
	})
	addrs := srv.Addrs()
	if len(addrs) != 2 {
		t.Fatalf("relay addresses %v, want two", addrs)
	}
	user, pass := Credentials(secret, "erin", time.Minute, time.Now())
	reuse := func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
		}); err != nil {
			return err
		}
		return serr
	}
	allocate := func(local *net.TCPAddr, to net.Addr) (*net.TCPAddr, error) {
		d := net.Dialer{LocalAddr: local, Control: reuse}
		tc, err := d.Dial("tcp", to.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
		a, err := newStreamClient(t, to.String(), tc, user, pass).Allocate()
		if err == nil {
			t.Cleanup(func() { a.Close() })
		}
		return tc.LocalAddr().(*net.TCPAddr), err
	}
	from, err := allocate(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}, addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	held := 1
	if _, err := allocate(from, addrs[1]); err == nil { // the same client address, the relay's other
		held++
	}
	if _, err := allocate(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}, addrs[0]); err == nil { // another port
		held++
	}
	if held > 2 {
		s.mu.Lock()
		n := s.perAddr[netip.MustParseAddr("127.0.0.3")]
		s.mu.Unlock()
		t.Fatalf("127.0.0.3 holds %d allocations, over its bound of 2 (per-address count %d)", held, n)
	}
	if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="client_in_use"}`); n != 1 {
		t.Errorf("refusals counted as client_in_use: %v, want 1", n)
	}
}
