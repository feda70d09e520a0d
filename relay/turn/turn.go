// Package turn serves TURN and STUN (RFC 8656, RFC 8489) with pion/turn
// v5 on UDP at the relay's port number (or --turn-listen) and over TCP and
// TLS on the relay's port itself (the dispatch table hands STUN-looking
// connections over), with the TURN
// REST credentials coturn uses: a username "EXPIRY:USER" and the password
// base64(HMAC-SHA1(secret, username)). GET /v1/turn/credentials on the
// relay port hands an authenticated client (the relay's authenticator
// decides on its bearer token) a time-limited pair and the ICE server URLs.
// Allocations per user are bounded; every allocation and refusal is
// counted. docs/discovery.md describes it.
package turn

import (
	"context"
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // the TURN REST scheme is HMAC-SHA1 (coturn's, RFC 8489 long-term credentials)
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/pion/logging"
	pturn "github.com/pion/turn/v5"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/limits"
)

// Config is the TURN section of a relay's configuration.
type Config struct {
	// Listen is the UDP address (default: the relay's first listen
	// address, same port).
	Listen string
	// Secret is the shared secret of the TURN REST scheme (coturn's
	// static-auth-secret); at least 16 bytes.
	Secret []byte
	// Realm is the TURN realm (default "meetpoint").
	Realm string
	// RelayIP is the address relayed candidates carry (default: Listen's
	// IP, 127.0.0.1 when that is unspecified): the relay's public address.
	RelayIP net.IP
	// PortMin..PortMax is the relay port range (default 49152–65535).
	PortMin, PortMax uint16
	// MaxPerUser bounds the allocations one user — a token's own subject —
	// holds at once (default 10).
	MaxPerUser int
	// MaxPerShared bounds the allocations one shared credential holds at
	// once: the static User, a registered application (its key), and
	// "anonymous" (tokens without a subject). Default 4096: a Babble group
	// of 32 nodes sharing one static user holds up to 32 × 31 peers × 4
	// connections (two pooled each way) = 3968.
	MaxPerShared int
	// MaxPerAddress bounds the allocations one client address (IPv6 by the
	// relay's prefix; --limit-exempt addresses exempt) holds at once,
	// whatever its credentials (default 256: one Babble node among 32, with
	// room for reconnections), so one holder of a shared credential cannot
	// take everyone's.
	MaxPerAddress int
	// User and Password are a static long-term credential (Disco's
	// --ice-username/--ice-password, what Babble's --ice-username and
	// --ice-password take for its lifetime), beside the TURN REST ones; ""
	// for none. User has no ':' (a TURN REST username has one).
	User, Password string
	// CredentialTTL is the life of handed-out credentials (default 1 h).
	CredentialTTL time.Duration
	// MaxRate bounds each allocation's relayed bytes per second, each way
	// (0: unbounded); datagrams over it are dropped and counted, a TCP
	// allocation's peer connections wait.
	MaxRate int64
	// Apps are the registered applications (app id → key, --apps): an
	// app's key is accepted as a bearer token for credentials too, with
	// the app id as the TURN user.
	Apps map[string]string
	// AdminKey, when set, serves GET /v1/turn/allocations (each
	// allocation's counters) to Authorization: Bearer AdminKey.
	AdminKey string
	// AllowPeers are peer ranges allocations may reach although the
	// default policy refuses them (--turn-allow-peer): a private network
	// the relay is meant to serve, or loopback in a test. See peer.go.
	AllowPeers []netip.Prefix
	// DenyPeers are peer ranges refused in any case (--turn-deny-peer);
	// they win over AllowPeers.
	DenyPeers []netip.Prefix
	// TCPAllocations allows RFC 6062 TCP allocations (--turn-tcp); off, an
	// Allocate for TCP is refused (508) and counted.
	TCPAllocations bool
	// Logger logs; default the relay's.
	Logger *slog.Logger

	// allocateWithin replaces AllocateWithin (tests).
	allocateWithin time.Duration
}

// ParsePorts reads a relay port range "MIN-MAX" (--turn-ports), 1 ≤ MIN ≤
// MAX ≤ 65535.
func ParsePorts(v string) (lo, hi uint16, err error) {
	a, b, ok := strings.Cut(v, "-")
	x, err1 := strconv.ParseUint(a, 10, 16)
	y, err2 := strconv.ParseUint(b, 10, 16)
	if !ok || err1 != nil || err2 != nil || x == 0 || x > y {
		return 0, 0, fmt.Errorf("port range %q: want MIN-MAX, e.g. 49152-65535", v)
	}
	return uint16(x), uint16(y), nil
}

