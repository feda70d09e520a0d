// Package wamp is a WAMP v2 router on the relay's port (JSON over
// WebSocket, subprotocol wamp.2.json), for WebRTC signalling as Babble
// does it: each node REGISTERs a procedure named after its public key, a
// peer CALLs it with [caller-pubkey, offer] and gets [answer] back.
//
// It is the WAMP basic profile — sessions in realms, a dealer (REGISTER,
// CALL, INVOCATION, YIELD, ERROR, and the advanced call canceling and
// call timeouts: CANCEL, INTERRUPT to a callee that announced
// call_canceling) and a broker
// (SUBSCRIBE, PUBLISH, EVENT) — with meetpoint's rules: realms are
// applications (a registered application's realm needs its key, WAMP
// "ticket" authentication; the open realm, "main" by default, needs
// none), every per-session quantity is bounded (registrations,
// subscriptions, calls in flight, message size, messages queued for a
// slow reader), and with a fleet (Config.Redis) a CALL reaches a
// procedure registered on another node and an EVENT every node's
// subscribers.
//
// Costs: one goroutine reads and one writes each session (signalling
// sessions are few and short-lived next to tunnels); all routing state is
// under one mutex, held for map operations only, never across I/O.
//
// Why not a library: the router of github.com/gammazero/nexus/v3 (what
// Babble's client is built on; v3.3.0 is the newest the module proxy
// serves) routes calls within one process only, with no hook to reach a
// callee on another node, and bounds nothing per session but its outbound
// queue; interoperability is proven against nexus's client (Babble's, in
// make interop-disco) and autobahn-js, the reference client
// (docs/discovery.md).
package wamp

import (
	"cmp"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay"
)

// Subprotocol is the WebSocket subprotocol the router serves.
const Subprotocol = "wamp.2.json"

// DefaultRealm is the open realm when Config.Realm is empty (Babble's).
const DefaultRealm = "main"

// Config is the signalling router's part of a relay's configuration.
type Config struct {
	// Realm is the open realm: anyone may join it (default "main").
	Realm string
	// Apps are the registered applications (app id → key, as the groups
	// API's): realm APP needs WAMP ticket authentication with the key.
	Apps map[string]string
	// AppsOnly refuses realms that are neither Realm nor a registered
	// application (otherwise any realm is open).
	AppsOnly bool
	// Bounds, per session: registrations and subscriptions (default 64
	// each), calls in flight (default 64), message bytes (default 64 KiB),
	// messages and bytes queued for writing before the session is closed
	// as too slow (default 256 and 256 KiB; MaxQueueBytes is at least
	// MaxMessage, so one message of any allowed size fits).
	MaxRegistrations, MaxSubscriptions, MaxPending int
	MaxMessage, MaxQueue, MaxQueueBytes            int
	// CallTimeout ends a call whose callee has not answered (default 30 s;
	// a CALL's own timeout option may shorten it).
	CallTimeout time.Duration
	// HelloTimeout bounds the time from upgrade to WELCOME (default 10 s).
	HelloTimeout time.Duration
	// PingEvery is how often the router pings each session; one silent for
	// three periods is closed (default 30 s).
	PingEvery time.Duration
	// Redis, when set (a fleet), carries registrations, calls and events
	// between the nodes sharing it; NodeID names this node there.
	Redis  redis.UniversalClient
	NodeID string
}

// Router is the WAMP router on one relay.
type Router struct {
	cfg   Config
	log   *slog.Logger
	fleet *fleetLink // nil: this node alone

	mu       sync.Mutex
	realms   map[string]*realm // guarded by mu; a realm lives while it has sessions
	calls    map[uint64]*call  // guarded by mu; invocations in flight here, by invocation id
	outbound map[uint64]*call  // guarded by mu; calls sent to another node, by their fleet id
	// remote finds an invocation here for a caller on another node by
	// (its node, its fleet id), for the node's CANCEL; guarded by mu.
	// An entry lives exactly as long as its call's in calls.
	remote   map[remoteCall]uint64
	sessions map[*session]bool // guarded by mu
	closing  bool              // guarded by mu
	ids      atomic.Uint64     // router-scope ids: from a random start, below maxID for centuries
	wg       sync.WaitGroup    // session goroutines
	set      *metrics.Set      //
	closed   map[string]*metrics.Counter
	results  map[string]*metrics.Counter
	late     *metrics.Counter // answers to invocations already ended, dropped
}

// realm is one realm's routing state (guarded by Router.mu).
type realm struct {
	name   string
	procs  map[string]*registration
	topics map[string]*topic
	n      int // sessions
}

type registration struct {
	id   uint64
	proc string
	s    *session
	// ready: REGISTERED is queued, and calls may be routed to it (with a
	// fleet, once its claim succeeded; until then the procedure is held
	// here but takes no calls). Guarded by Router.mu.
	ready bool
}

type topic struct {
	id   uint64
	uri  string
	subs map[*session]bool
}

// call is one call in flight. At the callee's node it is in Router.calls
// (callee set); at a caller's node that forwarded it to another node it
// is in Router.outbound (callee nil).
type call struct {
	inv    uint64   // invocation id (callee side) or fleet id (outbound)
	callee *session // nil for an outbound call
	caller *session // nil for a caller on another node
	req    uint64   // the caller's CALL request id, or the remote caller's fleet id
	from   string   // the remote caller's node
	to     string   // an outbound call's: the callee's node
	timer  *time.Timer
	// killing: a CANCEL in kill mode has sent INTERRUPT, and the call
	// waits for the callee's answer (or its timeout). Guarded by mu.
	killing bool
	// abandoned: the remote caller's node has answered its caller (a
	// CANCEL not in kill mode, or the caller left): it is not told how
	// the call ended. Guarded by mu.
	abandoned bool
}

