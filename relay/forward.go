package relay

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/pool"
	"github.com/meetpoint/meetpoint/relay/reason"
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

// ctrlSoft is the control queue length above which a tunnel stops reading a
// client's input until the queue drains (backpressure on ping floods).
const ctrlSoft = 1 << 10

// wsSlack is the room kept before the read position in a chunk so that
// rewritten WebSocket headers (server headers are never longer than the
// client's, but one may have been split across reads) never overtake
// unread input.
const wsSlack = 14

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

	closing bool          // no more reads; finish once everything queued is written
	reason  reason.Reason // why closing: counted for culprit, the other side gets partner_closed
	culprit *endpoint     // the side whose client (or socket) ended the tunnel; nil: neither
	dead    bool          // torn down
	queued  bool          // in the forwarder's again list
}

// tunnelSetup is the hand-over state, dropped once both sides are in.
type tunnelSetup struct {
	mu     sync.Mutex
	ca, cb *conn // the two connections (dropped with setup, so they can be freed)
	nready int   // sides handed over (0..2)
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
		connected: c.created.UnixNano(), ws: c.ws != nil}
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
	tk    *ticket
	rx    *metrics.Counter // bytes read from this endpoint, all tunnels
	rxT   *atomic.Uint64   // bytes read from this endpoint, this tunnel
	bkt   *rate.Limiter    // TunnelRate bucket for reads from this endpoint (nil until a rate applies)
	quota int              // most bytes the next read may take (0: no limit; -1: throttled)

	readable, writable bool // edge-triggered readiness latches
	eof                bool // nothing more is read from this endpoint
	broken             bool // its socket failed or its client is gone: close without lingering

	// Outbound. Invariant: buf != nil iff out is non-empty or about to be
	// filled; pipe != nil only on splice tunnels.
	buf        *[]byte
	out        []byte
	pipe       *pool.Pipe
	ctrl       handshake.Queue // relay messages and control frames, sent at a frame boundary
	midFrame   bool            // the data stream toward this endpoint is inside a WebSocket frame
	stallSince int64           // unix ns since writes were refused with data pending; 0 if not

	ws *handshake.Stream // inbound WebSocket state; nil on plain TCP endpoints
}

// newTunnel builds the tunnel of a (waiting) and b (completing). Called
// with both connections' locks held.
func newTunnel(a, b *conn) *tunnel {
	t := &tunnel{s: a.s, key: b.key, joined: b.joined.UnixNano(), setup: &tunnelSetup{ca: a, cb: b}}
	t.a = endpoint{t: t, peer: &t.b, fd: -1, rx: a.s.stats.bytesUp}
	t.b = endpoint{t: t, peer: &t.a, fd: -1, rx: a.s.stats.bytesDn}
	t.a.rxT, t.b.rxT = &t.ab, &t.ba
	t.infoA, t.infoB, t.tokenHash = peerInfoOf(a), peerInfoOf(b), TokenHash(b.key.Token)
	a.established = established(a, b)
	b.established = established(b, a)
	_, tlsA := a.tr.(*tlsTransport)
	_, tlsB := b.tr.(*tlsTransport)
	t.splice = a.ws == nil && b.ws == nil && !tlsA && !tlsB
	return t
}

// established is the TunnelEstablished notification telling c about p: the
// relay's last JSON-RPC message to c.
func established(c, p *conn) []byte {
	msg := handshake.AppendNotification(nil, c.notifID, "RemoteProxy.TunnelEstablished",
		handshake.Str("name", p.name), handshake.Str("uuid", p.uuid))
	c.notifID++
	if c.ws != nil {
		return handshake.AppendFrame(nil, ws.OpText, true, msg)
	}
	return msg
}

// Claim implements Joiner: a tunnel is never waiting.
func (t *tunnel) Claim() bool { return false }

// UUID implements Joiner.
func (t *tunnel) UUID() string { return "" }

