package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/certs"
	"github.com/meetpoint/meetpoint/relay/relaytest"
	bolt "go.etcd.io/bbolt"
)

// lockedBuffer is a goroutine-safe log sink.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testServe runs serveUntilSignal with a signal channel the test feeds.
type testServe struct {
	started   serveStarted
	startedCh chan serveStarted
	sigs      chan os.Signal
	done      chan int
	logs      *lockedBuffer
	stderr    *lockedBuffer
}

func startServe(t *testing.T, args ...string) *testServe {
	t.Helper()
	return startServeWith(t, nil, args...)
}

// startServeWith is startServe with stdin for `--config -`.
func startServeWith(t *testing.T, stdin *stdinConfig, args ...string) *testServe {
	t.Helper()
	ts := launchServe(t, stdin, args...)
	ts.waitStarted(t)
	return ts
}

// launchServe parses args and runs serve without waiting for it to start
// (waitStarted does); it is stopped at the end of the test.
func launchServe(t *testing.T, stdin *stdinConfig, args ...string) *testServe {
	t.Helper()
	ts := &testServe{sigs: make(chan os.Signal, 4), done: make(chan int, 1), logs: &lockedBuffer{}, stderr: &lockedBuffer{},
		startedCh: make(chan serveStarted, 1)}
	args = append([]string{"--listen", "127.0.0.1:0"}, args...)
	o, code := parseServeOptions(args, stdin, ts.logs, io.Discard, ts.stderr)
	if code != -1 {
		t.Fatalf("parse: %d %s", code, ts.stderr.String())
	}
	o.reparse = reparser(args, stdin) // as runServe does
	go func() { ts.done <- serveUntilSignal(o, ts.sigs, ts.stderr, func(s serveStarted) { ts.startedCh <- s }) }()
	t.Cleanup(func() {
		select {
		case ts.sigs <- syscall.SIGTERM:
		default:
		}
		select {
		case ts.sigs <- syscall.SIGINT:
		default:
		}
		select {
		case <-ts.done:
		case <-time.After(relaytest.Patience):
			t.Error("serve did not stop")
		}
	})
	return ts
}

// waitStarted waits until serve listens, failing if it exits first.
func (ts *testServe) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case ts.started = <-ts.startedCh:
	case code := <-ts.done:
		ts.done <- code // for Cleanup
		t.Fatalf("serve exited %d: %s", code, ts.stderr.String())
	case <-time.After(relaytest.Patience):
		t.Fatal("serve did not start")
	}
}

func (ts *testServe) addr() string { return ts.started.srv.Addrs()[0].String() }

func (ts *testServe) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case code := <-ts.done:
		ts.done <- code // for Cleanup
		return code
	case <-time.After(within):
		t.Fatalf("serve still running after %v", within)
		return -1
	}
}

