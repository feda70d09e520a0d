package turn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pion/logging"
	pturn "github.com/pion/turn/v5"

	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestPeerJudge: the default policy refuses every special-purpose range,
// in its mapped and NAT64 forms too, and the host's own addresses; the
// relay IP is admitted (port by port); --turn-allow-peer opens a range,
// --turn-deny-peer closes one whatever allows it.
func TestPeerJudge(t *testing.T) {
	relayIP := netip.MustParseAddr("198.51.100.7") // a documentation address: refused unless it is the relay IP
	p := newPeerPolicy(nil, nil, relayIP, netip.MustParseAddr("8.8.4.4"))
	for _, c := range []struct{ ip, class string }{
		{"127.0.0.1", "peer_loopback"}, {"127.1.2.3", "peer_loopback"}, {"::1", "peer_loopback"},
		{"::ffff:127.0.0.1", "peer_loopback"}, {"64:ff9b::7f00:1", "peer_loopback"},
		{"0.0.0.0", "peer_unspecified"}, {"::", "peer_unspecified"}, {"0.1.2.3", "peer_unspecified"},
		{"10.0.0.1", "peer_private"}, {"172.16.5.4", "peer_private"}, {"172.31.255.255", "peer_private"},
		{"192.168.1.1", "peer_private"}, {"::ffff:192.168.1.1", "peer_private"}, {"fd00::1", "peer_private"}, {"fc12::1", "peer_private"},
		{"100.64.0.1", "peer_shared"}, {"100.127.255.254", "peer_shared"},
		{"169.254.169.254", "peer_link_local"}, {"fe80::1", "peer_link_local"}, {"fe80::1%eth0", "peer_link_local"},
		{"224.0.0.1", "peer_multicast"}, {"239.1.1.1", "peer_multicast"}, {"ff02::1", "peer_multicast"},
		{"255.255.255.255", "peer_reserved"}, {"240.0.0.1", "peer_reserved"}, {"::7f00:1", "peer_reserved"},
		{"192.0.2.1", "peer_reserved"}, {"2001:db8::1", "peer_reserved"}, {"64:ff9b:1::1", "peer_reserved"},
		{"8.8.4.4", "peer_own"}, // a listen address of the relay
	} {
		v := p.judge(netip.MustParseAddr(c.ip))
		if v.ok || v.class != c.class {
			t.Errorf("%s: %+v, want refused as %s", c.ip, v, c.class)
		}
	}
	for _, ip := range []string{"8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1", "64:ff9b::101:101", "172.32.0.1", "100.128.0.1", "11.0.0.1"} {
		if v := p.judge(netip.MustParseAddr(ip)); !v.ok || v.relays {
			t.Errorf("%s (public): %+v, want allowed", ip, v)
		}
	}
	if v := p.judge(relayIP); !v.ok || !v.relays {
		t.Errorf("the relay IP: %+v, want allowed port by port", v)
	}
	if v := p.judge(netip.MustParseAddr("::ffff:198.51.100.7")); !v.ok || !v.relays {
		t.Errorf("the relay IP, mapped: %+v", v)
	}
	ten := netip.MustParsePrefix("10.0.0.0/8")
	p = newPeerPolicy([]netip.Prefix{ten, netip.MustParsePrefix("127.0.0.1/32")}, []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, relayIP)
	if v := p.judge(netip.MustParseAddr("10.1.2.3")); !v.ok {
		t.Errorf("10.1.2.3 with --turn-allow-peer 10.0.0.0/8: %+v", v)
	}
	if v := p.judge(netip.MustParseAddr("::ffff:10.1.2.3")); !v.ok {
		t.Errorf("::ffff:10.1.2.3 with --turn-allow-peer 10.0.0.0/8: %+v", v)
	}
	if v := p.judge(netip.MustParseAddr("10.9.2.3")); v.ok || v.class != "peer_denied" {
		t.Errorf("10.9.2.3 with --turn-deny-peer 10.9.0.0/16: %+v", v)
	}
	if v := p.judge(netip.MustParseAddr("127.0.0.2")); v.ok {
		t.Errorf("127.0.0.2 with only 127.0.0.1 allowed: %+v", v)
	}
	p = newPeerPolicy(nil, []netip.Prefix{netip.MustParsePrefix("8.8.0.0/16")}, relayIP)
	if v := p.judge(netip.MustParseAddr("8.8.8.8")); v.ok || v.class != "peer_denied" {
		t.Errorf("8.8.8.8 with --turn-deny-peer 8.8.0.0/16: %+v", v)
	}
}