// ready implements target. The second side in decides: if either side's
// set-up failed, or a client sent data before it could have seen
// TunnelEstablished, the tunnel is abandoned (each side told why, or that
// its partner left); otherwise it goes to a forwarder.
func (t *tunnel) ready(c *conn) {
	su := t.setup // set until the second side is in; both sides read it before either clears it
	su.mu.Lock()
	su.nready++
	done := su.nready == 2
	su.mu.Unlock()
	if !done {
		return
	}
	t.setup = nil // frees the conns and netpoll's objects behind them
	a, b := su.ca, su.cb
	for _, c := range []*conn{a, b} {
		if !c.failed && c.sentEarly() {
			c.failed, c.reason = true, reason.DataBeforeTunnel
		}
	}
	if a.failed || b.failed {
		t.abandon(a, b)
		return
	}
	t.a.init(a)
	t.b.init(b)
	t.f = t.s.pickForwarder(t.a.fd)
	t.f.add(t)
}

// sentEarly reports whether a claimed legacy client sent data (anything
// but whitespace between JSON-RPC messages) before TunnelEstablished.
func (c *conn) sentEarly() bool {
	if c.lateMsg || (c.ws != nil && c.ws.InMessage()) {
		return true
	}
	return len(trimSpace(c.late)) > 0
}

// abandon ends a tunnel whose set-up failed: the key is freed first (a
// client that sees its connection end may come back at once), then a side
// that failed ends with its own reason and the other is told its partner
// left.
func (t *tunnel) abandon(a, b *conn) {
	why := a.reason
	if !a.failed {
		why = b.reason
	}
	t.s.log.Debug("tunnel set-up abandoned", "token", t.tokenHash, "reason", why.String())
	t.s.reg.Leave(t.key, t)
	for _, c := range []*conn{a, b} {
		t.s.dismiss(c, reason.PartnerClosed, ws.StatusGoingAway, "Partner left")
	}
}

// init takes the socket and the stream state over from the connection.
func (ep *endpoint) init(c *conn) {
	ep.sock, ep.fd, ep.tk, ep.ws = c.sk, c.sk.Fd(), c.tk, c.ws
	if ep.ws != nil {
		ep.ws.Dec.MaxFrame = 0 // frames are streamed, never held whole
	}
	ep.ctrl.B = append(c.established, c.out.Take()...) // then pongs owed since the claim
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
	scratch   []byte // TLS plaintext before a tunnel exists; input discarded while lingering
	stalled   map[*endpoint]struct{}
	again     []resumer // stopped for fairness, not for lack of work
	spare     []resumer
	hubs      map[*hub]struct{}      // TunnelProxy hubs on this loop
	throttled []throttle             // tunnels waiting for TunnelRate tokens
	lingering map[*lingerer]struct{} // sockets closing gracefully
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
		lingering: make(map[*lingerer]struct{}),
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

// pollee is what a forwarder's epoll set holds: a tunnel endpoint, a
// TunnelProxy end, a TLS connection that has no tunnel yet, a lingering
// socket.
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
		ep.tk.End(reason.Shutdown)
	}
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

func (f *forwarder) scanInterval() time.Duration {
	d := f.s.cfg.WriteStallTimeout / 4
	d = min(d, time.Second)
	if len(f.lingering) > 0 {
		d = min(d, lingerTimeout/4)
	}
	return max(d, 10*time.Millisecond)
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
		case len(f.stalled) > 0 || len(f.lingering) > 0:
			timeout = int(f.scanInterval() / time.Millisecond)
		case len(f.hubs) > 0:
			timeout = 1000
		}
		if len(f.throttled) > 0 {
			timeout = f.throttleTimeout(timeout)
		}
		n, err := unix.EpollWait(f.epfd, events, timeout)
		if err != nil && err != unix.EINTR {
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
		busy := len(f.stalled) > 0 || len(f.hubs) > 0 || len(f.lingering) > 0
		if now := time.Now(); busy && now.Sub(lastScan) >= f.scanInterval() {
			lastScan = now
			f.scanStalls(now.UnixNano())
			f.scanHubs(now)
			f.scanLingering(now)
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
	f.s.trackTunnel(t, true)
	for _, ep := range []*endpoint{&t.a, &t.b} {
		if err := f.register(ep.fd, ep); err != nil {
			f.s.log.Error("epoll add", "err", err)
			ep.broken = true
			f.startClose(t, ep, reason.IOError)
			f.teardown(t)
			return
		}
		ep.readable, ep.writable = true, true
	}
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
				f.teardown(t)
			}
			return
		}
	}
	if !t.queued {
		t.queued = true
		f.again = append(f.again, t)
	}
}

