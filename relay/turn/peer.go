package turn

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Which peers an allocation may reach. A TURN server relays to any address
// its clients name, so without a policy anyone holding credentials reaches
// what listens only on the relay host (its admin listener, a local Redis)
// or its private network. Deny by default, like coturn's hardened
// configuration: a permission (CreatePermission, ChannelBind, Connect) for
// a peer in a special-purpose range is refused with 403 and counted by
// class. The order of the decision:
//
//  1. Config.DenyPeers (--turn-deny-peer): refused (class "denied").
//  2. Config.AllowPeers (--turn-allow-peer): allowed, whatever else holds.
//  3. The relay IP (the address relayed candidates carry): allowed as a
//     permission, but a datagram to or from it passes only if its port is
//     a live allocation's relay port — two relay-only peers on one server
//     talk through each other's relayed address (TURN to TURN), and
//     nothing else on the host is reachable that way.
//  4. The special-purpose ranges below: refused with their class.
//  5. The relay host's other addresses (its interfaces, its listen
//     addresses): refused (class "own").
//  6. Anything else (the public Internet): allowed.
//
// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) and NAT64's well-known
// prefix (64:ff9b::/96) are judged by the IPv4 address they carry.

// peerClasses are the ranges refused by default, by class (the reason
// label of meetpoint_turn_refused_total is "peer_" + class).
var peerClasses = []struct {
	class    string
	prefixes []netip.Prefix
}{
	{"unspecified", prefixes("0.0.0.0/8", "::/128")},
	{"loopback", prefixes("127.0.0.0/8", "::1/128")},
	{"private", prefixes("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")},
	{"shared", prefixes("100.64.0.0/10")}, // RFC 6598, carrier-grade NAT
	{"link_local", prefixes("169.254.0.0/16", "fe80::/10")},
	{"multicast", prefixes("224.0.0.0/4", "ff00::/8")},
	{"reserved", prefixes(
		"240.0.0.0/4",     // reserved, and the limited broadcast address
		"192.0.0.0/24",    // IETF protocol assignments
		"192.0.2.0/24",    // documentation
		"198.18.0.0/15",   // benchmarking
		"198.51.100.0/24", // documentation
		"203.0.113.0/24",  // documentation
		"::/96",           // IPv4-compatible (deprecated); ::/128 and ::1 above
		"64:ff9b:1::/48",  // NAT64, local use (RFC 8215)
		"100::/64",        // discard
		"2001:db8::/32",   // documentation
		"fec0::/10",       // site-local (deprecated)
	)},
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// nat64 is the well-known NAT64 prefix: its addresses are IPv4 addresses
// on the far side of a translator, judged as those.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// ParsePeerPrefix reads a --turn-allow-peer / --turn-deny-peer value: a
// CIDR prefix, or one address (a /32 or /128).
func ParsePeerPrefix(v string) (netip.Prefix, error) {
	v = strings.TrimSpace(v)
	if !strings.Contains(v, "/") {
		a, err := netip.ParseAddr(v)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("peer range %q: want a CIDR prefix (10.0.0.0/8) or an address", v)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("peer range %q: want a CIDR prefix (10.0.0.0/8) or an address", v)
	}
	if p.Addr().Is4In6() { // ::ffff:10.0.0.0/104 is 10.0.0.0/8
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("peer range %q: an IPv4-mapped prefix must be /96 or longer", v)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// peerPolicy is the decision above. Safe for concurrent use.
type peerPolicy struct {
	allow, deny  []netip.Prefix // static after construction
	relayIP      netip.Addr     // the relayed candidates' address; static
	relayAllowed bool           // AllowPeers names relayIP: its every port passes
	fixed        []netip.Addr   // the listen addresses; static
	// own is the set of the host's addresses (fixed plus the interfaces'),
	// refreshed at most every ownRefresh (interfaces come and go).
	own     atomic.Pointer[ownSet]
	refresh sync.Mutex // one refresh at a time
}

type ownSet struct {
	addrs map[netip.Addr]bool
	at    time.Time
}

// ownRefresh is how old the interface list may be.
const ownRefresh = 10 * time.Second

func newPeerPolicy(allow, deny []netip.Prefix, relayIP netip.Addr, fixed ...netip.Addr) *peerPolicy {
	p := &peerPolicy{allow: allow, deny: deny, relayIP: normal(relayIP)}
	for _, a := range fixed {
		if a.IsValid() && !a.IsUnspecified() {
			p.fixed = append(p.fixed, a.Unmap())
		}
	}
	p.relayAllowed = p.allowed(p.relayIP)
	p.ownAddrs() // the first list now, not on a client's request
	return p
}

// ownAddrs is the relay's own addresses, read again when stale.
func (p *peerPolicy) ownAddrs() map[netip.Addr]bool {
	if s := p.own.Load(); s != nil && time.Since(s.at) < ownRefresh {
		return s.addrs
	}
	p.refresh.Lock()
	defer p.refresh.Unlock()
	if s := p.own.Load(); s != nil && time.Since(s.at) < ownRefresh {
		return s.addrs
	}
	m := make(map[netip.Addr]bool, len(p.fixed)+4)
	for _, a := range p.fixed {
		m[a] = true
	}
	if as, err := net.InterfaceAddrs(); err == nil {
		for _, a := range as {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					m[ip.Unmap()] = true
				}
			}
		}
	}
	p.own.Store(&ownSet{addrs: m, at: time.Now()})
	return m
}

// normal is the address a peer address is judged as: mapped and NAT64
// forms give their IPv4 address; zones are dropped.
func normal(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() && nat64.Contains(a) {
		b := a.As16()
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	return a
}

// allowed says whether --turn-allow-peer names a.
func (p *peerPolicy) allowed(a netip.Addr) bool {
	for _, al := range p.allow {
		if al.Contains(a) {
			return true
		}
	}
	return false
}

// verdict is a decision on one peer address.
type verdict struct {
	ok     bool   // a permission may be granted
	relays bool   // the relay IP: only live allocations' relay ports pass
	class  string // why not (when !ok): the refusal's reason label
}

// judge decides on a peer address.
func (p *peerPolicy) judge(ip netip.Addr) verdict {
	if !ip.IsValid() {
		return verdict{class: "peer_unspecified"}
	}
	a := normal(ip)
	for _, d := range p.deny {
		if d.Contains(a) {
			return verdict{class: "peer_denied"}
		}
	}
	if p.allowed(a) {
		return verdict{ok: true}
	}
	if a == p.relayIP {
		return verdict{ok: true, relays: true}
	}
	for _, c := range peerClasses {
		for _, pr := range c.prefixes {
			if pr.Contains(a) {
				return verdict{class: "peer_" + c.class}
			}
		}
	}
	if p.ownAddrs()[a] {
		return verdict{class: "peer_own"}
	}
	return verdict{ok: true}
}

// ipOf is the address of a net.Addr a pion socket hands us.
func ipOf(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.UDPAddr:
		return v.AddrPort()
	case *net.TCPAddr:
		return v.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// peerClassNames lists the default-refused classes.
func peerClassNames() []string {
	out := make([]string, len(peerClasses))
	for i, c := range peerClasses {
		out[i] = c.class
	}
	return out
}

// relayPortOK says whether a datagram to or from peer may pass an
// allocation's relay socket: only the relay IP needs a look, and there
// only live allocations' relay ports pass (unless --turn-allow-peer names
// it). Cost: one comparison for any other peer.
func (s *Service) relayPortOK(peer net.Addr) bool {
	ap := ipOf(peer)
	if normal(ap.Addr()) != s.peers.relayIP || s.peers.relayAllowed {
		return true
	}
	i := int(ap.Port()) - int(s.cfg.PortMin)
	if i >= 0 && i < len(s.livePorts) && s.livePorts[i].Load() > 0 {
		return true
	}
	s.droppedPort.Inc()
	return false
}

// portOpened and portClosed keep livePorts.
func (s *Service) portOpened(addr net.Addr, delta int32) {
	i := int(ipOf(addr).Port()) - int(s.cfg.PortMin)
	if i >= 0 && i < len(s.livePorts) {
		s.livePorts[i].Add(delta)
	}
}
