package handshake

import (
	"encoding/json"
	"sync"
)

// AuthenticationError is the authenticationError value of an
// Authentication.Authenticate reply.
type AuthenticationError uint8

// AuthenticationError values, in nymea's order.
const (
	AuthenticationErrorNoError AuthenticationError = iota
	AuthenticationErrorUnknown
	AuthenticationErrorTimeout
	AuthenticationErrorAborted
	AuthenticationErrorAuthenticationFailed
	AuthenticationErrorProxyError
)

var authenticationErrorNames = [...]string{
	"AuthenticationErrorNoError",
	"AuthenticationErrorUnknown",
	"AuthenticationErrorTimeout",
	"AuthenticationErrorAborted",
	"AuthenticationErrorAuthenticationFailed",
	"AuthenticationErrorProxyError",
}

// String returns the wire name, e.g. "AuthenticationErrorNoError". It does
// not allocate; an out-of-range value gives "AuthenticationErrorUnknown".
func (e AuthenticationError) String() string {
	if int(e) < len(authenticationErrorNames) {
		return authenticationErrorNames[e]
	}
	return authenticationErrorNames[AuthenticationErrorUnknown]
}

// TunnelProxyError is the tunnelProxyError value of a TunnelProxy reply.
type TunnelProxyError uint8

// TunnelProxyError values, in nymea's order.
const (
	TunnelProxyErrorNoError TunnelProxyError = iota
	TunnelProxyErrorInvalidUuid
	TunnelProxyErrorInternalServerError
	TunnelProxyErrorServerNotFound
	TunnelProxyErrorForbiddenCall
	TunnelProxyErrorAlreadyRegistered
	TunnelProxyErrorNotRegistered
	TunnelProxyErrorUnknownSocketAddress
)

var tunnelProxyErrorNames = [...]string{
	"TunnelProxyErrorNoError",
	"TunnelProxyErrorInvalidUuid",
	"TunnelProxyErrorInternalServerError",
	"TunnelProxyErrorServerNotFound",
	"TunnelProxyErrorForbiddenCall",
	"TunnelProxyErrorAlreadyRegistered",
	"TunnelProxyErrorNotRegistered",
	"TunnelProxyErrorUnknownSocketAddress",
}

// ParseTunnelProxyError is the value named s (as String gives it).
func ParseTunnelProxyError(s string) (TunnelProxyError, bool) {
	for i, n := range tunnelProxyErrorNames {
		if n == s {
			return TunnelProxyError(i), true
		}
	}
	return TunnelProxyErrorInternalServerError, false
}

// String returns the wire name, e.g. "TunnelProxyErrorInvalidUuid". It does
// not allocate; an out-of-range value gives
// "TunnelProxyErrorInternalServerError".
func (e TunnelProxyError) String() string {
	if int(e) < len(tunnelProxyErrorNames) {
		return tunnelProxyErrorNames[e]
	}
	return tunnelProxyErrorNames[TunnelProxyErrorInternalServerError]
}

var basicTypeNames = []string{"Uuid", "String", "StringList", "Int", "UInt", "Double", "Bool", "Variant", "Object"}

// notificationSpec describes one notification for introspection.
type notificationSpec struct {
	name, description string
	params            map[string]string
}

var notifications = []notificationSpec{
	{"RemoteProxy.TunnelEstablished",
		"Emitted once the tunnel to the other client is up. This is the server's last message; everything after it is the other client's data.",
		map[string]string{"name": "String", "uuid": "String"}},
	{"TunnelProxy.ClientConnected",
		"Emitted to a registered server whenever a client connects to it.",
		map[string]string{"clientName": "String", "clientUuid": "Uuid", "clientPeerAddress": "String", "socketAddress": "UInt"}},
	{"TunnelProxy.ClientDisconnected",
		"Emitted to a registered server whenever one of its clients disconnects.",
		map[string]string{"socketAddress": "UInt"}},
	{"RemoteProxy.Closing",
		"Emitted to a raw-TCP client waiting for its tunnel when the server closes its connection instead (meetpoint): reason is why (alone_timeout, tunnel_exists, duplicate_uuid, fleet, shutdown, data_before_tunnel), message says it in words. A WebSocket client reads the same message in the close frame.",
		map[string]string{"reason": "String", "message": "String"}},
	{"Events.Event",
		"Emitted to a subscribed connection for each event published on one of its channels (meetpoint).",
		map[string]string{"channel": "String", "data": "Variant"}},
}

// introspection is built once, on first use.
var introspection = sync.OnceValue(func() []byte {
	ms := make(map[string]any, len(methods))
	for _, m := range methods {
		if m.hidden {
			continue
		}
		params := make(map[string]string, len(m.params))
		for _, p := range m.params {
			params[p.templateKey()] = p.typ.String()
		}
		returns := make(map[string]string, len(m.returns))
		for _, r := range m.returns {
			returns[r.key] = r.typ
		}
		ms[m.full] = map[string]any{"description": m.description, "params": params, "returns": returns}
	}
	ns := make(map[string]any, len(notifications))
	for _, n := range notifications {
		ns[n.name] = map[string]any{"description": n.description, "params": n.params}
	}
	types := map[string][]string{
		"BasicType":           basicTypeNames,
		"AuthenticationError": authenticationErrorNames[:],
		"TunnelProxyError":    tunnelProxyErrorNames[:],
	}
	// encoding/json sorts map keys, as Qt's QJsonDocument does.
	b, err := json.Marshal(map[string]any{"methods": ms, "notifications": ns, "types": types})
	if err != nil {
		panic("handshake: introspection: " + err.Error())
	}
	return b
})

// Introspect returns the params object of the RemoteProxy.Introspect reply:
// {"methods":{...},"notifications":{...},"types":{...}}, compact, keys
// sorted like nymea's, no trailing newline. Send it with
// AppendSuccessRaw(dst, id, Introspect()).
//
// It is computed once; later calls return the same slice without
// allocating. The caller must not modify it.
func Introspect() []byte { return introspection() }
