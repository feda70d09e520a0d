package handshake

import "encoding/json"

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
	by                string // the method after which it is sent: listed with it
}

var notifications = []notificationSpec{
	{"RemoteProxy.TunnelEstablished",
		"Emitted once the tunnel is up: the server's last message; all after it is the other client's data.",
		map[string]string{"name": "String", "uuid": "String"}, "Authentication.Authenticate"},
	{"TunnelProxy.ClientConnected",
		"Emitted to a registered server whenever a client connects to it.",
		map[string]string{"clientName": "String", "clientUuid": "Uuid", "clientPeerAddress": "String", "socketAddress": "UInt"},
		"TunnelProxy.RegisterServer"},
	{"TunnelProxy.ClientDisconnected",
		"Emitted to a registered server whenever one of its clients disconnects.",
		map[string]string{"socketAddress": "UInt"}, "TunnelProxy.RegisterServer"},
	{"RemoteProxy.Closing",
		"Emitted to a raw-TCP client before it is closed without a tunnel (meetpoint): reason, e.g. alone_timeout, and why in words.",
		map[string]string{"reason": "String", "message": "String"}, "Authentication.Authenticate"},
	{"Events.Event",
		"Emitted to a subscribed connection for each event published on one of its channels (meetpoint).",
		map[string]string{"channel": "String", "data": "Variant"}, "Events.Subscribe"},
}

// MaxIntrospect bounds the whole RemoteProxy.Introspect reply (envelope
// and newline included) in every configuration: nymea's Qt clients read
// the reply in one piece and Qt delivers a TLS socket's data in pieces of
// 4,096 bytes (a 4,249-byte reply failed their getIntrospect).
const MaxIntrospect = 4000

// IntrospectFor returns the params object of the RemoteProxy.Introspect
// reply of a relay that serves the methods served says it does:
// {"methods":{...},"notifications":{...},"types":{...}}, compact, keys
// sorted like nymea's, no trailing newline. Only methods of the method
// table that served accepts are listed (never those between relays), and
// a notification only with the method it follows. Send it with
// AppendSuccessRaw(dst, id, IntrospectFor(served)); the reply stays under
// MaxIntrospect bytes whatever served accepts.
func IntrospectFor(served func(method string) bool) []byte {
	ms := make(map[string]any, len(methods))
	for _, m := range methods {
		if m.hidden || !served(m.full) {
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
		if ms[n.by] != nil {
			ns[n.name] = map[string]any{"description": n.description, "params": n.params}
		}
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
}
