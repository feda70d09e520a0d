// Command interop runs nymea-remoteproxy's real clients against meetpoint
// and, as the reference column, against nymea's own servers, and prints one
// pass/fail line per cell. scripts/interop.sh builds the peers and runs it
// (make interop); docs/interop.md explains the matrix.
//
// It exits 1 when a cell fails on meetpoint but passes on nymea (or has no
// nymea counterpart), when it fails on both for a reason not listed in
// known, or when a cell that runs meetpoint's own client through nymea's
// server fails for a reason not listed in known.
package main

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

var (
	nymea184  = flag.String("nymea184", "", "built nymea-remoteproxy 1.8.4 tree")
	nymea113  = flag.String("nymea113", "", "built nymea-remoteproxy 1.13.0 tree")
	probe184  = flag.String("probe184", "", "meetpoint-nymea-probe built against 1.8.4")
	probe113  = flag.String("probe113", "", "meetpoint-nymea-probe built against 1.13.0")
	meetpoint = flag.String("meetpoint", "", "meetpoint binary")
	mdOut     = flag.String("md", "", "also write the matrix as a Markdown table to this file")
	only      = flag.String("only", "", "run only cells whose id matches this regexp")
	parallel  = flag.Int("parallel", 4, "cells run at once")
	runs      = flag.Int("stall-runs", 20, "pairings per TunnelEstablished stall measurement")
	verbose   = flag.Bool("v", false, "print the output of failed cells")
)

// A target is a relay under test: its base URLs per API and transport.
type target struct {
	name   string
	legacy map[string]string // ws, wss, tcp, ssl → scheme://host:port
	tp     map[string]string
}

// A cell is one line of the matrix.
type cell struct {
	id   string
	desc string
	// mpClient: the cell runs meetpoint's own client, so it must also
	// work through nymea's server.
	mpClient bool
	// info: reported, never fails the run (a measurement).
	info bool
	// alone: the cell runs by itself, after the others (megabytes keep a
	// relay's event loop, nymea's only one, busy for seconds).
	alone bool
	// only restricts the cell to these targets (nil: meetpoint and nymea).
	only []string
	run  func(c *cctx) error
}

// known explains failures that nymea's own server has too (keyed by cell
// id): they are the peer's limits, not meetpoint's.
var known = map[string]string{
	"legacy/binary/meetpoint-meetpoint/ws":  "nymea's server closes every binary WebSocket message (1011 \"Binary message not expected\"); nymea's clients send text only",
	"legacy/binary/meetpoint-meetpoint/wss": "as ws",
	"tp/lib-server/ws":                      "nymea's client library reads only text WebSocket messages and writes with QString::fromUtf8, so SLIP frames (END byte 0xC0 is never UTF-8) cannot pass; nymea's server sends a WebSocket server empty text frames",
	"tp/lib-server/wss":                     "as ws",
	"tp/binary/nymea-server/tcp":            "nymea's server never un-escapes SLIP from the server: C0 and DB reach the client as DB DC and DB DD",
	"tp/binary/nymea-server/ssl":            "as tcp",
	"tp/binary/lib-client/tcp":              "nymea's server does not un-escape the server's SLIP (as tp/binary/nymea-server/tcp)",
	"tp/binary/lib-client/ssl":              "as tcp",
	"tp/binary/lib-client/tcp/lib-1.8.4":    "as tcp",
	"tp/lib-server/ws/lib-1.8.4":            "as tp/lib-server/ws",
	"tp/meetpoint-meetpoint/ws":             "nymea's server sends a server registered over WebSocket empty text frames instead of its SLIP data",
	"tp/meetpoint-meetpoint/wss":            "as ws",
	"legacy/nymea-nymea/tcp":                "nymea's client library parses a read only if it ends in \"}\\n\": TunnelEstablished and the partner's first ping in one read stall the pairing; nymea's server triggers it too (see legacy/stall/tcp)",
	"legacy/nymea-nymea/tcp-ws":             "as tcp",
	"legacy/stall/tcp":                      "the same client bug; meetpoint holds the partner's first bytes for --tcp-settle after TunnelEstablished",
}

// stallNote explains the nymea cells that fail now and then: nymea's
// server sends TunnelEstablished (or a RegisterClient reply) and the
// partner's first bytes back to back.
const stallNote = "intermittent on nymea: its server sends TunnelEstablished (or the RegisterClient reply) and the partner's first bytes back to back, and nymea's client stalls when both arrive in one read (legacy/stall/tcp measures it)"

func init() {
	for _, id := range []string{
		"legacy/nymea-nymea/ssl",
		"legacy/nymea-meetpoint/tcp/nymea-first", "legacy/nymea-meetpoint/tcp/meetpoint-first",
		"legacy/nymea-meetpoint/ssl/nymea-first", "legacy/nymea-meetpoint/ssl/meetpoint-first",
		"legacy/nymea-meetpoint/tcp-ws",
		"tp/meetpoint-server/tcp", "tp/meetpoint-server/ssl",
		"tp/lib-client/tcp", "tp/lib-client/ssl", "tp/lib-client/tcp/lib-1.8.4",
	} {
		if known[id] == "" {
			known[id] = stallNote
		}
	}
}

