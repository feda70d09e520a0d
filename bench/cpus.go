package bench

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// On a small machine the clients share the forwarders' CPUs, and a
// forwarder's thread woken on a CPU where a client thread still runs waits
// for it (docs/BENCHMARKS.md, "The latency tail"). Options.PeerCPUs and
// Options.ClientCPUs keep them apart: the forwarders (a spawned relay,
// HAProxy, socat, a TURN child) start under taskset(1), the harness pins
// its own threads, and the processes it starts without a CPU list of
// their own (idle-scenario workers) inherit that.

// parseCPUs parses a CPU list as taskset -c takes it: "1", "0-3",
// "0,2-3". Every CPU must exist here.
func parseCPUs(s string) (unix.CPUSet, error) {
	var set unix.CPUSet
	n := 0
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b >= 1024 {
			return set, fmt.Errorf("CPU list %q: want numbers and ranges like 0,2-3", s)
		}
		for c := a; c <= b; c++ {
			set.Set(c)
			n++
		}
	}
	var here unix.CPUSet
	if err := unix.SchedGetaffinity(0, &here); err != nil {
		return set, err
	}
	for c := range 1024 {
		if set.IsSet(c) && !here.IsSet(c) {
			return set, fmt.Errorf("CPU list %q: CPU %d is not available here", s, c)
		}
	}
	return set, nil
}

// pinProcess runs every thread of this process on set. Threads made
// later inherit the mask of the thread that makes them, so the whole
// process stays there.
func pinProcess(set unix.CPUSet) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH { // ESRCH: the thread has exited
			return fmt.Errorf("pin thread %d: %w", tid, err)
		}
	}
	return nil
}

// pinCommand makes cmd (not started) run on cpus through taskset -c,
// which sets the mask and then executes the program: the pid stays the
// program's, for the CPU and memory readings. No-op for "".
func pinCommand(cmd *exec.Cmd, cpus string) error {
	if cpus == "" {
		return nil
	}
	ts, err := taskset()
	if err != nil {
		return err
	}
	cmd.Args = append([]string{ts, "-c", cpus, cmd.Path}, cmd.Args[1:]...)
	cmd.Path = ts
	return nil
}

// taskset is taskset(1)'s path.
func taskset() (string, error) {
	ts, err := exec.LookPath("taskset")
	if err != nil {
		return "", fmt.Errorf("peer CPUs need taskset (util-linux): %w", err)
	}
	return ts, nil
}

// pinRun checks opt's CPU lists and pins the harness to ClientCPUs; the
// returned func puts its threads back on the CPUs they had.
func pinRun(opt *Options) (unpin func(), err error) {
	unpin = func() {}
	if opt.PeerCPUs != "" {
		if _, err := parseCPUs(opt.PeerCPUs); err != nil {
			return unpin, fmt.Errorf("peer CPUs: %w", err)
		}
		if _, err := taskset(); err != nil {
			return unpin, err
		}
		inProcess := opt.RelayURL == "" && !opt.SpawnRelay && (len(opt.Peers) == 0 || slices.Contains(opt.Peers, "meetpoint"))
		switch {
		case inProcess:
			return unpin, fmt.Errorf("peer CPUs: the relay would run in the harness's process: add --spawn-relay (or --relay-url)")
		case slices.Contains(opt.Transports, "tls") || slices.Contains(opt.Transports, "wss"):
			return unpin, fmt.Errorf("peer CPUs: the tls and wss relays run in the harness's process")
		case opt.Fleet != "":
			return unpin, fmt.Errorf("peer CPUs: the fleet's relays run in the harness's process")
		}
	}
	if opt.ClientCPUs == "" {
		return unpin, nil
	}
	set, err := parseCPUs(opt.ClientCPUs)
	if err != nil {
		return unpin, fmt.Errorf("client CPUs: %w", err)
	}
	var was unix.CPUSet
	if err := unix.SchedGetaffinity(0, &was); err != nil {
		return unpin, err
	}
	if err := pinProcess(set); err != nil {
		_ = pinProcess(was)
		return unpin, err
	}
	return func() { _ = pinProcess(was) }, nil
}

// orAll names an empty CPU list.
func orAll(cpus string) string {
	if cpus == "" {
		return "all CPUs"
	}
	return cpus
}
