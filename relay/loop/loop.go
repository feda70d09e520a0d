// Package loop is meetpoint's data plane: event loops that own sockets.
//
// A Loop is one goroutine on its own edge-triggered epoll set. Everything
// registered with it — the two ends of a forwarding Pair, a TunnelProxy
// hub's sockets, a TLS session before its tunnel, a socket closing
// gracefully — belongs to that goroutine, so its state needs no locks;
// other goroutines reach it only through Do. An idle socket costs an epoll
// entry and whatever its owner keeps, never a goroutine.
//
// The package knows sockets, bytes and WebSocket frames, not the relay's
// protocols: the engine (package relay) and its subsystems put their own
// state on top.
package loop

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/meetpoint/meetpoint/pool"
)

// Pollee is what a Loop's epoll set holds for a descriptor.
type Pollee interface {
	// Event is called on the loop goroutine with the epoll events of the
	// descriptor it was registered for.
	Event(l *Loop, events uint32)
}

// Resumer is work that stopped to let other sockets run (fairness) and
// continues on the next turn of the loop.
type Resumer interface {
	Resume(l *Loop)
}

// Stopper is implemented by pollees that must be ended when their loop
// stops (Stop is called on the loop goroutine, once).
type Stopper interface {
	Stop(l *Loop)
}

// Scanner is periodic work of a Loop's owner (timeouts, stalls).
type Scanner interface {
	// Scan runs on the loop goroutine and returns how long until it should
	// run again; a negative duration means not until Watch is called anew.
	Scan(l *Loop, now time.Time) time.Duration
}

// Config is how a Loop forwards pairs; one value is shared by the loops of
// a server.
type Config struct {
	// Log receives the loop's logs.
	Log *slog.Logger
	// MaxBuffer is the most bytes buffered per pair direction (0: one
	// pooled chunk; never more, as one chunk holds them).
	MaxBuffer int
	// WriteStallTimeout ends a pair whose receiver accepts nothing this
	// long while data waits for it.
	WriteStallTimeout time.Duration
	// Rate, if set, bounds each pair direction to that many bytes per
	// second (0: no bound); it may change while the loop runs.
	Rate *atomic.Int64
	// Spliced, Buffered and Throttled count bytes forwarded with
	// splice(2), bytes forwarded through buffers, and reads delayed by
	// Rate. Nil counters are replaced by throwaway ones.
	Spliced, Buffered, Throttled *metrics.Counter
	// NoPipe counts splices given up for want of a pipe (descriptors
	// exhausted): those reads went through a buffer instead. Nil: a
	// throwaway counter.
	NoPipe *metrics.Counter
	// Fault is told of a panic while pair p forwarded (the loop's fault
	// barrier, Loop.contain): the panic's value and the stack where it
	// happened. It reports true to have p ended (both ends as
	// reason.Fault) and the loop go on, false to have the panic raised
	// again. Nil: every panic is raised again.
	Fault func(p *Pair, v any, stack []byte) bool
}

// Loop is one event loop. Create it with New, run it with Run on a
// goroutine of its own, end it with Stop.
type Loop struct {
	cfg        Config
	log        *slog.Logger
	epfd, evfd int
	stopping   atomic.Bool
	done       chan struct{}

	mu     sync.Mutex
	queue  []func() // work for the loop goroutine
	queued []func() // loop goroutine only: the last batch's slice, emptied, for the next queue (run)
	quit   bool     // set once the loop has stopped taking work
	// awake: the loop is between epoll_waits and looks at queue before
	// it sleeps again, so Do needs no wake-up write. Set false under mu
	// (with queue seen empty), true without it (a Do that reads a stale
	// false merely wakes the loop once for nothing).
	awake atomic.Bool

	// pipeLogs picks which failures to make a pipe are logged (one in 10 s).
	pipeLogs rate.Sometimes

	// takenOver counts the sockets Register took over from Park without
	// an EPOLL_CTL_ADD (TakenOver).
	takenOver atomic.Uint64

	// Owned by the loop goroutine.
	eps       map[int32]Pollee
	scratch   []byte
	again     []Resumer
	spare     []Resumer
	scanners  map[Scanner]time.Time // next run
	stalled   map[*End]struct{}
	throttled []throttle
	lingering map[*lingerer]struct{}
}

// New creates a loop (an epoll set and a wake-up eventfd). It does not run
// it.
func New(cfg Config) (*Loop, error) {
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
	if err := rawEpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Rate == nil {
		cfg.Rate = new(atomic.Int64)
	}
	if cfg.MaxBuffer <= 0 { // else every read would ask for nothing and look like an end of stream
		cfg.MaxBuffer = pool.ChunkSize
	}
	for _, c := range []**metrics.Counter{&cfg.Spliced, &cfg.Buffered, &cfg.Throttled, &cfg.NoPipe} {
		if *c == nil {
			*c = metrics.NewSet().NewCounter("unused")
		}
	}
	return &Loop{
		cfg: cfg, log: cfg.Log, epfd: epfd, evfd: evfd, done: make(chan struct{}),
		eps: make(map[int32]Pollee), scanners: make(map[Scanner]time.Time),
		stalled: make(map[*End]struct{}), lingering: make(map[*lingerer]struct{}),
		pipeLogs: rate.Sometimes{First: 1, Interval: 10 * time.Second},
	}, nil
}