func adminGet(t *testing.T, ts *testServe, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + ts.started.admin.String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func pairTunnel(t *testing.T, addr, token string) (*client.Tunnel, *client.Tunnel) {
	t.Helper()
	return relaytest.DialPair(t, client.Options{URL: "ws://" + addr + "/", Token: token, Name: "a"},
		client.Options{URL: "tcp://" + addr, Token: token, Name: "b"})
}

func echo(t *testing.T, from, to *client.Tunnel, msg string) {
	t.Helper()
	if _, err := from.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	_ = to.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(to, buf); err != nil || string(buf) != msg {
		t.Fatalf("read %q %v, want %q", buf, err, msg)
	}
}

// SIGTERM drains: readyz turns 503, the tunnel keeps working, and serve
// returns 0 as soon as the tunnel ends by itself. Logs are JSON, one line
// per tunnel event, with no token in them.
func TestServeDrainOnSIGTERM(t *testing.T) {
	mon := filepath.Join(t.TempDir(), "mon.sock")
	// The drain timeout is out of reach: serve returning at all says the
	// tunnel's end ended the drain.
	ts := startServe(t, "--admin-listen", "127.0.0.1:0", "--monitor", mon, "--drain-timeout", "1h",
		"--log-format", "json", "--log-level", "debug")
	const token = "very-secret-token-4711"
	a, b := pairTunnel(t, ts.addr(), token)
	echo(t, a, b, "hello")

	if code, body := adminGet(t, ts, "/readyz"); code != 200 || body != "ready\n" {
		t.Fatalf("readyz: %d %q", code, body)
	}
	if code, body := adminGet(t, ts, "/metrics"); code != 200 || !strings.Contains(body, "meetpoint_tunnels_active 1\n") {
		t.Fatalf("metrics: %d", code)
	}
	if code, _ := adminGet(t, ts, "/debug/pprof/"); code != 200 {
		t.Fatalf("pprof on the admin listener: %d", code)
	}
	if _, err := os.Stat(mon); err != nil {
		t.Fatalf("monitor socket: %v", err)
	}

	start := time.Now()
	ts.sigs <- syscall.SIGTERM
	deadline := time.Now().Add(relaytest.Patience)
	for {
		code, body := adminGet(t, ts, "/readyz")
		if code == 503 && body == "draining\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz while draining: %d %q", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; i < 5; i++ {
		echo(t, a, b, "still here")
		echo(t, b, a, "me too")
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case code := <-ts.done:
		t.Fatalf("serve returned %d while a tunnel was open", code)
	default:
	}
	a.Close()
	if code := ts.wait(t, relaytest.Patience); code != 0 {
		t.Fatalf("exit %d (%v into the drain)", code, time.Since(start))
	}
	if _, err := os.Stat(mon); !os.IsNotExist(err) {
		t.Fatalf("monitor socket left behind: %v", err)
	}

	logs := ts.logs.String()
	if strings.Contains(logs, token) {
		t.Fatal("the token was logged")
	}
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		msgs = append(msgs, m["msg"].(string))
	}
	all := strings.Join(msgs, "|")
	for _, want := range []string{"listening", "tunnel established", "draining", "tunnel closed", "drained"} {
		if !strings.Contains(all, want) {
			t.Errorf("no %q log line in %v", want, msgs)
		}
	}
}

// A tunnel that outlives the drain timeout is closed when it passes, not
// before.
func TestServeDrainTimeout(t *testing.T) {
	ts := startServe(t, "--drain-timeout", "2s", "--log-level", "error")
	a, b := pairTunnel(t, ts.addr(), "drain-timeout")
	start := time.Now()
	ts.sigs <- syscall.SIGTERM
	for time.Since(start) < 400*time.Millisecond {
		echo(t, a, b, "ping")
		time.Sleep(20 * time.Millisecond)
	}
	if code := ts.wait(t, relaytest.Patience); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if el := time.Since(start); el < 2*time.Second {
		t.Fatalf("returned after %v, before the drain timeout", el)
	}
	_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := a.Read(make([]byte, 8)); err == nil {
		t.Fatal("tunnel still open after the drain")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("tunnel not closed after the drain")
	}
}

// A second SIGTERM/SIGINT during the drain closes everything at once.
func TestServeSecondSignalCuts(t *testing.T) {
	ts := startServe(t, "--drain-timeout", "1m", "--log-level", "error")
	pairTunnel(t, ts.addr(), "second-signal")
	ts.sigs <- syscall.SIGTERM
	time.Sleep(100 * time.Millisecond)
	select {
	case code := <-ts.done:
		t.Fatalf("returned %d during the drain", code)
	default:
	}
	ts.sigs <- syscall.SIGINT
	if code := ts.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// SIGHUP re-reads the token file.
func TestServeSIGHUPReloadsTokens(t *testing.T) {
	tokens := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tokens, []byte("alpha\n"), 0o600)
	ts := startServe(t, "--auth", "file:"+tokens, "--log-level", "info")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, client.Options{URL: "tcp://" + ts.addr(), Token: "beta"})
	var ae *client.AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("beta before reload: %v, want an authentication error", err)
	}
	os.WriteFile(tokens, []byte("alpha\nbeta\n"), 0o600)
	ts.sigs <- syscall.SIGHUP
	deadline := time.Now().Add(relaytest.Patience)
	for !strings.Contains(ts.logs.String(), "reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged: %s", ts.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	a, b := pairTunnel(t, ts.addr(), "beta")
	echo(t, a, b, "reloaded")

	// A broken file keeps the old tokens and logs the error.
	os.Remove(tokens)
	ts.sigs <- syscall.SIGHUP
	deadline = time.Now().Add(relaytest.Patience)
	for !strings.Contains(ts.logs.String(), "reload failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload failure logged: %s", ts.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	a2, b2 := pairTunnel(t, ts.addr(), "alpha")
	echo(t, a2, b2, "kept")
	// One line, saying it once (the token file is read by the
	// authenticator and again by the limits' re-parse).
	var failed string
	for l := range strings.Lines(ts.logs.String()) {
		if strings.Contains(l, "reload failed") {
			failed = l
		}
	}
	if strings.Count(failed, "no such file") != 1 || strings.Contains(failed, `\n`) || strings.Contains(failed, "meetpoint serve:") {
		t.Errorf("reload failure line: %q, want the error once, on one line", failed)
	}
}

func TestServeStartFailures(t *testing.T) {
	dir := t.TempDir()
	notSock := filepath.Join(dir, "file")
	os.WriteFile(notSock, nil, 0o600)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	lockedDir := t.TempDir() // its groups.db locked, as by a relay still exiting
	held, err := bolt.Open(filepath.Join(lockedDir, "groups.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// A --monitor path that is not a socket is a bad configuration (exit
	// 2, which the unit never restarts: it once exited 1, and systemd
	// restarted the relay in a loop); a busy address or data directory
	// may free up (exit 1: groups.db's lock once exited 2).
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"--monitor", notSock}, 2},
		{[]string{"--admin-listen", busy.Addr().String()}, 1},
		{[]string{"--listen", busy.Addr().String()}, 1},
		{[]string{"--data-dir", lockedDir}, 1},
	} {
		args := tc.args
		var stderr lockedBuffer
		o, code := parseServeOptions(append([]string{"--listen", "127.0.0.1:0", "--log-level", "error"}, args...), nil, io.Discard, io.Discard, &stderr)
		if code != -1 {
			t.Fatalf("%v: parse %d %s", args, code, stderr.String())
		}
		if code := serveUntilSignal(o, make(chan os.Signal), &stderr, nil); code != tc.code || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("%v: exit %d (want %d), stderr %q", args, code, tc.code, stderr.String())
		}
	}
}

