// Package relay is meetpoint's engine: its event loops (package loop)
// accept connections, walk each through sniff → handshake → rpc → pair on
// the loop that accepted it, and forward paired sockets with splice(2) or
// pooled buffers. A socket has one owner from accept to close.
//
// Goroutines: a fixed number of loops. An idle connection, paired or not,
// holds none; authenticators, the TLS handshake gate and net/http hand-offs
// run on goroutines of their own.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/internal/strict"
	"github.com/meetpoint/meetpoint/relay/limits"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Server is a meetpoint relay. Create it with NewServer, then Start it.
type Server struct {
	urlSubscribe func(c Conn, token string, channels []string) // HandleURLSubscribe
	cfg          Config
	log          *slog.Logger
	reg          Registry
	fleet        Fleet // nil: one node (SetFleet)
	stats        *stats
	loops        []*loop.Loop                // the data plane: accept, pre-tunnel stages, tunnels, TLS sessions, TunnelProxy hubs
	tlsGate      *loop.Gate[tlsJob]          // bounds TLS handshakes in flight
	tlsShares    limits.Shares               // TLS handshakes in flight (running or waiting) per address key
	httpShares   [handoffKinds]limits.Shares // handed-off connections per kind and address key
	lim          *limits.Limiter
	live         *liveSet // every socket the server holds (tickets not ended)
	// userTimeoutPerConn: a listener refused TCP_USER_TIMEOUT, so each
	// accepted socket is given it (set by Start).
	userTimeoutPerConn bool
	// tunnelRate is Limits.TunnelRate, changeable while running.
	tunnelRate atomic.Int64
	quit       chan struct{} // closed by Close
	seed       maphash.Seed  // for Loop

	// Registered by subsystems before Start.
	methods      map[string]MethodHandler
	reporters    []Reporter
	metricSets   []*metrics.Set         // AddMetrics: subsystems' metric sets,
	metricDocs   []map[string]MetricDoc // and their families' docs
	drainHooks   []func()
	readiness    []readinessCheck
	deps         []*Dependency // AddDependency
	mux          *http.ServeMux
	subprotocols map[string]http.Handler
	handoffs     [handoffKinds]*loop.Handoff // nil: that kind is not served
	httpSrv      *http.Server
	h2mu         sync.Mutex
	h2conns      map[*tls.Conn]*loop.HandedConn // HTTP/2 connections handed to net/http
	draining     atomic.Bool                    // Shutdown has begun

	// The fault barriers' test knobs (feed, pairFault): faultsFatal
	// raises every panic they catch again (from strict.Faults, which tests
	// set); inputHook, set by a test before Start, runs on
	// each chunk of a connection's input inside the barrier; timerHook
	// on each firing of a connection's stage timer, inside its barrier.
	faultsFatal bool
	inputHook   func(p []byte)
	timerHook   func()
	faultLogs   rate.Sometimes // which contained panics are logged with their stack (logFault)
	limitLogs   rate.Sometimes // which refusals at a connection limit are logged at warn (admit)

	mu        sync.Mutex
	listeners []*loop.Listener
	started   bool
	closed    bool
	// conns holds every connection still on its transport (before its
	// tunnel or hand-off), so Close can end them and Snapshot can list them.
	conns map[*conn]struct{}
	// tunnels holds every tunnel a forwarder has started and not torn down.
	tunnels map[*tunnel]struct{}
	// meshPeers counts the tracked tunnels that cross the mesh, by the
	// fleet node at their far end (MeshPeers).
	meshPeers map[string]int
	nextID    uint64
	// meshSessions are the subsystems' sessions across the mesh
	// (AddMeshSessions); set before Start, read-only after.
	meshSessions []MeshSessions

	// introspection is the Introspect reply's params, built once from
	// methods.
	introspection func() []byte
}

