package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// pairs opens n tunnels through p with up to 32 dialers at once.
func openPairs(ctx context.Context, p *Peer, n int) ([][2]End, error) {
	out := make([][2]End, n)
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < min(32, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				a, b, err := p.Pair(ctx)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				out[i] = [2]End{a, b}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		closePairs(out)
		return nil, firstErr
	}
	return out, nil
}

func closePairs(ps [][2]End) {
	for _, p := range ps {
		for _, e := range p {
			if e != nil {
				e.Close()
			}
		}
	}
}

// ---- setup ----

func runSetup(ctx context.Context, e *Env) (*Table, error) {
	o := e.opt
	t := &Table{Scenario: "setup",
		Title:  fmt.Sprintf("setup: tunnels per second, %d concurrent dialers, %v per peer", o.SetupConc, o.Duration),
		Params: []string{},
		Columns: []Column{{"rate", "tunnels/s", "%.0f"}, {"p50", "p50 µs", "%.0f"}, {"p99", "p99 µs", "%.0f"},
			{"p999", "p99.9 µs", "%.0f"}, {"errors", "errors", "%.0f"}, {"cpu", "CPU µs/tunnel", "%.0f"},
			{"sys", "of which sys", "%.0f"}, {"harness", "harness CPU µs/tunnel", "%.0f"}},
		Notes: []string{"A tunnel is open → paired → closed. meetpoint: both clients connect, send Authenticate and " +
			"wait for TunnelEstablished (latency: until both have it). direct/haproxy/socat: connect and the harness's " +
			"backend accepting the connection (through the proxy) and reading its 8-byte id.",
			setupClientsNote(o.SetupClients),
			"CPU µs/tunnel: utime + stime of the forwarding process (/proc/PID/stat) over the row, per tunnel: " +
				"haproxy's own process; meetpoint's only with --spawn-relay (in process it would count the harness's " +
				"clients too, so it is left out); socat forks per connection and direct has none (–). " +
				"Of which sys: the stime part, the kernel's work in the process's system calls (accept, read, write, " +
				"close: the TCP stack's own cost, which a forwarder pays per connection whatever its code). " +
				"Harness CPU: the harness process's own (its clients, and the backend for direct/haproxy/socat) per " +
				"tunnel, where the forwarder is not in it: on a machine whose cores the two share, what the harness " +
				"spends is what the forwarder cannot."},
	}
	for _, p := range e.Peers(transportsOf(o, "tcp", "ws", "tls", "wss")...) {
		var count, errs atomic.Int64
		var firstErr atomic.Pointer[error] // named in the table's notes
		retried := netpollDialRetries.Load()
		hs := make([]*hdrhistogram.Histogram, o.SetupConc)
		forwarder := markCPU(ownPID(p))
		var harness cpuMark // the harness's CPU, where the forwarder is not in its process
		if p.PID != os.Getpid() {
			harness = markCPU(os.Getpid())
		}
		cctx, cancel := context.WithTimeout(ctx, o.Duration+30*time.Second)
		start := time.Now()
		deadline := start.Add(o.Duration)
		stop := startProgress(o.Stderr, "setup "+p.Label(), func() string {
			n := count.Load()
			return fmt.Sprintf("%d tunnels, %.0f/s, %d errors", n, float64(n)/time.Since(start).Seconds(), errs.Load())
		})
		var wg sync.WaitGroup
		for w := range hs {
			hs[w] = newHist()
			wg.Add(1)
			go func(h *hdrhistogram.Histogram) {
				defer wg.Done()
				for time.Now().Before(deadline) && cctx.Err() == nil {
					t0 := time.Now()
					closeBoth, err := p.openForSetup(cctx, o.SetupClients)
					if err != nil {
						errs.Add(1)
						firstErr.CompareAndSwap(nil, &err)
						continue
					}
					record(h, time.Since(t0))
					closeBoth()
					count.Add(1)
				}
			}(hs[w])
		}
		wg.Wait()
		el := time.Since(start)
		stop()
		cancel()
		h := newHist()
		for _, x := range hs {
			h.Merge(x)
		}
		vals := map[string]float64{
			"rate": float64(count.Load()) / el.Seconds(), "p50": us(h, 50), "p99": us(h, 99), "p999": us(h, 99.9),
			"errors": float64(errs.Load()), "tunnels": float64(count.Load()),
		}
		if n := float64(count.Load()); n > 0 {
			if cpu, _, ok := harness.used(); ok {
				vals["harness"] = float64(cpu.Microseconds()) / n
			}
			if cpu, sys, ok := forwarder.used(); ok {
				vals["cpu"] = float64(cpu.Microseconds()) / n
				vals["sys"] = float64(sys.Microseconds()) / n
			}
		}
		r := t.add(p.Label(), map[string]string{}, vals)
		r.CDF = cdf(h)
		if err := firstErr.Load(); err != nil {
			t.Notes = append(t.Notes, fmt.Sprintf("%s: %d tunnels failed; the first: %v", p.Label(), errs.Load(), *err))
		}
		if n := netpollDialRetries.Load() - retried; n > 0 {
			t.Notes = append(t.Notes, fmt.Sprintf("%s: %d netpoll dials reported a fresh connection closed by peer "+
				"(cloudwego/netpoll#363) and were retried once", p.Label(), n))
		}
	}
	t.addRatios("rate")
	return t, nil
}

