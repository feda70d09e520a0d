package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// runIdle holds N tunnels per step and measures the relay's RSS: the relay
// runs as its own process(es) (a spawned child, or --relay-url/--relay-pid),
// the clients in worker processes, so that the relay's figure holds only
// the relay. One fresh relay per step; the slope over the steps is the
// per-tunnel cost.
func runIdle(ctx context.Context, e *Env) (*Table, error) {
	o := e.opt
	t := &Table{Scenario: "idle",
		Title:  fmt.Sprintf("idle: relay memory per held %s tunnel", o.IdleTransport),
		Params: []string{"tunnels"},
		Columns: []Column{{"relays", "relay procs", "%.0f"}, {"workers", "client procs", "%.0f"},
			{"rate", "setup tunnels/s", "%.0f"}, {"rss0", "RSS before MiB", "%.1f"}, {"rss1", "RSS held MiB", "%.1f"},
			{"per_tunnel", "B/tunnel", "%.0f"}, {"rss1gc", "RSS held, after GC MiB", "%.1f"},
			{"per_tunnel_gc", "B/tunnel after GC", "%.0f"}, {"goroutines", "relay goroutines", "%.0f"},
			{"verified", "verified", "%.0f"}, {"errors", "dial errors", "%.0f"}},
	}
	if o.RelayURL != "" && o.RelayPID == 0 {
		t.Notes = append(t.Notes, "skipped: an external relay needs --relay-pid for its RSS")
		return t, nil
	}
	for _, n := range o.IdleN {
		row, err := idleStep(ctx, e, n)
		if err != nil {
			return nil, fmt.Errorf("%d tunnels: %w", n, err)
		}
		t.Rows = append(t.Rows, row)
	}
	if len(t.Rows) >= 2 {
		s, sgc := idleSlope(t.Rows, "rss1"), idleSlope(t.Rows, "rss1gc")
		t.add("meetpoint "+o.IdleTransport, map[string]string{"tunnels": "slope"}, map[string]float64{
			"per_tunnel": s, "per_tunnel_gc": sgc,
		})
		kernel := 4.7e3 * 2
		t.Notes = append(t.Notes, fmt.Sprintf("Slope (least squares over %v tunnels): %.0f B/tunnel as held, %.0f B/tunnel after a GC. "+
			"Extrapolated to 1M tunnels: user %.0f B × 1e6 = %.2f GB, plus kernel ~4.7 KB × 2 sockets × 1e6 = %.1f GB, "+
			"total ≈ %.2f GB (after GC: %.2f GB).",
			o.IdleN, s, sgc, s, s*1e6/1e9, kernel*1e6/1e9, (s+kernel)*1e6/1e9, (sgc+kernel)*1e6/1e9))
	}
	t.Notes = append(t.Notes, "RSS is VmRSS of the relay process(es) from /proc; before = fresh relay after a GC, "+
		"held = 2 s after the last tunnel paired, after GC = after runtime.GC + debug.FreeOSMemory in the relay. "+
		"Clients run in separate worker processes; relays listen on 127.0.0.1–.4 so connections spread over several addresses.")
	return t, nil
}

