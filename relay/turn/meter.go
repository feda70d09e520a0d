package turn

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	pturn "github.com/pion/turn/v5"
	"golang.org/x/time/rate"
)

// Each allocation's relay socket (the UDP port peers send to) is wrapped:
// its datagrams and bytes are counted each way, and with a rate set
// (Config.MaxRate) each direction is held to it by a token bucket —
// datagrams over the rate are dropped, as a congested path would, and
// counted. The counts are the allocation's metrics: GET
// /v1/turn/allocations lists them (with the admin key); the families
// meetpoint_turn_relayed_* sum them.

// meteredGenerator hands pion metered relay sockets.
type meteredGenerator struct {
	pturn.RelayAddressGenerator
	s    *Service
	udp  bool   // the UDP listener's: no TCP allocations (RFC 6062 section 5.1)
	bind net.IP // the address relay sockets bind (unspecified: any)
}

func (g meteredGenerator) AllocatePacketConn(c pturn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	pc, addr, err := g.RelayAddressGenerator.AllocatePacketConn(c)
	if err != nil {
		return nil, nil, err
	}
	return g.s.meter(pc, c.UserID, addr), addr, nil
}

// errTCPOff refuses an RFC 6062 TCP allocation without --turn-tcp (pion
// answers 508).
var errTCPOff = errors.New("turn: TCP allocations are off (--turn-tcp)")

// errTCPOverUDP refuses an RFC 6062 TCP allocation asked for over UDP
// (pion answers 508): RFC 6062 wants the control connection TCP or TLS,
// and pion serves a Connect inline on its one UDP read loop, so a Connect
// to a peer that never answers (its dial waits out the kernel's SYN
// retries, about two minutes) would stall TURN and STUN over UDP for
// every client.
var errTCPOverUDP = errors.New("turn: TCP allocations need a TCP or TLS control connection")

// AllocateListener makes a TCP allocation's relay listener, if TCP
// allocations are on and the control connection is TCP or TLS, on a port
// no other TCP allocation listens on (ownPort).
func (g meteredGenerator) AllocateListener(c pturn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	if !g.s.cfg.TCPAllocations {
		g.s.tcpRefused.Inc()
		return nil, nil, errTCPOff
	}
	if g.udp {
		g.s.tcpOverUDP.Inc()
		return nil, nil, errTCPOverUDP
	}
	var (
		ln   net.Listener
		addr net.Addr
		err  error
	)
	for range tcpPortTries {
		if ln, addr, err = g.RelayAddressGenerator.AllocateListener(c); err != nil {
			break
		}
		if pl := g.s.ownPort(ln, addr); pl != nil {
			ln = pl
			break
		}
		ln, err = nil, errTCPPortBusy // another TCP allocation listens there
		if c.RequestedPort != 0 {     // EVEN-PORT or a reservation named it: no other will do
			break
		}
	}
	if err != nil {
		if errors.Is(err, errTCPPortBusy) {
			g.s.tcpPortBusy.Inc()
		}
		return nil, nil, err
	}
	if g.s.cfg.MaxRate <= 0 {
		return ln, addr, nil
	}
	r := g.s.newRate()
	g.s.mu.Lock()
	g.s.tcpRates[addr.String()] = r
	g.s.mu.Unlock()
	return &rateListener{Listener: ln, s: g.s, alloc: addr.String(), r: r}, addr, nil
}

// pion's relay listeners (and a Connect's dials from the relay port) set
// SO_REUSEPORT, so that a TCP allocation's Connects leave from its relayed
// address while it listens there; the kernel then lets a second TCP
// allocation listen on the same port, and splits the peers' connections to
// it between the two, one client's peers reaching another's. So a TCP
// allocation's listener is kept only on a port no other TCP allocation
// holds; one that landed on a held port is closed and another tried.

// tcpPortTries is how many relay listeners a TCP allocation tries for a
// port of its own (pion tries 10 random ports for each).
const tcpPortTries = 10

// errTCPPortBusy refuses a TCP allocation that found no relay port free of
// other TCP allocations (pion answers 508).
var errTCPPortBusy = errors.New("turn: no TCP relay port free of other allocations")

