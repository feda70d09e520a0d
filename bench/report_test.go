package bench

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// TestReportWriteNotFinite: a figure can be NaN or infinite (the idle
// scenario's bytes per tunnel when no tunnel opened: a division by zero),
// and Markdown shows NaN as "–". JSON has neither: results.json failed
// to marshal ("json: unsupported value: NaN"), and Write returned before
// it wrote results.json or report.md, losing every table of the run. The
// figures that are not finite are left out of results.json; the rest is
// written.
func TestReportWriteNotFinite(t *testing.T) {
	dir := t.TempDir()
	r := &Report{Preset: "idle", Tables: []*Table{{Scenario: "idle", Title: "idle", Params: []string{"tunnels"},
		Columns: []Column{{"rss1", "RSS", "%.1f"}, {"per_tunnel", "B/tunnel", "%.0f"}, {"rate", "rate", "%.0f"}},
		Rows: []*Row{{Peer: "meetpoint tcp", Params: map[string]string{"tunnels": "100"},
			Values: map[string]float64{"rss1": 12.5, "per_tunnel": math.NaN(), "rate": math.Inf(1)}}}}},
		Targets: []Target{{Name: "relay RSS per idle tunnel", Value: math.NaN()}}}
	if err := r.Write(dir, false); err != nil {
		t.Fatalf("Write: %v", err)
	}
	js, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	vals := back.Tables[0].Rows[0].Values
	if _, ok := vals["per_tunnel"]; ok || vals["rss1"] != 12.5 || len(vals) != 1 {
		t.Errorf("values read back %v, want rss1 only", vals)
	}
	var raw struct {
		Targets []map[string]any `json:"targets"`
	}
	if err := json.Unmarshal(js, &raw); err != nil || len(raw.Targets) != 1 || raw.Targets[0]["value"] != nil ||
		raw.Targets[0]["name"] != "relay RSS per idle tunnel" {
		t.Errorf("targets read back %v %v, want the target with a null value", raw.Targets, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "report.md")); err != nil {
		t.Errorf("report.md: %v", err)
	}
}
