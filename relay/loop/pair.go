package loop

import (
	"net"
	"runtime/debug"
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

// A Pair is two sockets forwarding to each other, owned by one loop.
//
// Per direction at most one 64 KiB chunk (buffered) or one 64 KiB pipe
// (splice, both ends plain TCP) holds data, and only while data is in
// flight: a sender is read only when everything for its receiver has been
// written, so a slow receiver stops the sender through TCP flow control.
// An idle pair holds neither: its cost is the Pair and two epoll entries.
// WebSocket ends are re-framed in place (the relay's headers are never
// longer than the client's masked ones), their control frames answered by
// their Stream; a receiver that accepts nothing for WriteStallTimeout ends
// the pair. Fairness: a busy pair is served at most 16 chunks per turn.
type Pair struct {
	A, B End
	// Splice lets the pair forward with splice(2); only when both ends
	// are plain TCP. Each direction splices while its transfers are bulk
	// (spliceFrom bytes or more) and reads and writes small ones, as
	// HAProxy's splice-auto does: a read that stops short tells that the
	// socket is drained, a splice cannot (it stops short when the pipe
	// runs out of slots), so a small message spliced costs a third system
	// call, the splice that finds nothing.
	Splice bool
	// Owner is told about the pair's end.
	Owner PairOwner

	closing bool          // no more reads; finish once everything queued is written
	why     reason.Reason // why closing: counted for culprit, the other end gets partner_closed
	culprit *End          // the end whose client (or socket) ended the pair; nil: neither
	dead    bool          // torn down
	queued  bool          // in the loop's again list
	calling bool          // in its Owner's code, whose locks the fault barrier cannot vouch for (contain)
}

// PairOwner is told about a pair's end, on the loop goroutine.
type PairOwner interface {
	// PairClosing: the pair stops reading, for r. What names the pair (a
	// registry key) can be freed now: a client that reads its close may
	// come back before the sockets are closed.
	PairClosing(p *Pair, r reason.Reason)
	// PairDone: both sockets were let go of; each End's Ender ends as its
	// socket closes.
	PairDone(p *Pair, r reason.Reason)
}

// End is one socket of a Pair. Fill the exported fields, then StartPair.
type End struct {
	Sock Sock
	// WS is the end's inbound WebSocket state, nil on raw TCP.
	WS *handshake.Stream
	// Ctrl holds relay messages and control frames for this end, sent
	// before any data and then at frame boundaries.
	Ctrl handshake.Queue
	// Ender is told when the socket closes, with the end's reason.
	Ender reason.Ender
	// RX and RXT count bytes read from this end (all pairs, this pair).
	RX  *metrics.Counter
	RXT *atomic.Uint64
	// Peer names the client in logs (nil: unknown); formatted only when
	// a line is logged.
	Peer net.Addr
	// Text frames what a raw TCP peer sends toward this WebSocket end
	// (TEXT while the stream is valid UTF-8, BINARY from the first byte
	// that is not; set Text.Binary for BINARY only).
	Text handshake.TextFramer
	// Settle, on a raw TCP end, holds the peer's first bytes until this
	// long after the end's relay messages (TunnelEstablished) were
	// written, so that a client parsing its socket's whole buffer as one
	// JSON message (nymea's) reads the notification alone.
	Settle time.Duration

	p     *Pair
	peer  *End
	fd    int
	bkt   *rate.Limiter // Rate bucket for reads from this end (nil while no rate applies)
	quota int           // most bytes the next read may take (0: no limit; -1: throttled)

	readable, writable bool // edge-triggered readiness latches
	hungUp             bool // epoll said the client closed its side (EPOLLRDHUP, EPOLLHUP)
	plain              bool // Sock is a PlainSock: a short read means the socket is drained
	urgent             bool // epoll reported TCP urgent data (EPOLLPRI), until a read finds nothing
	closed             bool // a WebSocket end whose client sent its close frame: nothing may follow it
	eof                bool // nothing more is read from this end
	broken             bool // its socket failed or its client is gone: close without lingering
	stalled            bool // ended by the write-stall check: counted as write_stall, whoever ended the pair first

	// Outbound. Invariant: buf != nil iff out is non-empty or about to be
	// filled; pipe != nil only on splice pairs.
	buf        *[]byte
	out        []byte
	pipe       *pool.Pipe
	midFrame   bool  // the data stream toward this end is inside a WebSocket frame
	bulk       bool  // Pair.Splice: the last transfer from this end was bulk, so the next splices (here: in midFrame's padding)
	stallSince int64 // unix ns since writes were refused with data pending; 0 if not
	settled    int64 // with Settle: unix ns after which data may follow the relay's messages; 0: not yet started
}

// spliceFrom is the transfer, in bytes, from which a splice pair's next
// transfer from the same end splices rather than reads: below it a read
// and a write (a copy of at most this much) cost less than splice's
// extra call.
const spliceFrom = 16 << 10

// ctrlSoft is the control queue length above which an end's input is not
// read until the queue drains (backpressure on ping floods), unless the
// end's client hung up.
const ctrlSoft = 1 << 10

// wsSlack is the room kept before the read position in a chunk so that
// rewritten WebSocket headers (the relay's are never longer than the
// client's, but one may have been split across reads) never overtake
// unread input.
const wsSlack = 14

// StartPair registers both ends and starts forwarding (loop goroutine
// only). Whatever happens, the pair's owner hears PairDone eventually.
func (l *Loop) StartPair(p *Pair) {
	p.A.p, p.B.p = p, p
	p.A.peer, p.B.peer = &p.B, &p.A
	for _, e := range []*End{&p.A, &p.B} {
		e.fd = e.Sock.Fd()
		if e.WS != nil {
			e.WS.Dec.MaxFrame = 0 // frames are streamed, never held whole
		}
	}
	for _, e := range []*End{&p.A, &p.B} {
		if err := l.Register(e.fd, e); err != nil {
			l.log.Error("epoll add", "err", err)
			e.broken = true
			l.startClose(p, e, reason.IOError)
			l.teardown(p)
			return
		}
		// A plain socket's input waits in the kernel, and adding it to the
		// (edge-triggered) epoll set reports it: no read is tried before
		// that event. A TLS session may hold decrypted input already.
		_, e.plain = e.Sock.(PlainSock)
		e.readable, e.writable = !e.plain, true
	}
	l.service(p)
}

// Event implements Pollee.
func (e *End) Event(l *Loop, events uint32) {
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		e.readable = true
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		e.writable = true
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		e.hungUp = true
	}
	if events&unix.EPOLLPRI != 0 {
		e.urgent = true
	}
	l.service(e.p)
}

