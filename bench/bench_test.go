package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay/limits"
)

// TestMain lets the test binary act as a child ("bench _child ROLE ...").
func TestMain(m *testing.M) {
	if os.Getenv(ChildEnv) == "1" && len(os.Args) > 3 && os.Args[1] == "bench" && os.Args[2] == "_child" {
		os.Exit(ChildMain(os.Args[3:]))
	}
	os.Exit(m.Run())
}

func tiny(t *testing.T, scenario string) Options {
	t.Helper()
	o := Tiny()
	o.Scenarios = []string{scenario}
	o.Preset = scenario
	o.Out = t.TempDir()
	o.Plot = true
	o.ChildCommand = func(args []string) (*exec.Cmd, error) {
		return exec.Command(os.Args[0], append([]string{"bench", "_child"}, args...)...), nil
	}
	return o
}

// runTiny runs one scenario at tiny scale and checks the files it writes.
func runTiny(t *testing.T, o Options) (*Report, *Table) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	tab := rep.Table(o.Scenarios[0])
	if tab == nil {
		t.Fatalf("no %s table", o.Scenarios[0])
	}
	js, err := os.ReadFile(filepath.Join(rep.Dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if len(back.Tables) != 1 || len(back.Tables[0].Rows) != len(tab.Rows) {
		t.Fatalf("results.json holds %d tables", len(back.Tables))
	}
	md, err := os.ReadFile(filepath.Join(rep.Dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| peer |") {
		t.Fatalf("report.md has no table:\n%s", md)
	}
	return rep, tab
}

// wantRows checks that every expected label has a row in the markdown.
func wantRows(t *testing.T, tab *Table, labels ...string) {
	t.Helper()
	md := tab.Markdown()
	for _, l := range labels {
		if !strings.Contains(md, "| "+l+" |") {
			t.Errorf("%s table has no %q row:\n%s", tab.Scenario, l, md)
		}
	}
	lines := strings.Split(strings.TrimSpace(md), "\n")
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "| ") && !strings.HasPrefix(l, "| peer") {
			n++
			if c := strings.Count(l, "|"); c != len(tab.Params)+len(tab.Columns)+2 {
				t.Errorf("row %q has %d cells", l, c-1)
			}
		}
	}
	if n != len(tab.Rows) {
		t.Errorf("markdown has %d rows, table %d", n, len(tab.Rows))
	}
}