// TestLimitsReloadFromConfig: SIGHUP's limits come from the config file as
// it is now; a broken file is an error, not new limits; a changed setting
// that a reload does not put in force is named.
func TestLimitsReloadFromConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meetpoint.toml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("max-conns = 5\n")
	reload := reparser([]string{"--config", path, "--listen", "127.0.0.1:0"}, nil)
	first, err := reload()
	if err != nil || first.cfg.Limits.MaxConns != 5 {
		t.Fatalf("first read: %+v %v", first.cfg.Limits, err)
	}
	write("max-conns = 7\nname = \"renamed\"\nalone-timeout = \"1m\"\n")
	again, err := reload()
	if err != nil || again.cfg.Limits.MaxConns != 7 {
		t.Fatalf("after edit: %+v %v", again.cfg.Limits, err)
	}
	if got := needRestart(first.settings, again.settings); !slices.Equal(got, []string{"alone-timeout", "name"}) {
		t.Errorf("settings that need a restart: %v, want [alone-timeout name] (max-conns reloads)", got)
	}
	write("max-conns = \"many\"\n")
	if _, err = reload(); err == nil {
		t.Fatal("a broken config gave limits")
	}
}

// TestServeGroupsPersist: serve answers the groups API on its port by
// default and keeps the groups under --data-dir across a restart.
func TestServeGroupsPersist(t *testing.T) {
	dir := t.TempDir()
	ts := startServe(t, "--data-dir", dir, "--drain-timeout", "100ms")
	resp, err := http.Post("http://"+ts.addr()+"/group", "application/json", strings.NewReader(`{"AppID":"chat","Name":"kept"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("POST /group: %d %s", resp.StatusCode, body)
	}
	id := strings.Trim(strings.TrimSpace(string(body)), `"`)
	ts.sigs <- syscall.SIGTERM
	if code := ts.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	again := startServe(t, "--data-dir", dir)
	resp, err = http.Get("http://" + again.addr() + "/groups/" + id)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"kept"`) {
		t.Fatalf("after a restart: %d %s", resp.StatusCode, body)
	}
}

// TestServeTURN: --turn serves TURN on UDP at the relay's port number and
// credentials on the relay port; bad TURN flags are refused.
func TestServeTURN(t *testing.T) {
	ts := startServe(t, "--turn", "--turn-ports", "41000-41100")
	req, _ := http.NewRequest("GET", "http://"+ts.addr()+"/v1/turn/credentials", nil)
	req.Header.Set("Authorization", "Bearer any-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	_, port, _ := net.SplitHostPort(ts.addr())
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"turn:127.0.0.1:`+port+`?transport=udp"`) {
		t.Fatalf("credentials: %d %s", resp.StatusCode, body)
	}
	for _, args := range [][]string{{"--turn", "--turn-ports", "9-1"}, {"--turn-listen", "127.0.0.1:0"}, {"--turn", "--turn-relay-ip", "nope"}} {
		var stderr bytes.Buffer
		if _, code := parseServeOptions(args, nil, io.Discard, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "turn") {
			t.Errorf("%v: exit %d, %q", args, code, stderr.String())
		}
	}
}

// TestServeStaticTURNUserAndGroupsFlags: --turn-user takes its password
// from --turn-password-file, the quotas and the groups API's bounds and
// owner secrets reach their subsystems, and bad values are refused.
func TestServeStaticTURNUserAndGroupsFlags(t *testing.T) {
	pass := filepath.Join(t.TempDir(), "pass")
	if err := os.WriteFile(pass, []byte("static-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, code := parseServeOptions([]string{"--turn", "--turn-user", "babble", "--turn-password-file", pass, "--turn-max-per-address", "7",
		"--turn-max-per-shared", "70", "--groups-owner-secrets", "--groups-max", "5", "--groups-max-bytes", "5000", "--groups-create-rate", "2"},
		nil, io.Discard, io.Discard, io.Discard)
	switch {
	case code != -1:
		t.Fatalf("exit %d", code)
	case o.turn.User != "babble" || o.turn.Password != "static-password" || o.turn.MaxPerAddress != 7 || o.turn.MaxPerShared != 70:
		t.Fatalf("turn config %+v", o.turn)
	case !o.groups.OwnerSecrets || o.groups.MaxTotal != 5 || o.groups.MaxBytes != 5000 || o.groups.CreateRate != 2 || o.groups.MaxGroups != 1000:
		t.Fatalf("groups config %+v", o.groups)
	}
	for _, args := range [][]string{
		{"--turn", "--turn-user", "babble"},
		{"--turn", "--turn-user", "a:b", "--turn-password-file", pass},
		{"--turn-user", "babble", "--turn-password-file", pass},
		{"--turn", "--turn-max-per-address", "0"},
		{"--groups-max", "0"},
		{"--groups-create-rate", "-1"},
	} {
		var stderr bytes.Buffer
		if _, code := parseServeOptions(args, nil, io.Discard, io.Discard, &stderr); code != 2 || stderr.Len() == 0 {
			t.Errorf("%v: exit %d, %q; want 2 and a message", args, code, stderr.String())
		}
	}
}

// TestServeMetricsDocumented: with every subsystem the command wires
// (one-time tokens, events, groups, signalling, TunnelProxy, TURN, TLS), each
// one's families are on /metrics, and every family has # HELP and # TYPE
// (a subsystem that registers its set without docs fails here).
func TestServeMetricsDocumented(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "admin.key")
	if code := run([]string{"token", "--gen-key", keyFile}, nil, &bytes.Buffer{}, &bytes.Buffer{}); code != 0 {
		t.Fatal("gen-key")
	}
	ts := startServe(t, "--admin-listen", "127.0.0.1:0", "--auth", "onetime", "--events", "--admin-key-file", keyFile,
		"--turn", "--turn-ports", "41100-41200", "--tls", "--log-level", "error")
	code, body := adminGet(t, ts, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	typeOf := relaytest.CheckMetrics(t, body)
	for _, fam := range []string{"meetpoint_tunnels_active", "meetpoint_onetime_total", "meetpoint_events_subscribers",
		"meetpoint_groups", "meetpoint_signal_sessions", "meetpoint_tunnelproxy_servers_active", "meetpoint_turn_allocations_active",
		"meetpoint_tls_certificate_expiry_timestamp_seconds"} {
		if typeOf[fam] == "" {
			t.Errorf("no %s on /metrics", fam)
		}
	}
}

// TestServeClientCAWarning: client certificates required while plaintext
// stays open is said at start; with --tls-only it is not.
func TestServeClientCAWarning(t *testing.T) {
	dir := t.TempDir()
	ca := relaytest.Cert(t, "test CA", nil, true)
	caFile := filepath.Join(dir, "ca.pem")
	relaytest.WriteCert(t, ca, caFile, "")
	const warning = "client certificates are required on TLS connections only"
	open := startServe(t, "--tls", "--data-dir", dir, "--tls-client-ca", caFile)
	if !strings.Contains(open.logs.String(), warning) {
		t.Errorf("no warning with plaintext open:\n%s", open.logs.String())
	}
	only := startServe(t, "--tls", "--data-dir", t.TempDir(), "--tls-client-ca", caFile, "--tls-only")
	if strings.Contains(only.logs.String(), warning) {
		t.Errorf("a warning with --tls-only:\n%s", only.logs.String())
	}
}

// TestServeHealthUnderAccess: with access rules that allow an anonymous
// client nothing, /healthz and /readyz still answer it on the relay port
// (a load balancer checks them anonymously); the rest is refused.
func TestServeHealthUnderAccess(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "access.toml")
	if err := os.WriteFile(rules, []byte("[[rule]]\nname = \"own\"\nfingerprint = [\""+strings.Repeat("ab", 32)+"\"]\nallow = [\"*\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServe(t, "--access", rules)
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/status.json": 403, "/metrics": 403} {
		for _, method := range []string{"GET", "HEAD"} {
			req, _ := http.NewRequest(method, "http://"+ts.addr()+path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("%s %s: %d, want %d", method, path, resp.StatusCode, want)
			}
		}
	}
}

// TestServeAPIErrorsAreJSON: a path of the relay's JSON APIs answered by
// nobody, or with a method it is not served with, gets a JSON error with
// the right status (404, 405 with Allow), not the relay port's text page.
func TestServeAPIErrorsAreJSON(t *testing.T) {
	ts := startServe(t)
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"PATCH", "/group", 405, "POST"},
		{"PUT", "/groups/abc", 405, "GET, PATCH, DELETE"},
		{"GET", "/v1/turn/allocations", 404, ""}, // no --turn
		{"POST", "/v1/tokens", 404, ""},          // no one-time tokens
		{"GET", "/v1/nothing", 404, ""},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+ts.addr()+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct{ Error string }
		if resp.StatusCode != tc.status || resp.Header.Get("Allow") != tc.allow || resp.Header.Get("Content-Type") != "application/json" ||
			json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, tc.path) {
			t.Errorf("%s %s: %d Allow %q %s %q; want %d, Allow %q and a JSON error naming the path", tc.method, tc.path,
				resp.StatusCode, resp.Header.Get("Allow"), resp.Header.Get("Content-Type"), body, tc.status, tc.allow)
		}
	}
	resp, err := http.Get("http://" + ts.addr() + "/no/such/page")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("a page path: %d %s, want the text 404", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

// TestServeSIGHUPIsAllOrNothing: a reload reads every part before it puts
// any in force: new tokens and a broken certificate file in one reload
// change nothing (the old tokens still admit, the new ones do not), and it
// says so. A changed setting that only a restart puts in force (here the
// authenticator itself) is named in a warning, not passed over.
func TestServeSIGHUPIsAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	tokens, other := filepath.Join(dir, "tokens"), filepath.Join(dir, "other-tokens")
	os.WriteFile(tokens, []byte("alpha\n"), 0o600)
	os.WriteFile(other, []byte("gamma\n"), 0o600)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	c, err := certs.SelfSignedCert([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteSelfSigned(c, certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "meetpoint.toml")
	os.WriteFile(conf, []byte("auth = \"file:"+tokens+"\"\n"), 0o644)
	ts := startServe(t, "--config", conf, "--tls-cert", certPath, "--tls-key", keyPath, "--log-level", "info")
	admits := func(token string) bool { // the Authenticate reply, on the raw protocol
		t.Helper()
		c, err := net.Dial("tcp", ts.addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"x","token":%q}}`+"\n", token)
		_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("no answer to Authenticate: %v", err)
		}
		return strings.Contains(line, "AuthenticationErrorNoError")
	}
	waitLog := func(what string, n int) {
		t.Helper()
		relaytest.WaitFor(t, func() bool { return strings.Count(ts.logs.String(), what) >= n }, "the log: "+what)
	}
	os.WriteFile(tokens, []byte("beta\n"), 0o600)                // alpha revoked, beta added…
	os.WriteFile(certPath, []byte("not a certificate\n"), 0o644) // …and the certificate broken
	ts.sigs <- syscall.SIGHUP
	waitLog("reload failed: nothing changed", 1)
	if !admits("alpha") || admits("beta") {
		t.Fatal("a failed reload changed the tokens: want alpha admitted and beta refused")
	}
	if err := certs.WriteSelfSigned(c, certPath, keyPath); err != nil { // mended
		t.Fatal(err)
	}
	os.WriteFile(conf, []byte("auth = \"file:"+other+"\"\n"), 0o644) // a new authenticator: a restart's
	ts.sigs <- syscall.SIGHUP
	waitLog("reloaded:", 1)
	waitLog(`msg="settings changed that only a restart puts in force; they are not in force" settings=auth`, 1)
	if !admits("beta") || admits("alpha") || admits("gamma") {
		t.Fatal("after the reload: want the file's new tokens (beta) in force, and not the new authenticator's (gamma)")
	}
}

// TestServeSIGHUPKeepsTheIPv6Prefix: a changed --ipv6-prefix is named as
// needing a restart and is not put in force by a reload: the per-address
// state, bans included, is kept under the keys the old prefix made.
func TestServeSIGHUPKeepsTheIPv6Prefix(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "meetpoint.toml")
	os.WriteFile(conf, []byte("ipv6-prefix = 64\n"), 0o644)
	ts := startServe(t, "--config", conf, "--log-level", "info")
	ip := netip.MustParseAddr("2001:db8:0:1::1")
	before, _ := ts.started.srv.ClientKey(ip)
	os.WriteFile(conf, []byte("ipv6-prefix = 48\n"), 0o644)
	ts.sigs <- syscall.SIGHUP
	relaytest.WaitFor(t, func() bool { return strings.Contains(ts.logs.String(), "reloaded:") }, "the reload")
	if after, _ := ts.started.srv.ClientKey(ip); after != before {
		t.Errorf("a reload changed the IPv6 prefix: key %v, then %v", before, after)
	}
	if !strings.Contains(ts.logs.String(), `they are not in force" settings=ipv6-prefix`) {
		t.Errorf("the changed --ipv6-prefix was not named as needing a restart:\n%s", ts.logs.String())
	}
}

// TestServeStopAfterReloadDuringStart: a SIGHUP (systemctl reload) that
// arrives while the relay is still starting, followed by a SIGTERM
// (systemctl stop), must still stop it: the SIGHUP waiting to be handled
// must not make the SIGTERM be dropped, or the relay serves on until
// systemd's SIGKILL, without a drain. The relay runs as a process of its
// own (real signals); its start is held in its dependency check, on a
// webhook that answers only when the test lets it.
func TestServeStopAfterReloadDuringStart(t *testing.T) {
	probed, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(probed) })
		select {
		case <-release:
		case <-r.Context().Done():
		}
		http.Error(w, "no", http.StatusForbidden)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hook.Serve(ln)
	t.Cleanup(func() { hook.Close() })
	var stderr lockedBuffer
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMain$", "--", "serve", "--listen", "127.0.0.1:0",
		"--auth", "webhook:http://"+ln.Addr().String()+"/check", "--log-level", "error")
	cmd.Env = append(os.Environ(), "MEETPOINT_HELPER_MAIN=1")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	select {
	case <-probed: // starting: signal.Notify is in place, nothing reads signals yet
	case err := <-exited:
		exited <- err
		t.Fatalf("serve exited before its dependency check: %v %s", err, stderr.String())
	case <-time.After(relaytest.Patience):
		t.Fatal("serve did not check its webhook")
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// The SIGTERM follows once the kernel has handed the SIGHUP to the
	// process (no longer pending), so that it comes second.
	relaytest.WaitFor(t, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		if err != nil {
			return false
		}
		for l := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(l, "ShdPnd:"); ok {
				var pending uint64
				_, err := fmt.Sscanf(strings.TrimSpace(v), "%x", &pending)
				return err == nil && pending&(1<<(syscall.SIGHUP-1)) == 0
			}
		}
		return false
	}, "the SIGHUP delivered")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	close(release)
	select {
	case err := <-exited:
		exited <- err // for Cleanup
		if err != nil {
			t.Fatalf("serve: %v %s", err, stderr.String())
		}
	case <-time.After(relaytest.Patience):
		t.Fatal("SIGTERM after a SIGHUP during start was lost: serve still runs")
	}
}

