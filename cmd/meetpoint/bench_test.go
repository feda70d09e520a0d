package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meetpoint/meetpoint/bench"
)

func TestBenchUsageAndBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage: meetpoint bench"},
		{[]string{"nope"}, 2, "unknown scenario"},
		{[]string{"setup", "--sizes", "x"}, 2, "sizes"},
		{[]string{"idle", "--per-worker", "20000"}, 2, "per-worker"},
		{[]string{"setup", "--transports", "udp"}, 2, "transports"},
		{[]string{"setup", "--relay-pid", "1"}, 2, "relay-pid needs relay-url"},
		{[]string{"setup", "extra"}, 2, "unexpected argument"},
	} {
		var out, errb bytes.Buffer
		if code := runBench(c.args, &out, &errb); code != c.code || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: code %d, stderr %q", c.args, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := runBench([]string{"-h"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "-relay-url") {
		t.Errorf("-h: %d %q", code, out.String())
	}
}

func TestBenchThroughputCLI(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	code := runBench([]string{"throughput", "--peers", "direct,meetpoint", "--transports", "tcp", "--sizes", "1024",
		"--parallel", "1", "--duration", "100ms", "--out", dir, "--plot"}, &out, &errb)
	if code != 0 {
		t.Fatalf("code %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "| meetpoint tcp | 1 KiB | 1 |") {
		t.Fatalf("table:\n%s", out.String())
	}
	runs, _ := filepath.Glob(filepath.Join(dir, "*-throughput", "results.json"))
	if len(runs) != 1 {
		t.Fatalf("results.json: %v", runs)
	}
	b, err := os.ReadFile(runs[0])
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Tables []struct{ Rows []json.RawMessage }
	}
	if err := json.Unmarshal(b, &rep); err != nil || len(rep.Tables) != 1 || len(rep.Tables[0].Rows) != 2 {
		t.Fatalf("results.json: %v %s", err, b)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(runs[0]), "throughput-k1.svg")); err != nil {
		t.Fatal(err)
	}
}

// TestBenchPeersChecked: --peers names the rows to measure. A name that
// is not a peer (a typo, a space after a comma) matched nothing and was
// dropped without a word: "--peers haproxy, meetpoint" measured HAProxy
// alone and wrote a report without the relay's rows, exit 0. The flags
// are only parsed here; no benchmark runs.
func TestBenchPeersChecked(t *testing.T) {
	for _, peers := range []string{"meetpiont", "haproxy, meetpoint", "direct,,meetpoint"} {
		fs, apply := benchFlags(bench.Quick())
		if err := fs.Parse([]string{"--peers", peers}); err != nil {
			t.Fatal(err)
		}
		opt := bench.Quick()
		if err := apply(&opt); err == nil || !strings.Contains(err.Error(), "peers") {
			t.Errorf("--peers %q: %v (peers %q), want an error", peers, err, opt.Peers)
		}
	}
	fs, apply := benchFlags(bench.Quick())
	if err := fs.Parse([]string{"--peers", "direct,haproxy,socat,meetpoint,fleet"}); err != nil {
		t.Fatal(err)
	}
	opt := bench.Quick()
	if err := apply(&opt); err != nil {
		t.Errorf("every peer: %v", err)
	}
}

// TestBenchFullSpellings: --full=true picks the full suite's sizes as
// --full does (it was parsed and ignored), and --full=false the quick
// ones; the sizes show in the defaults -h prints.
func TestBenchFullSpellings(t *testing.T) {
	defaults := func(args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := runBench(append(args, "-h"), &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errb.String())
		}
		return out.String()
	}
	quick, full := defaults("idle"), defaults("idle", "--full")
	if quick == full {
		t.Fatal("--full shows the same defaults as the quick sizes: the test cannot tell them apart")
	}
	for _, spelling := range []string{"--full=true", "-full=1", "-full"} {
		if got := defaults("idle", spelling); got != full {
			t.Errorf("%s: not the full sizes", spelling)
		}
	}
	if got := defaults("idle", "--full=false"); got != quick {
		t.Error("--full=false: not the quick sizes")
	}
}
