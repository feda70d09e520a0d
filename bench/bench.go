// Package bench is meetpoint's benchmark harness: it measures the relay
// (in process, spawned as a separate process, or external) side by side
// with a direct loopback connection and with HAProxy and socat as
// forwarding references, and writes markdown tables, a JSON file and SVG
// charts.
//
// Scenarios: idle (memory per held tunnel), setup (tunnels per second and
// pairing latency), throughput (MB/s by message size, 1 and K tunnels),
// latency (64 B ping-pong RTT with idle or busy background tunnels) and
// churn (resources before and after continuous open/close); turn puts
// meetpoint's TURN beside coturn (allocations/s, relayed datagrams/s, loss).
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/meetpoint/meetpoint/relay/limits"
)

// Scenarios lists every scenario in the order a suite runs them.
var Scenarios = []string{"setup", "throughput", "latency", "churn", "idle", "turn"}

// Options configure a run. Start from Quick, Full or Tiny and override.
type Options struct {
	Preset    string   // quick, full, tiny or the scenario name
	Scenarios []string // which scenarios to run
	Peers     []string // direct, haproxy, socat, meetpoint (empty: all)

	Out  string // results folder ("" writes nothing)
	Plot bool   // write SVG charts

	RelayURL   string // external relay (comma-separated URLs), or "" to start one
	RelayPID   int    // its pid, for RSS and descriptor counts
	SpawnRelay bool   // run the relay as a separate process instead of in process
	CPUProfile bool   // write a CPU profile of the relay per scenario

	// Fleet, set, adds the fleet peers: two relays joined to this Redis
	// (URL, or "local" for a redis-server of the run's own).
	Fleet string

	Transports []string      // meetpoint transports: tcp, ws (TEXT messages of valid UTF-8), wsbin (BINARY messages; throughput only), mixed, tls, wss
	Duration   time.Duration // per throughput and setup measurement

	SetupConc int // K concurrent dialers (setup)
	// SetupClients is what opens the setup scenario's tunnels: "lean"
	// (bench/clients.go on Go's net, for tcp, ws and the TCP peers; the
	// client library for the rest), "netpoll" (the same clients on
	// cloudwego/netpoll) or "library" (client.Dial and net.Dialer for
	// every row).
	SetupClients string
	Sizes        []int // message sizes (throughput)
	Parallel     []int // tunnel counts (throughput)

	LatencySamples int           // RTT samples per row
	LatencyMaxTime time.Duration // stop a row early after this long
	Background     int           // M background tunnels (latency)

	ChurnDuration time.Duration
	ChurnConc     int

	IdleN         []int  // tunnel counts (idle), one fresh relay each
	IdleTransport string // tcp, ws or mixed
	IdlePerWorker int    // tunnels per client worker process
	IdlePerRelay  int    // tunnels per relay process
	IdleVerify    int    // tunnels checked to still forward

	// PeerCPUs, set, is the CPU list (taskset -c form: "1", "2-3") the
	// forwarders run on: a spawned relay, HAProxy, socat, a TURN child.
	// ClientCPUs, set, is the harness's own (its clients and backends,
	// and the worker processes it starts), for the duration of Run. On a
	// small machine they keep the clients from delaying the forwarders'
	// wake-ups. A relay in the harness's process (no --spawn-relay, the
	// tls and wss transports, the fleet) cannot be pinned apart: PeerCPUs
	// refuses them.
	PeerCPUs, ClientCPUs string

	Stdout, Stderr io.Writer // tables; progress and notes (nil: silent)
	// ChildCommand builds the command that runs "bench _child ARGS..."
	// (default: this executable); tests point it at the test binary.
	ChildCommand func(args []string) (*exec.Cmd, error)
	Command      string // the command line, recorded in the report
}

// Quick is the "make bench" suite: every scenario, small (< 3 minutes on
// 2 cores).
func Quick() Options {
	return Options{
		Preset: "quick", Scenarios: Scenarios,
		Transports:   []string{"tcp", "ws", "mixed"},
		Duration:     500 * time.Millisecond,
		SetupConc:    32,
		SetupClients: "lean",
		Sizes:        []int{64, 1 << 10, 16 << 10, 64 << 10},
		Parallel:     []int{1, 8},

		LatencySamples: 5000,
		LatencyMaxTime: 3 * time.Second,
		Background:     100,

		ChurnDuration: 3 * time.Second,
		ChurnConc:     16,

		IdleN: []int{1000, 4000}, IdleTransport: "tcp",
		IdlePerWorker: 4000, IdlePerRelay: MaxPerRelay(), IdleVerify: 100,
	}
}

// MaxPerRelay is the most idle tunnels one spawned relay takes: half its
// own connection limit (limits.DefaultMaxConns, from the open-files
// limit it inherits from this process; two connections per tunnel), less
// a margin for the harness's checks, and at most 9,000. With a hard limit
// of 20,000 open files that is 7,797: a higher count would be refused by
// the relay itself (limit_conns), not measured.
func MaxPerRelay() int { return min(9000, limits.DefaultMaxConns()/2-100) }

// Full is the "make bench-full" suite.
func Full() Options {
	o := Quick()
	o.Preset = "full"
	o.Duration = 3 * time.Second
	o.SetupConc = 64
	o.Sizes = []int{64, 1 << 10, 4 << 10, 16 << 10, 64 << 10}
	o.Parallel = []int{1, 8, 32}
	o.LatencySamples = 50000
	o.LatencyMaxTime = 20 * time.Second
	o.Background = 1000
	o.ChurnDuration = 30 * time.Second
	o.ChurnConc = 32
	o.IdleN = []int{1000, 4000, 8000, 16000}
	o.IdleVerify = 500
	return o
}