// Close frees a loop that never ran. A loop that ran frees itself when
// it stops.
func (l *Loop) Close() {
	unix.Close(l.epfd)
	unix.Close(l.evfd)
}

// Do runs fn on the loop goroutine. It reports false, not running fn, once
// the loop has stopped taking work. Cost: a mutex, and an eventfd write
// only if the loop is asleep in epoll_wait (not from the loop's own
// goroutine, nor while it works through a batch of events).
func (l *Loop) Do(fn func()) bool {
	l.mu.Lock()
	if l.quit {
		l.mu.Unlock()
		return false
	}
	l.queue = append(l.queue, fn)
	if !l.awake.Load() {
		l.wake() // under mu: the loop closes evfd only after setting quit under mu
	}
	l.mu.Unlock()
	return true
}

func (l *Loop) wake() {
	var one = [8]byte{1}
	_, _ = rawWrite(l.evfd, one[:])
}

// Stopping reports whether the loop is stopping: sockets it lets go of are
// closed at once, without lingering.
func (l *Loop) Stopping() bool { return l.stopping.Load() }

// Stop ends the loop, closing everything it owns, and waits for it (5 s at
// most).
func (l *Loop) Stop() {
	l.stopping.Store(true)
	l.mu.Lock()
	if !l.quit {
		l.wake()
	}
	l.mu.Unlock()
	select {
	case <-l.done:
	case <-time.After(5 * time.Second):
		l.log.Error("loop did not stop in 5s")
	}
}

// Register adds fd to the epoll set, edge-triggered for reads and writes;
// p gets its events. A socket parked on this loop (Park) is taken over
// without a system call, and p gets the events it missed on the loop's
// next turn.
func (l *Loop) Register(fd int, p Pollee) error {
	if pk, ok := l.eps[int32(fd)].(*parked); ok {
		l.takenOver.Add(1)
		l.eps[int32(fd)] = p
		if pk.events != 0 {
			l.Again(missed{int32(fd), p, pk.events})
		}
		return nil
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLPRI | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return err
	}
	l.eps[int32(fd)] = p
	return nil
}

// TakenOver is how many sockets a new owner on this loop took over from
// Park, each an EPOLL_CTL_DEL and an EPOLL_CTL_ADD saved. Any goroutine.
func (l *Loop) TakenOver() uint64 { return l.takenOver.Load() }

// Park keeps fd's epoll entry (as Register made it) while its owner hands
// the socket on, so that a next owner on this loop takes it over without
// an EPOLL_CTL_DEL and an EPOLL_CTL_ADD; Unpark ends it. Events in
// between are kept for that owner, with owed: what the old owner knows
// epoll will not report again (EPOLLIN: input it left in the socket;
// EPOLLRDHUP beside it: the client's hang-up, already reported). Loop goroutine
// only, with Unpark in the same turn. The socket must keep its one
// descriptor meanwhile: an epoll entry lives as long as any descriptor of
// its socket, so one dup'ed and closed under it would outlive Unpark's
// DEL (and make a later ADD of the dup fail with EEXIST).
func (l *Loop) Park(fd int, owed uint32) {
	l.eps[int32(fd)] = &parked{events: owed}
}

// Unpark ends Park: a socket no owner on this loop took over leaves the
// epoll set (it may have been closed meanwhile: then the call finds
// nothing to remove, as its number cannot be in this set again yet).
func (l *Loop) Unpark(fd int) {
	if _, ok := l.eps[int32(fd)].(*parked); ok {
		l.Unregister(fd)
	}
}

// parked is the entry of a parked socket: it collects events.
type parked struct{ events uint32 }

// Event implements Pollee.
func (pk *parked) Event(_ *Loop, events uint32) { pk.events |= events }

// missed delivers the events a parked socket collected to its new owner.
type missed struct {
	fd     int32
	p      Pollee
	events uint32
}

// Resume implements Resumer.
func (m missed) Resume(l *Loop) {
	if l.eps[m.fd] == m.p { // not if the owner has let go since
		m.p.Event(l, m.events)
	}
}

// Registered reports whether fd is in the epoll set.
func (l *Loop) Registered(fd int) bool {
	_, ok := l.eps[int32(fd)]
	return ok
}

// Unregister removes fd from the epoll set (the descriptor stays open).
func (l *Loop) Unregister(fd int) {
	_ = rawEpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	delete(l.eps, int32(fd))
}

// Again queues r to continue after the other ready sockets of this turn.
func (l *Loop) Again(r Resumer) { l.again = append(l.again, r) }

// Watch runs s after d (and then as s asks). Loop goroutine only.
func (l *Loop) Watch(s Scanner, d time.Duration) {
	at := time.Now().Add(d)
	if cur, ok := l.scanners[s]; !ok || at.Before(cur) {
		l.scanners[s] = at
	}
}

