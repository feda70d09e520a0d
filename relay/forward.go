package relay

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/pool"
)

// A paired tunnel leaves netpoll: netpoll reads eagerly into its own buffers
// and cannot stop reading a fast sender, so neither splice(2) nor bounded
// buffering would be possible there. Each forwarder is one goroutine on its
// own edge-triggered epoll set; it owns every tunnel it was given, so tunnel
// state needs no locks once forwarding starts.
//
// Per direction at most one 64 KiB chunk (buffered path) or one 64 KiB pipe
// (splice path) holds data, and only while data is in flight: the relay reads
// a sender only when everything for its receiver has been written, so a slow
// receiver stops the sender through TCP flow control. An idle tunnel holds
// neither: its cost is the tunnel struct and two epoll entries.

// wsSlack is the room kept before the read position in a chunk so that
// rewritten WebSocket headers (server headers are never longer than the
// client's, but one may have been split across reads) never overtake
// unread input.
const wsSlack = 14

// ctrlHigh bounds control frames queued toward an endpoint (pongs): above it
// the relay stops reading that endpoint's pings.
const ctrlHigh = 1024

// tunnel is a forwarding pair. setup is used while the two sides are handed
// over, from netpoll goroutines; everything else belongs to the forwarder's
// goroutine once it started the tunnel. Kept small: it is most of an idle
// tunnel's memory.
type tunnel struct {
	s      *Server
	f      *forwarder
	key    PairKey
	joined int64 // unix ns when the second client authenticated
	setup  *tunnelSetup

	a, b   endpoint
	splice bool  // both ends plain TCP: forward with splice(2)
	start  int64 // unix ns when forwarding started; 0 before

	id           uint64        // set by trackTunnel
	infoA, infoB peerInfo      // for monitors and logs, fixed at set-up
	tokenHash    string        // TokenHash of the key's token
	ab, ba       atomic.Uint64 // bytes read from a and from b (read by monitors)

	closing bool   // no more reads; finish once everything queued is written
	reason  Reason // why closing (counted for the side that caused it)
	dead    bool   // torn down
	queued  bool   // in the forwarder's again list
}

// tunnelSetup is the hand-over state, dropped once both sides are in.
type tunnelSetup struct {
	mu     sync.Mutex
	ca, cb *conn  // the two connections (dropped with setup, so they can be freed)
	nready int    // sides handed over (0..2)
	bad    Reason // set with badSet when set-up must be abandoned
	badSet bool
}

// peerInfo is what monitors and logs show of one side of a tunnel.
type peerInfo struct {
	id        uint64
	address   string
	name      string
	uuid      string
	connected int64 // unix ns
	ws        bool
}

func peerInfoOf(c *conn) peerInfo {
	return peerInfo{id: c.id, address: c.peer.String(), name: c.name, uuid: c.uuid,
		connected: c.created.UnixNano(), ws: c.ws}
}

// clientInfo expands p for a snapshot.
func (p *peerInfo) clientInfo(tokenHash string, rx, tx uint64) ClientInfo {
	tr := "tcp"
	if p.ws {
		tr = "websocket"
	}
	return ClientInfo{ID: p.id, Address: p.address, Transport: tr, Connected: time.Unix(0, p.connected),
		Authenticated: true, Tunnel: true, Name: p.name, UUID: p.uuid, TokenHash: tokenHash, RxBytes: rx, TxBytes: tx}
}

