package relay

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"sync"

	"github.com/VictoriaMetrics/metrics"
)

// MetricDoc documents one metric family on /metrics: its # TYPE (counter,
// gauge, histogram, summary) and its # HELP text.
type MetricDoc struct{ Type, Help string }

// engineDocs documents the engine's families. Several "active" values are
// metrics.Counters moved both ways, so their TYPE is gauge.
var engineDocs = map[string]MetricDoc{
	"meetpoint_connections_active":           {"gauge", "Connections open now, by transport (tcp and websocket: relay connections, pre-tunnel and in tunnels; http: handed to net/http)."},
	"meetpoint_connections_accepted_total":   {"counter", "Sockets accepted, admitted or refused."},
	"meetpoint_tunnels_active":               {"gauge", "Tunnels established now."},
	"meetpoint_tunnels_total":                {"counter", "Tunnels established since start."},
	"meetpoint_cross_node_pairs_total":       {"counter", "Cross-node tunnel set-ups in a fleet: dialled (this node's client, partner elsewhere) and owner (a mesh link paired with a client waiting here)."},
	"meetpoint_mesh_refused_total":           {"counter", "Mesh requests refused for a missing, bad or stale signature."},
	"meetpoint_tunnel_bytes_total":           {"counter", "Bytes relayed through tunnels, by direction (a = the first client to arrive)."},
	"meetpoint_forwarded_bytes_total":        {"counter", "Bytes forwarded, by path: splice(2) for TCP↔TCP, buffered otherwise."},
	"meetpoint_splice_no_pipe_total":         {"counter", "Splices given up because no pipe could be made (the process is out of descriptors): those reads went through buffers."},
	"meetpoint_auth_total":                   {"counter", "Authentication results."},
	"meetpoint_pairing_seconds":              {"histogram", "Time a client waited in the registry for its partner (VictoriaMetrics vmrange buckets)."},
	"meetpoint_tls_handshakes_started_total": {"counter", "TLS handshakes begun."},
	"meetpoint_tls_handshakes_total":         {"counter", "TLS handshakes finished, by result."},
	"meetpoint_tls_handshakes_queued":        {"gauge", "TLS handshakes waiting for a handshake slot."},
	"meetpoint_tls_sessions_total":           {"counter", "TLS sessions after their handshake, by record layer: own (TLS 1.3, the relay's; no buffer while idle) or crypto_tls (TLS 1.2, HTTP/2)."},
	"meetpoint_tunnel_throttled_total":       {"counter", "Tunnel reads delayed by the per-tunnel rate limit."},
	"meetpoint_bans_total":                   {"counter", "Addresses banned for repeated failures."},
	"meetpoint_http_connections_total":       {"counter", "Connections handed to net/http."},
	"meetpoint_http_requests_total":          {"counter", "HTTP requests served on the relay port."},
	"meetpoint_http_denied_total":            {"counter", "HTTP requests on the relay port refused (403) by the access rules."},
	"meetpoint_http_banned_total":            {"counter", "HTTP requests refused (403) on a connection whose address was banned while it held it (new connections from it are refused at accept)."},
	"meetpoint_http_bad_path_total":          {"counter", "HTTP requests on the relay port refused (400) for their path: an encoded slash, backslash or dot segment, a dot segment with a parameter (..;), double encoding, a control character."},
	"meetpoint_http_slow_bodies_total":       {"counter", "HTTP request bodies cut for arriving slower than --http-min-body-rate after --http-body-timeout."},
	"meetpoint_http_origin_refused_total":    {"counter", "WebSocket upgrades served by net/http (signalling, subsystems) refused (403) for their Origin (--allowed-origins)."},
	"meetpoint_access_total":                 {"counter", "Access rule decisions, by rule, action and result (bounded by the rules file)."},
	"meetpoint_authenticated_total":          {"counter", "Clients authenticated, by the kind of their identity (cert, token, anonymous)."},
	"meetpoint_closes_total":                 {"counter", "Connections ended, by reason (every close has exactly one)."},
	"meetpoint_ready":                        {"gauge", "1 while the relay accepts new clients, 0 while starting, draining or closed."},
	"meetpoint_dependency_up":                {"gauge", "1 while an outside service the relay relies on (by name: auth_redis, auth_webhook, events_redis) answered last, 0 while it is unreachable."},
	"meetpoint_dependency_outages_total":     {"counter", "Outages of an outside service the relay relies on, by name: each began with a failed request or probe."},
	"meetpoint_build_info":                   {"gauge", "Always 1; the version label is the build's."},
}

var exposeMetadata sync.Once

// writeDocumented writes what fill writes, with each family's # HELP text
// and # TYPE taken from docs where the metrics library left them blank or
// generic. fill's output must carry metadata lines (metrics.ExposeMetadata).
func writeDocumented(w io.Writer, docs []map[string]MetricDoc, fill func(io.Writer)) {
	var buf bytes.Buffer
	fill(&buf)
	doc := func(fam string) (MetricDoc, bool) {
		for _, m := range docs {
			if d, ok := m[fam]; ok {
				return d, true
			}
		}
		return MetricDoc{}, false
	}
	bw := bufio.NewWriter(w)
	for line := range strings.Lines(buf.String()) {
		switch {
		case strings.HasPrefix(line, "# HELP "):
			fam := strings.TrimSpace(line[len("# HELP "):])
			if d, ok := doc(fam); ok && !strings.Contains(fam, " ") {
				line = "# HELP " + fam + " " + d.Help + "\n"
			}
		case strings.HasPrefix(line, "# TYPE "):
			if f := strings.Fields(line); len(f) == 4 {
				if d, ok := doc(f[2]); ok && d.Type != "" {
					line = "# TYPE " + f[2] + " " + d.Type + "\n"
				}
			}
		}
		_, _ = bw.WriteString(line)
	}
	_ = bw.Flush()
}

func enableMetadata() { exposeMetadata.Do(func() { metrics.ExposeMetadata(true) }) }
