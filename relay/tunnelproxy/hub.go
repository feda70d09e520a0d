package tunnelproxy

import (
	"net"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/pool"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// hub is a registered server with its clients. Fields below nclients belong
// to the loop goroutine.
type hub struct {
	s          *Service
	l          *loop.Loop
	uuid, name string
	nclients   atomic.Int32 // clients registered, including not yet started

	started, dead bool
	srv           *tpEnd
	clients       map[uint16]*tpEnd
	next          uint16   // next address to try
	pending       []*tpEnd // clients handed over before the server started
	waiting       []*tpEnd // readable clients held back by serverHigh
	// joiners are registered clients not yet announced because the
	// server's backlog was at serverHigh: each ClientConnected carries a
	// name of up to 10 KiB, so announcing every registration whatever the
	// backlog let anonymous clients queue megabytes for one server. Joined
	// in order as the backlog drains (wakeWaiting); joining is set.
	joiners   []*tpEnd
	slip      handshake.SLIPDecoder
	rpc       handshake.SLIPHold // the server's JSON-RPC message on address 0 being reassembled
	held      int                // clients whose backlog reached ClientBuffer: the server is not read meanwhile
	lastRx    time.Time          // server's last byte (dead-server timeout)
	srvReason reason.Reason      // why the server is closing once its output is written
	notifID   int
	frame     []byte // scratch for one SLIP frame

	// joinersGone counts joiners dropped while they waited (their slots
	// still in joiners); once they are half of it, joiners is compacted,
	// so that clients registering and leaving while the server does not
	// drain its backlog are not kept (each with its name and input).
	joinersGone int
}

// clientPause is how much may wait for a client before the relay stops
// reading what that client sends (its pings and data) until it catches up.
const clientPause = 64 << 10

// tpEnd is a server or client socket of a hub.
type tpEnd struct {
	h      *hub
	sock   loop.Sock
	fd     int
	tk     reason.Ender
	server bool
	addr   uint16 // clients: socket address
	uuid   string
	name   string
	peer   string
	node   string // clients: the fleet node whose client this mesh link is; "" for a client of this node
	meshed bool   // counted in the service's meshClients (from addClient until release)

	readable, writable bool
	closing            bool // no more reads; close once out is written
	joining            bool // client in h.clients whose server does not know it yet (settle window, or in joiners)
	waiting            bool // in h.waiting
	queued             bool // in the loop's again list
	out                *bytebufferpool.ByteBuffer
	off                int    // written part of out
	rx, tx             uint64 // bytes read from / written to this socket
	stallSince         int64  // unix ns since writes were refused with data pending
	heldSince          int64  // clients: unix ns since its backlog holds the server up (0: it does not)

	ws   *handshake.Stream    // inbound WebSocket state; nil on raw TCP
	ctrl handshake.Queue      // control replies, moved into out after each read
	text handshake.TextFramer // a WebSocket client's data: TEXT while valid UTF-8
	in   []byte               // bytes that arrived before the hand-over
	// hello: the client called RemoteProxy.Hello before registering, as
	// nymea's client library does: it gets the settle window.
	hello bool
	// skipNL: the newline ending its raw-TCP registration request had not
	// come by the hand-over (Handover.SkipNL): a first byte '\n' is that
	// newline, no SLIP or tunnel data, and is dropped.
	skipNL bool
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

// takeOver takes the handed-over socket for hub h; nil if the
// connection's set-up failed (the caller then undoes its registration and
// dismisses it).
func takeOver(h *hub, ho *relay.Handover) *tpEnd {
	if ho.Failed || ho.Sock == nil {
		return nil
	}
	e := &tpEnd{h: h, sock: ho.Sock, fd: ho.Sock.Fd(), ws: ho.WS, tk: ho.Ticket, peer: hostOf(ho.Peer),
		in: ho.Late, readable: true, writable: true, hello: ho.Hello, skipNL: ho.SkipNL && ho.WS == nil}
	if e.ws != nil {
		e.ws.Dec.MaxFrame = 0
	}
	if len(ho.Out) > 0 { // pongs owed since the registration
		e.buf().B = append(e.buf().B, ho.Out...)
	}
	return e
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.String()
}

// Ready implements relay.Target for a registering server.
func (t hubServer) Ready(ho *relay.Handover) {
	h := t.h
	e := takeOver(h, ho)
	if e == nil {
		h.s.reg.removeHub(h)
		h.l.Do(func() { h.close(reason.PartnerClosed) }) // clients that came meanwhile
		h.s.srv.Dismiss(ho, ho.Reason, 0, "")
		return
	}
	e.server, e.uuid, e.name = true, h.uuid, h.name
	reply := handshake.AppendSuccess(nil, t.replyID, // keys sorted, as nymea's
		handshake.Bool("slipEnabled", true),
		handshake.Str("tunnelProxyError", handshake.TunnelProxyErrorNoError.String()))
	if !h.l.Do(func() {
		defer h.contain(e)
		h.start(e, reply) // reads what the server sent first
	}) {
		h.s.reg.removeHub(h)
		e.sock.Close()
		e.tk.End(reason.Shutdown)
	}
}

// Ready implements relay.Target for a registering client.
func (t hubClient) Ready(ho *relay.Handover) {
	h := t.h
	e := takeOver(h, ho)
	if e == nil {
		h.s.reg.release(t.uuid)
		h.nclients.Add(-1)
		h.s.srv.Dismiss(ho, ho.Reason, 0, "")
		return
	}
	e.uuid, e.name, e.node = t.uuid, t.name, ho.MeshNode
	reply := handshake.AppendSuccess(nil, t.replyID,
		handshake.Str("tunnelProxyError", handshake.TunnelProxyErrorNoError.String()))
	if !h.l.Do(func() {
		defer h.contain(e)
		h.addClient(e, reply) // reads what the client sent first
	}) {
		// The loop has stopped: the hub's map is not ours to touch.
		h.s.reg.release(e.uuid)
		h.nclients.Add(-1)
		e.sock.Close()
		e.tk.End(reason.Shutdown)
	}
}

// start puts the server on the loop; clients that came first are added.
func (h *hub) start(e *tpEnd, reply []byte) {
	if h.dead {
		h.l.Goodbye(e.sock, nil, true, e.tk, reason.Shutdown)
		return
	}
	h.started, h.srv, h.lastRx = true, e, time.Now()
	h.s.m.servers.Inc() // before: close counts it out
	if err := h.l.Register(e.fd, e); err != nil {
		h.close(reason.IOError)
		return
	}
	h.l.Watch(h, time.Second)
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
	if e.node != "" && !e.meshed {
		e.meshed = true
		h.s.meshCount(e.node, 1)
	}
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
	if d := h.s.cfg.Settle; d > 0 && e.ws == nil && e.hello {
		// The reply goes now; the server hears of the client (and so can
		// send it data) only after the settle window. The client is not
		// read meanwhile: its bytes wait in the kernel.
		e.joining = true
		h.flush(e)
		h.l.Watch(settler{h, e}, d)
		return
	}
	h.join(e)
}

// settler ends a client's settle window.
type settler struct {
	h *hub
	e *tpEnd
}

// Scan implements loop.Scanner.
func (s settler) Scan(*loop.Loop, time.Time) time.Duration {
	if h := s.h; !h.dead && h.clients[s.e.addr] == s.e && s.e.joining {
		defer h.contain(nil)
		s.e.joining = false
		h.join(s.e)
	}
	return -1
}

// join starts reading client e and tells the server about it, or, while
// the server's backlog is at serverHigh, queues it in joiners.
func (h *hub) join(e *tpEnd) {
	if !h.l.Registered(e.fd) {
		if err := h.l.Register(e.fd, e); err != nil {
			e.joining = true // never announced, never counted
			h.dropClient(e, false, reason.IOError)
			return
		}
	}
	if h.srv.pending() >= serverHigh {
		// Registered, so that a client that leaves while it waits is
		// dropped (Event) and its uuid freed, but not read.
		e.joining = true
		h.joiners = append(h.joiners, e)
		h.flush(e) // its RegisterClient reply goes now
		return
	}
	h.s.m.clients.Inc() // before: dropClient counts it out
	h.s.m.clientsTotal.Inc()
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

// Event implements loop.Pollee.
func (e *tpEnd) Event(_ *loop.Loop, events uint32) {
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
	defer h.contain(nil)
	if e.joining { // waiting to be announced (joiners): not read, only seen to leave
		if events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 || (events&unix.EPOLLRDHUP != 0 && !e.waitingBytes()) {
			h.dropClient(e, false, reason.PeerClosed)
		}
		return
	}
	h.flush(e)
	if e.server {
		h.readServer()
	} else {
		h.readClient(e)
		h.flush(e) // its pongs and close echo, and its end once closing
		h.flush(h.srv)
	}
	h.wakeWaiting()
}

// waitingBytes reports whether e's socket holds bytes not read yet (a
// client that sent its request and then shut its side: it is kept, and
// the read after it joins sees the end).
func (e *tpEnd) waitingBytes() bool {
	if len(e.in) > 0 { // read with its registration, not yet routed
		return true
	}
	var b [1]byte
	n, _, err := unix.Recvfrom(e.fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return err == nil && n > 0
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
	if e.heldSince != 0 {
		defer h.hold(e) // what it took may end its hold on the server
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
	for round := 0; e.readable && !e.closing && !h.dead && e.pending() < serverHigh && h.held == 0; round++ {
		if round == 16 { // fairness: let other sockets of this loop run
			h.revisit(e)
			return
		}
		if len(e.in) > 0 {
			h.lastRx = time.Now()
			h.feedServer(h.early(e))
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
		h.s.m.bytes.Add(n)
		h.feedServer(h.deframe(e, (*chunk)[:n]))
		pool.PutChunk(chunk)
	}
	h.flush(e)
}

// feedServer decodes SLIP from the server and delivers each frame.
func (h *hub) feedServer(data []byte) {
	if h.dead || len(data) == 0 {
		return
	}
	err := h.slip.Feed(data, h.serverPiece)
	if err != nil {
		h.s.log.Debug("tunnelproxy server sent an oversized JSON-RPC message", "server", h.uuid,
			"limit", h.s.cfg.MaxMessage, "reason", reason.RPC.String())
		h.close(reason.RPC)
		return
	}
	for _, c := range h.clients {
		if c.pending() > 0 {
			h.flush(c)
		}
	}
}

// serverPiece takes what the SLIP decoder has of a frame from the server:
// JSON-RPC on address 0 is reassembled (up to MaxMessage); a client's data
// goes on to the client as it arrives, whatever the frame's size.
func (h *hub) serverPiece(addr uint16, data []byte, ev handshake.SLIPEvent) error {
	if addr == 0 {
		msg, err := h.rpc.Add(data, ev)
		if msg != nil && !h.dead {
			h.serverRPC(msg)
		}
		return err
	}
	c := h.clients[addr]
	switch {
	case c == nil || c.closing || c.joining:
		// The client just left (ClientDisconnected is on its way) or is
		// not announced yet.
	case ev == handshake.SLIPAbort:
		// Part of the frame went out before its bad escape: c's stream
		// has a hole, so c goes (as if the server had disconnected it).
		h.s.log.Debug("tunnelproxy server sent a malformed SLIP frame: client disconnected", "server", h.uuid, "address", addr)
		h.dropClient(c, true, reason.PartnerClosed)
	default:
		h.sendData(c, data)
	}
	return nil
}

// sendData queues payload for client c. A backlog that reaches
// ClientBuffer holds the server up (it is not read) until c has taken half
// of it; Scan disconnects a client that holds it up too long.
func (h *hub) sendData(c *tpEnd, payload []byte) {
	if len(payload) == 0 {
		return
	}
	defer h.hold(c)
	b := c.buf()
	if c.ws == nil {
		b.B = append(b.B, payload...)
		return
	}
	// TEXT while the server's stream to c is valid UTF-8 (nymea's client
	// library listens for text messages only), BINARY from the first byte
	// that is not.
	h.frame = append(append(h.frame[:0], 0, 0, 0), payload...)
	if op, s, e := c.text.Next(h.frame, 3, len(h.frame)); e > s || op == ws.OpBinary {
		b.B = handshake.AppendFrame(b.B, op, true, h.frame[s:e])
	}
}

// hold starts or ends c's hold on the server by its backlog.
func (h *hub) hold(c *tpEnd) {
	switch n := c.pending(); {
	case c.heldSince == 0 && n >= h.s.cfg.ClientBuffer && h.clients[c.addr] == c:
		c.heldSince = time.Now().UnixNano()
		h.held++
	case c.heldSince != 0 && (n <= h.s.cfg.ClientBuffer/2 || h.clients[c.addr] != c):
		c.heldSince = 0
		h.held--
		if h.held == 0 && h.srv != nil && !h.dead {
			h.revisit(h.srv) // read the server again, after this event
		}
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
		reply = h.s.srv.HelloReply(req.ID)
	case "RemoteProxy.Introspect":
		reply = h.s.srv.IntrospectReply(req.ID)
	case "TunnelProxy.RegisterServer", "TunnelProxy.RegisterClient":
		// As nymea: the error, then the connection ends (the server is
		// confused about its state; its clients go with it).
		h.sendSLIP(0, refusal(req.ID, req.Method == "TunnelProxy.RegisterServer",
			handshake.TunnelProxyErrorAlreadyRegistered))
		h.closeServer(reason.RPC)
		return
	default:
		h.sendSLIP(0, handshake.AppendError(nil, req.ID, "Method not allowed on a registered server"))
		h.closeServer(reason.RPC)
		return
	}
	h.sendSLIP(0, reply)
	if h.srv.pending() > h.endBudget(h.srv) {
		// It asks and does not read the answers: one read of requests
		// (RemoteProxy.Introspect, ~45 bytes, is answered with kilobytes)
		// would otherwise queue megabytes past serverHigh.
		h.s.log.Debug("tunnelproxy server does not read its replies", "server", h.uuid)
		h.endOver(h.srv)
	}
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
	for c.readable && !c.closing && !h.dead && c.pending() < clientPause {
		if h.srv.pending() >= serverHigh {
			if !c.waiting {
				c.waiting = true
				h.waiting = append(h.waiting, c)
			}
			return
		}
		if len(c.in) > 0 {
			h.fromClient(c, h.early(c))
			continue
		}
		chunk := pool.GetChunk()
		n, err := c.sock.Read((*chunk)[:clientRead])
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
		h.s.m.bytes.Add(n)
		h.fromClient(c, h.deframe(c, (*chunk)[:n]))
		pool.PutChunk(chunk)
	}
}

// fromClient sends the server what client c sent, unless deframe dropped
// c meanwhile (its ClientDisconnected is out). A close frame or a
// protocol error that ends c in the same read does not hold back the
// payload that came before it: it goes first, ClientDisconnected once
// c's close is written (endDone).
func (h *hub) fromClient(c *tpEnd, data []byte) {
	if len(data) > 0 && h.clients[c.addr] == c {
		h.sendSLIP(c.addr, data)
	}
}

// wakeWaiting reads clients held back once the server has room again. It
// goes on while the server takes everything at once: no write of it fails
// then, so no writable event would come to wake the clients that filled it
// again.
func (h *hub) wakeWaiting() {
	for round := 0; !h.dead && (len(h.waiting) > 0 || len(h.joiners) > 0) && h.srv.pending() < serverHigh; round++ {
		if round == 16 { // fairness: Resume goes on after other sockets of this loop
			h.revisit(h.srv)
			return
		}
		for len(h.joiners) > 0 && !h.dead && h.srv.pending() < serverHigh {
			e := h.joiners[0]
			h.joiners[0] = nil
			h.joiners = h.joiners[1:]
			if h.clients[e.addr] == e && e.joining { // not dropped meanwhile
				e.joining = false
				h.join(e)
			}
		}
		w := h.waiting
		h.waiting = nil
		for _, c := range w {
			c.waiting = false
			if h.clients[c.addr] == c {
				h.readClient(c)
				h.flush(c)
			}
		}
		h.flush(h.srv)
	}
}

// early takes what e sent behind its registration, read with it before
// the hand-over: raw bytes on TCP, and on WebSocket already the payload of
// its frames (the engine decoded them with the stream state e.ws goes on
// from), so it is not decoded again.
func (h *hub) early(e *tpEnd) []byte {
	data := e.in
	e.in = nil
	if hook := h.s.inputHook; hook != nil {
		hook(data)
	}
	return data
}

// deframe turns WebSocket input from e into payload bytes in place (control
// frames answered by e's wsStream); plain TCP input is returned as is, but
// for the late newline of e's registration request (skipNL).
func (h *hub) deframe(e *tpEnd, buf []byte) []byte {
	if hook := h.s.inputHook; hook != nil {
		hook(buf)
	}
	if e.ws == nil {
		if e.skipNL && len(buf) > 0 {
			e.skipNL = false
			if buf[0] == '\n' {
				return buf[1:]
			}
		}
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
		return serverHigh + handshake.QueueMax
	}
	return h.s.cfg.ClientBuffer
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
	// The hub's books and the socket first, the server's notification
	// last: a panic while telling the server (its fault barrier then
	// closes the hub, walking clients) must not leave c half dropped —
	// out of clients but with its socket, ticket and uuid kept.
	announce := false
	if h.clients[c.addr] == c && c.addr != 0 {
		delete(h.clients, c.addr)
		h.hold(c)       // a client that leaves holds the server up no more
		if !c.joining { // a joining client was never announced, never counted
			h.s.m.clients.Dec()
			announce = notify
		} else if h.joinersGone++; h.joinersGone*2 >= len(h.joiners) {
			h.compactJoiners()
		}
	}
	released := c.sock != nil
	if released {
		h.s.reg.release(c.uuid)
		h.nclients.Add(-1)
		if h.l.Registered(c.fd) {
			h.l.Unregister(c.fd)
		}
		h.release(c, r)
	}
	if announce && !h.dead {
		h.notify("TunnelProxy.ClientDisconnected", handshake.Int("socketAddress", int64(c.addr)))
		h.flush(h.srv)
	}
	if released && h.s.srv.Draining() && h.nclients.Load() == 0 && !h.dead {
		h.close(reason.Shutdown) // draining: the server's last client left
	}
}

// compactJoiners drops from joiners the clients no longer waiting in
// h.clients.
func (h *hub) compactJoiners() {
	kept := h.joiners[:0]
	for _, e := range h.joiners {
		if h.clients[e.addr] == e && e.joining {
			kept = append(kept, e)
		}
	}
	clear(h.joiners[len(kept):])
	h.joiners, h.joinersGone = kept, 0
}

// release lets go of e's socket: the rest of its output, a close frame on
// WebSocket (unless it failed), then a lingering close.
func (h *hub) release(e *tpEnd, r reason.Reason) {
	if e.meshed {
		e.meshed = false
		h.s.meshCount(e.node, -1)
	}
	var final []byte
	if e.out != nil {
		final = append(final, e.out.B[e.off:]...)
		pool.Put(e.out)
		e.out, e.off = nil, 0
	}
	if r == reason.Fault {
		// What is queued may be half-built, and the framer may be what
		// panicked: nothing more is sent, and the framer is not asked.
		final = nil
		e.abandon()
	} else if rest := e.text.Flush(); len(rest) > 0 && e.ws != nil {
		final = handshake.AppendFrame(final, ws.OpBinary, true, rest) // the end of a cut character
	}
	broken := r == reason.PeerClosed || r == reason.IOError || r == reason.SlowReader || r == reason.WriteStall || r == reason.FarNodeLost || r == reason.Fault
	if e.ws != nil && !broken {
		q := handshake.Queue{B: final}
		e.ws.SendClose(&q, ws.StatusGoingAway, "tunnel closed")
		final = q.B
	}
	sk := e.sock
	e.sock, e.closing = nil, true // before Goodbye: a panic in it must not lead to a second close
	h.l.Goodbye(sk, final, !broken, e.tk, r)
}

// abandon makes a TLS socket close without sending anything more
// (loop.Abandon): after a fault its write state is not to be trusted.
func (e *tpEnd) abandon() { loop.Abandon(e.sock) }

// close ends the hub: every client is closed, then the server.
func (h *hub) close(r reason.Reason) {
	if h.dead {
		return
	}
	h.dead = true
	h.s.reg.removeHub(h)
	cr := reason.PartnerClosed
	if r == reason.Fault { // every socket of a faulted hub is counted as the fault's
		cr = r
	}
	for _, c := range h.clients {
		h.dropClient(c, false, cr)
	}
	for _, c := range h.pending {
		h.dropClient(c, false, cr)
	}
	h.pending, h.waiting = nil, nil
	if e := h.srv; e != nil && e.sock != nil {
		h.l.Unregister(e.fd)
		h.release(e, r)
		h.s.m.servers.Dec()
		h.s.log.Info("tunnelproxy server left", "server", h.uuid, "reason", r.String())
	}
}

// contain is the hub's fault barrier, deferred by what its loop calls
// (Event, Resume, the scanners, and the hand-overs of a server or a client
// that join it: extra, which may not be the hub's yet): a panic there —
// in WebSocket or SLIP framing, a message on address 0, the hub's
// bookkeeping — ends this hub, its server and every client (extra too)
// closed at once with nothing more sent, each counted as internal_fault,
// instead of ending the process; the relay logs it
// (relay.Server.ContainFault). Safe because a hub's state belongs to its
// loop goroutine and the locks its code takes (the registry's, meshMu)
// are held only around map operations. Raised again: a panic while the
// hub was closing (h.dead: close's work, the fleet lease's release
// included, cannot be finished), and under test.
func (h *hub) contain(extra *tpEnd) {
	v := recover()
	if v == nil {
		return
	}
	if h.dead || !h.s.srv.ContainFault(v, debug.Stack(),
		"internal error: the relay panicked in a TunnelProxy hub; the hub and its clients are ended (internal_fault), the relay serves on",
		"server", h.uuid) {
		panic(v)
	}
	h.close(reason.Fault)
	if e := extra; e != nil && e.sock != nil { // not yet the hub's: close did not see it
		if h.l.Registered(e.fd) {
			h.l.Unregister(e.fd)
		}
		h.release(e, reason.Fault)
		if !e.server { // a server's uuid went with the hub (close)
			h.s.reg.release(e.uuid)
			h.nclients.Add(-1)
		}
	}
}

// Scan implements loop.Scanner: the dead-server timeout and write stalls.
func (h *hub) Scan(_ *loop.Loop, now time.Time) time.Duration {
	if h.dead {
		return -1
	}
	defer h.contain(nil)
	stall := int64(h.s.cfg.WriteStallTimeout)
	if h.held > 0 || h.srv.pending() >= serverHigh {
		h.lastRx = now // the server's silence is ours: it is not read (a server that reads nothing is a write stall)
	}
	if now.Sub(h.lastRx) > h.s.cfg.ServerTimeout {
		h.s.log.Debug("tunnelproxy server silent: closed", "server", h.uuid)
		h.close(reason.InactiveTimeout)
		return -1
	}
	if e := h.srv; e.stallSince != 0 && now.UnixNano()-e.stallSince > stall {
		h.close(reason.WriteStall)
		return -1
	}
	for _, c := range h.clients {
		switch {
		case c.stallSince != 0 && now.UnixNano()-c.stallSince > stall:
			h.dropClient(c, true, reason.WriteStall)
		case c.heldSince != 0 && now.UnixNano()-c.heldSince > stall:
			// It reads, but so slowly that it has held the server (and so
			// its other clients) up for the whole stall timeout.
			h.s.log.Debug("tunnelproxy client too slow: disconnected", "server", h.uuid, "address", c.addr)
			h.s.m.dropSlow.Inc()
			h.dropClient(c, true, reason.SlowReader)
		}
	}
	return time.Second
}

// Resume implements loop.Resumer: the server stopped reading for fairness.
func (e *tpEnd) Resume(_ *loop.Loop) {
	e.queued = false
	if !e.h.dead {
		defer e.h.contain(nil)
		e.h.readServer()
		e.h.wakeWaiting()
	}
}

// Stop implements loop.Stopper: the loop is stopping.
func (e *tpEnd) Stop(_ *loop.Loop) {
	h := e.h
	if e.server {
		h.close(reason.Shutdown)
	} else if !h.dead {
		h.dropClient(e, false, reason.Shutdown)
	}
}

// revisit queues the server to be read again after other sockets of the
// loop.
func (h *hub) revisit(e *tpEnd) {
	if !e.queued {
		e.queued = true
		h.l.Again(e)
	}
}