// endpoint is one socket of a tunnel. "Outbound" state is what waits to be
// written to this endpoint; "inbound" state decodes what it sends.
type endpoint struct {
	t     *tunnel
	peer  *endpoint
	sock  sock // nil until handed over
	fd    int  // sock's descriptor
	ws    bool
	rx    *metrics.Counter // bytes read from this endpoint, all tunnels
	rxT   *atomic.Uint64   // bytes read from this endpoint, this tunnel
	adm   *admission       // released when the socket closes
	bkt   *bucket          // TunnelRate bucket for reads from this endpoint (nil until a rate applies)
	quota int              // most bytes the next read may take (0: no limit)

	readable, writable bool // edge-triggered readiness latches
	eof                bool

	// Outbound. Invariant: buf != nil iff out is non-empty or about to be
	// filled; pipe != nil only on splice tunnels.
	buf        *[]byte
	out        []byte
	pipe       *pool.Pipe
	ctrl       []byte // control frames and notifications, sent at a frame boundary
	midFrame   bool   // the data stream toward this endpoint is inside a WebSocket frame
	closeSent  bool   // a close frame toward this endpoint is queued
	stallSince int64  // unix ns since writes were refused with data pending; 0 if not

	in *wsIn // inbound WebSocket state; nil on plain TCP endpoints
}

// wsIn is what decoding a WebSocket endpoint's input needs. Kept apart so
// that idle TCP tunnels stay small.
type wsIn struct {
	dec    handshake.Decoder
	ctrlOp ws.OpCode // control frame being assembled
	ctrlIn []byte    // its payload (≤ 125 B)
}

func newWSIn(c *conn) *wsIn {
	if !c.ws {
		return nil
	}
	w := &wsIn{dec: c.dec}
	w.dec.MaxFrame = 0 // frames are streamed, never held whole
	return w
}

func newTunnel(a, b *conn) *tunnel {
	t := &tunnel{s: a.s, key: b.key, joined: b.joined.UnixNano(), setup: &tunnelSetup{ca: a, cb: b}}
	t.a = endpoint{t: t, peer: &t.b, fd: -1, ws: a.ws, in: newWSIn(a), rx: a.s.stats.bytesUp, adm: a.adm}
	t.b = endpoint{t: t, peer: &t.a, fd: -1, ws: b.ws, in: newWSIn(b), rx: a.s.stats.bytesDn, adm: b.adm}
	t.a.rxT, t.b.rxT = &t.ab, &t.ba
	t.infoA, t.infoB, t.tokenHash = peerInfoOf(a), peerInfoOf(b), TokenHash(b.key.Token)
	t.a.ctrl = established(a, b)
	t.b.ctrl = established(b, a)
	_, tlsA := a.tr.(*tlsTransport)
	_, tlsB := b.tr.(*tlsTransport)
	t.splice = !a.ws && !b.ws && !tlsA && !tlsB
	return t
}

// established is the TunnelEstablished notification telling c about p: the
// relay's last JSON-RPC message to c.
func established(c, p *conn) []byte {
	msg := handshake.AppendNotification(nil, c.notifID, "RemoteProxy.TunnelEstablished",
		handshake.Str("name", p.name), handshake.Str("uuid", p.uuid))
	c.notifID++
	if c.ws {
		return handshake.AppendFrame(nil, ws.OpText, true, msg)
	}
	return msg
}

// side is c's endpoint.
func (t *tunnel) side(su *tunnelSetup, c *conn) *endpoint {
	if c == su.ca {
		return &t.a
	}
	return &t.b
}

// Claim implements Joiner: a tunnel is never waiting.
func (t *tunnel) Claim() bool { return false }

// UUID implements Joiner.
func (t *tunnel) UUID() string { return "" }