func idleStep(ctx context.Context, e *Env, n int) (*Row, error) {
	o := e.opt
	type rel struct {
		c     *child
		pid   int
		hosts []string
	}
	var rels []rel
	if o.RelayURL != "" {
		rels = append(rels, rel{pid: o.RelayPID, hosts: e.relayURL})
	} else {
		nr := (n + o.IdlePerRelay - 1) / o.IdlePerRelay
		for i := 0; i < nr; i++ {
			c, err := spawnRelay(o, 4, "", "")
			if err != nil {
				for _, r := range rels {
					r.c.close()
				}
				return nil, err
			}
			rels = append(rels, rel{c: c, pid: c.cmd.Process.Pid, hosts: c.addrs})
		}
	}
	defer func() {
		for _, r := range rels {
			if r.c != nil {
				r.c.close()
			}
		}
	}()
	// rss sums the relays' resident sets; an unreadable one (a wrong
	// --relay-pid, a relay gone) fails the step rather than skew the sum.
	rss := func(gc bool) (int64, error) {
		var sum int64
		for _, r := range rels {
			if gc && r.c != nil {
				r.c.call("gc", "ok", 30*time.Second)
			}
			v := rssBytes(r.pid)
			if v < 0 {
				return 0, fmt.Errorf("idle %d: the resident set of relay pid %d is unreadable", n, r.pid)
			}
			sum += v
		}
		return sum, nil
	}
	rss0, err := rss(true)
	if err != nil {
		return nil, err
	}
	nw := (n + o.IdlePerWorker - 1) / o.IdlePerWorker
	var workers []*child
	defer func() {
		for _, w := range workers {
			w.close()
		}
	}()
	start := time.Now()
	for i := 0; i < nw; i++ {
		cnt := n / nw
		if i < n%nw {
			cnt++
		}
		r := rels[i%len(rels)]
		w, err := startChild(o, "idle", "--hosts", strings.Join(r.hosts, ","), "--n", strconv.Itoa(cnt),
			"--transport", o.IdleTransport, "--nonce", fmt.Sprintf("w%d-%d", i, time.Now().UnixNano()))
		if err != nil {
			return nil, err
		}
		workers = append(workers, w)
	}
	stop := startProgress(o.Stderr, fmt.Sprintf("idle %d tunnels (%d relay, %d worker processes)", n, len(rels), nw), func() string {
		var done, errs int64
		for _, w := range workers {
			done += w.progress.Load()
			errs += w.errs.Load()
		}
		return fmt.Sprintf("%d/%d paired, %.0f/s, %d errors", done, n, float64(done)/time.Since(start).Seconds(), errs)
	})
	var opened, errs float64
	for _, w := range workers {
		s, err := w.expect("ready ", 10*time.Minute)
		if err != nil {
			stop()
			return nil, err
		}
		var a, b int
		fmt.Sscan(s, &a, &b)
		opened += float64(a)
		errs += float64(b)
	}
	el := time.Since(start)
	stop()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	time.Sleep(2 * time.Second)
	rss1, err := rss(false)
	if err != nil {
		return nil, err
	}
	goroutines := -1.0
	if rels[0].c != nil {
		g := 0
		for _, r := range rels {
			x, _, _ := r.c.relayStats()
			g += x
		}
		goroutines = float64(g)
	}
	if o.CPUProfile && e.dir != "" && rels[0].c != nil {
		path, _ := filepath.Abs(filepath.Join(e.dir, fmt.Sprintf("heap-idle-%d.pprof", n)))
		if _, err := rels[0].c.call("heap "+path, "ok", time.Minute); err != nil {
			e.note("heap profile: %v", err)
		}
	}
	rss1gc, err := rss(true)
	if err != nil {
		return nil, err
	}
	verified, failed := 0, 0
	for _, w := range workers {
		s, err := w.call(fmt.Sprintf("verify %d", max(1, o.IdleVerify/nw)), "verified ", time.Minute)
		if err != nil {
			return nil, err
		}
		var a, b int
		fmt.Sscan(s, &a, &b)
		verified += a
		failed += b
	}
	if failed > 0 {
		e.note("idle %d: %d sampled tunnels failed to forward", n, failed)
	}
	const mib = 1 << 20
	row := &Row{Peer: "meetpoint " + o.IdleTransport, Params: map[string]string{"tunnels": strconv.Itoa(n)},
		Values: map[string]float64{
			"relays": float64(len(rels)), "workers": float64(nw), "rate": opened / el.Seconds(),
			"rss0": float64(rss0) / mib, "rss1": float64(rss1) / mib, "rss1gc": float64(rss1gc) / mib,
			"per_tunnel": float64(rss1-rss0) / opened, "per_tunnel_gc": float64(rss1gc-rss0) / opened,
			"goroutines": goroutines, "verified": float64(verified), "verify_failed": float64(failed),
			"opened": opened, "errors": errs,
		}}
	if goroutines < 0 {
		delete(row.Values, "goroutines")
	}
	return row, nil
}

// idleSlope is the least-squares slope, in bytes per tunnel, of the
// relays' RSS growth (the MiB figure rss, less rss0) over the tunnels
// held in the idle rows: those opened, not those asked for, as each
// row's own B/tunnel divides by (a failed dial holds no memory).
func idleSlope(rows []*Row, rss string) float64 {
	var xs, ys []float64
	for _, r := range rows {
		xs = append(xs, r.Values["opened"])
		ys = append(ys, (r.Values[rss]-r.Values["rss0"])*(1<<20))
	}
	return slope(xs, ys)
}

// slope is the least-squares slope of ys over xs.
func slope(xs, ys []float64) float64 {
	var sx, sy, sxx, sxy float64
	n := float64(len(xs))
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}