// idle reports that nothing waits to be written to ep (or that nothing
// can be: its socket is gone).
func (ep *endpoint) idle() bool {
	return ep.broken || len(ep.out) == 0 && ep.ctrl.Len() == 0 && (ep.pipe == nil || ep.pipe.N == 0)
}

// pump writes what waits for dst and, if that is all written, reads once
// from src. It reports whether anything moved.
func (f *forwarder) pump(src, dst *endpoint) bool {
	moved, empty := f.flush(dst)
	if !empty || src.t.dead {
		return moved
	}
	t := src.t
	if t.closing || src.eof || !src.readable || src.ctrl.Len() > ctrlSoft || src.quota < 0 {
		return moved
	}
	if rate := f.s.tunnelRate.Load(); rate > 0 {
		if src.bkt == nil {
			src.bkt = tunnelBucket(rate)
		}
		n, wait := allowRead(src.bkt, rate, time.Now(), pool.ChunkSize)
		if n == 0 {
			f.throttle(src, wait)
			return moved
		}
		src.quota = n
	} else {
		src.bkt, src.quota = nil, 0
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
	if dst.broken {
		return false, true
	}
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
				f.writeFailed(dst, err)
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
				f.writeFailed(dst, err)
				return moved, false
			}
		}
		if err := dst.sock.Flush(); err != nil {
			if err == unix.EAGAIN {
				dst.writable = false
				f.stall(dst)
			} else {
				f.writeFailed(dst, err)
			}
			return moved, false
		}
		if dst.ctrl.Len() == 0 {
			break
		}
		if dst.midFrame {
			if t.closing { // the frame will never be finished: no close frame
				dst.ctrl.Take()
			}
			break
		}
		// Control frames go out through the chunk like data, in order.
		if dst.buf == nil {
			dst.buf = pool.GetChunk()
		}
		n := copy(*dst.buf, dst.ctrl.B)
		dst.out = (*dst.buf)[:n]
		dst.ctrl.Consumed(n) // an idle tunnel keeps no buffer
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
				f.startClose(t, nil, reason.IOError)
				f.teardown(t)
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
			spend(src.bkt, time.Now(), int(n))
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
		spend(src.bkt, time.Now(), n)
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
	if src.ws == nil {
		if dst.ws == nil {
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
// for a WebSocket dst. Control frames are answered by src's wsStream. It
// returns the number of output bytes.
func (f *forwarder) deframe(src, dst *endpoint, b []byte, n int) (int, error) {
	data := b[wsSlack : wsSlack+n]
	w := 0
	for len(data) > 0 && !src.t.closing {
		ev, fr, m, err := src.ws.Step(data, &src.ctrl)
		if err != nil {
			return w, err
		}
		data = data[m:]
		switch ev {
		case handshake.EventMore:
			return w, nil
		case handshake.EventClose:
			src.eof = true
			f.startClose(src.t, src, reason.PeerClosed)
			return w, nil
		case handshake.EventControl:
			continue
		}
		switch fr.Kind {
		case handshake.FragHeader:
			if dst.ws != nil {
				h := ws.Header{Fin: fr.Header.Fin, OpCode: fr.Header.OpCode, Length: fr.Header.Length}
				w = len(handshake.AppendHeader(b[:w], h))
				dst.midFrame = !fr.FrameEnd
			}
		case handshake.FragPayload:
			w += copy(b[w:], fr.Data)
			if fr.FrameEnd && dst.ws != nil {
				dst.midFrame = false
			}
		}
	}
	return w, nil
}

// wsError answers a WebSocket protocol violation by ep (or a ping flood
// past its budget) with the close code it carries and ends the tunnel.
func (f *forwarder) wsError(ep *endpoint, err error) {
	info := &ep.t.infoA
	if ep == &ep.t.b {
		info = &ep.t.infoB
	}
	f.s.log.Debug("websocket protocol error in tunnel", "tunnel", ep.t.id, "peer", info.address, "err", err)
	ep.eof = true
	if err == handshake.ErrQueueFull {
		ep.broken = true
		f.startClose(ep.t, ep, reason.SlowReader)
		return
	}
	code, text := handshake.CloseCodeOf(err)
	ep.ws.SendClose(&ep.ctrl, code, text)
	f.startClose(ep.t, ep, reason.WebSocket)
}

// ended handles the end of what ep sends (EOF or reset): its client is
// gone, so nothing more is sent to it.
func (f *forwarder) ended(ep *endpoint) {
	ep.eof, ep.broken = true, true
	ep.ctrl.Take()
	f.startClose(ep.t, ep, reason.PeerClosed)
}

// startClose stops reading both sides; what is queued is still delivered,
// then the tunnel is torn down. A WebSocket partner gets a close frame.
// culprit (nil for none) is the side that ended the tunnel: it is counted
// under reason, the other side under partner_closed.
func (f *forwarder) startClose(t *tunnel, culprit *endpoint, reason reason.Reason) {
	if t.closing {
		return
	}
	t.closing, t.reason, t.culprit = true, reason, culprit
	// The key is free from now on: a WebSocket client may read its close
	// frame and come back before the sockets are closed.
	f.s.reg.Leave(t.key, t)
	for _, ep := range []*endpoint{&t.a, &t.b} {
		if ep.ws != nil && !ep.broken {
			ep.ws.SendClose(&ep.ctrl, ws.StatusNormalClosure, "partner closed")
		}
	}
}

// writeFailed ends the tunnel after a write to dst failed.
func (f *forwarder) writeFailed(dst *endpoint, err error) {
	f.s.log.Debug("tunnel write failed", "err", err)
	dst.broken = true
	f.startClose(dst.t, dst, reason.IOError)
	f.teardown(dst.t)
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
			ep.broken = true // it reads nothing: no lingering
			f.startClose(ep.t, ep, reason.WriteStall)
			f.teardown(ep.t)
		}
	}
}