// NewServer validates cfg and prepares a server. It does not listen yet.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Loops == 0 {
		cfg.Loops = runtime.GOMAXPROCS(0)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TLS != nil {
		// TLS 1.3 sessions move to the record layer of our own after
		// their handshake (loop.OwnRecords). Each reply leaves in one
		// record, as nymea's do: Go otherwise starts a connection with
		// ~1 KiB records, and clients that read a reply in one go
		// (nymea's) get half an Introspect.
		cfg.TLS = loop.OwnRecords(cfg.TLS)
		cfg.TLS.DynamicRecordSizingDisabled = true
	}
	s := &Server{
		cfg:         cfg,
		log:         cfg.Logger,
		reg:         NewShardedRegistry(),
		stats:       newStats(),
		conns:       make(map[*conn]struct{}),
		faultsFatal: strict.Faults.Load(),
		faultLogs:   rate.Sometimes{First: faultStacks, Interval: time.Minute},
		limitLogs:   rate.Sometimes{First: 1, Interval: 10 * time.Second},
		tunnels:     make(map[*tunnel]struct{}), meshPeers: make(map[string]int),
		lim:     limits.New(cfg.Limits),
		live:    newLiveSet(),
		quit:    make(chan struct{}),
		seed:    maphash.MakeSeed(),
		methods: make(map[string]MethodHandler),
		mux:     http.NewServeMux(),
		h2conns: make(map[*tls.Conn]*loop.HandedConn),

		subprotocols: make(map[string]http.Handler),
	}
	s.tlsGate = &loop.Gate[tlsJob]{Max: cfg.MaxTLSHandshakes, Run: s.handshakeTLS, Queued: s.stats.tlsQueued,
		Deadline: func(j tlsJob) time.Time { return j.at.Add(s.cfg.TLSHandshakeTimeout) },
		Refuse: func(j tlsJob) {
			s.log.Debug("TLS handshake refused: too many at once", "peer", j.peer.String())
			s.tlsShares.Give(j.tk.key)
			unix.Close(j.fd)
			j.tk.End(reason.LimitTLS)
		}}
	s.tunnelRate.Store(cfg.Limits.TunnelRate)
	s.introspection = sync.OnceValue(func() []byte {
		return handshake.IntrospectFor(func(m string) bool {
			switch m {
			case "RemoteProxy.Hello", "RemoteProxy.Introspect", "Authentication.Authenticate": // handle answers these
				return true
			}
			return s.methods[m] != nil
		})
	})
	return s, nil
}

// newLoop is loop.New (a variable so a test can make it fail).
var newLoop = loop.New

// Start binds every listen address and starts serving. On any failure it
// returns the error having undone everything it did: no listener stays
// bound, no goroutine runs, and Start may be tried again. A server that
// started (or was closed) does not start again.
func (s *Server) Start() (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return errors.New("relay: server already started")
	}
	var (
		lns   []*loop.Listener
		loops []*loop.Loop
	)
	defer func() {
		if err == nil {
			return
		}
		for _, l := range lns { // not served yet: just close them
			l.Close()
		}
		for _, l := range loops { // not running yet: just free them
			l.Close()
		}
	}()
	for _, addr := range s.cfg.Listen {
		ln, err := loop.Listen(addr, s.cfg.MultipathTCP)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		lns = append(lns, ln)
		if err := s.cfg.Keepalive.applyKeepalive(ln.Fd()); err != nil { // inherited by every accepted socket
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		// Inherited too where the listener takes it; an MPTCP listener
		// (Config.MultipathTCP) refuses it, and then each accepted socket
		// gets it: a system call per client.
		s.userTimeoutPerConn = s.userTimeoutPerConn || s.cfg.Keepalive.applyUserTimeout(ln.Fd()) != nil
	}
	lcfg := loop.Config{Log: s.log, MaxBuffer: s.cfg.MaxBuffer, WriteStallTimeout: s.cfg.WriteStallTimeout,
		Rate: &s.tunnelRate, Spliced: s.stats.splicedBytes, Buffered: s.stats.bufferedBytes, Throttled: s.stats.throttled,
		NoPipe: s.stats.noPipe, Fault: s.pairFault}
	for range s.cfg.Loops {
		l, err := newLoop(lcfg)
		if err != nil {
			return fmt.Errorf("loop: %w", err)
		}
		loops = append(loops, l)
	}
	// Everything is in place: from here on nothing fails.
	s.started = true
	s.loops, s.listeners = loops, lns
	for _, l := range loops {
		go l.Run()
	}
	go s.janitor()
	s.startHTTP()
	for _, ln := range lns {
		_ = ln.Serve(loops, s.accept) // not closed yet: it cannot fail
	}
	return nil
}

// Addrs returns the bound listen addresses (useful with port 0).
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]net.Addr, len(s.listeners))
	for i, ln := range s.listeners {
		out[i] = ln.Addr()
	}
	return out
}

// Reload re-reads what the server reads from disk: the authenticator's
// token file or HMAC key and the access rules. On error the old state
// stays in force and the errors are returned.
func (s *Server) Reload() error {
	commit, err := s.PrepareReload()
	if err == nil {
		commit()
	}
	return err
}

