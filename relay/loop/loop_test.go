package loop

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// recorder is a Pollee that reports its events on a channel.
type recorder chan uint32

func (r recorder) Event(_ *Loop, events uint32) { r <- events }

// running starts a loop for the test.
func running(t *testing.T) *Loop {
	t.Helper()
	return runningWith(t, Config{})
}

// runningWith is running with cfg.
func runningWith(t *testing.T, cfg Config) *Loop {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go l.Run()
	t.Cleanup(l.Stop)
	return l
}

// on runs fn on l's goroutine and waits for it.
func on(t *testing.T, l *Loop, fn func()) {
	t.Helper()
	done := make(chan struct{})
	if !l.Do(func() { fn(); close(done) }) {
		t.Fatal("loop stopped")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Do did not run")
	}
}

// socketPair is a connected non-blocking pair, closed when the test ends.
func socketPair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// wantEvent waits for an event with bits in want.
func wantEvent(t *testing.T, r recorder, want uint32, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-r:
			if ev&want != 0 {
				return
			}
		case <-deadline:
			t.Fatalf("%s: no event", what)
		}
	}
}

// TestParkHandsEntryOver: a parked socket stays in the epoll set; the next
// owner registered on the loop takes the entry over (no EPOLL_CTL_ADD: the
// kernel would refuse a second ADD with EEXIST, so Register must not try)
// and gets the events that came while it was parked; a socket parked and
// not taken over leaves the set at Unpark.
func TestParkHandsEntryOver(t *testing.T) {
	l := running(t)
	fd, peer := socketPair(t)
	first, next := make(recorder, 16), make(recorder, 16)
	on(t, l, func() {
		if err := l.Register(fd, first); err != nil {
			t.Error(err)
		}
	})
	on(t, l, func() {
		l.Park(fd, 0)
		unix.Write(peer, []byte("x")) // arrives while parked
	})
	// Give the event time to reach the parked entry (it has no owner to
	// report to, so there is nothing to wait for but the loop's turns).
	for range 3 {
		on(t, l, func() {})
	}
	on(t, l, func() {
		if err := l.Register(fd, next); err != nil {
			t.Errorf("Register over a parked entry: %v", err)
		}
		l.Unpark(fd) // taken over: nothing to remove
	})
	wantEvent(t, next, unix.EPOLLIN, "the next owner, for input that came while parked")
	on(t, l, func() {
		if !l.Registered(fd) {
			t.Error("the taken-over socket is not registered")
		}
		l.Park(fd, 0)
		l.Unpark(fd) // nobody took it
		if l.Registered(fd) {
			t.Error("a socket parked and not taken over is still registered")
		}
		// Out of the epoll set: an ADD succeeds again.
		if err := l.Register(fd, first); err != nil {
			t.Errorf("Register after Unpark: %v", err)
		}
	})
}

// TestParkUnreadReportsInput: a socket parked with unread input (its old
// owner stopped reading before the end) is reported readable to the next
// owner, though no new edge comes.
func TestParkUnreadReportsInput(t *testing.T) {
	l := running(t)
	fd, _ := socketPair(t)
	next := make(recorder, 16)
	on(t, l, func() {
		if err := l.Register(fd, recorder(make(chan uint32, 16))); err != nil {
			t.Error(err)
		}
	})
	on(t, l, func() {
		l.Park(fd, unix.EPOLLIN)
		if err := l.Register(fd, next); err != nil {
			t.Error(err)
		}
		l.Unpark(fd)
	})
	wantEvent(t, next, unix.EPOLLIN, "the next owner, for unread input")
}

// TestDoWhileAwake: work queued for a loop from its own goroutine (no
// wake-up write: it is awake) runs before the loop sleeps, and so does
// work queued from elsewhere while it sleeps.
func TestDoWhileAwake(t *testing.T) {
	l := running(t)
	ran := make(chan struct{})
	on(t, l, func() {
		l.Do(func() { close(ran) }) // from the loop itself
	})
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("work queued by the loop itself never ran: the loop slept on it")
	}
	testutil.WaitFor(t, func() bool { return !l.awake.Load() }, "the loop to sleep in epoll_wait")
	on(t, l, func() {}) // asleep: Do must wake it
}

// TestDoReusesQueue: once the loop has run a batch, Do appends into the
// batch's old slice: work handed to a loop costs no allocation of the
// loop's own (the caller's closure aside).
func TestDoReusesQueue(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	l := running(t)
	var n atomic.Int64
	fn := func() { n.Add(1) }
	want := int64(0)
	do := func() {
		want++
		if !l.Do(fn) {
			t.Fatal("loop stopped")
		}
		for n.Load() < want {
			runtime.Gosched()
		}
	}
	for range 10 {
		do()
	}
	if a := testing.AllocsPerRun(200, do); a > 0.05 {
		t.Errorf("Do: %v allocations per call, want 0", a)
	}
}
