package relay

import (
	"hash/maphash"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/pool"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// TunnelProxy API (nymea 1.x): a device registers once as a server
// (TunnelProxy.RegisterServer) and any number of clients reach it
// (TunnelProxy.RegisterClient). The server connection then carries SLIP
// frames [addr][payload]: address 0 is JSON-RPC between the relay and the
// server, 1..0xFFFE are clients.
//
// A server and all its clients form a hub that lives on one forwarding loop,
// so the hub needs no locks. Backpressure policy:
//   - client → server: a client is read only while less than tpServerHigh
//     bytes wait for the server; a slow server slows every client fairly
//     through TCP flow control.
//   - server → client: the server's stream cannot be paused for one client
//     without stalling the others, so each client may have at most
//     TPClientBuffer bytes waiting; beyond that that client (never the
//     server) is disconnected and the server gets ClientDisconnected.

// tpMaxClients is the most clients one server may have: every address but
// 0 and 0xFFFF (a variable so tests can lower it).
var tpMaxClients int32 = 0xFFFE

const (
	// tpServerHigh bounds bytes waiting for the server before clients are
	// no longer read.
	tpServerHigh = 256 << 10
	// tpClientRead is the most read from a client at once.
	tpClientRead = 16 << 10
)

// tpRegistry holds TunnelProxy registrations: every uuid in use, as server or
// client, and the hubs by server uuid.
type tpRegistry struct {
	max   int32 // clients per server (tpMaxClients when created)
	mu    sync.Mutex
	uuids map[string]bool
	hubs  map[string]*hub
	seed  maphash.Seed
}

func newTPRegistry() *tpRegistry {
	return &tpRegistry{max: tpMaxClients, uuids: make(map[string]bool), hubs: make(map[string]*hub), seed: maphash.MakeSeed()}
}

// addServer registers a hub for uuid; nil if the uuid is in use.
func (r *tpRegistry) addServer(s *Server, uuid, name string) *hub {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.uuids[uuid] {
		return nil
	}
	r.uuids[uuid] = true
	h := &hub{s: s, uuid: uuid, name: name, clients: make(map[uint16]*tpEnd), next: 1}
	h.f = s.fwd[maphash.String(r.seed, uuid)%uint64(len(s.fwd))]
	r.hubs[uuid] = h
	return h
}

// addClient reserves a client uuid for hub serverUUID.
func (r *tpRegistry) addClient(clientUUID, serverUUID string) (*hub, handshake.TunnelProxyError) {
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

func (r *tpRegistry) release(uuid string) {
	r.mu.Lock()
	delete(r.uuids, uuid)
	r.mu.Unlock()
}

func (r *tpRegistry) removeHub(h *hub) {
	r.mu.Lock()
	if r.hubs[h.uuid] == h {
		delete(r.hubs, h.uuid)
		delete(r.uuids, h.uuid)
	}
	r.mu.Unlock()
}

// hub is a registered server with its clients. Fields below nclients belong
// to the forwarder goroutine.
type hub struct {
	s          *Server
	f          *forwarder
	uuid, name string
	nclients   atomic.Int32 // clients registered, including not yet started

	started, dead bool
	srv           *tpEnd
	clients       map[uint16]*tpEnd
	next          uint16   // next address to try
	pending       []*tpEnd // clients handed over before the server started
	waiting       []*tpEnd // readable clients held back by tpServerHigh
	slip          handshake.SLIPDecoder
	lastRx        time.Time     // server's last byte (dead-server timeout)
	srvReason     reason.Reason // why the server is closing once its output is written
	notifID       int
	frame         []byte // scratch for one SLIP frame
}

// tpClientPause is how much may wait for a client before the relay stops
// reading what that client sends (its pings and data) until it catches up.
const tpClientPause = 64 << 10

// tpEnd is a server or client socket of a hub.
type tpEnd struct {
	h      *hub
	sock   sock
	fd     int
	tk     *ticket
	server bool
	addr   uint16 // clients: socket address
	uuid   string
	name   string
	peer   string

	readable, writable bool
	closing            bool // no more reads; close once out is written
	waiting            bool // in h.waiting
	queued             bool // in the forwarder's again list
	out                *bytebufferpool.ByteBuffer
	off                int    // written part of out
	rx, tx             uint64 // bytes read from / written to this socket
	stallSince         int64  // unix ns since writes were refused with data pending

	ws   *handshake.Stream // inbound WebSocket state; nil on raw TCP
	ctrl handshake.Queue   // control replies, moved into out after each read
	in   []byte            // bytes that arrived before the hand-over
}

// hubServer and hubClient are the hand-over targets of a registering
// server or client connection.
type hubServer struct {
	h       *hub
	replyID int
}

type hubClient struct {
	h       *hub
	replyID int
	uuid    string
	name    string
}

// takeOver takes c's socket for hub h; nil if the connection's set-up
// failed (the caller then undoes its registration and dismisses c).
func takeOver(h *hub, c *conn) *tpEnd {
	if c.failed || c.sk == nil {
		return nil
	}
	e := &tpEnd{h: h, sock: c.sk, fd: c.sk.Fd(), ws: c.ws, tk: c.tk, peer: hostOf(c.peer),
		in: c.late, readable: true, writable: true}
	if e.ws != nil {
		e.ws.Dec.MaxFrame = 0
	}
	if q := c.out.Take(); len(q) > 0 { // pongs owed since the registration
		e.buf().B = append(e.buf().B, q...)
	}
	return e
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.String()
}

// ready implements target for a registering server.
func (t hubServer) ready(c *conn) {
	h := t.h
	e := takeOver(h, c)
	if e == nil {
		h.s.tp.removeHub(h)
		h.f.do(func() { h.close(reason.PartnerClosed) }) // clients that came meanwhile
		c.s.dismiss(c, c.reason, 0, "")
		return
	}
	e.server, e.uuid, e.name = true, h.uuid, h.name
	reply := handshake.AppendSuccess(nil, t.replyID,
		handshake.Str("tunnelProxyError", handshake.TunnelProxyErrorNoError.String()),
		handshake.Bool("slipEnabled", true))
	if !h.f.do(func() { h.start(e, reply) }) {
		h.s.tp.removeHub(h)
		e.sock.Close()
		e.tk.End(reason.Shutdown)
	}
}

// ready implements target for a registering client.
func (t hubClient) ready(c *conn) {
	h := t.h
	e := takeOver(h, c)
	if e == nil {
		h.s.tp.release(t.uuid)
		h.nclients.Add(-1)
		c.s.dismiss(c, c.reason, 0, "")
		return
	}
	e.uuid, e.name = t.uuid, t.name
	reply := handshake.AppendSuccess(nil, t.replyID,
		handshake.Str("tunnelProxyError", handshake.TunnelProxyErrorNoError.String()))
	if !h.f.do(func() { h.addClient(e, reply) }) {
		// The loop has stopped: the hub's map is not ours to touch.
		h.s.tp.release(e.uuid)
		h.nclients.Add(-1)
		e.sock.Close()
		e.tk.End(reason.Shutdown)
	}
}

// start puts the server on the loop; clients that came first are added.
func (h *hub) start(e *tpEnd, reply []byte) {
	if h.dead {
		h.f.goodbye(e.sock, nil, true, e.tk, reason.Shutdown)
		return
	}
	h.started, h.srv, h.lastRx = true, e, time.Now()
	if err := h.f.register(e.fd, e); err != nil {
		h.close(reason.IOError)
		return
	}
	h.f.hubs[h] = struct{}{}
	h.s.stats.tpServers.Inc()
	h.s.log.Info("tunnelproxy server registered", "server", h.uuid, "name", h.name, "peer", e.peer)
	h.sendPlain(e, reply)
	for _, c := range h.pending {
		h.addClient(c, nil)
	}
	h.pending = nil
	h.readServer()
	h.flush(e)
}

// addClient gives a client its address, tells the server, and starts
// reading it. reply is the RegisterClient answer (nil if already queued).
func (h *hub) addClient(e *tpEnd, reply []byte) {
	if h.dead {
		h.dropClient(e, false, reason.PartnerClosed)
		return
	}
	if reply != nil {
		h.sendPlain(e, reply)
	}
	if !h.started {
		h.pending = append(h.pending, e)
		return
	}
	e.addr = h.allocAddr()
	h.clients[e.addr] = e
	if err := h.f.register(e.fd, e); err != nil {
		h.dropClient(e, false, reason.IOError)
		return
	}
	h.s.stats.tpClients.Inc()
	h.notify("TunnelProxy.ClientConnected",
		handshake.Str("clientName", e.name), handshake.Str("clientUuid", e.uuid),
		handshake.Str("clientPeerAddress", e.peer), handshake.Int("socketAddress", int64(e.addr)))
	h.flush(h.srv)
	h.readClient(e)
	h.flush(e)
	h.flush(h.srv)
}

// allocAddr returns the next free client address, going round from 1 and
// skipping 0, 0xFFFF and addresses in use. The registry keeps a hub below
// tpMaxClients, so one is always free.
func (h *hub) allocAddr() uint16 {
	for h.clients[h.next] != nil || h.next == 0 || h.next == 0xFFFF {
		h.next++
	}
	a := h.next
	h.next++
	return a
}

// event implements pollee.
func (e *tpEnd) event(f *forwarder, events uint32) {
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		e.readable = true
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		e.writable = true
	}
	h := e.h
	if h.dead {
		return
	}
	h.flush(e)
	if e.server {
		h.readServer()
	} else {
		h.readClient(e)
		h.flush(h.srv)
	}
	h.wakeWaiting()
}

// pending reports bytes waiting to be written to e.
func (e *tpEnd) pending() int {
	if e.out == nil {
		return 0
	}
	return len(e.out.B) - e.off
}

// flush writes what waits for e.
func (h *hub) flush(e *tpEnd) {
	if e == nil || h.dead || e.sock == nil {
		return
	}
	for e.pending() > 0 && e.writable {
		n, err := e.sock.Write(e.out.B[e.off:])
		if n > 0 {
			e.off += n
			e.tx += uint64(n)
			e.stallSince = 0
		}
		if err == unix.EAGAIN {
			e.writable = false
			break
		}
		if err != nil {
			h.endGone(e, reason.IOError)
			return
		}
	}
	if e.pending() == 0 {
		if err := e.sock.Flush(); err == unix.EAGAIN {
			e.writable = false
		} else if err != nil {
			h.endGone(e, reason.IOError)
			return
		}
		if e.out != nil {
			pool.Put(e.out)
			e.out, e.off = nil, 0
		}
		if e.closing {
			h.endDone(e)
		}
		return
	}
	if e.stallSince == 0 {
		e.stallSince = time.Now().UnixNano()
	}
}

func (e *tpEnd) buf() *bytebufferpool.ByteBuffer {
	if e.out == nil {
		e.out = pool.Get()
	}
	return e.out
}

// sendPlain queues one JSON-RPC message outside SLIP (the registration
// reply): a TEXT frame on WebSocket.
func (h *hub) sendPlain(e *tpEnd, msg []byte) {
	b := e.buf()
	if e.ws != nil {
		b.B = handshake.AppendFrame(b.B, ws.OpText, true, msg)
	} else {
		b.B = append(b.B, msg...)
	}
}

// sendSLIP queues one SLIP frame for the server (inside a BINARY frame on
// WebSocket).
func (h *hub) sendSLIP(addr uint16, payload []byte) {
	e := h.srv
	b := e.buf()
	if e.ws != nil {
		h.frame = handshake.AppendSLIP(h.frame[:0], addr, payload)
		b.B = handshake.AppendFrame(b.B, ws.OpBinary, true, h.frame)
	} else {
		b.B = handshake.AppendSLIP(b.B, addr, payload)
	}
}

// notify sends a notification to the server on address 0.
func (h *hub) notify(name string, params ...handshake.Field) {
	msg := handshake.AppendNotification(nil, h.notifID, name, params...)
	h.notifID++
	h.sendSLIP(0, msg)
}

// readServer reads the server and routes its SLIP frames.
func (h *hub) readServer() {
	e := h.srv
	for round := 0; e.readable && !e.closing && !h.dead && e.pending() < tpServerHigh; round++ {
		if round == 16 { // fairness: let other sockets of this loop run
			h.f.revisit(e)
			return
		}
		var data []byte
		if len(e.in) > 0 {
			data, e.in = e.in, nil
			h.lastRx = time.Now()
			h.feedServer(h.deframe(e, data))
			continue
		}
		chunk := pool.GetChunk()
		n, err := e.sock.Read(*chunk)
		if n <= 0 {
			pool.PutChunk(chunk)
			if err != unix.EAGAIN {
				h.close(reason.PeerClosed)
				return
			}
			e.readable = false
			break
		}
		h.lastRx = time.Now()
		e.rx += uint64(n)
		h.s.stats.tpBytes.Add(n)
		data = h.deframe(e, (*chunk)[:n])
		h.feedServer(data)
		pool.PutChunk(chunk)
	}
	h.flush(e)
}

// feedServer decodes SLIP from the server and delivers each frame.
func (h *hub) feedServer(data []byte) {
	if h.dead || len(data) == 0 {
		return
	}
	err := h.slip.Feed(data, func(addr uint16, payload []byte) error {
		if addr == 0 {
			h.serverRPC(payload)
			return nil
		}
		c := h.clients[addr]
		if c == nil || c.closing {
			return nil // the client just left; ClientDisconnected is on its way
		}
		h.sendData(c, payload)
		return nil
	})
	if err != nil {
		h.s.log.Debug("tunnelproxy server sent an oversized SLIP frame", "server", h.uuid)
		h.close(reason.WebSocket)
		return
	}
	for _, c := range h.clients {
		if c.pending() > 0 {
			h.flush(c)
		}
	}
}

// sendData queues payload for client c, disconnecting c when it would
// exceed its buffer bound.
func (h *hub) sendData(c *tpEnd, payload []byte) {
	if c.pending()+len(payload) > h.s.cfg.TPClientBuffer {
		h.s.log.Debug("tunnelproxy client too slow: disconnected", "server", h.uuid, "address", c.addr)
		h.dropClient(c, true, reason.SlowReader)
		return
	}
	b := c.buf()
	if c.ws != nil {
		b.B = handshake.AppendFrame(b.B, ws.OpBinary, true, payload)
	} else {
		b.B = append(b.B, payload...)
	}
}

// serverRPC answers a JSON-RPC request the server sent on address 0.
func (h *hub) serverRPC(obj []byte) {
	req, rerr := handshake.ParseRequest(obj)
	if rerr != nil {
		h.sendSLIP(0, handshake.AppendError(nil, rerr.ID, rerr.Text))
		h.closeServer(reason.RPC)
		return
	}
	var reply []byte
	switch req.Method {
	case "TunnelProxy.Ping":
		ts, _ := req.Uint("timestamp")
		reply = handshake.AppendSuccess(nil, req.ID, handshake.Int("timestamp", int64(ts)))
	case "TunnelProxy.DisconnectClient":
		addr, _ := req.Uint("socketAddress")
		res := handshake.TunnelProxyErrorUnknownSocketAddress
		if c := h.clients[uint16(addr)]; addr <= 0xFFFF && c != nil {
			res = handshake.TunnelProxyErrorNoError
			// What the server sent before still reaches the client; flush
			// closes it once written (or the stall timeout does).
			c.closing = true
			defer h.flush(c)
		}
		reply = handshake.AppendSuccess(nil, req.ID, handshake.Str("tunnelProxyError", res.String()))
	case "RemoteProxy.Hello":
		reply = helloReply(h.s, req.ID)
	case "RemoteProxy.Introspect":
		reply = handshake.AppendSuccessRaw(nil, req.ID, handshake.Introspect())
	case "TunnelProxy.RegisterServer", "TunnelProxy.RegisterClient":
		reply = handshake.AppendSuccess(nil, req.ID,
			handshake.Str("tunnelProxyError", handshake.TunnelProxyErrorAlreadyRegistered.String()))
	default:
		h.sendSLIP(0, handshake.AppendError(nil, req.ID, "Method not allowed on a registered server"))
		h.closeServer(reason.RPC)
		return
	}
	h.sendSLIP(0, reply)
}

// closeServer ends the hub for reason once what the server is owed is
// written.
func (h *hub) closeServer(r reason.Reason) {
	h.srv.closing = true
	h.srvReason = r
}

// readClient reads client c while the server has room and c itself reads
// what it is sent.
func (h *hub) readClient(c *tpEnd) {
	for c.readable && !c.closing && !h.dead && c.pending() < tpClientPause {
		if h.srv.pending() >= tpServerHigh {
			if !c.waiting {
				c.waiting = true
				h.waiting = append(h.waiting, c)
			}
			return
		}
		var data []byte
		if len(c.in) > 0 {
			data, c.in = c.in, nil
			data = h.deframe(c, data)
			if len(data) > 0 && !c.closing {
				h.sendSLIP(c.addr, data)
			}
			continue
		}
		chunk := pool.GetChunk()
		n, err := c.sock.Read((*chunk)[:tpClientRead])
		if n <= 0 {
			pool.PutChunk(chunk)
			if err == unix.EAGAIN {
				c.readable = false
			} else {
				h.dropClient(c, true, reason.PeerClosed)
			}
			return
		}
		c.rx += uint64(n)
		h.s.stats.tpBytes.Add(n)
		data = h.deframe(c, (*chunk)[:n])
		if len(data) > 0 && !c.closing {
			h.sendSLIP(c.addr, data)
		}
		pool.PutChunk(chunk)
	}
}

// wakeWaiting reads clients held back once the server has room again.
func (h *hub) wakeWaiting() {
	if h.dead || len(h.waiting) == 0 || h.srv.pending() >= tpServerHigh {
		return
	}
	w := h.waiting
	h.waiting = nil
	for _, c := range w {
		c.waiting = false
		if h.clients[c.addr] == c {
			h.readClient(c)
		}
	}
	h.flush(h.srv)
}

// deframe turns WebSocket input from e into payload bytes in place (control
// frames answered by e's wsStream); plain TCP input is returned as is.
func (h *hub) deframe(e *tpEnd, buf []byte) []byte {
	if e.ws == nil {
		return buf
	}
	in, w := buf, 0
	for len(in) > 0 && !e.closing {
		ev, fr, m, err := e.ws.Step(in, &e.ctrl)
		if err == handshake.ErrQueueFull || (err == nil && e.pending()+e.ctrl.Len() > h.endBudget(e)) {
			h.s.log.Debug("tunnelproxy end does not read its control frames", "peer", e.peer)
			e.ctrl.Take()
			h.endOver(e)
			return buf[:w]
		}
		if err != nil {
			code, text := handshake.CloseCodeOf(err)
			e.ws.SendClose(&e.ctrl, code, text)
			e.closing = true
			if e.server {
				h.srvReason = reason.WebSocket
			}
			break
		}
		in = in[m:]
		if ev == handshake.EventMore {
			break
		}
		if ev == handshake.EventClose {
			e.closing = true
			break
		}
		if ev == handshake.EventData && fr.Kind == handshake.FragPayload {
			w += copy(buf[w:], fr.Data) // output never overtakes input
		}
	}
	if e.ctrl.Len() > 0 {
		b := e.buf()
		b.B = append(b.B, e.ctrl.Take()...)
	}
	return buf[:w]
}

// endBudget is the most that may wait for e before it counts as not
// reading: the server's high mark, or a client's buffer.
func (h *hub) endBudget(e *tpEnd) int {
	if e.server {
		return tpServerHigh + handshake.QueueMax
	}
	return h.s.cfg.TPClientBuffer
}

// endOver ends e as a slow reader.
func (h *hub) endOver(e *tpEnd) {
	if e.server {
		h.close(reason.SlowReader)
	} else {
		h.dropClient(e, true, reason.SlowReader)
	}
}

// endGone ends e after its socket failed.
func (h *hub) endGone(e *tpEnd, r reason.Reason) {
	if e.server {
		h.close(r)
	} else {
		h.dropClient(e, true, r)
	}
}

// endDone ends e once everything it was owed, ending with a close, has
// been written: a client asked to leave (DisconnectClient, its close
// frame, a protocol error), or the server after an error reply.
func (h *hub) endDone(e *tpEnd) {
	if e.server {
		h.close(h.srvReason)
		return
	}
	r := reason.PartnerClosed // DisconnectClient: the server ended it
	if e.ws != nil && e.ws.CloseRecv {
		r = reason.PeerClosed
	} else if e.ws != nil && e.ws.CloseSent {
		r = reason.WebSocket
	}
	h.dropClient(e, true, r)
}

// dropClient ends client c for r; notify tells the server
// ClientDisconnected. What c is still owed goes out first, then (on
// WebSocket) a close frame, and the socket lingers unless it failed.
func (h *hub) dropClient(c *tpEnd, notify bool, r reason.Reason) {
	if h.clients[c.addr] == c && c.addr != 0 {
		delete(h.clients, c.addr)
		h.s.stats.tpClients.Dec()
		if notify && !h.dead {
			h.notify("TunnelProxy.ClientDisconnected", handshake.Int("socketAddress", int64(c.addr)))
			h.flush(h.srv)
		}
	}
	if c.sock == nil {
		return
	}
	if _, ok := h.f.eps[int32(c.fd)]; ok {
		h.f.unregister(c.fd)
	}
	h.release(c, r)
	h.s.tp.release(c.uuid)
	h.nclients.Add(-1)
	if h.s.drainingNow() && h.nclients.Load() == 0 && !h.dead {
		h.close(reason.Shutdown) // draining: the server's last client left
	}
}

// release lets go of e's socket: the rest of its output, a close frame on
// WebSocket (unless it failed), then a lingering close.
func (h *hub) release(e *tpEnd, r reason.Reason) {
	var final []byte
	if e.out != nil {
		final = append(final, e.out.B[e.off:]...)
		pool.Put(e.out)
		e.out, e.off = nil, 0
	}
	broken := r == reason.PeerClosed || r == reason.IOError || r == reason.SlowReader || r == reason.WriteStall
	if e.ws != nil && !broken {
		q := handshake.Queue{B: final}
		e.ws.SendClose(&q, ws.StatusGoingAway, "tunnel closed")
		final = q.B
	}
	h.f.goodbye(e.sock, final, !broken, e.tk, r)
	e.sock = nil
	e.closing = true
}

// close ends the hub: every client is closed, then the server.
func (h *hub) close(r reason.Reason) {
	if h.dead {
		return
	}
	h.dead = true
	h.s.tp.removeHub(h)
	for _, c := range h.clients {
		h.dropClient(c, false, reason.PartnerClosed)
	}
	for _, c := range h.pending {
		h.dropClient(c, false, reason.PartnerClosed)
	}
	h.pending, h.waiting = nil, nil
	if e := h.srv; e != nil && e.sock != nil {
		delete(h.f.hubs, h)
		h.f.unregister(e.fd)
		h.release(e, r)
		h.s.stats.tpServers.Dec()
		h.s.log.Info("tunnelproxy server left", "server", h.uuid, "reason", r.String())
	}
}

// scanHubs enforces the dead-server timeout and write stalls.
func (f *forwarder) scanHubs(now time.Time) {
	stall := int64(f.s.cfg.WriteStallTimeout)
	for h := range f.hubs {
		if now.Sub(h.lastRx) > f.s.cfg.TPServerTimeout {
			h.s.log.Debug("tunnelproxy server silent: closed", "server", h.uuid)
			h.close(reason.InactiveTimeout)
			continue
		}
		if e := h.srv; e.stallSince != 0 && now.UnixNano()-e.stallSince > stall {
			h.close(reason.WriteStall)
			continue
		}
		for _, c := range h.clients {
			if c.stallSince != 0 && now.UnixNano()-c.stallSince > stall {
				h.dropClient(c, true, reason.WriteStall)
			}
		}
	}
}

// resume implements resumer: the server stopped reading for fairness.
func (e *tpEnd) resume(f *forwarder) {
	e.queued = false
	if !e.h.dead {
		e.h.readServer()
		e.h.wakeWaiting()
	}
}

// revisit queues e to be read again after other sockets of the loop.
func (f *forwarder) revisit(e *tpEnd) {
	if !e.queued {
		e.queued = true
		f.again = append(f.again, e)
	}
}

// helloReply is RemoteProxy.Hello's answer.
func helloReply(s *Server, id int) []byte {
	return handshake.AppendSuccess(nil, id,
		handshake.Str("apiVersion", APIVersion),
		handshake.Str("name", s.cfg.Name),
		handshake.Str("server", "meetpoint"),
		handshake.Str("version", Version))
}
