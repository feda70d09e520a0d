package relay

import (
	"context"
	"crypto/x509"
	"hash/maphash"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// What subsystems (TunnelProxy, monitors, the HTTP routes) build on. The
// engine never imports them: they register with a Server before Start,
// and cmd/meetpoint wires them together.

// Conn is a connection before its tunnel as a JSON-RPC method handler sees
// it. Handlers run with the connection's lock held, on a loop goroutine or an
// authenticator's: they must not block, and c is valid only during the call.
type Conn struct{ c *conn }

// MethodHandler answers one JSON-RPC method before the tunnel.
type MethodHandler func(c Conn, req *handshake.Request)

// HandleMethod routes JSON-RPC method (e.g. "TunnelProxy.RegisterServer")
// to h; the method must be in handshake's method table (Introspect lists
// it, ParseRequest validates its params). Call it before Start.
func (s *Server) HandleMethod(method string, h MethodHandler) { s.methods[method] = h }

// Reply queues one JSON-RPC message for the client (a TEXT frame on
// WebSocket, as is on raw TCP); a pending URL-token upgrade is accepted
// first.
func (c Conn) Reply(msg []byte) { c.c.acceptUpgrade(); c.c.send(msg) }

// Refuse ends the connection gracefully for r: a WebSocket client gets a
// close frame with code and text after what it was sent; a URL-token
// upgrade still pending gets an HTTP 403 (access_denied) or 400 with text
// instead, and no WebSocket.
func (c Conn) Refuse(r reason.Reason, code ws.StatusCode, text string) { c.c.failWith(r, code, text) }

// Claim hands the connection to t: it leaves its transport once this
// message is handled, and t receives it (with the bytes that follow the
// request) — always, even if the client hangs up meanwhile. uuid and name
// are what monitors show of it.
func (c Conn) Claim(t Target, uuid, name string) {
	a := c.c.auth()
	a.uuid, a.name = uuid, name
	c.c.claimFor(exported{t})
}

// Peer is the client's address.
func (c Conn) Peer() net.Addr { return c.c.peer }

// WebSocket reports whether the client speaks WebSocket (else raw TCP).
func (c Conn) WebSocket() bool { return c.c.ws != nil }

// ClientCert is the client's verified TLS certificate, if it presented one.
func (c Conn) ClientCert() *x509.Certificate { return c.c.clientCert() }

// Target receives a claimed connection.
type Target interface {
	// Ready is called once, on some goroutine of the relay, when the
	// connection's transport has let go of it. The target owns h from then
	// on: it must end h.Ticket exactly once, when the socket closes.
	Ready(h *Handover)
}

// Handover is a claimed connection as its Target receives it.
type Handover struct {
	// Sock is the socket; nil if taking it over failed (Failed is then set).
	Sock loop.Sock
	// WS is the client's WebSocket stream state, nil on raw TCP.
	WS *handshake.Stream
	// Late is what the client sent after the claim: raw on TCP, payload
	// on WebSocket.
	Late []byte
	// Out is what the relay still owes the client (pongs queued since the
	// claim), to be sent first.
	Out []byte
	// Ticket accounts for the socket: end it, once, with the reason the
	// socket closed.
	Ticket reason.Ender
	// Peer is the client's address.
	Peer net.Addr
	// Failed reports that the set-up failed (the client hung up, the server
	// is shutting down, ...): Reason says why, and the target gives the
	// connection back with Dismiss.
	Failed bool
	Reason reason.Reason
	// Hello reports that the client called RemoteProxy.Hello first, as
	// nymea's client library always does (see Config.TCPSettle).
	Hello bool
	// SkipNL reports a raw-TCP request whose ending newline had not come
	// by the hand-over: if the next byte from the client is '\n', it is
	// that newline, no data, and the target drops it.
	SkipNL bool
	// MeshNode is the fleet node whose client this connection speaks for
	// (a mesh link, Conn.MarkMesh); "" for a client of this node. A target
	// that keeps such a connection reports it through MeshSessions.
	MeshNode string

	c *conn
}

// meshNode is the node a mesh link comes from ("": not a mesh link).
func meshNode(c *conn) string {
	if c.isMesh() {
		return c.fl.node
	}
	return ""
}

// exported adapts a subsystem's Target to the engine's internal one.
type exported struct{ t Target }

func (e exported) ready(c *conn) {
	e.t.Ready(&Handover{Sock: c.sk, WS: c.ws, Late: c.claim().late, Out: c.out.Take(), Ticket: c.tk,
		Peer: c.peer, Failed: c.failed, Reason: c.reason, Hello: c.hello, SkipNL: c.skipsNL(), MeshNode: meshNode(c), c: c})
}

// Dismiss ends a handover its target does not keep (its set-up failed, or
// the subsystem refuses it after all): the client gets what it is owed,
// then a close frame on WebSocket, then a graceful close; the ticket ends
// with the set-up's own reason or else r.
func (s *Server) Dismiss(h *Handover, r reason.Reason, code ws.StatusCode, text string) {
	h.c.out.B = h.Out
	s.dismiss(h.c, r, code, text)
}

// Loop returns the loop a key maps to (a subsystem keeps related sockets
// on one loop, so that they share a goroutine and need no locks).
func (s *Server) Loop(key string) *loop.Loop {
	return s.loops[maphash.String(s.seed, key)%uint64(len(s.loops))]
}

// Reporter is a subsystem's part of the monitors' view: it adds itself to
// snapshots and to the traffic total. (Its metrics go to /metrics through
// AddMetrics.)
type Reporter interface {
	// Report adds the subsystem's part to snap. It may block briefly (it
	// typically asks its loops).
	Report(snap *Snapshot)
	// Traffic is the bytes it relayed since start.
	Traffic() uint64
}

// AddReporter registers r. Call it before Start.
func (s *Server) AddReporter(r Reporter) { s.reporters = append(s.reporters, r) }

// AddMetrics puts a subsystem's metric set on /metrics, each family's
// # HELP and # TYPE taken from docs (family name → doc). Call it before
// Start.
func (s *Server) AddMetrics(set *metrics.Set, docs map[string]MetricDoc) {
	s.metricSets = append(s.metricSets, set)
	s.metricDocs = append(s.metricDocs, docs)
}

// OnDrain registers fn, run once when Shutdown begins (e.g. to let go of
// registrations that carry no user session). Call it before Start.
func (s *Server) OnDrain(fn func()) { s.drainHooks = append(s.drainHooks, fn) }

// Draining reports whether Shutdown has begun: subsystems end sessions as
// soon as they may (the drain waits on every socket the server holds).
func (s *Server) Draining() bool { return s.draining.Load() }

// HelloReply is RemoteProxy.Hello's answer to request id.
func (s *Server) HelloReply(id int) []byte {
	return handshake.AppendSuccess(nil, id,
		handshake.Str("apiVersion", APIVersion),
		handshake.Str("name", s.cfg.Name),
		handshake.Str("server", "meetpoint"),
		handshake.Str("version", Version))
}

// IntrospectReply is the RemoteProxy.Introspect reply to request id: the
// methods this relay serves (its own and those its subsystems registered
// with HandleMethod), described once on first use, after Start.
func (s *Server) IntrospectReply(id int) []byte {
	return handshake.AppendSuccessRaw(nil, id, s.introspection())
}

// Logger is the server's logger.
func (s *Server) Logger() *slog.Logger { return s.log }

// Done is closed once the server is closed.
func (s *Server) Done() <-chan struct{} { return s.quit }

// Readiness reports whether the server accepts new clients and, if not,
// why: "draining", "closed" or "starting".
func (s *Server) Readiness() (ready bool, state string) {
	s.mu.Lock()
	closed, listening := s.closed, len(s.listeners) > 0
	s.mu.Unlock()
	switch {
	case s.draining.Load():
		return false, "draining"
	case closed:
		return false, "closed"
	case !listening:
		return false, "starting"
	}
	return true, "ready"
}

// AddReadiness registers a subsystem's part of readiness: a part that is
// not ready does not make the server unready (its relay still serves),
// but /readyz names it, and /readyz?strict=1 fails on it. Call it before
// Start.
func (s *Server) AddReadiness(name string, check func() (ok bool, detail string)) {
	s.readiness = append(s.readiness, readinessCheck{name, check})
}

type readinessCheck struct {
	name  string
	check func() (bool, string)
}

// ReadinessParts reports each registered part's readiness, in
// registration order.
func (s *Server) ReadinessParts() (names []string, ok []bool, details []string) {
	for _, r := range s.readiness {
		good, d := r.check()
		names, ok, details = append(names, r.name), append(ok, good), append(details, d)
	}
	return names, ok, details
}

// Name is the server's name (RemoteProxy.Hello).
func (s *Server) Name() string { return s.cfg.Name }

// AloneTimeout is how long an authenticated client may wait for its
// partner (what a client should tell its user while it waits).
func (s *Server) AloneTimeout() time.Duration { return s.cfg.AloneTimeout }

// CheckToken runs the configured authenticator on token for an HTTP API
// (e.g. TURN credentials; AuthRequest.Whole: a one-time token is spent
// whole): it blocks until the answer or ctx ends (then
// AuthTimeout). The identity is the token's subject, with the request's
// client certificate if any (cert may be nil). A refused token
// (AuthFailed) counts toward peer's address's ban, as a refused
// Authenticate does.
func (s *Server) CheckToken(ctx context.Context, token string, peer net.Addr, cert *x509.Certificate) (AuthResult, Identity) {
	var subject atomic.Pointer[string]
	req := AuthRequest{Token: token, Peer: peer, ClientCert: cert, Whole: true, SetSubject: func(v string) { subject.Store(&v) }}
	res := make(chan AuthResult, 1)
	s.cfg.Auth.Authenticate(ctx, req, func(r AuthResult) { res <- r })
	var r AuthResult
	select {
	case r = <-res:
	case <-ctx.Done():
		return AuthTimeout, Identity{}
	}
	sub := ""
	switch r {
	case AuthNoError:
		sub = s.tokenSubject(&subject, token)
	case AuthFailed:
		if peer != nil {
			s.failedFrom(peer)
		}
	}
	return r, IdentityOf(cert, sub)
}

// MethodsAt returns the HTTP methods a handler is registered for at path
// (Handle), catch-all "/" patterns aside: the Allow header of a 405 when
// a request's method is not one of them. Nil means nothing serves path.
func (s *Server) MethodsAt(path string) []string {
	var ms []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		r := &http.Request{Method: m, URL: &url.URL{Path: path}, Host: "relay"}
		if _, pattern := s.mux.Handler(r); pattern != "" && !strings.HasSuffix(pattern, " /") && pattern != "/" {
			ms = append(ms, m)
		}
	}
	return ms
}