// remoteCall names a call made on another node: that node and its fleet id.
type remoteCall struct {
	node string
	id   uint64
}

// Close reasons (meetpoint_signal_closed_total{reason}) and call results
// (meetpoint_signal_calls_total{result}).
var (
	closeReasons = []string{"goodbye", "gone", "protocol", "realm", "auth", "slow", "too_large", "timeout", "shutdown"}
	callResults  = []string{"ok", "error", "no_procedure", "timeout", "canceled", "callee_lost", "limit"}
)

// New serves WAMP on srv's port (WebSocket upgrades naming wamp.2.json).
// Call it before srv.Start; Close it before srv.Close.
func New(srv *relay.Server, cfg Config) (*Router, error) {
	if cfg.Realm == "" {
		cfg.Realm = DefaultRealm
	}
	if !validURI(cfg.Realm) {
		return nil, fmt.Errorf("signal-realm %q: not a WAMP URI", cfg.Realm)
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.MaxRegistrations, 64)
	def(&cfg.MaxSubscriptions, 64)
	def(&cfg.MaxPending, 64)
	def(&cfg.MaxMessage, 64<<10)
	def(&cfg.MaxQueue, 256)
	def(&cfg.MaxQueueBytes, 256<<10)
	cfg.MaxQueueBytes = max(cfg.MaxQueueBytes, cfg.MaxMessage)
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 30 * time.Second
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = 10 * time.Second
	}
	if cfg.PingEvery <= 0 {
		cfg.PingEvery = 30 * time.Second
	}
	r := &Router{cfg: cfg, log: srv.Logger(), realms: map[string]*realm{}, calls: map[uint64]*call{},
		outbound: map[uint64]*call{}, remote: map[remoteCall]uint64{}, sessions: map[*session]bool{}, set: metrics.NewSet(),
		closed: map[string]*metrics.Counter{}, results: map[string]*metrics.Counter{}}
	// Router-scope ids start at random: a node restarted under its fleet
	// id must not reuse its previous process's call ids, or a late answer
	// (or a CANCEL) meant for an old call would find a new one.
	var b [8]byte
	_, _ = rand.Read(b[:])
	r.ids.Store(binary.BigEndian.Uint64(b[:]) % (maxID / 2))
	for _, c := range closeReasons {
		r.closed[c] = r.set.NewCounter(fmt.Sprintf(`meetpoint_signal_closed_total{reason=%q}`, c))
	}
	for _, c := range callResults {
		r.results[c] = r.set.NewCounter(fmt.Sprintf(`meetpoint_signal_calls_total{result=%q}`, c))
	}
	r.late = r.set.NewCounter(`meetpoint_signal_late_answers_total`)
	r.set.NewGauge(`meetpoint_signal_sessions`, func() float64 { r.mu.Lock(); defer r.mu.Unlock(); return float64(len(r.sessions)) })
	r.set.NewGauge(`meetpoint_signal_registrations`, func() float64 {
		r.mu.Lock()
		defer r.mu.Unlock()
		n := 0
		for _, rm := range r.realms {
			n += len(rm.procs)
		}
		return float64(n)
	})
	if cfg.Redis != nil {
		if cfg.NodeID == "" {
			return nil, fmt.Errorf("signal: a fleet needs a node id")
		}
		fl, err := newFleetLink(r)
		if err != nil {
			return nil, err
		}
		r.fleet = fl
	}
	srv.HandleWebSocket(Subprotocol, r)
	srv.OnDrain(r.goodbye)
	srv.AddMetrics(r.set, signalDocs)
	r.log.Info("signalling: WAMP router", "subprotocol", Subprotocol, "open_realm", cfg.Realm,
		"app_realms", len(cfg.Apps), "fleet", cfg.Redis != nil)
	return r, nil
}

// Close says GOODBYE (wamp.close.system_shutdown) to every session and
// waits for them to end.
func (r *Router) Close() error {
	r.goodbye()
	r.wg.Wait()
	if r.fleet != nil {
		r.fleet.close()
	}
	return nil
}

// goodbye says GOODBYE (wamp.close.system_shutdown) to every session —
// ABORT to one not yet welcomed, as WAMP allows only that before WELCOME
// — and takes no new one, without waiting. The relay's drain runs it: a
// session holds no tunnel, so it is closed at once, as every connection
// without one is, instead of holding the drain until its timeout.
func (r *Router) goodbye() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closing = true
	for s := range r.sessions {
		if s.realm == nil { // set under mu, with WELCOME queued
			s.finish(encode(mAbort, map[string]any{"message": "the router is shutting down"}, closeShutdown), "shutdown")
			continue
		}
		s.finish(encode(mGoodbye, details, closeShutdown), "shutdown")
	}
}

// newID is a router-scope id.
func (r *Router) newID() uint64 { return r.ids.Add(1) }