// teardown releases everything the tunnel holds and lets go of both
// sockets: a side whose client is gone (or misbehaved) is closed at once,
// the other lingers until its client has read its last bytes.
func (f *forwarder) teardown(t *tunnel) {
	if t.dead {
		return
	}
	t.dead = true
	if !t.closing {
		f.startClose(t, nil, reason.Shutdown)
	}
	for _, ep := range []*endpoint{&t.a, &t.b} {
		delete(f.stalled, ep)
		if ep.buf != nil {
			pool.PutChunk(ep.buf)
			ep.buf, ep.out = nil, nil
		}
		if ep.pipe != nil {
			pool.PutPipe(ep.pipe)
			ep.pipe = nil
		}
		r := reason.PartnerClosed
		if t.culprit == ep || t.culprit == nil {
			r = t.reason
		}
		if ep.sock == nil {
			ep.tk.End(r)
			continue
		}
		f.unregister(ep.fd)
		f.goodbye(ep.sock, ep.ctrl.Take(), !ep.broken, ep.tk, r)
		ep.sock = nil
	}
	st := f.s.stats
	if t.start != 0 {
		st.tunnelsActive.Dec()
		f.s.trackTunnel(t, false)
		f.s.log.Info("tunnel closed", "tunnel", t.id, "token", t.tokenHash, "reason", t.reason.String(),
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
		h.close(reason.Shutdown)
	}
	for _, p := range f.eps {
		switch p := p.(type) {
		case *tlsTransport:
			p.shutdown(f)
		case *endpoint:
			t := p.t
			if t.dead {
				continue
			}
			for _, e := range []*endpoint{&t.a, &t.b} {
				if e.ws != nil && !e.midFrame && len(e.out) == 0 {
					e.ws.CloseSent = false // replace "partner closed" if it was queued
					e.ctrl.Take()
					e.ws.SendClose(&e.ctrl, ws.StatusGoingAway, "server shutting down")
				}
			}
			if !t.closing {
				f.startClose(t, nil, reason.Shutdown)
			}
			f.teardown(t)
		}
	}
	for l := range f.lingering {
		l.finish(f)
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