// knownPatterns explain failures of whole families of cells (the size
// cells) that nymea's own server has too.
var knownPatterns = []struct {
	re  *regexp.Regexp
	why string
	// nymeaOnly: the limit is nymea's server's alone; meetpoint must
	// pass all the same.
	nymeaOnly bool
}{
	{regexp.MustCompile(`^size/tp/(lib-lib|lib-server-meetpoint|meetpoint-server-lib|tunnelclient-echo)/.*/binary$`),
		"nymea's server does not un-escape the server's SLIP (as tp/binary/nymea-server/tcp): C0 and DB reach the client as DB DC and DB DD", true},
	{regexp.MustCompile(`^size/(legacy/(lib-lib|lib-meetpoint|cli)|tp/(lib-lib|meetpoint-server-lib|tunnelclient-client))/(tcp|ssl)/`),
		stallNote, false},
	{regexp.MustCompile(`^size/legacy/[a-z-]+/wss?/`),
		"intermittent on nymea: its server is one event loop; busy with the cells beside this one, it takes more than 5 s to send all of a WebSocket frame, and Qt's QWebSocket in nymea's library then drops the connection (\"Timeout when reading data from socket\")", false},
}

// nymeaOnly reports whether cell id fails on nymea for a limit of
// nymea's server alone, which meetpoint does not share.
func nymeaOnly(id string) bool {
	for _, k := range knownPatterns {
		if k.re.MatchString(id) {
			return k.nymeaOnly
		}
	}
	return false
}

// knownReason is why nymea fails cell id too, or "".
func knownReason(id string) string {
	if why := known[id]; why != "" {
		return why
	}
	for _, k := range knownPatterns {
		if k.re.MatchString(id) {
			return k.why
		}
	}
	return ""
}

type result struct {
	target string
	err    error
	skip   bool
	note   string // a measurement the cell reports
	out    string
	dur    time.Duration
}

func main() {
	flag.Parse()
	for name, v := range map[string]string{"nymea184": *nymea184, "nymea113": *nymea113, "probe184": *probe184, "probe113": *probe113, "meetpoint": *meetpoint} {
		if v == "" {
			fatalf("-%s is required", name)
		}
	}
	dir, err := os.MkdirTemp("", "meetpoint-interop-")
	if err != nil {
		fatalf("%v", err)
	}
	defer os.RemoveAll(dir)
	env := &environment{dir: dir}
	// The servers run in process groups of their own: stop them however
	// this run ends (^C, a closed output pipe, a CI timeout).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	go func() {
		sig := <-sigs
		stopAll()
		os.RemoveAll(dir)
		fmt.Fprintf(os.Stderr, "interop: %v: stopped\n", sig)
		os.Exit(2)
	}()
	if err := env.start(); err != nil {
		env.stop()
		fatalf("%v", err)
	}
	defer env.stop()

	cells := matrix()
	var sel []cell
	for _, c := range cells {
		if *only == "" || regexp.MustCompile(*only).MatchString(c.id) {
			sel = append(sel, c)
		}
	}
	type job struct {
		c cell
		t *target
	}
	var jobs []job
	for _, c := range sel {
		for _, t := range env.targets {
			if c.only == nil && t.name == "meetpoint-settle0" || c.only != nil && !contains(c.only, t.name) {
				continue
			}
			jobs = append(jobs, job{c, t})
		}
	}
	results := make(map[string]map[string]result)
	var mu sync.Mutex
	sem := make(chan struct{}, *parallel)
	var wg sync.WaitGroup
	start := time.Now()
	runJob := func(j job) {
		cc := &cctx{env: env, t: j.t}
		t0 := time.Now()
		err := j.c.run(cc)
		cc.cleanup()
		r := result{target: j.t.name, err: err, note: cc.note, out: cc.transcript(), dur: time.Since(t0)}
		if err == errSkip {
			r.skip, r.err = true, nil
		}
		mu.Lock()
		if results[j.c.id] == nil {
			results[j.c.id] = make(map[string]result)
		}
		results[j.c.id][j.t.name] = r
		status := "PASS"
		if r.skip {
			status = "SKIP"
		} else if r.err != nil {
			status = "FAIL"
		}
		line := fmt.Sprintf("%-4s %-18s %-48s %5.1fs", status, j.t.name, j.c.id, r.dur.Seconds())
		if r.err != nil {
			line += "  " + r.err.Error()
		} else if r.note != "" {
			line += "  " + r.note
		}
		fmt.Println(line)
		if r.err != nil && *verbose {
			fmt.Println(indent(r.out))
		}
		mu.Unlock()
	}
	for _, j := range jobs {
		if j.c.alone {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			runJob(j)
		}()
	}
	wg.Wait()
	for _, j := range jobs {
		if j.c.alone {
			runJob(j)
		}
	}

	// Verdict and table.
	bad := 0
	var md strings.Builder
	md.WriteString("| cell | what | meetpoint | nymea | note |\n|---|---|---|---|---|\n")
	for _, c := range sel {
		rs := results[c.id]
		mp, mpOK := rs["meetpoint"]
		if c.only != nil && contains(c.only, "meetpoint-settle0") {
			mp, mpOK = rs["meetpoint-settle0"]
		}
		ny, nyOK := rs["nymea"]
		note := ""
		if mpOK && mp.err != nil || nyOK && ny.err != nil {
			note = knownReason(c.id)
		}
		verdict := ""
		switch {
		case c.info:
		case mpOK && mp.err != nil && (!nyOK || ny.err == nil):
			verdict = "meetpoint fails where nymea passes"
		case mpOK && mp.err != nil && nymeaOnly(c.id):
			verdict = "meetpoint fails where only a limit of nymea's server fails nymea"
		case mpOK && mp.err != nil && knownReason(c.id) == "":
			verdict = "fails on meetpoint and nymea, and no nymea limit explains it"
		case nyOK && ny.err != nil && c.mpClient && knownReason(c.id) == "":
			verdict = "meetpoint's client fails through nymea's server, unexplained"
		}
		if verdict != "" {
			bad++
			fmt.Printf("VERDICT %s: %s\n", c.id, verdict)
		}
		if note == "" {
			if mpOK && mp.err != nil {
				note = mp.err.Error()
			} else if nyOK && ny.err != nil {
				note = ny.err.Error()
			}
		}
		var measured []string
		for _, r := range []struct {
			name string
			r    result
			ok   bool
		}{{"meetpoint", mp, mpOK}, {"nymea", ny, nyOK}} {
			if r.ok && r.r.note != "" {
				measured = append(measured, r.name+": "+r.r.note)
			}
		}
		if len(measured) > 0 {
			note = strings.TrimPrefix(note+"; "+strings.Join(measured, ", "), "; ")
		}
		fmt.Fprintf(&md, "| `%s` | %s | %s | %s | %s |\n", c.id, c.desc, mark(mp, mpOK), mark(ny, nyOK), strings.ReplaceAll(note, "|", "\\|"))
	}
	fmt.Printf("%d cells on %d targets in %.0fs; %d verdict(s) against meetpoint\n", len(sel), len(env.targets), time.Since(start).Seconds(), bad)
	if *suitesFlag {
		bad += runSuites(env, &md)
	}
	if *mdOut != "" {
		if err := os.WriteFile(*mdOut, []byte(md.String()), 0o644); err != nil {
			fatalf("%v", err)
		}
	}
	if bad > 0 {
		env.stop() // os.Exit skips the deferred calls: the servers run in process groups of their own
		os.RemoveAll(dir)
		os.Exit(1)
	}
}