// ready implements target: called when a side's transport let go of it, it
// takes the socket over and, when both sides are in, gives the tunnel to a
// forwarder. Bytes that arrived after Authenticate end the tunnel.
func (t *tunnel) ready(c *conn) {
	_, inMsg := c.dec.InMessage()
	late := c.dataLate || c.midFrame || inMsg || len(c.late) > 0
	s, err := c.tr.detach()
	su := t.setup // set until the second side is in; both sides read it before either clears it
	su.mu.Lock()
	ep := t.side(su, c)
	if err == nil {
		ep.sock, ep.fd = s, s.Fd()
	}
	switch {
	case err != nil && !su.badSet:
		su.bad, su.badSet = ReasonIOError, true
	case late && !su.badSet:
		su.bad, su.badSet = ReasonDataBeforeTunnel, true
	}
	su.nready++
	done := su.nready == 2
	su.mu.Unlock()
	if !done {
		return
	}
	t.setup = nil // frees the conns and netpoll's objects behind them
	if su.badSet {
		t.s.log.Debug("tunnel set-up abandoned", "reason", su.bad.String())
		// Free the key before the sockets close: a client that sees its
		// connection end may come back at once.
		t.s.reg.Leave(t.key, t)
		for _, ep := range []*endpoint{&t.a, &t.b} {
			if ep.sock != nil {
				ep.sock.Close()
			}
		}
		t.s.stats.closes[su.bad].Inc()
		t.s.stats.closes[ReasonPartnerClosed].Inc()
		t.a.uncount(t.s)
		t.b.uncount(t.s)
		return
	}
	t.f = t.s.pickForwarder(t.a.fd)
	t.f.add(t)
}

func (ep *endpoint) uncount(s *Server) { s.connGone(ep.ws, ep.adm) }

// connGone accounts for a handed-over connection's socket being closed: its
// place under the limits and in connections_active.
func (s *Server) connGone(ws bool, adm *admission) {
	adm.release()
	if ws {
		s.stats.connsWS.Dec()
	} else {
		s.stats.connsTCP.Dec()
	}
}

// forwarder is one forwarding loop.
type forwarder struct {
	s          *Server
	epfd, evfd int
	stopping   atomic.Bool
	done       chan struct{}

	mu    sync.Mutex
	queue []func() // work for the loop goroutine (new tunnels, TLS connections)
	quit  bool

	// Owned by the loop goroutine.
	eps       map[int32]pollee
	scratch   []byte // TLS plaintext before a tunnel exists
	stalled   map[*endpoint]struct{}
	again     []resumer // stopped for fairness, not for lack of work
	spare     []resumer
	hubs      map[*hub]struct{} // TunnelProxy hubs on this loop
	throttled []throttle        // tunnels waiting for TunnelRate tokens
}

func newForwarder(s *Server) (*forwarder, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, err
	}
	return &forwarder{
		s: s, epfd: epfd, evfd: evfd, done: make(chan struct{}),
		eps: make(map[int32]pollee), stalled: make(map[*endpoint]struct{}), hubs: make(map[*hub]struct{}),
	}, nil
}

// resumer is work that stopped for fairness and continues on the next turn.
type resumer interface {
	resume(f *forwarder)
}

// resume implements resumer.
func (t *tunnel) resume(f *forwarder) {
	t.queued = false
	f.service(t)
}

// pollee is what a forwarder's epoll set holds: a tunnel endpoint or a TLS
// connection that has no tunnel yet.
type pollee interface {
	event(f *forwarder, events uint32)
}

// do runs fn on the loop goroutine. It reports false, not running fn, once
// the forwarder has stopped.
func (f *forwarder) do(fn func()) bool {
	f.mu.Lock()
	if f.quit {
		f.mu.Unlock()
		return false
	}
	f.queue = append(f.queue, fn)
	f.wake() // under mu: shutdown closes evfd only after setting quit under mu
	f.mu.Unlock()
	return true
}

func (f *forwarder) add(t *tunnel) {
	if f.do(func() { f.startTunnel(t) }) {
		return
	}
	for _, ep := range []*endpoint{&t.a, &t.b} {
		ep.sock.Close()
		ep.uncount(f.s)
	}
	t.s.stats.closes[ReasonShutdown].Add(2)
}

func (f *forwarder) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(f.evfd, one[:])
}

// stop ends the loop, closing every tunnel, and waits for it.
func (f *forwarder) stop() {
	f.stopping.Store(true)
	f.mu.Lock()
	if !f.quit {
		f.wake()
	}
	f.mu.Unlock()
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		f.s.log.Error("forwarder did not stop in 5s")
	}
}

