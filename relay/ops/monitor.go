package ops

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/meetpoint/meetpoint/relay"
)

// The monitor socket (ServeMonitor) speaks three request dialects on one
// unix socket:
//
//   - nymea 1.8 (push): a client that sends nothing gets the full statistics
//     as indented JSON followed by "\n", at once and then every second, until
//     it disconnects. Shape: serverName, serverVersion, apiVersion,
//     proxyStatistic{clientCount, tunnelCount, troughput, total{totalClientCount,
//     totalTunnelCount, totalTraffic}, clients[...], tunnels[...]},
//     tunnelProxyStatistic{...}.
//   - nymea 1.13 (request/response): the client sends
//     {"method":"refresh","params":{"printAll":bool}} (params optional) and
//     gets one compact JSON line: serverName, serverVersion, apiVersion,
//     tunnelProxyStatistic{totalClientCount, serverConnectionsCount,
//     clientConnectionsCount, transports{}, troughput, tunnelConnections[...]}.
//     tunnelConnections lists the TunnelProxy servers with their clients,
//     and legacy tunnels as a server with one client (tunnelProxyStatistic).
//   - meetpoint: {"method":"meetpoint.status"} gets one compact JSON line, a
//     MonitorStatus (what `meetpoint monitor` shows).
//
// Telling them apart: a client that sends a request within MonitorDetectWindow
// of connecting is a request/response client and never gets a push; one that
// stays silent is a 1.8 client and is pushed to. A push client that sends a
// valid request later is switched to request/response. An unparsable request
// or an unknown method closes the connection (as nymea 1.13 does).

// MonitorDetectWindow is how long a new monitor client has to send its first
// request before it is treated as a nymea 1.8 push client. nymea 1.13's
// monitor sends "refresh" as soon as it is connected; nymea 1.8 pushed on its
// once-a-second tick, so a first push this late is within its own behaviour.
const MonitorDetectWindow = 250 * time.Millisecond

const (
	monitorPushInterval = time.Second
	monitorWriteTimeout = 5 * time.Second
	monitorMaxRequest   = 64 << 10
)

// MonitorStatus is the answer to {"method":"meetpoint.status"}.
type MonitorStatus struct {
	Name    string      `json:"serverName"`
	Version string      `json:"serverVersion"`
	Time    time.Time   `json:"time"`
	Ready   bool        `json:"ready"`
	Stats   relay.Stats `json:"stats"`
	// TrafficTotal counts tunnel bytes relayed since start (both directions);
	// Throughput is the rate over the last second, in bytes per second.
	TrafficTotal uint64 `json:"trafficTotal"`
	Throughput   uint64 `json:"throughput"`
	// AuthOK, AuthFailed and AuthTimeout count Authenticate outcomes.
	AuthOK      uint64             `json:"authOk"`
	AuthFailed  uint64             `json:"authFailed"`
	AuthTimeout uint64             `json:"authTimeout"`
	Clients     []relay.ClientInfo `json:"clients"`
	Tunnels     []MonitorTunnel    `json:"tunnels"`
	// TPServers are the TunnelProxy servers with their clients.
	TPServers []relay.TPServerInfo `json:"tunnelProxyServers"`
	// Fleet is the node's fleet: its node set, whether its store answers,
	// its mesh links (absent on a single node).
	Fleet *relay.FleetInfo `json:"fleet,omitempty"`
}

// MonitorTunnel is a tunnel as MonitorStatus lists it.
type MonitorTunnel struct {
	ID      uint64           `json:"id"`
	Started time.Time        `json:"started"`
	Splice  bool             `json:"splice"`
	A       relay.ClientInfo `json:"a"`
	B       relay.ClientInfo `json:"b"`
	BytesAB uint64           `json:"bytesAtoB"`
	BytesBA uint64           `json:"bytesBtoA"`
}

// monitorServer serves one monitor socket.
type monitorServer struct {
	s    *relay.Server
	ln   *net.UnixListener
	path string
	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}

	rmu      sync.Mutex
	lastAt   time.Time
	lastSum  uint64
	lastRate uint64
}

// ErrMonitorPath is ServeMonitor's error for a path no retry can serve (it
// is empty, or it names something other than a socket): a configuration
// error, where a busy socket may be freed.
var ErrMonitorPath = errors.New("unusable socket path")

