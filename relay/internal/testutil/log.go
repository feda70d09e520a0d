// Package testutil is what the relay's tests and its subsystems' tests
// share without importing the engine. Logger gives tests a relay logger
// that stays quiet unless the test fails: the last 32 KiB of debug log are kept and printed with the
// failure, so a failure seen once (in CI) explains itself.
// MEETPOINT_TEST_LOG=1 logs everything to stderr instead.
package testutil

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
)

// Max is how much of the log a failing test prints.
const Max = 32 << 10

// Logger returns t's relay logger.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("MEETPOINT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	tail := &Tail{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("relay log (last %d KiB):\n%s", Max>>10, tail.String())
		}
	})
	return slog.New(slog.NewTextHandler(tail, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Discard is a logger that drops everything (for servers a test starts by
// the hundred).
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// Tail keeps the last Max bytes written to it.
type Tail struct {
	mu  sync.Mutex
	buf []byte
}

// Write implements io.Writer.
func (l *Tail) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf = append(l.buf, p...)
	if len(l.buf) > 2*Max { // compact now and then, not per line
		l.buf = append(l.buf[:0], l.buf[len(l.buf)-Max:]...)
	}
	l.mu.Unlock()
	return len(p), nil
}

// String returns the kept tail.
func (l *Tail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf[max(0, len(l.buf)-Max):])
}

// Patience is how long a test waits for what should happen at once: under
// -race on a loaded 2-core machine "at once" can take seconds. A passing
// test never waits it out; a failing one says what it waited for.
const Patience = 20 * time.Second

// WaitFor polls cond every 10 ms until it holds, for up to Patience, and
// then fails the test naming what it waited for. cond is a func() bool, or
// a func() error that returns nil once the condition holds: then the
// failure also prints the last error it returned (nats' checkFor), e.g.
// "timed out waiting for: the close counted (last: closes 3, want 4)".
func WaitFor[C func() bool | func() error](t testing.TB, cond C, what string) {
	t.Helper()
	check := func() error {
		if holds, ok := any(cond).(func() bool); ok {
			if holds() {
				return nil
			}
			return errNotYet
		}
		return any(cond).(func() error)()
	}
	var last error
	for end := time.Now().Add(patience); ; time.Sleep(10 * time.Millisecond) {
		if last = check(); last == nil {
			return
		}
		if time.Now().After(end) {
			break
		}
	}
	if last == errNotYet {
		t.Fatalf("timed out after %v waiting for: %s", patience, what)
	}
	t.Fatalf("timed out after %v waiting for: %s (last: %v)", patience, what, last)
}

// patience is Patience, shortened by WaitFor's own test.
var patience = Patience

// errNotYet is a func() bool condition's "not yet".
var errNotYet = errors.New("not yet")

// DialPair dials a and b concurrently and returns both tunnels, closed at
// the end of the test; it fails the test if either dial fails.
func DialPair(t testing.TB, a, b client.Options) (*client.Tunnel, *client.Tunnel) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ta, tb, err := client.DialPair(ctx, a, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ta.Close(); tb.Close() })
	return ta, tb
}
