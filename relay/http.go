package relay

import (
	"strconv"

	"github.com/meetpoint/meetpoint/handshake"
)

const notRelayBody = "meetpoint relay: connect with a WebSocket or a raw TCP JSON-RPC client\n"

// httpResponse is the whole HTTP/1.1 response (Connection: close) to a plain
// HTTP request that arrived on the relay port.
func (s *Server) httpResponse(head []byte) []byte {
	_, _, _ = handshake.RequestLine(head)
	return []byte("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: " +
		strconv.Itoa(len(notRelayBody)) + "\r\n\r\n" + notRelayBody)
}