// Scratch is a 16 KiB buffer for reads whose bytes are used at once
// (decrypted TLS before a tunnel, input discarded while lingering). Loop
// goroutine only.
func (l *Loop) Scratch() []byte {
	if l.scratch == nil {
		l.scratch = make([]byte, 16<<10)
	}
	return l.scratch
}

// Log is the loop's logger.
func (l *Loop) Log() *slog.Logger { return l.log }

// Run is the loop goroutine: it returns once Stop was called and
// everything the loop owned is closed.
func (l *Loop) Run() {
	defer close(l.done)
	events := make([]unix.EpollEvent, 256)
	for {
		timeout := l.timeout()
		if l.sleepy() {
			timeout = 0 // ran work queued while awake (more may come): poll, do not sleep
		}
		n, err := unix.EpollWait(l.epfd, events, timeout)
		l.awake.Store(true)
		if err != nil && err != unix.EINTR {
			l.log.Error("epoll_wait", "err", err)
			n = 0
		}
		for i := 0; i < n; i++ {
			ev := &events[i]
			if ev.Fd == int32(l.evfd) {
				var b [8]byte
				_, _ = rawRead(l.evfd, b[:])
				l.takeQueue()
				continue
			}
			if p := l.eps[ev.Fd]; p != nil {
				p.Event(l, ev.Events)
			}
		}
		cur := l.again
		l.again, l.spare = l.spare[:0], cur
		for _, r := range cur {
			r.Resume(l)
		}
		if l.stopping.Load() {
			l.shutdown()
			return
		}
		l.scan(time.Now())
	}
}

// timeout is how long epoll_wait may sleep: until the next scanner,
// stall check, throttled read or linger deadline.
func (l *Loop) timeout() int {
	if len(l.again) > 0 {
		return 0
	}
	var next time.Time
	for _, at := range l.scanners {
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	if len(l.stalled) > 0 || len(l.lingering) > 0 {
		if at := time.Now().Add(l.checkInterval()); next.IsZero() || at.Before(next) {
			next = at
		}
	}
	for _, th := range l.throttled {
		if next.IsZero() || th.at.Before(next) {
			next = th.at
		}
	}
	if next.IsZero() {
		return -1
	}
	return max(int(time.Until(next)/time.Millisecond), 1)
}

// checkInterval is how often write stalls and lingering closes are
// checked.
func (l *Loop) checkInterval() time.Duration {
	d := min(l.cfg.WriteStallTimeout/4, time.Second)
	if len(l.lingering) > 0 {
		d = min(d, LingerTimeout/4)
	}
	return max(d, 10*time.Millisecond)
}

// scan runs what is due: throttled reads, stall and linger deadlines,
// owners' scanners.
func (l *Loop) scan(now time.Time) {
	if len(l.throttled) > 0 {
		l.resumeThrottled(now)
	}
	l.scanStalls(now)
	l.scanLingering(now)
	for s, at := range l.scanners {
		if now.Before(at) {
			continue
		}
		if d := s.Scan(l, now); d >= 0 {
			l.scanners[s] = now.Add(d)
		} else {
			delete(l.scanners, s)
		}
	}
}

// sleepy runs the work queued while the loop was awake and reports true
// (the loop stays awake), or, with none, marks the loop asleep (Do wakes
// it from now on) and reports false.
func (l *Loop) sleepy() bool {
	l.mu.Lock()
	q := l.queue
	if len(q) == 0 {
		l.awake.Store(false)
		l.mu.Unlock()
		return false
	}
	l.queue = l.queued
	l.mu.Unlock()
	l.run(q)
	return true
}

func (l *Loop) takeQueue() {
	l.mu.Lock()
	q := l.queue
	l.queue = l.queued
	l.mu.Unlock()
	l.run(q)
}

// run runs the work taken from queue, then keeps its slice (emptied, so
// that the closures can be freed) as the next queue's: Do appends without
// allocating once batches have reached their usual size. A slice grown
// past maxQueued by a burst is dropped instead.
func (l *Loop) run(q []func()) {
	for _, fn := range q {
		fn()
	}
	clear(q)
	l.queued = nil
	if cap(q) <= maxQueued {
		l.queued = q[:0]
	}
}

// maxQueued is the largest queue slice a loop keeps between batches.
const maxQueued = 1024

// shutdown runs the queued work, stops every pollee that is a Stopper
// (pairs close, WebSocket ends getting a best-effort 1001 close; owners
// end what they keep), closes lingering sockets and frees the loop.
func (l *Loop) shutdown() {
	l.mu.Lock()
	l.quit = true
	q := l.queue
	l.queue = nil
	l.mu.Unlock()
	for _, fn := range q {
		fn()
	}
	for _, p := range l.eps {
		if s, ok := p.(Stopper); ok {
			s.Stop(l)
		}
	}
	for g := range l.lingering {
		g.finish(l)
	}
	l.Close()
}