// ownPort claims ln's port for its TCP allocation, or closes ln and says
// nil when another TCP allocation holds that port.
func (s *Service) ownPort(ln net.Listener, addr net.Addr) net.Listener {
	port := int(ipOf(addr).Port())
	s.mu.Lock()
	taken := s.tcpPorts[port]
	if !taken {
		s.tcpPorts[port] = true
	}
	s.mu.Unlock()
	if taken {
		_ = ln.Close()
		return nil
	}
	return &portListener{Listener: ln, s: s, port: port}
}

// portListener is a TCP allocation's relay listener, holding its port
// until closed.
type portListener struct {
	net.Listener
	s    *Service
	port int
	once sync.Once
}

func (l *portListener) Close() error {
	l.once.Do(func() {
		l.s.mu.Lock()
		delete(l.s.tcpPorts, l.port)
		l.s.mu.Unlock()
	})
	return l.Listener.Close()
}

// A TCP allocation's peer connections (accepted on its relay listener or
// dialled by its Connects) share its two token buckets (MaxRate, each
// way), as a UDP allocation's datagrams do; TCP waits for the tokens
// where UDP drops.

// buckets are one allocation's rate buckets: from its peers and to them.
type buckets struct{ in, out *rate.Limiter }

// newRate makes an allocation's two buckets at MaxRate (set), UDP's or
// TCP's: a burst of a quarter second, at least 64 KiB (a datagram always
// fits).
func (s *Service) newRate() *buckets {
	r := s.cfg.MaxRate
	burst := max(int(r/4), 64<<10)
	return &buckets{in: rate.NewLimiter(rate.Limit(r), burst), out: rate.NewLimiter(rate.Limit(r), burst)}
}

// rateOf is the buckets of the TCP allocation whose relayed address is
// alloc (nil: no rate).
func (s *Service) rateOf(alloc string) *buckets {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tcpRates[alloc]
}

// rateListener is a TCP allocation's relay listener: the peer
// connections it accepts are held to the allocation's rate.
type rateListener struct {
	net.Listener
	s     *Service
	alloc string
	r     *buckets
}

func (l *rateListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newRateConn(c, l.r), nil
}

func (l *rateListener) Close() error {
	l.s.mu.Lock()
	if l.s.tcpRates[l.alloc] == l.r {
		delete(l.s.tcpRates, l.alloc)
	}
	l.s.mu.Unlock()
	return l.Listener.Close()
}

// rateConn is a peer connection of a TCP allocation held to its rate.
type rateConn struct {
	net.Conn
	r      *buckets
	ctx    context.Context // done when the connection closes: no wait outlives it
	cancel context.CancelFunc
}

func newRateConn(c net.Conn, r *buckets) *rateConn {
	ctx, cancel := context.WithCancel(context.Background())
	return &rateConn{Conn: c, r: r, ctx: ctx, cancel: cancel}
}

// wait takes n tokens from l, a burst at a time.
func (c *rateConn) wait(l *rate.Limiter, n int) error {
	for n > 0 {
		k := min(n, l.Burst())
		if err := l.WaitN(c.ctx, k); err != nil {
			return net.ErrClosed
		}
		n -= k
	}
	return nil
}

// Read reads from the peer within the rate.
func (c *rateConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if werr := c.wait(c.r.in, n); werr != nil && err == nil {
		err = werr
	}
	return n, err
}

// Write writes to the peer within the rate.
func (c *rateConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(len(p), c.r.out.Burst())
		if err := c.wait(c.r.out, k); err != nil {
			return written, err
		}
		n, err := c.Conn.Write(p[:k])
		written += n
		if err != nil {
			return written, err
		}
		p = p[k:]
	}
	return written, nil
}

func (c *rateConn) Close() error {
	c.cancel()
	return c.Conn.Close()
}

