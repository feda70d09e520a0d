package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// A Dependency is a service outside the process that part of the relay
// relies on: an authenticator's Redis or webhook, the events' Redis. The
// part reports every answer and every failure to reach it (Report); the
// server keeps its state on /readyz (a part named after it, see
// AddReadiness), in meetpoint_dependency_up{name} and
// meetpoint_dependency_outages_total{name}, and logs each outage twice,
// however many requests fail in between: one warning when it begins, one
// line when the service answers again. While it is down it is probed
// every ProbeEvery, so its state recovers without traffic.
type Dependency struct {
	name  string
	what  string // for people: "the one-time token store (Redis)"
	probe func(context.Context) error
	every time.Duration // ProbeEvery when added
	s     *Server
	// outages counts the outages (meetpoint_dependency_outages_total).
	outages *metrics.Counter

	mu      sync.Mutex
	down    bool
	since   time.Time // when the outage began
	probing bool      // the probe loop runs
}

// ProbeEvery is how often a Dependency that is down is probed (read by
// AddDependency).
var ProbeEvery = 5 * time.Second

// probeTimeout bounds one probe.
const probeTimeout = 3 * time.Second

// AddDependency registers a dependency named name (a metric label such as
// "auth_redis"), described to people as what, which probe checks (it
// returns nil once the service answers). Call it before Start; Start does
// not wait for it (see CheckDependencies).
func (s *Server) AddDependency(name, what string, probe func(context.Context) error) *Dependency {
	d := &Dependency{name: name, what: what, probe: probe, every: ProbeEvery, s: s}
	s.deps = append(s.deps, d)
	s.stats.set.NewGauge(fmt.Sprintf(`meetpoint_dependency_up{name=%q}`, name), func() float64 {
		if d.Up() {
			return 1
		}
		return 0
	})
	d.outages = s.stats.set.NewCounter(fmt.Sprintf(`meetpoint_dependency_outages_total{name=%q}`, name))
	s.AddReadiness(name, d.readiness)
	return d
}

// CheckDependencies probes every registered dependency once (at start,
// before clients come) and returns an error naming those that did not
// answer. Each one down is also reported (a warning in the log, /readyz,
// the metrics) and probed until it answers.
func (s *Server) CheckDependencies(ctx context.Context) error {
	var errs []error
	for _, d := range s.deps {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := d.probe(pctx)
		cancel()
		d.Report(err)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s unreachable: %v", d.what, err))
		}
	}
	return errors.Join(errs...)
}

// Up reports whether the dependency answered last.
func (d *Dependency) Up() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.down
}

// Report records the outcome of one use of the dependency: nil when it
// answered (whatever it answered), else the error reaching it. Cheap when
// nothing changes; safe from any goroutine.
func (d *Dependency) Report(err error) {
	d.mu.Lock()
	switch {
	case err == nil && !d.down, err != nil && d.down:
		d.mu.Unlock()
		return
	case err != nil:
		d.down, d.since = true, time.Now()
		start := !d.probing
		d.probing = true
		d.outages.Inc()
		d.s.log.Warn(d.what+" unreachable: requests that need it fail until it answers", "dependency", d.name, "err", err.Error())
		d.mu.Unlock()
		if start {
			go d.probeLoop()
		}
		return
	}
	d.down = false
	// Logged before anyone can see it up: one line per outage, in order.
	d.s.log.Info(d.what+" reachable again", "dependency", d.name, "down_for", time.Since(d.since).Round(time.Millisecond).String())
	d.mu.Unlock()
}

// probeLoop probes while the dependency is down and the server runs.
func (d *Dependency) probeLoop() {
	t := time.NewTicker(d.every)
	defer t.Stop()
	for {
		select {
		case <-d.s.quit:
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
			err := d.probe(ctx)
			cancel()
			d.Report(err)
			if err != nil {
				continue
			}
		}
		closed := false
		select {
		case <-d.s.quit:
			closed = true
		default:
		}
		d.mu.Lock()
		d.probing = d.down && !closed // down again meanwhile: go on
		again := d.probing
		d.mu.Unlock()
		if !again {
			return
		}
	}
}

// readiness is the dependency's line on /readyz.
func (d *Dependency) readiness() (bool, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.down {
		return true, "ok"
	}
	// Why is in the log: /readyz answers anyone, so it names no address.
	return false, fmt.Sprintf("unreachable since %s", d.since.UTC().Format(time.RFC3339))
}
