// Package tunnelproxy serves nymea's TunnelProxy API (nymea 1.x) on a
// meetpoint relay: a device registers once as a server
// (TunnelProxy.RegisterServer) and any number of clients reach it
// (TunnelProxy.RegisterClient). The server connection then carries SLIP
// frames [addr][payload]: address 0 is JSON-RPC between the relay and the
// server, 1..0xFFFE are clients.
//
// A server and all its clients form a hub that lives on one of the relay's
// loops, so the hub needs no locks. Backpressure policy:
//   - client → server: a client is read only while less than serverHigh
//     bytes wait for the server; a slow server slows every client fairly
//     through TCP flow control. A client that registers meanwhile is
//     answered but announced (ClientConnected, with its name) only once
//     the backlog is below serverHigh again, and the server is not timed
//     out as silent while the relay does not read it for its backlog.
//   - server → client: the server's data is forwarded as it arrives,
//     whatever the size of its SLIP frames (only JSON-RPC on address 0 is
//     held whole, up to Config.MaxMessage). A client whose backlog reaches
//     Config.ClientBuffer holds the server up: the server is not read (TCP
//     flow control slows it) until that client has taken half of it. A
//     client that holds it up for WriteStallTimeout is disconnected (never
//     the server), and the server gets ClientDisconnected.
package tunnelproxy

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// Config is the TunnelProxy section of a relay's configuration.
type Config struct {
	// ServerTimeout closes a registered server silent this long (its
	// client pings every 30 s).
	ServerTimeout time.Duration
	// ClientBuffer is the backlog of one client at which the relay stops
	// reading its server until the client has taken half of it; a client
	// that keeps the server stopped for WriteStallTimeout is disconnected
	// (never the server).
	ClientBuffer int
	// MaxMessage bounds a JSON-RPC message a server sends on address 0,
	// the only SLIP frames the relay must hold whole (data frames are
	// forwarded as they arrive, whatever their size); a server that sends
	// a bigger one is closed.
	MaxMessage int
	// WriteStallTimeout closes a server or client that accepts nothing
	// this long while data waits for it.
	WriteStallTimeout time.Duration
	// MaxClients is the most clients one server may have (0: every
	// address but 0 and 0xFFFF, 65534).
	MaxClients int
	// Settle delays a raw TCP (or TLS) client's ClientConnected to its
	// server until this long after the client's RegisterClient reply was
	// written, so no server data can share a read with the reply: nymea's
	// client library parses a read only if it ends in "}\n" and stalls
	// otherwise. It applies to clients that called RemoteProxy.Hello
	// first, as nymea's library always does. 0 turns it off. serve sets it
	// from --tcp-settle.
	Settle time.Duration
}

// DefaultConfig is nymea's behaviour: a 60 s dead-server timeout, and the
// relay's 10 s write-stall timeout and 10 ms settle window.
func DefaultConfig() Config {
	return Config{ServerTimeout: 60 * time.Second, ClientBuffer: 1 << 20, MaxMessage: 64 << 10,
		WriteStallTimeout: 10 * time.Second, Settle: 10 * time.Millisecond}
}

// Validate reports the first invalid field, naming its flag.
func (c *Config) Validate() error {
	switch {
	case c.ServerTimeout <= 0:
		return fmt.Errorf("tp-server-timeout: must be positive, got %v", c.ServerTimeout)
	case c.ClientBuffer < 64<<10:
		return fmt.Errorf("tp-client-buffer: must be at least 65536, got %d", c.ClientBuffer)
	case c.MaxMessage < 1024:
		return fmt.Errorf("tp-max-message: must be at least 1024, got %d", c.MaxMessage)
	case c.WriteStallTimeout <= 0:
		return fmt.Errorf("write-stall-timeout: must be positive, got %v", c.WriteStallTimeout)
	case c.MaxClients < 0 || c.MaxClients > 0xFFFE:
		return fmt.Errorf("tp-max-clients: must be between 0 and 65534, got %d", c.MaxClients)
	case c.Settle < 0 || c.Settle > time.Second:
		return fmt.Errorf("tcp-settle: must be between 0 and 1s, got %v", c.Settle)
	}
	return nil
}

const (
	// serverHigh bounds bytes waiting for the server before clients are
	// no longer read.
	serverHigh = 256 << 10
	// clientRead is the most read from a client at once.
	clientRead = 16 << 10
)

