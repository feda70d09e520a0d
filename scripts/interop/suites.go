package main

// nymea's own QtTest suites, built by scripts/interop.sh with every URL
// pointed at an external server, run once against meetpoint and once
// against nymea's own server started the same way (the reference).

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

var suitesFlag = flag.Bool("suites", true, "also run nymea's own QtTest suites against meetpoint and nymea")

// A qtSuite is one of nymea's test programs.
type qtSuite struct {
	id     string  // e.g. "1.8.4/proxy"
	tree   *string // the built nymea tree (flag)
	bin    string  // the program, in the tree
	legacy bool    // needs the legacy API (nymea 1.8.4)
}

var qtSuites = []qtSuite{
	{"1.8.4/proxy", nymea184, "tests/test-proxy/nymea-remoteproxy-proxy-tests", true},
	{"1.8.4/tunnelproxy", nymea184, "tests/test-tunnelproxy/nymea-remoteproxy-tunnelproxy-tests", true},
	{"1.13.0/tunnelproxy", nymea113, "tests/test-tunnelproxy/tunnelproxy", false},
}

// The suites' servers are set up like the suites' own in-process engine
// (tests/resources/test-configuration.conf): its name and timeouts.
const (
	suiteServerName = "test-nymea-remoteproxy"
	suiteTimeouts   = "jsonRpcTimeout=10000\nauthenticationTimeout=10000\ninactiveTimeout=5000\naloneTimeout=10000\n"
)

// A rowReason is a row of a suite that cannot pass against an external
// server, and why.
type rowReason struct {
	row *regexp.Regexp // matches "function(tag)" or "function"
	why string
}

func rows(why string, res ...string) []rowReason {
	var out []rowReason
	for _, re := range res {
		out = append(out, rowReason{regexp.MustCompile("^" + re + "$"), why})
	}
	return out
}

// Why rows cannot pass against an external server.
const (
	whyMock = "sets what the in-process mock authenticator answers, and how late (an error, a delay past the engine's authentication or JSON-RPC timeout, which it shortens too); an external server's authenticator answers on its own"
	whyIdle = "shortens the in-process engine's inactivity timeout to 1 s and waits 5 s for the close; an external server keeps its own (5 s here, as the suite's configuration file has it), so the close comes at the edge of the wait"
	whyStop = "stops the in-process engine's TunnelProxy server and expects the library's server and client to notice; the external server goes on (everything before that step passed)"
)

// cannotPass lists, by suite, the rows that cannot pass against an
// external server, each with its reason (nymea's own server, run the same
// way, fails them too). meetpoint may fail only these.
var cannotPass = map[string][]rowReason{
	"1.8.4/proxy": append(
		rows(whyMock, `authenticate\(.*\)`, "authenticationReplyTimeout", "authenticationReplyConnection", "jsonRpcTimeout"),
		rows(whyIdle, "inactiveTimeout")...),
	"1.8.4/tunnelproxy":  rows(whyStop, "tunnelProxyEndToEndTest"),
	"1.13.0/tunnelproxy": rows(whyStop, "monitorServer", "tunnelProxyEndToEndTest"),
}

// suiteResult is one run of a suite.
type suiteResult struct {
	pass, fail map[string]bool
	identity   map[string]bool // rows whose server identity differed from nymea's
	out        []byte
	err        error
	dur        time.Duration
}

var qtLine = regexp.MustCompile(`^(PASS|FAIL!|SKIP|XFAIL|XPASS|QWARN) +: \w+::(\w+)\((.*?)\)(?: |$)`)

// parseQtTest reads a QtTest text log.
func parseQtTest(out []byte) suiteResult {
	r := suiteResult{pass: map[string]bool{}, fail: map[string]bool{}, identity: map[string]bool{}}
	for _, l := range strings.Split(string(out), "\n") {
		m := qtLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		row := m[2]
		if m[3] != "" {
			row += "(" + m[3] + ")"
		}
		switch m[1] {
		case "PASS", "XFAIL", "SKIP":
			r.pass[row] = true
		case "FAIL!", "XPASS":
			r.fail[row] = true
		case "QWARN":
			if strings.Contains(l, "MEETPOINT-IDENTITY") {
				r.identity[row] = true
			}
		}
	}
	for row := range r.fail {
		delete(r.pass, row) // a row repeated under one tag: failed once is failed
	}
	return r
}

// whyCannot is why row of suite cannot pass against an external server,
// or "".
func whyCannot(suite, row string) string {
	for _, rr := range cannotPass[suite] {
		if rr.row.MatchString(row) {
			return rr.why
		}
	}
	return ""
}

// runSuite runs s with its URLs at urls (the in-process engine's port →
// the external URL).
func runSuite(s qtSuite, urls map[int]string) suiteResult {
	dir, err := os.MkdirTemp("", "meetpoint-suite-")
	if err != nil {
		return suiteResult{err: err}
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(*s.tree, s.bin))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+libPath(*s.tree))
	for port, u := range urls {
		cmd.Env = append(cmd.Env, fmt.Sprintf("MEETPOINT_URL_%d=%s", port, u))
	}
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	r := parseQtTest(out)
	r.out, r.dur = out, time.Since(t0)
	if len(r.pass)+len(r.fail) == 0 {
		r.err = fmt.Errorf("no test rows ran (%v)", err)
	}
	return r
}

