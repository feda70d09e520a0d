package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
	"github.com/meetpoint/meetpoint/relay/wamp"
)

// fleetNode is a `meetpoint serve --fleet` process.
type fleetNode struct {
	addr string
	cmd  *exec.Cmd
}

// startFleetNode runs meetpoint serve as a process joined to the fleet on
// redisAddr.
func startFleetNode(t *testing.T, redisAddr, id, keyFile string) *fleetNode {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMain$", "--", "serve", "--listen", addr,
		"--fleet", "redis://"+redisAddr+"/0", "--node-id", id, "--mesh-key-file", keyFile, "--log-level", "warn")
	cmd.Env = append(os.Environ(), "MEETPOINT_HELPER_MAIN=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	relaytest.WaitFor(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, id+" listening")
	return &fleetNode{addr: addr, cmd: cmd}
}

// meshKey writes a fleet mesh key (meetpoint token --gen-key) and returns
// its file.
func meshKey(t *testing.T) string {
	t.Helper()
	key := filepath.Join(t.TempDir(), "mesh.key")
	if code := run([]string{"token", "--gen-key", key}, nil, io.Discard, io.Discard); code != 0 {
		t.Fatal("gen-key failed")
	}
	return key
}

// TestFleetProcessKilled: three `meetpoint serve --fleet` processes; one is
// killed with SIGKILL while tunnels run through the others. Only its own
// tunnels end; a key it held (a client waiting there) is not a ghost: once
// its heartbeat has expired, the token pairs on the survivors.
func TestFleetProcessKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts three relay processes and waits for a heartbeat to expire")
	}
	redis := relaytest.Redis(t)
	key := meshKey(t)
	a := startFleetNode(t, redis, "kill-a", key)
	b := startFleetNode(t, redis, "kill-b", key)
	c := startFleetNode(t, redis, "kill-c", key)
	time.Sleep(2500 * time.Millisecond) // one heartbeat: every node sees the others

	pair := func(x, y *fleetNode, token string) (*client.Tunnel, *client.Tunnel) {
		t.Helper()
		first := make(chan *client.Tunnel, 1)
		go func() {
			tu, err := client.Dial(context.Background(), client.Options{URL: "tcp://" + x.addr, Token: token, Timeout: 10 * time.Second})
			if err != nil {
				t.Error(err)
			}
			first <- tu
		}()
		time.Sleep(200 * time.Millisecond) // the first end waits on x
		ty, err := client.Dial(context.Background(), client.Options{URL: "tcp://" + y.addr, Token: token, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("%s: %v", token, err)
		}
		tx := <-first
		if tx == nil {
			t.FailNow()
		}
		t.Cleanup(func() { tx.Close(); ty.Close() })
		return tx, ty
	}
	roundTrip := func(x, y *client.Tunnel, what string) {
		t.Helper()
		if _, err := x.Write([]byte(what)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(what))
		_ = y.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(y, got); err != nil || string(got) != what {
			t.Fatalf("%s: read %q, %v", what, got, err)
		}
	}
	s1, s2 := pair(b, c, "kill-survives")
	d1, d2 := pair(a, b, "kill-doomed")
	roundTrip(d1, d2, "before")
	ghost := make(chan error, 1)
	go func() {
		_, err := client.Dial(context.Background(), client.Options{URL: "tcp://" + a.addr, Token: "kill-ghost", Timeout: 20 * time.Second})
		ghost <- err
	}()
	time.Sleep(300 * time.Millisecond) // kill-ghost is held by a now

	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Wait()
	_ = d2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := d2.Read(make([]byte, 1)); err == nil {
		t.Error("the tunnel through the killed node lives on")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("the killed node's partner was not told (read timed out)")
	}
	if err := <-ghost; err == nil {
		t.Error("the killed node's waiting client was paired")
	}
	roundTrip(s1, s2, "survivor a→b")
	roundTrip(s2, s1, "survivor b→a")
	// kill-ghost is still in Redis, owned by the dead node: the next
	// client finds nothing listening there and takes the key over.
	deadline := time.Now().Add(15 * time.Second)
	for {
		x, y, err := client.DialPair(context.Background(),
			client.Options{URL: "tcp://" + b.addr, Token: "kill-ghost", Timeout: 5 * time.Second},
			client.Options{URL: "tcp://" + c.addr, Token: "kill-ghost", Timeout: 5 * time.Second})
		if err == nil {
			roundTrip(x, y, "after the death")
			x.Close()
			y.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dead node's key never freed: %v", err)
		}
		t.Logf("the dead node's key is not free yet: %v", err)
		time.Sleep(time.Second)
	}
}