// TestServePanicIsNotExit2: a panic that ends serve must not exit with
// status 2, the bad-configuration status the systemd unit is told never to
// restart on (RestartPreventExitStatus=2), as Go's runtime does by default:
// docs/operations.md promises that Restart= brings the process back. The
// serve runs in a process of its own (TestHelperMain), which panics on a
// goroutine of its own once serve has opened its groups.db, well after
// start-up set the traceback. (The panic was once bbolt's on a groups.db
// with a zeroed freelist page; that file is now set aside instead, and
// nothing in serve is known to panic.)
func TestServePanicIsNotExit2(t *testing.T) {
	dir := t.TempDir()
	var stderr lockedBuffer
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMain$", "--", "serve", "--listen", "127.0.0.1:0",
		"--data-dir", dir, "--log-level", "error")
	cmd.Env = append(os.Environ(), "MEETPOINT_HELPER_MAIN=1", "MEETPOINT_HELPER_PANIC_ON="+filepath.Join(dir, "groups.db"))
	cmd.Dir = dir // a core file, where core dumps are on, lands there
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(relaytest.Patience):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatal("serve neither panicked nor exited")
	}
	if !strings.Contains(stderr.String(), "panic: ") {
		t.Fatalf("serve ended without a panic: %s", stderr.String())
	}
	if code := cmd.ProcessState.ExitCode(); code == 2 {
		t.Fatalf("a panic exited with status 2, which systemd is told never to restart")
	}
}

