package meetpointjs_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/meetpoint/meetpoint/client"
	meetpointjs "github.com/meetpoint/meetpoint/client/js"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/events"
	"github.com/meetpoint/meetpoint/relay/relaytest"
	"github.com/meetpoint/meetpoint/relay/tunnelproxy"
)

// node finds Node.js ≥ 20.10 (for its WebSocket); tests skip without it
// unless MEETPOINT_REQUIRE_NODE is set (CI sets it).
func node(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the Node suite is skipped")
	}
	path, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("MEETPOINT_REQUIRE_NODE") != "" {
			t.Fatal("node not found and MEETPOINT_REQUIRE_NODE is set (apt-get install nodejs)")
		}
		t.Skip("node not found: apt-get install nodejs to run the JavaScript client's tests")
	}
	out, err := exec.Command(path, "--version").Output()
	var major, minor int
	if _, serr := fmt.Sscanf(string(out), "v%d.%d", &major, &minor); err != nil || serr != nil || major < 20 || (major == 20 && minor < 10) {
		msg := fmt.Sprintf("node %s is too old: the tests need Node ≥ 20.10 (its WebSocket)", strings.TrimSpace(string(out)))
		if os.Getenv("MEETPOINT_REQUIRE_NODE") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path
}

// channelRules grants the events channels dev-1 and all, and allows
// everything else.
type channelRules struct{}

func (channelRules) Allow(_ *relay.Identity, action, target string) (bool, string) {
	return action != relay.ActionEvents || target == "dev-1" || target == "all", "test"
}

// TestNodeSuite runs client/js/test with Node's test runner against a real
// relay (3 s alone timeout, tokens "bad-…" refused), with a TunnelProxy
// echo server registered on it.
func TestNodeSuite(t *testing.T) {
	nodeBin := node(t)
	s := relaytest.New(t, func(c *relay.Config) {
		c.Auth = relaytest.RefuseBad{}
		c.AloneTimeout = 3 * time.Second // the no_partner test waits it out; pairs must never race it
		c.Access = channelRules{}        // the tokens have no subject: the subscribe test's channels by rule
	})
	if _, err := tunnelproxy.New(s, tunnelproxy.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	ev, err := events.New(s, events.Config{AdminKey: "js-admin"})
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	relaytest.Start(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	serverUUID := client.NewUUID()
	srv, err := client.RegisterTPServer(ctx, client.TPOptions{URL: relaytest.WSURL(s), Name: "echo", UUID: serverUUID})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	args := []string{"--experimental-websocket", "--test", "--test-reporter=spec"}
	if p := os.Getenv("MEETPOINT_JS_TESTS"); p != "" { // a name pattern, to run some
		args = append(args, "--test-name-pattern="+p)
	}
	cmd := exec.CommandContext(ctx, nodeBin, append(args, "test/")...)
	cmd.Env = append(os.Environ(),
		"MEETPOINT_WS="+relaytest.WSURL(s),
		"MEETPOINT_TCP="+relaytest.Addr(s),
		"MEETPOINT_TP_SERVER="+serverUUID,
		"MEETPOINT_HTTP=http://"+relaytest.Addr(s),
		"MEETPOINT_ADMIN=js-admin",
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatalf("node --test: %v", err)
	}
	// The runner must have run the suite, not zero tests.
	if m := regexp.MustCompile(`(?m)^ℹ pass (\d+)`).FindStringSubmatch(out.String()); m == nil || m[1] == "0" {
		t.Fatalf("node ran no passing test")
	}
}

// TestNodeWebSocketFlag: imported by a Node without a WebSocket (Node 20
// and 21 without --experimental-websocket), the module says so at once,
// with the flag to use; with it, or on Node 22+, it says nothing.
func TestNodeWebSocketFlag(t *testing.T) {
	nodeBin := node(t)
	script := `const m = await import("./meetpoint.js");
try { await m.pair({url: "ws://127.0.0.1:1/", token: "t"}); } catch (e) { console.log("pair: " + e.message); }`
	run := func(flags ...string) string {
		out, err := exec.Command(nodeBin, append(flags, "--input-type=module", "-e", script)...).CombinedOutput()
		if err != nil {
			t.Fatalf("node %v: %v\n%s", flags, err, out)
		}
		return string(out)
	}
	const hint = "run it with --experimental-websocket"
	without := run()
	if v, _ := exec.Command(nodeBin, "-p", "typeof WebSocket").Output(); strings.TrimSpace(string(v)) == "undefined" {
		if !strings.Contains(without, "meetpoint: Node ") || !strings.Contains(without, hint) ||
			!strings.Contains(without, "pair: Node ") {
			t.Errorf("a Node without WebSocket: the import and pair() should say %q:\n%s", hint, without)
		}
	} else if strings.Contains(without, hint) {
		t.Errorf("a Node with a WebSocket got the hint:\n%s", without)
	}
	if with := run("--experimental-websocket"); strings.Contains(with, hint) {
		t.Errorf("--experimental-websocket still got the hint:\n%s", with)
	}
}

// TestVersionTied checks the module's VERSION against package.json, so a
// release bumps both.
func TestVersionTied(t *testing.T) {
	var pkg struct{ Version string }
	if err := json.Unmarshal(meetpointjs.PackageJSON, &pkg); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(meetpointjs.Module, []byte(`export const VERSION = "`+pkg.Version+`";`)) {
		t.Fatalf("meetpoint.js VERSION is not package.json's %q", pkg.Version)
	}
	if len(meetpointjs.Types) == 0 {
		t.Fatal("no type declarations embedded")
	}
}

// TestNPMPackage: npm accepts the package and ships exactly the module,
// its types, the README and the manifest (not the Go files or tests).
func TestNPMPackage(t *testing.T) {
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm not found")
	}
	out, err := exec.Command(npm, "pack", "--dry-run", "--json", "--ignore-scripts").Output()
	if err != nil {
		t.Fatalf("npm pack: %v", err)
	}
	var packs []struct {
		Name, Version string
		Files         []struct{ Path string }
	}
	if err := json.Unmarshal(out, &packs); err != nil || len(packs) != 1 {
		t.Fatalf("npm pack --json: %v %s", err, out)
	}
	var files []string
	for _, f := range packs[0].Files {
		files = append(files, f.Path)
	}
	sort.Strings(files)
	if got := strings.Join(files, " "); got != "README.md meetpoint.d.ts meetpoint.js package.json" || packs[0].Name != "meetpoint" {
		t.Fatalf("npm package %s@%s ships %s", packs[0].Name, packs[0].Version, got)
	}
	// The README's install from a clone, offline, and an import of it.
	here, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	app := t.TempDir()
	install := exec.Command(npm, "install", "--offline", "--no-audit", "--no-fund", here)
	install.Dir = app
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm install %s: %v\n%s", here, err, out)
	}
	imp := exec.Command(node(t), "--experimental-websocket", "--input-type=module", "-e", `console.log((await import("meetpoint")).VERSION)`)
	imp.Dir = app
	if out, err := imp.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != packs[0].Version {
		t.Fatalf("import the installed package: %v %q", err, out)
	}
}