// TestFleetDiscovery: two `meetpoint serve --fleet` processes on one
// Redis serve one set of groups and one signalling router: a group
// created on one is read on the other, and a procedure registered on one
// answers a call made on the other.
func TestFleetDiscovery(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts two relay processes")
	}
	redis := relaytest.Redis(t)
	key := meshKey(t)
	a := startFleetNode(t, redis, "disc-a", key)
	b := startFleetNode(t, redis, "disc-b", key)
	var id string
	httpJSON(t, "POST", "http://"+a.addr+"/group", `{"AppID":"chat","Name":"fleet-wide"}`, 201, &id)
	var g struct{ Name string }
	httpJSON(t, "GET", "http://"+b.addr+"/groups/"+id, "", 200, &g)
	if g.Name != "fleet-wide" {
		t.Fatalf("node b reads %+v", g)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	callee, err := wamp.Dial(ctx, "ws://"+a.addr+"/", "main", "")
	if err != nil {
		t.Fatal(err)
	}
	defer callee.Close()
	if err := callee.Register(ctx, "0X04A11CE", func(args []json.RawMessage) ([]any, error) {
		return []any{"answer to " + string(args[0])}, nil
	}); err != nil {
		t.Fatal(err)
	}
	caller, err := wamp.Dial(ctx, "ws://"+b.addr+"/", "main", "")
	if err != nil {
		t.Fatal(err)
	}
	defer caller.Close()
	res, err := caller.Call(ctx, "0X04A11CE", "0X04B0B", `{"type":"offer"}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || string(res[0]) != `"answer to \"0X04B0B\""` {
		t.Fatalf("a call across nodes returned %s", res)
	}
}

// TestServeMeshLivenessFlags: --mesh-ping, --mesh-lost-after,
// --mesh-source-ips and --mesh-tls reach the fleet (defaults 2s and 15s: a lost node's
// tunnels end within 17s); a lost time shorter than two pings and a
// source that is no IP are refused.
func TestServeMeshLivenessFlags(t *testing.T) {
	key := meshKey(t)
	base := []string{"--listen", "127.0.0.1:0", "--fleet", "redis://127.0.0.1:1/0", "--mesh-key-file", key, "--node-id", "n"}
	var stderr bytes.Buffer
	o, code := parseServeOptions(base, nil, io.Discard, io.Discard, &stderr)
	if code >= 0 || o.fleet.ping != 2*time.Second || o.fleet.lost != 15*time.Second {
		t.Fatalf("defaults: code %d %q, fleet %+v", code, stderr.String(), o.fleet)
	}
	o, code = parseServeOptions(append(base, "--mesh-ping", "1s", "--mesh-lost-after", "5s", "--mesh-source-ips", "127.0.0.2", "--mesh-source-ips", "::1"),
		nil, io.Discard, io.Discard, &stderr)
	if code >= 0 || o.fleet.ping != time.Second || o.fleet.lost != 5*time.Second || len(o.fleet.src) != 2 || o.fleet.src[1].String() != "::1" {
		t.Fatalf("set: code %d %q, fleet %+v", code, stderr.String(), o.fleet)
	}
	stderr.Reset()
	if _, code := parseServeOptions(append(base, "--mesh-ping", "3s", "--mesh-lost-after", "5s"), nil, io.Discard, io.Discard, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "mesh-lost-after") {
		t.Errorf("a lost time under two pings: code %d %q", code, stderr.String())
	}
	stderr.Reset()
	if _, code := parseServeOptions(append(base, "--mesh-source-ips", "eth0"), nil, io.Discard, io.Discard, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "mesh-source-ips") {
		t.Errorf("a source address that is no IP: code %d %q", code, stderr.String())
	}
	// --mesh-tls serves TLS (self-signed here), whose certificate the
	// other nodes pin (TestMeshOverTLS); not without a fleet, nor with a
	// client-certificate policy the mesh links could not meet.
	if o, code := parseServeOptions(append(base, "--mesh-tls"), nil, io.Discard, io.Discard, &stderr); code >= 0 || !o.cfg.TLSEnabled() || o.cfg.TLSOnly {
		t.Errorf("--mesh-tls: code %d, TLS %v, TLS only %v", code, o.cfg.TLSEnabled(), o.cfg.TLSOnly)
	}
	for _, args := range [][]string{{"--listen", "127.0.0.1:0", "--mesh-tls"}, append(base, "--mesh-tls", "--tls-client-ca", key)} {
		stderr.Reset()
		if _, code := parseServeOptions(args, nil, io.Discard, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "mesh-tls") {
			t.Errorf("%v: code %d %q", args, code, stderr.String())
		}
	}
}
