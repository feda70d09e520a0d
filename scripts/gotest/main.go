// Command gotest runs go test with the arguments it is given and prints
// what go test prints without -v — a line per package, and the output of
// every test that failed — then one line per group of skipped tests
// saying why they were skipped (make test):
//
//	skipped 21 tests (relay/auth, relay/events, …): no redis-server: apt-get install redis-server to run the Redis tests
//
// Tests skipped for the same reason form a group: the reason is the skip
// message without its file:line prefix. The exit status is go test's.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
)

func main() {
	cmd := exec.Command("go", append([]string{"test", "-json"}, os.Args[1:]...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gotest:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "gotest:", err)
		os.Exit(2)
	}
	skips := report(out, os.Stdout)
	err = cmd.Wait()
	for _, l := range summary(skips) {
		fmt.Println(l)
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "gotest:", err)
		os.Exit(2)
	}
}

// event is one line of go test -json (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output
}

// skip is one skipped test and its message.
type skip struct {
	pkg, test, why string
}

// report copies go test -json's stream from r to w as plain go test
// output (package lines, failed tests' output, build errors) and returns
// the skipped tests. Lines that are not JSON are copied as they are.
func report(r io.Reader, w io.Writer) []skip {
	type key struct{ pkg, test string }
	held := map[key][]string{} // a running test's output, printed if it fails
	var skips []skip
	// flush prints what pkg's unfinished tests printed: a package that
	// failed with tests still running (a panic, the -timeout) says why there.
	flush := func(pkg string) {
		var open []key
		for h := range held {
			if h.pkg == pkg {
				open = append(open, h)
			}
		}
		slices.SortFunc(open, func(a, b key) int { return strings.Compare(a.test, b.test) })
		for _, h := range open {
			printHeld(w, held[h])
			delete(held, h)
		}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintf(w, "%s\n", line)
			continue
		}
		k := key{e.Package, e.Test}
		switch {
		case e.Action == "build-output":
			fmt.Fprint(w, e.Output)
		case e.Test == "" && e.Action == "output":
			// "ok  pkg 1.2s", "FAIL pkg", panics and races outside tests; not
			// -v's bare PASS or its === lines.
			o := strings.TrimSpace(e.Output)
			if strings.HasPrefix(o, "FAIL") {
				flush(e.Package)
			}
			if o != "PASS" && !strings.HasPrefix(o, "=== ") {
				fmt.Fprint(w, e.Output)
			}
		case e.Action == "output":
			held[k] = append(held[k], e.Output)
		case e.Action == "fail" && e.Test == "":
			flush(e.Package)
		case e.Action == "fail":
			printHeld(w, held[k])
			delete(held, k)
		case e.Action == "skip" && e.Test != "":
			skips = append(skips, skip{pkg: e.Package, test: e.Test, why: skipReason(held[k])})
			delete(held, k)
		case e.Action == "pass":
			delete(held, k)
		}
	}
	return skips
}

// printHeld prints a test's output without -v's === lines.
func printHeld(w io.Writer, out []string) {
	for _, o := range out {
		if !strings.HasPrefix(o, "=== ") {
			fmt.Fprint(w, o)
		}
	}
}

// fileLine is the "name_test.go:123: " that t.Skip's message starts with.
var fileLine = regexp.MustCompile(`^\s*[\w.-]+\.go:\d+: `)

// skipReason finds the skip message in a skipped test's output: the
// indented line (and its continuation lines) before "--- SKIP".
func skipReason(out []string) string {
	var msg []string
	for _, o := range out {
		switch t := strings.TrimSpace(o); {
		case strings.HasPrefix(t, "--- SKIP"), strings.HasPrefix(t, "=== "):
		case fileLine.MatchString(o):
			msg = []string{fileLine.ReplaceAllString(strings.TrimRight(o, "\n"), "")}
		case len(msg) > 0:
			msg = append(msg, t)
		}
	}
	if len(msg) == 0 {
		return "no reason given"
	}
	return strings.Join(msg, " ")
}

// summary is one line per reason: how many tests, in which packages (the
// module's path cut), and why; most skipped first.
func summary(skips []skip) []string {
	type group struct {
		why   string
		n     int
		pkgs  []string
		tests []string
	}
	var gs []*group
	by := map[string]*group{}
	for _, s := range skips {
		g := by[s.why]
		if g == nil {
			g = &group{why: s.why}
			by[s.why] = g
			gs = append(gs, g)
		}
		g.n++
		g.tests = append(g.tests, s.test)
		if p := shortPkg(s.pkg); !slices.Contains(g.pkgs, p) {
			g.pkgs = append(g.pkgs, p)
		}
	}
	slices.SortStableFunc(gs, func(a, b *group) int { return b.n - a.n })
	var lines []string
	for _, g := range gs {
		where := g.pkgs
		if len(where) > 3 {
			where = append(slices.Clone(where[:3]), "…")
		}
		what := "tests"
		if g.n == 1 {
			what, where = "test", []string{where[0] + "." + g.tests[0]}
		}
		lines = append(lines, fmt.Sprintf("skipped %d %s (%s): %s", g.n, what, strings.Join(where, ", "), g.why))
	}
	return lines
}

// shortPkg cuts the module path from a package path.
func shortPkg(p string) string {
	const mod = "github.com/meetpoint/meetpoint/"
	if s, ok := strings.CutPrefix(p, mod); ok {
		return s
	}
	if p == strings.TrimSuffix(mod, "/") {
		return "."
	}
	return p
}
