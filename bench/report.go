package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Report is the outcome of one run; it is what results.json holds.
type Report struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Preset   string    `json:"preset"`
	Command  string    `json:"command,omitempty"`
	Machine  Machine   `json:"machine"`
	Notes    []string  `json:"notes,omitempty"`
	Tables   []*Table  `json:"tables"`
	Targets  []Target  `json:"targets"`
	Dir      string    `json:"-"`
}

// Table is one scenario's result.
type Table struct {
	Scenario string   `json:"scenario"`
	Title    string   `json:"title"`
	Params   []string `json:"params"`  // row parameter names, in column order
	Columns  []Column `json:"columns"` // value columns
	Rows     []*Row   `json:"rows"`
	Notes    []string `json:"notes,omitempty"`
	Seconds  float64  `json:"seconds"` // how long the scenario took
}

// Column is a value column: Key into Row.Values, header Name, printf Fmt.
type Column struct {
	Key  string `json:"key"`
	Name string `json:"name"`
	Fmt  string `json:"fmt"`
}

// Row is one measurement: a peer with parameters and values.
type Row struct {
	Peer   string             `json:"peer"`
	Params map[string]string  `json:"params,omitempty"`
	Values map[string]float64 `json:"values"`
	// CDF holds (µs, percentile) points of the latency distribution.
	CDF [][2]float64 `json:"cdf,omitempty"`
}

// MarshalJSON leaves out the values that are not finite (a figure
// divided by a count of zero): JSON has neither NaN nor infinity, and one
// would fail the whole of results.json.
func (r *Row) MarshalJSON() ([]byte, error) {
	type plain Row
	p := plain(*r)
	p.Values = make(map[string]float64, len(r.Values))
	for k, v := range r.Values {
		if finite(v) {
			p.Values[k] = v
		}
	}
	return json.Marshal(p)
}

// finite reports whether v is neither NaN nor infinite.
func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// Target is one of the figures the relay is held against.
type Target struct {
	Name     string  `json:"name"`
	Goal     string  `json:"goal"`
	Measured string  `json:"measured"`
	Value    float64 `json:"value"`
	Meets    bool    `json:"meets"`
	// Unreachable, when set, says why this run could not reach the goal
	// whatever the relay does (the baseline without a relay misses it on
	// this machine): "meets" then reads "n/a", not "no".
	Unreachable string `json:"unreachable,omitempty"`
}

func (t *Table) add(peer string, params map[string]string, vals map[string]float64) *Row {
	r := &Row{Peer: peer, Params: params, Values: vals}
	t.Rows = append(t.Rows, r)
	return r
}

// key identifies a row's parameters (not its peer).
func (t *Table) key(r *Row) string {
	var b strings.Builder
	for _, p := range t.Params {
		b.WriteString(r.Params[p])
		b.WriteByte('|')
	}
	return b.String()
}

// find returns the row of peer with the same parameters as r.
func (t *Table) find(peer string, r *Row) *Row {
	k := t.key(r)
	for _, o := range t.Rows {
		if o.Peer == peer && t.key(o) == k {
			return o
		}
	}
	return nil
}

// addRatios sets "x_direct" and "x_haproxy": the row's metric over the
// reference peer's with the same parameters. A TLS row's (meetpoint tls,
// wss, fleet … tls) HAProxy is haproxy tls, HAProxy terminating TLS on
// both sides, where the run has it (docs/BENCHMARKS.md).
func (t *Table) addRatios(metric string) {
	for _, r := range t.Rows {
		for _, ref := range []string{"direct", "haproxy"} {
			o := t.find(ref, r)
			if ref == "haproxy" && (strings.HasSuffix(r.Peer, " tls") || strings.HasSuffix(r.Peer, " wss")) {
				if h := t.find("haproxy tls", r); h != nil {
					o = h
				}
			}
			if o == nil || o.Values[metric] == 0 {
				continue
			}
			r.Values["x_"+ref] = r.Values[metric] / o.Values[metric]
		}
	}
	t.Columns = append(t.Columns,
		Column{"x_direct", "×direct", "%.2f"},
		Column{"x_haproxy", "×haproxy", "%.2f"})
}

// Markdown renders the table.
func (t *Table) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n", t.Title)
	head := append([]string{"peer"}, t.Params...)
	for _, c := range t.Columns {
		head = append(head, c.Name)
	}
	b.WriteString("| " + strings.Join(head, " | ") + " |\n|")
	for i := range head {
		if i == 0 || i <= len(t.Params) {
			b.WriteString("---|")
		} else {
			b.WriteString("---:|")
		}
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		cells := []string{r.Peer}
		for _, p := range t.Params {
			cells = append(cells, r.Params[p])
		}
		for _, c := range t.Columns {
			v, ok := r.Values[c.Key]
			if !ok || !finite(v) { // unknown, or divided by a count of 0
				cells = append(cells, "–")
				continue
			}
			cells = append(cells, fmt.Sprintf(c.Fmt, v))
		}
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	for _, n := range t.Notes {
		b.WriteString("\n" + n + "\n")
	}
	return b.String()
}