// Service is the TunnelProxy API on one relay.
type Service struct {
	srv *relay.Server
	cfg Config
	log *slog.Logger
	reg *registry
	m   tpMetrics
	dir Directory // nil: this node only

	// meshMu guards meshClients: the clients here that are mesh links
	// from other nodes (their clients), by that node; counted from the
	// hub's addClient to its release of the socket.
	meshMu      sync.Mutex
	meshClients map[string]int

	// inputHook, set by tests before the relay starts, runs on every
	// chunk a hub reads from its server or a client (deframe), inside
	// the hub's fault barrier.
	inputHook func(p []byte)
}

// tpMetrics are the service's counters.
type tpMetrics struct {
	set                    *metrics.Set
	servers, clients       *metrics.Counter // gauges
	bytes                  *metrics.Counter // read from servers and clients
	registered, refused    *metrics.Counter
	clientsTotal, dropSlow *metrics.Counter
	remote                 *metrics.Counter // clients bridged to a server on another node
}

// New serves the TunnelProxy API on srv: it registers the TunnelProxy
// methods, its report and its drain behaviour. Call it before srv.Start.
func New(srv *relay.Server, cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxClients == 0 {
		cfg.MaxClients = 0xFFFE
	}
	s := &Service{srv: srv, cfg: cfg, log: srv.Logger(), reg: newRegistry(int32(cfg.MaxClients))}
	set := metrics.NewSet()
	s.m = tpMetrics{set: set,
		servers:      set.NewCounter(`meetpoint_tunnelproxy_servers_active`),
		clients:      set.NewCounter(`meetpoint_tunnelproxy_clients_active`),
		bytes:        set.NewCounter(`meetpoint_tunnelproxy_bytes_total`),
		registered:   set.NewCounter(`meetpoint_tunnelproxy_registrations_total{result="ok"}`),
		refused:      set.NewCounter(`meetpoint_tunnelproxy_registrations_total{result="refused"}`),
		clientsTotal: set.NewCounter(`meetpoint_tunnelproxy_clients_total`),
		dropSlow:     set.NewCounter(`meetpoint_tunnelproxy_clients_dropped_total{reason="slow"}`),
		remote:       set.NewCounter(`meetpoint_tunnelproxy_remote_clients_total`),
	}
	srv.HandleMethod("TunnelProxy.RegisterServer", s.registerServer)
	srv.HandleMethod("TunnelProxy.RegisterClient", s.registerClient)
	srv.HandleMethod("TunnelProxy.Ping", s.ping)
	srv.HandleMethod("TunnelProxy.DisconnectClient", s.disconnectUnregistered)
	srv.AddReporter(s)
	srv.AddMetrics(set, tpDocs)
	srv.OnDrain(s.drain)
	return s, nil
}

// registry holds TunnelProxy registrations: every uuid in use, as server or
// client, and the hubs by server uuid.
type registry struct {
	max   int32 // clients per server
	mu    sync.Mutex
	uuids map[string]bool
	hubs  map[string]*hub
	// leases are the directory's holds on server uuids (with a Directory).
	leases map[*hub]relay.Lease
}

func newRegistry(max int32) *registry {
	return &registry{max: max, uuids: make(map[string]bool), hubs: make(map[string]*hub), leases: make(map[*hub]relay.Lease)}
}

// addServer registers a hub for uuid; nil if the uuid is in use.
func (r *registry) addServer(s *Service, uuid, name string) *hub {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.uuids[uuid] {
		return nil
	}
	r.uuids[uuid] = true
	h := &hub{s: s, uuid: uuid, name: name, clients: make(map[uint16]*tpEnd), next: 1, l: s.srv.Loop(uuid),
		rpc: handshake.SLIPHold{Max: s.cfg.MaxMessage}}
	r.hubs[uuid] = h
	return h
}

// addClient reserves a client uuid for hub serverUUID.
func (r *registry) addClient(clientUUID, serverUUID string) (*hub, handshake.TunnelProxyError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hubs[serverUUID]
	switch {
	case h == nil:
		return nil, handshake.TunnelProxyErrorServerNotFound
	case r.uuids[clientUUID]:
		return nil, handshake.TunnelProxyErrorAlreadyRegistered
	case h.nclients.Load() >= r.max:
		return nil, handshake.TunnelProxyErrorInternalServerError
	}
	r.uuids[clientUUID] = true
	h.nclients.Add(1)
	return h, handshake.TunnelProxyErrorNoError
}

