package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gdamore/tcell/v2"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/ops"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

func TestMonitorCommandJSON(t *testing.T) {
	mon := filepath.Join(t.TempDir(), "mon.sock")
	ts := startServe(t, "--monitor", mon, "--name", "mon-cmd", "--log-level", "error")
	a, b := pairTunnel(t, ts.addr(), "monitor-json")
	echo(t, a, b, strings.Repeat("m", 1000))

	var out, errb bytes.Buffer
	if code := runMonitor([]string{"--socket", mon, "--json"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var st ops.MonitorStatus
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if st.Name != "mon-cmd" || len(st.Tunnels) != 1 || st.Tunnels[0].BytesAB+st.Tunnels[0].BytesBA < 1000 || !st.Ready {
		t.Fatalf("status %s", out.String())
	}

	errb.Reset()
	if code := runMonitor([]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "--json"}, &out, &errb); code != 1 ||
		strings.Count(errb.String(), "\n") != 1 {
		t.Fatalf("missing socket: %d %q", code, errb.String())
	}
	if code := runMonitor([]string{"--interval", "1ms"}, &out, &errb); code != 2 {
		t.Fatalf("bad interval: %d", code)
	}
	out.Reset()
	if code := runMonitor([]string{"-h"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "-socket") {
		t.Fatalf("monitor -h: %d %q", code, out.String())
	}
}

// snapScreen records the rows of a simulation screen each time the view
// shows it (in the view's goroutine: the simulation screen's cells are not
// safe to read from another).
type snapScreen struct {
	tcell.SimulationScreen
	mu   sync.Mutex
	rows []string
}

func newSnapScreen(t *testing.T, w, h int) *snapScreen {
	sim := tcell.NewSimulationScreen("UTF-8")
	if err := sim.Init(); err != nil {
		t.Fatal(err)
	}
	sim.SetSize(w, h)
	t.Cleanup(sim.Fini)
	return &snapScreen{SimulationScreen: sim}
}

func (s *snapScreen) Show() {
	s.SimulationScreen.Show()
	rows := screenText(s.SimulationScreen)
	s.mu.Lock()
	s.rows = rows
	s.mu.Unlock()
}

func (s *snapScreen) text() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.rows...)
}

// screenText returns the simulation screen's rows.
func screenText(s tcell.SimulationScreen) []string {
	cells, w, h := s.GetContents()
	rows := make([]string, h)
	for y := 0; y < h; y++ {
		var sb strings.Builder
		for x := 0; x < w; x++ {
			r := cells[y*w+x].Runes
			if len(r) == 0 {
				sb.WriteByte(' ')
			} else {
				sb.WriteString(string(r))
			}
		}
		rows[y] = strings.TrimRight(sb.String(), " ")
	}
	return rows
}

func TestMonitorTerminalView(t *testing.T) {
	mon := filepath.Join(t.TempDir(), "mon.sock")
	ts := startServe(t, "--monitor", mon, "--name", "tui", "--log-level", "error")
	a, b := pairTunnel(t, ts.addr(), "monitor-tui")
	_, _ = pairTunnel(t, ts.addr(), "monitor-tui-idle")
	mc, err := dialMonitor(mon)
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()

	screen := newSnapScreen(t, 120, 30)
	var fetches atomic.Int32
	fetch := func() (ops.MonitorStatus, error) {
		fetches.Add(1)
		return mc.fetch()
	}
	done := make(chan error, 1)
	go func() { done <- monitorUI(screen, fetch, 150*time.Millisecond, 0) }()

	// Traffic on one tunnel makes it the busiest: it is listed first.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := a.Write(bytes.Repeat([]byte("x"), 4096)); err != nil {
				return
			}
			buf := make([]byte, 4096)
			if _, err := b.Read(buf); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	defer close(stop)

	var rows []string
	deadline := time.Now().Add(relaytest.Patience)
	for {
		time.Sleep(100 * time.Millisecond)
		rows = screen.text()
		text := strings.Join(rows, "\n")
		if fetches.Load() >= 3 && strings.Contains(text, "tunnels 2 active") && tableFirstBusy(rows) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("screen never showed the busy tunnel first:\n%s", text)
		}
	}
	t.Logf("screen:\n%s", strings.Join(rows, "\n"))
	if !strings.HasPrefix(rows[0], "meetpoint tui") || !strings.Contains(rows[len(rows)-1], "q: quit") {
		t.Fatalf("header/footer:\n%s", strings.Join(rows, "\n"))
	}

	screen.InjectKey(tcell.KeyRune, 'q', tcell.ModNone)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("q did not quit")
	}
}

// tableFirstBusy reports whether the first tunnel row shows a non-zero rate.
func tableFirstBusy(rows []string) bool {
	for i, r := range rows {
		if strings.HasPrefix(r, "TUNNEL") && i+1 < len(rows) {
			f := strings.Fields(rows[i+1])
			return len(f) > 3 && f[2] != "0" && strings.HasSuffix(f[3], "/s") && f[2]+" "+f[3] != "0 B/s"
		}
	}
	return false
}