// LoadSecret reads a --turn-secret-file (the secret, whitespace trimmed).
func LoadSecret(path string) ([]byte, error) {
	s, err := loadTrimmed(path, "the TURN secret", 16)
	return []byte(s), err
}

// LoadPassword reads a --turn-password-file (the static user's password,
// whitespace trimmed).
func LoadPassword(path string) (string, error) {
	return loadTrimmed(path, "the TURN password", 8)
}

func loadTrimmed(path, what string, least int) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if len(s) < least {
		return "", fmt.Errorf("%s: %s must be at least %d characters", path, what, least)
	}
	return s, nil
}

// Service is TURN on one relay.
type Service struct {
	cfg Config
	srv *relay.Server
	log *slog.Logger
	ts  *pturn.Server
	pc  net.PacketConn
	tcp net.Listener // TURN over TCP and TLS, handed over by the relay's dispatch table

	peers *peerPolicy // which peers allocations may reach; set by Start
	// livePorts counts the open UDP relay sockets by port − PortMin: the
	// relay IP's ports peers may reach (TURN to TURN). Static length.
	livePorts []atomic.Int32

	mu      sync.Mutex
	perUsr  map[string]int         // allocations by user; guarded by mu
	perAddr map[netip.Addr]int     // allocations by client address key; guarded by mu
	live    map[string]*allocation // relay sockets open, by relayed address (tupleKey); guarded by mu
	// held are the allocations, by their client's transport address
	// (tupleKey), from creation to deletion; pending the quotas granted
	// to allocations pion is making (reserveFor). Guarded by mu.
	held, pending map[string]*held
	conns         map[string]int      // TCP allocations' Connect connections, by relayed address
	tcpRates      map[string]*buckets // TCP allocations' buckets (MaxRate), by relayed address
	tcpPorts      map[int]bool        // the relay ports TCP allocations listen on

	// allocateWithin is how long a control connection over TCP or TLS may
	// hold no allocation (AllocateWithin; shorter in tests).
	allocateWithin time.Duration

	set                         *metrics.Set
	allocs, allocsTotal, quotas *metrics.Counter
	addrQuotas, permQuotas      *metrics.Counter
	clientInUse                 *metrics.Counter // an Allocate from a client address that holds one through another relay address
	chanQuotas                  *metrics.Counter
	connQuotas                  *metrics.Counter
	authFail, creds             *metrics.Counter
	authError                   *metrics.Counter // credentials not issued: the authenticator could not check the token
	rxBytes, txBytes            *metrics.Counter // relayed from and to peers
	rxPkts, txPkts, dropped     *metrics.Counter
	droppedPort, tcpRefused     *metrics.Counter
	tcpPortBusy                 *metrics.Counter
	tcpOverUDP                  *metrics.Counter
	peerRefused                 map[string]*metrics.Counter // by class; static after New
	closedCtl                   map[string]*metrics.Counter // control connections closed, by reason; static after New
}

