package bench

import (
	"bytes"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPercentileOfNoSamples: a setup row whose every tunnel failed has an
// empty histogram, and HdrHistogram answers 0 for any percentile of it:
// the row read "p50 0 µs, p99 0 µs", the best latency of the table, for
// a peer that paired nothing. A percentile of no samples is unknown: NaN,
// which the report shows as "–" and results.json leaves out.
func TestPercentileOfNoSamples(t *testing.T) {
	h := newHist()
	for _, p := range []float64{50, 99, 99.9} {
		if v := us(h, p); !math.IsNaN(v) {
			t.Errorf("p%v of no samples = %v µs, want NaN (unknown)", p, v)
		}
	}
	tab := &Table{Title: "setup", Columns: []Column{{"p99", "p99 µs", "%.0f"}}}
	tab.add("meetpoint tcp", map[string]string{}, map[string]float64{"p99": us(h, 99)})
	if md := tab.Markdown(); !strings.Contains(md, "| meetpoint tcp | – |") {
		t.Errorf("a row with no samples renders\n%s\nwant its p99 as –", md)
	}
}

// TestPercentileValues pins us() on known samples: 1…1000 µs, one each.
// The nearest-rank p50 is 500 µs, p99 990 µs, p99.9 999 µs, to the
// histogram's three significant figures (and its 64 ns unit below
// 131 µs).
func TestPercentileValues(t *testing.T) {
	h := newHist()
	for i := 1; i <= 1000; i++ {
		record(h, time.Duration(i)*time.Microsecond)
	}
	for _, c := range []struct{ p, want float64 }{{50, 500}, {99, 990}, {99.9, 999}, {100, 1000}} {
		if v := us(h, c.p); math.Abs(v-c.want) > c.want*1e-3 {
			t.Errorf("p%v = %v µs, want %v", c.p, v, c.want)
		}
	}
	one := newHist()
	record(one, 42*time.Microsecond)
	// lowest trackable 100 ns makes the finest unit 64 ns: us() reports
	// the top of the sample's bucket, 42.047 µs.
	if v := us(one, 99.9); v < 42 || v > 42.064 {
		t.Errorf("p99.9 of one sample of 42 µs = %v", v)
	}
}

// idleRow is an idle step's row: n tunnels asked for, opened of them held,
// the relays' RSS growing by perTunnel bytes for each held one.
func idleRow(n, opened int, perTunnel float64) *Row {
	const mib = 1 << 20
	rss0 := 10.0
	grown := float64(opened) * perTunnel / mib
	return &Row{Peer: "meetpoint tcp", Params: map[string]string{"tunnels": strconv.Itoa(n)},
		Values: map[string]float64{"rss0": rss0, "rss1": rss0 + grown, "rss1gc": rss0 + grown/2,
			"opened": float64(opened), "errors": float64(n - opened)}}
}

// TestIdleSlopeOverHeldTunnels: the slope is the memory per held tunnel,
// so its x is the tunnels that were held (opened), as each row's own B/tunnel
// divides by. It was the count asked for: with 1,000 of 4,000 dials
// failed, 2,000 B per tunnel read as 1,333 B, under the 2,048 B target.
func TestIdleSlopeOverHeldTunnels(t *testing.T) {
	rows := []*Row{idleRow(1000, 1000, 2000), idleRow(4000, 3000, 2000)}
	if s := idleSlope(rows, "rss1"); math.Abs(s-2000) > 1 {
		t.Errorf("slope = %.1f B/tunnel, want 2000 (over the held tunnels)", s)
	}
	if s := idleSlope(rows, "rss1gc"); math.Abs(s-1000) > 1 {
		t.Errorf("slope after GC = %.1f B/tunnel, want 1000", s)
	}
}

// TestSlope pins the least-squares slope: exact on a line, the fitted
// slope on noisy points, 0 for one x.
func TestSlope(t *testing.T) {
	if s := slope([]float64{1000, 2000, 4000}, []float64{5e6, 7e6, 11e6}); math.Abs(s-2000) > 1e-9 {
		t.Errorf("slope of a line = %v, want 2000", s)
	}
	// (0,0) (1,1) (2,1) (3,3): sx=6 sy=5 sxx=14 sxy=12, (4·12−6·5)/(4·14−36) = 0.9.
	if s := slope([]float64{0, 1, 2, 3}, []float64{0, 1, 1, 3}); math.Abs(s-0.9) > 1e-12 {
		t.Errorf("fitted slope = %v, want 0.9", s)
	}
	if s := slope([]float64{5, 5}, []float64{1, 2}); s != 0 {
		t.Errorf("slope over one x = %v, want 0", s)
	}
}

// TestMarkdownNotFinite: an idle step that held no tunnel divides its RSS
// growth by 0 opened: per_tunnel is +Inf when the RSS grew (NaN only when
// it did not). report.md showed "+Inf" B/tunnel where it shows "–" for
// NaN, as results.json leaves both out.
func TestMarkdownNotFinite(t *testing.T) {
	r := idleRow(100, 0, 0)
	r.Values["rss1"] = r.Values["rss0"] + 1
	r.Values["per_tunnel"] = (r.Values["rss1"] - r.Values["rss0"]) * (1 << 20) / r.Values["opened"]
	tab := &Table{Title: "idle", Params: []string{"tunnels"}, Columns: []Column{{"per_tunnel", "B/tunnel", "%.0f"}}, Rows: []*Row{r}}
	if md := tab.Markdown(); !strings.Contains(md, "| meetpoint tcp | 100 | – |") {
		t.Errorf("a row of no tunnels renders\n%s\nwant its B/tunnel as –", md)
	}
}

// TestRatiosDirection pins ×direct and ×haproxy: the row's figure over the
// reference's with the same parameters (0.5× = half direct's MB/s), none
// where the reference has no row or a figure of 0.
func TestRatiosDirection(t *testing.T) {
	tab := &Table{Params: []string{"size"}}
	p := func(s string) map[string]string { return map[string]string{"size": s} }
	tab.add("direct", p("64 KiB"), map[string]float64{"mbps": 2000})
	tab.add("haproxy", p("64 KiB"), map[string]float64{"mbps": 800})
	mp := tab.add("meetpoint tcp", p("64 KiB"), map[string]float64{"mbps": 1000})
	lone := tab.add("meetpoint tcp", p("1 KiB"), map[string]float64{"mbps": 100})
	tab.add("direct", p("16 KiB"), map[string]float64{"mbps": 0})
	zero := tab.add("meetpoint tcp", p("16 KiB"), map[string]float64{"mbps": 10})
	tab.addRatios("mbps")
	if v := mp.Values["x_direct"]; v != 0.5 {
		t.Errorf("×direct = %v, want 0.5", v)
	}
	if v := mp.Values["x_haproxy"]; v != 1.25 {
		t.Errorf("×haproxy = %v, want 1.25", v)
	}
	for _, r := range []*Row{lone, zero} {
		if _, ok := r.Values["x_direct"]; ok {
			t.Errorf("a row with no usable direct reference got ×direct %v", r.Values["x_direct"])
		}
	}
	// TLS rows are measured against HAProxy terminating TLS, not plain.
	tls := &Table{Params: []string{"size"}}
	tls.add("haproxy", p("64 KiB"), map[string]float64{"mbps": 1000})
	tls.add("haproxy tls", p("64 KiB"), map[string]float64{"mbps": 500})
	mt := tls.add("meetpoint tls", p("64 KiB"), map[string]float64{"mbps": 600})
	mw := tls.add("meetpoint wss", p("64 KiB"), map[string]float64{"mbps": 400})
	mtcp := tls.add("meetpoint tcp", p("64 KiB"), map[string]float64{"mbps": 1500})
	tls.addRatios("mbps")
	for r, want := range map[*Row]float64{mt: 1.2, mw: 0.8, mtcp: 1.5} {
		if v := r.Values["x_haproxy"]; v != want {
			t.Errorf("%s ×haproxy = %v, want %v", r.Peer, v, want)
		}
	}
}

// TestProcTimes checks the CPU time read from /proc/PID/stat (clock
// ticks, at USER_HZ) against getrusage's for this process: a wrong tick
// rate or field would be far off.
func TestProcTimes(t *testing.T) {
	var ru syscall.Rusage
	rusage := func() {
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
	}
	// Spin until this process has used 300 ms of user time (CPU, not wall
	// time: the machine may be loaded).
	for rusage(); ru.Utime.Nano() < 300e6; rusage() {
	}
	if emulatedProcStat(t) {
		t.Skip("/proc/self/stat is emulated here (qemu-user: no thread count, no CPU times): nothing to compare")
	}
	user, sys := procTimes(os.Getpid())
	rusage()
	ruUser := time.Duration(ru.Utime.Nano())
	ruSys := time.Duration(ru.Stime.Nano())
	const slack = 60 * time.Millisecond // 10 ms ticks, and the time between the two reads
	if d := ruUser - user; d < -slack || d > slack || user < 200*time.Millisecond {
		t.Errorf("/proc utime %v, getrusage %v", user, ruUser)
	}
	if d := ruSys - sys; d < -slack || d > slack {
		t.Errorf("/proc stime %v, getrusage %v", sys, ruSys)
	}
	if u, s := procTimes(-1); u != -1 || s != -1 {
		t.Errorf("procTimes of no process = %v, %v; want -1, -1", u, s)
	}
}

// emulatedProcStat reports whether /proc/self/stat is not the kernel's:
// qemu-user's emulation (the arm64 test stage) leaves most fields 0,
// num_threads (field 20, at least 1 on Linux) among them, and the CPU
// times with it.
func emulatedProcStat(t *testing.T) bool {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state)
	return len(f) < 18 || f[17] == "0"
}
