package ops

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

func startMonitor(t *testing.T, s *relay.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "monitor.sock")
	cl, err := ServeMonitor(s, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return path
}

func dialMonitor(t *testing.T, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// nymea18Doc is what a nymea 1.8 monitor reads.
type nymea18Doc struct {
	ServerName     string `json:"serverName"`
	ServerVersion  string `json:"serverVersion"`
	APIVersion     string `json:"apiVersion"`
	ProxyStatistic struct {
		ClientCount int    `json:"clientCount"`
		TunnelCount int    `json:"tunnelCount"`
		Troughput   uint64 `json:"troughput"`
		Total       struct {
			TotalClientCount int    `json:"totalClientCount"`
			TotalTunnelCount int    `json:"totalTunnelCount"`
			TotalTraffic     uint64 `json:"totalTraffic"`
		} `json:"total"`
		Clients []struct {
			ID              string `json:"id"`
			Address         string `json:"address"`
			Timestamp       int64  `json:"timestamp"`
			Authenticated   bool   `json:"authenticated"`
			TunnelConnected bool   `json:"tunnelConnected"`
			Name            string `json:"name"`
			UserName        string `json:"userName"`
			UUID            string `json:"uuid"`
			RxDataCount     uint64 `json:"rxDataCount"`
			TxDataCount     uint64 `json:"txDataCount"`
		} `json:"clients"`
		Tunnels []struct {
			ClientOne string `json:"clientOne"`
			ClientTwo string `json:"clientTwo"`
			Timestamp int64  `json:"timestamp"`
		} `json:"tunnels"`
	} `json:"proxyStatistic"`
}

// nymea113Doc is what a nymea 1.13 monitor reads.
type nymea113Doc struct {
	ServerName string `json:"serverName"`
	Stat       struct {
		TotalClientCount       int            `json:"totalClientCount"`
		ServerConnectionsCount int            `json:"serverConnectionsCount"`
		ClientConnectionsCount int            `json:"clientConnectionsCount"`
		Transports             map[string]int `json:"transports"`
		Troughput              uint64         `json:"troughput"`
		TunnelConnections      []struct {
			ID                string `json:"id"`
			Address           string `json:"address"`
			Timestamp         int64  `json:"timestamp"`
			Name              string `json:"name"`
			ServerUUID        string `json:"serverUuid"`
			RxDataCount       uint64 `json:"rxDataCount"`
			TxDataCount       uint64 `json:"txDataCount"`
			ClientConnections []struct {
				ID          string `json:"id"`
				Name        string `json:"name"`
				ClientUUID  string `json:"clientUuid"`
				RxDataCount uint64 `json:"rxDataCount"`
				TxDataCount uint64 `json:"txDataCount"`
			} `json:"clientConnections"`
		} `json:"tunnelConnections"`
	} `json:"tunnelProxyStatistic"`
}

// readPush reads one pushed document the way nymea 1.8's monitor does: a
// JSON document (indented) followed by a newline.
func readPush(t *testing.T, dec *json.Decoder) nymea18Doc {
	t.Helper()
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		t.Fatalf("reading push: %v", err)
	}
	if !bytes.Contains(raw, []byte("\n    \"")) {
		t.Fatalf("push is not indented JSON: %.200s", raw)
	}
	var doc nymea18Doc
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestMonitorNymea18Push(t *testing.T) {
	s := server(t, func(c *relay.Config) { c.Name = "mon-test" })
	path := startMonitor(t, s)
	a, b := relaytest.Pair(t, relaytest.TCPURL(s), relaytest.WSURL(s), "mon-push", "")
	opsEcho(t, a, b, strings.Repeat("a", 1234))
	opsEcho(t, b, a, strings.Repeat("b", 10))

	c := dialMonitor(t, path)
	dec := json.NewDecoder(c)
	start := time.Now()
	doc := readPush(t, dec)
	if el := time.Since(start); el < MonitorDetectWindow/2 {
		t.Fatalf("first push after %v: a silent client must be given the detection window", el)
	}
	if doc.ServerName != "mon-test" || doc.ServerVersion == "" || doc.APIVersion == "" {
		t.Fatalf("header: %+v", doc)
	}
	ps := doc.ProxyStatistic
	if ps.TunnelCount != 1 || ps.ClientCount != 2 || len(ps.Tunnels) != 1 || len(ps.Clients) != 2 {
		t.Fatalf("counts: %+v", ps)
	}
	if ps.Total.TotalTunnelCount < 1 || ps.Total.TotalClientCount < 2 || ps.Total.TotalTraffic < 1244 {
		t.Fatalf("totals: %+v", ps.Total)
	}
	byID := map[string]int{}
	for i, cl := range ps.Clients {
		byID[cl.ID] = i
		if !cl.Authenticated || !cl.TunnelConnected || cl.Timestamp < start.Add(-time.Minute).Unix() {
			t.Fatalf("client %+v", cl)
		}
	}
	one, ok1 := byID[ps.Tunnels[0].ClientOne]
	two, ok2 := byID[ps.Tunnels[0].ClientTwo]
	if !ok1 || !ok2 || one == two {
		t.Fatalf("tunnel refers to unknown clients: %+v", ps.Tunnels[0])
	}
	// alice (the first side) sent 1234 bytes over raw TCP; bob 10 over
	// WebSocket (plus the frame header).
	ca, cb := ps.Clients[one], ps.Clients[two]
	if ca.Name != "alice" {
		ca, cb = cb, ca
	}
	if ca.Name != "alice" || cb.Name != "bob" || ca.RxDataCount != 1234 || cb.TxDataCount != 1234 ||
		cb.RxDataCount < 10 || ca.TxDataCount != cb.RxDataCount {
		t.Fatalf("clients: %+v / %+v", ca, cb)
	}

	// Live: more data shows up in the next push, about a second later.
	opsEcho(t, a, b, strings.Repeat("c", 766))
	doc2 := readPush(t, dec)
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Fatalf("second push after %v, want about 1s", el)
	}
	var rx uint64
	for _, cl := range doc2.ProxyStatistic.Clients {
		if cl.Name == "alice" {
			rx = cl.RxDataCount
		}
	}
	if rx != 2000 {
		t.Fatalf("alice rx %d in the second push, want 2000", rx)
	}
	// Closed tunnels leave the list.
	a.Close()
	b.Close()
	deadline := time.Now().Add(relaytest.Patience)
	for {
		d := readPush(t, dec)
		if d.ProxyStatistic.TunnelCount == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("tunnel still listed after close")
		}
	}
}

