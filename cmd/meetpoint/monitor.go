package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/gdamore/tcell/v2"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/ops"
)

// defaultMonitorSocket is where the systemd unit puts the monitor socket.
const defaultMonitorSocket = "/run/meetpoint/monitor.sock"

// monitorSettings are the monitor command's flags.
type monitorSettings struct {
	socket   string
	interval time.Duration
	json     bool
	rows     int
}

func monitorFlags() (*flag.FlagSet, *monitorSettings) {
	v := &monitorSettings{}
	fs := flag.NewFlagSet("monitor", flag.ContinueOnError)
	fs.StringVar(&v.socket, "socket", defaultMonitorSocket, "monitor socket of the relay (serve --monitor `PATH`)")
	fs.DurationVar(&v.interval, "interval", time.Second, "refresh interval")
	fs.BoolVar(&v.json, "json", false, "print one status as JSON and exit (no terminal view)")
	fs.IntVar(&v.rows, "top", 0, "tunnels to list (0: as many as fit)")
	return fs, v
}

// runMonitor shows a live view of a relay through its monitor socket.
func runMonitor(args []string, stdout, stderr io.Writer) int {
	fs, v := monitorFlags()
	if code := parseFlags(fs, args, stdout, stderr); code >= 0 {
		return code
	}
	if v.interval < 100*time.Millisecond {
		fmt.Fprintf(stderr, "meetpoint monitor: interval: must be at least 100ms, got %v\n", v.interval)
		return 2
	}
	if v.rows < 0 {
		fmt.Fprintf(stderr, "meetpoint monitor: top: must be 0 (as many as fit) or more, got %d\n", v.rows)
		return 2
	}
	mc, err := dialMonitor(v.socket)
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint monitor: %v\n", err)
		return 1
	}
	defer mc.Close()
	if v.json {
		raw, err := mc.fetchRaw()
		if err != nil {
			fmt.Fprintf(stderr, "meetpoint monitor: %v\n", err)
			return 1
		}
		stdout.Write(raw)
		return 0
	}
	screen, err := tcell.NewScreen()
	if err == nil {
		err = screen.Init()
	}
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint monitor: terminal: %v (use --json without a terminal)\n", err)
		return 1
	}
	err = monitorUI(screen, mc.fetch, v.interval, v.rows)
	screen.Fini()
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint monitor: %v\n", err)
		return 1
	}
	return 0
}

// monitorConn is a request/response connection to a monitor socket.
// Answers are matched to requests by order only, so after any error
// (a deadline that struck mid-answer leaves the rest of that answer
// unread) the connection is dropped and the next fetch dials afresh:
// a late half-answer is never read as the next one.
type monitorConn struct {
	path    string
	timeout time.Duration // per exchange; 5 s, shorter in tests
	c       net.Conn      // nil after an error, until the next fetch redials
	r       *bufio.Reader
}

func dialMonitor(path string) (*monitorConn, error) {
	m := &monitorConn{path: path, timeout: 5 * time.Second}
	if err := m.dial(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *monitorConn) dial() error {
	c, err := net.DialTimeout("unix", m.path, 5*time.Second)
	if err != nil {
		return err
	}
	m.c, m.r = c, bufio.NewReaderSize(c, 64<<10)
	return nil
}

// Close closes the connection.
func (m *monitorConn) Close() error {
	if m.c == nil {
		return nil
	}
	return m.c.Close()
}

// fetchRaw asks for a status and returns the answer line.
func (m *monitorConn) fetchRaw() ([]byte, error) {
	if m.c == nil {
		if err := m.dial(); err != nil {
			return nil, err
		}
	}
	line, err := m.exchange()
	if err != nil {
		_ = m.c.Close()
		m.c, m.r = nil, nil
	}
	return line, err
}

func (m *monitorConn) exchange() ([]byte, error) {
	_ = m.c.SetDeadline(time.Now().Add(m.timeout))
	if _, err := io.WriteString(m.c, `{"method":"meetpoint.status"}`+"\n"); err != nil {
		return nil, err
	}
	line, err := m.r.ReadBytes('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the relay closed the monitor connection")
		}
		return nil, err
	}
	return line, nil
}

func (m *monitorConn) fetch() (ops.MonitorStatus, error) {
	var st ops.MonitorStatus
	line, err := m.fetchRaw()
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(line, &st); err != nil {
		return st, fmt.Errorf("bad status from the relay: %w", err)
	}
	return st, nil
}