// transportsOf returns the meetpoint transports of o among allowed.
func transportsOf(o *Options, allowed ...string) []string {
	var out []string
	for _, t := range o.Transports {
		for _, a := range allowed {
			if t == a {
				out = append(out, t)
			}
		}
	}
	return out
}

// ---- throughput ----

func runThroughput(ctx context.Context, e *Env) (*Table, error) {
	o := e.opt
	t := &Table{Scenario: "throughput",
		Title:   fmt.Sprintf("throughput: one direction, MB/s (10^6 B), %v per row", o.Duration),
		Params:  []string{"size", "tunnels"},
		Columns: []Column{{"mbps", "MB/s", "%.0f"}, {"cpu", "CPU µs/MB", "%.0f"}},
		Notes: []string{"Each tunnel: one writer sends messages of the given size back to back (one Write per message; " +
			"over WebSocket one message each: TEXT for ws, since the payload is valid UTF-8, BINARY for wsbin), " +
			"the other end reads and counts. mixed = TCP client → WebSocket client.",
			"CPU µs/MB: utime + stime of the forwarding process over the measured window, per MB forwarded: haproxy's, " +
				"meetpoint's only with --spawn-relay (–: in the harness's process, or socat's forks)."},
	}
	peers := e.Peers(transportsOf(o, "tcp", "ws", "wsbin", "mixed", "tls", "wss")...)
	for _, k := range o.Parallel {
		for _, size := range o.Sizes {
			for _, p := range peers {
				mbps, cpu, err := measureThroughput(ctx, e, p, size, k)
				if err != nil {
					return nil, fmt.Errorf("%s %s×%d: %w", p.Label(), human(size), k, err)
				}
				vals := map[string]float64{"mbps": mbps, "size_bytes": float64(size), "k": float64(k)}
				if cpu >= 0 {
					vals["cpu"] = cpu
				}
				t.add(p.Label(), map[string]string{"size": human(size), "tunnels": strconv.Itoa(k)}, vals)
			}
		}
	}
	t.addRatios("mbps")
	return t, nil
}

// measureThroughput returns MB/s over the window and the forwarding
// process's CPU µs per MB in it (-1 where it has no process of its own).
func measureThroughput(ctx context.Context, e *Env, p *Peer, size, k int) (mbps, cpuPerMB float64, err error) {
	o := e.opt
	ps, err := openPairs(ctx, p, k)
	if err != nil {
		return 0, -1, err
	}
	defer closePairs(ps)
	var got atomic.Int64
	var quit atomic.Bool
	var wg sync.WaitGroup
	for _, pr := range ps {
		wg.Add(2)
		go func(w End) {
			defer wg.Done()
			buf := make([]byte, size)
			for !quit.Load() {
				if _, err := w.Write(buf); err != nil {
					return
				}
			}
		}(pr[0])
		go func(r End) {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for {
				n, err := r.Read(buf)
				got.Add(int64(n))
				if err != nil {
					return
				}
			}
		}(pr[1])
	}
	label := fmt.Sprintf("throughput %s %s×%d", p.Label(), human(size), k)
	start := time.Now()
	stop := startProgress(o.Stderr, label, func() string {
		return fmt.Sprintf("%.0f MB/s", float64(got.Load())/1e6/time.Since(start).Seconds())
	})
	time.Sleep(min(o.Duration/5, 300*time.Millisecond)) // warm-up
	forwarder := markCPU(ownPID(p))
	b0, t0 := got.Load(), time.Now()
	select {
	case <-time.After(o.Duration):
	case <-ctx.Done():
	}
	b1, t1 := got.Load(), time.Now()
	cpuPerMB = -1
	if cpu, _, ok := forwarder.used(); ok && b1 > b0 {
		cpuPerMB = float64(cpu.Microseconds()) / (float64(b1-b0) / 1e6)
	}
	stop()
	quit.Store(true)
	for _, pr := range ps {
		pr[0].SetDeadline(time.Now())
		pr[1].SetDeadline(time.Now())
	}
	wg.Wait()
	return float64(b1-b0) / 1e6 / t1.Sub(t0).Seconds(), cpuPerMB, ctx.Err()
}