// New registers GET /v1/turn/credentials on srv; Start listens once the
// relay does. Call it before srv.Start.
func New(srv *relay.Server, cfg Config) (*Service, error) {
	if len(cfg.Secret) < 16 {
		return nil, errors.New("turn: the secret must be at least 16 bytes (--turn-secret-file)")
	}
	if cfg.Realm == "" {
		cfg.Realm = "meetpoint"
	}
	if cfg.PortMin == 0 && cfg.PortMax == 0 {
		cfg.PortMin, cfg.PortMax = 49152, 65535
	}
	if cfg.PortMin > cfg.PortMax {
		return nil, fmt.Errorf("turn: port range %d-%d is empty", cfg.PortMin, cfg.PortMax)
	}
	if cfg.MaxPerUser <= 0 {
		cfg.MaxPerUser = 10
	}
	if cfg.MaxPerShared <= 0 {
		cfg.MaxPerShared = 4096
	}
	if cfg.MaxPerAddress <= 0 {
		cfg.MaxPerAddress = 256
	}
	if cfg.User != "" && (strings.Contains(cfg.User, ":") || len(cfg.Password) < 8) {
		return nil, errors.New("turn: a static user has no ':' in its name (--turn-user) and a password of at least 8 characters (--turn-password-file)")
	}
	if cfg.CredentialTTL <= 0 {
		cfg.CredentialTTL = time.Hour
	}
	if cfg.allocateWithin <= 0 {
		cfg.allocateWithin = AllocateWithin
	}
	if cfg.Logger == nil {
		cfg.Logger = srv.Logger()
	}
	s := &Service{cfg: cfg, srv: srv, log: cfg.Logger, perUsr: make(map[string]int), perAddr: map[netip.Addr]int{}, live: map[string]*allocation{}, held: map[string]*held{}, pending: map[string]*held{}, conns: map[string]int{}, tcpRates: map[string]*buckets{}, tcpPorts: map[int]bool{}, allocateWithin: cfg.allocateWithin, set: metrics.NewSet()}
	s.allocs = s.set.NewCounter(`meetpoint_turn_allocations_active`)
	s.allocsTotal = s.set.NewCounter(`meetpoint_turn_allocations_total`)
	s.quotas = s.set.NewCounter(`meetpoint_turn_refused_total{reason="quota"}`)
	s.addrQuotas = s.set.NewCounter(`meetpoint_turn_refused_total{reason="quota_address"}`)
	s.clientInUse = s.set.NewCounter(`meetpoint_turn_refused_total{reason="client_in_use"}`)
	s.permQuotas = s.set.NewCounter(`meetpoint_turn_refused_total{reason="quota_permission"}`)
	s.chanQuotas = s.set.NewCounter(`meetpoint_turn_refused_total{reason="quota_channel"}`)
	s.connQuotas = s.set.NewCounter(`meetpoint_turn_refused_total{reason="quota_connection"}`)
	s.authFail = s.set.NewCounter(`meetpoint_turn_refused_total{reason="auth"}`)
	s.authError = s.set.NewCounter(`meetpoint_turn_refused_total{reason="auth_error"}`)
	s.creds = s.set.NewCounter(`meetpoint_turn_credentials_total`)
	s.rxBytes = s.set.NewCounter(`meetpoint_turn_relayed_bytes_total{dir="from_peers"}`)
	s.txBytes = s.set.NewCounter(`meetpoint_turn_relayed_bytes_total{dir="to_peers"}`)
	s.rxPkts = s.set.NewCounter(`meetpoint_turn_relayed_packets_total{dir="from_peers"}`)
	s.txPkts = s.set.NewCounter(`meetpoint_turn_relayed_packets_total{dir="to_peers"}`)
	s.dropped = s.set.NewCounter(`meetpoint_turn_dropped_total{reason="rate"}`)
	s.droppedPort = s.set.NewCounter(`meetpoint_turn_dropped_total{reason="peer_port"}`)
	s.tcpRefused = s.set.NewCounter(`meetpoint_turn_refused_total{reason="tcp_allocation"}`)
	s.tcpOverUDP = s.set.NewCounter(`meetpoint_turn_refused_total{reason="tcp_over_udp"}`)
	s.tcpPortBusy = s.set.NewCounter(`meetpoint_turn_refused_total{reason="tcp_port"}`)
	s.peerRefused = map[string]*metrics.Counter{}
	for _, class := range append([]string{"denied", "own"}, peerClassNames()...) {
		s.peerRefused["peer_"+class] = s.set.NewCounter(`meetpoint_turn_refused_total{reason="peer_` + class + `"}`)
	}
	s.closedCtl = map[string]*metrics.Counter{}
	for _, why := range []string{"no_allocation", "allocation_ended"} {
		s.closedCtl[why] = s.set.NewCounter(`meetpoint_turn_closed_total{reason="` + why + `"}`)
	}
	s.livePorts = make([]atomic.Int32, int(cfg.PortMax)-int(cfg.PortMin)+1)
	if cfg.MaxRate < 0 {
		return nil, fmt.Errorf("turn: max rate %d is negative", cfg.MaxRate)
	}
	if cfg.AdminKey != "" {
		srv.Handle("GET /v1/turn/allocations", relay.RequireBearer(cfg.AdminKey, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			relay.WriteJSON(w, http.StatusOK, s.Allocations())
		})))
	}
	s.tcp = srv.STUNListener() // STUN/TURN sniffed on the relay port (TCP, and TLS once unwrapped)
	srv.Handle("GET /v1/turn/credentials", http.HandlerFunc(s.credentials))
	srv.AddMetrics(s.set, turnDocs)
	return s, nil
}