// Resume implements Resumer.
func (p *Pair) Resume(l *Loop) {
	p.queued = false
	l.service(p)
}

// Stop implements Stopper: the loop is stopping.
func (e *End) Stop(l *Loop) {
	if !e.p.dead {
		e.p.shutdown(l)
	}
}

// service moves data both ways until nothing moves, or until it has had its
// share of the loop (then it is revisited after other ready sockets).
func (l *Loop) service(p *Pair) {
	if p.dead {
		return
	}
	defer l.contain(p)
	for range 16 {
		m1 := l.pump(&p.A, &p.B)
		if p.dead {
			return
		}
		m2 := l.pump(&p.B, &p.A)
		if p.dead {
			return
		}
		if !m1 && !m2 {
			if p.closing && p.A.idle() && p.B.idle() {
				l.teardown(p)
			}
			return
		}
	}
	if !p.queued {
		p.queued = true
		l.Again(p)
	}
}

// contain is service's fault barrier: a panic while the pair forwards —
// a bug in re-framing, in a TLS record layer, in the pair's bookkeeping —
// ends this pair at once, both ends counted as reason.Fault, instead of
// ending the process and every tunnel in it (Config.Fault logs it and
// decides). Safe because a pair's state belongs to the loop goroutine and
// takes no lock: nothing is left locked. What is queued may be half-built,
// so nothing more is sent: both sockets close at once, without lingering,
// a close frame or a TLS close_notify (Abandon); buffers go back, a pipe is closed (its count of what
// it holds may be off). Raised again: a panic in the Owner's code (p.calling; it may
// hold locks of its own) or in teardown (what it left half-done cannot be
// finished). Deferred by service. Cost: a deferred call per service.
func (l *Loop) contain(p *Pair) {
	v := recover()
	if v == nil {
		return
	}
	if p.calling || p.dead || l.cfg.Fault == nil || !l.cfg.Fault(p, v, debug.Stack()) {
		panic(v)
	}
	for _, e := range []*End{&p.A, &p.B} {
		e.broken = true
		e.Ctrl.Take()
		if e.Sock != nil {
			Abandon(e.Sock)
		}
		if e.pipe != nil { // its count may be off: closed, never pooled
			pool.DropPipe(e.pipe)
			e.pipe = nil
		}
	}
	if p.closing {
		p.why, p.culprit = reason.Fault, nil
	} else {
		l.startClose(p, nil, reason.Fault)
	}
	l.teardown(p)
}

