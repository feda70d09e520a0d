package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/meetpoint/meetpoint/bench"
)

const benchUsage = `usage: meetpoint bench <scenario> [flags]

scenarios:
  quick       every scenario, small (make bench; < 3 minutes on 2 cores)
  full        every scenario, large (make bench-full)
  setup       tunnels per second and pairing latency (p50/p99/p99.9), TCP and WebSocket
  throughput  MB/s through 1 and K tunnels by message size, TCP, WebSocket, mixed
  latency     64 B ping-pong RTT with M idle or busy background tunnels
  churn       open/close continuously; relay RSS, fds, goroutines at start and end
  idle        hold N tunnels; relay RSS per tunnel (relay and clients in separate processes)

Every scenario runs the same measurement through a direct loopback connection,
HAProxy (tcp mode, splice) and socat when installed (make bench-deps), and
meetpoint, and prints ratios. A single scenario uses the quick sizes unless
--full is given.

flags:
`

// benchMain runs "meetpoint bench ..." and returns the exit status.
func benchMain(args []string) int {
	return runBench(args, os.Stdout, os.Stderr)
}

func runBench(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "_child" {
		return bench.ChildMain(args[1:])
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			fs, _ := benchFlags(bench.Quick())
			fmt.Fprint(stdout, benchUsage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprint(stderr, benchUsage)
		return 2
	}
	scenario := args[0]
	var opt bench.Options
	full := false
	for _, a := range args[1:] { // before the flags are parsed: they depend on the sizes
		name, val, hasVal := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if name == "full" && a != name {
			full = !hasVal
			if b, err := strconv.ParseBool(val); hasVal && err == nil {
				full = b
			}
		}
	}
	switch {
	case scenario == "quick":
		opt = bench.Quick()
	case scenario == "full" || full:
		opt = bench.Full()
	default:
		opt = bench.Quick()
	}
	if scenario != "quick" && scenario != "full" {
		known := false
		for _, s := range bench.Scenarios {
			known = known || s == scenario
		}
		if !known {
			fmt.Fprintf(stderr, "meetpoint bench: unknown scenario %q\n\n%s", scenario, benchUsage)
			return 2
		}
		opt.Scenarios = []string{scenario}
		opt.Preset = scenario
	}
	fs, apply := benchFlags(opt)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args[1:]); err != nil {
		if err == flag.ErrHelp {
			fmt.Fprint(stdout, benchUsage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "meetpoint bench: %v\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meetpoint bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if err := apply(&opt); err != nil {
		fmt.Fprintf(stderr, "meetpoint bench: %v\n", err)
		return 2
	}
	opt.Stdout, opt.Stderr = stdout, stderr
	opt.Command = "meetpoint bench " + strings.Join(args, " ")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := bench.Run(ctx, opt); err != nil {
		fmt.Fprintf(stderr, "\nmeetpoint bench: %v\n", err)
		return 1
	}
	return 0
}

// benchFlags declares the flags over the preset opt; apply copies the
// parsed values that need converting into an Options.
func benchFlags(opt bench.Options) (*flag.FlagSet, func(*bench.Options) error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.Bool("full", false, "use the full suite's sizes for a single scenario")
	out := fs.String("out", "", "results `DIR`: report.md and results.json (and SVGs with --plot) go into DIR/<time>-<scenario>/")
	plot := fs.Bool("plot", false, "write SVG charts (latency CDF, throughput by message size) into the results folder")
	peers := fs.String("peers", "", "comma-separated peers to run: direct,haproxy,socat,meetpoint,fleet (default all)")
	relayURL := fs.String("relay-url", "", "benchmark this external relay (tcp://host:port or ws://host:port/; comma-separated for several listeners) instead of starting one")
	relayPID := fs.Int("relay-pid", 0, "pid of the external relay, for RSS, fds and threads")
	fleetURL := fs.String("fleet", "", "also measure a fleet of two relays on this Redis (`URL` redis://HOST:PORT/DB, or local: start a redis-server): rows fleet same-node and fleet cross-node (docs/fleet.md)")
	spawn := fs.Bool("spawn-relay", false, "run the relay as a separate process (default: in this process)")
	peerCPUs := fs.String("peer-cpus", "", "run the forwarders (the spawned relay, haproxy, socat, TURN servers) on these `CPUS` (taskset -c list: 1, 2-3); needs --spawn-relay or --relay-url")
	clientCPUs := fs.String("client-cpus", "", "run the harness itself (its clients and backends) on these `CPUS`, apart from --peer-cpus")
	prof := fs.Bool("cpuprofile", false, "write a CPU profile of the relay per scenario (cpu-<scenario>.pprof) into the results folder")
	transports := fs.String("transports", strings.Join(opt.Transports, ","), "meetpoint transports: tcp,ws,mixed; wsbin (BINARY WebSocket messages where ws sends TEXT; throughput only); tls,wss (relays in this process; with --fleet the mesh links are TLS too)")
	dur := fs.Duration("duration", opt.Duration, "time per throughput and setup measurement")
	conc := fs.Int("conc", opt.SetupConc, "setup: concurrent dialers")
	clients := fs.String("clients", opt.SetupClients, "setup: what opens the tunnels: lean (lean clients on Go's net for tcp, ws and the TCP peers), netpoll (the same on cloudwego/netpoll) or library (client.Dial and net.Dialer)")
	sizes := fs.String("sizes", joinInts(opt.Sizes), "throughput: message sizes in bytes")
	par := fs.String("parallel", joinInts(opt.Parallel), "throughput: tunnel counts")
	samples := fs.Int("samples", opt.LatencySamples, "latency: RTT samples per row")
	latTime := fs.Duration("latency-time", opt.LatencyMaxTime, "latency: stop a row after this long even if samples are missing")
	bg := fs.Int("background", opt.Background, "latency: background tunnels")
	churnDur := fs.Duration("churn-duration", opt.ChurnDuration, "churn: how long to open and close")
	churnConc := fs.Int("churn-conc", opt.ChurnConc, "churn: concurrent workers")
	idleN := fs.String("n", joinInts(opt.IdleN), "idle: tunnel counts, one fresh relay each (the slope over them is the per-tunnel cost)")
	idleTr := fs.String("idle-transport", opt.IdleTransport, "idle: tcp, ws or mixed")
	perWorker := fs.Int("per-worker", opt.IdlePerWorker, "idle: tunnels per client worker process (≤ 9900: 2 sockets each)")
	perRelay := fs.Int("per-relay", opt.IdlePerRelay, "idle: tunnels per relay process (at most half the relay's connection limit: 2 sockets each)")
	verify := fs.Int("verify", opt.IdleVerify, "idle: tunnels sampled to check they still forward")
	apply := func(o *bench.Options) error {
		var err error
		o.Out, o.Plot, o.RelayURL, o.RelayPID, o.SpawnRelay, o.CPUProfile = *out, *plot, *relayURL, *relayPID, *spawn, *prof
		o.Fleet = *fleetURL
		o.PeerCPUs, o.ClientCPUs = *peerCPUs, *clientCPUs
		if *peers != "" {
			o.Peers = strings.Split(*peers, ",")
			for _, p := range o.Peers { // a name that is no peer would measure nothing, silently
				if p != "direct" && p != "haproxy" && p != "socat" && p != "meetpoint" && p != "fleet" {
					return fmt.Errorf("peers: %q: want direct, haproxy, socat, meetpoint or fleet", p)
				}
			}
		}
		o.Transports = strings.Split(*transports, ",")
		for _, t := range o.Transports {
			if t != "tcp" && t != "ws" && t != "wsbin" && t != "mixed" && t != "tls" && t != "wss" {
				return fmt.Errorf("transports: %q: want tcp, ws, wsbin, mixed, tls or wss", t)
			}
		}
		if *clients != "lean" && *clients != "netpoll" && *clients != "library" {
			return fmt.Errorf("clients: %q: want lean, netpoll or library", *clients)
		}
		o.SetupClients = *clients
		if *idleTr != "tcp" && *idleTr != "ws" && *idleTr != "mixed" {
			return fmt.Errorf("idle-transport: %q: want tcp, ws or mixed", *idleTr)
		}
		o.Duration, o.SetupConc, o.LatencySamples, o.Background = *dur, *conc, *samples, *bg
		o.LatencyMaxTime = *latTime
		o.ChurnDuration, o.ChurnConc, o.IdleTransport = *churnDur, *churnConc, *idleTr
		o.IdlePerWorker, o.IdlePerRelay, o.IdleVerify = *perWorker, *perRelay, *verify
		if o.Sizes, err = parseInts(*sizes); err != nil {
			return fmt.Errorf("sizes: %w", err)
		}
		if o.Parallel, err = parseInts(*par); err != nil {
			return fmt.Errorf("parallel: %w", err)
		}
		if o.IdleN, err = parseInts(*idleN); err != nil {
			return fmt.Errorf("n: %w", err)
		}
		switch {
		case o.Duration <= 0 || o.ChurnDuration <= 0:
			return fmt.Errorf("durations must be positive")
		case o.SetupConc < 1 || o.ChurnConc < 1 || o.LatencySamples < 1 || o.Background < 0:
			return fmt.Errorf("conc, churn-conc and samples must be at least 1, background at least 0")
		case o.IdlePerWorker < 1 || o.IdlePerWorker > 9900:
			return fmt.Errorf("per-worker must be between 1 and 9900")
		case o.IdlePerRelay < 1 || o.IdlePerRelay > bench.MaxPerRelay():
			return fmt.Errorf("per-relay must be between 1 and %d (half the relay's connection limit under this open-files limit)", bench.MaxPerRelay())
		case o.RelayPID != 0 && o.RelayURL == "":
			return fmt.Errorf("relay-pid needs relay-url")
		}
		return nil
	}
	return fs, apply
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%q: want positive integers, comma-separated", f)
		}
		out = append(out, v)
	}
	return out, nil
}