// Start listens on UDP and serves TURN.
func (s *Service) Start() error {
	addr := s.cfg.Listen
	if addr == "" {
		as := s.srv.Addrs()
		if len(as) == 0 {
			return errors.New("turn: start the relay first, or give --turn-listen")
		}
		addr = as[0].String()
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("turn: %v", err)
	}
	bigBuffers(pc)
	relayIP := s.cfg.RelayIP
	if relayIP == nil {
		relayIP = pc.LocalAddr().(*net.UDPAddr).IP
		if relayIP.IsUnspecified() {
			relayIP = net.IPv4(127, 0, 0, 1)
		}
	}
	bindIP := pc.LocalAddr().(*net.UDPAddr).IP.String()
	relayAddr, _ := netip.AddrFromSlice(relayIP)
	var own []netip.Addr
	for _, a := range append(s.srv.Addrs(), pc.LocalAddr()) {
		own = append(own, ipOf(a).Addr())
	}
	s.peers = newPeerPolicy(s.cfg.AllowPeers, s.cfg.DenyPeers, relayAddr, own...)
	relays := func(udp bool) pturn.RelayAddressGenerator {
		return meteredGenerator{&pturn.RelayAddressGeneratorPortRange{RelayAddress: relayIP, Address: bindIP, MinPort: s.cfg.PortMin, MaxPort: s.cfg.PortMax}, s, udp, pc.LocalAddr().(*net.UDPAddr).IP}
	}
	permit := func(client net.Addr, peer net.IP) bool {
		ip, _ := netip.AddrFromSlice(peer)
		v := s.peers.judge(ip)
		if !v.ok {
			s.peerRefused[v.class].Inc()
			s.log.Debug("turn peer refused", "client", client.String(), "peer", ip.String(), "reason", v.class)
			return false
		}
		return s.permit(client, ip)
	}
	lf := logging.NewDefaultLoggerFactory()
	lf.Writer = io.Discard // pion logs every refused request; the relay counts them
	rest := pturn.LongTermTURNRESTAuthHandler(string(s.cfg.Secret), lf.NewLogger("turn"))
	ts, err := pturn.NewServer(pturn.ServerConfig{
		Realm:         s.cfg.Realm,
		LoggerFactory: lf,
		AuthHandler: func(ra *pturn.RequestAttributes) (string, []byte, bool) {
			if s.cfg.User != "" && ra.Username == s.cfg.User {
				return s.cfg.User, pturn.GenerateAuthKey(s.cfg.User, ra.Realm, s.cfg.Password), true
			}
			user, key, ok := rest(ra)
			if !ok { // a malformed or expired username (a wrong password fails later: OnAuth)
				s.authFail.Inc()
			}
			return user, key, ok
		},
		QuotaHandler:       s.quota,
		PermissionTimeout:  permissionLife,
		ChannelBindTimeout: channelLife,
		EventHandler: pturn.EventHandler{
			OnAuth: func(_, _ net.Addr, _, _, _, _ string, ok bool) {
				if !ok { // a wrong password
					s.authFail.Inc()
				}
			},
			OnAllocationCreated: func(client, _ net.Addr, _, user, _ string, relayed net.Addr, _ int) {
				s.hold(user, client, relayed)
				s.allocs.Inc()
				s.allocsTotal.Inc()
			},
			OnAllocationDeleted: func(client, _ net.Addr, _, user, _ string) {
				s.release(client)
				s.allocs.Dec()
			},
			OnChannelCreated: func(client, _ net.Addr, _, _, _ string, _, _ net.Addr, number uint16) {
				s.channel(client, number, true)
			},
			OnChannelDeleted: func(client, _ net.Addr, _, _, _ string, _, _ net.Addr, number uint16) {
				s.channel(client, number, false)
			},
		},
		PacketConnConfigs: []pturn.PacketConnConfig{{PacketConn: &requestConn{pc, s}, RelayAddressGenerator: relays(true), PermissionHandler: permit}},
		ListenerConfigs:   []pturn.ListenerConfig{{Listener: &controlListener{s.tcp, s}, RelayAddressGenerator: relays(false), PermissionHandler: permit}},
	})
	if err != nil {
		pc.Close()
		return fmt.Errorf("turn: %v", err)
	}
	s.ts, s.pc = ts, pc
	s.log.Info("turn listening", "udp", pc.LocalAddr().String(), "relay_ip", relayIP.String(),
		"ports", fmt.Sprintf("%d-%d", s.cfg.PortMin, s.cfg.PortMax))
	return nil
}