// idle reports that nothing waits to be written to e (or that nothing can
// be: its socket is gone), its socket's own output (TLS ciphertext)
// included: a Write accepted it, but only a Flush delivers it.
func (e *End) idle() bool {
	if e.broken {
		return true
	}
	if len(e.out) > 0 || e.Ctrl.Len() > 0 || e.pipe != nil && e.pipe.N > 0 {
		return false
	}
	snd, ok := e.Sock.(sender)
	return !ok || snd.Pending() == 0
}

// pump writes what waits for dst and, if that is all written, reads once
// from src. It reports whether anything moved.
func (l *Loop) pump(src, dst *End) bool {
	moved, empty := l.flush(dst)
	if !empty || src.p.dead {
		return moved
	}
	if dst.Settle > 0 && dst.settled == 0 { // the relay's messages to dst just went out: the window starts
		dst.settled = time.Now().UnixNano() + int64(dst.Settle)
	}
	p := src.p
	// Owed control frames stop reads from src (a ping flood), except once
	// its client hung up: they may be waiting for the end of a frame toward
	// src that never comes, and its end must still be read (the queue
	// stays bounded: past QueueMax src is closed as a slow reader).
	if p.closing || src.eof || !src.readable || (src.Ctrl.Len() > ctrlSoft && !src.hungUp) || src.quota < 0 {
		return moved
	}
	if dst.Settle > 0 { // until the window after the relay's messages is over
		now := time.Now().UnixNano()
		if now < dst.settled {
			l.hold(src, time.Duration(dst.settled-now))
			return moved
		}
		dst.Settle = 0 // settled: never checked again
	}
	if bps := l.cfg.Rate.Load(); bps > 0 {
		if src.bkt == nil {
			src.bkt = newBucket(bps)
		}
		n, wait := allowRead(src.bkt, bps, time.Now(), pool.ChunkSize)
		if n == 0 {
			l.throttle(src, wait)
			return moved
		}
		src.quota = n
	} else {
		src.bkt, src.quota = nil, 0
	}
	if !l.fill(src, dst) {
		return moved
	}
	if !p.dead {
		l.flush(dst)
	}
	return true
}