func TestMonitorViewErrorsAndKeys(t *testing.T) {
	screen := newSnapScreen(t, 80, 10)
	done := make(chan error, 1)
	go func() {
		done <- monitorUI(screen, func() (ops.MonitorStatus, error) {
			return ops.MonitorStatus{}, errors.New("relay gone")
		}, 100*time.Millisecond, 0)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(strings.Join(screen.text(), "\n"), "relay gone") {
		if time.Now().After(deadline) {
			t.Fatal("error not shown")
		}
		time.Sleep(20 * time.Millisecond)
	}
	screen.InjectKey(tcell.KeyEscape, 0, tcell.ModNone)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Esc did not quit")
	}
}

func TestHumanBytes(t *testing.T) {
	for in, want := range map[float64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536 * 1024: "1.5 MiB"} {
		if got := humanBytes(in); got != want {
			t.Errorf("humanBytes(%v) = %q, want %q", in, got, want)
		}
	}
}

// TestMonitorFleetLine: the monitor names the node set, the store's state
// and the cross-node tunnels (a B end that is a mesh link, on the dialling
// node, or a mesh link's client, on the owner).
func TestMonitorFleetLine(t *testing.T) {
	fl := &relay.FleetInfo{Node: "relay-a", Available: true, MeshLinks: 1,
		Nodes: []relay.FleetNode{{ID: "relay-a", Tunnels: 2}, {ID: "relay-b", Tunnels: 1}}}
	tunnels := []ops.MonitorTunnel{
		{B: relay.ClientInfo{Address: "mesh relay-b 10.0.0.12:443"}},
		{B: relay.ClientInfo{Address: "10.0.0.12:51000", Identity: "via relay-b (anonymous)"}},
		{B: relay.ClientInfo{Address: "192.0.2.7:4000", Identity: "anonymous"}},
	}
	got := fleetLine(fl, tunnels)
	for _, want := range []string{"fleet node relay-a", "store ok", "nodes 2: relay-a(2) relay-b(1)", "cross-node tunnels 2", "mesh links 1"} {
		if !strings.Contains(got, want) {
			t.Errorf("fleet line %q lacks %q", got, want)
		}
	}
	fl.Available = false
	if got := fleetLine(fl, nil); !strings.Contains(got, "STORE UNREACHABLE") {
		t.Errorf("an unreachable store is not shown: %q", got)
	}
}

// TestMonitorConnResyncs: an answer that arrives after the client gave up
// on it must not be read as the answer to the next request. The fake
// monitor sends half of its first answer, stalls past the client's
// deadline, then sends the rest; the client's next fetch must dial afresh
// and parse a whole answer (the old client read the stale tail: "bad
// status from the relay: invalid character '}'").
func TestMonitorConnResyncs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	gaveUp := make(chan struct{})
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn, first bool) {
				defer c.Close()
				buf := make([]byte, 512)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					if first {
						first = false
						_, _ = c.Write([]byte(`{"serverName":"stale",`))
						<-gaveUp
						_, _ = c.Write([]byte(`"ready":true}` + "\n"))
						continue
					}
					_, _ = c.Write([]byte(`{"serverName":"fresh","ready":true}` + "\n"))
				}
			}(c, n == 0)
		}
	}()
	mc, err := dialMonitor(path)
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	mc.timeout = 100 * time.Millisecond
	if _, err := mc.fetch(); err == nil {
		t.Fatal("the first fetch succeeded on half an answer")
	}
	close(gaveUp)
	mc.timeout = relaytest.Patience
	st, err := mc.fetch()
	if err != nil {
		t.Fatalf("the fetch after a timed-out one: %v", err)
	}
	if st.Name != "fresh" {
		t.Fatalf("got the answer of %q, want a fresh one", st.Name)
	}
}

// TestMonitorWaitingCount: "waiting" counts the clients waiting for their
// partner, not events subscribers nor connections still authenticating.
func TestMonitorWaitingCount(t *testing.T) {
	var st ops.MonitorStatus
	if err := json.Unmarshal([]byte(`{"serverName":"w","ready":true,"clients":[
		{"id":1,"authenticated":true,"subscribed":true},
		{"id":2,"authenticated":true,"name":"alone"},
		{"id":3,"authenticated":false}]}`), &st); err != nil {
		t.Fatal(err)
	}
	v := &monitorView{interval: time.Second}
	v.update(st, nil, time.Now())
	text := strings.Join(v.lines(20), "\n")
	if !strings.Contains(text, "waiting 1\n") {
		t.Fatalf("the view does not say waiting 1:\n%s", text)
	}
}

// TestMonitorNegativeTopIsBadUsage: --top -1 is bad usage (exit 2, one
// line naming the flag), as a too short --interval is; it was taken as
// "as many as fit" (0) and the command went on to dial the socket (exit 1
// here, where none listens).
func TestMonitorNegativeTopIsBadUsage(t *testing.T) {
	var out, errb bytes.Buffer
	sock := filepath.Join(t.TempDir(), "none.sock")
	if code := runMonitor([]string{"--socket", sock, "--top", "-1"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "top") {
		t.Fatalf("--top -1: exit %d %q, want 2 naming --top", code, errb.String())
	}
}