func TestMonitorNymea113Refresh(t *testing.T) {
	s := server(t, nil)
	path := startMonitor(t, s)
	a, b := relaytest.Pair(t, relaytest.WSURL(s), relaytest.TCPURL(s), "mon-refresh", "n1")
	opsEcho(t, a, b, "hello over ws")
	opsEcho(t, b, a, strings.Repeat("r", 4096))

	c := dialMonitor(t, path)
	r := bufio.NewReader(c)
	refresh := func(req string) nymea113Doc {
		t.Helper()
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("reading refresh answer: %v", err)
		}
		// nymea 1.13's client splits on "}\n": the answer is one compact line.
		if bytes.Count(line, []byte("\n")) != 1 || !bytes.HasSuffix(line, []byte("}\n")) {
			t.Fatalf("answer is not one compact line: %q", line)
		}
		var doc nymea113Doc
		if err := json.Unmarshal(line, &doc); err != nil {
			t.Fatal(err)
		}
		return doc
	}
	doc := refresh(`{"method":"refresh","params":{"printAll":false}}` + "\n")
	st := doc.Stat
	if st.TotalClientCount != 2 || st.ServerConnectionsCount != 1 || st.ClientConnectionsCount != 1 ||
		len(st.TunnelConnections) != 1 || st.Transports["tcp"] != 1 || st.Transports["websocket"] != 1 {
		t.Fatalf("statistic: %+v", st)
	}
	srv := st.TunnelConnections[0]
	if len(srv.ClientConnections) != 1 {
		t.Fatalf("server entry: %+v", srv)
	}
	cl := srv.ClientConnections[0]
	if srv.ServerUUID == "" || cl.ClientUUID == "" || srv.ServerUUID == cl.ClientUUID {
		t.Fatalf("uuids: %q %q", srv.ServerUUID, cl.ClientUUID)
	}
	// Whichever side is listed as the server, its rx is the other's tx.
	if srv.RxDataCount != cl.TxDataCount || srv.TxDataCount != cl.RxDataCount ||
		srv.RxDataCount+srv.TxDataCount < 4096+13 {
		t.Fatalf("counters: server %+v client %+v", srv, cl)
	}

	// No push follows a request: the next bytes are the next answer.
	time.Sleep(1500 * time.Millisecond)
	if n := r.Buffered(); n != 0 {
		t.Fatalf("%d unexpected bytes buffered", n)
	}
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := r.Peek(1); err == nil {
		t.Fatal("a request/response client got a push")
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))

	// A waiting client appears with printAll only (nymea lists idle servers
	// only then). params may be left out.
	w := waitingClient(t, s, "mon-refresh-alone")
	defer w.Close()
	deadline := time.Now().Add(relaytest.Patience)
	for {
		all := refresh(`{"method":"refresh","params":{"printAll":true}}`)
		if all.Stat.ServerConnectionsCount == 2 {
			if len(all.Stat.TunnelConnections) != 2 {
				t.Fatalf("printAll lists %d entries, want 2", len(all.Stat.TunnelConnections))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting client never counted: %+v", all.Stat)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if some := refresh(`{"method":"refresh"}`); len(some.Stat.TunnelConnections) != 1 || some.Stat.ServerConnectionsCount != 2 {
		t.Fatalf("without printAll: %+v", some.Stat)
	}

	// The meetpoint dialect on the same connection.
	if _, err := io.WriteString(c, `{"method":"meetpoint.status"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var ms MonitorStatus
	if err := json.Unmarshal(line, &ms); err != nil {
		t.Fatal(err)
	}
	if len(ms.Tunnels) != 1 || ms.Stats.TunnelsActive != 1 || !ms.Ready || ms.TrafficTotal < 4096 ||
		ms.Tunnels[0].A.Name+ms.Tunnels[0].B.Name != "alicebob" && ms.Tunnels[0].A.Name+ms.Tunnels[0].B.Name != "bobalice" ||
		ms.AuthOK < 3 {
		t.Fatalf("status: %s", line)
	}
	if ms.Tunnels[0].A.TokenHash != relay.TokenHash("mon-refresh") || strings.Contains(string(line), `"mon-refresh"`) {
		t.Fatalf("token hash / token leak: %s", line)
	}

	// An unknown method or bad JSON ends the connection, as in nymea.
	if _, err := io.WriteString(c, `{"method":"nope"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("after an unknown method: %v, want EOF", err)
	}
	c2 := dialMonitor(t, path)
	io.WriteString(c2, "not json\n")
	if _, err := bufio.NewReader(c2).ReadByte(); err != io.EOF {
		t.Fatalf("after bad JSON: %v, want EOF", err)
	}
}

// waitingClient authenticates one client that stays alone.
func waitingClient(t *testing.T, s *relay.Server, token string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"5c7b1d4e-1111-4a4a-9b9b-000000000001","name":"alone","token":"`+token+`"}}`+"\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil || !bytes.Contains(line, []byte("AuthenticationErrorNoError")) {
		t.Fatalf("authenticate: %q %v", line, err)
	}
	return c
}

// A client that sends nothing at first but asks later is switched to
// request/response; a half-closed silent client keeps getting pushes.
func TestMonitorLateRequestAndHalfClose(t *testing.T) {
	s := server(t, nil)
	path := startMonitor(t, s)
	c := dialMonitor(t, path)
	dec := json.NewDecoder(c)
	readPush(t, dec)
	io.WriteString(c, `{"method":"refresh","params":{"printAll":true}}`+"\n")
	// Drain whatever push raced with the request, then expect the answer.
	deadline := time.Now().Add(relaytest.Patience)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		if _, ok := m["proxyStatistic"]; !ok {
			if _, ok := m["tunnelProxyStatistic"]; !ok {
				t.Fatalf("unexpected document %v", m)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no refresh answer")
		}
	}

	h, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.CloseWrite()
	_ = h.SetDeadline(time.Now().Add(5 * time.Second))
	hd := json.NewDecoder(h)
	readPush(t, hd)
	readPush(t, hd)
}

func TestMonitorSocketLifecycle(t *testing.T) {
	s := server(t, nil)
	dir := t.TempDir()

	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := ServeMonitor(s, file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}

	// A stale socket (nobody listening) is replaced.
	path := filepath.Join(dir, "mon.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	cl, err := ServeMonitor(s, path)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode: %v %v", fi, err)
	}
	// A live one is not stolen.
	if _, err := ServeMonitor(s, path); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("live socket: %v", err)
	}
	// Close disconnects clients and removes the socket.
	c := dialMonitor(t, path)
	time.Sleep(50 * time.Millisecond)
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("client after Close: %v", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket file after Close: %v", err)
	}

	// Closing the server ends the monitor too.
	path2 := filepath.Join(dir, "mon2.sock")
	if _, err := ServeMonitor(s, path2); err != nil {
		t.Fatal(err)
	}
	s.Close()
	deadline := time.Now().Add(relaytest.Patience)
	for {
		if _, err := os.Lstat(path2); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("monitor socket still there after the server closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
