package bench

import (
	"math"
	"strings"
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