// monitorUI runs the terminal view on screen until q (or Esc, Ctrl-C) is
// pressed, fetching a status every interval.
func monitorUI(screen tcell.Screen, fetch func() (ops.MonitorStatus, error), interval time.Duration, rows int) error {
	view := &monitorView{rows: rows, interval: interval}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	refresh := func() {
		st, err := fetch()
		view.update(st, err, time.Now())
		view.draw(screen)
	}
	refresh()
	events := make(chan tcell.Event, 16)
	quit := make(chan struct{})
	defer close(quit)
	go screen.ChannelEvents(events, quit)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			switch ev := ev.(type) {
			case *tcell.EventKey:
				if ev.Key() == tcell.KeyEscape || ev.Key() == tcell.KeyCtrlC ||
					(ev.Key() == tcell.KeyRune && (ev.Rune() == 'q' || ev.Rune() == 'Q')) {
					return nil
				}
			case *tcell.EventResize:
				screen.Sync()
				view.draw(screen)
			}
		case <-tick.C:
			refresh()
		}
	}
}

// monitorView turns successive statuses into screen lines, computing rates
// from the difference between the last two.
type monitorView struct {
	rows     int
	interval time.Duration
	cur      ops.MonitorStatus
	err      error
	at       time.Time
	prev     map[string]uint64 // row key → bytes both ways at the last update
	rates    map[string]float64
	have     bool
}

// monitorRow is one line of the busiest list: a tunnel or a TunnelProxy

// fleetLine is the monitor's line about the node's fleet.
func fleetLine(fl *relay.FleetInfo, tunnels []ops.MonitorTunnel) string {
	store := "store ok"
	if !fl.Available {
		store = "STORE UNREACHABLE (cross-node pairing refused)"
	}
	cross := 0
	for _, t := range tunnels {
		if strings.HasPrefix(t.B.Address, "mesh ") || strings.HasPrefix(t.B.Identity, "via ") {
			cross++
		}
	}
	nodes := make([]string, 0, len(fl.Nodes))
	for _, n := range fl.Nodes {
		nodes = append(nodes, fmt.Sprintf("%s(%d)", n.ID, n.Tunnels))
	}
	return fmt.Sprintf("fleet node %s, %s   nodes %d: %s   cross-node tunnels %d, mesh links %d",
		fl.Node, store, len(fl.Nodes), strings.Join(nodes, " "), cross, fl.MeshLinks)
}

// server with its clients.
type monitorRow struct {
	key     string
	id      string
	started time.Time // zero when unknown
	path    string
	total   uint64
	a, b    string
}

func monitorRows(st ops.MonitorStatus) []monitorRow {
	rows := make([]monitorRow, 0, len(st.Tunnels)+len(st.TPServers))
	for _, t := range st.Tunnels {
		path := "buffer"
		if t.Splice {
			path = "splice"
		}
		rows = append(rows, monitorRow{key: fmt.Sprint("t", t.ID), id: fmt.Sprint(t.ID), started: t.Started, path: path,
			total: t.BytesAB + t.BytesBA, a: endpointLabel(t.A.Address, t.A.Name, t.A.Transport), b: endpointLabel(t.B.Address, t.B.Name, t.B.Transport)})
	}
	for _, h := range st.TPServers {
		total := h.RxBytes + h.TxBytes
		for _, c := range h.Clients {
			total += c.RxBytes + c.TxBytes
		}
		id := h.UUID
		if len(id) > 8 {
			id = id[:8]
		}
		rows = append(rows, monitorRow{key: "s" + h.UUID, id: id, path: "tproxy", total: total,
			a: endpointLabel(h.Address, h.Name, ""), b: fmt.Sprintf("%d clients", len(h.Clients))})
	}
	return rows
}

func (v *monitorView) update(st ops.MonitorStatus, err error, now time.Time) {
	v.err = err
	if err != nil {
		return
	}
	dt := now.Sub(v.at).Seconds()
	rows := monitorRows(st)
	rates := make(map[string]float64, len(rows))
	next := make(map[string]uint64, len(rows))
	for _, r := range rows {
		next[r.key] = r.total
		if old, ok := v.prev[r.key]; ok && dt > 0 && r.total >= old {
			rates[r.key] = float64(r.total-old) / dt
		}
	}
	v.prev, v.rates, v.at, v.cur, v.have = next, rates, now, st, true
}