// PrepareReload reads the authenticator's and the access rules' files
// again (those that are Reloaders) without putting them in force: commit
// does, for all of them at once; on an error nothing changes. A Reloader
// that cannot stage (not a StagedReloader) reloads here, once the staged
// parts have read without error: its error is returned and nothing staged
// is put in force, but what it reloaded itself stays.
func (s *Server) PrepareReload() (commit func(), err error) {
	var commits []func()
	var errs []error
	var plain []Reloader
	for _, p := range []any{s.cfg.Auth, s.cfg.Access} {
		switch r := p.(type) {
		case StagedReloader:
			c, err := r.PrepareReload()
			if err != nil {
				errs = append(errs, err)
				continue
			}
			commits = append(commits, c)
		case Reloader:
			plain = append(plain, r)
		}
	}
	if len(errs) == 0 {
		for _, r := range plain {
			errs = append(errs, r.Reload())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return func() {
		for _, c := range commits {
			c()
		}
	}, nil
}

// Close stops listening and closes every connection and tunnel at once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.quit)
	lns := s.listeners
	s.mu.Unlock()
	for _, ln := range lns { // no new connections from here on
		ln.Close()
	}
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.shutdown()
	}
	for _, l := range s.loops {
		l.Stop()
	}
	if s.httpSrv != nil {
		s.httpSrv.Close()
	}
	for _, h := range s.handoffs {
		if h != nil {
			h.Close()
		}
	}
	return nil
}

// register gives c its id and counts it among the server's connections;
// false once the server is draining or closed (c is then refused).
func (s *Server) register(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.draining.Load() {
		return false
	}
	s.nextID++
	c.id = s.nextID
	s.conns[c] = struct{}{}
	return true
}

// unregister forgets c.
func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// pickLoop spreads sockets over the loops.
func (s *Server) pickLoop(fd int) *loop.Loop {
	return s.loops[fd%len(s.loops)]
}

// goodbye lets go of a socket the server owns, from any goroutine, on the
// loop its descriptor maps to (loop.Loop.Goodbye).
func (s *Server) goodbye(sk loop.Sock, final []byte, linger bool, tk *ticket, r reason.Reason) {
	s.pickLoop(sk.Fd()).GoodbyeFrom(sk, final, linger, tk, r)
}

// registerTunnel gives t its id and lists it (monitors, drain, and the
// count of tunnels per far node of the fleet).
func (s *Server) registerTunnel(t *tunnel) {
	far := t.farNode()
	s.mu.Lock()
	s.nextID++
	t.id = s.nextID
	s.tunnels[t] = struct{}{}
	if far != "" {
		s.meshPeers[far]++
	}
	s.mu.Unlock()
}

// unregisterTunnel forgets t.
func (s *Server) unregisterTunnel(t *tunnel) {
	far := t.farNode()
	s.mu.Lock()
	if _, ok := s.tunnels[t]; ok {
		delete(s.tunnels, t)
		if far != "" {
			if s.meshPeers[far]--; s.meshPeers[far] <= 0 {
				delete(s.meshPeers, far)
			}
		}
	}
	s.mu.Unlock()
}

// Ready reports whether the server accepts new clients (false while
// draining or closed).
func (s *Server) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.closed && !s.draining.Load() && len(s.listeners) > 0
}

// Shutdown drains the server: it stops accepting, closes clients that have
// no tunnel yet, TunnelProxy servers that have no client and HTTP
// connections between requests (the others after their request), then waits
// until every socket the server holds is gone (tunnels ending, TunnelProxy
// clients leaving; a server whose last client leaves is closed) or ctx is
// done, and then closes what is left. It returns ctx.Err() if
// connections had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining.Store(true)
	lns := s.listeners
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	for _, c := range conns {
		c.shutdown()
	}
	for _, fn := range s.drainHooks {
		fn()
	}
	if s.httpSrv != nil {
		// net/http closes its idle connections (a keep-alive client
		// between requests would otherwise hold the drain until
		// HTTPIdleTimeout), the others once their request is answered,
		// and tells HTTP/2 clients GOAWAY. Close ends what is left.
		go s.httpSrv.Shutdown(ctx)
	}
	var err error
	select {
	case <-s.live.wait():
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.Close()
	return err
}

// janitor forgets idle per-address limiter state.
func (s *Server) janitor() {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			s.lim.Sweep()
		}
	}
}
