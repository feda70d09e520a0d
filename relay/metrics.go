package relay

import (
	"fmt"
	"io"

	"github.com/VictoriaMetrics/metrics"
)

// Reason names why a connection ended. Every accepted socket ends exactly
// once, with one reason, counted once (meetpoint_closes_total{reason}); the
// only place that counts is ticket.end, so once every connection is gone the
// sum of closes equals meetpoint_connections_accepted_total.
type Reason uint8

// The close reasons.
const (
	ReasonPeerClosed       Reason = iota // the client closed its end (FIN, RST or WebSocket close)
	ReasonPartnerClosed                  // the other side of the tunnel, or the TunnelProxy server, went away
	ReasonSniff                          // first bytes are no protocol we speak
	ReasonHTTP                           // bad or oversized HTTP request, or a plain HTTP request served
	ReasonWebSocket                      // WebSocket protocol violation
	ReasonRPC                            // JSON-RPC error (bad JSON, unknown method, bad params) or a refused TunnelProxy registration
	ReasonPreAuthLimit                   // input before the tunnel over its budget (MaxHeader, MaxPreAuth)
	ReasonAuthFailed                     // authenticator said no
	ReasonAuthTimeout                    // authenticator too slow
	ReasonRPCTimeout                     // asynchronous call exceeded RPCTimeout
	ReasonInactiveTimeout                // not authenticated within InactiveTimeout (TunnelProxy server: silent for TPServerTimeout)
	ReasonAloneTimeout                   // no partner within AloneTimeout
	ReasonDataBeforeTunnel               // data after Authenticate, before TunnelEstablished
	ReasonTunnelExists                   // third client for a (token, nonce) already paired
	ReasonDuplicateUUID                  // both sides presented the same uuid
	ReasonWriteStall                     // receiver accepted nothing for WriteStallTimeout
	ReasonIOError                        // a write or a system call on the socket failed
	ReasonShutdown                       // server closing
	ReasonTLS                            // TLS handshake failed, timed out, or TLS refused/required
	ReasonLimitConns                     // MaxConns reached
	ReasonLimitConnsPerIP                // MaxConnsPerIP reached for the source address (or IPv6 prefix)
	ReasonLimitRate                      // ConnRatePerIP exceeded
	ReasonBanned                         // source address banned after failed authentications
	ReasonHandshakeTimeout               // sniff / HTTP head not complete within HandshakeTimeout
	ReasonSlowReader                     // output the client does not read exceeded its budget (replies, control frames, TunnelProxy backlog)
	ReasonLimitTLS                       // MaxTLSHandshakes busy and its queue full, or queued past the handshake deadline
	reasonCount
)

var reasonNames = [reasonCount]string{
	"peer_closed", "partner_closed", "sniff", "http", "websocket", "rpc",
	"preauth_limit", "auth_failed", "auth_timeout", "rpc_timeout",
	"inactive_timeout", "alone_timeout", "data_before_tunnel", "tunnel_exists",
	"duplicate_uuid", "write_stall", "io_error", "shutdown", "tls",
	"limit_conns", "limit_conns_per_ip", "limit_rate", "banned", "handshake_timeout",
	"slow_reader", "limit_tls_handshakes",
}

// String returns the reason's metric label.
func (r Reason) String() string {
	if r < reasonCount {
		return reasonNames[r]
	}
	return "unknown"
}

// stats are the server's counters. All are live: they move as events happen,
// not when connections close.
type stats struct {
	set *metrics.Set

	connsTCP, connsWS *metrics.Counter // active pre-tunnel and tunnel connections, by transport (inc/dec)
	tunnelsActive     *metrics.Counter
	tunnelsTotal      *metrics.Counter
	bytesUp, bytesDn  *metrics.Counter // a→b (first to arrive → second) and b→a
	splicedBytes      *metrics.Counter
	bufferedBytes     *metrics.Counter
	authOK, authFail  *metrics.Counter
	authTimeout       *metrics.Counter
	pairLatency       *metrics.Histogram
	tlsStarted        *metrics.Counter // TLS handshakes begun
	tlsOK, tlsFailed  *metrics.Counter
	throttled         *metrics.Counter // reads delayed by TunnelRate
	bans              *metrics.Counter // addresses banned
	tpServers         *metrics.Counter // TunnelProxy servers registered (gauge)
	tpClients         *metrics.Counter // TunnelProxy clients connected (gauge)
	tpBytes           *metrics.Counter // TunnelProxy bytes read from servers and clients
	accepted          *metrics.Counter // sockets accepted (admitted or refused)
	tlsQueued         *metrics.Counter // TLS handshakes waiting for a slot (gauge)
	closes            [reasonCount]*metrics.Counter
}

