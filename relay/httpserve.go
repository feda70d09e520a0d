package relay

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// One port, every protocol: after the sniffer (and TLS) a connection that
// is not the relay's own — an HTTP request that is not a relay WebSocket
// upgrade, a WebSocket upgrade naming a subprotocol a subsystem
// registered, HTTP/2 negotiated by ALPN, a STUN message — leaves the
// engine through a hand-off listener, with the bytes already read and its
// TLS state, to a library that serves net.Conns: net/http for HTTP, a
// TURN server for STUN. Those connections get a goroutine each (API
// traffic is not the idle-scale path) and are bounded: HTTPMaxConns at
// once, header and body sizes, read-header and idle timeouts.

// HTTP kinds of hand-off.
const (
	handoffHTTP = iota // net/http: HTTP/1.1 and HTTP/2, subsystems' WebSockets
	handoffSTUN        // STUN/TURN over TCP
	handoffKinds
)

// Handle registers an HTTP handler for pattern on the relay's port (as
// http.ServeMux patterns: "GET /metrics", "/v1/"). Every HTTP request that
// is not a relay WebSocket upgrade is served by these handlers, over
// plaintext, TLS and HTTP/2.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// HandleWebSocket routes WebSocket upgrades naming subprotocol in
// Sec-WebSocket-Protocol to h (through net/http: h performs the upgrade,
// e.g. a WAMP router's) instead of the relay. Call it before Start.
func (s *Server) HandleWebSocket(subprotocol string, h http.Handler) {
	s.subprotocols[subprotocol] = h
}

// STUNListener returns the listener through which STUN/TURN connections
// sniffed on the relay's port are handed over (serve it with a TURN
// server). Without one, such connections are refused as unknown. Call it
// before Start.
func (s *Server) STUNListener() net.Listener {
	if s.handoffs[handoffSTUN] == nil {
		s.handoffs[handoffSTUN] = loop.NewHandoff(s.handoffAddr())
	}
	return s.handoffs[handoffSTUN]
}

func (s *Server) handoffAddr() net.Addr {
	if len(s.cfg.Listen) > 0 {
		if a, err := net.ResolveTCPAddr("tcp", s.cfg.Listen[0]); err == nil {
			return a
		}
	}
	return &net.TCPAddr{}
}

// startHTTP starts the net/http server on the HTTP hand-off listener.
func (s *Server) startHTTP() {
	h := loop.NewHandoff(s.handoffAddr())
	s.handoffs[handoffHTTP] = h
	s.httpSrv = &http.Server{
		Handler:           s.httpRoot(),
		ReadHeaderTimeout: s.cfg.HTTPReadHeaderTimeout,
		IdleTimeout:       s.cfg.HTTPIdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeader,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			ctx = context.WithValue(ctx, serverKey{}, s) // for CountAuthFailure
			pc, ok := c.(*pacedConn)
			if !ok {
				return ctx
			}
			ctx = context.WithValue(ctx, pacedConnKey{}, pc) // for minRateBody
			if pc.State != nil {
				return context.WithValue(ctx, tlsStateKey{}, pc.State)
			}
			return ctx
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateClosed {
				if tc, ok := c.(*tls.Conn); ok { // HTTP/2 conns are handed over unwrapped
					s.h2Closed(tc)
				}
			}
		},
	}
	s.httpSrv.Protocols = new(http.Protocols)
	s.httpSrv.Protocols.SetHTTP1(true)
	s.httpSrv.Protocols.SetHTTP2(true)
	go func() {
		if err := s.httpSrv.Serve(h); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("http", "err", err)
		}
	}()
}

type tlsStateKey struct{}

// bodyKey finds a request's minRateBody (RequestBodyError).
type bodyKey struct{}

// pacedConnKey finds the pacedConn that carries an HTTP/1 request.
type pacedConnKey struct{}

// pacedConn is an HTTP/1 connection handed to net/http. While the read
// deadline in force is a paced request body's (minRateBody) and no
// handler is reading it, a read that fails for that deadline is net/http
// reading what the handler left (up to 256 KiB, before it answers): the
// body is cut for its pace, and counted as a handler's read counts it.
type pacedConn struct {
	*loop.HandedConn
	slow *metrics.Counter
	due  atomic.Pointer[minRateBody] // the body whose deadline is in force, while no handler reads it
}

// Read implements net.Conn.
func (c *pacedConn) Read(p []byte) (int, error) {
	n, err := c.HandedConn.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if b := c.due.Swap(nil); b != nil {
			b.cutForPace()
		}
	}
	return n, err
}

// SetReadDeadline implements net.Conn: a deadline net/http sets (the next
// request's head, keep-alive idleness) is no body's.
func (c *pacedConn) SetReadDeadline(t time.Time) error {
	c.due.Store(nil)
	return c.HandedConn.SetReadDeadline(t)
}