// ownPID is the process whose CPU a row of p counts: the forwarder's own
// process, or 0 where it has none (in the harness's process; socat forks
// per connection).
func ownPID(p *Peer) int {
	if p.PID == os.Getpid() || p.Name == "socat" {
		return 0
	}
	return p.PID
}

// ---- latency ----

func runLatency(ctx context.Context, e *Env) (*Table, error) {
	o := e.opt
	t := &Table{Scenario: "latency",
		Title:  fmt.Sprintf("latency: 64 B ping-pong RTT, up to %d samples (or %v) per row", o.LatencySamples, o.LatencyMaxTime),
		Params: []string{"background", "tunnels"},
		Columns: []Column{{"samples", "samples", "%.0f"}, {"p50", "p50 µs", "%.1f"}, {"p99", "p99 µs", "%.1f"}, {"p999", "p99.9 µs", "%.1f"},
			{"added_p99", "added p99 µs (vs direct)", "%.1f"}},
		Notes: []string{fmt.Sprintf("One tunnel measured while %d background tunnels of the same peer are idle (held open) "+
			"or busy (each running its own 64 B ping-pong loop flat out).", o.Background)},
	}
	peers := e.Peers(transportsOf(o, "tcp", "ws", "tls", "wss")...)
	for _, bg := range []string{"idle", "busy"} {
		var direct float64
		for _, p := range peers {
			h, err := measureLatency(ctx, e, p, bg)
			if err != nil {
				return nil, fmt.Errorf("%s (%s background): %w", p.Label(), bg, err)
			}
			vals := map[string]float64{"p50": us(h, 50), "p99": us(h, 99), "p999": us(h, 99.9), "mean": h.Mean() / 1e3,
				"samples": float64(h.TotalCount())}
			if p.Name == "direct" {
				direct = vals["p99"]
			}
			if direct > 0 {
				vals["added_p99"] = vals["p99"] - direct
			}
			r := t.add(p.Label(), map[string]string{"background": bg, "tunnels": strconv.Itoa(o.Background)}, vals)
			r.CDF = cdf(h)
		}
	}
	t.addRatios("p99")
	t.Columns[len(t.Columns)-2].Name = "p99 ×direct"
	t.Columns[len(t.Columns)-1].Name = "p99 ×haproxy"
	return t, nil
}

// pingPong sends 64 B on a and waits for the echo; echo runs on b.
func echo(b End) {
	buf := make([]byte, 64)
	for {
		if _, err := io.ReadFull(b, buf); err != nil {
			return
		}
		if _, err := b.Write(buf); err != nil {
			return
		}
	}
}