// Tiny is for tests: every scenario in a few seconds.
func Tiny() Options {
	o := Quick()
	o.Preset = "tiny"
	o.Duration = 200 * time.Millisecond
	o.SetupConc = 4
	o.Sizes = []int{64, 16 << 10}
	o.Parallel = []int{1, 2}
	o.LatencySamples = 200
	o.Background = 4
	o.ChurnDuration = 500 * time.Millisecond
	o.ChurnConc = 2
	o.IdleN = []int{20, 60}
	o.IdlePerWorker = 15
	o.IdleVerify = 10
	return o
}

// Run runs the scenarios of opt and returns the report; with opt.Out it
// writes it (report.md, results.json, SVG charts with opt.Plot) under a
// folder named after the start time.
func Run(ctx context.Context, opt Options) (*Report, error) {
	rep := &Report{Started: time.Now().UTC(), Preset: opt.Preset, Command: opt.Command, Machine: machine()}
	for _, s := range opt.Scenarios {
		if !slices.Contains(Scenarios, s) {
			return nil, fmt.Errorf("unknown scenario %q (want %s)", s, strings.Join(Scenarios, ", "))
		}
	}
	var dir string
	if opt.Out != "" {
		dir = filepath.Join(opt.Out, rep.Started.Format("20060102-150405")+"-"+opt.Preset)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		rep.Dir = dir
	}
	unpin, err := pinRun(&opt)
	if err != nil {
		return nil, err
	}
	defer unpin()
	env, err := newEnv(&opt)
	if err != nil {
		return nil, err
	}
	defer env.Close()
	if opt.PeerCPUs != "" || opt.ClientCPUs != "" {
		env.note("CPUs: forwarders on %s (taskset -c), the harness on %s", orAll(opt.PeerCPUs), orAll(opt.ClientCPUs))
	}
	env.dir = dir
	var failed []string
	for _, s := range opt.Scenarios {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		stopProf := env.profile(s, dir)
		began := time.Now()
		var t *Table
		switch s {
		case "setup":
			t, err = runSetup(ctx, env)
		case "throughput":
			t, err = runThroughput(ctx, env)
		case "latency":
			t, err = runLatency(ctx, env)
		case "churn":
			t, err = runChurn(ctx, env)
		case "idle":
			t, err = runIdle(ctx, env)
		case "turn":
			t, err = runTURN(ctx, env)
		}
		stopProf()
		if err != nil {
			// Keep what the other scenarios measure; report the failure.
			failed = append(failed, fmt.Sprintf("%s: %v", s, err))
			env.note("scenario %s failed: %v", s, err)
			if opt.Stderr != nil {
				fmt.Fprintf(opt.Stderr, "%sscenario %s failed: %v\n", lineStart(opt.Stderr), s, err)
			}
			continue
		}
		t.Seconds = time.Since(began).Seconds()
		t.Notes = append(t.Notes, fmt.Sprintf("(%s took %.0f s)", s, t.Seconds))
		rep.Tables = append(rep.Tables, t)
		if opt.Stdout != nil {
			fmt.Fprintln(opt.Stdout, t.Markdown())
		}
	}
	rep.Notes = env.notes
	rep.Finished = time.Now().UTC()
	rep.Machine.LoadAvg = append(rep.Machine.LoadAvg, loadavg())
	rep.Targets = targets(rep)
	if opt.Stdout != nil {
		fmt.Fprintln(opt.Stdout, rep.TargetsMarkdown())
	}
	if dir != "" {
		if err := rep.Write(dir, opt.Plot); err != nil {
			return rep, err
		}
		if opt.Stderr != nil {
			fmt.Fprintf(opt.Stderr, "results: %s\n", dir)
		}
	}
	if len(failed) > 0 {
		return rep, fmt.Errorf("failed: %s", strings.Join(failed, "; "))
	}
	return rep, nil
}

// profile starts a CPU profile of the relay for scenario s (the spawned
// relay, or this process when the relay runs in it) and returns its stop.
func (e *Env) profile(s, dir string) func() {
	if !e.opt.CPUProfile || dir == "" {
		return func() {}
	}
	path, _ := filepath.Abs(filepath.Join(dir, "cpu-"+s+".pprof"))
	switch {
	case e.child != nil:
		if _, err := e.child.call("profile-start "+path, "ok", 10*time.Second); err != nil {
			e.note("profile %s: %v", s, err)
			return func() {}
		}
		// The harness (client side) is profiled too, to tell whose CPU a
		// figure is bound by.
		hp := strings.TrimSuffix(path, ".pprof") + "-harness.pprof"
		f, err := os.Create(hp)
		if err == nil && pprof.StartCPUProfile(f) != nil {
			f.Close()
			f = nil
		}
		return func() {
			e.child.call("profile-stop", "ok", 30*time.Second)
			if f != nil {
				pprof.StopCPUProfile()
				f.Close()
			}
		}
	case e.Relay != nil:
		f, err := os.Create(path)
		if err != nil {
			e.note("profile %s: %v", s, err)
			return func() {}
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			e.note("profile %s: %v", s, err)
			return func() {}
		}
		return func() { pprof.StopCPUProfile(); f.Close() }
	}
	return func() {}
}

// Machine describes where a run happened.
type Machine struct {
	CPUs      int    `json:"cpus"`
	MemTotal  string `json:"mem_total"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	CPUModel  string `json:"cpu_model,omitempty"`
	// LoadAvg is /proc/loadavg at the start and at the end of the run:
	// other work on the machine skews every figure.
	LoadAvg []string `json:"loadavg"`
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), LoadAvg: []string{loadavg()}}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if kb := procMeminfo("MemTotal"); kb > 0 {
		m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

func procMeminfo(field string) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, field+":"); ok {
			var v int64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}