// runSuites starts the suites' servers, runs every suite against
// meetpoint and nymea, prints a verdict line per suite and adds their
// tables to md. It returns the number of verdicts against meetpoint.
func runSuites(e *environment, md *strings.Builder) int {
	ports, err := freePorts(7)
	if err != nil {
		fatalf("%v", err)
	}
	host := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	mp := startProc("meetpoint-suites", nil, nil, *meetpoint, "serve", "--listen", host(ports[0]), "--tls",
		"--tls-cert", e.cert, "--tls-key", e.key, "--name", suiteServerName, "--log-level", "warn",
		"--inactive-timeout", "5s", "--alone-timeout", "10s", "--auth-timeout", "10s", "--rpc-timeout", "10s")
	n184 := e.nymeaAs("nymea-1.8.4-suites", suiteServerName, suiteTimeouts, *nymea184, e.lib184, true,
		ports[1], ports[2], ports[3], ports[4], true)
	n113 := e.nymeaAs("nymea-1.13.0-suites", suiteServerName, suiteTimeouts, *nymea113, e.lib113, true,
		0, 0, ports[5], ports[6], false)
	defer func() {
		for _, p := range []*proc{mp, n184, n113} {
			p.stop()
		}
	}()
	for _, p := range ports {
		if err := waitListen(host(p), 20*time.Second); err != nil {
			fatalf("suite server %s: %v", host(p), err)
		}
	}
	// The in-process engine's ports: 1212/1213 legacy WebSocket/TCP,
	// 2212/2213 TunnelProxy, all over TLS.
	same := func(p int) map[int]string {
		return map[int]string{1212: "wss://" + host(p), 1213: "ssl://" + host(p), 2212: "wss://" + host(p), 2213: "ssl://" + host(p)}
	}
	nymeaURLs := map[string]map[int]string{
		"1.8.4":  {1212: "wss://" + host(ports[1]), 1213: "ssl://" + host(ports[2]), 2212: "wss://" + host(ports[3]), 2213: "ssl://" + host(ports[4])},
		"1.13.0": {2212: "wss://" + host(ports[5]), 2213: "ssl://" + host(ports[6])},
	}

	bad := 0
	md.WriteString("\n| suite | meetpoint | nymea as external server | verdict |\n|---|---|---|---|\n")
	var detail strings.Builder
	detail.WriteString("\n| suite | row | meetpoint | nymea as external server | why it cannot pass against an external server |\n|---|---|---|---|---|\n")
	for _, s := range qtSuites {
		id := "suite/" + s.id
		if *only != "" && !regexp.MustCompile(*only).MatchString(id) {
			continue
		}
		version := strings.Split(s.id, "/")[0]
		m := runSuite(s, same(ports[0]))
		n := runSuite(s, nymeaURLs[version])
		var unexplained, explained []string
		for row := range m.fail {
			if whyCannot(s.id, row) == "" {
				unexplained = append(unexplained, row)
			} else {
				explained = append(explained, row)
			}
		}
		sort.Strings(unexplained)
		verdict := "ok: meetpoint fails only rows that cannot pass against an external server"
		switch {
		case m.err != nil:
			verdict = "the suite did not run against meetpoint: " + m.err.Error()
		case len(unexplained) > 0:
			verdict = "meetpoint fails rows that can pass against an external server: " + strings.Join(unexplained, ", ")
		}
		if m.err != nil || len(unexplained) > 0 {
			bad++
			fmt.Printf("VERDICT %s: %s\n", id, verdict)
			if *verbose {
				fmt.Println(indent(string(tail(m.out, 8<<10))))
			}
		}
		summary := func(r suiteResult) string {
			if r.err != nil {
				return r.err.Error()
			}
			return fmt.Sprintf("%d passed, %d failed", len(r.pass), len(r.fail))
		}
		ms := fmt.Sprintf("%s (%d of them cannot pass against an external server; server identity differs in %d rows, deliberately)",
			summary(m), len(explained), len(m.identity))
		fmt.Printf("SUITE %-20s meetpoint: %s in %.0fs; nymea: %s in %.0fs\n", s.id, ms, m.dur.Seconds(), summary(n), n.dur.Seconds())
		fmt.Fprintf(md, "| `%s` | %s | %s | %s |\n", s.id, ms, summary(n), verdict)
		all := map[string]bool{}
		for _, r := range []suiteResult{m, n} {
			for row := range r.fail {
				all[row] = true
			}
			for row := range r.identity {
				all[row] = true
			}
		}
		var list []string
		for row := range all {
			list = append(list, row)
		}
		sort.Strings(list)
		mark := func(r suiteResult, row string) string {
			s := "pass"
			if r.fail[row] {
				s = "**fail**"
			} else if !r.pass[row] {
				s = "—"
			}
			if r.identity[row] {
				s += " (identity differs)"
			}
			return s
		}
		for _, row := range list {
			why := whyCannot(s.id, row)
			if why == "" && m.identity[row] && !m.fail[row] {
				why = "(passes; meetpoint's Hello gives its own server name, version and API version, a deliberate difference)"
			}
			fmt.Fprintf(&detail, "| `%s` | `%s` | %s | %s | %s |\n", s.id, strings.ReplaceAll(row, "|", "\\|"), mark(m, row), mark(n, row), why)
		}
	}
	md.WriteString(detail.String())
	return bad
}

// waitListen polls until addr accepts connections.
func waitListen(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tail is the last n bytes of b.
func tail(b []byte, n int) []byte {
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return b
}