// TestParsePeerPrefix: a prefix or one address; mapped IPv4 prefixes are
// IPv4 prefixes; anything else is an error.
func TestParsePeerPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.0/8": "10.0.0.0/8", "10.1.2.3/8": "10.0.0.0/8", "127.0.0.1": "127.0.0.1/32", "fd00::/8": "fd00::/8",
		"::1": "::1/128", "::ffff:10.0.0.0/104": "10.0.0.0/8", " 192.168.0.0/16 ": "192.168.0.0/16", "::ffff:1.2.3.4": "1.2.3.4/32",
	} {
		p, err := ParsePeerPrefix(in)
		if err != nil || p.String() != want {
			t.Errorf("%q: %v %v, want %s", in, p, err, want)
		}
	}
	for _, in := range []string{"", "10.0.0.0/33", "host.example", "10.0.0/8", "::ffff:0.0.0.0/64", "fe80::1%eth0"} {
		if _, err := ParsePeerPrefix(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// FuzzParsePeerPrefix: no panic; what is accepted is a masked prefix
// that parses back to itself.
func FuzzParsePeerPrefix(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "::ffff:10.0.0.0/104", "127.0.0.1", "fe80::/10", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePeerPrefix(s)
		if err != nil {
			return
		}
		if p != p.Masked() || p.Addr().Is4In6() {
			t.Fatalf("%q → %v: not a masked, unmapped prefix", s, p)
		}
		if q, err := ParsePeerPrefix(p.String()); err != nil || q != p {
			t.Fatalf("%q → %v → %v %v", s, p, q, err)
		}
	})
}

// services are what an attacker wants to reach through TURN on the
// relay's host: a UDP echo (a DNS resolver, a metrics agent) and an HTTP
// server (the admin listener, pprof) on loopback. They count what they
// receive.
type services struct {
	udp  net.PacketConn
	http net.Listener
	got  atomic.Int64 // datagrams and connections received
}

func startServices(t *testing.T, ip string) *services {
	t.Helper()
	s := &services{}
	var err error
	if s.udp, err = net.ListenPacket("udp", net.JoinHostPort(ip, "0")); err != nil {
		t.Fatal(err)
	}
	if s.http, err = net.Listen("tcp", net.JoinHostPort(ip, "0")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.udp.Close(); s.http.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := s.udp.ReadFrom(buf)
			if err != nil {
				return
			}
			s.got.Add(1)
			_, _ = s.udp.WriteTo(buf[:n], from)
		}
	}()
	go func() {
		_ = http.Serve(s.http, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			s.got.Add(1)
			_, _ = w.Write([]byte("secret"))
		}))
	}()
	return s
}

// tryUDP asks a permission for to and sends datagrams to it for a while;
// it reports the permission's error and whether an echo came back.
func tryUDP(t *testing.T, c *pturn.Client, relayed net.PacketConn, to net.Addr) (permErr error, echoed bool) {
	t.Helper()
	if permErr = c.CreatePermission(to); permErr != nil {
		return permErr, false
	}
	buf := make([]byte, 1500)
	for range 5 {
		_, _ = relayed.WriteTo([]byte("ssrf"), to)
		_ = relayed.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, _, err := relayed.ReadFrom(buf); err == nil && string(buf[:n]) == "ssrf" {
			return nil, true
		}
	}
	return nil, false
}