func (r *registry) release(uuid string) {
	r.mu.Lock()
	delete(r.uuids, uuid)
	r.mu.Unlock()
}

func (r *registry) removeHub(h *hub) {
	r.mu.Lock()
	if r.hubs[h.uuid] == h {
		delete(r.hubs, h.uuid)
		delete(r.uuids, h.uuid)
	}
	lease := r.leases[h]
	delete(r.leases, h)
	r.mu.Unlock()
	if lease != nil {
		lease.Release()
	}
}

// setLease records the directory's hold on h's uuid (released with h; at
// once if h is already gone).
func (r *registry) setLease(h *hub, l relay.Lease) {
	r.mu.Lock()
	live := r.hubs[h.uuid] == h
	if live {
		r.leases[h] = l
	}
	r.mu.Unlock()
	if !live {
		l.Release()
	}
}

// all is every hub registered now.
func (r *registry) all() []*hub {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs := make([]*hub, 0, len(r.hubs))
	for _, h := range r.hubs {
		hs = append(hs, h)
	}
	return hs
}

// refuse answers a registration with an error value and closes.
func (s *Service) refuse(c relay.Conn, id int, server bool, e handshake.TunnelProxyError) {
	s.log.Debug("tunnelproxy registration refused", "peer", c.Peer().String(), "error", e.String())
	s.m.refused.Inc()
	c.Reply(refusal(id, server, e))
	c.Refuse(reason.RPC, ws.StatusPolicyViolation, e.String())
}

// forbid answers a registration the access rules refuse: ForbiddenCall,
// then a close counted as access_denied.
func (s *Service) forbid(c relay.Conn, id int, server bool) {
	s.m.refused.Inc()
	c.Reply(refusal(id, server, handshake.TunnelProxyErrorForbiddenCall))
	c.Refuse(reason.AccessDenied, ws.StatusPolicyViolation, handshake.TunnelProxyErrorForbiddenCall.String())
}

// refusal is the reply to a registration that failed with e. A
// RegisterServer reply always carries slipEnabled (false here), as
// nymea's does: its clients and tests look for the key.
func refusal(id int, server bool, e handshake.TunnelProxyError) []byte {
	if server {
		return handshake.AppendSuccess(nil, id, handshake.Bool("slipEnabled", false),
			handshake.Str("tunnelProxyError", e.String()))
	}
	return handshake.AppendSuccess(nil, id, handshake.Str("tunnelProxyError", e.String()))
}

// registerServer makes the connection a TunnelProxy server: it leaves the
// engine for a hub on a loop, which sends the reply.
func (s *Service) registerServer(c relay.Conn, req *handshake.Request) {
	uuid, ok := handshake.ParseUUID(param(req, "serverUuid"))
	if !ok {
		s.refuse(c, req.ID, true, handshake.TunnelProxyErrorInvalidUuid)
		return
	}
	if !s.srv.Allow(c.Identity(), relay.ActionTPRegister, uuid) {
		s.forbid(c, req.ID, true)
		return
	}
	name := param(req, "serverName")
	h := s.reg.addServer(s, uuid, name)
	if h == nil {
		s.refuse(c, req.ID, true, handshake.TunnelProxyErrorAlreadyRegistered)
		return
	}
	if s.dir != nil {
		c.Claim(dirServer{hubServer{h: h, replyID: req.ID}}, uuid, name)
		return
	}
	s.m.registered.Inc()
	c.Claim(hubServer{h: h, replyID: req.ID}, uuid, name)
}

// registerClient attaches the connection to a registered server's hub.
func (s *Service) registerClient(c relay.Conn, req *handshake.Request) {
	s.registerClientAs(c, req, false)
}

// registerClientAs is registerClient; mesh: the request comes from another
// node, for its client (no access check here, and never forwarded again).
func (s *Service) registerClientAs(c relay.Conn, req *handshake.Request, mesh bool) {
	cu, ok1 := handshake.ParseUUID(param(req, "clientUuid"))
	su, ok2 := handshake.ParseUUID(param(req, "serverUuid"))
	if !ok1 || !ok2 {
		s.refuse(c, req.ID, false, handshake.TunnelProxyErrorInvalidUuid)
		return
	}
	if !mesh && !s.srv.Allow(c.Identity(), relay.ActionTPReach, su) {
		s.forbid(c, req.ID, false)
		return
	}
	h, res := s.reg.addClient(cu, su)
	name := param(req, "clientName")
	if h == nil && res == handshake.TunnelProxyErrorServerNotFound && s.dir != nil && !mesh {
		c.Claim(dirClient{s: s, replyID: req.ID, server: su, uuid: cu, name: name, identity: c.Identity().String()}, cu, name)
		return
	}
	if h == nil {
		s.refuse(c, req.ID, false, res)
		return
	}
	s.m.registered.Inc()
	c.Claim(hubClient{h: h, replyID: req.ID, uuid: cu, name: name}, cu, name)
}

