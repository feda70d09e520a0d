package relay

import (
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// httpHead gathers an HTTP request head (at most MaxHeader bytes), then
// upgrades it to WebSocket or answers a plain HTTP request. Bytes after
// the head (frames a client sent right behind its upgrade request) go to
// the WebSocket stage. Called with mu held.
func (c *conn) httpHead(p []byte) {
	limit := c.s.cfg.MaxHeader
	take := min(len(p), max(0, limit+1-len(c.in)))
	c.in = append(c.in, p[:take]...)
	p = p[take:]
	end := handshake.HeadEnd(c.in)
	if (end == 0 && len(c.in) > limit) || end > limit {
		c.s.log.Debug("HTTP head too large", "peer", c.peer.String(), "bytes", max(end, len(c.in)))
		c.sendRaw([]byte("HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
		c.linger = true
		c.close(reason.PreAuthLimit)
		return
	}
	if end == 0 {
		return
	}
	head, rest := c.in[:end], c.in[end:]
	if !handshake.IsUpgradeRequest(head) || c.s.subprotocolOf(head) {
		c.streaming = len(rest) > 0 || len(p) > 0 // a body follows the head
		c.toHandoff(handoffHTTP, p)
		return
	}
	out, ok, err := handshake.Upgrade(nil, head)
	c.sendRaw(out)
	if !ok {
		c.s.log.Debug("websocket upgrade refused", "peer", c.peer.String(), "err", err)
		c.linger = true
		c.close(reason.HTTP)
		return
	}
	c.ws = &handshake.Stream{}
	c.ws.Dec.MaxFrame = int64(c.s.cfg.MaxPreAuth)
	c.tk.setKind(kindWS)
	c.st.Store(uint32(stRPC))
	c.in = nil
	c.consumeWS(rest)
	if len(p) > 0 {
		c.consume(p)
	}
}

// sendRaw queues bytes for the client as they are (an HTTP response).
// Called with mu held.
func (c *conn) sendRaw(b []byte) {
	if !c.out.Push(b) {
		c.close(reason.SlowReader)
	}
}

// httpLateMax bounds what a connection bound for net/http may send before
// its hand-off completes — a request body streams in right behind its
// head, as fast as the network goes: room for one whole request of the
// largest allowed body (HTTPMaxBody), at least 256 KiB. A TLS connection
// stops being read once claimed (its rest stays in the socket); netpoll
// reads eagerly until the socket is detached, so plaintext needs the room.
func (s *Server) httpLateMax() int {
	return max(256<<10, s.cfg.MaxHeader+int(min(s.cfg.HTTPMaxBody, 1<<30))+64<<10)
}

// toHandoff claims the connection for a hand-off listener (net/http, the
// STUN listener): everything read so far and p go with it. Called with mu
// held.
func (c *conn) toHandoff(kind int, p []byte) {
	if c.s.handoffs[kind] == nil {
		c.close(reason.Sniff)
		return
	}
	c.tk.setKind(kindHTTP)
	c.late = append(c.in, p...)
	c.in = nil
	c.lateMax = c.s.httpLateMax()
	c.claimFor(httpHandoff{kind})
	c.skipNL = false
}

// subprotocolOf reports whether an upgrade request names a subprotocol a
// subsystem registered (it then goes to net/http, not to the relay).
func (s *Server) subprotocolOf(head []byte) bool {
	for p := range s.subprotocols {
		if handshake.SubprotocolListed(head, p) {
			return true
		}
	}
	return false
}