// AllocateConn dials a TCP allocation's peer (a Connect request, whose
// peer address the permission handler already judged); the relay IP
// itself is refused here (TURN to TURN is offered over UDP only) unless
// --turn-allow-peer names it. The connection leaves from the relay port
// on the address the relay sockets bind, not on the relay IP pion names:
// that is the address relayed candidates carry, often a NAT's
// (--turn-relay-ip), which no socket on the host can bind.
func (g meteredGenerator) AllocateConn(c pturn.AllocateConnConfig) (net.Conn, error) {
	v := g.s.peers.judge(ipOf(c.RemoteAddr).Addr())
	if v.relays {
		v = verdict{class: "peer_own"}
	}
	if !v.ok {
		g.s.peerRefused[v.class].Inc()
		return nil, errors.New("turn: peer refused (" + v.class + ")")
	}
	alloc := c.LocalAddr.String() // the allocation's relayed address
	if !g.s.connOpened(alloc) {
		return nil, errConnQuota
	}
	if la, ok := c.LocalAddr.(*net.TCPAddr); ok {
		local := &net.TCPAddr{Port: la.Port} // unspecified: the dial's family's any
		if !g.bind.IsUnspecified() {
			local.IP = g.bind
		}
		c.LocalAddr = local
	}
	conn, err := g.RelayAddressGenerator.AllocateConn(c)
	if err != nil {
		g.s.connClosed(alloc)
		return nil, err
	}
	if r := g.s.rateOf(alloc); r != nil {
		conn = newRateConn(conn, r)
	}
	return &peerConn{Conn: conn, s: g.s, alloc: alloc}, nil
}

// MaxTCPConnections bounds the peer connections one TCP allocation (RFC
// 6062) holds at once from its Connect requests; one more is refused
// (447) and counted (quota_connection). Each holds a descriptor on the
// relay host, and a Connect to another port of a permitted peer needs no
// new permission, so without a bound one allocation could take every
// descriptor the relay has.
const MaxTCPConnections = 100

// errConnQuota refuses a Connect over MaxTCPConnections.
var errConnQuota = errors.New("turn: the allocation holds its most TCP connections")

// connOpened counts a new Connect connection of the TCP allocation whose
// relayed address is alloc, if it holds fewer than MaxTCPConnections.
func (s *Service) connOpened(alloc string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[alloc] >= MaxTCPConnections {
		s.connQuotas.Inc()
		return false
	}
	s.conns[alloc]++
	return true
}

// connClosed uncounts one of alloc's Connect connections.
func (s *Service) connClosed(alloc string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[alloc]--; s.conns[alloc] <= 0 {
		delete(s.conns, alloc)
	}
}

// peerConn is a Connect's connection to its peer, uncounted when closed.
type peerConn struct {
	net.Conn
	s      *Service
	alloc  string
	closed atomic.Bool
}

func (c *peerConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.s.connClosed(c.alloc)
	}
	return c.Conn.Close()
}

// allocation is one relay socket's counters.
type allocation struct {
	net.PacketConn
	s                *Service
	user             string
	relay            string
	relayAddr        net.Addr // its port is in Service.livePorts while open
	since            time.Time
	in, out          *rate.Limiter // nil: no rate limit
	rxBytes, txBytes atomic.Uint64 // from peers; to peers
	rxPkts, txPkts   atomic.Uint64
	dropped          atomic.Uint64 // over the rate, either way
	closed           atomic.Bool

	// peers are the peer addresses its client was granted a permission
	// (or a channel) for, and until when it lasts (Service.permit notes
	// them): a datagram from any other address is pion's to drop
	// unrelayed, so it is neither counted nor charged to the rate —
	// else anyone who knew the relayed address inflated its counters and
	// drained its bucket, its permitted peers' datagrams then dropped.
	// Lapsed ones are forgotten as new ones come past MaxPermissions:
	// the map holds what permit admitted within channelLife. Guarded by
	// pmu.
	pmu   sync.RWMutex
	peers map[netip.Addr]time.Time
}

func (s *Service) meter(pc net.PacketConn, user string, addr net.Addr) *allocation {
	bigBuffers(pc)
	a := &allocation{PacketConn: pc, s: s, user: user, relay: addr.String(), relayAddr: addr, since: time.Now(), peers: map[netip.Addr]time.Time{}}
	if s.cfg.MaxRate > 0 {
		r := s.newRate()
		a.in, a.out = r.in, r.out
	}
	s.mu.Lock()
	s.live[tupleKey(addr)] = a
	s.mu.Unlock()
	s.portOpened(addr, 1)
	return a
}

