package relay

import (
	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/relay/reason"
)

// closeCode is the WebSocket close code of a connection the relay ends
// for r before its tunnel (or whose tunnel set-up it abandons): the one
// place that maps reasons to codes. Refusals are policy violations.
func closeCode(r reason.Reason) ws.StatusCode {
	switch r {
	case reason.Shutdown, reason.PartnerClosed, reason.Moved:
		return ws.StatusGoingAway
	case reason.PreAuthLimit:
		return ws.StatusMessageTooBig
	case reason.WebSocket, reason.FarNodeLost:
		return ws.StatusInternalServerError
	}
	return ws.StatusPolicyViolation
}

// closeText is what a client ended for r is told (the close frame's text
// on WebSocket, RemoteProxy.Closing's message on raw TCP) where the caller
// has nothing more precise to say.
func closeText(r reason.Reason) string {
	switch r {
	case reason.Shutdown:
		return "Server shutting down"
	case reason.PartnerClosed:
		return "Partner left"
	case reason.PreAuthLimit:
		return "Input over budget"
	case reason.DataBeforeTunnel:
		return "Data before tunnel established"
	case reason.InactiveTimeout:
		return "Inactive timeout"
	case reason.AuthFailed:
		return "Authentication failed"
	case reason.AuthTimeout:
		return "Authentication timed out"
	case reason.AccessDenied:
		return "Access denied"
	case reason.RPC, reason.RPCTimeout:
		return "JSON-RPC error"
	case reason.TunnelExists:
		return "Tunnel already exists"
	case reason.DuplicateUUID:
		return "Duplicated client UUID."
	case reason.Fleet, reason.Mesh:
		return "Relay fleet unavailable"
	case reason.Moved:
		return "Reconnect: this token now pairs on a relay node this one cannot reach"
	}
	return ""
}