// TargetsMarkdown renders the targets table.
func (r *Report) TargetsMarkdown() string {
	if len(r.Targets) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("### Targets (reported, not enforced)\n\n| figure | target | measured | meets |\n|---|---|---|---|\n")
	for _, t := range r.Targets {
		m := "no"
		switch {
		case t.Meets:
			m = "yes"
		case t.Unreachable != "":
			m = "n/a: " + t.Unreachable
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, t.Goal, t.Measured, m)
	}
	return b.String()
}

// Markdown renders the whole report.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# meetpoint bench: %s\n\n", r.Preset)
	fmt.Fprintf(&b, "- started %s, took %s\n", r.Started.Format(time.RFC3339), r.Finished.Sub(r.Started).Round(time.Second))
	if r.Command != "" {
		fmt.Fprintf(&b, "- command: `%s`\n", r.Command)
	}
	m := r.Machine
	fmt.Fprintf(&b, "- machine: %d CPUs (%s), %s memory, Linux %s, %s\n", m.CPUs, m.CPUModel, m.MemTotal, m.Kernel, m.GoVersion)
	fmt.Fprintf(&b, "- load average (1/5/15 min) at start and end: %s\n", strings.Join(m.LoadAvg, " → "))
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	b.WriteString("\n")
	for _, t := range r.Tables {
		b.WriteString(t.Markdown() + "\n")
	}
	b.WriteString(r.TargetsMarkdown())
	return b.String()
}

// Write stores report.md, results.json and, with plot, the SVG charts in dir.
func (r *Report) Write(dir string, plot bool) error {
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), js, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(r.Markdown()), 0o644); err != nil {
		return err
	}
	if plot {
		return r.plots(dir)
	}
	return nil
}

// Table returns the table of a scenario, or nil.
func (r *Report) Table(scenario string) *Table {
	for _, t := range r.Tables {
		if t.Scenario == scenario {
			return t
		}
	}
	return nil
}

// MarshalJSON writes a Value that is not finite as null (see Row's).
func (t Target) MarshalJSON() ([]byte, error) {
	type plain Target
	var v any = t.Value
	if !finite(t.Value) {
		v = nil
	}
	return json.Marshal(struct {
		plain
		Value any `json:"value"`
	}{plain(t), v})
}

// targets evaluates the figures of the issue against the tables present.
func targets(r *Report) []Target {
	var out []Target
	if t := r.Table("idle"); t != nil {
		for _, row := range t.Rows {
			if row.Params["tunnels"] == "slope" {
				v := row.Values["per_tunnel_gc"]
				out = append(out, Target{Name: "relay RSS per idle tunnel (slope, after GC)", Goal: "≤ 2048 B",
					Measured: fmt.Sprintf("%.0f B", v), Value: v, Meets: v <= 2048})
			}
		}
	}
	if t := r.Table("setup"); t != nil {
		unreachable := ""
		for _, row := range t.Rows {
			if v := row.Values["rate"]; row.Peer == "direct" && v < 30000 {
				unreachable = fmt.Sprintf("direct TCP, with no relay, makes %.0f/s on this machine", v)
			}
		}
		for _, row := range t.Rows {
			if row.Peer == "meetpoint tcp" || row.Peer == "meetpoint ws" {
				v := row.Values["rate"]
				tg := Target{Name: "setup rate, " + row.Peer, Goal: "≥ 30000 tunnels/s",
					Measured: fmt.Sprintf("%.0f tunnels/s", v), Value: v, Meets: v >= 30000}
				if !tg.Meets {
					tg.Unreachable = unreachable
				}
				out = append(out, tg)
			}
		}
	}
	if t := r.Table("throughput"); t != nil {
		var best *Row
		for _, row := range t.Rows {
			if row.Peer == "meetpoint tcp" && row.Params["tunnels"] == "1" {
				if best == nil || row.Values["size_bytes"] > best.Values["size_bytes"] {
					best = row
				}
			}
		}
		if best != nil {
			if v, ok := best.Values["x_direct"]; ok {
				out = append(out, Target{Name: "one TCP tunnel vs direct (" + best.Params["size"] + " writes)", Goal: "≥ 0.6×",
					Measured: fmt.Sprintf("%.2f× (%.0f MB/s)", v, best.Values["mbps"]), Value: v, Meets: v >= 0.6})
			}
			if v, ok := best.Values["x_haproxy"]; ok {
				out = append(out, Target{Name: "one TCP tunnel vs HAProxy (" + best.Params["size"] + " writes)", Goal: "≥ 0.9×",
					Measured: fmt.Sprintf("%.2f×", v), Value: v, Meets: v >= 0.9})
			}
		}
	}
	if t := r.Table("latency"); t != nil {
		for _, row := range t.Rows {
			if row.Peer == "meetpoint tcp" && row.Params["background"] == "idle" {
				if v, ok := row.Values["added_p99"]; ok {
					out = append(out, Target{Name: fmt.Sprintf("relay-added p99 RTT (64 B, %s idle background)", row.Params["tunnels"]), Goal: "≤ 50 µs",
						Measured: fmt.Sprintf("%.1f µs", v), Value: v, Meets: v <= 50})
				}
			}
		}
	}
	return out
}
