package loop

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// TestHelperSpliceNoPipe is not a test: with MEETPOINT_NOPIPE_HELPER=1 it
// starts a splice pair, then uses up every descriptor the process may
// open, so no pipe can be made, and sends 4 MiB through the pair. It
// prints "result ok spliced=S buffered=B nopipe=N" when every byte came
// through in order, "result failed: WHY" otherwise.
func TestHelperSpliceNoPipe(t *testing.T) {
	if os.Getenv("MEETPOINT_NOPIPE_HELPER") != "1" {
		t.Skip("helper process only")
	}
	set := metrics.NewSet()
	cfg := Config{WriteStallTimeout: testutil.Patience, Spliced: set.NewCounter("s"), Buffered: set.NewCounter("b"),
		NoPipe: set.NewCounter("n"), Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	l := runningWith(t, cfg)
	ca, cb, _, done := splicing(t, l)

	ents, _ := os.ReadDir("/proc/self/fd")
	var lim unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	lim.Cur = uint64(len(ents) + 16)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Println("result failed: setrlimit:", err)
		return
	}
	var held []int
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		held = append(held, fd)
	}

	burst := make([]byte, 4<<20)
	for i := range burst {
		burst[i] = byte(i * 7)
	}
	go func() { _, _ = ca.Write(burst) }()
	_ = cb.SetReadDeadline(time.Now().Add(testutil.Patience))
	got, err := io.ReadAll(io.LimitReader(cb, int64(len(burst))))
	for _, fd := range held {
		unix.Close(fd)
	}
	if err != nil || !bytes.Equal(got, burst) {
		fmt.Printf("result failed: %d of %d bytes came through (%v)\n", len(got), len(burst), err)
		return
	}
	ca.Close()
	cb.Close()
	<-done
	fmt.Printf("result ok spliced=%d buffered=%d nopipe=%d\n", cfg.Spliced.Get(), cfg.Buffered.Get(), cfg.NoPipe.Get())
}

// TestSpliceWithoutPipes: a splice pair in a process out of descriptors
// (every busy spliced direction borrows a pipe, two descriptors) forwards
// through buffers instead of ending the tunnel, and counts each splice it
// gave up. Run in a child process, whose descriptors the test may use up.
func TestSpliceWithoutPipes(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSpliceNoPipe$", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), "MEETPOINT_NOPIPE_HELPER=1")
	out, err := cmd.CombinedOutput()
	var spliced, buffered, nopipe uint64
	i := strings.Index(string(out), "result ")
	if err != nil || i < 0 {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if _, err := fmt.Sscanf(string(out[i:]), "result ok spliced=%d buffered=%d nopipe=%d", &spliced, &buffered, &nopipe); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if nopipe == 0 || buffered != 4<<20 || spliced != 0 {
		t.Fatalf("spliced %d, buffered %d, splices without a pipe %d: want 0, %d, more than 0\n%s", spliced, buffered, nopipe, 4<<20, out)
	}
	if n := strings.Count(string(out), "no pipe for splice(2)"); n == 0 || n > 3 {
		t.Fatalf("%d warnings for %d splices without a pipe, want one per 10 s\n%s", n, nopipe, out)
	}
}