func mark(r result, ok bool) string {
	switch {
	case !ok:
		return "—"
	case r.note != "" && r.err == nil:
		return "pass (" + r.note + ")"
	case r.skip:
		return "skip"
	case r.err != nil:
		return "**fail**"
	}
	return "pass"
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "interop: "+format+"\n", args...)
	os.Exit(2)
}

var errSkip = fmt.Errorf("skip")

// ---------------------------------------------------------------------------
// The servers

type environment struct {
	dir            string
	cert, key      string
	servers        []*proc
	targets        []*target
	lib184, lib113 string // LD_LIBRARY_PATH for each nymea version
	mu             sync.Mutex
	seq            int // tokens handed out
	startedAt      time.Time
}

func (e *environment) start() error {
	e.startedAt = time.Now()
	e.cert, e.key = filepath.Join(e.dir, "cert.pem"), filepath.Join(e.dir, "key.pem")
	if err := writeRSACert(e.cert, e.key); err != nil {
		return err
	}
	e.lib184 = libPath(*nymea184)
	e.lib113 = libPath(*nymea113)
	ports, err := freePorts(14)
	if err != nil {
		return err
	}
	host := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	same := func(p int) map[string]string {
		return map[string]string{"ws": "ws://" + host(p), "wss": "wss://" + host(p), "tcp": "tcp://" + host(p), "ssl": "ssl://" + host(p)}
	}

	// meetpoint: plaintext and TLS, legacy and TunnelProxy, on one port.
	for _, m := range []struct {
		name string
		port int
		args []string
	}{{"meetpoint", ports[0], nil}, {"meetpoint-settle0", ports[1], []string{"--tcp-settle", "0"}}} {
		args := append([]string{"serve", "--listen", host(m.port), "--tls", "--tls-cert", e.cert, "--tls-key", e.key,
			"--name", "meetpoint-interop", "--log-level", "warn"}, m.args...)
		e.servers = append(e.servers, startProc(m.name, nil, nil, *meetpoint, args...))
		e.targets = append(e.targets, &target{name: m.name, legacy: same(m.port), tp: same(m.port)})
	}

	// nymea: 1.8.4 for the legacy API (removed in 1.9), 1.13.0 for
	// TunnelProxy; each once plain and once with SSL (nymea's SSL switch
	// covers all its ports).
	p := ports[2:]
	legacy := map[string]string{"ws": "ws://" + host(p[0]), "tcp": "tcp://" + host(p[1]), "wss": "wss://" + host(p[4]), "ssl": "ssl://" + host(p[5])}
	e.servers = append(e.servers,
		e.nymea("nymea-1.8.4-plain", *nymea184, e.lib184, false, p[0], p[1], p[2], p[3], true),
		e.nymea("nymea-1.8.4-ssl", *nymea184, e.lib184, true, p[4], p[5], p[6], p[7], true))
	tp := map[string]string{"ws": "ws://" + host(p[8]), "tcp": "tcp://" + host(p[9]), "wss": "wss://" + host(p[10]), "ssl": "ssl://" + host(p[11])}
	e.servers = append(e.servers,
		e.nymea("nymea-1.13.0-plain", *nymea113, e.lib113, false, 0, 0, p[8], p[9], false),
		e.nymea("nymea-1.13.0-ssl", *nymea113, e.lib113, true, 0, 0, p[10], p[11], false))
	e.targets = append(e.targets, &target{name: "nymea", legacy: legacy, tp: tp})

	// Wait until every port listens.
	var addrs []string
	for _, t := range e.targets {
		for _, m := range []map[string]string{t.legacy, t.tp} {
			for _, u := range m {
				addrs = append(addrs, u[strings.Index(u, "://")+3:])
			}
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				var logs strings.Builder
				for _, s := range e.servers {
					fmt.Fprintf(&logs, "--- %s\n%s\n", s.name, s.output())
				}
				return fmt.Errorf("%s does not listen: %v\n%s", a, err, logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// cellTimeouts are the [ProxyServer] timeouts of the cells' nymea servers
// (meetpoint's defaults).
const cellTimeouts = "jsonRpcTimeout=10000\nauthenticationTimeout=8000\ninactiveTimeout=8000\naloneTimeout=8000\n"

// nymea starts one nymea-remoteproxy server. Ports of 0 are left out (1.13
// has no legacy API).
func (e *environment) nymea(name, tree, lib string, ssl bool, ws, tcp, tpWS, tpTCP int, legacy bool) *proc {
	return e.nymeaAs(name, name, cellTimeouts, tree, lib, ssl, ws, tcp, tpWS, tpTCP, legacy)
}

// nymeaAs is nymea with the server name its Hello gives and its
// [ProxyServer] timeouts.
func (e *environment) nymeaAs(name, serverName, timeouts, tree, lib string, ssl bool, ws, tcp, tpWS, tpTCP int, legacy bool) *proc {
	conf := filepath.Join(e.dir, name+".conf")
	var b strings.Builder
	fmt.Fprintf(&b, "[ProxyServer]\nname=%s\nwriteLogs=false\nlogEngineEnabled=false\nmonitorSocket=%s\n%s\n",
		serverName, filepath.Join(e.dir, name+".monitor"), timeouts)
	fmt.Fprintf(&b, "[SSL]\nenabled=%v\ncertificate=%s\ncertificateKey=%s\ncertificateChain=\n\n", ssl, e.cert, e.key)
	if legacy {
		fmt.Fprintf(&b, "[WebSocketServer]\nhost=127.0.0.1\nport=%d\n\n[TcpServer]\nhost=127.0.0.1\nport=%d\n\n[UnixSocketServer]\nunixSocketFileName=%s\n\n",
			ws, tcp, filepath.Join(e.dir, name+".socket"))
	} else {
		fmt.Fprintf(&b, "[UnixSocketServerTunnelProxy]\nunixSocketFileName=%s\n\n", filepath.Join(e.dir, name+".socket"))
	}
	fmt.Fprintf(&b, "[WebSocketServerTunnelProxy]\nhost=127.0.0.1\nport=%d\n\n[TcpServerTunnelProxy]\nhost=127.0.0.1\nport=%d\n", tpWS, tpTCP)
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		fatalf("%v", err)
	}
	args := []string{"-c", conf}
	if legacy {
		args = append(args, "-m") // mock authenticator: every token is valid
	}
	return startProc(name, []string{"LD_LIBRARY_PATH=" + lib}, nil, filepath.Join(tree, "server", "nymea-remoteproxy"), args...)
}

func (e *environment) stop() {
	for _, s := range e.servers {
		s.stop()
	}
}

func libPath(tree string) string {
	return filepath.Join(tree, "libnymea-remoteproxy") + ":" + filepath.Join(tree, "libnymea-remoteproxyclient")
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ps []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ps = append(ps, l.Addr().(*net.TCPAddr).Port)
	}
	return ps, nil
}

// writeRSACert writes a self-signed RSA certificate for 127.0.0.1 (nymea
// loads RSA keys only).
func writeRSACert(certPath, keyPath string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
}

// ---------------------------------------------------------------------------
// Processes

// proc is a child process whose output (stdout and stderr) is kept, the
// first outCap bytes of each; with a sink, the stream it takes is counted
// and hashed as well (megabytes of payload).
type proc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	sink  *sink
	mu    sync.Mutex
	out   bytes.Buffer // stdout and stderr
	sout  bytes.Buffer // stdout alone
	err   error
	done  chan struct{}
}

// outCap bounds what a proc keeps of its output.
const outCap = 256 << 10

type procWriter struct {
	p      *proc
	stdout bool
}

func (w procWriter) Write(b []byte) (int, error) {
	if w.p.sink != nil && w.stdout {
		w.p.sink.write(b)
	}
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	keep := func(buf *bytes.Buffer) {
		if n := outCap - buf.Len(); n > 0 {
			buf.Write(b[:min(n, len(b))])
		}
	}
	keep(&w.p.out)
	if w.stdout {
		keep(&w.p.sout)
	}
	return len(b), nil
}

// startProc starts bin; with stdin non-nil its input stays open until stop
// after stdin's bytes.
func startProc(name string, env []string, stdin []byte, bin string, args ...string) *proc {
	return startProcSink(name, env, stdin, nil, bin, args...)
}

// startProcSink is startProc with a sink for stdout.
func startProcSink(name string, env []string, stdin []byte, k *sink, bin string, args ...string) *proc {
	p := &proc{name: name, sink: k, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = procWriter{p, true}
	p.cmd.Stderr = procWriter{p, false}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if stdin != nil {
		w, err := p.cmd.StdinPipe()
		if err != nil {
			p.err = err
			close(p.done)
			return p
		}
		p.stdin = w
	}
	if err := p.cmd.Start(); err != nil {
		p.err = err
		close(p.done)
		return p
	}
	liveMu.Lock()
	live[p] = true
	liveMu.Unlock()
	if stdin != nil {
		go p.stdin.Write(stdin)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p
}

// feed writes b to the stdin of a process started with one, in the
// background.
func (p *proc) feed(b []byte) {
	if p.stdin != nil {
		go p.stdin.Write(b)
	}
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *proc) stdout() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]byte(nil), p.sout.Bytes()...)
}

