package testutil

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// fatalTB records Fatalf instead of failing.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, a ...any) {
	f.msg = fmt.Sprintf(format, a...)
	runtime.Goexit()
}

// waitIn runs WaitFor on its own goroutine (Fatalf ends it) and returns
// the failure message, "" if it returned.
func waitIn[C func() bool | func() error](t *testing.T, cond C) string {
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		WaitFor(f, cond, "the thing")
	}()
	<-done
	return f.msg
}

func TestWaitFor(t *testing.T) {
	defer func(p time.Duration) { patience = p }(patience)
	patience = 100 * time.Millisecond
	n := 0
	if msg := waitIn(t, func() bool { n++; return n == 3 }); msg != "" {
		t.Errorf("a condition that comes true: %s", msg)
	}
	if msg := waitIn(t, func() error { return nil }); msg != "" {
		t.Errorf("an error condition that holds: %s", msg)
	}
	if msg, want := waitIn(t, func() bool { return false }), "timed out after 100ms waiting for: the thing"; msg != want {
		t.Errorf("bool condition that never holds: %q, want %q", msg, want)
	}
	k := 0
	msg := waitIn(t, func() error { k++; return errors.New("count " + fmt.Sprint(k)) })
	if want := fmt.Sprintf("timed out after 100ms waiting for: the thing (last: count %d)", k); msg != want {
		t.Errorf("error condition that never holds: %q, want %q", msg, want)
	}
}