// Anonymous is the TURN user of a token without a subject.
const Anonymous = "anonymous"

// limitOf is the most allocations user may hold at once: a shared
// credential's bound (the static user, an application, anonymous) or one
// user's.
func (s *Service) limitOf(user string) int {
	if _, app := s.cfg.Apps[user]; app || user == Anonymous || (s.cfg.User != "" && user == s.cfg.User) {
		return s.cfg.MaxPerShared
	}
	return s.cfg.MaxPerUser
}

// addrKey is the key client's allocations are counted under, and whether
// it is exempt from the per-address bound.
func (s *Service) addrKey(client net.Addr) (netip.Addr, bool) {
	return s.srv.ClientKey(limits.AddrOf(client))
}

// reserveFor is how long a granted quota waits for its allocation: pion
// creates it (binds a relay socket) right after asking, or fails to (no
// free port, LIFETIME 0) and says nothing.
const reserveFor = 5 * time.Second

// quota decides on a new allocation: its credential and its client
// address each under their bound (pion's QuotaHandler). A grant counts at
// once, as a reservation hold turns into the allocation: pion serves each
// TCP control connection on its own goroutine, so Allocates on many
// connections at once all passed a check that only counted allocations
// already made. A client transport address holds one allocation: pion
// names only the client's address to this handler and the permission
// handler, and the relay keys allocations by it (tupleKey), so a second
// one from the same address through another of the relay's addresses
// (TCP to two listen addresses, SO_REUSEADDR) is refused
// (client_in_use); pion itself refuses one through the same address
// (437).
func (s *Service) quota(user, _ string, client net.Addr) bool {
	key, exempt := s.addrKey(client)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, h := range s.pending { // reservations that came to nothing
		if now.Sub(h.at) > reserveFor {
			delete(s.pending, k)
			s.count(h, -1)
		}
	}
	k := tupleKey(client)
	if s.held[k] != nil {
		s.clientInUse.Inc()
		return false
	}
	if h := s.pending[k]; h != nil { // this 5-tuple's last one came to nothing
		delete(s.pending, k)
		s.count(h, -1)
	}
	switch {
	case s.perUsr[user] >= s.limitOf(user):
		s.quotas.Inc()
		return false
	case !exempt && s.perAddr[key] >= s.cfg.MaxPerAddress:
		s.addrQuotas.Inc()
		return false
	}
	h := &held{user: user, key: key, exempt: exempt, at: now}
	s.pending[k] = h
	s.count(h, 1)
	return true
}

// hold takes a new allocation's reservation (or, none left, counts it
// against user and client's address afresh), and keeps what it counted
// under: a reload of --limit-exempt between its creation and its deletion
// must not leave a count behind. relayed is its relayed address: a UDP
// allocation's relay socket learns its permissions from it.
func (s *Service) hold(user string, client, relayed net.Addr) {
	key, exempt := s.addrKey(client)
	k := tupleKey(client)
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.pending[k]
	delete(s.pending, k)
	if h == nil || h.user != user { // swept, or never made
		if h != nil {
			s.count(h, -1)
		}
		h = &held{user: user, key: key, exempt: exempt}
		s.count(h, 1)
	}
	h.peers = map[netip.Addr]time.Time{}
	h.channels = map[uint16]bool{}
	if relayed != nil {
		h.alloc = s.live[tupleKey(relayed)] // nil: a TCP allocation
	}
	if old := s.held[k]; old != nil { // not deleted (cannot happen): uncount it
		s.count(old, -1)
	}
	s.held[k] = h
}

// release uncounts client's allocation, as it was counted.
func (s *Service) release(client net.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.held[tupleKey(client)]; h != nil {
		delete(s.held, tupleKey(client))
		s.count(h, -1)
	}
}

// count adds d to h's user's and client address's allocations. Called
// with mu held.
func (s *Service) count(h *held, d int) {
	if s.perUsr[h.user] += d; s.perUsr[h.user] <= 0 {
		delete(s.perUsr, h.user)
	}
	if !h.exempt {
		if s.perAddr[h.key] += d; s.perAddr[h.key] <= 0 {
			delete(s.perAddr, h.key)
		}
	}
}

