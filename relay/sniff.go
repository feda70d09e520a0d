package relay

import (
	"fmt"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// sniffMax is the most first bytes the sniffer needs to decide ("OPTIONS "
// and "CONNECT " are the longest prefixes it matches).
const sniffMax = 8

// tlsPrefixMax bounds the bytes sniffed before a TLS handshake starts: one
// TLS record (the ClientHello) with its header.
const tlsPrefixMax = 16<<10 + 5

// sniff decides from the first bytes which protocol the client speaks: '{'
// is raw-TCP JSON-RPC, an HTTP request line is WebSocket (or plain HTTP),
// 0x16 0x03 is TLS. Whitespace before a '{' is dropped, never buffered, and
// at most sniffMax bytes are kept while undecided. A JSON client's first
// read, decided on its own as it almost always is, is parsed where it
// lies, not copied first. Called with mu held.
func (c *conn) sniff(p []byte) {
	if len(c.in) == 0 {
		p = trimSpace(p)
		if len(p) == 0 {
			return
		}
	}
	var kind handshake.Kind
	if len(c.in) == 0 && handshake.Sniff(p[:min(len(p), sniffMax)]) == handshake.KindJSON {
		kind = handshake.KindJSON // and all of it is in p
	} else {
		n := min(len(p), sniffMax-len(c.in))
		c.in = append(c.in, p[:n]...)
		p = p[n:]
		kind = handshake.Sniff(c.in)
	}
	_, inTLS := c.tr.(*tlsTransport)
	switch {
	case kind == handshake.KindNeedMore:
		return // len(c.in) < sniffMax, so p is empty
	case kind == handshake.KindTLS && !inTLS && c.s.cfg.TLS != nil:
		c.toTLS(p)
		return
	case kind == handshake.KindTLS:
		c.s.log.Debug("refused TLS client: TLS not configured", "peer", c.peer.String())
		c.close(reason.TLS)
		return
	case kind != handshake.KindUnknown && !inTLS && c.s.cfg.TLSOnly:
		c.s.log.Debug("refused plaintext client: TLS only", "peer", c.peer.String())
		c.refusePlaintext(kind)
		return
	}
	switch kind {
	case handshake.KindJSON:
		c.tk.setKind(kindTCP)
		c.to(stRPC)
		c.consumeJSON(p) // c.in, the sniffed bytes (if any), is the message's start
	case handshake.KindHTTP:
		c.to(stHTTP)
		c.httpHead(p)
	case handshake.KindSTUN:
		c.toHandoff(handoffSTUN, p)
	default:
		c.s.log.Debug("refused client: unknown protocol", "peer", c.peer.String())
		c.close(reason.Sniff)
	}
}

// tlsOnlyText is what a plaintext client of a TLS-only relay is told.
const tlsOnlyText = "this relay accepts TLS only: connect with tls:// (raw TCP), wss:// or https://"

// tlsOnlyHTTP answers a plaintext HTTP request (a WebSocket upgrade or
// not) on a TLS-only relay.
var tlsOnlyHTTP = fmt.Sprintf("HTTP/1.1 426 Upgrade Required\r\nUpgrade: TLS/1.2, HTTP/1.1\r\nConnection: close\r\n"+
	"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s\n", len(tlsOnlyText)+1, tlsOnlyText)

// refusePlaintext tells a plaintext client of a TLS-only relay why it is
// closed, in the protocol it speaks: a JSON-RPC error (raw TCP), a 426
// with a line of text (HTTP: WebSocket clients and browsers); then a
// lingering close (reason TLS). Called with mu held.
func (c *conn) refusePlaintext(kind handshake.Kind) {
	switch kind {
	case handshake.KindJSON:
		c.sendRaw(handshake.AppendError(nil, -1, tlsOnlyText))
	case handshake.KindHTTP:
		c.sendRaw([]byte(tlsOnlyHTTP))
	}
	c.linger = true
	c.close(reason.TLS)
}

// toTLS claims the connection for a TLS handshake: the socket leaves its
// loop and the sniffed bytes (the start of the ClientHello) go with it.
// Called with mu held.
func (c *conn) toTLS(p []byte) {
	if len(c.in)+len(p) > tlsPrefixMax {
		c.close(reason.TLS)
		return
	}
	c.claim().late = append(c.in, p...)
	c.in = nil
	c.to(stClaimed)
	c.cl.target = tlsHandoff{}
	c.wantRelease()
}

// consumeJSON feeds raw-TCP bytes to the JSON-RPC stage: complete objects
// are handled; a partial one is kept, at most MaxPreAuth bytes of it. A
// large p is never copied whole: complete objects are parsed where they
// are. Called with mu held.
func (c *conn) consumeJSON(p []byte) {
	for {
		if len(c.in) == 0 {
			p = trimSpace(p)
		}
		if len(p) == 0 && len(c.in) == 0 {
			return
		}
		switch state(c.st.Load()) {
		case stRPC:
		case stClaimed:
			c.stashLate(c.in)
			c.stashLate(p)
			c.in = nil
			return
		case stAuthing, stPlacing, stWaiting:
			c.dataBeforeTunnel()
			return
		case stSubscribed:
			c.subscriberSpoke()
			return
		default:
			return
		}
		buf, inBuf := p, len(c.in) > 0
		if inBuf {
			take := min(len(p), c.s.cfg.MaxPreAuth+1-len(c.in))
			c.in = append(c.in, p[:take]...)
			p, buf = p[take:], c.in
		} else {
			p = nil
		}
		obj, n, err := handshake.NextObject(buf)
		if err != nil {
			// NextObject's errors already read "Failed to parse JSON data: ...".
			c.rpcFail(-1, err.Error())
			return
		}
		if obj == nil { // incomplete, and p is used up (or buf is over the limit)
			if len(buf) > c.s.cfg.MaxPreAuth {
				c.s.log.Debug("pre-auth buffer limit", "peer", c.peer.String(), "bytes", len(buf))
				c.close(reason.PreAuthLimit)
				return
			}
			if !inBuf {
				c.in = append(c.in[:0], buf...)
			}
			return
		}
		if len(obj) > c.s.cfg.MaxPreAuth { // whole in one read or not: the limit does not depend on how it came
			c.s.log.Debug("pre-auth message limit", "peer", c.peer.String(), "bytes", len(obj))
			c.close(reason.PreAuthLimit)
			return
		}
		c.handle(obj)
		rest := buf[n:]
		if !c.skipsNL() {
			rest = trimSpace(rest) // whitespace between messages is no data
		}
		if inBuf {
			c.in = c.in[:copy(c.in, rest)]
			if len(c.in) == 0 {
				c.in = nil // an idle connection (a subscriber, a waiting client) keeps no buffer
			}
		} else {
			p = rest
		}
		if c.skipsNL() && state(c.st.Load()) == stClaimed {
			// The request's newline is dropped if it is the next byte;
			// if no byte follows yet, it may come in a later read
			// (consume), or after the hand-over (Handover.SkipNL).
			if len(c.in) > 0 {
				c.cl.skipNL = false
				if c.in[0] == '\n' {
					c.in = c.in[:copy(c.in, c.in[1:])]
				}
			} else if len(p) > 0 {
				p = dropNL(c, p)
			}
			c.stashLate(c.in)
			c.stashLate(p)
			c.in = nil
			return
		}
	}
}

// dropNL returns p without its first byte if that is the newline ending
// the request that claimed c, still awaited (skipsNL); a first byte ends
// the wait. Called with mu held.
func dropNL(c *conn, p []byte) []byte {
	if !c.skipsNL() || len(p) == 0 {
		return p
	}
	c.cl.skipNL = false
	if p[0] == '\n' {
		return p[1:]
	}
	return p
}

// lateLimit bounds what a claimed connection may stash for its target.
func (c *conn) lateLimit() int {
	if c.cl != nil && c.cl.lateMax > 0 {
		return c.cl.lateMax
	}
	return c.s.cfg.MaxPreAuth
}

func trimSpace(p []byte) []byte {
	for len(p) > 0 && (p[0] == ' ' || p[0] == '\n' || p[0] == '\r' || p[0] == '\t') {
		p = p[1:]
	}
	return p
}

// stashLate keeps input that arrived after the connection was claimed, for
// its target: a TunnelProxy end takes it as its first data, a legacy
// tunnel refuses it (data before TunnelEstablished). Over MaxPreAuth the
// set-up fails. Called with mu held.
func (c *conn) stashLate(p []byte) {
	if len(p) == 0 {
		return
	}
	cl := c.claim()
	if max := c.lateLimit(); len(cl.late)+len(p) > max {
		c.setFailed(reason.PreAuthLimit)
		return
	}
	cl.late = append(cl.late, p...)
}

// consumeWS decodes WebSocket frames before the tunnel with the
// connection's wsStream: control frames are answered at any stage (a ping
// never breaks a pairing), a close frame is answered and ends the
// connection, data goes to handshake.EventData. Called with mu held.
func (c *conn) consumeWS(p []byte) {
	for len(p) > 0 && state(c.st.Load()) < stClosing {
		ev, frag, n, err := c.ws.Step(p, &c.out)
		if err == handshake.ErrQueueFull {
			c.close(reason.SlowReader)
			return
		}
		if err != nil {
			c.wsFail(err)
			return
		}
		p = p[n:]
		switch ev {
		case handshake.EventMore:
			return
		case handshake.EventClose:
			c.linger = true
			c.close(reason.PeerClosed)
			return
		case handshake.EventData:
			c.wsData(frag)
		}
	}
}

// wsData handles one data fragment before the tunnel: TEXT messages are
// JSON-RPC; BINARY closes with 1011 as nymea does; after Authenticate any
// data is refused; after the claim it is kept for the target.
func (c *conn) wsData(f handshake.Fragment) {
	switch state(c.st.Load()) {
	case stClaimed:
		c.claim().lateMsg = true
		if f.Kind == handshake.FragPayload {
			c.stashLate(f.Data)
		}
		return
	case stRPC:
	case stSubscribed:
		c.subscriberSpoke()
		return
	default:
		c.dataBeforeTunnel()
		return
	}
	if f.Kind == handshake.FragHeader && f.Header.OpCode == ws.OpBinary {
		c.s.log.Debug("binary message before the tunnel", "peer", c.peer.String())
		c.fail(reason.WebSocket, "Binary message not expected.")
		return
	}
	if f.Kind == handshake.FragPayload {
		if len(c.msg)+len(f.Data) > c.s.cfg.MaxPreAuth {
			c.s.log.Debug("pre-auth message limit", "peer", c.peer.String(), "bytes", len(c.msg)+len(f.Data))
			c.fail(reason.PreAuthLimit, "Message too big")
			return
		}
		if f.MessageEnd && len(c.msg) == 0 { // the whole message in one read, as usual: parsed where it lies
			c.handle(f.Data)
			return
		}
		c.msg = append(c.msg, f.Data...)
	}
	if f.MessageEnd {
		msg := c.msg
		c.msg = c.msg[:0]
		c.handle(msg)
		if len(c.msg) == 0 && cap(c.msg) > 1<<10 {
			c.msg = nil // don't keep a large message buffer on a waiting client
		}
	}
}

// wsFail closes with the code a decoder error carries.
func (c *conn) wsFail(err error) {
	c.s.log.Debug("websocket protocol error", "peer", c.peer.String(), "err", err)
	code, text := handshake.CloseCodeOf(err)
	c.failWith(reason.WebSocket, code, text)
}

// dataBeforeTunnel closes a client that sent data after Authenticate and
// before TunnelEstablished.
func (c *conn) dataBeforeTunnel() {
	c.s.log.Debug("data before tunnel", "peer", c.peer.String())
	c.fail(reason.DataBeforeTunnel, "")
}
