package relay

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// A ticket is one accepted socket's membership of the server, from accept
// to close: its place under the limits, its transport in
// meetpoint_connections_active, and its entry in the live set that
// Shutdown waits on. It travels with the socket through every owner (the
// pre-tunnel conn, the TLS handshake, a tunnel endpoint, a TunnelProxy end,
// a lingering close), and whoever finally closes the socket ends it with
// the reason. end is the only place a close is counted, and it counts once:
// so closes can neither be lost nor counted twice, and once every
// connection is gone sum(meetpoint_closes_total) equals
// meetpoint_connections_accepted_total.
type ticket struct {
	s    *Server
	key  netip.Addr    // limiter key: the address, or its IPv6 prefix
	kind atomic.Uint32 // transportKind counted in connections_active
	done atomic.Bool
	// handed is 1 + the hand-off kind whose HTTPMaxConnsPerIP share the
	// connection holds (handOver), given back by End; 0 for none.
	handed atomic.Int32
	// unlimited: off key's per-address count (a mesh link, unlimit); End
	// gives back its place in the total only.
	unlimited atomic.Bool
}

// unlimit takes the socket off its address's per-address count, once.
func (tk *ticket) unlimit() {
	if tk != nil && !tk.done.Load() && tk.unlimited.CompareAndSwap(false, true) {
		tk.s.lim.Unlimit(tk.key)
	}
}

// transportKind is what a connection was sniffed to speak.
type transportKind uint32

const (
	kindNone transportKind = iota // not sniffed yet
	kindTCP                       // raw TCP JSON-RPC
	kindWS                        // WebSocket
	kindHTTP                      // handed to net/http (or another library)
)

// newTicket admits a socket; the caller has counted it accepted.
func (s *Server) newTicket(key netip.Addr) *ticket {
	s.live.add()
	return &ticket{s: s, key: key}
}

// setKind records the sniffed transport once and counts it active.
func (tk *ticket) setKind(k transportKind) {
	if !tk.kind.CompareAndSwap(uint32(kindNone), uint32(k)) {
		return
	}
	tk.s.stats.active(k).Inc()
}

// end accounts for the socket being closed: the close is counted under r,
// the limiter slot and the transport gauge are given back, and the live
// set shrinks. Only the first call does anything.
func (tk *ticket) End(r reason.Reason) {
	if tk == nil || !tk.done.CompareAndSwap(false, true) {
		return
	}
	st := tk.s.stats
	st.closes[r].Inc()
	if k := transportKind(tk.kind.Load()); k != kindNone {
		st.active(k).Dec()
	}
	if tk.unlimited.Load() {
		tk.s.lim.Release(netip.Addr{})
	} else {
		tk.s.lim.Release(tk.key)
	}
	if k := tk.handed.Load(); k > 0 {
		tk.s.httpShares[k-1].Give(tk.key)
	}
	tk.s.live.done()
}

// active is the connections_active gauge of a transport.
func (st *stats) active(k transportKind) *metrics.Counter {
	switch k {
	case kindWS:
		return st.connsWS
	case kindHTTP:
		return st.connsHTTP
	}
	return st.connsTCP
}

// liveSet counts the tickets not yet ended: every socket the server holds,
// whatever its stage. Shutdown waits for it to reach zero.
type liveSet struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed while n == 0; replaced when n leaves 0
}

func newLiveSet() *liveSet {
	l := &liveSet{idle: make(chan struct{})}
	close(l.idle)
	return l
}

func (l *liveSet) add() {
	l.mu.Lock()
	if l.n == 0 {
		l.idle = make(chan struct{})
	}
	l.n++
	l.mu.Unlock()
}

func (l *liveSet) done() {
	l.mu.Lock()
	l.n--
	if l.n == 0 {
		close(l.idle)
	}
	l.mu.Unlock()
}

// wait returns a channel closed once no socket is live.
func (l *liveSet) wait() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.idle
}

// count is the number of live sockets.
func (l *liveSet) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// liveConns is the number of sockets the server holds at any stage.
func (s *Server) liveConns() int { return s.live.count() }