// ping answers TunnelProxy.Ping before a registration.
func (s *Service) ping(c relay.Conn, req *handshake.Request) {
	ts, _ := req.Uint("timestamp")
	c.Reply(handshake.AppendSuccess(nil, req.ID, handshake.Int("timestamp", int64(ts))))
}

// disconnectUnregistered answers DisconnectClient from a connection that
// is no registered server.
func (s *Service) disconnectUnregistered(c relay.Conn, req *handshake.Request) {
	c.Reply(handshake.AppendSuccess(nil, req.ID,
		handshake.Str("tunnelProxyError", handshake.TunnelProxyErrorNotRegistered.String())))
}

func param(req *handshake.Request, key string) string {
	v, _ := req.Param(key)
	return v
}

// drain closes servers that have no client: they carry no user session
// (a server whose last client leaves during the drain closes then).
func (s *Service) drain() {
	for _, h := range s.reg.all() {
		h.l.Do(func() {
			if h.nclients.Load() == 0 {
				h.close(reason.Shutdown)
			}
		})
	}
}

// Report implements relay.Reporter: each hub is described by its loop
// (which owns it); a loop that does not answer within a second is left
// out.
func (s *Service) Report(snap *relay.Snapshot) {
	hubs := s.reg.all()
	out := make(chan relay.TPServerInfo, len(hubs))
	var n atomic.Int32
	for _, h := range hubs {
		if h.l.Do(func() {
			if h.started && !h.dead {
				out <- h.info()
			} else {
				out <- relay.TPServerInfo{}
			}
		}) {
			n.Add(1)
		}
	}
	timeout := time.After(time.Second)
	for range n.Load() {
		select {
		case hi := <-out:
			if hi.UUID != "" {
				snap.TPServers = append(snap.TPServers, hi)
			}
		case <-timeout:
			return
		}
	}
	sort.Slice(snap.TPServers, func(i, j int) bool { return snap.TPServers[i].UUID < snap.TPServers[j].UUID })
}

// Traffic implements relay.Reporter.
func (s *Service) Traffic() uint64 { return s.m.bytes.Get() }

var tpDocs = map[string]relay.MetricDoc{
	"meetpoint_tunnelproxy_servers_active":        {Type: "gauge", Help: "TunnelProxy servers registered now."},
	"meetpoint_tunnelproxy_clients_active":        {Type: "gauge", Help: "TunnelProxy clients connected to a server now."},
	"meetpoint_tunnelproxy_bytes_total":           {Type: "counter", Help: "Bytes relayed between TunnelProxy clients and servers, both ways."},
	"meetpoint_tunnelproxy_registrations_total":   {Type: "counter", Help: "TunnelProxy registrations (servers and clients), by result."},
	"meetpoint_tunnelproxy_clients_total":         {Type: "counter", Help: "TunnelProxy clients connected since start."},
	"meetpoint_tunnelproxy_remote_clients_total":  {Type: "counter", Help: "TunnelProxy clients of this node bridged to their server on another node of the fleet."},
	"meetpoint_tunnelproxy_clients_dropped_total": {Type: "counter", Help: "TunnelProxy clients disconnected by the relay, by reason (slow: held its server up, by a full backlog, for the write-stall timeout)."},
}

// info describes the hub. Loop goroutine only.
func (h *hub) info() relay.TPServerInfo {
	e := h.srv
	hi := relay.TPServerInfo{UUID: h.uuid, Name: h.name, Address: e.peer, RxBytes: e.rx, TxBytes: e.tx}
	for _, c := range h.clients {
		hi.Clients = append(hi.Clients, relay.TPClientInfo{SocketAddress: c.addr, UUID: c.uuid, Name: c.name,
			Address: c.peer, RxBytes: c.rx, TxBytes: c.tx})
	}
	sort.Slice(hi.Clients, func(i, j int) bool { return hi.Clients[i].SocketAddress < hi.Clients[j].SocketAddress })
	return hi
}
