package bench

import (
	"os/exec"
	"testing"
	"time"
)

// TestChildCallAfterTimeout: the child's answers are matched to commands
// by order only. A call that timed out leaves its answer on the way, and
// the next call took that stale answer for its own: relayStats after a
// slow one returned the earlier goroutine and tunnel counts, a "gc"
// after a timed-out "gc" returned at once, before the collection it
// asked for (the RSS read next was the uncollected one). The fake child
// answers the first "stats" only once the second one has come.
func TestChildCallAfterTimeout(t *testing.T) {
	opt := &Options{ChildCommand: func([]string) (*exec.Cmd, error) {
		return exec.Command("sh", "-c", `read a; read b; echo "stats 1 1"; echo "stats 2 2"; read c`), nil
	}}
	c, err := startChild(opt, "relay")
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if s, err := c.call("stats", "stats ", 100*time.Millisecond); err == nil {
		t.Fatalf("the first call got %q, want a timeout", s)
	}
	s, err := c.call("stats", "stats ", time.Minute)
	if err != nil || s != "2 2" {
		t.Fatalf("the call after a timed-out one: %q %v, want its own answer \"2 2\"", s, err)
	}
}