func (f *forwarder) scanInterval() int {
	d := f.s.cfg.WriteStallTimeout / 4
	if d > time.Second {
		d = time.Second
	}
	if d < 10*time.Millisecond {
		d = 10 * time.Millisecond
	}
	return int(d / time.Millisecond)
}

func (f *forwarder) run() {
	defer close(f.done)
	events := make([]unix.EpollEvent, 256)
	lastScan := time.Now()
	for {
		timeout := -1
		switch {
		case len(f.again) > 0:
			timeout = 0
		case len(f.stalled) > 0:
			timeout = f.scanInterval()
		case len(f.hubs) > 0:
			timeout = 1000
		}
		if len(f.throttled) > 0 {
			timeout = f.throttleTimeout(timeout)
		}
		n, err := unix.EpollWait(f.epfd, events, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			f.s.log.Error("epoll_wait", "err", err)
			n = 0
		}
		for i := 0; i < n; i++ {
			ev := &events[i]
			if ev.Fd == int32(f.evfd) {
				var b [8]byte
				_, _ = unix.Read(f.evfd, b[:])
				f.takeQueue()
				continue
			}
			if p := f.eps[ev.Fd]; p != nil {
				p.event(f, ev.Events)
			}
		}
		if len(f.throttled) > 0 {
			f.resumeThrottled()
		}
		cur := f.again
		f.again, f.spare = f.spare[:0], cur
		for _, r := range cur {
			r.resume(f)
		}
		if f.stopping.Load() {
			f.shutdown()
			return
		}
		if (len(f.stalled) > 0 || len(f.hubs) > 0) && time.Since(lastScan) >= time.Duration(f.scanInterval())*time.Millisecond {
			lastScan = time.Now()
			f.scanStalls(lastScan.UnixNano())
			f.scanHubs(lastScan)
		}
	}
}

func (f *forwarder) takeQueue() {
	f.mu.Lock()
	q := f.queue
	f.queue = nil
	f.mu.Unlock()
	for _, fn := range q {
		fn()
	}
}

// event implements pollee.
func (ep *endpoint) event(f *forwarder, events uint32) {
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		ep.readable = true
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		ep.writable = true
	}
	f.service(ep.t)
}

// register adds fd to the epoll set, edge-triggered for reads and writes.
func (f *forwarder) register(fd int, p pollee) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	if err := unix.EpollCtl(f.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return err
	}
	f.eps[int32(fd)] = p
	return nil
}

