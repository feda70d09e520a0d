package relay

import (
	"github.com/meetpoint/meetpoint/handshake"
)

// httpHead waits for a complete HTTP request head (at most MaxHeader bytes),
// then upgrades it to WebSocket or answers a plain HTTP request. Called with
// mu held.
func (c *conn) httpHead() {
	end := handshake.HeadEnd(c.in)
	if (end == 0 && len(c.in) > c.s.cfg.MaxHeader) || end > c.s.cfg.MaxHeader {
		c.s.log.Debug("HTTP head too large", "peer", c.peer.String(), "bytes", max(end, len(c.in)))
		c.write([]byte("HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
		c.closeNow(ReasonHTTP)
		return
	}
	if end == 0 {
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

// plainHTTP answers a request that is not a WebSocket upgrade (see
// httpResponse) and closes.
func (c *conn) plainHTTP(head []byte) {
	c.write(c.s.httpResponse(head))
	c.closeNow(ReasonHTTP)
}