func measureLatency(ctx context.Context, e *Env, p *Peer, bg string) (*hdrhistogram.Histogram, error) {
	o := e.opt
	bgs, err := openPairs(ctx, p, o.Background)
	if err != nil {
		return nil, fmt.Errorf("background tunnels: %w", err)
	}
	defer closePairs(bgs)
	var wg sync.WaitGroup
	var quit atomic.Bool
	if bg == "busy" {
		for _, pr := range bgs {
			wg.Add(2)
			go func() { defer wg.Done(); echo(pr[1]) }()
			go func() {
				defer wg.Done()
				buf := make([]byte, 64)
				for !quit.Load() {
					if _, err := pr[0].Write(buf); err != nil {
						return
					}
					if _, err := io.ReadFull(pr[0], buf); err != nil {
						return
					}
				}
			}()
		}
	}
	defer func() {
		quit.Store(true)
		for _, pr := range bgs {
			pr[0].SetDeadline(time.Now())
			pr[1].SetDeadline(time.Now())
		}
		wg.Wait()
	}()
	a, b, err := p.Pair(ctx)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	defer b.Close()
	go echo(b)
	h := newHist()
	buf := make([]byte, 64)
	var n atomic.Int64
	stop := startProgress(o.Stderr, fmt.Sprintf("latency %s, %d %s background", p.Label(), o.Background, bg), func() string {
		return fmt.Sprintf("%d/%d samples", n.Load(), o.LatencySamples)
	})
	defer stop()
	var until time.Time
	warm := time.Now().Add(time.Second)
	for i := -o.LatencySamples / 10; i < o.LatencySamples; i++ {
		if i < 0 && time.Now().After(warm) {
			i = 0 // warm-up: a tenth of the samples or one second
		}
		if i == 0 && o.LatencyMaxTime > 0 {
			until = time.Now().Add(o.LatencyMaxTime)
		}
		if i > 0 && !until.IsZero() && i%16 == 0 && time.Now().After(until) {
			break
		}
		if i%16 == 0 {
			a.SetDeadline(time.Now().Add(30 * time.Second))
		}
		t0 := time.Now()
		if _, err := a.Write(buf); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(a, buf); err != nil {
			return nil, err
		}
		if i >= 0 {
			record(h, time.Since(t0))
			n.Add(1)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return h, nil
}

// ---- churn ----

// resources is a snapshot of a forwarding process.
type resources struct {
	rss        int64
	fds        int
	goroutines int // Go goroutines (in-process or spawned relay) or OS threads
}

func (e *Env) resources(p *Peer) resources {
	r := resources{rss: rssBytes(p.PID), fds: fdCount(p.PID), goroutines: -1}
	switch {
	case p.Name != "meetpoint" && p.Name != "fleet-same" && p.Name != "fleet-cross":
		r.goroutines = int(procStatus(p.PID, "Threads"))
	case e.Relay != nil || e.fleet != nil:
		r.goroutines = runtime.NumGoroutine()
	case e.child != nil:
		if g, _, err := e.child.relayStats(); err == nil {
			r.goroutines = g
		}
	default:
		r.goroutines = int(procStatus(p.PID, "Threads"))
	}
	return r
}

func runChurn(ctx context.Context, e *Env) (*Table, error) {
	o := e.opt
	t := &Table{Scenario: "churn",
		Title:  fmt.Sprintf("churn: %d workers open → 64 B each way → close, for %v", o.ChurnConc, o.ChurnDuration),
		Params: []string{},
		Columns: []Column{{"tunnels", "tunnels", "%.0f"}, {"rate", "tunnels/s", "%.0f"},
			{"rss0", "RSS start MiB", "%.1f"}, {"rss1", "RSS end MiB", "%.1f"},
			{"fd0", "fds start", "%.0f"}, {"fd1", "fds end", "%.0f"},
			{"g0", "goroutines/threads start", "%.0f"}, {"g1", "end", "%.0f"}, {"errors", "errors", "%.0f"}},
		Notes: []string{"Start is sampled after a 1 s warm-up churn, end 2 s after the last close. meetpoint counts goroutines " +
			"(whole harness process when the relay runs in process), haproxy OS threads. socat forks per connection and is left out."},
	}
	for _, p := range e.Peers(transportsOf(o, "tcp", "ws", "tls", "wss")...) {
		if p.PID == 0 || p.Name == "socat" {
			continue
		}
		churn(ctx, e, p, time.Second, nil, nil)
		time.Sleep(500 * time.Millisecond)
		r0 := e.resources(p)
		var count, errs atomic.Int64
		start := time.Now()
		churn(ctx, e, p, o.ChurnDuration, &count, &errs)
		el := time.Since(start)
		time.Sleep(2 * time.Second)
		r1 := e.resources(p)
		row := t.add(p.Label(), map[string]string{}, map[string]float64{
			"tunnels": float64(count.Load()), "rate": float64(count.Load()) / el.Seconds(),
			"rss0": float64(r0.rss) / (1 << 20), "rss1": float64(r1.rss) / (1 << 20),
			"fd0": float64(r0.fds), "fd1": float64(r1.fds),
			"g0": float64(r0.goroutines), "g1": float64(r1.goroutines), "errors": float64(errs.Load()),
		})
		for k, v := range row.Values {
			if v < 0 { // unknown (no pid, or /proc not readable)
				delete(row.Values, k)
			}
		}
	}
	return t, nil
}

func churn(ctx context.Context, e *Env, p *Peer, d time.Duration, count, errs *atomic.Int64) {
	if count == nil {
		count, errs = new(atomic.Int64), new(atomic.Int64)
	}
	start := time.Now()
	deadline := start.Add(d)
	stop := startProgress(e.opt.Stderr, "churn "+p.Label(), func() string {
		return fmt.Sprintf("%d tunnels, %.0f/s, %d errors", count.Load(), float64(count.Load())/time.Since(start).Seconds(), errs.Load())
	})
	defer stop()
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for w := 0; w < e.opt.ChurnConc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for time.Now().Before(deadline) && cctx.Err() == nil {
				a, b, err := p.Pair(cctx)
				if err != nil {
					errs.Add(1)
					continue
				}
				a.SetDeadline(time.Now().Add(10 * time.Second))
				b.SetDeadline(time.Now().Add(10 * time.Second))
				_, err1 := a.Write(buf)
				_, err2 := io.ReadFull(b, buf)
				_, err3 := b.Write(buf)
				_, err4 := io.ReadFull(a, buf)
				a.Close()
				b.Close()
				if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
					errs.Add(1)
					continue
				}
				count.Add(1)
			}
		}()
	}
	wg.Wait()
}
