package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestHelperMain is not a test: with MEETPOINT_HELPER_MAIN set, the test
// binary runs meetpoint's main with the arguments after "--" (so a test can
// run the real CLI inside a network namespace without building it).
func TestHelperMain(t *testing.T) {
	if os.Getenv("MEETPOINT_HELPER_MAIN") == "" {
		t.Skip("helper process only")
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	if file := os.Getenv("MEETPOINT_HELPER_PANIC_ON"); file != "" {
		go func() { // TestServePanicIsNotExit2: a panic once serve made file
			for {
				if _, err := os.Stat(file); err == nil {
					panic("the test's panic: " + file + " exists")
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	os.Exit(run(args, os.Stdin, os.Stdout, os.Stderr))
}

// netns is a network namespace the test made.
type netns struct{ name, dev string }

// inNS returns a command running meetpoint ARGS inside ns.
func (n netns) meetpoint(args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name, os.Args[0], "-test.run=^TestHelperMain$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), "MEETPOINT_HELPER_MAIN=1")
	return cmd
}

// linkLocal waits for the kernel to give ns's device its link-local
// address (and for duplicate address detection to finish) and returns it.
func (n netns) linkLocal(t *testing.T) string {
	t.Helper()
	re := regexp.MustCompile(`inet6 (fe80::[0-9a-f:]+)/64 scope link`)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("ip", "-n", n.name, "-6", "addr", "show", "dev", n.dev).CombinedOutput()
		if m := re.FindSubmatch(out); m != nil && !strings.Contains(string(out), "tentative") {
			return string(m[1])
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no link-local address on %s in %s", n.dev, n.name)
	return ""
}

// ipSetup runs ip(8) with args to set up a test's namespaces. Setting up
// is the machine's business: where it refuses (a container without the
// capability, no veth module), the test skips saying why.
func ipSetup(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Skipf("this machine cannot set up the namespaces (ip %s: %v: %s)", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}

// twoNamespaces makes two network namespaces joined by a veth pair, as two
// machines joined by a cable: no addresses but the kernel's link-local ones.
func twoNamespaces(t *testing.T) (relayNS, clientNS netns) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no network namespaces")
	}
	if os.Geteuid() != 0 {
		t.Skip("creating network namespaces needs root (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip(8) (apt-get install iproute2)")
	}
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	relayNS, clientNS = netns{"mp-relay-" + id, "mpr" + id}, netns{"mp-client-" + id, "mpc" + id}
	sh := func(args ...string) { t.Helper(); ipSetup(t, args...) }
	for _, n := range []netns{relayNS, clientNS} {
		sh("netns", "add", n.name)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.name).Run() })
	}
	sh("link", "add", relayNS.dev, "type", "veth", "peer", "name", clientNS.dev)
	for _, n := range []netns{relayNS, clientNS} {
		sh("link", "set", n.dev, "netns", n.name)
		sh("-n", n.name, "link", "set", "lo", "up")
		sh("-n", n.name, "link", "set", n.dev, "up")
	}
	return relayNS, clientNS
}

// TestLinkLocalNamespaces: a relay in one namespace listening on its
// link-local address only, two clients in the other reaching it through
// the zone of their own interface — over plain TCP, WebSocket (RFC 6874's
// %25 in the URL), and TLS with client certificates (tls:// and wss://),
// where a client without a certificate is refused.
func TestLinkLocalNamespaces(t *testing.T) {
	rns, cns := twoNamespaces(t)
	relayAddr := rns.linkLocal(t)
	cns.linkLocal(t)
	dir := t.TempDir()
	ca := relaytest.Cert(t, "meetpoint test CA", nil, true)
	relaytest.WriteCert(t, ca, filepath.Join(dir, "ca.pem"), "")
	relaytest.WriteCert(t, relaytest.Cert(t, "server", &ca, false, net.ParseIP(relayAddr)),
		filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"))
	relaytest.WriteCert(t, relaytest.Cert(t, "client", &ca, false), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem"))

	start := func(args ...string) {
		t.Helper()
		srv := rns.meetpoint(append([]string{"serve", "--auth", "dummy", "--log-level", "warn"}, args...)...)
		srv.Stderr = testWriter{t, "relay"}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	}
	plainListen := fmt.Sprintf("[%s%%%s]:8443", relayAddr, rns.dev)
	tlsListen := fmt.Sprintf("[%s%%%s]:8444", relayAddr, rns.dev)
	start("--listen", plainListen)
	start("--listen", tlsListen, "--tls-cert", filepath.Join(dir, "server.pem"), "--tls-key", filepath.Join(dir, "server-key.pem"),
		"--tls-client-ca", filepath.Join(dir, "ca.pem"), "--tls-only")

	tlsArgs := []string{"--ca", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client-key.pem")}
	for _, c := range []struct {
		name, urlA, urlB string
		extra            []string
	}{
		{"tcp", fmt.Sprintf("tcp://[%s%%%s]:8443", relayAddr, cns.dev), fmt.Sprintf("tcp://[%s%%%s]:8443", relayAddr, cns.dev), nil},
		{"ws-and-tcp", fmt.Sprintf("ws://[%s%%25%s]:8443/", relayAddr, cns.dev), fmt.Sprintf("tcp://[%s%%%s]:8443", relayAddr, cns.dev), nil},
		{"tls-client-cert", fmt.Sprintf("tls://[%s%%%s]:8444", relayAddr, cns.dev), fmt.Sprintf("wss://[%s%%25%s]:8444/", relayAddr, cns.dev), tlsArgs},
	} {
		t.Run(c.name, func(t *testing.T) {
			waitServing(t, cns, c.urlB, c.extra)
			pairAndEcho(t, cns, c.name, c.urlA, c.urlB, c.extra)
		})
	}
	t.Run("tls-without-cert-refused", func(t *testing.T) {
		cmd := cns.meetpoint("client", "--url", fmt.Sprintf("tls://[%s%%%s]:8444", relayAddr, cns.dev), "--ca", filepath.Join(dir, "ca.pem"),
			"--token", "no-cert", "--timeout", "5s")
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("a client without a certificate got through: %s", out)
		}
	})
}

// waitServing waits until a relay answers Hello at url from ns.
func waitServing(t *testing.T, ns netns, url string, extra []string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var out []byte
	for time.Now().Before(deadline) {
		cmd := ns.meetpoint(append([]string{"client", "--url", url, "--hello", "--timeout", "2s"}, extra...)...)
		var err error
		if out, err = cmd.CombinedOutput(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("relay at %s not serving: %s", url, out)
}

// pairAndEcho runs two `meetpoint client`s in ns on one token and checks a
// line typed into each arrives at the other.
func pairAndEcho(t *testing.T, ns netns, token, urlA, urlB string, extra []string) {
	t.Helper()
	type end struct {
		cmd *exec.Cmd
		in  io.WriteCloser
		out *bufio.Reader
	}
	open := func(name, url string) end {
		cmd := ns.meetpoint(append([]string{"client", "--url", url, "--token", "ll-" + token, "--name", name, "--timeout", "20s"}, extra...)...)
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = testWriter{t, name}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return end{cmd, in, bufio.NewReader(out)}
	}
	a, b := open("a", urlA), open("b", urlB)
	expect := func(e end, want string) {
		t.Helper()
		got := make(chan string, 1)
		go func() { line, _ := e.out.ReadString('\n'); got <- line }()
		select {
		case line := <-got:
			if line != want {
				t.Fatalf("got %q, want %q", line, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("nothing arrived (waiting for %q)", want)
		}
	}
	fmt.Fprintf(a.in, "from a over %s\n", token)
	expect(b, "from a over "+token+"\n")
	fmt.Fprintf(b.in, "from b over %s\n", token)
	expect(a, "from b over "+token+"\n")
}

// testWriter logs a subprocess's stderr into the test log.
type testWriter struct {
	t    *testing.T
	name string
}

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s: %s", w.name, strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