// MaxPermissions bounds the peers (distinct IP addresses) one allocation
// holds permissions for at once; a permission (CreatePermission,
// ChannelBind, Connect) for one more is refused (403; pion answers a
// refused ChannelBind with an authenticated 401) and counted
// (quota_permission). pion keeps a permission and its timer for every
// address a client names, so without a bound one allocation grows the
// relay's memory without end. A WebRTC client needs one per remote
// candidate's address: a handful.
const MaxPermissions = 1000

// MaxChannels bounds the channels one allocation holds at once; a
// ChannelBind for one more is refused (pion answers a ChannelBind the
// permission handler refuses with an authenticated 401) and counted
// (quota_channel).
// A channel is a peer's transport address, so binds to one permitted
// peer IP at port after port pass MaxPermissions, and pion keeps a
// binding and its timer for each of the 16384 channel numbers (and
// looks channels up by a linear scan, for every datagram relayed through
// one). A WebRTC client binds one per remote candidate it uses: a
// handful.
const MaxChannels = 1000

// permissionLife is how long a permission lives unless refreshed (RFC
// 8656's 300 s); pion is configured with it and held expires by it.
const permissionLife = 5 * time.Minute

// channelLife is how long a channel lives unless refreshed (RFC 8656's
// 10 minutes); pion is configured with it. It is longer than its peer's
// permission, and pion relays a bound peer's datagrams without one.
const channelLife = 10 * time.Minute

// held is one allocation (or a quota granted to one being made): what it
// is counted under and its permitted peers.
type held struct {
	user    string     // its credential's user (perUsr)
	key     netip.Addr // its client address's key (perAddr, unless exempt)
	exempt  bool
	at      time.Time                // when its quota was granted (pending)
	peers   map[netip.Addr]time.Time // permitted peers and when each lapses
	soonest time.Time                // no permission lapses before it
	// channels are its channel numbers (pion's events); binding is the
	// number a ChannelBind being handled names (0: the request being
	// handled is no ChannelBind), noted as it is read (noteRequest).
	channels map[uint16]bool
	binding  uint16
	// alloc is a UDP allocation's relay socket (nil for TCP), told of
	// each permission permit grants.
	alloc *allocation
}

// tupleKey is the key of an allocation: its client's transport address
// (with the listener's network, its 5-tuple).
func tupleKey(client net.Addr) string {
	return client.Network() + " " + client.String()
}

// permit grants client's allocation a permission for peer (already judged
// by the policy) if it holds fewer than MaxPermissions, or one for peer
// already (a refresh).
func (s *Service) permit(client net.Addr, peer netip.Addr) bool {
	peer = peer.Unmap() // pion keys permissions by the IP's text
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := s.held[tupleKey(client)]
	if ps == nil { // the allocation is being deleted
		return true
	}
	ch := ps.binding
	if ch != 0 { // a ChannelBind: a new channel is within MaxChannels
		ps.binding = 0
		if !ps.channels[ch] && len(ps.channels) >= MaxChannels {
			s.chanQuotas.Inc()
			s.log.Debug("turn channel refused", "client", client.String(), "peer", peer.String(), "reason", "quota_channel")
			return false
		}
	}
	if _, ok := ps.peers[peer]; !ok && len(ps.peers) >= MaxPermissions {
		if !now.Before(ps.soonest) { // some have lapsed: forget them
			ps.soonest = now.Add(permissionLife)
			for p, until := range ps.peers {
				if !now.Before(until) {
					delete(ps.peers, p)
				} else if until.Before(ps.soonest) {
					ps.soonest = until
				}
			}
		}
		if len(ps.peers) >= MaxPermissions {
			s.permQuotas.Inc()
			s.log.Debug("turn permission refused", "client", client.String(), "peer", peer.String(), "reason", "quota_permission")
			return false
		}
	}
	until := now.Add(permissionLife)
	if len(ps.peers) == 0 || until.Before(ps.soonest) {
		ps.soonest = until
	}
	ps.peers[peer] = until
	if ps.alloc != nil {
		if ch != 0 { // pion relays a channel's datagrams for its life, permission or not
			ps.alloc.permitted(peer, now.Add(channelLife))
		} else {
			ps.alloc.permitted(peer, until)
		}
	}
	return true
}

// Addr is the UDP address TURN listens on (nil before Start).
func (s *Service) Addr() net.Addr {
	if s.pc == nil {
		return nil
	}
	return s.pc.LocalAddr()
}

// Close stops TURN (every allocation ends).
func (s *Service) Close() error {
	if s.ts == nil {
		return nil
	}
	return s.ts.Close()
}