// ServeHTTP upgrades a WebSocket naming wamp.2.json and serves the
// session on it until it ends. An upgrade to /app/KEY (for clients that
// cannot authenticate, such as Babble's) admits the session to that
// registered application's realm only; a key no application has is
// answered 401 before the upgrade. Once the router is closing (the
// relay's drain), an upgrade is answered 503 before it is made.
func (r *Router) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	closing := r.closing
	r.mu.Unlock()
	if closing {
		r.closed["shutdown"].Inc()
		relay.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the relay is shutting down"})
		return
	}
	var app string
	if rest, ok := strings.CutPrefix(req.URL.Path, "/app/"); ok {
		key, _, _ := strings.Cut(rest, "/")
		if app, ok = relay.MatchKey(r.cfg.Apps, key); !ok {
			relay.CountAuthFailure(req)
			r.closed["auth"].Inc()
			relay.WriteJSON(w, http.StatusUnauthorized, map[string]string{"error": "no application has the key in this URL"})
			return
		}
	}
	up := ws.HTTPUpgrader{Protocol: func(p string) bool { return p == Subprotocol }}
	conn, rw, _, err := up.Upgrade(req, w)
	if err != nil {
		return // the upgrader answered 400
	}
	var in io.Reader = conn
	if rw != nil && rw.Reader.Buffered() > 0 { // frames sent behind the request, before the 101
		in = rw.Reader
	}
	s := &session{r: r, conn: conn, in: in, app: app, guessed: func() { relay.CountAuthFailure(req) }, out: make(chan []byte, r.cfg.MaxQueue+2), done: make(chan struct{}), quit: make(chan struct{}),
		regs: map[uint64]*registration{}, subs: map[uint64]*topic{}, invocations: map[uint64]*call{},
		calling: map[*call]bool{}}
	var b [8]byte
	_, _ = rand.Read(b[:])
	s.id = binary.BigEndian.Uint64(b[:])%maxID + 1 // global scope: random
	r.mu.Lock()
	if r.closing { // it began since the check above: ABORT, then close
		r.mu.Unlock()
		r.closed["shutdown"].Inc()
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = wsutil.WriteServerText(conn, encode(mAbort, map[string]any{"message": "the router is shutting down"}, closeShutdown))
		conn.Close()
		return
	}
	r.sessions[s] = true
	r.wg.Add(1)
	r.mu.Unlock()
	defer r.wg.Done()
	go s.writer()
	s.reader()
	// The writer ends once it has written a last message (ABORT,
	// GOODBYE) queued with finish, or at once if the connection failed.
	select {
	case <-s.quit:
	case <-time.After(2 * time.Second):
	}
	r.leave(s)
	<-s.quit
}

// session is one client's WAMP session.
type session struct {
	id   uint64
	r    *Router
	conn net.Conn
	in   io.Reader   // what the reader reads: conn, or first what net/http read past the upgrade request
	out  chan []byte // bounded: MaxQueue messages, then the session is closed
	// queued is the bytes in out (added by send, taken by the writer once
	// written): past MaxQueueBytes the session is closed as too slow.
	queued atomic.Int64
	done   chan struct{}
	once   sync.Once
	wmu    sync.Mutex    // serialises writes: the writer's and control-frame replies
	quit   chan struct{} // closed when the writer has ended

	app string // the application whose key the upgrade's URL carried: its realm only
	// guessed counts a wrong ticket toward the client address's ban
	// (relay.CountAuthFailure of the upgrade request).
	guessed func()

	// Set once, by the reader, before WELCOME; read by others after.
	realm     *realm
	key       string // the realm's app key while a CHALLENGE is out
	realmName string // the realm asked for while a CHALLENGE is out
	// interrupts: the HELLO announced the callee feature call_canceling;
	// the session gets INTERRUPT for a call canceled or timed out.
	interrupts bool
	reason     atomic.Value // why it ended: a closeReasons entry, set once

	// Guarded by Router.mu.
	regs        map[uint64]*registration
	subs        map[uint64]*topic
	invocations map[uint64]*call // calls to this session (callee), by invocation id
	calling     map[*call]bool   // calls this session made, in flight; nil once it has left
}

// send queues msg for the writer without blocking; a session that lets
// MaxQueue messages or MaxQueueBytes bytes pile up is closed as too slow
// (its queue is dropped with it). Safe under Router.mu.
func (s *session) send(msg []byte) {
	if msg == nil {
		return
	}
	if s.queued.Add(int64(len(msg))) > int64(s.r.cfg.MaxQueueBytes) {
		s.stop("slow")
		return
	}
	select {
	case <-s.done:
	case s.out <- msg:
		if len(s.out) > s.r.cfg.MaxQueue {
			s.stop("slow")
		}
	default:
		s.stop("slow")
	}
}

// finish queues msg (nil: none) as the session's last and ends it after
// writing what is queued.
func (s *session) finish(msg []byte, why string) {
	s.reason.CompareAndSwap(nil, why)
	if msg != nil {
		select {
		case s.out <- msg:
			s.queued.Add(int64(len(msg)))
		default:
		}
	}
	select {
	case s.out <- nil: // the writer closes after what is queued
	default:
		s.stop(why)
	}
}

// stop ends the session now: the connection closes, the reader returns.
func (s *session) stop(why string) {
	s.reason.CompareAndSwap(nil, why)
	s.once.Do(func() { close(s.done); s.conn.Close() })
}