// SetDeadline implements net.Conn, as SetReadDeadline.
func (c *pacedConn) SetDeadline(t time.Time) error {
	c.due.Store(nil)
	return c.HandedConn.SetDeadline(t)
}

// serverKey finds the Server that serves a request (CountAuthFailure).
type serverKey struct{}

// httpRoot is the handler of every handed-off HTTP connection: the TLS
// state of wrapped connections goes into r.TLS; the path is decoded and
// cleaned once (cleanPath: a path it refuses is a 400) and everything
// after decides on and forwards that path; the access rules apply to
// every request but the health checks, WebSocket upgrades (a registered
// subprotocol's included) pass AllowedOrigins, upgrades naming a
// registered subprotocol go to its handler, bodies are bounded, the rest
// to the mux.
func (s *Server) httpRoot() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.stats.httpRequests.Inc()
		if ip := RequestAddr(r); ip.IsValid() && s.lim.Banned(ip) {
			// Banned while it held this connection (its guesses on
			// earlier requests): new connections are refused at accept.
			s.stats.httpBanned.Inc()
			w.Header().Set("Connection", "close")
			refuse(w, r.URL.Path, http.StatusForbidden, "403 forbidden: this address is banned for failed authentications")
			return
		}
		if st, ok := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState); ok && r.TLS == nil {
			r.TLS = st
		}
		if r.Body != http.NoBody && r.ContentLength != 0 {
			// Bounded and paced whoever reads it: a handler, or net/http,
			// which reads up to 256 KiB of what a handler left before it
			// answers (and would wait for it without end).
			b := &minRateBody{ReadCloser: http.MaxBytesReader(w, r.Body, s.cfg.HTTPMaxBody), rc: http.NewResponseController(w), s: s}
			if r.ProtoMajor == 1 {
				b.pc, _ = r.Context().Value(pacedConnKey{}).(*pacedConn)
			}
			r.Body = b
			r = r.WithContext(context.WithValue(r.Context(), bodyKey{}, b)) // for RequestBodyError
			// HTTP/1: due from now, before any handler runs: a response
			// past net/http's 2 KiB buffer (or a Flush) makes it read what
			// the handler left inside the handler's own Write. (HTTP/2
			// reads no body for a handler: its stream's timer, once set,
			// would not move for a handler that reads late.)
			if r.ProtoMajor == 1 {
				b.pace(time.Now().Add(s.cfg.HTTPBodyTimeout))
			}
			defer b.leave()
		}
		p, err := cleanPath(r.URL.EscapedPath())
		if err != nil {
			s.stats.httpBadPath.Inc()
			refuse(w, r.URL.Path, http.StatusBadRequest, "400 bad request: "+err.Error())
			return
		}
		r.URL.Path, r.URL.RawPath = p, ""
		if s.cfg.Access != nil && !healthCheck(r) && !s.Allow(IdentityOfRequest(r), ActionHTTP, r.URL.Path) {
			s.stats.httpDenied.Inc()
			refuse(w, r.URL.Path, http.StatusForbidden, "403 forbidden: the access rules do not allow "+r.URL.Path+" to this client")
			return
		}
		if r.Header.Get("Upgrade") != "" {
			if !s.originAllowed(r.Header.Get("Origin")) {
				s.stats.httpOrigin.Inc()
				refuse(w, r.URL.Path, http.StatusForbidden, "403 forbidden: this page's origin may not open WebSockets to the relay (--allowed-origins)")
				return
			}
			for _, p := range r.Header.Values("Sec-WebSocket-Protocol") {
				for name := range strings.SplitSeq(p, ",") {
					if h := s.subprotocols[strings.TrimSpace(name)]; h != nil {
						h.ServeHTTP(w, r)
						return
					}
				}
			}
		}
		s.mux.ServeHTTP(w, r)
	})
}

// APIPath reports whether path is under one of the relay's JSON APIs
// (/v1/…, the groups API, also under an application's /app/KEY/ URL),
// whose errors are JSON whatever the path.
func APIPath(path string) bool {
	if rest, ok := strings.CutPrefix(path, "/app/"); ok {
		key, sub, ok := strings.Cut(rest, "/")
		return ok && key != "" && groupsPath("/"+sub)
	}
	return strings.HasPrefix(path, "/v1/") || groupsPath(path)
}

// groupsPath reports whether path is under the groups API.
func groupsPath(path string) bool {
	return path == "/group" || path == "/groups" || strings.HasPrefix(path, "/groups/") || strings.HasPrefix(path, "/group/")
}

