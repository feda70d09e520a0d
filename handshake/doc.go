// Package handshake implements the byte-level stages of a meetpoint
// connection before a tunnel exists: protocol sniffing, the WebSocket upgrade
// and framing, and JSON-RPC.
package handshake