// TestTURNPeerPolicy: an allocation cannot reach the relay host's own
// services. With the relay IP on another address, loopback is refused at
// the permission (403, counted); a permission for the relay IP itself is
// granted (TURN to TURN), but only other allocations' relay ports are
// reachable there; TCP allocations are refused without TCPAllocations,
// and with it a Connect to loopback or to the relay IP is refused; only
// --turn-allow-peer opens loopback.
func TestTURNPeerPolicy(t *testing.T) {
	svc := startServices(t, "127.0.0.1")
	user, pass := Credentials(secret, "mallory", time.Minute, time.Now())

	t.Run("loopback-refused", func(t *testing.T) {
		s, srv := start(t, Config{RelayIP: net.ParseIP("127.0.0.9"), TCPAllocations: true})
		c := client(t, s, user, pass)
		relayed, err := c.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		defer relayed.Close()
		// (NAT64 forms need an IPv6 allocation: TestPeerJudge has them.)
		for _, to := range []string{"127.0.0.1", "::ffff:127.0.0.1", "10.1.2.3", "169.254.169.254", "0.0.0.0"} {
			addr := &net.UDPAddr{IP: net.ParseIP(to), Port: svc.udp.LocalAddr().(*net.UDPAddr).Port}
			if err, echoed := tryUDP(t, c, relayed, addr); err == nil || echoed {
				t.Errorf("peer %s: permission error %v, echoed %v; want refused", to, err, echoed)
			}
		}
		if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="peer_loopback"}`); n != 2 {
			t.Errorf("peer_loopback refusals counted %v, want 2", n)
		}
		for _, class := range []string{"private", "link_local", "unspecified"} {
			if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="peer_`+class+`"}`); n != 1 {
				t.Errorf("peer_%s refusals counted %v, want 1", class, n)
			}
		}
		// TCP (RFC 6062) over a TCP control connection: Connect to the
		// HTTP server on loopback is refused before any dial.
		tcpAlloc := tcpClient(t, s, relaytest.Addr(srv), user, pass)
		if _, err := tcpAlloc.Dial("tcp", svc.http.Addr().String()); err == nil {
			t.Error("a TCP allocation connected to an HTTP server on loopback")
		}
		if _, err := tcpAlloc.Dial("tcp", "127.0.0.9:"+portOf(svc.http.Addr())); err == nil {
			t.Error("a TCP allocation connected to the relay IP")
		}
		if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="peer_own"}`); n != 1 {
			t.Errorf("peer_own refusals counted %v, want 1 (the Connect to the relay IP)", n)
		}
	})

	t.Run("relay-ip-ports", func(t *testing.T) {
		// The relay IP is 127.0.0.1 (the listen address): a permission for
		// it is granted, the echo server's port is not an allocation's.
		s, srv := start(t, Config{})
		c := client(t, s, user, pass)
		relayed, err := c.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		defer relayed.Close()
		if err, echoed := tryUDP(t, c, relayed, svc.udp.LocalAddr()); err != nil || echoed {
			t.Errorf("the relay IP's echo port: permission error %v, echoed %v; want granted and nothing through", err, echoed)
		}
		if n := relaytest.Metric(t, srv, `meetpoint_turn_dropped_total{reason="peer_port"}`); n < 1 {
			t.Errorf("datagrams to the relay IP's non-relay port counted dropped %v", n)
		}
		// TURN to TURN: another allocation's relay address works.
		other, err := client(t, s, user, pass).Allocate()
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if _, err := other.WriteTo([]byte("hi"), relayed.LocalAddr()); err != nil { // its permission
			t.Fatal(err)
		}
		relays(t, relayed, other, []byte("turn-to-turn"))
		// No TCP allocations without TCPAllocations.
		tc, err := net.Dial("tcp", relaytest.Addr(srv))
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		tcl := newStreamClient(t, relaytest.Addr(srv), tc, user, pass)
		if _, err := tcl.AllocateTCP(); err == nil {
			t.Error("a TCP allocation without TCPAllocations")
		}
		if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="tcp_allocation"}`); n != 1 {
			t.Errorf("tcp_allocation refusals counted %v, want 1", n)
		}
	})

	t.Run("allow-and-deny", func(t *testing.T) {
		s, _ := start(t, Config{RelayIP: net.ParseIP("127.0.0.9"), AllowPeers: loopbackPeers,
			DenyPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
		c := client(t, s, user, pass)
		relayed, err := c.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		defer relayed.Close()
		if err, echoed := tryUDP(t, c, relayed, svc.udp.LocalAddr()); err != nil || !echoed {
			t.Errorf("127.0.0.1 with --turn-allow-peer 127.0.0.0/8: permission error %v, echoed %v", err, echoed)
		}
		if err, _ := tryUDP(t, c, relayed, &net.UDPAddr{IP: net.ParseIP("127.0.0.2"), Port: 9}); err == nil {
			t.Error("127.0.0.2 with --turn-deny-peer 127.0.0.2: granted")
		}
	})
	if svc.got.Load() != 1 { // only the allowed echo
		t.Errorf("the host's services were reached %d times, want 1 (the one allowed)", svc.got.Load())
	}
}

func portOf(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

// newStreamClient is a pion TURN client over a TCP control connection.
func newStreamClient(t *testing.T, addr string, tc net.Conn, user, pass string) *pturn.Client {
	t.Helper()
	c, err := pturn.NewClient(&pturn.ClientConfig{STUNServerAddr: addr, TURNServerAddr: addr,
		Conn: pturn.NewSTUNConn(tc), Username: user, Password: pass, Realm: "meetpoint", LoggerFactory: logging.NewDefaultLoggerFactory()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	return c
}

// tcpAllocation is what a TCP allocation can do that the test uses.
type tcpAllocation interface {
	Dial(network, addr string) (net.Conn, error)
}

// tcpClient makes an RFC 6062 TCP allocation over a TCP control
// connection to the relay port.
func tcpClient(t *testing.T, s *Service, addr, user, pass string) tcpAllocation {
	t.Helper()
	tc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	a, err := newStreamClient(t, addr, tc, user, pass).AllocateTCP()
	if err != nil {
		if errors.Is(err, errTCPOff) || strings.Contains(err.Error(), "508") {
			t.Fatalf("TCP allocations are on, yet: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// TestTURNPermissionsBounded: one allocation holds permissions for at most
// MaxPermissions peers (pion keeps a permission and its timer for every
// address named, so without a bound one allocation grows the relay's
// memory without end); the one over is refused and counted, a held one
// is still refreshed, and a new allocation of the same client starts
// afresh. The peers are public-range addresses the policy allows;
// nothing is ever sent to them.
func TestTURNPermissionsBounded(t *testing.T) {
	s, srv := start(t, Config{})
	user, pass := Credentials(secret, "mallory", time.Minute, time.Now())
	peer := func(i int) net.Addr { return &net.UDPAddr{IP: net.IPv4(1, 0, byte(i>>8), byte(i)), Port: 9} }
	c := client(t, s, user, pass)
	relayed, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < MaxPermissions; i += 100 { // 100 peers a request: within one datagram
		batch := make([]net.Addr, 0, 100)
		for j := i; j < min(i+100, MaxPermissions); j++ {
			batch = append(batch, peer(j))
		}
		if err := c.CreatePermission(batch...); err != nil {
			t.Fatalf("permissions %d..%d: %v", i, i+len(batch)-1, err)
		}
	}
	if err := c.CreatePermission(peer(MaxPermissions)); err == nil {
		t.Errorf("a permission for peer %d granted, want refused (MaxPermissions %d)", MaxPermissions+1, MaxPermissions)
	}
	if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="quota_permission"}`); n != 1 {
		t.Errorf("quota_permission refusals counted %v, want 1", n)
	}
	if err := c.CreatePermission(peer(0)); err != nil {
		t.Errorf("refreshing a held permission: %v", err)
	}
	relayed.Close() // a Refresh with lifetime 0: the allocation is deleted
	relaytest.WaitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.held) == 0
	}, "the allocation's permissions forgotten")
	relayed, err = c.Allocate() // the same 5-tuple again
	if err != nil {
		t.Fatal(err)
	}
	defer relayed.Close()
	if err := c.CreatePermission(peer(MaxPermissions)); err != nil {
		t.Errorf("a new allocation's first permission: %v", err)
	}
}

// TestTURNNoTCPAllocationOverUDP: with TCPAllocations, an RFC 6062 TCP
// allocation asked for over UDP is refused (RFC 6062 section 5.1: its
// control connection is TCP or TLS) and counted; over TCP it is granted.
// pion serves a Connect inline on its one UDP read loop, so, granted, a
// Connect to a peer that never answers the SYN held TURN and STUN over
// UDP for every client while the relay's dial waited out the kernel's
// retries (about two minutes): the test shows that when it is granted.
func TestTURNNoTCPAllocationOverUDP(t *testing.T) {
	s, srv := start(t, Config{TCPAllocations: true, AllowPeers: loopbackPeers, RelayIP: net.ParseIP("127.0.0.9")})
	user, pass := Credentials(secret, "mallory", time.Minute, time.Now())
	if a, err := client(t, s, user, pass).AllocateTCP(); err == nil {
		defer a.Close()
		t.Error("a TCP allocation over UDP granted")
		_, _ = a.Connect(silentPeer(t)) // its retransmissions run out: the relay still dials
		if _, err := client(t, s, user, pass).SendBindingRequest(); err != nil {
			t.Errorf("another client's STUN binding over UDP while the relay dials for a TCP allocation over UDP: %v", err)
		}
	}
	if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="tcp_over_udp"}`); n != 1 {
		t.Errorf("tcp_over_udp refusals counted %v, want 1", n)
	}
	tcpClient(t, s, relaytest.Addr(srv), user, pass) // over a TCP control connection: granted
}

// silentPeer is a TCP address on loopback whose SYNs go unanswered: a
// listener with a backlog of 0 whose accept queue is full (nothing
// accepts), as a peer behind a firewall that drops them.
func silentPeer(t *testing.T) *net.TCPAddr {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}
	for range 8 { // fill the queue: a dial that times out found it full
		c, err := net.DialTimeout("tcp", addr.String(), 500*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("a listener with a backlog of 0 accepted 8 connections into its queue")
	return nil
}

// echoPeer is a TCP peer on loopback that echoes its first connection;
// it closes when the test ends.
func echoPeer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	return ln
}

// TestTURNTCPConnectBehindNAT: with --turn-relay-ip an address the host
// does not have (a NAT's or a cloud's public address, what the flag is
// for), a TCP allocation's Connect reaches its peer and relays both ways:
// the relay dialled from the relay IP itself, which no socket on the
// host can bind, so every Connect failed with 447.
func TestTURNTCPConnectBehindNAT(t *testing.T) {
	s, srv := start(t, Config{RelayIP: net.ParseIP("192.0.2.1"), TCPAllocations: true, AllowPeers: loopbackPeers})
	user, pass := Credentials(secret, "alice", time.Minute, time.Now())
	ln := echoPeer(t)
	c, err := tcpClient(t, s, relaytest.Addr(srv), user, pass).Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("Connect through a relay whose relay IP is not the host's: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("through")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len("through"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "through" {
		t.Fatalf("the echo through the TCP allocation: %q, %v", got, err)
	}
}

// TestTURNTCPConnectionsBounded: one TCP allocation holds at most
// MaxTCPConnections peer connections from its Connects (each a descriptor
// on the relay host; a Connect to another port of a permitted peer needs
// no new permission, so nothing else bounded them); one more is refused
// (447) and counted, and the allocation's end releases its count.
func TestTURNTCPConnectionsBounded(t *testing.T) {
	s, srv := start(t, Config{RelayIP: net.ParseIP("127.0.0.9"), TCPAllocations: true, AllowPeers: loopbackPeers})
	user, pass := Credentials(secret, "mallory", time.Minute, time.Now())
	peer := func() net.Addr { // a port of the peer: the kernel completes the handshake
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln.Addr()
	}
	tc, err := net.Dial("tcp", relaytest.Addr(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	a, err := newStreamClient(t, relaytest.Addr(srv), tc, user, pass).AllocateTCP()
	if err != nil {
		t.Fatal(err)
	}
	for i := range MaxTCPConnections {
		if _, err := a.Connect(peer()); err != nil {
			t.Fatalf("Connect %d: %v", i+1, err)
		}
	}
	if _, err := a.Connect(peer()); err == nil {
		t.Errorf("Connect %d granted, want refused (MaxTCPConnections %d)", MaxTCPConnections+1, MaxTCPConnections)
	}
	if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="quota_connection"}`); n != 1 {
		t.Errorf("quota_connection refusals counted %v, want 1", n)
	}
	tc.Close() // the control connection ends: the allocation and its connections with it
	relaytest.WaitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.conns) == 0
	}, "the allocation's connections uncounted")
}

// TestTURNTCPRate: --turn-max-rate holds a TCP allocation too: 200 KB
// through one at 20 KB/s each way (a 64 KiB burst) takes over 6 s to
// reach its peer and come back; it went through at once, whatever the
// rate (only UDP relay sockets were held to it). Waiting is TCP's drop:
// nothing is lost.
func TestTURNTCPRate(t *testing.T) {
	s, srv := start(t, Config{RelayIP: net.ParseIP("127.0.0.9"), TCPAllocations: true, AllowPeers: loopbackPeers, MaxRate: 20000})
	user, pass := Credentials(secret, "carol", time.Minute, time.Now())
	ln := echoPeer(t)
	tc, err := net.Dial("tcp", relaytest.Addr(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	a, err := newStreamClient(t, relaytest.Addr(srv), tc, user, pass).AllocateTCP()
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 200_000
	began := time.Now()
	go func() { _, _ = c.Write(bytes.Repeat([]byte{7}, size)) }()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	if n, err := io.ReadFull(c, make([]byte, size)); err != nil {
		t.Fatalf("the echo through the TCP allocation: %d of %d bytes, %v", n, size, err)
	}
	if took := time.Since(began); took < 4*time.Second { // (200 KB − 64 KiB) / 20 KB/s ≈ 6.7 s
		t.Errorf("%d bytes each way through a TCP allocation at 20 KB/s in %v, want over 6 s", size, took)
	}
	tc.Close() // the control connection ends: the allocation with it
	relaytest.WaitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.tcpRates) == 0
	}, "the allocation's buckets forgotten")
}

// TestTURNTCPAllocationsOwnTheirPort: two TCP allocations never listen on
// one relay port. pion's relay listeners set SO_REUSEPORT (a Connect
// leaves from the relayed address while the allocation listens there), so
// a second TCP allocation whose random port was the first's listened
// there too, and the kernel split the peers' connections to that address
// between the two clients. With a one-port range the second is refused
// (508) and counted; once the first ends, the port is free again.
func TestTURNTCPAllocationsOwnTheirPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a free port for the range
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	_, srv := start(t, Config{RelayIP: net.ParseIP("127.0.0.9"), TCPAllocations: true, AllowPeers: loopbackPeers, PortMin: port, PortMax: port})
	addr := relaytest.Addr(srv)
	allocate := func(user string) (*pturn.Client, net.Conn, error) {
		tc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
		u, p := Credentials(secret, user, time.Minute, time.Now())
		c := newStreamClient(t, addr, tc, u, p)
		a, err := c.AllocateTCP()
		if err != nil {
			return c, tc, err
		}
		t.Cleanup(func() { a.Close() })
		if got := portOf(a.Addr()); got != portOf(ln.Addr()) {
			t.Fatalf("relayed address %v, want the range's one port %d", a.Addr(), port)
		}
		return c, tc, nil
	}
	_, first, err := allocate("alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := allocate("bob"); err == nil {
		t.Fatalf("a second TCP allocation listens on port %d, the first's: the kernel splits their peers' connections", port)
	}
	if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="tcp_port"}`); n != 1 {
		t.Errorf("tcp_port refusals counted %v, want 1", n)
	}
	first.Close() // the first allocation ends with its control connection
	relaytest.WaitFor(t, func() error {
		_, _, err := allocate("carol")
		return err
	}, "a TCP allocation on the port its last holder left")
}