// unregister removes fd from the epoll set (the descriptor stays open).
func (f *forwarder) unregister(fd int) {
	_ = unix.EpollCtl(f.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	delete(f.eps, int32(fd))
}

func (f *forwarder) startTunnel(t *tunnel) {
	now := time.Now()
	t.start = now.UnixNano()
	f.s.stats.tunnelsActive.Inc()
	f.s.stats.tunnelsTotal.Inc()
	f.s.stats.pairLatency.Update(time.Duration(t.start - t.joined).Seconds())
	for _, ep := range []*endpoint{&t.a, &t.b} {
		if err := f.register(ep.fd, ep); err != nil {
			f.s.log.Error("epoll add", "err", err)
			f.teardown(t, ReasonIOError)
			return
		}
		ep.readable, ep.writable = true, true
	}
	f.s.trackTunnel(t, true)
	f.s.log.Info("tunnel established", "tunnel", t.id, "token", t.tokenHash,
		"a", t.infoA.address, "b", t.infoB.address, "splice", t.splice)
	f.service(t)
}

// service moves data both ways until nothing moves, or until it has had its
// share of the loop (then it is revisited after other ready sockets).
func (f *forwarder) service(t *tunnel) {
	if t.dead {
		return
	}
	for range 16 {
		p1 := f.pump(&t.a, &t.b)
		if t.dead {
			return
		}
		p2 := f.pump(&t.b, &t.a)
		if t.dead {
			return
		}
		if !p1 && !p2 {
			if t.closing && t.a.idle() && t.b.idle() {
				f.teardown(t, t.reason)
			}
			return
		}
	}
	if !t.queued {
		t.queued = true
		f.again = append(f.again, t)
	}
}

// idle reports that nothing waits to be written to ep.
func (ep *endpoint) idle() bool {
	return len(ep.out) == 0 && len(ep.ctrl) == 0 && (ep.pipe == nil || ep.pipe.N == 0)
}

// pump writes what waits for dst and, if that is all written, reads once
// from src. It reports whether anything moved.
func (f *forwarder) pump(src, dst *endpoint) bool {
	moved, empty := f.flush(dst)
	if !empty || src.t.dead {
		return moved
	}
	t := src.t
	if t.closing || src.eof || !src.readable || len(src.ctrl) > ctrlHigh || src.quota < 0 {
		return moved
	}
	if rate := f.s.tunnelRate.Load(); rate > 0 {
		if src.bkt == nil {
			src.bkt = &bucket{}
		}
		n, wait := src.bkt.allow(rate, time.Now(), pool.ChunkSize)
		if n == 0 {
			f.throttle(src, wait)
			return moved
		}
		src.quota = n
	}
	if !f.fill(src, dst) {
		return moved
	}
	if !t.dead {
		f.flush(dst)
	}
	return true
}

// flush writes what waits for dst. empty reports that no data (as opposed to
// control frames waiting for a frame boundary) is pending.
func (f *forwarder) flush(dst *endpoint) (moved, empty bool) {
	t := dst.t
	if p := dst.pipe; p != nil {
		for p.N > 0 {
			if !dst.writable {
				return moved, false
			}
			n, err := unix.Splice(p.R, nil, dst.fd, nil, p.N, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
			if n > 0 {
				p.N -= int(n)
				moved = true
				f.progressed(dst)
			}
			if err == unix.EAGAIN {
				dst.writable = false
				f.stall(dst)
				return moved, false
			}
			if err != nil || n == 0 {
				f.ioError(dst, err)
				return moved, false
			}
		}
		if !dst.peer.readable || t.closing {
			pool.PutPipe(p)
			dst.pipe = nil
		}
	}
	for {
		for len(dst.out) > 0 {
			if !dst.writable {
				return moved, false
			}
			n, err := dst.sock.Write(dst.out)
			if n > 0 {
				dst.out = dst.out[n:]
				moved = true
				f.progressed(dst)
			}
			if err == unix.EAGAIN {
				dst.writable = false
				f.stall(dst)
				return moved, false
			}
			if err != nil {
				f.ioError(dst, err)
				return moved, false
			}
		}
		if err := dst.sock.Flush(); err != nil {
			if err == unix.EAGAIN {
				dst.writable = false
				f.stall(dst)
			} else {
				f.ioError(dst, err)
			}
			return moved, false
		}
		if len(dst.ctrl) == 0 {
			break
		}
		if dst.midFrame {
			if t.closing { // the frame will never be finished: no close frame
				dst.ctrl = dst.ctrl[:0]
			}
			break
		}
		// Control frames go out through the chunk like data, in order.
		if dst.buf == nil {
			dst.buf = pool.GetChunk()
		}
		n := copy(*dst.buf, dst.ctrl)
		dst.out = (*dst.buf)[:n]
		if n == len(dst.ctrl) {
			dst.ctrl = nil // an idle tunnel keeps no buffer
		} else {
			dst.ctrl = append(dst.ctrl[:0], dst.ctrl[n:]...)
		}
	}
	if dst.buf != nil {
		pool.PutChunk(dst.buf)
		dst.buf, dst.out = nil, nil
	}
	return moved, true
}

// fill reads once from src into what waits for dst. It reports whether
// anything happened (bytes read or the stream ended).
func (f *forwarder) fill(src, dst *endpoint) bool {
	t := src.t
	if t.splice {
		if dst.pipe == nil {
			p, err := pool.GetPipe()
			if err != nil {
				f.s.log.Error("pipe", "err", err)
				f.teardown(t, ReasonIOError)
				return false
			}
			dst.pipe = p
		}
		want := pool.ChunkSize
		if src.quota > 0 {
			want = min(want, src.quota)
		}
		n, err := unix.Splice(src.fd, nil, dst.pipe.W, nil, want, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch {
		case n > 0:
			src.bkt.take(int(n)) // nil-safe
			dst.pipe.N += int(n)
			f.s.stats.splicedBytes.Add(int(n))
			src.rx.Add(int(n))
			src.rxT.Add(uint64(n))
			return true
		case err == unix.EAGAIN:
			src.readable = false
			if dst.pipe.N == 0 {
				pool.PutPipe(dst.pipe)
				dst.pipe = nil
			}
			return false
		default: // 0: EOF; or a reset
			f.ended(src)
			return true
		}
	}
	if dst.buf == nil {
		dst.buf = pool.GetChunk()
	}
	b := *dst.buf
	limit := min(len(b), wsSlack+f.s.cfg.MaxBuffer)
	if src.quota > 0 {
		limit = min(limit, wsSlack+src.quota)
	}
	n, err := src.sock.Read(b[wsSlack:limit])
	switch {
	case n > 0:
		src.bkt.take(n)
	case err == unix.EAGAIN:
		src.readable = false
		pool.PutChunk(dst.buf)
		dst.buf, dst.out = nil, nil
		return false
	default:
		pool.PutChunk(dst.buf)
		dst.buf, dst.out = nil, nil
		f.ended(src)
		return true
	}
	f.s.stats.bufferedBytes.Add(n)
	src.rx.Add(n)
	src.rxT.Add(uint64(n))
	if !src.ws {
		if !dst.ws {
			dst.out = b[wsSlack : wsSlack+n]
			return true
		}
		// Raw TCP bytes become one BINARY frame: the relay never emits a TEXT
		// frame it has not validated.
		h := ws.Header{Fin: true, OpCode: ws.OpBinary, Length: int64(n)}
		start := wsSlack - ws.HeaderSize(h)
		handshake.AppendHeader(b[start:start], h)
		dst.out = b[start : wsSlack+n]
		return true
	}
	w, err := f.deframe(src, dst, b, n)
	dst.out = b[:w]
	if err != nil {
		f.wsError(src, err)
	}
	return true
}

// deframe decodes n bytes read from WebSocket endpoint src (at b[wsSlack:])
// and writes what dst must receive to the front of b, in place: payloads
// only for a TCP dst, frames re-headed unmasked with the same opcode and FIN
// for a WebSocket dst. Control frames are answered by the relay. It returns
// the number of output bytes.
func (f *forwarder) deframe(src, dst *endpoint, b []byte, n int) (int, error) {
	data := b[wsSlack : wsSlack+n]
	w := 0
	for len(data) > 0 && !src.t.closing {
		fr, m, err := src.in.dec.Decode(data)
		if err != nil {
			return w, err
		}
		data = data[m:]
		switch fr.Kind {
		case handshake.FragNone:
			if m == 0 {
				return w, nil
			}
		case handshake.FragHeader:
			op := fr.Header.OpCode
			if op.IsControl() {
				src.in.ctrlOp = op
				src.in.ctrlIn = src.in.ctrlIn[:0]
				if fr.FrameEnd {
					f.control(src)
				}
				continue
			}
			if dst.ws {
				h := ws.Header{Fin: fr.Header.Fin, OpCode: op, Length: fr.Header.Length}
				w = len(handshake.AppendHeader(b[:w], h))
				dst.midFrame = !fr.FrameEnd
			}
		case handshake.FragPayload:
			if fr.Header.OpCode.IsControl() {
				src.in.ctrlIn = append(src.in.ctrlIn, fr.Data...)
				if fr.FrameEnd {
					f.control(src)
				}
				continue
			}
			w += copy(b[w:], fr.Data)
			if fr.FrameEnd && dst.ws {
				dst.midFrame = false
			}
		}
	}
	return w, nil
}

// control acts on a complete control frame from ep: ping → pong with the same
// payload, close → close reply and the tunnel ends.
func (f *forwarder) control(ep *endpoint) {
	in := ep.in
	switch in.ctrlOp {
	case ws.OpPing:
		ep.ctrl = handshake.AppendFrame(ep.ctrl, ws.OpPong, true, in.ctrlIn)
	case ws.OpClose:
		if err := handshake.CheckClosePayload(in.ctrlIn); err != nil {
			f.wsError(ep, err)
			return
		}
		code := ws.StatusNormalClosure
		if len(in.ctrlIn) >= 2 {
			code = ws.StatusCode(uint16(in.ctrlIn[0])<<8 | uint16(in.ctrlIn[1]))
		}
		ep.ctrl = handshake.AppendClose(ep.ctrl, code, "")
		ep.closeSent = true
		ep.eof = true
		f.startClose(ep.t, ReasonPeerClosed)
	}
}

// wsError answers a WebSocket protocol violation by ep with the close code it
// carries and ends the tunnel.
func (f *forwarder) wsError(ep *endpoint, err error) {
	code, text := closeCodeOf(err)
	info := &ep.t.infoA
	if ep == &ep.t.b {
		info = &ep.t.infoB
	}
	f.s.log.Debug("websocket protocol error in tunnel", "tunnel", ep.t.id, "peer", info.address, "err", err)
	if !ep.closeSent {
		ep.ctrl = handshake.AppendClose(ep.ctrl, code, text)
		ep.closeSent = true
	}
	ep.eof = true
	f.startClose(ep.t, ReasonWebSocket)
}

// ended handles the end of what ep sends (EOF or reset).
func (f *forwarder) ended(ep *endpoint) {
	ep.eof = true
	ep.closeSent = true // the socket is going: nothing more is sent to it
	ep.ctrl = ep.ctrl[:0]
	f.startClose(ep.t, ReasonPeerClosed)
}

// startClose stops reading both sides; what is queued is still delivered,
// then the tunnel is torn down. A WebSocket partner gets a close frame.
func (f *forwarder) startClose(t *tunnel, reason Reason) {
	if t.closing {
		return
	}
	t.closing, t.reason = true, reason
	// The key is free from now on: a WebSocket client may read its close
	// frame and come back before the sockets are closed.
	f.s.reg.Leave(t.key, t)
	for _, ep := range []*endpoint{&t.a, &t.b} {
		if ep.ws && !ep.closeSent {
			ep.ctrl = handshake.AppendClose(ep.ctrl, ws.StatusNormalClosure, "partner closed")
			ep.closeSent = true
		}
	}
}

func (f *forwarder) ioError(ep *endpoint, err error) {
	f.s.log.Debug("tunnel write failed", "err", err)
	f.teardown(ep.t, ReasonPeerClosed)
}

func (f *forwarder) stall(ep *endpoint) {
	if ep.stallSince == 0 {
		ep.stallSince = time.Now().UnixNano()
		f.stalled[ep] = struct{}{}
	}
}

func (f *forwarder) progressed(ep *endpoint) {
	if ep.stallSince != 0 {
		ep.stallSince = 0
		delete(f.stalled, ep)
	}
}

func (f *forwarder) scanStalls(now int64) {
	limit := int64(f.s.cfg.WriteStallTimeout)
	for ep := range f.stalled {
		if now-ep.stallSince >= limit && !ep.t.dead {
			f.s.log.Debug("write stall", "stalled_for", time.Duration(now-ep.stallSince))
			f.teardown(ep.t, ReasonWriteStall)
		}
	}
}

// teardown closes both sockets and releases everything the tunnel holds.
func (f *forwarder) teardown(t *tunnel, reason Reason) {
	if t.dead {
		return
	}
	t.dead = true
	// Free the key before the sockets close: a client that sees its tunnel
	// end may pair again at once.
	f.s.reg.Leave(t.key, t)
	for _, ep := range []*endpoint{&t.a, &t.b} {
		delete(f.stalled, ep)
		if ep.sock != nil {
			delete(f.eps, int32(ep.fd))
			ep.sock.Close()
		}
		if ep.buf != nil {
			pool.PutChunk(ep.buf)
			ep.buf, ep.out = nil, nil
		}
		if ep.pipe != nil {
			pool.PutPipe(ep.pipe)
			ep.pipe = nil
		}
		ep.uncount(f.s)
	}
	st := f.s.stats
	if t.start != 0 {
		st.tunnelsActive.Dec()
	}
	st.closes[reason].Inc()
	st.closes[ReasonPartnerClosed].Inc()
	if t.start != 0 {
		f.s.trackTunnel(t, false)
		f.s.log.Info("tunnel closed", "tunnel", t.id, "token", t.tokenHash, "reason", reason.String(),
			"duration", time.Since(time.Unix(0, t.start)).Round(time.Millisecond), "bytes_a_to_b", t.ab.Load(), "bytes_b_to_a", t.ba.Load())
	}
}

// shutdown closes every tunnel: WebSocket ends get a best-effort 1001 close.
func (f *forwarder) shutdown() {
	f.mu.Lock()
	f.quit = true
	q := f.queue
	f.queue = nil
	f.mu.Unlock()
	for _, fn := range q {
		fn()
	}
	for h := range f.hubs {
		h.close(ReasonShutdown)
	}
	for _, p := range f.eps {
		ep, ok := p.(*endpoint)
		if !ok {
			if tt, ok := p.(*tlsTransport); ok {
				tt.shutdown(f)
			}
			continue
		}
		if ep.t.dead {
			continue
		}
		for _, e := range []*endpoint{&ep.t.a, &ep.t.b} {
			if e.ws && !e.closeSent && !e.midFrame && len(e.out) == 0 {
				_, _ = e.sock.Write(handshake.AppendClose(nil, ws.StatusGoingAway, "server shutting down"))
				_ = e.sock.Flush()
			}
		}
		f.teardown(ep.t, ReasonShutdown)
	}
	f.closeFds()
}

// closeFds frees the loop's epoll set and wake-up eventfd: at the end of
// shutdown, or for a forwarder whose loop never ran.
func (f *forwarder) closeFds() {
	unix.Close(f.epfd)
	unix.Close(f.evfd)
}

// throttle is a tunnel direction waiting for TunnelRate tokens.
type throttle struct {
	ep *endpoint
	at time.Time
}

// throttle parks ep's reads until its bucket has tokens again.
func (f *forwarder) throttle(ep *endpoint, wait time.Duration) {
	ep.quota = -1
	f.s.stats.throttled.Inc()
	f.throttled = append(f.throttled, throttle{ep, time.Now().Add(wait)})
}

func (f *forwarder) throttleTimeout(timeout int) int {
	soonest := time.Until(f.throttled[0].at)
	for _, th := range f.throttled[1:] {
		soonest = min(soonest, time.Until(th.at))
	}
	ms := max(int(soonest/time.Millisecond), 1)
	if timeout < 0 || ms < timeout {
		return ms
	}
	return timeout
}

func (f *forwarder) resumeThrottled() {
	now := time.Now()
	kept := f.throttled[:0]
	var due []*endpoint
	for _, th := range f.throttled {
		if th.ep.t.dead {
			continue
		}
		if now.Before(th.at) {
			kept = append(kept, th)
			continue
		}
		th.ep.quota = 0
		due = append(due, th.ep)
	}
	f.throttled = kept
	for _, ep := range due {
		f.service(ep.t)
	}
}
