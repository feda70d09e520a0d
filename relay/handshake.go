package relay

import (
	"strconv"

	"github.com/meetpoint/meetpoint/handshake"
)

const notRelayBody = "meetpoint relay: connect with a WebSocket or a raw TCP JSON-RPC client\n"

// httpHead waits for a complete HTTP request head (at most MaxHeader bytes),
// then upgrades it to WebSocket or answers a plain HTTP request. Called with
// mu held.
func (c *conn) httpHead() {
	end := handshake.HeadEnd(c.in)
	if end == 0 {
		if len(c.in) > c.s.cfg.MaxHeader {
			c.write([]byte("HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
			c.closeNow(ReasonHTTP)
		}
		return
	}
	head, rest := c.in[:end], c.in[end:]
	if !handshake.IsUpgradeRequest(head) {
		c.plainHTTP(head)
		return
	}
	out, ok, err := handshake.Upgrade(c.out[:0], head)
	c.write(out)
	if !ok {
		c.s.log.Debug("websocket upgrade refused", "peer", c.peer.String(), "err", err)
		c.closeNow(ReasonHTTP)
		return
	}
	c.ws, c.counted = true, true
	c.s.stats.connsWS.Inc()
	c.st.Store(uint32(stRPC))
	c.in = nil
	if len(rest) > 0 {
		c.consumeWS(rest)
	}
}

// plainHTTP answers a request that is not a WebSocket upgrade and closes.
func (c *conn) plainHTTP(head []byte) {
	c.write([]byte("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: " +
		strconv.Itoa(len(notRelayBody)) + "\r\n\r\n" + notRelayBody))
	c.closeNow(ReasonHTTP)
}