// refuse answers a request the relay refuses before any handler (its
// path, an access rule, a ban, an origin): under the JSON APIs
// (APIPath) a JSON error, {"error": text}, as their handlers' own are;
// elsewhere text.
func refuse(w http.ResponseWriter, path string, status int, text string) {
	if APIPath(path) {
		WriteJSON(w, status, map[string]string{"error": text})
		return
	}
	http.Error(w, text, status)
}

// BodyStatus is the HTTP status for a failed read of a request body: 413
// over HTTPMaxBody (or a handler's own http.MaxBytesReader), 408 slower
// than HTTPMinBodyRate (ErrSlowBody), else 400.
func BodyStatus(err error) int {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrSlowBody):
		return http.StatusRequestTimeout
	}
	return http.StatusBadRequest
}

// ErrSlowBody is what a handler reads from a request body that arrived
// slower than HTTPMinBodyRate after HTTPBodyTimeout.
var ErrSlowBody = errors.New("request body too slow (--http-min-body-rate)")

// RequestBodyError is the error the relay's bounds on r's body failed a
// read of it with: an *http.MaxBytesError (over HTTPMaxBody) or
// ErrSlowBody; nil if they failed none. A handler that does not read the
// body itself (a reverse proxy's transport does) tells with it the
// client's fault from its own. A read of the body in progress is waited
// for (it ends by the body's deadline at the latest).
func RequestBodyError(r *http.Request) error {
	b, ok := r.Context().Value(bodyKey{}).(*minRateBody) // r may be a copy whose Body wraps it (httputil.ReverseProxy's)
	if !ok {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fault
}

// minRateBody is a request body that must keep arriving: each read's
// deadline is the body's start plus HTTPBodyTimeout plus the time its
// bytes so far take at HTTPMinBodyRate, so a client that sends a large
// Content-Length and then little or nothing holds its connection for
// seconds, not for good. Used by one handler goroutine at a time.
type minRateBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	pc    *pacedConn // HTTP/1: its connection; nil for HTTP/2
	s     *Server
	start time.Time
	got   int64
	ended bool        // read to its end or its error
	cut   atomic.Bool // cut for its pace, and counted
	// mu is held by Read, so that RequestBodyError, on another goroutine,
	// sees the fault of a read that failed as its caller saw it fail.
	mu    sync.Mutex
	fault error // a read failed for the relay's bounds (RequestBodyError); under mu
}

// cutForPace counts the body as cut for its pace, once.
func (b *minRateBody) cutForPace() {
	if b.cut.CompareAndSwap(false, true) {
		b.s.stats.httpSlowBody.Inc()
	}
}

// pace sets the body's read deadline, t, for net/http to read it by when
// no handler is reading it (a read that fails for it counts the body cut).
func (b *minRateBody) pace(t time.Time) {
	if b.rc.SetReadDeadline(t) == nil && b.pc != nil {
		b.pc.due.Store(b)
	}
}

// deadline is when the body's next byte is due: its start (the first
// read) plus HTTPBodyTimeout plus the time its bytes so far take at
// HTTPMinBodyRate.
func (b *minRateBody) deadline() time.Time {
	cfg := &b.s.cfg
	if b.start.IsZero() {
		b.start = time.Now()
	}
	return b.start.Add(cfg.HTTPBodyTimeout + time.Duration(float64(b.got)/float64(cfg.HTTPMinBodyRate)*float64(time.Second)))
}

// Read implements io.Reader.
func (b *minRateBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.rc.SetReadDeadline(b.deadline())
	n, err := b.ReadCloser.Read(p)
	b.got += int64(n)
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		b.cutForPace()
		err = ErrSlowBody
		b.fault = err
	case errors.As(err, &tooBig):
		b.fault = err
	case err == io.EOF:
		_ = b.rc.SetReadDeadline(time.Time{}) // net/http's own deadlines from here
	case err == nil && b.pc != nil:
		b.pc.due.Store(b) // net/http may read the rest (counted there)
	}
	b.ended = err != nil
	return n, err
}

// leave runs when the handler returns: a body it did not read to its end
// keeps its deadline for what net/http reads of it before answering (up
// to 256 KiB, to reuse the connection), so a client that announced a body
// and sends nothing is answered and closed after HTTPBodyTimeout, not held
// for good. (A hijacked connection refuses the deadline: it is not
// net/http's any more.)
func (b *minRateBody) leave() {
	if !b.ended {
		b.pace(b.deadline())
	}
}

// healthCheck reports whether r is a load balancer's health check (GET or
// HEAD /healthz, /readyz): it answers every client, whatever the access
// rules say, and tells nothing but the relay's state.
func healthCheck(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && (r.URL.Path == "/healthz" || r.URL.Path == "/readyz")
}