// lines renders the view for a screen of the given height.
func (v *monitorView) lines(height int) []string {
	var out []string
	add := func(f string, a ...any) { out = append(out, fmt.Sprintf(f, a...)) }
	if !v.have {
		if v.err != nil {
			add("meetpoint monitor: %v", v.err)
		} else {
			add("meetpoint monitor: waiting for the relay…")
		}
		add("")
		add("q: quit")
		return out
	}
	st := v.cur
	state := "ready"
	if !st.Ready {
		state = "DRAINING"
	}
	add("meetpoint %s  %s  %s  %s", st.Name, st.Version, state, st.Time.Local().Format("15:04:05"))
	if v.err != nil {
		add("! %v (showing the last status)", v.err)
	}
	s := st.Stats
	tpClients := 0
	for _, h := range st.TPServers {
		tpClients += len(h.Clients)
	}
	waiting := 0
	for _, c := range st.Clients {
		if c.Authenticated && !c.Subscribed { // not still authenticating, not an events subscriber
			waiting++
		}
	}
	add("connections %d (tcp %d, websocket %d)   tunnels %d active, %d total   waiting %d",
		s.ConnectionsTCP+s.ConnectionsWS, s.ConnectionsTCP, s.ConnectionsWS, s.TunnelsActive, s.TunnelsTotal, waiting)
	add("tunnelproxy %d servers, %d clients   throughput %s/s   relayed %s (splice %s, buffered %s)",
		len(st.TPServers), tpClients, humanBytes(float64(st.Throughput)), humanBytes(float64(st.TrafficTotal)),
		humanBytes(float64(s.SplicedBytes)), humanBytes(float64(s.BufferedBytes)))
	add("auth ok %d, failed %d, timed out %d   closes: %s", st.AuthOK, st.AuthFailed, st.AuthTimeout, topCloses(s.Closes, 4))
	if fl := st.Fleet; fl != nil {
		add("%s", fleetLine(fl, st.Tunnels))
	}
	add("")
	add("%-9s %-7s %-11s %-10s %-6s  %-26s %-26s", "TUNNEL", "AGE", "RATE", "TOTAL", "PATH", "A (first)", "B")
	rows := monitorRows(st)
	sort.Slice(rows, func(i, j int) bool {
		ri, rj := v.rates[rows[i].key], v.rates[rows[j].key]
		if ri != rj {
			return ri > rj
		}
		if rows[i].total != rows[j].total {
			return rows[i].total > rows[j].total
		}
		return rows[i].key < rows[j].key
	})
	room := height - len(out) - 2
	if v.rows > 0 && v.rows < room {
		room = v.rows
	}
	for i, r := range rows {
		if i >= room {
			add("… %d more", len(rows)-i)
			break
		}
		age := "-"
		if !r.started.IsZero() {
			age = shortDuration(st.Time.Sub(r.started))
		}
		add("%-9s %-7s %-11s %-10s %-6s  %-26s %-26s", r.id, age, humanBytes(v.rates[r.key])+"/s",
			humanBytes(float64(r.total)), r.path, r.a, r.b)
	}
	if len(rows) == 0 {
		add("(no tunnels)")
	}
	for len(out) < height-1 {
		add("")
	}
	add("q: quit   refresh every %v", v.interval)
	return out
}

func (v *monitorView) draw(screen tcell.Screen) {
	screen.Clear()
	w, h := screen.Size()
	bold := tcell.StyleDefault.Bold(true)
	for y, line := range v.lines(h) {
		if y >= h {
			break
		}
		style := tcell.StyleDefault
		if y == 0 || strings.HasPrefix(line, "TUNNEL") {
			style = bold
		}
		x := 0
		for _, r := range line {
			if x >= w {
				break
			}
			screen.SetContent(x, y, r, nil, style)
			x++
		}
	}
	screen.Show()
}

func endpointLabel(addr, name, transport string) string {
	l := addr
	if name != "" {
		l += " " + name
	}
	if transport == "websocket" {
		l += " (ws)"
	}
	if r := []rune(l); len(r) > 26 {
		l = string(r[:25]) + "…"
	}
	return l
}

func topCloses(m map[string]uint64, n int) string {
	type kv struct {
		k string
		v uint64
	}
	var all []kv
	for k, v := range m {
		all = append(all, kv{k, v})
	}
	if len(all) == 0 {
		return "none"
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var parts []string
	for i, e := range all {
		if i == n {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %d", e.k, e.v))
	}
	return strings.Join(parts, ", ")
}

// humanBytes formats a byte count with a binary unit.
func humanBytes(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", b)
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}

func shortDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