// flush writes what waits for dst. empty reports that no data (as opposed to
// control frames waiting for a frame boundary) is pending.
func (l *Loop) flush(dst *End) (moved, empty bool) {
	p := dst.p
	if dst.broken {
		return false, true
	}
	if pp := dst.pipe; pp != nil {
		for pp.N > 0 {
			if !dst.writable {
				return moved, false
			}
			n, err := rawSplice(pp.R, dst.fd, pp.N, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
			if n > 0 {
				pp.N -= int(n)
				moved = true
				l.progressed(dst)
			}
			if err == unix.EAGAIN {
				dst.writable = false
				l.stall(dst)
				return moved, false
			}
			if err != nil || n == 0 {
				l.writeFailed(dst, err)
				return moved, false
			}
		}
		if !dst.peer.readable || p.closing {
			pool.PutPipe(pp)
			dst.pipe = nil
		}
	}
	// A TLS session writes ciphertext it kept while its Write and Flush
	// still answer EAGAIN: progress all the same.
	snd, _ := dst.Sock.(sender)
	sent := 0
	if snd != nil {
		sent = snd.Sent()
	}
	for {
		for len(dst.out) > 0 {
			if !dst.writable {
				return moved, false
			}
			n, err := dst.Sock.Write(dst.out)
			if n > 0 {
				dst.out = dst.out[n:]
				moved = true
				l.progressed(dst)
			}
			if err == unix.EAGAIN {
				dst.writable = false
				l.refused(dst, snd, sent)
				return moved, false
			}
			if err != nil {
				l.writeFailed(dst, err)
				return moved, false
			}
		}
		if err := dst.Sock.Flush(); err != nil {
			if err == unix.EAGAIN {
				dst.writable = false
				l.refused(dst, snd, sent)
			} else {
				l.writeFailed(dst, err)
			}
			return moved, false
		}
		// All taken: a TLS session may have just written what it kept
		// (ciphertext its socket refused before), with no Write to tell.
		l.progressed(dst)
		if dst.Ctrl.Len() == 0 {
			break
		}
		if dst.midFrame {
			if p.closing { // the frame will never be finished: no close frame
				dst.Ctrl.Take()
			}
			break
		}
		// Control frames go out through the chunk like data, in order.
		if dst.buf == nil {
			dst.buf = pool.GetChunk()
		}
		n := copy(*dst.buf, dst.Ctrl.B)
		dst.out = (*dst.buf)[:n]
		dst.Ctrl.Consumed(n) // an idle pair keeps no buffer
	}
	if dst.buf != nil {
		pool.PutChunk(dst.buf)
		dst.buf, dst.out = nil, nil
	}
	return moved, true
}

// hasPipe gives dst a pipe to splice through if it has none, and reports
// whether it has one. Without one (the process is out of descriptors) the
// read goes through a buffer instead: slower, never fatal to the tunnel.
func (l *Loop) hasPipe(dst *End) bool {
	if dst.pipe != nil {
		return true
	}
	pp, err := pool.GetPipe()
	if err != nil {
		l.cfg.NoPipe.Inc()
		l.pipeLogs.Do(func() {
			l.log.Warn("no pipe for splice(2): forwarding through buffers (meetpoint_splice_no_pipe_total)", "err", err)
		})
		return false
	}
	dst.pipe = pp
	return true
}

// fill reads once from src into what waits for dst. It reports whether
// anything happened (bytes read or the stream ended).
func (l *Loop) fill(src, dst *End) bool {
	p := src.p
	// splice(2) stops at TCP's urgent mark for good (EAGAIN, or 0 after a
	// FIN, as if the stream had ended): reads get past it.
	if p.Splice && src.bulk && !src.urgent && l.hasPipe(dst) {
		want := min(pool.ChunkSize, l.cfg.MaxBuffer) // the pipe holds no more than a chunk would
		if src.quota > 0 {
			want = min(want, src.quota)
		}
		n, err := rawSplice(src.fd, dst.pipe.W, want, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch {
		case n > 0:
			dst.pipe.N += int(n) // first: a pipe holding data must never look empty (PutPipe pools an empty one)
			spend(src.bkt, time.Now(), int(n))
			src.bulk = int(n) >= min(spliceFrom, want)
			l.cfg.Spliced.Add(int(n))
			src.count(int(n))
			return true
		case err == unix.EAGAIN:
			src.readable = false
			if dst.pipe.N == 0 {
				pool.PutPipe(dst.pipe)
				dst.pipe = nil
			}
			return false
		default: // 0: EOF; or a reset
			l.ended(src, err)
			return true
		}
	}
	if dst.buf == nil {
		dst.buf = pool.GetChunk()
	}
	b := *dst.buf
	limit := min(len(b), wsSlack+l.cfg.MaxBuffer)
	if src.quota > 0 {
		limit = min(limit, wsSlack+src.quota)
	}
	n, err := src.Sock.Read(b[wsSlack:limit])
	switch {
	case n > 0:
		spend(src.bkt, time.Now(), n)
		src.bulk = p.Splice && n >= min(spliceFrom, limit-wsSlack)
		// A plain socket that gave less than asked is drained: what
		// arrives after this read raises a new edge, so no read is spent
		// on EAGAIN (nginx's edge-triggered reads assume the same). Not
		// after a hang-up, whose end of stream is not announced again;
		// not while urgent data is pending, as a read stops short at its
		// mark with the bytes behind it already there; nor through TLS,
		// which holds decrypted records. splice(2) cannot tell: it stops
		// short when the pipe runs out of slots.
		if src.plain && !src.hungUp && !src.urgent && n < limit-wsSlack {
			src.readable = false
		}
	case err == unix.EAGAIN:
		src.readable, src.urgent = false, false
		pool.PutChunk(dst.buf)
		dst.buf, dst.out = nil, nil
		if dst.pipe != nil && dst.pipe.N == 0 { // left from a splice before this read: an idle pair holds none
			pool.PutPipe(dst.pipe)
			dst.pipe = nil
		}
		return false
	default:
		pool.PutChunk(dst.buf)
		dst.buf, dst.out = nil, nil
		l.ended(src, err)
		return true
	}
	l.cfg.Buffered.Add(n)
	src.count(n)
	if src.WS == nil {
		if dst.WS == nil {
			dst.out = b[wsSlack : wsSlack+n]
			return true
		}
		// Raw TCP bytes become one frame: TEXT while the stream is valid
		// UTF-8 (cut at a character boundary), BINARY otherwise — the
		// relay never emits a TEXT frame it has not validated.
		op, s, e := dst.Text.Next(b, wsSlack, wsSlack+n)
		if e == s && op == ws.OpText {
			dst.out = nil // all carried: the end of a character is still to come
			return true
		}
		h := ws.Header{Fin: true, OpCode: op, Length: int64(e - s)}
		start := s - ws.HeaderSize(h)
		handshake.AppendHeader(b[start:start], h)
		dst.out = b[start:e]
		return true
	}
	w, err := l.deframe(src, dst, b, n)
	dst.out = b[:w]
	if err != nil {
		l.wsError(src, err)
	}
	return true
}

func (e *End) count(n int) {
	if e.RX != nil {
		e.RX.Add(n)
	}
	if e.RXT != nil {
		e.RXT.Add(uint64(n))
	}
}

// deframe decodes n bytes read from WebSocket end src (at b[wsSlack:])
// and writes what dst must receive to the front of b, in place: payloads
// only for a TCP dst, frames re-headed unmasked with the same opcode and FIN
// for a WebSocket dst. Control frames are answered by src's Stream. It
// returns the number of output bytes.
func (l *Loop) deframe(src, dst *End, b []byte, n int) (int, error) {
	data := b[wsSlack : wsSlack+n]
	w := 0
	for len(data) > 0 && !src.p.closing {
		ev, fr, m, err := src.WS.Step(data, &src.Ctrl)
		if err != nil {
			return w, err
		}
		data = data[m:]
		switch ev {
		case handshake.EventMore:
			return w, nil
		case handshake.EventClose:
			src.eof, src.closed = true, true
			l.startClose(src.p, src, reason.PeerClosed)
			return w, nil
		case handshake.EventControl:
			continue
		}
		switch fr.Kind {
		case handshake.FragHeader:
			if dst.WS != nil {
				h := ws.Header{Fin: fr.Header.Fin, OpCode: fr.Header.OpCode, Length: fr.Header.Length}
				w = len(handshake.AppendHeader(b[:w], h))
				dst.midFrame = !fr.FrameEnd
			}
		case handshake.FragPayload:
			w += copy(b[w:], fr.Data)
			if fr.FrameEnd && dst.WS != nil {
				dst.midFrame = false
			}
		}
	}
	return w, nil
}

// wsError answers a WebSocket protocol violation by e (or a ping flood
// past its budget) with the close code it carries and ends the pair.
func (l *Loop) wsError(e *End, err error) {
	peer := ""
	if e.Peer != nil {
		peer = e.Peer.String()
	}
	l.log.Debug("websocket protocol error in tunnel", "peer", peer, "err", err)
	e.eof = true
	if err == handshake.ErrQueueFull {
		e.broken = true
		l.startClose(e.p, e, reason.SlowReader)
		return
	}
	code, text := handshake.CloseCodeOf(err)
	e.WS.SendClose(&e.Ctrl, code, text)
	l.startClose(e.p, e, reason.WebSocket)
}

// ended handles the end of what e sends (EOF, a reset, or err: a TLS
// record that failed, counted as reason.TLS): its client is gone, so
// nothing more is sent to it; a WebSocket peer still gets the bytes of a
// character e's stream stopped in the middle of (BINARY).
func (l *Loop) ended(e *End, err error) {
	e.eof, e.broken = true, true
	e.Ctrl.Take()
	if rest := e.peer.Text.Flush(); len(rest) > 0 && e.peer.WS != nil {
		e.peer.Ctrl.PushFrame(ws.OpBinary, rest)
	}
	r := reason.PeerClosed
	if TLSFailure(err) {
		r = reason.TLS
	}
	l.startClose(e.p, e, r)
}

// startClose stops reading both ends; what is queued is still delivered,
// then the pair is torn down. A WebSocket end gets a close frame. culprit
// (nil for none) is the end that ended the pair: it is counted under r,
// the other end under partner_closed.
func (l *Loop) startClose(p *Pair, culprit *End, r reason.Reason) {
	if p.closing {
		return
	}
	p.closing, p.why, p.culprit = true, r, culprit
	if p.Owner != nil {
		p.calling = true
		p.Owner.PairClosing(p, r)
		p.calling = false
	}
	for _, e := range []*End{&p.A, &p.B} {
		if e.WS != nil && !e.broken {
			e.WS.SendClose(&e.Ctrl, ws.StatusNormalClosure, "partner closed")
		}
	}
}

// writeFailed ends the pair after a write to dst failed.
func (l *Loop) writeFailed(dst *End, err error) {
	l.log.Debug("pair write failed", "err", err)
	dst.broken = true
	l.startClose(dst.p, dst, reason.IOError)
	l.teardown(dst.p)
}

// refused notes that e's socket took no more output: a stall, whose
// clock starts afresh if snd (e's Sock as a sender, or nil) wrote some
// of the output it kept since it counted sent.
func (l *Loop) refused(e *End, snd sender, sent int) {
	if snd != nil && snd.Sent() != sent {
		l.progressed(e)
	}
	l.stall(e)
}

func (l *Loop) stall(e *End) {
	if e.stallSince == 0 {
		e.stallSince = time.Now().UnixNano()
		l.stalled[e] = struct{}{}
	}
}

func (l *Loop) progressed(e *End) {
	if e.stallSince != 0 {
		e.stallSince = 0
		delete(l.stalled, e)
	}
}

func (l *Loop) scanStalls(now time.Time) {
	limit := int64(l.cfg.WriteStallTimeout)
	for e := range l.stalled {
		if now.UnixNano()-e.stallSince >= limit && !e.p.dead {
			l.log.Debug("write stall", "stalled_for", time.Duration(now.UnixNano()-e.stallSince))
			e.broken, e.stalled = true, true // it reads nothing: no lingering
			l.startClose(e.p, e, reason.WriteStall)
			l.teardown(e.p)
		}
	}
}

// teardown releases everything the pair holds and lets go of both
// sockets: an end whose client is gone (or misbehaved) is closed at once,
// the other lingers until its client has read its last bytes.
func (l *Loop) teardown(p *Pair) {
	if p.dead {
		return
	}
	p.dead = true
	if !p.closing {
		l.startClose(p, nil, reason.Shutdown)
	}
	for _, e := range []*End{&p.A, &p.B} {
		delete(l.stalled, e)
		// A WebSocket end left inside a frame (or with part of one not
		// yet written) gets nothing more: its close frame would be read
		// as more of the frame's payload.
		if e.WS != nil && (e.midFrame || len(e.out) > 0) {
			e.Ctrl.Take()
		}
		if e.buf != nil {
			pool.PutChunk(e.buf)
			e.buf, e.out = nil, nil
		}
		if e.pipe != nil {
			pool.PutPipe(e.pipe)
			e.pipe = nil
		}
		r := reason.PartnerClosed
		if p.culprit == e || p.culprit == nil {
			r = p.why
		}
		if e.stalled { // what was still owed to it is lost for its not reading
			r = reason.WriteStall
		}
		if e.Sock == nil {
			e.Ender.End(r)
			continue
		}
		// A client that sent its close frame is answered and closed at
		// once: RFC 6455 has the server close the TCP connection first,
		// nothing may follow the client's close frame (so no unread input
		// turns the close into a reset), and lingering would only shut a
		// socket that client has often reset already (ENOTCONN).
		l.goodbye(e.Sock, e.Ctrl.Take(), !e.broken && !e.closed, e.hungUp, true, e.Ender, r)
		e.Sock = nil
	}
	if p.Owner != nil {
		p.calling = true
		p.Owner.PairDone(p, p.why)
		p.calling = false
	}
}

// shutdown ends the pair as the loop stops: WebSocket ends that are not
// inside a frame get a 1001 close ("Server shutting down", as the engine
// says it).
func (p *Pair) shutdown(l *Loop) {
	for _, e := range []*End{&p.A, &p.B} {
		if e.WS != nil && !e.midFrame && len(e.out) == 0 {
			e.WS.CloseSent = false // replace "partner closed" if it was queued
			e.Ctrl.Take()
			e.WS.SendClose(&e.Ctrl, ws.StatusGoingAway, "Server shutting down")
		}
	}
	if !p.closing {
		l.startClose(p, nil, reason.Shutdown)
	}
	l.teardown(p)
}

// Abort ends p at once, on its loop's goroutine (Loop.Do), both ends
// counted under r: what is queued is not delivered, and a WebSocket end
// that is not inside a frame gets a close frame with code and text in
// place of "partner closed". A pair already torn down is left alone.
func (l *Loop) Abort(p *Pair, r reason.Reason, code ws.StatusCode, text string) {
	if p.dead {
		return
	}
	for _, e := range []*End{&p.A, &p.B} {
		if e.WS != nil && !e.broken && !e.midFrame && len(e.out) == 0 {
			e.WS.CloseSent = false
			e.Ctrl.Take()
			e.WS.SendClose(&e.Ctrl, code, text)
		}
	}
	if !p.closing {
		l.startClose(p, nil, r)
	}
	l.teardown(p)
}

// throttle is a pair direction waiting for Rate tokens.
type throttle struct {
	e  *End
	at time.Time
}

// throttle parks e's reads until its bucket has tokens again.
func (l *Loop) throttle(e *End, wait time.Duration) {
	l.cfg.Throttled.Inc()
	l.hold(e, wait)
}

// hold parks e's reads for wait.
func (l *Loop) hold(e *End, wait time.Duration) {
	e.quota = -1
	l.throttled = append(l.throttled, throttle{e, time.Now().Add(wait)})
}

func (l *Loop) resumeThrottled(now time.Time) {
	kept := l.throttled[:0]
	var due []*End
	for _, th := range l.throttled {
		if th.e.p.dead {
			continue
		}
		if now.Before(th.at) {
			kept = append(kept, th)
			continue
		}
		th.e.quota = 0
		due = append(due, th.e)
	}
	l.throttled = kept
	for _, e := range due {
		l.service(e.p)
	}
}

// newBucket is a Rate bucket for reads from one end: reads are delayed,
// never dropped. Burst: a quarter second of the rate, at least 16 KiB.
func newBucket(bytesPerSec int64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(bytesPerSec), int(max(bytesPerSec/4, 16<<10)))
}

// bucketQuantum is the least a throttled read waits for, so that a
// rate-limited pair makes few large reads rather than many tiny ones.
const bucketQuantum = 4 << 10

// allowRead returns how many bytes (at most want) a read from a bucketed
// end may take now, or 0 and how long to wait. It keeps the bucket's rate
// in step with the current Rate.
func allowRead(b *rate.Limiter, bytesPerSec int64, now time.Time, want int) (int, time.Duration) {
	if b.Limit() != rate.Limit(bytesPerSec) {
		b.SetLimitAt(now, rate.Limit(bytesPerSec))
		b.SetBurstAt(now, int(max(bytesPerSec/4, 16<<10)))
	}
	avail := int(b.TokensAt(now))
	need := min(want, bucketQuantum)
	if avail < need {
		wait := time.Duration(float64(need-avail) / float64(bytesPerSec) * float64(time.Second))
		return 0, max(wait, time.Millisecond)
	}
	return min(want, avail), 0
}

// spend takes n tokens from b after a read of n bytes (b may be nil: no
// rate applies).
func spend(b *rate.Limiter, now time.Time, n int) {
	if b != nil && n > 0 {
		b.ReserveN(now, min(n, b.Burst()))
	}
}