// httpHandoff is the target of a connection whose request goes to
// net/http (or, for kind handoffSTUN, to the STUN listener).
type httpHandoff struct{ kind int }

// ready implements target.
func (t httpHandoff) ready(c *conn) {
	s := c.s
	switch {
	case c.failed || c.sk == nil || s.handoffs[t.kind] == nil:
		s.dismiss(c, reason.HTTP, 0, "")
	default:
		if r, ok := s.handOver(t.kind, c.sk, c.claim().late, c.peer, c.tk); !ok {
			// Too many handed off (503), or too many from this address (429).
			status := "503 Service Unavailable"
			if r == reason.LimitHTTPPerIP {
				status = "429 Too Many Requests"
			}
			s.log.Debug("HTTP connection refused", "reason", r.String(), "peer", c.peer.String())
			c.out.B = append(c.out.B[:0], "HTTP/1.1 "+status+"\r\nConnection: close\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"...)
			s.dismiss(c, r, 0, "")
		}
	}
}

// handOver turns sk into a blocking net.Conn on Go's poller and delivers
// it, reading prefix first, to the kind's listener (ok), and sk and tk are
// taken care of. Refused (!ok), it leaves sk to the caller and says why:
// reason.LimitHTTP when HTTPMaxConns connections are handed off already,
// reason.LimitHTTPPerIP when the client's address holds its
// HTTPMaxConnsPerIP of them.
func (s *Server) handOver(kind int, sk loop.Sock, prefix []byte, peer net.Addr, tk *ticket) (refused reason.Reason, ok bool) {
	h := s.handoffs[kind]
	if h.Active.Load() >= int64(s.cfg.HTTPMaxConns) {
		return reason.LimitHTTP, false
	}
	if !s.httpShares[kind].Take(tk.key, s.cfg.HTTPMaxConnsPerIP) {
		return reason.LimitHTTPPerIP, false
	}
	tk.handed.Store(int32(kind) + 1) // given back when the ticket ends
	nc, state, err := loop.Blocking(sk)
	if err != nil {
		tk.End(reason.IOError) // taken care of: the ticket ends, Blocking closed sk
		return 0, true
	}
	s.stats.httpConns.Inc()
	hc := h.Hand(nc, prefix, state, tk)
	var out net.Conn = hc
	if kind == handoffHTTP {
		out = &pacedConn{HandedConn: hc, slow: s.stats.httpSlowBody}
	}
	if kind == handoffHTTP && state != nil && state.NegotiatedProtocol == "h2" {
		// HTTP/2: net/http must see the *tls.Conn itself to serve it; its
		// ticket ends when net/http reports it closed.
		tc := nc.(*tls.Conn)
		s.h2mu.Lock()
		s.h2conns[tc] = hc
		s.h2mu.Unlock()
		out = tc
	}
	if !h.Deliver(out, s.cfg.HTTPReadHeaderTimeout) {
		out.Close()
		s.h2Closed(out)
	}
	return 0, true
}

// h2Closed ends the ticket of an HTTP/2 connection net/http closed.
func (s *Server) h2Closed(nc net.Conn) {
	tc, ok := nc.(*tls.Conn)
	if !ok {
		return
	}
	s.h2mu.Lock()
	hc := s.h2conns[tc]
	delete(s.h2conns, tc)
	s.h2mu.Unlock()
	if hc != nil {
		hc.Close()
	}
}

// WriteJSON answers an HTTP API request on the relay's port: status, and
// v as JSON, never cached.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff") // its strings may be a client's (a group's name): never HTML
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// BearerToken is the credential of r's "Authorization: Bearer TOKEN"
// header, surrounding spaces dropped; "" without one. The scheme is
// matched in any case (RFC 7235 §2.1: "bearer TOKEN" is the same).
func BearerToken(r *http.Request) string {
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(cred)
}

// RequireBearer serves h only to requests that carry "Authorization:
// Bearer KEY" (the scheme in any case; the key compared in constant
// time, surrounding spaces of key ignored); the others get 401 with a
// JSON error, and a wrong key counts toward the address's ban
// (CountAuthFailure).
func RequireBearer(key string, h http.Handler) http.Handler {
	want := []byte(strings.TrimSpace(key))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// An empty key matches nothing.
		if len(want) == 0 || subtle.ConstantTimeCompare([]byte(BearerToken(r)), want) != 1 {
			if r.Header.Get("Authorization") != "" {
				CountAuthFailure(r)
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="meetpoint"`)
			WriteJSON(w, http.StatusUnauthorized, map[string]string{"error": "a valid admin key is required (Authorization: Bearer KEY)"})
			return
		}
		h.ServeHTTP(w, r)
	})
}