// writer writes queued messages and pings; it ends with the session.
func (s *session) writer() {
	defer close(s.quit)
	ping := time.NewTicker(s.r.cfg.PingEvery)
	defer ping.Stop()
	// write writes a frame; a write that fails ends the session: as slow
	// where the peer took nothing for the write timeout (it does not
	// read), else as gone.
	write := func(op ws.OpCode, p []byte) bool {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		_ = s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		err := wsutil.WriteServerMessage(s.conn, op, p)
		switch {
		case err == nil:
			return true
		case isTimeout(err):
			s.stop("slow")
		default:
			s.stop("gone")
		}
		return false
	}
	for {
		select {
		case <-s.done:
			return
		case <-ping.C:
			if !write(ws.OpPing, nil) {
				return
			}
		case msg := <-s.out:
			if msg == nil {
				write(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
				s.stop("goodbye")
				return
			}
			ok := write(ws.OpText, msg)
			s.queued.Add(-int64(len(msg)))
			if !ok {
				return
			}
		}
	}
}

// lockedWriter lets wsutil's control-frame handler answer pings and close
// frames without interleaving with the writer.
type lockedWriter struct{ s *session }

func (l lockedWriter) Read(p []byte) (int, error) { return l.s.conn.Read(p) }
func (l lockedWriter) Write(p []byte) (int, error) {
	l.s.wmu.Lock()
	defer l.s.wmu.Unlock()
	_ = l.s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return l.s.conn.Write(p)
}

// reader reads and handles messages until the session ends.
func (s *session) reader() {
	max := int64(s.r.cfg.MaxMessage)
	ctl := wsutil.ControlFrameHandler(lockedWriter{s}, ws.StateServerSide)
	rd := &wsutil.Reader{Source: s.in, State: ws.StateServerSide, CheckUTF8: true,
		MaxFrameSize: max, MaxMessageSize: max, OnIntermediate: ctl}
	_ = s.conn.SetReadDeadline(time.Now().Add(s.r.cfg.HelloTimeout))
	for {
		hdr, err := rd.NextFrame()
		if err != nil {
			s.readFailed(err)
			return
		}
		if s.realm != nil {
			_ = s.conn.SetReadDeadline(time.Now().Add(3 * s.r.cfg.PingEvery))
		}
		if hdr.OpCode.IsControl() {
			if err := ctl(hdr, rd); err != nil {
				s.stop("goodbye") // a close frame (answered), or a broken one
				return
			}
			continue
		}
		if hdr.OpCode != ws.OpText {
			s.abort(errProtocolViolation, "protocol", "wamp.2.json carries text frames")
			return
		}
		msg, err := io.ReadAll(rd)
		if err != nil {
			s.readFailed(err)
			return
		}
		if !s.handle(msg) {
			return
		}
	}
}

// readFailed ends the session after a failed read: bad input (too large,
// not UTF-8, a frame RFC 6455 forbids) with an ABORT, as bad WAMP; a
// silence or a connection gone without one.
func (s *session) readFailed(err error) {
	var pe ws.ProtocolError
	switch {
	case err == wsutil.ErrFrameTooLarge || err == wsutil.ErrMessageTooLarge:
		s.abort(errProtocolViolation, "too_large", fmt.Sprintf("a message is at most %d bytes", s.r.cfg.MaxMessage))
	case err == wsutil.ErrInvalidUTF8:
		s.abort(errProtocolViolation, "protocol", "a wamp.2.json message is UTF-8 text")
	case errors.As(err, &pe):
		s.abort(errProtocolViolation, "protocol", "WebSocket: "+string(pe))
	case isTimeout(err) && s.realm == nil:
		s.abort(errProtocolViolation, "timeout", "no HELLO in time")
	case isTimeout(err):
		s.stop("timeout")
	default:
		s.stop("gone")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// abort refuses the session: ABORT, then close. It returns false (the
// reader stops).
func (s *session) abort(uri, why, text string) bool {
	s.finish(encode(mAbort, map[string]any{"message": text}, uri), why)
	return false
}

// handle handles one message; false ends the session.
func (s *session) handle(b []byte) bool {
	m, err := Parse(b)
	if err != nil {
		return s.abort(errProtocolViolation, "protocol", err.Error())
	}
	if m.Type == mAbort { // the client gives up (before WELCOME too): WAMP answers nothing
		s.finish(nil, "goodbye")
		return false
	}
	if s.realm == nil {
		return s.establish(m)
	}
	switch m.Type {
	case mGoodbye:
		s.finish(encode(mGoodbye, details, closeGoodbyeAndOut), "goodbye")
		return false
	case mRegister:
		return s.register(m)
	case mUnregister:
		return s.unregister(m)
	case mCall:
		return s.call(m)
	case mCancel:
		return s.cancel(m)
	case mYield:
		return s.yield(m)
	case mError:
		return s.calleeError(m)
	case mSubscribe:
		return s.subscribe(m)
	case mUnsubscribe:
		return s.unsubscribe(m)
	case mPublish:
		return s.publish(m)
	}
	return s.abort(errProtocolViolation, "protocol", fmt.Sprintf("message type %d is not expected from a client in a session", m.Type))
}

// establish handles HELLO and AUTHENTICATE: the realm's admission.
func (s *session) establish(m Message) bool {
	cfg := &s.r.cfg
	switch {
	case m.Type == mHello && s.key == "":
		name, err := m.URI(0)
		if err != nil {
			return s.abort(errInvalidURI, "protocol", "HELLO: the realm is not a URI")
		}
		d, err := m.Dict(1)
		if err != nil {
			return s.abort(errProtocolViolation, "protocol", err.Error())
		}
		var roles struct {
			Callee struct {
				Features struct {
					CallCanceling bool `json:"call_canceling"`
				} `json:"features"`
			} `json:"callee"`
		}
		_ = json.Unmarshal(d["roles"], &roles)
		s.interrupts = roles.Callee.Features.CallCanceling
		if s.app != "" { // the key came in the URL
			if name != s.app {
				return s.abort(errNotAuthorized, "auth", fmt.Sprintf("the key in this URL admits realm %s only", s.app))
			}
			return s.welcome(name, "ticket", "app")
		}
		if key, ok := cfg.Apps[name]; ok {
			var methods []string
			_ = json.Unmarshal(d["authmethods"], &methods)
			for _, am := range methods {
				if am == "ticket" {
					s.key = key
					s.realmName = name
					s.send(encode(mChallenge, "ticket", details))
					return true
				}
			}
			return s.abort(errNotAuthorized, "auth", fmt.Sprintf("realm %s needs ticket authentication with its application's key", name))
		}
		if name != cfg.Realm && cfg.AppsOnly {
			return s.abort(errNoSuchRealm, "realm", fmt.Sprintf("no realm %s", name))
		}
		return s.welcome(name, "anonymous", "anonymous")
	case m.Type == mAuthenticate && s.key != "":
		var sig string
		if json.Unmarshal(m.Fields[0], &sig) != nil || subtle.ConstantTimeCompare([]byte(sig), []byte(s.key)) != 1 {
			s.guessed()
			return s.abort(errAuthFailed, "auth", "wrong ticket for this realm")
		}
		return s.welcome(s.realmName, "ticket", "app")
	}
	return s.abort(errProtocolViolation, "protocol", fmt.Sprintf("message type %d before the session is established", m.Type))
}

// welcome joins the realm and says WELCOME.
func (s *session) welcome(name, method, role string) bool {
	r := s.r
	r.mu.Lock()
	rm := r.realms[name]
	if rm == nil {
		rm = &realm{name: name, procs: map[string]*registration{}, topics: map[string]*topic{}}
		r.realms[name] = rm
	}
	rm.n++
	s.realm = rm
	s.key = ""
	_ = s.conn.SetReadDeadline(time.Now().Add(3 * r.cfg.PingEvery))
	// WELCOME is queued under mu with realm set: the drain's goodbye
	// sees either no realm (ABORT, queued before it) or WELCOME queued.
	defer r.mu.Unlock()
	s.send(encode(mWelcome, s.id, map[string]any{
		"realm": name, "authid": fmt.Sprint(s.id), "authrole": role, "authmethod": method,
		"roles": map[string]any{
			"dealer": map[string]any{"features": map[string]bool{"call_timeout": true, "call_canceling": true}},
			"broker": map[string]any{"features": map[string]bool{"publisher_exclusion": true}},
		},
	}))
	return true
}

// fail answers a request with ERROR.
func (s *session) fail(reqType int, req uint64, uri, text string) {
	s.send(encode(mError, reqType, req, map[string]any{"message": text}, uri))
}

// request is the request id at field 0, or a protocol violation.
func (s *session) request(m Message) (uint64, bool) {
	id, err := m.ID(0)
	if err != nil {
		s.abort(errProtocolViolation, "protocol", err.Error())
		return 0, false
	}
	return id, true
}

func (s *session) register(m Message) bool {
	req, ok := s.request(m)
	if !ok {
		return false
	}
	if !s.exactOptions(m, req) {
		return true
	}
	proc, err := m.URI(2)
	if err != nil {
		s.fail(mRegister, req, errInvalidURI, err.Error())
		return true
	}
	r := s.r
	r.mu.Lock()
	switch {
	case len(s.regs) >= r.cfg.MaxRegistrations:
		r.mu.Unlock()
		s.fail(mRegister, req, errLimit, fmt.Sprintf("a session registers at most %d procedures", r.cfg.MaxRegistrations))
		return true
	case s.realm.procs[proc] != nil:
		r.mu.Unlock()
		s.fail(mRegister, req, errProcedureExists, "procedure "+proc+" is registered")
		return true
	}
	reg := &registration{id: r.newID(), proc: proc, s: s}
	s.realm.procs[proc] = reg // held, taking no calls, while the fleet is asked
	s.regs[reg.id] = reg
	r.mu.Unlock()
	if r.fleet != nil {
		if err := r.fleet.claim(s.realm.name, proc); err != nil {
			r.mu.Lock()
			r.dropRegistration(reg)
			r.mu.Unlock()
			uri := errProcedureExists
			if errors.Is(err, errStore) {
				uri = errUnavailable
			}
			s.fail(mRegister, req, uri, err.Error())
			return true
		}
	}
	r.mu.Lock()
	reg.ready = true
	s.send(encode(mRegistered, req, reg.id)) // before any INVOCATION for it
	r.mu.Unlock()
	return true
}

// exactOptions checks a REGISTER's or SUBSCRIBE's Options (m's second
// element): a dictionary (else ERROR protocol_violation) asking for no
// match policy other than exact (else ERROR invalid_argument): the router
// matches procedures and topics exactly and announces no pattern-based
// registration or subscription, so a prefix or wildcard one taken as exact
// would never match what its client waits for. false: it answered req
// with the ERROR.
func (s *session) exactOptions(m Message, req uint64) bool {
	opts, err := m.Dict(1)
	if err != nil {
		s.fail(m.Type, req, errProtocolViolation, err.Error())
		return false
	}
	if raw, ok := opts["match"]; ok {
		var match string
		if json.Unmarshal(raw, &match) != nil || match != "exact" {
			s.fail(m.Type, req, errInvalidArgument, fmt.Sprintf("match %s: this router matches URIs exactly only", raw))
			return false
		}
	}
	return true
}

// registered reports whether a session here has registered proc in realm.
func (r *Router) registered(realm, proc string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	rm := r.realms[realm]
	return rm != nil && rm.procs[proc] != nil
}

// dropRegistration removes reg (under r.mu); the caller releases it in
// the fleet.
func (r *Router) dropRegistration(reg *registration) {
	if reg.s.realm.procs[reg.proc] == reg {
		delete(reg.s.realm.procs, reg.proc)
	}
	delete(reg.s.regs, reg.id)
}

func (s *session) unregister(m Message) bool {
	req, ok := s.request(m)
	if !ok {
		return false
	}
	id, err := m.ID(1)
	r := s.r
	r.mu.Lock()
	reg := s.regs[id]
	if err != nil || reg == nil {
		r.mu.Unlock()
		s.fail(mUnregister, req, errNoSuchRegistration, "no such registration")
		return true
	}
	r.dropRegistration(reg)
	r.mu.Unlock()
	if r.fleet != nil {
		r.fleet.release(s.realm.name, reg.proc)
	}
	s.send(encode(mUnregistered, req))
	return true
}

// timeoutOf is the call's timeout: the router's, or the CALL's own option
// (milliseconds) when shorter.
func (r *Router) timeoutOf(opts map[string]json.RawMessage) time.Duration {
	var ms int64
	_ = json.Unmarshal(opts["timeout"], &ms)
	return r.callTimeout(ms)
}

// callTimeout is the router's call timeout, or ms milliseconds when that
// is positive and shorter.
func (r *Router) callTimeout(ms int64) time.Duration {
	if ms > 0 && ms < r.cfg.CallTimeout.Milliseconds() { // compared in ms: ms·10⁶ may overflow
		return time.Duration(ms) * time.Millisecond
	}
	return r.cfg.CallTimeout
}

func (s *session) call(m Message) bool {
	req, ok := s.request(m)
	if !ok {
		return false
	}
	opts, err1 := m.Dict(1)
	proc, err2 := m.URI(2)
	args, kwargs, err3 := m.Payload(3)
	if err := cmp.Or(err1, err3); err != nil {
		s.fail(mCall, req, errProtocolViolation, err.Error())
		return true
	}
	if err2 != nil {
		s.fail(mCall, req, errInvalidURI, err2.Error())
		return true
	}
	r := s.r
	timeout := r.timeoutOf(opts)
	r.mu.Lock()
	if len(s.calling) >= r.cfg.MaxPending {
		r.mu.Unlock()
		r.results["limit"].Inc()
		s.fail(mCall, req, errLimit, fmt.Sprintf("a session has at most %d calls in flight", r.cfg.MaxPending))
		return true
	}
	if reg := s.realm.procs[proc]; reg != nil && reg.ready {
		r.invoke(reg, &call{caller: s, req: req}, timeout, args, kwargs)
		r.mu.Unlock()
		return true
	}
	r.mu.Unlock()
	if r.fleet != nil && r.fleet.forward(s, req, s.realm.name, proc, timeout, args, kwargs) {
		return true
	}
	r.results["no_procedure"].Inc()
	s.fail(mCall, req, errNoSuchProcedure, "no procedure "+proc+" is registered")
	return true
}

// invoke sends c to reg's session as an INVOCATION (under r.mu).
func (r *Router) invoke(reg *registration, c *call, timeout time.Duration, args, kwargs json.RawMessage) {
	c.inv, c.callee = r.newID(), reg.s
	r.calls[c.inv] = c
	reg.s.invocations[c.inv] = c
	if c.caller != nil {
		c.caller.calling[c] = true
	} else {
		r.remote[remoteCall{c.from, c.req}] = c.inv
	}
	c.timer = time.AfterFunc(timeout, func() { r.settle(c.inv, "timeout", nil) })
	reg.s.send(encode(mInvocation, c.inv, reg.id, details, args, kwargs))
}

// answer is how a call ended: a RESULT's or an ERROR's elements after
// the request id.
type answer struct {
	err     string          // "" for a result
	details json.RawMessage // the callee's Details (errors)
	args    json.RawMessage
	kwargs  json.RawMessage
}

// settle ends invocation inv with a (nil: the router's error for result)
// and delivers it to the caller, here or on its node.
func (r *Router) settle(inv uint64, result string, a *answer) {
	r.mu.Lock()
	c := r.calls[inv]
	if c == nil {
		r.mu.Unlock()
		return // settled already (a late YIELD after a timeout)
	}
	delete(r.calls, inv)
	delete(c.callee.invocations, inv)
	if c.caller == nil {
		delete(r.remote, remoteCall{c.from, c.req})
	}
	c.timer.Stop()
	switch {
	case result == "timeout" && !c.killing:
		c.callee.interrupt(inv, "killnowait")
	case result == "error" && c.killing: // the callee's answer to INTERRUPT
		result = "canceled"
	}
	if a == nil {
		a = routerError(result)
	}
	if c.caller != nil {
		delete(c.caller.calling, c)
		c.caller.send(a.message(c.req))
	}
	r.mu.Unlock()
	r.results[result].Inc()
	if c.caller == nil && r.fleet != nil && !c.abandoned {
		r.fleet.answer(c.from, c.req, result, a)
	}
}

// interrupt sends INTERRUPT for invocation inv in mode to a callee that
// announced call_canceling (under r.mu); others get nothing: their late
// answer is dropped.
func (s *session) interrupt(inv uint64, mode string) {
	if s.interrupts {
		s.send(encode(mInterrupt, inv, map[string]any{"mode": mode}))
	}
}

// cancelInvocation ends invocation inv here for its caller's CANCEL in
// mode (skip, kill, killnowait): a callee that announced call_canceling
// gets INTERRUPT unless skip; in kill mode the call then waits for the
// callee's answer (bounded by its timeout), which goes to the caller;
// otherwise it ends now, canceled, and the callee's late answer is
// dropped. abandoned: the caller's node has answered its caller already.
func (r *Router) cancelInvocation(inv uint64, mode string, abandoned bool) {
	r.mu.Lock()
	c := r.calls[inv]
	if c == nil || c.killing {
		r.mu.Unlock()
		return
	}
	if !c.callee.interrupts {
		mode = "skip" // WAMP: a callee without call canceling is skipped
	}
	if mode != "skip" {
		c.callee.interrupt(inv, mode)
	}
	if mode == "kill" {
		c.killing = true
		r.mu.Unlock()
		return
	}
	c.abandoned = abandoned
	r.mu.Unlock()
	r.settle(inv, "canceled", nil)
}

// routerError is the router's answer for a call that did not complete.
func routerError(result string) *answer {
	uri := map[string]string{"timeout": errTimeout, "canceled": errCanceled, "callee_lost": errCanceled,
		"no_procedure": errNoSuchProcedure}[result]
	d, _ := json.Marshal(map[string]string{"message": "call ended: " + result})
	return &answer{err: uri, details: d}
}

// message is the caller's RESULT or ERROR for its request req.
func (a *answer) message(req uint64) []byte {
	if a.err == "" {
		return encode(mResult, req, details, a.args, a.kwargs)
	}
	d := a.details
	if d == nil {
		d = json.RawMessage("{}")
	}
	return encode(mError, mCall, req, d, a.err, a.args, a.kwargs)
}

func (s *session) yield(m Message) bool {
	inv, ok := s.request(m)
	if !ok {
		return false
	}
	args, kwargs, err := m.Payload(2)
	if err != nil {
		return s.abort(errProtocolViolation, "protocol", err.Error())
	}
	if !s.owns(inv) {
		s.r.late.Inc() // ended already: timed out, canceled, interrupted
		return true
	}
	s.r.settle(inv, "ok", &answer{args: args, kwargs: kwargs})
	return true
}

// owns: invocation inv was sent to this session.
func (s *session) owns(inv uint64) bool {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	return s.invocations[inv] != nil
}

// calleeError handles ERROR: only a callee's answer to an INVOCATION is
// routed; errors about other messages are dropped.
func (s *session) calleeError(m Message) bool {
	t, err := m.Int(0)
	if err != nil || t != mInvocation {
		return true
	}
	inv, err1 := m.ID(1)
	d, err2 := m.Dict(2)
	uri, err3 := m.URI(3)
	args, kwargs, err4 := m.Payload(4)
	if err := cmp.Or(err1, err2, err3, err4); err != nil {
		return s.abort(errProtocolViolation, "protocol", err.Error())
	}
	if !s.owns(inv) {
		s.r.late.Inc()
		return true
	}
	raw := marshal(d)
	s.r.settle(inv, "error", &answer{err: uri, details: raw, args: args, kwargs: kwargs})
	return true
}

// cancel answers CANCEL in its mode (Options.mode, default killnowait,
// as nexus's): skip answers the caller wamp.error.canceled now and drops
// the callee's late answer; killnowait does so and sends the callee
// INTERRUPT; kill sends INTERRUPT and answers the caller with the
// callee's answer. A callee that did not announce call_canceling is
// skipped, whatever the mode.
func (s *session) cancel(m Message) bool {
	req, ok := s.request(m)
	if !ok {
		return false
	}
	mode := "killnowait"
	if opts, err := m.Dict(1); err == nil && opts["mode"] != nil {
		_ = json.Unmarshal(opts["mode"], &mode)
	}
	if mode != "skip" && mode != "kill" && mode != "killnowait" {
		s.fail(mCancel, req, errInvalidArgument, "CANCEL mode is skip, kill or killnowait")
		return true
	}
	r := s.r
	r.mu.Lock()
	var found *call
	for c := range s.calling {
		if c.req == req {
			found = c
		}
	}
	r.mu.Unlock()
	if found == nil {
		return true
	}
	if found.callee != nil {
		r.cancelInvocation(found.inv, mode, false)
	} else if r.fleet != nil {
		if mode != "kill" { // in kill mode the callee's node answers
			r.fleet.settleOutbound(found.inv, routerError("canceled"), "canceled")
		}
		r.fleet.abandon(found, mode) // or the callee's node keeps it until its timeout
	}
	return true
}

func (s *session) subscribe(m Message) bool {
	req, ok := s.request(m)
	if !ok {
		return false
	}
	if !s.exactOptions(m, req) {
		return true
	}
	uri, err := m.URI(2)
	if err != nil {
		s.fail(mSubscribe, req, errInvalidURI, err.Error())
		return true
	}
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	tp := s.realm.topics[uri]
	if tp != nil && tp.subs[s] {
		s.send(encode(mSubscribed, req, tp.id))
		return true
	}
	if len(s.subs) >= r.cfg.MaxSubscriptions {
		s.fail(mSubscribe, req, errLimit, fmt.Sprintf("a session subscribes to at most %d topics", r.cfg.MaxSubscriptions))
		return true
	}
	if tp == nil {
		tp = &topic{id: r.newID(), uri: uri, subs: map[*session]bool{}}
		s.realm.topics[uri] = tp
	}
	tp.subs[s] = true
	s.subs[tp.id] = tp
	s.send(encode(mSubscribed, req, tp.id))
	return true
}

func (s *session) unsubscribe(m Message) bool {
	req, ok := s.request(m)
	if !ok {
		return false
	}
	id, _ := m.ID(1)
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	tp := s.subs[id]
	if tp == nil {
		s.fail(mUnsubscribe, req, errNoSuchSubscription, "no such subscription")
		return true
	}
	r.dropSubscription(s, tp)
	s.send(encode(mUnsubscribed, req))
	return true
}

// dropSubscription (under r.mu).
func (r *Router) dropSubscription(s *session, tp *topic) {
	delete(tp.subs, s)
	delete(s.subs, tp.id)
	if len(tp.subs) == 0 {
		delete(s.realm.topics, tp.uri)
	}
}

func (s *session) publish(m Message) bool {
	req, ok := s.request(m)
	if !ok {
		return false
	}
	opts, err := m.Dict(1)
	if err != nil { // without Options, whether an ERROR is awaited is unknown
		return s.abort(errProtocolViolation, "protocol", err.Error())
	}
	// Only an acknowledged PUBLISH is answered, ERROR included: a
	// publisher keeps no request for one that is not (autobahn-js takes
	// an ERROR for an unknown request as a protocol violation).
	var ack bool
	_ = json.Unmarshal(opts["acknowledge"], &ack)
	uri, err2 := m.URI(2)
	args, kwargs, err3 := m.Payload(3)
	if err3 != nil {
		if ack {
			s.fail(mPublish, req, errProtocolViolation, err3.Error())
		}
		return true
	}
	if err2 != nil {
		if ack {
			s.fail(mPublish, req, errInvalidURI, err2.Error())
		}
		return true
	}
	for _, o := range audienceOptions {
		if _, ok := opts[o]; ok {
			if ack {
				s.fail(mPublish, req, errOptionNotAllowed, "this broker does not choose subscribers: "+o)
			}
			return true
		}
	}
	excludeMe := true
	if v, ok := opts["exclude_me"]; ok {
		_ = json.Unmarshal(v, &excludeMe)
	}
	r := s.r
	pub := r.newID()
	var skip *session
	if excludeMe {
		skip = s
	}
	r.deliver(s.realm.name, uri, pub, skip, args, kwargs)
	if r.fleet != nil {
		r.fleet.publish(s.realm.name, uri, pub, args, kwargs)
	}
	if ack {
		s.send(encode(mPublished, req, pub))
	}
	return true
}

// audienceOptions are PUBLISH options that choose its subscribers
// (subscriber black- and whitelisting), which the broker neither
// implements nor announces: a PUBLISH naming one is refused, as
// delivering it to every subscriber would reach those it excludes.
var audienceOptions = []string{"eligible", "exclude", "eligible_authid", "exclude_authid", "eligible_authrole", "exclude_authrole"}

// deliver sends EVENT to this node's subscribers of topic uri in realm
// name, but skip.
func (r *Router) deliver(name, uri string, pub uint64, skip *session, args, kwargs json.RawMessage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rm := r.realms[name]
	if rm == nil || rm.topics[uri] == nil {
		return
	}
	tp := rm.topics[uri]
	ev := encode(mEvent, tp.id, pub, details, args, kwargs) // the same bytes for every subscriber
	for sub := range tp.subs {
		if sub != skip {
			sub.send(ev)
		}
	}
}

// leave removes an ended session's state: its registrations (released in
// the fleet), subscriptions, and calls — a caller waiting on it gets
// wamp.error.canceled, its own calls are forgotten (counted canceled
// here, as a caller's node's cancel is; told to their nodes elsewhere).
func (r *Router) leave(s *session) {
	s.stop("gone")
	r.mu.Lock()
	delete(r.sessions, s)
	var procs []string
	var lost []uint64
	var dropped []*call // outbound: their nodes are told
	canceled := 0       // calls to a callee here: ended as canceled
	if s.realm != nil {
		for _, reg := range s.regs {
			r.dropRegistration(reg)
			procs = append(procs, reg.proc)
		}
		for _, tp := range s.subs {
			r.dropSubscription(s, tp)
		}
		for inv := range s.invocations {
			lost = append(lost, inv)
		}
		for c := range s.calling {
			if c.callee != nil {
				delete(r.calls, c.inv)
				delete(c.callee.invocations, c.inv)
				if !c.killing {
					c.callee.interrupt(c.inv, "killnowait")
				}
				canceled++
			} else {
				delete(r.outbound, c.inv)
				dropped = append(dropped, c)
			}
			c.timer.Stop()
		}
		s.calling = nil
		if s.realm.n--; s.realm.n == 0 {
			delete(r.realms, s.realm.name)
		}
	}
	r.mu.Unlock()
	r.results["canceled"].Add(canceled)
	for _, inv := range lost {
		r.settle(inv, "callee_lost", nil)
	}
	if r.fleet != nil {
		for _, p := range procs {
			r.fleet.release(s.realm.name, p)
		}
		for _, c := range dropped {
			r.fleet.abandon(c, "killnowait")
		}
	}
	why, _ := s.reason.Load().(string)
	if c := r.closed[why]; c != nil {
		c.Inc()
	}
}

// signalDocs documents the signalling router's metric families.
var signalDocs = map[string]relay.MetricDoc{
	"meetpoint_signal_sessions":           {Type: "gauge", Help: "WAMP sessions on this relay (signalling)."},
	"meetpoint_signal_registrations":      {Type: "gauge", Help: "WAMP procedures registered on this relay."},
	"meetpoint_signal_closed_total":       {Type: "counter", Help: "WAMP sessions ended, by reason."},
	"meetpoint_signal_calls_total":        {Type: "counter", Help: "WAMP calls routed by this relay to a callee here, by result."},
	"meetpoint_signal_forwarded_total":    {Type: "counter", Help: "WAMP calls this relay's callers made to a callee on another node of the fleet, by result."},
	"meetpoint_signal_late_answers_total": {Type: "counter", Help: "WAMP answers (YIELD, ERROR) from callees to invocations already ended (timed out, canceled, interrupted), dropped."},
}
