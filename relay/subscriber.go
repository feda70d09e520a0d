package relay

import (
	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// Subscriber is a connection turned into an event subscriber: it stays
// where it is (idle on its loop, no goroutine, a pre-tunnel connection's
// cost) and is sent notifications from any goroutine. WebSocket pings are
// still answered; anything else it sends closes it.
type Subscriber struct{ c *conn }

// Subscribe turns the connection into a subscriber once its reply is
// queued: it leaves the pairing stages and their timeouts, and onEnd is
// called once, from any goroutine, when the connection ends for whatever
// reason. Call it from a MethodHandler.
func (c Conn) Subscribe(onEnd func()) *Subscriber {
	cc := c.c
	cc.acceptUpgrade()
	cc.stopTimer()
	cc.timer = nil // idle for hours: let it go (no timeout applies to a subscriber)
	cc.onEnd = onEnd
	cc.to(stSubscribed)
	return &Subscriber{c: cc}
}

// Notify queues the notification name(params) for the subscriber and
// writes what it can at once; the rest waits for the socket to take it.
// It reports false if the subscriber has ended — or ends now because it
// does not read what it is sent (its queue, handshake.QueueMax, is full:
// closed as slow_reader, counted; what waited in the queue is lost).
// Cost: one notification built; a write when the socket takes it.
func (s *Subscriber) Notify(name string, params ...handshake.Field) bool {
	c := s.c
	c.mu.Lock()
	if state(c.st.Load()) != stSubscribed {
		c.mu.Unlock()
		return false
	}
	id := c.notifID
	c.notifID++
	msg := handshake.AppendNotification(nil, id, name, params...)
	if len(msg)+ws.MaxHeaderSize <= handshake.QueueMax {
		c.send(msg)
	} else {
		c.sendWhole(msg)
	}
	c.flush()
	ok := state(c.st.Load()) == stSubscribed
	c.unlock()
	return ok
}

// sendWhole queues msg, one notification larger than the queue's bound
// (an event of up to the publish API's 64 KiB with its envelope), once
// what was queued before has been written; a subscriber with a backlog
// left is closed as slow_reader. So no more than this one message ever
// waits (the next one finds the queue full until it is written). Called
// with mu held.
func (c *conn) sendWhole(msg []byte) {
	c.flush()
	if state(c.st.Load()) != stSubscribed {
		return
	}
	if c.out.Len() > 0 { // what was queued before is not read yet
		c.out.Take()
		c.backlog.Store(false)
		c.close(reason.SlowReader)
		return
	}
	if c.ws != nil {
		msg = handshake.AppendFrame(nil, ws.OpText, true, msg)
	}
	c.out.B = msg
}

// Close ends the subscription: a WebSocket subscriber gets a close frame
// with text (1001 "going away" for a relay shutting down is the caller's
// choice of code).
func (s *Subscriber) Close(r reason.Reason, code ws.StatusCode, text string) {
	c := s.c
	c.mu.Lock()
	if state(c.st.Load()) == stSubscribed {
		c.failWith(r, code, text)
	}
	c.unlock()
}

// Authenticate checks token with the relay's authenticator on behalf of a
// subsystem's method (id is the request's, for the timeout's error
// reply); then runs with the answer, the connection's lock held, once —
// after a timeout too (AuthTimeout). Failures are counted and banned as
// Authenticate's are; then replies and refuses (Conn.Refuse) or goes on.
// A refused token in the WebSocket URL has had its 401 when then runs
// (Conn.FromURL): the connection is closing, then only learns why.
// The token is spent whole (AuthRequest.Whole). then must not be nil.
func (c Conn) Authenticate(id int, token string, then func(Conn, AuthResult)) {
	cc := c.c
	cc.authenticateParams(id, "", "", token, "")
	cc.au.authThen = then // and so the token is spent whole: no partner's use left
}

// HandleURLSubscribe routes WebSocket upgrades carrying both a token and
// channels in their URL (?token=T&channels=a,b) to h, which subscribes
// them (Conn.Authenticate, then Conn.Subscribe): the 101 goes out once the
// token is good, a 401 otherwise. Call it before Start.
func (s *Server) HandleURLSubscribe(h func(c Conn, token string, channels []string)) {
	s.urlSubscribe = h
}

// FromURL reports whether the connection came with its token in the
// WebSocket URL (it sent no JSON-RPC request, so it expects no reply).
func (c Conn) FromURL() bool { return c.c.view().authID == -1 }

// subscriberSpoke closes a subscriber that sent data: subscribers only
// listen. Called with mu held.
func (c *conn) subscriberSpoke() {
	c.fail(reason.RPC, "Subscribers only listen")
}