// Credentials mints a TURN REST pair for user, valid for ttl.
func Credentials(secret []byte, user string, ttl time.Duration, now time.Time) (username, password string) {
	username = strconv.FormatInt(now.Add(ttl).Unix(), 10) + ":" + user
	m := hmac.New(sha1.New, secret)
	m.Write([]byte(username))
	return username, base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// credentials is GET /v1/turn/credentials: Authorization: Bearer TOKEN,
// checked by the relay's authenticator, or a registered application's key
// (the access rules' "http" action already applied to the path); 200 {"username","password","ttl","uris"}.
func (s *Service) credentials(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodHead {
		// net/http routes HEAD to a GET pattern: answered without its
		// body, it would spend a one-time token on nothing.
		w.Header().Set("Allow", http.MethodGet)
		relay.WriteJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "HEAD /v1/turn/credentials: GET only (a one-time token would be spent)"})
		return
	}
	token := relay.BearerToken(r)
	if token == "" {
		s.authFail.Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="meetpoint turn"`)
		relay.WriteJSON(w, http.StatusUnauthorized, map[string]string{"error": "a relay token is required (Authorization: Bearer TOKEN)"})
		return
	}
	if app, ok := relay.MatchKey(s.cfg.Apps, token); ok {
		s.issue(w, r, app)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	var peer net.Addr
	if ap, err := net.ResolveTCPAddr("tcp", r.RemoteAddr); err == nil {
		peer = ap
	}
	id := relay.IdentityOfRequest(r)
	res, tid := s.srv.CheckToken(ctx, token, peer, id.Cert)
	switch res {
	case relay.AuthNoError:
	case relay.AuthFailed:
		s.authFail.Inc()
		relay.WriteJSON(w, http.StatusUnauthorized, map[string]string{"error": "token refused: " + res.String()})
		return
	default: // the authenticator could not check it (its store down, no answer in time): no token was refused
		s.authError.Inc()
		w.Header().Set("Retry-After", "5")
		relay.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the relay could not check the token now (" + res.String() + "); try again"})
		return
	}
	user := tid.Subject
	if user == "" {
		user = Anonymous
	}
	s.issue(w, r, user)
}

// issue answers a credential pair for user.
func (s *Service) issue(w http.ResponseWriter, r *http.Request, user string) {
	user = strings.ReplaceAll(user, ":", "_") // the username's separator
	username, password := Credentials(s.cfg.Secret, user, s.cfg.CredentialTTL, time.Now())
	s.creds.Inc()
	relay.WriteJSON(w, http.StatusOK, map[string]any{
		"username": username, "password": password, "ttl": int64(s.cfg.CredentialTTL / time.Second),
		"uris": s.uris(r),
	})
}

// uris are the ICE server URLs a client uses.
func (s *Service) uris(r *http.Request) []string {
	host := s.cfg.RelayIP.String()
	if s.cfg.RelayIP == nil {
		h, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			h = r.Host
		}
		host = h
	}
	host = strings.Trim(host, "[]")
	udpPort, tcpPort := "3478", "443" // TURN's UDP port; the relay's own, for TURN over TCP and TLS
	if a := s.Addr(); a != nil {
		udpPort = strconv.Itoa(a.(*net.UDPAddr).Port)
	}
	if as := s.srv.Addrs(); len(as) > 0 {
		if _, p, err := net.SplitHostPort(as[0].String()); err == nil {
			tcpPort = p
		}
	}
	udp, tcp := net.JoinHostPort(host, udpPort), net.JoinHostPort(host, tcpPort)
	uris := []string{"turn:" + udp + "?transport=udp", "turn:" + tcp + "?transport=tcp"}
	if r.TLS != nil { // the relay serves TLS on its port: TURN over TLS too
		uris = append(uris, "turns:"+tcp+"?transport=tcp")
	}
	return append(uris, "stun:"+udp)
}

// turnDocs documents TURN's metric families (relayed UDP is counted
// here, not in the tunnels' traffic).
var turnDocs = map[string]relay.MetricDoc{
	"meetpoint_turn_allocations_active":    {Type: "gauge", Help: "TURN allocations now."},
	"meetpoint_turn_allocations_total":     {Type: "counter", Help: "TURN allocations made since start."},
	"meetpoint_turn_refused_total":         {Type: "counter", Help: "TURN requests and credential requests refused, by reason (auth: bad, expired or missing credentials or token; auth_error: a credentials request whose token the relay's authenticator could not check (its store down, no answer in time: 503); quota: a credential's allocations at its bound; quota_address: a client address's allocations at its bound; client_in_use: an Allocate from a client transport address (IP and port) that holds an allocation through another of the relay's addresses; quota_permission: a permission for one more peer than an allocation may hold (MaxPermissions); quota_channel: a ChannelBind for one more channel than an allocation may hold (MaxChannels); quota_connection: a Connect for one more TCP connection than a TCP allocation may hold (MaxTCPConnections); tcp_allocation: an RFC 6062 TCP allocation without --turn-tcp; tcp_over_udp: an RFC 6062 TCP allocation asked for over UDP; tcp_port: a TCP allocation that found no relay port free of other TCP allocations; peer_*: a permission for a peer the policy refuses, by class: loopback, private, shared, link_local, multicast, unspecified, reserved, own (the relay host's addresses), denied (--turn-deny-peer))."},
	"meetpoint_turn_credentials_total":     {Type: "counter", Help: "TURN credentials handed out by GET /v1/turn/credentials."},
	"meetpoint_turn_relayed_bytes_total":   {Type: "counter", Help: "Bytes relayed by TURN allocations, from peers and to peers (UDP relay sockets)."},
	"meetpoint_turn_relayed_packets_total": {Type: "counter", Help: "Datagrams relayed by TURN allocations, from peers and to peers."},
	"meetpoint_turn_dropped_total":         {Type: "counter", Help: "Datagrams dropped by TURN allocations, by reason (rate: over --turn-max-rate; peer_port: to or from the relay IP at a port that is no allocation's)."},
	"meetpoint_turn_closed_total":          {Type: "counter", Help: "TURN control connections over TCP and TLS closed by the relay, by reason (no_allocation: none made within AllocateWithin, 60 s, of the connection's start; allocation_ended: none held for AllocateWithin after its allocation expired or was deleted)."},
}

// channel notes that client's allocation made (or lost) a channel.
func (s *Service) channel(client net.Addr, number uint16, made bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.held[tupleKey(client)]; h != nil {
		if made {
			h.channels[number] = true
		} else {
			delete(h.channels, number)
		}
	}
}

// STUN request types (class request: the method itself) of the requests
// that ask the permission handler: which of them pion is handling tells
// permit whether a ChannelBind asks.
const (
	createPermissionRequest = 0x0008
	channelBindRequest      = 0x0009
	connectRequest          = 0x000a
	attrChannelNumber       = 0x000c
	stunMagic               = 0x2112a442
)

// noteRequest looks at one TURN frame from the client whose allocation
// key is key, as pion is about to handle it: a CreatePermission,
// ChannelBind or Connect request sets what its allocation's binding is
// (the ChannelBind's channel number, or none). pion handles one client's
// frames one at a time, in order, so permit sees the request it is asked
// for. Other frames (ChannelData, Send indications) cost a comparison.
func (s *Service) noteRequest(key string, b []byte) {
	if len(b) < 20 || b[0] != 0 || (b[1] != createPermissionRequest && b[1] != channelBindRequest && b[1] != connectRequest) ||
		binary.BigEndian.Uint32(b[4:8]) != stunMagic {
		return
	}
	var ch uint16
	if b[1] == channelBindRequest {
		ch = channelNumber(b)
	}
	s.mu.Lock()
	if h := s.held[key]; h != nil {
		h.binding = ch
	}
	s.mu.Unlock()
}

// channelNumber is the CHANNEL-NUMBER a STUN message names (0: none).
func channelNumber(b []byte) uint16 {
	end := min(len(b), 20+int(binary.BigEndian.Uint16(b[2:4])))
	for i := 20; i+4 <= end; {
		typ, n := binary.BigEndian.Uint16(b[i:]), int(binary.BigEndian.Uint16(b[i+2:]))
		if typ == attrChannelNumber && n >= 2 && i+6 <= end {
			return binary.BigEndian.Uint16(b[i+4:])
		}
		i += 4 + (n+3)&^3
	}
	return 0
}

// requestConn is TURN's UDP socket as pion reads it: each datagram is
// looked at (noteRequest) before pion handles it.
type requestConn struct {
	net.PacketConn
	s *Service
}

func (c *requestConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, from, err := c.PacketConn.ReadFrom(p)
	if err == nil && n >= 20 && p[0] == 0 {
		c.s.noteRequest(tupleKey(from), p[:n])
	}
	return n, from, err
}
