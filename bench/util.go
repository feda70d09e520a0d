package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"
)

// newHist returns a latency histogram in nanoseconds: 100 ns to 60 s with
// three significant figures.
func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(100, int64(60*time.Second), 3)
}

// record adds d to h, clamped to its range.
func record(h *hdrhistogram.Histogram, d time.Duration) {
	v := int64(d)
	if v < 100 {
		v = 100
	}
	if v > h.HighestTrackableValue() {
		v = h.HighestTrackableValue()
	}
	_ = h.RecordValue(v)
}

// us returns the value at percentile p (0..100) of a nanosecond histogram
// in microseconds; NaN (unknown, shown "–") for a histogram with no
// samples, for which HdrHistogram answers 0.
func us(h *hdrhistogram.Histogram, p float64) float64 {
	if h.TotalCount() == 0 {
		return math.NaN()
	}
	return float64(h.ValueAtPercentile(p)) / 1e3
}

// cdf returns (µs, percentile) points of h for plotting and the JSON file.
func cdf(h *hdrhistogram.Histogram) [][2]float64 {
	var out [][2]float64
	for _, b := range h.CumulativeDistributionWithTicks(5) {
		out = append(out, [2]float64{float64(b.ValueAt) / 1e3, b.Quantile})
		if b.Quantile >= 100 {
			break
		}
	}
	return out
}

// procStatus reads a field of /proc/PID/status in its natural unit (kB for
// Vm*, a count for Threads). It returns -1 when it cannot.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, field+":") {
			continue
		}
		f := strings.Fields(line[len(field)+1:])
		if len(f) == 0 {
			return -1
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return -1
		}
		return v
	}
	return -1
}

// rssBytes returns the resident set size of pid in bytes (VmRSS), -1 if unknown.
func rssBytes(pid int) int64 {
	v := procStatus(pid, "VmRSS")
	if v < 0 {
		return -1
	}
	return v * 1024
}

// fdCount returns the number of open descriptors of pid, -1 if unknown.
func fdCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitListening dials addr until it accepts or timeout passes.
func waitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening after %v: %w", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// progress is the live status line on stderr: it rewrites itself (\r)
// five times a second until stopped, on a terminal only (piped to a file
// or a CI log it would be a line of control characters).
type progress struct {
	w    io.Writer
	stop chan struct{}
	done chan struct{}
}

// startProgress shows label followed by status() on w until the returned
// function is called. w nil shows nothing.
func startProgress(w io.Writer, label string, status func() string) func() {
	if w == nil || !isTerminal(w) {
		return func() {}
	}
	p := &progress{w: w, stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(p.done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			fmt.Fprintf(w, "\r\033[K%s  %s  [%.1fs]", label, status(), time.Since(start).Seconds())
			select {
			case <-p.stop:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(p.stop)
			<-p.done
		})
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// lineStart is what starts a line of its own on w: on a terminal it
// clears what the progress line left there.
func lineStart(w io.Writer) string {
	if isTerminal(w) {
		return "\r\033[K"
	}
	return ""
}

// human formats a byte count as B, KiB or MiB.
func human(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d B", n)
	}
}

// cpuMark is a process's CPU time at one moment, to measure what it uses
// from then on (used). The zero mark measures nothing. /proc counts in
// USER_HZ ticks, 100 per second on Linux: the resolution is 10 ms, so a
// figure per tunnel needs thousands of tunnels.
type cpuMark struct {
	pid       int
	user, sys time.Duration
}

// markCPU marks pid's CPU time now; nothing for pid ≤ 0 or a process
// /proc cannot read.
func markCPU(pid int) cpuMark {
	if pid <= 0 {
		return cpuMark{}
	}
	user, sys := procTimes(pid)
	if user < 0 {
		return cpuMark{}
	}
	return cpuMark{pid: pid, user: user, sys: sys}
}

// used is the CPU time (utime + stime, all threads) the process has used
// since m, and its system part; ok is false for the zero mark or once
// /proc no longer reads the process.
func (m cpuMark) used() (total, sys time.Duration, ok bool) {
	if m.pid == 0 {
		return 0, 0, false
	}
	user1, sys1 := procTimes(m.pid)
	if user1 < m.user || sys1 < m.sys {
		return 0, 0, false
	}
	return user1 - m.user + sys1 - m.sys, sys1 - m.sys, true
}

// procTimes returns the CPU time pid has used from /proc/PID/stat, all
// its threads, in two parts: user time, and system time (the kernel's
// work on the process's behalf: its system calls, and the network stack's
// work done in them). -1, -1 if unknown.
func procTimes(pid int) (user, sys time.Duration) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1, -1
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1, -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 { // fields 3…15: state … utime stime
		return -1, -1
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1, -1
	}
	return time.Duration(ut) * (time.Second / 100), time.Duration(st) * (time.Second / 100)
}
