package relay

import (
	"fmt"
	"io"

	"github.com/VictoriaMetrics/metrics"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// stats are the server's counters. All are live: they move as events happen,
// not when connections close.
type stats struct {
	set *metrics.Set

	connsTCP, connsWS *metrics.Counter // active pre-tunnel and tunnel connections, by transport (inc/dec)
	connsHTTP         *metrics.Counter // active connections handed to net/http
	tunnelsActive     *metrics.Counter
	tunnelsTotal      *metrics.Counter
	bytesUp, bytesDn  *metrics.Counter // a→b (first to arrive → second) and b→a
	splicedBytes      *metrics.Counter
	bufferedBytes     *metrics.Counter
	noPipe            *metrics.Counter // splices given up for want of a pipe (descriptors exhausted)
	authOK, authFail  *metrics.Counter
	authTimeout       *metrics.Counter
	authError         *metrics.Counter // the authenticator could not answer (ProxyError, Aborted, Unknown)
	pairLatency       *metrics.Histogram
	tlsStarted        *metrics.Counter // TLS handshakes begun
	tlsOK, tlsFailed  *metrics.Counter
	tlsOwn, tlsLib    *metrics.Counter    // sessions on our record layer, on crypto/tls's
	throttled         *metrics.Counter    // reads delayed by TunnelRate
	bans              *metrics.Counter    // addresses banned
	httpConns         *metrics.Counter    // connections handed to net/http
	httpRequests      *metrics.Counter    // requests net/http served
	httpDenied        *metrics.Counter    // requests refused by the access rules
	httpBadPath       *metrics.Counter    // requests refused for their path (cleanPath)
	httpOrigin        *metrics.Counter    // net/http upgrades refused for their Origin
	httpSlowBody      *metrics.Counter    // request bodies cut for arriving slower than HTTPMinBodyRate
	httpBanned        *metrics.Counter    // requests refused on a connection whose address was banned since
	identities        [3]*metrics.Counter // authenticated clients by identity kind (identityKinds)
	accepted          *metrics.Counter    // sockets accepted (admitted or refused)
	tlsQueued         *metrics.Counter    // TLS handshakes waiting for a slot (gauge)
	meshOut           *metrics.Counter    // clients tunnelled to a partner on another node
	meshIn            *metrics.Counter    // mesh links paired with a client waiting here
	meshBad           *metrics.Counter    // mesh requests refused for their signature
	closes            [reason.Count]*metrics.Counter
}

func newStats() *stats {
	s := &stats{set: metrics.NewSet()}
	s.connsTCP = s.set.NewCounter(`meetpoint_connections_active{transport="tcp"}`)
	s.connsWS = s.set.NewCounter(`meetpoint_connections_active{transport="websocket"}`)
	s.connsHTTP = s.set.NewCounter(`meetpoint_connections_active{transport="http"}`)
	s.tunnelsActive = s.set.NewCounter(`meetpoint_tunnels_active`)
	s.tunnelsTotal = s.set.NewCounter(`meetpoint_tunnels_total`)
	s.bytesUp = s.set.NewCounter(`meetpoint_tunnel_bytes_total{direction="a_to_b"}`)
	s.bytesDn = s.set.NewCounter(`meetpoint_tunnel_bytes_total{direction="b_to_a"}`)
	s.splicedBytes = s.set.NewCounter(`meetpoint_forwarded_bytes_total{path="splice"}`)
	s.bufferedBytes = s.set.NewCounter(`meetpoint_forwarded_bytes_total{path="buffered"}`)
	s.noPipe = s.set.NewCounter(`meetpoint_splice_no_pipe_total`)
	s.authOK = s.set.NewCounter(`meetpoint_auth_total{result="ok"}`)
	s.authFail = s.set.NewCounter(`meetpoint_auth_total{result="failed"}`)
	s.authTimeout = s.set.NewCounter(`meetpoint_auth_total{result="timeout"}`)
	s.authError = s.set.NewCounter(`meetpoint_auth_total{result="error"}`)
	s.pairLatency = s.set.NewHistogram(`meetpoint_pairing_seconds`)
	s.tlsStarted = s.set.NewCounter(`meetpoint_tls_handshakes_started_total`)
	s.tlsOK = s.set.NewCounter(`meetpoint_tls_handshakes_total{result="ok"}`)
	s.tlsFailed = s.set.NewCounter(`meetpoint_tls_handshakes_total{result="failed"}`)
	s.tlsOwn = s.set.NewCounter(`meetpoint_tls_sessions_total{records="own"}`)
	s.tlsLib = s.set.NewCounter(`meetpoint_tls_sessions_total{records="crypto_tls"}`)
	s.throttled = s.set.NewCounter(`meetpoint_tunnel_throttled_total`)
	s.bans = s.set.NewCounter(`meetpoint_bans_total`)
	s.httpConns = s.set.NewCounter(`meetpoint_http_connections_total`)
	s.httpRequests = s.set.NewCounter(`meetpoint_http_requests_total`)
	s.httpDenied = s.set.NewCounter(`meetpoint_http_denied_total`)
	s.httpBadPath = s.set.NewCounter(`meetpoint_http_bad_path_total`)
	s.httpOrigin = s.set.NewCounter(`meetpoint_http_origin_refused_total`)
	s.httpSlowBody = s.set.NewCounter(`meetpoint_http_slow_bodies_total`)
	s.httpBanned = s.set.NewCounter(`meetpoint_http_banned_total`)
	for i, k := range identityKinds {
		s.identities[i] = s.set.NewCounter(fmt.Sprintf(`meetpoint_authenticated_total{identity=%q}`, k))
	}
	s.accepted = s.set.NewCounter(`meetpoint_connections_accepted_total`)
	s.tlsQueued = s.set.NewCounter(`meetpoint_tls_handshakes_queued`)
	s.meshOut = s.set.NewCounter(`meetpoint_cross_node_pairs_total{side="dialled"}`)
	s.meshIn = s.set.NewCounter(`meetpoint_cross_node_pairs_total{side="owner"}`)
	s.meshBad = s.set.NewCounter(`meetpoint_mesh_refused_total`)
	for r := reason.Reason(0); r < reason.Count; r++ {
		s.closes[r] = s.set.NewCounter(fmt.Sprintf(`meetpoint_closes_total{reason=%q}`, r.String()))
	}
	return s
}

// WriteMetrics writes the engine's metrics and every subsystem's
// (AddMetrics) in Prometheus text format (with bare # HELP lines once
// WritePrometheus has run: the metrics library's metadata switch is
// process-wide).
func (s *Server) WriteMetrics(w io.Writer) {
	s.stats.set.WritePrometheus(w)
	for _, set := range s.metricSets {
		set.WritePrometheus(w)
	}
}

// Stats is a snapshot of the server's main counters.
type Stats struct {
	Accepted                      uint64 // sockets accepted since start (admitted or refused)
	ConnectionsTCP, ConnectionsWS uint64 // active connections by transport
	TunnelsActive, TunnelsTotal   uint64
	SplicedBytes, BufferedBytes   uint64 // bytes forwarded by splice(2) and through buffers
	// Traffic is every byte relayed since start: tunnels (both ways) and
	// what the reporters (TunnelProxy) relayed.
	Traffic                         uint64
	AuthOK, AuthFailed, AuthTimeout uint64
	Closes                          map[string]uint64
	ClosesTotal                     uint64 // connections that have ended, whatever the reason
}

// Stats returns a snapshot of the counters. Cost: one small map allocation.
func (s *Server) Stats() Stats {
	st := s.stats
	out := Stats{
		Accepted:       st.accepted.Get(),
		ConnectionsTCP: st.connsTCP.Get(), ConnectionsWS: st.connsWS.Get(),
		TunnelsActive: st.tunnelsActive.Get(), TunnelsTotal: st.tunnelsTotal.Get(),
		SplicedBytes: st.splicedBytes.Get(), BufferedBytes: st.bufferedBytes.Get(),
		Traffic: s.Traffic(),
		AuthOK:  st.authOK.Get(), AuthFailed: st.authFail.Get(), AuthTimeout: st.authTimeout.Get(),
		Closes: make(map[string]uint64, reason.Count),
	}
	for r := reason.Reason(0); r < reason.Count; r++ {
		if v := st.closes[r].Get(); v > 0 {
			out.Closes[r.String()] = v
			out.ClosesTotal += v
		}
	}
	return out
}

// Traffic is the number of bytes relayed since start: tunnels (both
// directions) and every reporter's (TunnelProxy).
func (s *Server) Traffic() uint64 {
	n := s.stats.bytesUp.Get() + s.stats.bytesDn.Get()
	for _, r := range s.reporters {
		n += r.Traffic()
	}
	return n
}

// WritePrometheus writes everything /metrics serves: the metrics
// (WriteMetrics), meetpoint_ready (1 while accepting new clients, 0 while
// draining or closed), meetpoint_build_info{version} and the process and Go
// runtime metrics (process_*, go_*), each family with # HELP and # TYPE
// (MetricDoc). Cost: the text is built in a buffer, then copied once.
func (s *Server) WritePrometheus(w io.Writer) {
	enableMetadata()
	writeDocumented(w, append([]map[string]MetricDoc{engineDocs}, s.metricDocs...), func(w io.Writer) {
		s.WriteMetrics(w)
		ready := uint64(0)
		if s.Ready() {
			ready = 1
		}
		metrics.WriteGaugeUint64(w, "meetpoint_ready", ready)
		metrics.WriteGaugeUint64(w, fmt.Sprintf("meetpoint_build_info{version=%q}", Version), 1)
		metrics.WriteProcessMetrics(w)
	})
}
