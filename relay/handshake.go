package relay

import (
	"bytes"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"

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
		c.toHandoff(handoffHTTP, p)
		return
	}
	if o, _ := handshake.HeaderValue(head, "Origin"); !c.s.originAllowed(string(o)) {
		c.s.log.Debug("websocket upgrade refused: origin not allowed", "peer", c.peer.String())
		c.sendRaw([]byte("HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 30\r\n\r\nthis Origin may not connect.\r\n"))
		c.linger = true
		c.close(reason.HTTP)
		return
	}
	out, ok, err := handshake.Upgrade(nil, head)
	if !ok {
		c.sendRaw(out)
		c.s.log.Debug("websocket upgrade refused", "peer", c.peer.String(), "err", err)
		c.linger = true
		c.close(reason.HTTP)
		return
	}
	c.tk.setKind(kindWS)
	if q, ok := urlToken(head); ok {
		// A token in the URL (browsers cannot set headers on a
		// WebSocket): authenticate before the upgrade; the 101 goes out
		// only once the token is good, else a 401 and no WebSocket.
		c.in = nil
		c.upgrade = out
		for _, k := range []string{"token", "nonce", "uuid"} {
			if !utf8.ValidString(q.Get(k)) {
				// JSON-RPC cannot carry such a key (its text is UTF-8), so
				// neither can a fleet's mesh: refused as the parser refuses
				// it, not paired on one node and lost across two.
				c.refuseUpgrade("400 Bad Request", reason.HTTP, "the URL's "+k+" is not UTF-8 once percent-decoded.")
				return
			}
		}
		if ch := q.Get("channels"); ch != "" && c.s.urlSubscribe != nil {
			c.calling++ // a subsystem's code (callout)
			c.s.urlSubscribe(Conn{c}, q.Get("token"), strings.Split(ch, ","))
			c.calling--
			return
		}
		c.authenticateParams(-1, q.Get("uuid"), q.Get("name"), q.Get("token"), q.Get("nonce"))
		return
	}
	c.startWebSocket(out)
	c.to(stRPC)
	c.in = nil
	c.consumeWS(rest)
	if len(p) > 0 {
		c.consume(p)
	}
}

// startWebSocket sends the upgrade's 101 and makes c a WebSocket
// connection from then on. Called with mu held.
func (c *conn) startWebSocket(upgrade []byte) {
	c.sendRaw(upgrade)
	c.ws = &handshake.Stream{}
	c.ws.Dec.MaxFrame = int64(c.s.cfg.MaxPreAuth)
}

// urlToken reads the token parameters of a WebSocket upgrade's URL:
// token (or ws_token), nonce, name, uuid. ok is false without a token.
// Pairs that do not parse are skipped. A token, nonce or uuid that is not
// UTF-8 once decoded (%FF) is refused by the caller (400); a name is
// display text, carried with U+FFFD for such bytes.
func urlToken(head []byte) (url.Values, bool) {
	_, path, ok := handshake.RequestLine(head)
	if !ok {
		return nil, false
	}
	_, query, found := bytes.Cut(path, []byte("?"))
	if !found {
		return nil, false
	}
	// A pair that does not parse (a bad escape, a semicolon) is skipped,
	// as net/http skips it: the token beside it still counts, else a
	// WebSocket nobody authenticated would be upgraded for a client that
	// waits for TunnelEstablished.
	q, _ := url.ParseQuery(string(query))
	if q.Get("token") == "" && q.Get("ws_token") != "" {
		q.Set("token", q.Get("ws_token"))
	}
	return q, q.Get("token") != ""
}

// originAllowed applies AllowedOrigins to a WebSocket upgrade whose
// Origin header is o: a request without one (not a browser) always passes.
func (s *Server) originAllowed(o string) bool {
	if len(s.cfg.AllowedOrigins) == 0 || o == "" {
		return true
	}
	for _, a := range s.cfg.AllowedOrigins {
		if a == "*" || strings.EqualFold(a, o) {
			return true
		}
	}
	return false
}

// acceptUpgrade sends a pending URL-token upgrade's 101 (the token was
// good and nothing refused the connection): the WebSocket exists from
// now on. Nothing without one pending. Called with mu held.
func (c *conn) acceptUpgrade() {
	if c.upgrade != nil {
		c.startWebSocket(c.upgrade)
		c.upgrade = nil
	}
}

// refuseUpgrade answers a pending URL-token upgrade in HTTP, with text
// as the body, and closes for r: no WebSocket ever existed. Called with mu
// held.
func (c *conn) refuseUpgrade(status string, r reason.Reason, text string) {
	c.upgrade = nil
	c.sendRaw(fmt.Appendf(nil, "HTTP/1.1 %s\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s\n", status, len(text)+1, text))
	c.linger = true
	c.close(r)
}

// upgradeStatus is the HTTP status of a pending URL-token upgrade refused
// for r after its token was good (an access rule, a bad parameter,
// shutdown): 403 for access_denied, 503 for shutdown, 400 otherwise.
func upgradeStatus(r reason.Reason) string {
	switch r {
	case reason.AccessDenied:
		return "403 Forbidden"
	case reason.Shutdown:
		return "503 Service Unavailable"
	}
	return "400 Bad Request"
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
// largest allowed body (HTTPMaxBody), at least 256 KiB. In practice a
// connection stops being read once claimed (its rest stays in the socket,
// readFrom), so what it stashes is what the read that ended the head
// brought along (at most a loop's 16 KiB scratch); the bound is what a
// hand-off may be given at most.
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
	cl := c.claim()
	cl.late = append(c.in, p...)
	c.in = nil
	cl.lateMax = c.s.httpLateMax()
	c.claimFor(httpHandoff{kind})
	cl.skipNL = false
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