// waitFor polls the output for cond until d has passed.
func (p *proc) waitFor(d time.Duration, cond func(out string) bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond(p.output()) {
			return true
		}
		select {
		case <-p.done:
			return cond(p.output())
		default:
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) has(d time.Duration, s string) bool {
	return p.waitFor(d, func(out string) bool { return strings.Contains(out, s) })
}

// live is every started process not yet stopped, for stopAll.
var (
	liveMu sync.Mutex
	live   = make(map[*proc]bool)
)

// stopAll stops every process this run started.
func stopAll() {
	liveMu.Lock()
	ps := make([]*proc, 0, len(live))
	for p := range live {
		ps = append(ps, p)
	}
	liveMu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop() }()
	}
	wg.Wait()
}

func (p *proc) stop() {
	if p.cmd.Process == nil {
		return
	}
	defer func() {
		liveMu.Lock()
		delete(live, p)
		liveMu.Unlock()
	}()
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// ---------------------------------------------------------------------------
// One cell's run

type cctx struct {
	env   *environment
	t     *target
	procs []*proc
	svcs  []*service
	note  string // what the cell measured, for the table
}

func (c *cctx) cleanup() {
	for _, p := range c.procs {
		p.stop()
	}
	for _, s := range c.svcs {
		s.l.Close()
	}
}

func (c *cctx) transcript() string {
	var b strings.Builder
	for _, p := range c.procs {
		fmt.Fprintf(&b, "--- %s %s\n%s", p.name, strings.Join(p.cmd.Args[1:], " "), p.output())
		if !strings.HasSuffix(p.output(), "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// token is unique to the run and the call.
func (c *cctx) token(tag string) string {
	c.env.mu.Lock()
	defer c.env.mu.Unlock()
	c.env.seq++
	return fmt.Sprintf("interop-%s-%d-%d", tag, c.env.startedAt.UnixNano()%1e6, c.env.seq)
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (c *cctx) add(p *proc) *proc {
	c.procs = append(c.procs, p)
	return p
}

// quietTraffic turns off the debug categories of nymea's libraries that
// log every byte sent and received (megabytes in the size cells); what
// the CLIs print of the data they get is not in them.
const quietTraffic = "QT_LOGGING_RULES=*Traffic.debug=false"

// nymeaClient runs 1.8.4's nymea-remoteproxy-client with --pingpong: it
// sends "Ping from NAME!" once the tunnel is up and again a second after
// each message it receives, printing "<-- " and each message.
func (c *cctx) nymeaClient(transport, token, name string) *proc {
	return c.nymeaClientSink(transport, token, name, nil, "--pingpong")
}

// nymeaClientSink runs nymea-remoteproxy-client with more args, its
// output (on stdout, where nymea's CLIs log) going to k too.
func (c *cctx) nymeaClientSink(transport, token, name string, k *sink, more ...string) *proc {
	args := append([]string{"-u", c.t.legacy[transport], "-t", token, "--name", name, "-i"}, more...)
	if transport == "ws" || transport == "wss" {
		args = append(args, "--ws")
	}
	return c.add(startProcSink("nymea-client "+name, []string{"LD_LIBRARY_PATH=" + c.env.lib184, quietTraffic}, nil, k,
		filepath.Join(*nymea184, "client", "nymea-remoteproxy-client"), args...))
}

// mpClient runs `meetpoint client` with stdin's bytes as input.
func (c *cctx) mpClient(name string, stdin []byte, args ...string) *proc {
	return c.mpClientSink(name, stdin, nil, args...)
}

// mpClientSink is mpClient with its stdout going to k.
func (c *cctx) mpClientSink(name string, stdin []byte, k *sink, args ...string) *proc {
	args = append([]string{"client", "--ca", c.env.cert, "--name", name, "--timeout", "10s"}, args...)
	if stdin == nil {
		stdin = []byte{}
	}
	return c.add(startProcSink("meetpoint client "+name, nil, stdin, k, *meetpoint, args...))
}

// tunnelClient runs 1.13.0's nymea-remoteproxy-tunnelclient (TCP or SSL
// only: the CLI has no WebSocket mode).
func (c *cctx) tunnelClient(name string, transport string, args ...string) *proc {
	return c.tunnelClientSink(name, transport, nil, args...)
}

// tunnelClientSink is tunnelClient with its output (stdout) going to k
// too.
func (c *cctx) tunnelClientSink(name string, transport string, k *sink, args ...string) *proc {
	args = append([]string{"-u", c.t.tp[transport], "-i", "--name", name}, args...)
	return c.add(startProcSink("tunnelclient "+name, []string{"LD_LIBRARY_PATH=" + c.env.lib113, quietTraffic}, nil, k,
		filepath.Join(*nymea113, "tunnelclient", "nymea-remoteproxy-tunnelclient"), args...))
}

// probe runs meetpoint-nymea-probe on nymea's client library (version
// "1.13.0" or "1.8.4") against the TunnelProxy API.
func (c *cctx) probe(version, transport string, args ...string) *proc {
	return c.probeAt(version, c.t.tp[transport], transport, args...)
}

// probeAt runs the probe against url (the legacy API's for --role legacy);
// a later --timeout in args wins.
func (c *cctx) probeAt(version, url, transport string, args ...string) *proc {
	bin, lib := *probe113, c.env.lib113
	if version == "1.8.4" {
		bin, lib = *probe184, c.env.lib184
	}
	args = append([]string{"--url", url, "--timeout", "9000"}, args...)
	if transport == "ws" || transport == "wss" {
		args = append(args, "--ws")
	}
	return c.add(startProc("probe-"+version, []string{"LD_LIBRARY_PATH=" + lib, quietTraffic}, nil, bin, args...))
}

// service is the local TCP service behind `meetpoint client --serve`: it
// greets each connection and records what it receives (or, with a sink,
// counts and hashes it).
type service struct {
	l    net.Listener
	sink *sink
	mu   sync.Mutex
	got  bytes.Buffer
}

func (c *cctx) service(greeting []byte) *service {
	return c.serviceSink(greeting, 0, nil)
}

// serviceSink is a service that greets delay after each connection and
// gives what it receives to k (if not nil).
func (c *cctx) serviceSink(greeting []byte, delay time.Duration, k *sink) *service {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatalf("%v", err)
	}
	s := &service{l: l, sink: k}
	c.svcs = append(c.svcs, s)
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				go func() { // megabytes may take a while: read meanwhile
					time.Sleep(delay)
					conn.Write(greeting)
				}()
				buf := make([]byte, 64<<10)
				for {
					n, err := conn.Read(buf)
					if s.sink != nil {
						s.sink.write(buf[:n])
					} else {
						s.mu.Lock()
						s.got.Write(buf[:n])
						s.mu.Unlock()
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return s
}

func (s *service) received(d time.Duration, want []byte) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		ok := bytes.Contains(s.got.Bytes(), want)
		s.mu.Unlock()
		if ok {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// serveMP registers `meetpoint client --serve` as a TunnelProxy server in
// front of svc and waits until it runs.
func (c *cctx) serveMP(transport, su string, svc *service) (*proc, error) {
	p := c.mpClient("mp-server", nil, "--url", c.t.tp[transport], "--serve", svc.l.Addr().String(), "--server-uuid", su)
	if !p.has(6*time.Second, "registered as TunnelProxy server") {
		return p, fmt.Errorf("meetpoint client --serve did not register")
	}
	return p, nil
}

func stdoutHas(p *proc, d time.Duration, want []byte) bool {
	deadline := time.Now().Add(d)
	for {
		if bytes.Contains(p.stdout(), want) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// The matrix

var (
	transports = []string{"ws", "wss", "tcp", "ssl"}
	binary     = []byte{0x00, 0xC0, 0xDB, 0xFF}
)

// rawOf is the raw TCP transport with the same TLS setting as tr (nymea
// serves plain and TLS from different instances).
func rawOf(tr string) string {
	if tr == "wss" || tr == "ssl" {
		return "ssl"
	}
	return "tcp"
}

func matrix() []cell {
	var cells []cell
	add := func(c cell) { cells = append(cells, c) }
	const wait = 6 * time.Second

	// Legacy API: two nymea clients.
	pair := func(a, b string) func(c *cctx) error {
		return func(c *cctx) error {
			tok := c.token("nn")
			x := c.nymeaClient(a, tok, "alice")
			y := c.nymeaClient(b, tok, "bob")
			if !x.has(wait, "<-- Ping from bob!") {
				return fmt.Errorf("alice (%s) got no data from bob", a)
			}
			if !y.has(wait, "<-- Ping from alice!") {
				return fmt.Errorf("bob (%s) got no data from alice", b)
			}
			return nil
		}
	}
	for _, tr := range transports {
		add(cell{id: "legacy/nymea-nymea/" + tr, desc: "two nymea 1.8.4 clients over " + tr, run: pair(tr, tr)})
	}
	add(cell{id: "legacy/nymea-nymea/tcp-ws", desc: "nymea client on tcp, nymea client on ws", run: pair("tcp", "ws")})

	// Legacy API: a nymea client and `meetpoint client`, either first.
	mixed := func(ntr, mtr string, mpFirst bool) func(c *cctx) error {
		return func(c *cctx) error {
			tok := c.token("nm")
			var n, m *proc
			startN := func() { n = c.nymeaClient(ntr, tok, "nymea") }
			startM := func() {
				m = c.mpClient("mp", []byte("hello from meetpoint\n"), "--url", c.t.legacy[mtr], "--token", tok)
			}
			if mpFirst {
				startM()
				time.Sleep(300 * time.Millisecond)
				startN()
			} else {
				startN()
				time.Sleep(300 * time.Millisecond)
				startM()
			}
			if !stdoutHas(m, wait, []byte("Ping from nymea!")) {
				return fmt.Errorf("meetpoint client got nothing from nymea")
			}
			if !n.has(wait, "<-- hello from meetpoint") {
				return fmt.Errorf("nymea client got nothing from meetpoint")
			}
			return nil
		}
	}
	for _, tr := range transports {
		add(cell{id: "legacy/nymea-meetpoint/" + tr + "/nymea-first", desc: "nymea client, then `meetpoint client`, over " + tr, mpClient: true, run: mixed(tr, tr, false)})
		add(cell{id: "legacy/nymea-meetpoint/" + tr + "/meetpoint-first", desc: "`meetpoint client`, then nymea client, over " + tr, mpClient: true, run: mixed(tr, tr, true)})
	}
	add(cell{id: "legacy/nymea-meetpoint/tcp-ws", desc: "nymea client on tcp, `meetpoint client` on ws", mpClient: true, run: mixed("tcp", "ws", false)})
	add(cell{id: "legacy/nymea-meetpoint/ws-tcp", desc: "nymea client on ws, `meetpoint client` on tcp", mpClient: true, run: mixed("ws", "tcp", false)})

	// Legacy API: binary-safe bytes between two meetpoint clients (nymea's
	// clients send text only).
	for _, tr := range transports {
		add(cell{id: "legacy/binary/meetpoint-meetpoint/" + tr, desc: "00 C0 DB FF between two `meetpoint client`s over " + tr, mpClient: true,
			run: func(c *cctx) error {
				tok := c.token("bin")
				a := c.mpClient("a", binary, "--url", c.t.legacy[tr], "--token", tok)
				b := c.mpClient("b", nil, "--url", c.t.legacy[tr], "--token", tok)
				if !stdoutHas(b, wait, binary) {
					return fmt.Errorf("b got % x", b.stdout())
				}
				_ = a
				return nil
			}})
	}

	// TunnelEstablished stall rate (issue 11 #8): nymea's client stalls when
	// the notification and its partner's first bytes arrive in one read.
	stall := func(c *cctx) error {
		stalls := 0
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, 4)
		for range *runs {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				sub := &cctx{env: c.env, t: c.t}
				defer sub.cleanup()
				tok := sub.token("stall")
				x := sub.nymeaClient("tcp", tok, "alice")
				y := sub.nymeaClient("tcp", tok, "bob")
				if !x.has(3*time.Second, "<-- Ping from bob!") || !y.has(time.Second, "<-- Ping from alice!") {
					mu.Lock()
					stalls++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		c.note = fmt.Sprintf("%d of %d stalled", stalls, *runs)
		if limit := *runs / 20; stalls > limit {
			return fmt.Errorf("%d of %d pairings stalled (limit %d)", stalls, *runs, limit)
		}
		return nil
	}
	add(cell{id: "legacy/stall/tcp", desc: fmt.Sprintf("%d nymea tcp pairings: at most 5%% stall on TunnelEstablished + data in one read", *runs),
		run: stall})
	add(cell{id: "legacy/stall/tcp/settle-0", desc: "the same with `--tcp-settle 0` (a measurement: what the settle window prevents)",
		info: true, only: []string{"meetpoint-settle0"}, run: func(c *cctx) error {
			_ = stall(c)
			return nil
		}})

	// TunnelProxy: nymea's tunnelclient CLI (TCP and SSL only).
	for _, tr := range []string{"tcp", "ssl"} {
		add(cell{id: "tp/tunnelclient/" + tr, desc: "nymea tunnelclient server ↔ nymea tunnelclient client over " + tr,
			run: func(c *cctx) error {
				su := newUUID()
				s := c.tunnelClient("srv", tr, "-s", "--uuid", su)
				if !s.has(wait, "running and listening") {
					return fmt.Errorf("tunnelclient server did not register")
				}
				cl := c.tunnelClient("cli", tr, "-c", "--uuid", newUUID(), "--server-uuid", su)
				if !cl.has(wait, "Remote connection established successfully") {
					return fmt.Errorf("tunnelclient client not connected")
				}
				if !s.has(wait, "[+] Client connected") {
					return fmt.Errorf("tunnelclient server saw no client")
				}
				return nil
			}})
		add(cell{id: "tp/tunnelclient-server/" + tr, desc: "nymea tunnelclient server (echo) ↔ `meetpoint client --server-uuid` over " + tr, mpClient: true,
			run: func(c *cctx) error {
				su := newUUID()
				s := c.tunnelClient("srv", tr, "-s", "-r", "--uuid", su)
				if !s.has(wait, "running and listening") {
					return fmt.Errorf("tunnelclient server did not register")
				}
				m := c.mpClient("mp", []byte("hello tunnel\n"), "--url", c.t.tp[tr], "--server-uuid", su)
				if !stdoutHas(m, wait, []byte("hello tunnel\n")) {
					return fmt.Errorf("no echo: got %q", m.stdout())
				}
				return nil
			}})
		add(cell{id: "tp/binary/nymea-server/" + tr, desc: "00 C0 DB FF: `meetpoint client` → nymea tunnelclient server (echo) → back, over " + tr, mpClient: true,
			run: func(c *cctx) error {
				su := newUUID()
				s := c.tunnelClient("srv", tr, "-s", "-r", "--uuid", su)
				if !s.has(wait, "running and listening") {
					return fmt.Errorf("tunnelclient server did not register")
				}
				m := c.mpClient("mp", binary, "--url", c.t.tp[tr], "--server-uuid", su)
				if !stdoutHas(m, wait, binary) {
					return fmt.Errorf("echo was % x", m.stdout())
				}
				return nil
			}})
		add(cell{id: "tp/meetpoint-server/" + tr, desc: "`meetpoint client --serve` ↔ nymea tunnelclient client over " + tr, mpClient: true,
			run: func(c *cctx) error {
				su := newUUID()
				svc := c.service([]byte("hello from service\n"))
				if _, err := c.serveMP(tr, su, svc); err != nil {
					return err
				}
				cl := c.tunnelClient("cli", tr, "-c", "--uuid", newUUID(), "--server-uuid", su)
				if !cl.has(wait, `Data received "hello from service\n"`) {
					return fmt.Errorf("tunnelclient got no greeting")
				}
				return nil
			}})
	}

	// TunnelProxy: nymea's client library on every transport (the probe).
	for _, v := range []string{"1.13.0", "1.8.4"} {
		for _, tr := range transports {
			if v == "1.8.4" && (tr == "wss" || tr == "ssl") {
				continue // the TLS variants add nothing for the older library
			}
			suffix := tr
			if v == "1.8.4" {
				suffix = tr + "/lib-1.8.4"
			}
			add(cell{id: "tp/lib-client/" + suffix, desc: "nymea " + v + " library client over " + tr + " ↔ `meetpoint client --serve` over " + rawOf(tr) + ", text both ways", mpClient: true,
				run: func(c *cctx) error {
					su := newUUID()
					svc := c.service([]byte("hello from service\n"))
					if _, err := c.serveMP(rawOf(tr), su, svc); err != nil {
						return err
					}
					p := c.probe(v, tr, "--role", "client", "--uuid", newUUID(), "--server-uuid", su, "--send", hex.EncodeToString([]byte("hi from nymea\n")))
					if !p.has(wait, "RECV "+hex.EncodeToString([]byte("hello from service\n"))) {
						return fmt.Errorf("library client got no greeting")
					}
					if !svc.received(wait, []byte("hi from nymea\n")) {
						return fmt.Errorf("service got nothing from the library client")
					}
					return nil
				}})
			add(cell{id: "tp/lib-server/" + suffix, desc: "nymea " + v + " library server ↔ `meetpoint client --server-uuid`, text both ways, over " + tr, mpClient: true,
				run: func(c *cctx) error {
					su := newUUID()
					s := c.probe(v, tr, "--role", "server", "--uuid", su, "--echo", "--send", hex.EncodeToString([]byte("hello from nymea\n")))
					if !s.has(wait, "READY") {
						return fmt.Errorf("library server did not register")
					}
					m := c.mpClient("mp", []byte("hello tunnel\n"), "--url", c.t.tp[tr], "--server-uuid", su)
					if !stdoutHas(m, wait, []byte("hello from nymea\n")) {
						return fmt.Errorf("meetpoint client got %q", m.stdout())
					}
					if !stdoutHas(m, wait, []byte("hello tunnel\n")) {
						return fmt.Errorf("no echo: meetpoint client got %q", m.stdout())
					}
					return nil
				}})
			if tr == "tcp" || tr == "ssl" {
				add(cell{id: "tp/binary/lib-client/" + suffix, desc: "00 C0 DB FF both ways: nymea " + v + " library client over " + tr + " ↔ `meetpoint client --serve` over " + rawOf(tr), mpClient: true,
					run: func(c *cctx) error {
						su := newUUID()
						svc := c.service(binary)
						if _, err := c.serveMP(rawOf(tr), su, svc); err != nil {
							return err
						}
						p := c.probe(v, tr, "--role", "client", "--uuid", newUUID(), "--server-uuid", su, "--send", "ffdbc000")
						if !p.has(wait, "RECV 00c0dbff") {
							return fmt.Errorf("library client did not get 00 C0 DB FF")
						}
						if !svc.received(wait, []byte{0xFF, 0xDB, 0xC0, 0x00}) {
							return fmt.Errorf("service did not get FF DB C0 00")
						}
						return nil
					}})
			}
		}
	}
	// TunnelProxy: meetpoint's client on both ends, over WebSocket.
	for _, tr := range []string{"ws", "wss"} {
		add(cell{id: "tp/meetpoint-meetpoint/" + tr, desc: "`meetpoint client --serve` ↔ `meetpoint client --server-uuid`, both over " + tr, mpClient: true,
			run: func(c *cctx) error {
				su := newUUID()
				svc := c.service([]byte("hello from service\n"))
				if _, err := c.serveMP(tr, su, svc); err != nil {
					return err
				}
				m := c.mpClient("mp", []byte("hello tunnel\n"), "--url", c.t.tp[tr], "--server-uuid", su)
				if !stdoutHas(m, wait, []byte("hello from service\n")) {
					return fmt.Errorf("meetpoint client got %q", m.stdout())
				}
				if !svc.received(wait, []byte("hello tunnel\n")) {
					return fmt.Errorf("service got nothing")
				}
				return nil
			}})
	}
	add(cell{id: "tp/lib-lib/tcp", desc: "nymea 1.13.0 library server ↔ library client over tcp",
		run: func(c *cctx) error {
			su := newUUID()
			s := c.probe("1.13.0", "tcp", "--role", "server", "--uuid", su, "--echo")
			if !s.has(wait, "READY") {
				return fmt.Errorf("library server did not register")
			}
			p := c.probe("1.13.0", "tcp", "--role", "client", "--uuid", newUUID(), "--server-uuid", su, "--send", "70696e670a")
			if !p.has(wait, "RECV 70696e670a") {
				return fmt.Errorf("no echo through the library pair")
			}
			return nil
		}})
	return append(cells, sizeCells()...)
}