// TestAdminCmdlineHidesCredentials: the admin listener's
// /debug/pprof/cmdline answers the process's command line, and passwords
// and keys in URLs given there are "used, never shown"
// (docs/security.md, "Secrets") as --print-config hides them; the rest
// of the command line stays readable.
func TestAdminCmdlineHidesCredentials(t *testing.T) {
	args := []string{"--admin-listen", "127.0.0.1:0",
		"--auth", "webhook:http://hookuser:PASSW0RD@127.0.0.1:1/check?key=QK3Y",
		"--events", "--events-redis=redis://:S3CRET@127.0.0.1:1/0"}
	saved := os.Args
	os.Args = append([]string{"meetpoint", "serve", "--listen", "127.0.0.1:0"}, args...) // what pprof reads
	t.Cleanup(func() { os.Args = saved })
	ts := startServe(t, args...)
	code, body := adminGet(t, ts, "/debug/pprof/cmdline")
	if code != 200 {
		t.Fatalf("/debug/pprof/cmdline: %d", code)
	}
	for _, secret := range []string{"PASSW0RD", "QK3Y", "S3CRET"} {
		if strings.Contains(body, secret) {
			t.Errorf("/debug/pprof/cmdline shows %s", secret)
		}
	}
	for _, kept := range []string{"meetpoint\x00serve\x00", "webhook:http://hookuser:xxxxx@127.0.0.1:1/check?", "--events-redis=redis://:xxxxx@127.0.0.1:1/0"} {
		if !strings.Contains(body, kept) {
			t.Errorf("/debug/pprof/cmdline leaves out %q", kept)
		}
	}
	if t.Failed() {
		t.Logf("%q", body)
	}
}