// ReadFrom reads the next datagram from a peer within the rate.
func (a *allocation) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, from, err := a.PacketConn.ReadFrom(p)
		if err != nil {
			return n, from, err
		}
		if !a.s.relayPortOK(from) || !a.permits(from) {
			continue // pion would drop it unrelayed
		}
		if a.in != nil && !a.in.AllowN(time.Now(), n) {
			a.dropped.Add(1)
			a.s.dropped.Inc()
			continue
		}
		a.rxBytes.Add(uint64(n))
		a.rxPkts.Add(1)
		a.s.rxBytes.Add(n)
		a.s.rxPkts.Inc()
		return n, from, nil
	}
}

// WriteTo sends a datagram to a peer within the rate (over it, it is
// dropped and reported sent, as the network would).
func (a *allocation) WriteTo(p []byte, to net.Addr) (int, error) {
	if !a.s.relayPortOK(to) {
		return len(p), nil // dropped and counted, as the rate does
	}
	if a.out != nil && !a.out.AllowN(time.Now(), len(p)) {
		a.dropped.Add(1)
		a.s.dropped.Inc()
		return len(p), nil
	}
	n, err := a.PacketConn.WriteTo(p, to)
	if err == nil {
		a.txBytes.Add(uint64(n))
		a.txPkts.Add(1)
		a.s.txBytes.Add(n)
		a.s.txPkts.Inc()
	}
	return n, err
}

func (a *allocation) Close() error {
	if a.closed.CompareAndSwap(false, true) {
		a.s.mu.Lock()
		if k := tupleKey(a.relayAddr); a.s.live[k] == a {
			delete(a.s.live, k)
		}
		a.s.mu.Unlock()
		a.s.portOpened(a.relayAddr, -1)
	}
	return a.PacketConn.Close()
}

// permitted notes that peer may send to a until (or later, if it already
// may).
func (a *allocation) permitted(peer netip.Addr, until time.Time) {
	now := time.Now()
	a.pmu.Lock()
	defer a.pmu.Unlock()
	if old, ok := a.peers[peer]; ok {
		if until.After(old) {
			a.peers[peer] = until
		}
		return
	}
	if len(a.peers) >= MaxPermissions {
		for p, u := range a.peers {
			if !now.Before(u) {
				delete(a.peers, p)
			}
		}
	}
	a.peers[peer] = until
}

// permits says whether pion relays a datagram from peer: its address
// holds a permission or a channel.
func (a *allocation) permits(peer net.Addr) bool {
	ip := ipOf(peer).Addr().Unmap().WithZone("")
	a.pmu.RLock()
	until, ok := a.peers[ip]
	a.pmu.RUnlock()
	return ok && time.Now().Before(until)
}

// AllocationInfo is one allocation as GET /v1/turn/allocations lists it.
type AllocationInfo struct {
	User      string `json:"user"`
	Relay     string `json:"relay"` // the relayed address peers send to
	Seconds   int64  `json:"seconds"`
	RxBytes   uint64 `json:"rx_bytes"` // from peers
	TxBytes   uint64 `json:"tx_bytes"` // to peers
	RxPackets uint64 `json:"rx_packets"`
	TxPackets uint64 `json:"tx_packets"`
	Dropped   uint64 `json:"dropped"` // over the rate limit
}

// Allocations lists the live allocations, longest-lived first.
func (s *Service) Allocations() []AllocationInfo {
	s.mu.Lock()
	out := make([]AllocationInfo, 0, len(s.live))
	for _, a := range s.live {
		out = append(out, AllocationInfo{User: a.user, Relay: a.relay, Seconds: int64(time.Since(a.since) / time.Second),
			RxBytes: a.rxBytes.Load(), TxBytes: a.txBytes.Load(), RxPackets: a.rxPkts.Load(), TxPackets: a.txPkts.Load(),
			Dropped: a.dropped.Load()})
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		return out[i].Seconds > out[j].Seconds || (out[i].Seconds == out[j].Seconds && out[i].Relay < out[j].Relay)
	})
	return out
}

// bigBuffers asks for 4 MiB socket buffers each way (the kernel caps them
// at net.core.rmem_max / wmem_max): a burst of datagrams then waits in the
// kernel instead of being lost while pion's one reader per socket is busy.
// Measured in docs/BENCHMARKS.md#turn.
func bigBuffers(pc net.PacketConn) {
	if uc, ok := pc.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(4 << 20)
		_ = uc.SetWriteBuffer(4 << 20)
	}
}
