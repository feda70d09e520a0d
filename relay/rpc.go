package relay

import (
	"context"
	"crypto/x509"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/limits"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// APIVersion is the legacy API version reported by RemoteProxy.Hello.
const APIVersion = "0.2"

// Version is the relay's version, set at build time by cmd/meetpoint.
var Version = "dev"

// handle runs one JSON-RPC request received before the tunnel. Called with
// mu held.
func (c *conn) handle(obj []byte) {
	req, rerr := handshake.ParseRequest(obj)
	if rerr != nil {
		c.rpcFail(rerr.ID, rerr.Text)
		return
	}
	switch req.Method {
	case "RemoteProxy.Hello":
		c.hello = true
		c.send(c.s.HelloReply(req.ID))
	case "RemoteProxy.Introspect":
		c.send(c.s.IntrospectReply(req.ID))
	case "Authentication.Authenticate":
		c.authenticate(req)
	default:
		h := c.s.methods[req.Method]
		if h == nil {
			c.rpcFail(req.ID, "No such method")
			return
		}
		r := req    // a handler may keep it: only this path moves a request to the heap
		c.calling++ // a subsystem's code (callout)
		h(Conn{c}, &r)
		c.calling--
	}
}

// claimFor hands the connection to t: it leaves its transport, and t gets
// it (with the bytes that follow the request) once the transport has let
// go. Called with mu held.
func (c *conn) claimFor(t target) {
	c.to(stClaimed)
	cl := c.claim()
	cl.target = t
	cl.skipNL = c.ws == nil
	c.wantRelease()
}

// clientCert is the verified TLS client certificate, if any.
func (c *conn) clientCert() *x509.Certificate {
	if peers := c.clientCerts(); len(peers) > 0 {
		return peers[0]
	}
	return nil
}

// clientCerts are the certificates the TLS client sent, its own first
// (nil without).
func (c *conn) clientCerts() []*x509.Certificate {
	if tr, ok := c.tr.(*tlsTransport); ok {
		return tr.s.State().PeerCertificates
	}
	return nil
}

// rpcFail answers a JSON-RPC error and closes, as nymea does after any
// JSON-RPC-layer error.
func (c *conn) rpcFail(id int, text string) {
	c.rpcFailFor(reason.RPC, id, text)
}

func (c *conn) rpcFailFor(r reason.Reason, id int, text string) {
	c.s.log.Debug("json-rpc error", "peer", c.peer.String(), "error", text)
	c.send(handshake.AppendError(nil, id, text))
	c.fail(r, "")
}

// authenticate records the request; unlock starts the authenticator once
// mu is released (an authenticator may call back synchronously).
func (c *conn) authenticate(req handshake.Request) {
	c.authenticateParams(req.ID, param(&req, "uuid"), param(&req, "name"), param(&req, "token"), param(&req, "nonce"))
}

// authenticateParams starts authentication (Authenticate's id, or -1 for
// a token in the WebSocket URL). Called with mu held.
func (c *conn) authenticateParams(id int, uuid, name, token, nonce string) {
	a := c.auth()
	a.uuid, a.name = uuid, name
	a.key = PairKey{Token: token, Nonce: nonce}
	a.authID = id
	a.authAt = time.Now()
	c.to(stAuthing)
	a.authStart = true
}

// authRequest is what the authenticator is asked: the recorded
// Authenticate, spent whole when a subsystem asked (Conn.Authenticate).
// Called with mu held.
func (c *conn) authRequest() AuthRequest {
	a := c.view()
	return AuthRequest{Token: a.key.Token, UUID: a.uuid, Name: a.name, Peer: c.peer, Nonce: a.key.Nonce,
		ClientCert: c.clientCert(), Whole: a.authThen != nil,
		SetSubject: func(s string) { c.subject.Store(&s) }}
}

// startAuth asks the authenticator, mu released (it may answer at once).
func (c *conn) startAuth(req AuthRequest) {
	if c.s.lim.Banned(limits.AddrOf(req.Peer)) {
		// Banned since it connected (its guesses on other connections it
		// opened before): not judged, or an address could open thousands
		// of connections first and have a guess judged on each.
		c.mu.Lock()
		c.auth().banned = true
		c.authResult(AuthFailed)
		return
	}
	ctx := &authCtx{deadline: time.Now().Add(c.s.cfg.AuthTimeout)}
	defer c.containAuth(ctx)
	c.s.cfg.Auth.Authenticate(ctx, req, func(r AuthResult) {
		ctx.answered.Store(true)
		ctx.finish()
		c.onAuthResult(r)
	})
}

// containAuth is startAuth's fault barrier (docs/architecture.md, "Fault
// barriers"): a panic in a Stateless authenticator before it answered
// ends c as internal_fault. Raised again: a panic in any other
// authenticator (its locks may be left held), one after the answer (the
// relay's pairing ran under done, with locks of its own), and any under
// the package's tests. Deferred by startAuth, mu released.
func (c *conn) containAuth(ctx *authCtx) {
	v := recover()
	if v == nil {
		return
	}
	if _, ok := c.s.cfg.Auth.(Stateless); !ok || ctx.answered.Load() || c.s.faultsFatal {
		panic(v)
	}
	stack := debug.Stack()
	ctx.finish()
	c.mu.Lock()
	if st := state(c.st.Load()); st == stAuthing {
		c.faulted("internal error: the authenticator panicked on a client's token; the connection is ended (internal_fault), the relay serves on", v, stack)
	} else { // ended meanwhile (its AuthTimeout, a shutdown): the bug is still told
		c.s.logFault("internal error: the authenticator panicked on a client's token after the connection had left authentication; the relay serves on",
			v, stack, "peer", c.peer.String(), "state", st.String())
	}
	c.unlock()
}

// authCtx is the context an Authenticator gets: done at the AuthTimeout
// deadline, canceled once the authenticator has answered.
//
// Cost: one small allocation. The channel and timer of a real context
// (context.WithDeadline) are made only when the authenticator first asks
// for Done or Value, which one that answers at once (FileAuth, HMACAuth,
// Dummy) never does. A context derived from it, or context.AfterFunc on
// it, finds that real context through Value, as it would a WithDeadline
// context, so it needs no goroutine of its own.
type authCtx struct {
	deadline time.Time   // fixed at creation
	answered atomic.Bool // set when the authenticator calls done (containAuth)

	mu   sync.Mutex
	real context.Context    // guarded by mu; nil until Done or Value, then the only source of Err
	stop context.CancelFunc // guarded by mu; real's
	err  error              // guarded by mu; while real is nil: Err's answer once it is not nil (it never changes after)
}

// Deadline implements context.Context.
func (a *authCtx) Deadline() (time.Time, bool) { return a.deadline, true }

// Done implements context.Context; the first call makes the real context.
func (a *authCtx) Done() <-chan struct{} { return a.made().Done() }

// Value implements context.Context (the relay sets no values); the first
// call makes the real context, so that children attach to it.
func (a *authCtx) Value(key any) any { return a.made().Value(key) }

// Err implements context.Context: nil, then context.DeadlineExceeded
// from the deadline on or context.Canceled once the answer came before
// it, whichever is first; it does not change after.
func (a *authCtx) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.real != nil {
		return a.real.Err()
	}
	a.settle(nil)
	return a.err
}