// TestAdminIdleConnectionClosed: a keep-alive connection to the admin
// listener that stays idle is closed after --http-idle-timeout ("close an
// idle keep-alive HTTP connection after this long"), as on the relay
// port; it was held, with its goroutine, for as long as the client
// liked.
func TestAdminIdleConnectionClosed(t *testing.T) {
	ts := startServe(t, "--admin-listen", "127.0.0.1:0", "--http-idle-timeout", "300ms")
	c, err := net.Dial("tcp", ts.started.admin.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle admin connection: %v, want it closed (EOF) after --http-idle-timeout", err)
	}
}

// TestServeSIGHUPNamesChangedKeyFiles: a file that a restart-only setting
// names (--admin-key-file, --tls-client-fingerprints, --mesh-key-file, …)
// is read at start only. An operator who rotates a leaked admin key, or
// removes a fingerprint, and runs `systemctl reload` must be told that the
// new contents are not in force, as for any other setting a restart puts
// in force: the path staying the same does not make it the same setting.
func TestServeSIGHUPNamesChangedKeyFiles(t *testing.T) {
	key := filepath.Join(t.TempDir(), "admin.key")
	os.WriteFile(key, []byte(strings.Repeat("ab", 32)+"\n"), 0o600)
	ts := startServe(t, "--events", "--admin-key-file", key, "--log-level", "info")
	os.WriteFile(key, []byte(strings.Repeat("cd", 32)+"\n"), 0o600) // rotated
	ts.sigs <- syscall.SIGHUP
	relaytest.WaitFor(t, func() bool { return strings.Contains(ts.logs.String(), "reloaded:") }, "the reload")
	if !strings.Contains(ts.logs.String(), `they are not in force" settings=admin-key-file`) {
		t.Errorf("the rotated --admin-key-file was not named as needing a restart:\n%s", ts.logs.String())
	}
	ts.sigs <- syscall.SIGHUP // unchanged since: the same warning, nothing more
	relaytest.WaitFor(t, func() bool { return strings.Count(ts.logs.String(), "reloaded:") == 2 }, "the second reload")
	if n := strings.Count(ts.logs.String(), "only a restart puts in force"); n != 2 {
		t.Errorf("%d restart warnings after two reloads, want 2:\n%s", n, ts.logs.String())
	}
}