// TestNodeMalformedRelay: a relay (or something posing as one) that
// sends JSON that is no object (null, a number) breaks the protocol:
// pair() and subscribe() reject with "protocol", and a subscription skips
// such a message. They once read a field of the parsed null inside the
// WebSocket's message handler; the TypeError escaped it, which kills a
// Node process (an uncaught exception from an EventTarget listener) and,
// in a browser, left the promise pending for good.
func TestNodeMalformedRelay(t *testing.T) {
	nodeBin := node(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The relay answers each message by the URL's path: /null with null,
	// /number with 42, /sub with a subscription's success, then null, then
	// an event.
	answers := map[string][]string{
		"/null":   {"null"},
		"/number": {"42"},
		"/sub": {`{"id":0,"status":"success","params":{"authenticationError":"AuthenticationErrorNoError","channels":["c"]}}`,
			"null", `{"id":0,"notification":"Events.Event","params":{"channel":"c","data":"after"}}`},
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var path string
				u := ws.Upgrader{OnRequest: func(uri []byte) error { path = string(uri); return nil }}
				if _, err := u.Upgrade(c); err != nil {
					return
				}
				if _, _, err := wsutil.ReadClientData(c); err != nil {
					return
				}
				for _, a := range answers[path] {
					if err := wsutil.WriteServerText(c, []byte(a+"\n")); err != nil {
						return
					}
				}
				_, _, _ = wsutil.ReadClientData(c) // until the client goes
			}()
		}
	}()
	script := `const m = await import("./meetpoint.js");
const url = "ws://` + ln.Addr().String() + `";
for (const [what, p] of [
  ["pair", () => m.pair({url: url + "/null", token: "t", timeout: 5000})],
  ["pair-number", () => m.pair({url: url + "/number", token: "t", hello: false, timeout: 5000})],
  ["subscribe", () => m.subscribe({url: url + "/null", token: "t", channels: ["c"], timeout: 5000})],
]) {
  try { await p(); console.log(what + ": resolved"); } catch (e) { console.log(what + ": " + e.code); }
}
const s = await m.subscribe({url: url + "/sub", token: "t", channels: ["c"], hello: false, timeout: 5000});
const ev = await new Promise((resolve) => s.addEventListener("event", (e) => resolve(e.detail), { once: true }));
console.log("event: " + ev.data);
await s.close();`
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, nodeBin, "--experimental-websocket", "--input-type=module", "-e", script).CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "pair: protocol\npair-number: protocol\nsubscribe: protocol\nevent: after"; got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}
