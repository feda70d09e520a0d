package relay

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// TestDependencyOutage: a dependency's outage is logged once when it
// begins and once when it ends, however many requests fail in between;
// /readyz's part and the metrics follow it, and while it is down it is
// probed until it answers, without any traffic.
func TestDependencyOutage(t *testing.T) {
	defer func(d time.Duration) { ProbeEvery = d }(ProbeEvery)
	ProbeEvery = 20 * time.Millisecond
	log := &testutil.Tail{}
	var down atomic.Bool
	s := startServer(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	probe := func(context.Context) error {
		if down.Load() {
			return errors.New("connection refused")
		}
		return nil
	}
	d := s.AddDependency("test_store", "the test store", probe)
	part := func() string {
		names, _, details := s.ReadinessParts()
		for i, n := range names {
			if n == "test_store" {
				return details[i]
			}
		}
		return "missing"
	}
	metric := func(name string) string {
		var b strings.Builder
		s.WritePrometheus(&b)
		for l := range strings.Lines(b.String()) {
			if v, ok := strings.CutPrefix(l, name+`{name="test_store"} `); ok {
				return strings.TrimSpace(v)
			}
		}
		return "missing"
	}
	if err := s.CheckDependencies(context.Background()); err != nil || part() != "ok" || metric("meetpoint_dependency_up") != "1" {
		t.Fatalf("up: %v, /readyz %q, up %s", err, part(), metric("meetpoint_dependency_up"))
	}
	down.Store(true)
	for range 50 { // an outage seen by many requests
		d.Report(errors.New("connection refused"))
	}
	if err := s.CheckDependencies(context.Background()); err == nil || !strings.Contains(err.Error(), "the test store unreachable: connection refused") {
		t.Fatalf("CheckDependencies while down: %v", err)
	}
	if !strings.HasPrefix(part(), "unreachable since ") || metric("meetpoint_dependency_up") != "0" ||
		metric("meetpoint_dependency_outages_total") != "1" {
		t.Fatalf("down: /readyz %q, up %s, outages %s", part(), metric("meetpoint_dependency_up"), metric("meetpoint_dependency_outages_total"))
	}
	down.Store(false) // back: the probe finds it with no request made
	waitFor(t, func() error {
		if p := part(); p != "ok" {
			return errors.New("/readyz says " + p)
		}
		return nil
	}, "the probe to find the store back")
	logged := log.String()
	if n := strings.Count(logged, "the test store unreachable"); n != 1 {
		t.Errorf("%d outage lines, want 1:\n%s", n, logged)
	}
	if n := strings.Count(logged, "the test store reachable again"); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, logged)
	}
	down.Store(true)
	d.Report(errors.New("again"))
	if metric("meetpoint_dependency_outages_total") != "2" || d.Up() {
		t.Errorf("a second outage: outages %s, up %v", metric("meetpoint_dependency_outages_total"), d.Up())
	}
}