// settle sets Err's answer if it has none: DeadlineExceeded from the
// deadline on, else otherwise (nil: none yet). Called with mu held,
// while real is nil.
func (a *authCtx) settle(otherwise error) {
	if a.err != nil {
		return
	}
	a.err = otherwise
	if !time.Now().Before(a.deadline) {
		a.err = context.DeadlineExceeded
	}
}

// made returns the real context, making it on first use: done already,
// with the same error, if Err has answered one.
func (a *authCtx) made() context.Context {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.real == nil {
		if a.err == context.Canceled {
			a.real, a.stop = context.WithCancel(context.Background())
			a.stop()
		} else { // DeadlineExceeded: the deadline has passed, so this one is done at once
			a.real, a.stop = context.WithDeadline(context.Background(), a.deadline)
		}
	}
	return a.real
}

// finish cancels the context: the authenticator has answered (after the
// deadline it stays DeadlineExceeded).
func (a *authCtx) finish() {
	a.mu.Lock()
	stop := a.stop
	if a.real == nil {
		a.settle(context.Canceled)
	}
	a.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// failedFrom counts a failed authentication (a refused token, a forged
// mesh request) against peer's address, banning it past
// AuthFailuresPerIP a minute.
func (s *Server) failedFrom(peer net.Addr) { s.authFailedAt(limits.AddrOf(peer)) }

// authFailedAt counts a failed authentication from ip (failedFrom).
func (s *Server) authFailedAt(ip netip.Addr) {
	if s.lim.AuthFailed(ip) {
		s.stats.bans.Inc()
		s.log.Warn("address banned after failed authentications", "ip", ip.String(), "for", s.lim.BanTime())
	}
}

// refuseAuth answers a refused authentication and closes: the
// Authenticate reply with r and a close, or, for a token in the WebSocket
// URL (no WebSocket ever existed), the HTTP status of why: 401 for a
// refused token, 403 for one the access rules refuse, 503 when the
// authenticator could not check it (its store down, no answer in time:
// no token was refused). Called with mu held.
func (c *conn) refuseAuth(r AuthResult, why reason.Reason, text string) {
	if c.upgrade != nil {
		switch {
		case why == reason.AccessDenied:
			c.refuseUpgrade("403 Forbidden", why, "the access rules do not let this client pair here.")
		case r == AuthFailed:
			c.refuseUpgrade("401 Unauthorized", why, "the relay refused the token in the URL.")
		default:
			c.refuseUpgrade("503 Service Unavailable", why, "the relay could not check the token in the URL now; try again.")
		}
		return
	}
	c.send(handshake.AppendSuccess(nil, c.view().authID,
		handshake.Str("authenticationError", r.String())))
	c.fail(why, text)
}

// onAuthResult answers Authenticate and, on success, joins the registry:
// either waiting for a partner or completing a pair.
func (c *conn) onAuthResult(r AuthResult) {
	c.mu.Lock()
	c.authResult(r)
}

// authResult is onAuthResult with mu held; it unlocks.
func (c *conn) authResult(r AuthResult) {
	if state(c.st.Load()) != stAuthing {
		c.unlock() // late answer after a timeout or close: ignored
		return
	}
	// Count (and ban) before replying, so a client that reconnects on the
	// reply already meets the ban.
	a := c.auth()
	switch {
	case a.banned: // counted as a close (banned), not judged
	case r == AuthNoError:
		c.s.stats.authOK.Inc()
	case r == AuthTimeout:
		c.s.stats.authTimeout.Inc()
	case r == AuthFailed: // the token refused: a guess
		c.s.stats.authFail.Inc()
		c.s.failedFrom(c.peer)
	default: // the authenticator could not answer (its store down): no guess
		c.s.stats.authError.Inc()
	}
	if then := a.authThen; then != nil {
		a.authThen = nil
		a.authed = r == AuthNoError
		c.to(stRPC)
		if c.upgrade != nil && r != AuthNoError { // a token in the WebSocket URL: 401
			why := reason.AuthFailed
			if a.banned {
				why = reason.Banned
			}
			c.refuseAuth(r, why, "")
			then(Conn{c}, r) // told too (Conn.Authenticate): the 401 is decided, the connection closing
			c.unlock()
			return
		}
		// A URL upgrade stays pending while then decides: a refusal is
		// an HTTP answer (conn.fail), a Reply or Subscribe starts the
		// WebSocket, and so does going on without either.
		then(Conn{c}, r)
		if st := state(c.st.Load()); st != stClosing && st != stDone {
			c.acceptUpgrade()
		}
		c.unlock()
		return
	}
	if r != AuthNoError {
		why := reason.AuthFailed
		switch {
		case a.banned:
			why = reason.Banned
		case r == AuthTimeout:
			why = reason.AuthTimeout
		}
		c.refuseAuth(r, why, "")
		c.unlock()
		return
	}
	a.authed = true
	id := c.identity()
	c.s.stats.identities[identityKindIndex(id.Kind)].Inc()
	if c.s.cfg.Access != nil && !c.s.Allow(id, ActionPair, a.key.Nonce) {
		// The token is good but this identity may not pair here: the
		// same answer as a bad token, counted apart (no ban).
		c.refuseAuth(AuthFailed, reason.AccessDenied, "")
		c.unlock()
		return
	}
	if c.upgrade != nil {
		// A token in the URL: now the WebSocket exists.
		c.startWebSocket(c.upgrade)
		c.upgrade = nil
	} else {
		var reply [96]byte // send copies it: built on the stack
		c.send(handshake.AppendSuccess(reply[:0], a.authID,
			handshake.Str("authenticationError", r.String())))
	}
	// The reply never follows TunnelEstablished: either it is written now,
	// or it stays queued and goes out first — at unlock if the client
	// waits, in the tunnel's first write (one write for both) if it
	// completes a pair. Queued only where the client reads the two
	// messages apart from one write: WebSocket frames, or a raw TCP client
	// that did not say Hello (nymea's clients do, and parse what one read
	// returns as one message). In a fleet it is written now.
	if c.ws == nil && c.hello || c.s.fleet != nil {
		c.flush()
	}
	if state(c.st.Load()) != stAuthing { // the reply could not be written
		c.unlock()
		return
	}
	a.joined = time.Now()
	c.to(stWaiting)
	if c.s.fleet != nil {
		// In a fleet, the local registry answers only for keys it holds;
		// any other key is placed first.
		res, partner := c.s.reg.JoinExisting(a.key, c)
		if res == JoinAbsent {
			c.place()
			c.unlock()
			return
		}
		c.finishJoin(res, partner)
		return
	}
	res, partner := c.s.reg.Join(a.key, c)
	c.finishJoin(res, partner)
}

// finishJoin acts on the registry's answer and unlocks.
func (c *conn) finishJoin(res JoinResult, partner Joiner) {
	after := c.joinedAs(res, partner, -1)
	c.unlock()
	if after != nil {
		after()
	}
}

func param(req *handshake.Request, key string) string {
	v, _ := req.Param(key)
	return v
}