func newStats() *stats {
	s := &stats{set: metrics.NewSet()}
	s.connsTCP = s.set.NewCounter(`meetpoint_connections_active{transport="tcp"}`)
	s.connsWS = s.set.NewCounter(`meetpoint_connections_active{transport="websocket"}`)
	s.tunnelsActive = s.set.NewCounter(`meetpoint_tunnels_active`)
	s.tunnelsTotal = s.set.NewCounter(`meetpoint_tunnels_total`)
	s.bytesUp = s.set.NewCounter(`meetpoint_tunnel_bytes_total{direction="a_to_b"}`)
	s.bytesDn = s.set.NewCounter(`meetpoint_tunnel_bytes_total{direction="b_to_a"}`)
	s.splicedBytes = s.set.NewCounter(`meetpoint_forwarded_bytes_total{path="splice"}`)
	s.bufferedBytes = s.set.NewCounter(`meetpoint_forwarded_bytes_total{path="buffered"}`)
	s.authOK = s.set.NewCounter(`meetpoint_auth_total{result="ok"}`)
	s.authFail = s.set.NewCounter(`meetpoint_auth_total{result="failed"}`)
	s.authTimeout = s.set.NewCounter(`meetpoint_auth_total{result="timeout"}`)
	s.pairLatency = s.set.NewHistogram(`meetpoint_pairing_seconds`)
	s.tlsStarted = s.set.NewCounter(`meetpoint_tls_handshakes_started_total`)
	s.tlsOK = s.set.NewCounter(`meetpoint_tls_handshakes_total{result="ok"}`)
	s.tlsFailed = s.set.NewCounter(`meetpoint_tls_handshakes_total{result="failed"}`)
	s.throttled = s.set.NewCounter(`meetpoint_tunnel_throttled_total`)
	s.bans = s.set.NewCounter(`meetpoint_bans_total`)
	s.tpServers = s.set.NewCounter(`meetpoint_tunnelproxy_servers_active`)
	s.tpClients = s.set.NewCounter(`meetpoint_tunnelproxy_clients_active`)
	s.tpBytes = s.set.NewCounter(`meetpoint_tunnelproxy_bytes_total`)
	s.accepted = s.set.NewCounter(`meetpoint_connections_accepted_total`)
	s.tlsQueued = s.set.NewCounter(`meetpoint_tls_handshakes_queued`)
	for r := Reason(0); r < reasonCount; r++ {
		s.closes[r] = s.set.NewCounter(fmt.Sprintf(`meetpoint_closes_total{reason=%q}`, r.String()))
	}
	return s
}

// WriteMetrics writes the server's metrics in Prometheus text format.
func (s *Server) WriteMetrics(w io.Writer) { s.stats.set.WritePrometheus(w) }

// Stats is a snapshot of the server's main counters.
type Stats struct {
	Accepted                      uint64 // sockets accepted since start (admitted or refused)
	ConnectionsTCP, ConnectionsWS uint64 // active connections by transport
	TunnelsActive, TunnelsTotal   uint64
	SplicedBytes, BufferedBytes   uint64 // bytes forwarded by splice(2) and through buffers
	Closes                        map[string]uint64
}

// Stats returns a snapshot of the counters. Cost: one small map allocation.
func (s *Server) Stats() Stats {
	st := s.stats
	out := Stats{
		Accepted:       st.accepted.Get(),
		ConnectionsTCP: st.connsTCP.Get(), ConnectionsWS: st.connsWS.Get(),
		TunnelsActive: st.tunnelsActive.Get(), TunnelsTotal: st.tunnelsTotal.Get(),
		SplicedBytes: st.splicedBytes.Get(), BufferedBytes: st.bufferedBytes.Get(),
		Closes: make(map[string]uint64, reasonCount),
	}
	for r := Reason(0); r < reasonCount; r++ {
		if v := st.closes[r].Get(); v > 0 {
			out.Closes[r.String()] = v
		}
	}
	return out
}

// WritePrometheus writes everything /metrics serves: the server's metrics
// (WriteMetrics), meetpoint_ready (1 while accepting new clients, 0 while
// draining or closed), meetpoint_build_info{version} and the process and Go
// runtime metrics (process_*, go_*).
func (s *Server) WritePrometheus(w io.Writer) {
	s.WriteMetrics(w)
	ready := 0
	if s.Ready() {
		ready = 1
	}
	fmt.Fprintf(w, "meetpoint_ready %d\n", ready)
	fmt.Fprintf(w, "meetpoint_build_info{version=%q} 1\n", Version)
	metrics.WriteProcessMetrics(w)
}

// trafficTotal is the number of bytes relayed since start: legacy tunnels
// (both directions) and TunnelProxy.
func (st *stats) trafficTotal() uint64 {
	return st.bytesUp.Get() + st.bytesDn.Get() + st.tpBytes.Get()
}

// closesTotal is the number of connections that have ended, whatever the
// reason.
func (st *stats) closesTotal() uint64 {
	var n uint64
	for _, c := range st.closes {
		n += c.Get()
	}
	return n
}
