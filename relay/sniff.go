package relay

import (
	"errors"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
)

// sniff decides from the first bytes which protocol the client speaks: '{'
// is raw-TCP JSON-RPC, an HTTP request line is WebSocket (or plain HTTP),
// 0x16 0x03 is TLS. Called with mu held.
func (c *conn) sniff(p []byte) {
	c.in = append(c.in, p...)
	if state(c.st.Load()) == stSniff {
		kind := handshake.Sniff(c.in)
		_, inTLS := c.tr.(*tlsTransport)
		switch {
		case kind == handshake.KindNeedMore:
			return
		case kind == handshake.KindTLS && !inTLS && c.s.tls != nil:
			c.toTLS = true
			c.closeNow(ReasonTLS) // released hands the socket to startTLS
			return
		case kind == handshake.KindTLS:
			c.s.log.Debug("refused TLS client: TLS not configured", "peer", c.peer.String())
			c.closeNow(ReasonTLS)
			return
		case kind != handshake.KindUnknown && !inTLS && c.s.cfg.TLSOnly:
			c.s.log.Debug("refused plaintext client: TLS only", "peer", c.peer.String())
			c.closeNow(ReasonTLS)
			return
		}
		switch kind {
		case handshake.KindJSON:
			c.counted = true
			c.s.stats.connsTCP.Inc()
			c.st.Store(uint32(stRPC))
			buf := c.in
			c.in = nil
			c.consumeJSON(buf)
			return
		case handshake.KindHTTP:
			c.st.Store(uint32(stHTTP))
		default:
			c.s.log.Debug("refused client: unknown protocol", "peer", c.peer.String())
			c.closeNow(ReasonSniff)
			return
		}
	}
	c.httpHead()
}

// consumeJSON feeds raw-TCP bytes to the JSON-RPC stage: complete objects are
// handled, a partial one is kept (at most MaxPreAuth bytes). Called with mu
// held.
func (c *conn) consumeJSON(p []byte) {
	buf := p
	if len(c.in) > 0 {
		c.in = append(c.in, p...)
		buf = c.in
	}
	for {
		buf = trimSpace(buf)
		if len(buf) == 0 {
			break
		}
		switch state(c.st.Load()) {
		case stRPC:
		case stClosed:
			return
		case stClaimed:
			c.stash(buf)
			c.in = c.in[:0]
			return
		default:
			c.dataBeforeTunnel()
			return
		}
		obj, n, err := handshake.NextObject(buf)
		if err != nil {
			// NextObject's errors already read "Failed to parse JSON data: ...".
			c.rpcFail(-1, err.Error())
			return
		}
		if obj == nil {
			break
		}
		c.handle(obj)
		buf = buf[n:]
	}
	if len(buf) > c.s.cfg.MaxPreAuth {
		c.s.log.Debug("pre-auth buffer limit", "peer", c.peer.String(), "bytes", len(buf))
		c.closeNow(ReasonPreAuthLimit)
		return
	}
	c.in = append(c.in[:0], buf...) // buf may alias c.in: append copies forward safely
}

func trimSpace(p []byte) []byte {
	for len(p) > 0 && (p[0] == ' ' || p[0] == '\n' || p[0] == '\r' || p[0] == '\t') {
		p = p[1:]
	}
	return p
}

// consumeWS decodes WebSocket frames before the tunnel: TEXT messages are
// JSON-RPC, pings are answered, a close is answered and ends the connection,
// BINARY closes with 1011 as nymea does. Called with mu held.
func (c *conn) consumeWS(p []byte) {
	for len(p) > 0 && state(c.st.Load()) != stClosed {
		f, n, err := c.dec.Decode(p)
		if err != nil {
			c.wsFail(err)
			return
		}
		p = p[n:]
		switch f.Kind {
		case handshake.FragNone:
			if n == 0 {
				return
			}
			c.midFrame = true // part of a header is buffered in dec
			continue
		case handshake.FragHeader:
			c.midFrame = !f.FrameEnd
			op := f.Header.OpCode
			switch {
			case op.IsControl():
				c.ctrlOp, c.ctrl = op, c.ctrl[:0]
			case op == ws.OpBinary:
				c.s.log.Debug("binary message before the tunnel", "peer", c.peer.String())
				c.fail(ReasonWebSocket, ws.StatusInternalServerError, "Binary message not expected.")
				return
			case state(c.st.Load()) != stRPC:
				c.dataBeforeTunnel()
				return
			}
		case handshake.FragPayload:
			c.midFrame = !f.FrameEnd
			if f.Header.OpCode.IsControl() {
				c.ctrl = append(c.ctrl, f.Data...)
			} else {
				if len(c.msg)+len(f.Data) > c.s.cfg.MaxPreAuth {
					c.s.log.Debug("pre-auth message limit", "peer", c.peer.String(), "bytes", len(c.msg)+len(f.Data))
					c.fail(ReasonPreAuthLimit, ws.StatusMessageTooBig, "Message too big")
					return
				}
				c.msg = append(c.msg, f.Data...)
			}
		}
		if !f.FrameEnd {
			continue
		}
		if f.Header.OpCode.IsControl() {
			c.control()
		} else if f.MessageEnd {
			msg := c.msg
			c.msg = c.msg[:0]
			c.handle(msg)
			if state(c.st.Load()) == stClaimed {
				c.stash(p) // the rest is for the TunnelProxy endpoint
				return
			}
		}
	}
}

// control answers a complete control frame received before the tunnel.
func (c *conn) control() {
	switch c.ctrlOp {
	case ws.OpPing:
		c.write(handshake.AppendFrame(c.out[:0], ws.OpPong, true, c.ctrl))
	case ws.OpClose:
		if err := handshake.CheckClosePayload(c.ctrl); err != nil {
			c.wsFail(err)
			return
		}
		code := ws.StatusNormalClosure
		if len(c.ctrl) >= 2 {
			code = ws.StatusCode(uint16(c.ctrl[0])<<8 | uint16(c.ctrl[1]))
		}
		c.fail(ReasonPeerClosed, code, "")
	}
}

// wsFail closes with the code a decoder error carries.
func (c *conn) wsFail(err error) {
	c.s.log.Debug("websocket protocol error", "peer", c.peer.String(), "err", err)
	code, text := closeCodeOf(err)
	c.fail(ReasonWebSocket, code, text)
}

// closeCodeOf is the WebSocket close code and reason for a decoder error:
// the code a *handshake.CloseError carries, else 1002.
func closeCodeOf(err error) (ws.StatusCode, string) {
	var ce *handshake.CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Reason
	}
	return ws.StatusProtocolError, "protocol error"
}

// dataBeforeTunnel closes a client that sent data after Authenticate and
// before TunnelEstablished.
func (c *conn) dataBeforeTunnel() {
	c.s.log.Debug("data before tunnel", "peer", c.peer.String())
	c.fail(ReasonDataBeforeTunnel, ws.StatusPolicyViolation, "Data before tunnel established")
}
