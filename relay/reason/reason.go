// Package reason names why a relay connection ended. Every accepted
// socket ends exactly once, with one Reason, counted once under
// meetpoint_closes_total{reason}: whoever finally closes a socket (the
// pre-tunnel connection, a tunnel, a TunnelProxy hub, a lingering close)
// calls its Ender once. The package is a leaf so that the engine, its data
// plane and its subsystems share the vocabulary without importing each
// other.
package reason

// Reason is why a connection ended; its String is the metric label.
type Reason uint8

// The close reasons.
const (
	PeerClosed       Reason = iota // the client closed its end (FIN, RST or WebSocket close)
	PartnerClosed                  // the other side of the tunnel, or the TunnelProxy server, went away
	Sniff                          // first bytes are no protocol we speak
	HTTP                           // bad or oversized HTTP request, or a plain HTTP request served
	WebSocket                      // WebSocket protocol violation
	RPC                            // JSON-RPC error (bad JSON, unknown method, bad params) or a refused TunnelProxy registration
	PreAuthLimit                   // input before the tunnel over its budget (MaxHeader, MaxPreAuth)
	AuthFailed                     // authenticator said no
	AuthTimeout                    // authenticator too slow
	RPCTimeout                     // asynchronous call exceeded RPCTimeout
	InactiveTimeout                // not authenticated within InactiveTimeout (TunnelProxy server: silent for TPServerTimeout)
	AloneTimeout                   // no partner within AloneTimeout
	DataBeforeTunnel               // data after Authenticate, before TunnelEstablished
	TunnelExists                   // third client for a (token, nonce) already paired
	DuplicateUUID                  // both sides presented the same uuid
	WriteStall                     // receiver accepted nothing for WriteStallTimeout
	IOError                        // a write or a system call on the socket failed
	Shutdown                       // server closing
	TLS                            // TLS handshake failed, timed out, or TLS refused/required; in a tunnel, a record failed or the peer sent an alert
	LimitConns                     // MaxConns reached
	LimitConnsPerIP                // MaxConnsPerIP reached for the source address (or IPv6 prefix)
	LimitRate                      // ConnRatePerIP exceeded
	Banned                         // source address banned after failed authentications
	HandshakeTimeout               // sniff / HTTP head not complete within HandshakeTimeout
	SlowReader                     // output the client does not read exceeded its budget (replies, control frames, TunnelProxy backlog)
	LimitTLS                       // MaxTLSHandshakes busy and its queue full, or queued past the handshake deadline
	LimitHTTP                      // HTTPMaxConns HTTP connections handed to net/http already
	AccessDenied                   // the access rules do not let this identity do what it asked
	Fleet                          // the fleet could not place the client (its store or the owner node unreachable)
	Mesh                           // a node-to-node mesh request refused (bad signature, nobody waiting)
	LimitHTTPPerIP                 // the source address (or IPv6 prefix) holds its HTTPMaxConnsPerIP share of HTTP connections
	LimitTLSPerIP                  // the source address (or IPv6 prefix) holds its MaxTLSHandshakesPerIP share of TLS handshakes
	FarNodeLost                    // the fleet node at the tunnel's far end stopped answering (a partition, power loss)
	Moved                          // a waiting client's key moved to a fleet node this one cannot reach: told to reconnect
	Fault                          // a bug: the relay's own code panicked on the connection's input (logged with its stack); the connection alone is ended
	// Count is the number of reasons (not a reason itself).
	Count
)

var names = [Count]string{
	"peer_closed", "partner_closed", "sniff", "http", "websocket", "rpc",
	"preauth_limit", "auth_failed", "auth_timeout", "rpc_timeout",
	"inactive_timeout", "alone_timeout", "data_before_tunnel", "tunnel_exists",
	"duplicate_uuid", "write_stall", "io_error", "shutdown", "tls",
	"limit_conns", "limit_conns_per_ip", "limit_rate", "banned", "handshake_timeout",
	"slow_reader", "limit_tls_handshakes", "limit_http", "access_denied",
	"fleet", "mesh", "limit_http_per_ip", "limit_tls_per_ip", "far_node_lost",
	"fleet_moved", "internal_fault",
}

// String returns the reason's metric label, e.g. "peer_closed".
func (r Reason) String() string {
	if r < Count {
		return names[r]
	}
	return "unknown"
}

// An Ender is told, once, that a socket was closed and why: it counts the
// close and gives back what the socket held (a relay's ticket). Calls
// after the first are ignored.
type Ender interface {
	End(r Reason)
}