// refPeers returns the reference peers installed here.
func refPeers() []string {
	out := []string{"direct"}
	for _, p := range []string{"haproxy", "socat"} {
		if _, err := exec.LookPath(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func TestSetup(t *testing.T) {
	_, tab := runTiny(t, tiny(t, "setup"))
	wantRows(t, tab, append(refPeers(), "meetpoint tcp", "meetpoint ws")...)
	for _, r := range tab.Rows {
		if r.Values["tunnels"] < 1 || r.Values["p50"] <= 0 || r.Values["errors"] != 0 {
			t.Errorf("%s: %v", r.Peer, r.Values)
		}
		if r.Peer != "direct" && r.Values["x_direct"] <= 0 {
			t.Errorf("%s: no ratio vs direct", r.Peer)
		}
		// CPU per tunnel: haproxy's process; never the harness's own
		// (the relay runs in process here).
		_, cpu := r.Values["cpu"]
		if want := r.Peer == "haproxy"; cpu != want {
			t.Errorf("%s: CPU per tunnel reported %v, want %v", r.Peer, cpu, want)
		}
		if sys, ok := r.Values["sys"]; ok != cpu || sys > r.Values["cpu"] {
			t.Errorf("%s: sys %v (reported %v) against CPU %v", r.Peer, sys, ok, r.Values["cpu"])
		}
		// The harness's own CPU: where the forwarder is not in its process.
		if _, ok := r.Values["harness"]; ok != !strings.HasPrefix(r.Peer, "meetpoint") {
			t.Errorf("%s: harness CPU reported %v", r.Peer, ok)
		}
	}
}

// TestSetupOnNetpoll: the lean clients on netpoll open real tunnels
// through the relay and the direct connection.
func TestSetupOnNetpoll(t *testing.T) {
	o := tiny(t, "setup")
	o.SetupClients = "netpoll"
	o.Peers = []string{"direct", "meetpoint"}
	o.Transports = []string{"tcp", "ws"}
	_, tab := runTiny(t, o)
	wantRows(t, tab, "direct", "meetpoint tcp", "meetpoint ws")
	for _, r := range tab.Rows {
		if r.Values["tunnels"] < 1 || r.Values["errors"] != 0 {
			t.Errorf("%s: %v (%q)", r.Peer, r.Values, tab.Notes)
		}
	}
	if !strings.Contains(tab.Markdown(), "--clients netpoll") {
		t.Errorf("the report does not say which clients opened the tunnels:\n%s", tab.Markdown())
	}
}

func TestThroughput(t *testing.T) {
	rep, tab := runTiny(t, tiny(t, "throughput"))
	wantRows(t, tab, append(refPeers(), "meetpoint tcp", "meetpoint ws", "meetpoint mixed")...)
	if want := (len(refPeers()) + 3) * 2 * 2; len(tab.Rows) != want {
		t.Errorf("%d rows, want %d", len(tab.Rows), want)
	}
	for _, r := range tab.Rows {
		if r.Values["mbps"] <= 0 {
			t.Errorf("%s %v: no throughput", r.Peer, r.Params)
		}
	}
	for _, f := range []string{"throughput-k1.svg", "throughput-k2.svg"} {
		b, err := os.ReadFile(filepath.Join(rep.Dir, f))
		if err != nil || !strings.HasPrefix(string(b), "<svg") {
			t.Errorf("%s: %v", f, err)
		}
	}
	if len(rep.Targets) == 0 {
		t.Error("no targets evaluated")
	}
}

// TestThroughputTextAndBinary: the ws (TEXT) and wsbin (BINARY) rows that
// docs/BENCHMARKS.md compares, with no CPU column for a relay in the
// harness's own process (its CPU would count the clients too).
func TestThroughputTextAndBinary(t *testing.T) {
	o := tiny(t, "throughput")
	o.Peers = []string{"meetpoint"}
	o.Transports = []string{"ws", "wsbin"}
	o.Sizes, o.Parallel = []int{16 << 10}, []int{1}
	_, tab := runTiny(t, o)
	wantRows(t, tab, "meetpoint ws", "meetpoint wsbin")
	for _, r := range tab.Rows {
		if r.Values["mbps"] <= 0 {
			t.Errorf("%s %v: no throughput", r.Peer, r.Params)
		}
		if _, ok := r.Values["cpu"]; ok {
			t.Errorf("%s %v: a CPU figure for a relay in the harness's process", r.Peer, r.Params)
		}
	}
}

func TestLatency(t *testing.T) {
	rep, tab := runTiny(t, tiny(t, "latency"))
	wantRows(t, tab, append(refPeers(), "meetpoint tcp", "meetpoint ws")...)
	for _, r := range tab.Rows {
		if r.Values["p50"] <= 0 || r.Values["p99"] < r.Values["p50"] || len(r.CDF) == 0 {
			t.Errorf("%s %v: %v", r.Peer, r.Params, r.Values)
		}
	}
	for _, f := range []string{"latency-cdf-idle.svg", "latency-cdf-busy.svg"} {
		if _, err := os.Stat(filepath.Join(rep.Dir, f)); err != nil {
			t.Error(err)
		}
	}
}

func TestChurn(t *testing.T) {
	o := tiny(t, "churn")
	_, tab := runTiny(t, o)
	wantRows(t, tab, "meetpoint tcp", "meetpoint ws")
	for _, r := range tab.Rows {
		if r.Values["tunnels"] < 1 || r.Values["rss1"] <= 0 || r.Values["fd1"] <= 0 {
			t.Errorf("%s: %v", r.Peer, r.Values)
		}
	}
}

func TestIdle(t *testing.T) {
	o := tiny(t, "idle")
	_, tab := runTiny(t, o)
	if len(tab.Rows) != 3 {
		t.Fatalf("%d rows, want 2 steps and a slope:\n%s", len(tab.Rows), tab.Markdown())
	}
	wantRows(t, tab, "meetpoint tcp")
	for _, r := range tab.Rows[:2] {
		v := r.Values
		if v["workers"] < 2 || v["verified"] < 1 || v["verify_failed"] != 0 || v["rss1"] <= 0 {
			t.Errorf("%v: %v", r.Params, v)
		}
	}
	if !strings.Contains(tab.Markdown(), "1M tunnels") {
		t.Error("no extrapolation note")
	}
}

func TestSVG(t *testing.T) {
	s := lineChart("t", "x", "y", []tick{{0, "a"}, {1, "b"}}, true, []series{{"s", [][2]float64{{0, 1}, {1, 100}}}})
	if !strings.HasPrefix(s, "<svg") || !strings.Contains(s, "<polyline") {
		t.Fatal(s)
	}
}

// TestTURN: the turn scenario measures meetpoint's TURN (a child process)
// beside the direct path, and beside coturn where turnserver is installed
// (required where MEETPOINT_REQUIRE_COTURN is set, as in CI).
func TestTURN(t *testing.T) {
	o := tiny(t, "turn")
	rep, tab := runTiny(t, o)
	t.Logf("notes: %q", rep.Notes)
	labels := []string{"direct", "meetpoint"}
	if _, err := exec.LookPath("turnserver"); err == nil || os.Getenv("MEETPOINT_REQUIRE_COTURN") != "" {
		labels = append(labels, "coturn")
	}
	wantRows(t, tab, labels...)
	for _, r := range tab.Rows {
		if r.Params["offered"] == "10000/s" && (r.Values["pps"] < 1000 || (r.Peer != "direct" && r.Values["allocs"] <= 0)) {
			t.Errorf("%s at 10000/s: %v", r.Peer, r.Values)
		}
	}
}

// TestTargetUnreachable: a target the baseline without a relay misses on
// this machine reads "n/a" and says why, not "no".
func TestTargetUnreachable(t *testing.T) {
	setup := &Table{Scenario: "setup"}
	setup.add("direct", nil, map[string]float64{"rate": 9000})
	setup.add("meetpoint tcp", nil, map[string]float64{"rate": 4000})
	r := &Report{Tables: []*Table{setup}}
	r.Targets = targets(r)
	if len(r.Targets) != 1 || r.Targets[0].Meets || !strings.Contains(r.Targets[0].Unreachable, "9000/s") {
		t.Fatalf("targets %+v", r.Targets)
	}
	if md := r.TargetsMarkdown(); !strings.Contains(md, "| n/a: direct TCP, with no relay, makes 9000/s on this machine |") {
		t.Errorf("targets table:\n%s", md)
	}
	setup.Rows[0].Values["rate"] = 50000 // reachable here: a miss is a miss
	if tg := targets(r)[0]; tg.Unreachable != "" || !strings.Contains((&Report{Targets: []Target{tg}}).TargetsMarkdown(), "| no |") {
		t.Errorf("a reachable target missed: %+v", tg)
	}
}

// TestProgressPiped: piped (not a terminal), the progress line writes no
// carriage returns or escape sequences.
func TestProgressPiped(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	stop := startProgress(w, "label", func() string { return "status" })
	time.Sleep(50 * time.Millisecond)
	stop()
	fmt.Fprintf(w, "%snote\n", lineStart(w))
	w.Close()
	if got, _ := io.ReadAll(r); string(got) != "note\n" {
		t.Errorf("progress and a note to a pipe wrote %q", got)
	}
}

// TestTLSTransports: tls and wss rows through the relay and, with a
// fleet on a local redis-server, across its two nodes (whose mesh links
// are then TLS too) carry bytes, and so does HAProxy terminating TLS on
// both sides.
func TestTLSTransports(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not found: apt-get install redis-server")
	}
	o := tiny(t, "throughput")
	o.Transports = []string{"tls", "wss"}
	o.Peers = []string{"meetpoint", "fleet", "haproxy"}
	o.Fleet = "local"
	_, tab := runTiny(t, o)
	wantRows(t, tab, "meetpoint tls", "meetpoint wss", "fleet same-node tls", "fleet cross-node tls", "fleet cross-node wss")
	if _, err := exec.LookPath("haproxy"); err == nil {
		wantRows(t, tab, "haproxy tls") // the reference: TLS terminated on both sides
	}
	for _, r := range tab.Rows {
		if r.Values["mbps"] <= 0 {
			t.Errorf("%s %v: no throughput", r.Peer, r.Params)
		}
	}
}

// TestPerRelayFitsTheRelay: bench idle never asks one relay for more
// tunnels than its own connection limit admits (2 connections each).
func TestPerRelayFitsTheRelay(t *testing.T) {
	if n := MaxPerRelay(); n < 1 || 2*n > limits.DefaultMaxConns() {
		t.Fatalf("MaxPerRelay %d: %d connections, the relay admits %d", n, 2*n, limits.DefaultMaxConns())
	}
	if o := Quick(); o.IdlePerRelay > MaxPerRelay() {
		t.Fatalf("the default per-relay count %d is over %d", o.IdlePerRelay, MaxPerRelay())
	}
}