// ServeMonitor listens on a unix socket at path and serves monitor clients
// (see MonitorDetectWindow for the dialects) until the returned Closer is
// closed or the server is closed. A stale socket file left by a crashed
// process (connecting is refused) is replaced; a socket another process
// still listens on (answering, busy or hung), or a path that is not a
// socket, is an error. The socket is mode 0660 from the moment it exists,
// whatever the umask (listenPrivate).
//
// Each monitor client holds two goroutines: monitors are operators, not
// tunnels.
func ServeMonitor(s *relay.Server, path string) (io.Closer, error) {
	if path == "" {
		return nil, fmt.Errorf("monitor: %w: empty socket path", ErrMonitorPath)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("monitor: %w: %s exists and is not a socket", ErrMonitorPath, path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("monitor: %s is in use by another process", path)
		}
		// Only a refused connection shows nobody listens: a full accept
		// queue (EAGAIN: a live process, busy or hung) or a socket we may
		// not connect to (EACCES) may well be in use.
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("monitor: %s may be in use by another process (connecting: %w)", path, err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("monitor: removing stale socket: %w", err)
		}
	}
	ln, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	m := &monitorServer{s: s, ln: ln, path: path, done: make(chan struct{}), conns: make(map[net.Conn]struct{})}
	m.lastAt, m.lastSum = time.Now(), s.Traffic()
	m.wg.Add(2)
	go m.accept()
	go m.sample()
	return m, nil
}

// maxSocketPath is the longest path a unix socket is bound at (sun_path,
// less its terminating NUL).
const maxSocketPath = 107

// listenPrivate listens on a unix socket at path that is mode 0660 from
// the moment path exists, whatever the umask: bound under umask alone
// (0777 under umask 0) and then chmodded, the socket would be open to
// anyone for a moment, and a connection made then outlives the chmod. So
// it is bound in a fresh 0700 directory beside path, chmodded there, and
// hard-linked to path (which fails, as bind does, if path exists). The
// listener does not unlink path on Close: its own name is the temporary
// one, removed here. The temporary name is at most 15 bytes longer than
// path's directory (maxSocketPath).
func listenPrivate(path string) (*net.UnixListener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".m")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) > maxSocketPath {
		return nil, fmt.Errorf("%w: the socket is bound first as %s, longer than a unix socket's %d bytes: use a shorter path", ErrMonitorPath, tmp, maxSocketPath)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Link(tmp, path); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Close stops listening, disconnects every monitor client and removes the
// socket file. It waits for the monitor's goroutines to end.
func (m *monitorServer) Close() error {
	m.once.Do(func() {
		close(m.done)
		m.ln.Close()
		os.Remove(m.path)
		m.mu.Lock()
		for c := range m.conns {
			c.Close()
		}
		m.mu.Unlock()
	})
	m.wg.Wait()
	return nil
}

func (m *monitorServer) accept() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.s.Logger().Warn("monitor accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		m.mu.Lock()
		select {
		case <-m.done:
			m.mu.Unlock()
			c.Close()
			return
		default:
		}
		m.conns[c] = struct{}{}
		m.wg.Add(1)
		m.mu.Unlock()
		go m.serve(c)
	}
}

// sample updates the throughput once a second and ends the monitor when the
// server is closed.
func (m *monitorServer) sample() {
	defer m.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-m.s.Done():
			go m.Close()
			return
		case now := <-t.C:
			sum := m.s.Traffic()
			m.rmu.Lock()
			if d := now.Sub(m.lastAt); d > 0 {
				m.lastRate = uint64(float64(sum-m.lastSum) / d.Seconds())
			}
			m.lastAt, m.lastSum = now, sum
			m.rmu.Unlock()
		}
	}
}

// throughput is the tunnel byte rate over the last second, in bytes/s.
func (m *monitorServer) throughput() uint64 {
	m.rmu.Lock()
	defer m.rmu.Unlock()
	return m.lastRate
}

// monitorRequest is a parsed request line.
type monitorRequest struct {
	Method string `json:"method"`
	Params struct {
		PrintAll bool `json:"printAll"`
	} `json:"params"`
}

func (m *monitorServer) serve(c net.Conn) {
	defer func() {
		m.mu.Lock()
		delete(m.conns, c)
		m.mu.Unlock()
		c.Close()
		m.wg.Done()
	}()
	reqs := make(chan monitorRequest)
	readerDone := make(chan error, 1)
	quit := make(chan struct{})
	defer close(quit)
	go func() { readerDone <- readMonitorRequests(c, reqs, quit) }()

	detect := time.NewTimer(MonitorDetectWindow)
	defer detect.Stop()
	var tick <-chan time.Time
	var ticker *time.Ticker
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	requested := false
	for {
		select {
		case <-m.done:
			return
		case req := <-reqs:
			requested = true
			detect.Stop()
			if ticker != nil {
				ticker.Stop()
				ticker, tick = nil, nil
			}
			var out []byte
			switch req.Method {
			case "refresh":
				out, _ = json.Marshal(m.nymea113(req.Params.PrintAll))
			case "meetpoint.status":
				out, _ = json.Marshal(m.status())
			default:
				return
			}
			if m.write(c, append(out, '\n')) != nil {
				return
			}
		case err := <-readerDone:
			readerDone = nil
			// A bad request ends the connection. EOF ends a request/response
			// client; a push client may have shut its write side only
			// (`socat - UNIX-CONNECT:... </dev/null`), so it keeps getting
			// pushes until a write fails.
			if err != io.EOF || requested {
				return
			}
		case <-detect.C:
			if requested {
				continue
			}
			if m.push(c) != nil {
				return
			}
			ticker = time.NewTicker(monitorPushInterval)
			tick = ticker.C
		case <-tick:
			if m.push(c) != nil {
				return
			}
		}
	}
}

