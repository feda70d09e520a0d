package loop

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// TestHelperAcceptEMFILE is not a test: with MEETPOINT_EMFILE_HELPER=1 it
// serves a listener on one loop in a process that may open only a few
// more descriptors, holds every connection it accepts, prints
// "addr ADDR" and then "accepted N" (the total so far) per connection;
// when stdin says "release" it closes what it holds and from then on
// closes each connection as it accepts it. It exits when stdin ends.
// Warnings go to stderr.
func TestHelperAcceptEMFILE(t *testing.T) {
	if os.Getenv("MEETPOINT_EMFILE_HELPER") != "1" {
		t.Skip("helper process only")
	}
	ln, err := Listen("127.0.0.1:0", false)
	if err != nil {
		fmt.Println("error", err)
		return
	}
	l, err := New(Config{Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		fmt.Println("error", err)
		return
	}
	go l.Run()
	var held []int // loop goroutine only, as are total and released
	total, released := 0, false
	if err := ln.Serve([]*Loop{l}, func(_ *Loop, fd int, _ net.Addr) {
		total++
		if released {
			unix.Close(fd)
		} else {
			held = append(held, fd)
		}
		fmt.Println("accepted", total)
	}); err != nil {
		fmt.Println("error", err)
		return
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	var lim unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	lim.Cur = uint64(len(ents) + 3) // room for about three connections
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Println("error", err)
		return
	}
	fmt.Println("addr", ln.Addr())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "release" {
			l.Do(func() {
				for _, fd := range held {
					unix.Close(fd)
				}
				held, released = nil, true
				fmt.Println("released")
			})
		}
	}
}

// TestAcceptPausesOnEMFILE: when accept(2) fails for want of descriptors
// the connection stays in the backlog and the level-triggered listener
// stays readable; the loop must pause the listener (one warning per
// pause) instead of spinning on it, and accept the waiting connections
// once descriptors are free again.
func TestAcceptPausesOnEMFILE(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAcceptEMFILE$")
	cmd.Env = append(os.Environ(), "MEETPOINT_EMFILE_HELPER=1")
	var stderr testutil.Tail // a spinning loop writes far more than it keeps: enough to count
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	lines := make(chan string, 256)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func(prefix string) string {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case s, ok := <-lines:
				if !ok {
					t.Fatalf("helper exited waiting for %q; stderr:\n%s", prefix, stderr.String())
				}
				if strings.HasPrefix(s, "error") {
					t.Fatalf("helper: %s", s)
				}
				if strings.HasPrefix(s, prefix) {
					return strings.TrimSpace(strings.TrimPrefix(s, prefix))
				}
			case <-deadline:
				t.Fatalf("no %q from the helper; stderr:\n%s", prefix, stderr.String())
			}
		}
	}
	addr := next("addr ")
	const n = 8
	for range n {
		c, err := net.Dial("tcp", addr) // completes in the backlog, accepted or not
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	const warning = "accept failed: pausing the listener"
	testutil.WaitFor(t, func() bool { return strings.Contains(stderr.String(), warning) },
		"a pause after running out of descriptors")
	// A loop spinning on the readable listener would warn thousands of
	// times a second; a pausing one, about ten. Load only slows it.
	time.Sleep(time.Second)
	if k := strings.Count(stderr.String(), warning); k > 100 {
		t.Fatalf("%d pauses within about a second: the loop spins on the listener", k)
	}
	fmt.Fprintln(stdin, "release")
	next("released")
	for got := 0; got < n; {
		fmt.Sscan(next("accepted "), &got) // the waiting connections, once the pause ends
	}
}