func (m *monitorServer) push(c net.Conn) error {
	out, _ := json.MarshalIndent(m.nymea18(), "", "    ")
	return m.write(c, append(out, '\n'))
}

func (m *monitorServer) write(c net.Conn, b []byte) error {
	_ = c.SetWriteDeadline(time.Now().Add(monitorWriteTimeout))
	_, err := c.Write(b)
	return err
}

// readMonitorRequests reads JSON objects (newline-separated or not) from r
// and sends them on reqs. It returns io.EOF at the end of input, or the
// error that ended it (an unparsable or oversized request).
func readMonitorRequests(r io.Reader, reqs chan<- monitorRequest, done <-chan struct{}) error {
	br := bufio.NewReader(r)
	var obj []byte
	depth, inStr, esc := 0, false, false
	for {
		b, err := br.ReadByte()
		if err != nil {
			if err == io.EOF && (depth > 0 || len(obj) > 0) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if depth == 0 {
			switch b {
			case ' ', '\t', '\r', '\n':
				continue
			case '{':
			default:
				return fmt.Errorf("monitor: request is not a JSON object")
			}
		}
		obj = append(obj, b)
		if len(obj) > monitorMaxRequest {
			return errors.New("monitor: request too large")
		}
		switch {
		case inStr && esc:
			esc = false
		case inStr && b == '\\':
			esc = true
		case inStr && b == '"':
			inStr = false
		case inStr:
		case b == '"':
			inStr = true
		case b == '{' || b == '[':
			depth++
		case b == '}' || b == ']':
			depth--
		}
		if depth > 0 {
			continue
		}
		var req monitorRequest
		if err := json.Unmarshal(obj, &req); err != nil {
			return fmt.Errorf("monitor: %w", err)
		}
		obj = obj[:0]
		select {
		case reqs <- req:
		case <-done:
			return io.EOF
		}
	}
}

// status builds the meetpoint dialect's answer.
func (m *monitorServer) status() MonitorStatus {
	s := m.s
	snap, stats := s.Snapshot(), s.Stats()
	st := MonitorStatus{
		Name: snap.Name, Version: relay.Version, Time: time.Now(), Ready: s.Ready(), Stats: stats,
		TrafficTotal: stats.Traffic, Throughput: m.throughput(),
		AuthOK: stats.AuthOK, AuthFailed: stats.AuthFailed, AuthTimeout: stats.AuthTimeout,
		Clients: snap.Clients, Tunnels: make([]MonitorTunnel, len(snap.Tunnels)), TPServers: snap.TPServers,
		Fleet: snap.Fleet,
	}
	if st.TPServers == nil {
		st.TPServers = []relay.TPServerInfo{}
	}
	for i, t := range snap.Tunnels {
		st.Tunnels[i] = MonitorTunnel(t)
	}
	return st
}

// nymea18 builds the nymea 1.8 push document. Every connection is a client
// (those in tunnels too, with tunnelConnected true); tunnels name their two
// clients by id. nymea's ids are uuids; ours are the connection numbers, as
// strings. userName (from nymea's AWS authenticator) is always empty; the
// extra tokenHash tells which token a client used without revealing it.
func (m *monitorServer) nymea18() map[string]any {
	s := m.s
	snap, st := s.Snapshot(), s.Stats()
	clients := make([]any, 0, len(snap.Clients)+2*len(snap.Tunnels))
	for _, c := range snap.Clients {
		clients = append(clients, nymea18Client(c))
	}
	tunnels := make([]any, 0, len(snap.Tunnels))
	for _, t := range snap.Tunnels {
		clients = append(clients, nymea18Client(t.A), nymea18Client(t.B))
		tunnels = append(tunnels, map[string]any{
			"clientOne": strconv.FormatUint(t.A.ID, 10),
			"clientTwo": strconv.FormatUint(t.B.ID, 10),
			"timestamp": t.Started.Unix(),
		})
	}
	conns := len(snap.Clients) + 2*len(snap.Tunnels)
	return map[string]any{
		"serverName":    snap.Name,
		"serverVersion": relay.Version,
		"apiVersion":    relay.APIVersion,
		"proxyStatistic": map[string]any{
			"clientCount": conns,
			"tunnelCount": len(snap.Tunnels),
			"troughput":   m.throughput(),
			"total": map[string]any{
				// Every connection ever accepted: those that ended plus
				// those still open.
				"totalClientCount": st.ClosesTotal + uint64(conns),
				"totalTunnelCount": st.TunnelsTotal,
				"totalTraffic":     s.Traffic(),
			},
			"clients": clients,
			"tunnels": tunnels,
		},
		"tunnelProxyStatistic": m.tunnelProxyStatistic(snap, true),
	}
}

func nymea18Client(c relay.ClientInfo) map[string]any {
	return map[string]any{
		"id":              strconv.FormatUint(c.ID, 10),
		"address":         c.Address,
		"timestamp":       c.Connected.Unix(),
		"authenticated":   c.Authenticated || c.Tunnel,
		"tunnelConnected": c.Tunnel,
		"name":            c.Name,
		"userName":        "",
		"uuid":            c.UUID,
		"rxDataCount":     c.RxBytes,
		"txDataCount":     c.TxBytes,
		"tokenHash":       c.TokenHash,
		"transport":       c.Transport,
	}
}

// nymea113 builds the nymea 1.13 refresh answer.
func (m *monitorServer) nymea113(printAll bool) map[string]any {
	snap := m.s.Snapshot()
	return map[string]any{
		"serverName":           snap.Name,
		"serverVersion":        relay.Version,
		"apiVersion":           relay.APIVersion,
		"tunnelProxyStatistic": m.tunnelProxyStatistic(snap, printAll),
	}
}

// tunnelProxyStatistic is nymea's TunnelProxy statistic. TunnelProxy
// servers are listed as they are, each with its clients (servers without
// clients only with printAll, as in nymea). Legacy tunnels are mapped onto
// the same model: the side that arrived first is a "server connection" with
// the other side as its one "client connection"; authenticated legacy
// clients still waiting for their partner are server connections without
// clients (printAll only). Connection ids are meetpoint's connection numbers;
// TunnelProxy entries, which have none, use the uuid (servers) and
// uuid/socketAddress (clients).
func (m *monitorServer) tunnelProxyStatistic(snap relay.Snapshot, printAll bool) map[string]any {
	st := m.s.Stats()
	waiting := 0
	conns := make([]any, 0, len(snap.Tunnels)+len(snap.TPServers))
	tpClients := 0
	for _, hs := range snap.TPServers {
		tpClients += len(hs.Clients)
		if !printAll && len(hs.Clients) == 0 {
			continue
		}
		cl := make([]any, 0, len(hs.Clients))
		for _, c := range hs.Clients {
			cl = append(cl, map[string]any{
				"id": fmt.Sprintf("%s/%d", hs.UUID, c.SocketAddress), "address": c.Address, "timestamp": 0,
				"name": c.Name, "clientUuid": c.UUID, "rxDataCount": c.RxBytes, "txDataCount": c.TxBytes,
			})
		}
		conns = append(conns, map[string]any{
			"id": hs.UUID, "address": hs.Address, "timestamp": 0, "name": hs.Name, "serverUuid": hs.UUID,
			"rxDataCount": hs.RxBytes, "txDataCount": hs.TxBytes, "clientConnections": cl,
		})
	}
	for _, c := range snap.Clients {
		if !c.Authenticated || c.Subscribed { // an events subscriber waits for no partner
			continue
		}
		waiting++
		if printAll {
			e := nymea113Entry(c, "serverUuid")
			e["clientConnections"] = []any{}
			conns = append(conns, e)
		}
	}
	for _, t := range snap.Tunnels {
		e := nymea113Entry(t.A, "serverUuid")
		e["clientConnections"] = []any{nymea113Entry(t.B, "clientUuid")}
		conns = append(conns, e)
	}
	return map[string]any{
		"totalClientCount":       st.ConnectionsTCP + st.ConnectionsWS,
		"serverConnectionsCount": len(snap.TPServers) + waiting + len(snap.Tunnels),
		"clientConnectionsCount": tpClients + len(snap.Tunnels),
		"transports":             map[string]any{"tcp": st.ConnectionsTCP, "websocket": st.ConnectionsWS},
		"troughput":              m.throughput(),
		"tunnelConnections":      conns,
	}
}

func nymea113Entry(c relay.ClientInfo, uuidKey string) map[string]any {
	return map[string]any{
		"id":          strconv.FormatUint(c.ID, 10),
		"address":     c.Address,
		"timestamp":   c.Connected.Unix(),
		"name":        c.Name,
		uuidKey:       c.UUID,
		"rxDataCount": c.RxBytes,
		"txDataCount": c.TxBytes,
	}
}
