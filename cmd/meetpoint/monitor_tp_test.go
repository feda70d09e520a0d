package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/ops"
	"github.com/meetpoint/meetpoint/relay/relaytest"
	"github.com/meetpoint/meetpoint/relay/tunnelproxy"
)

// TestMonitorTunnelProxy: TunnelProxy servers and their clients are listed
// by the nymea 1.13 monitor refresh — the monitor (ops) sees them through
// the engine's reporters, wired here as serve wires them.
func TestMonitorTunnelProxy(t *testing.T) {
	s := relaytest.New(t, nil)
	if _, err := tunnelproxy.New(s, tunnelproxy.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, s)
	path := filepath.Join(t.TempDir(), "monitor.sock")
	mon, err := ops.ServeMonitor(s, path)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	su, cu := client.NewUUID(), client.NewUUID()
	dev, err := client.RegisterTPServer(ctx, client.TPOptions{URL: relaytest.TCPURL(s), UUID: su, Name: "device"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	idle, err := client.RegisterTPServer(ctx, client.TPOptions{URL: relaytest.WSURL(s), UUID: client.NewUUID(), Name: "idle"})
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	cl, err := client.DialTPClient(ctx, client.TPOptions{URL: relaytest.WSURL(s), UUID: cu, ServerUUID: su, Name: "browser"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	conn, err := dev.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 18)
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatal(err)
	}

	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	type entry struct {
		Name              string `json:"name"`
		ServerUUID        string `json:"serverUuid"`
		ClientConnections []struct {
			Name        string `json:"name"`
			ClientUUID  string `json:"clientUuid"`
			RxDataCount uint64 `json:"rxDataCount"`
		} `json:"clientConnections"`
	}
	var doc struct {
		Stat struct {
			ServerConnectionsCount int     `json:"serverConnectionsCount"`
			ClientConnectionsCount int     `json:"clientConnectionsCount"`
			TunnelConnections      []entry `json:"tunnelConnections"`
		} `json:"tunnelProxyStatistic"`
	}
	ask := func(printAll bool) {
		t.Helper()
		fmt.Fprintf(c, `{"method":"refresh","params":{"printAll":%v}}`+"\n", printAll)
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(line, &doc); err != nil {
			t.Fatal(err)
		}
	}
	ask(false)
	st := doc.Stat
	if st.ServerConnectionsCount != 2 || st.ClientConnectionsCount != 1 || len(st.TunnelConnections) != 1 {
		t.Fatalf("statistic: %+v", st)
	}
	sv := st.TunnelConnections[0]
	if sv.ServerUUID != su || sv.Name != "device" || len(sv.ClientConnections) != 1 {
		t.Fatalf("server: %+v", sv)
	}
	if cc := sv.ClientConnections[0]; cc.ClientUUID != cu || cc.Name != "browser" || cc.RxDataCount < 18 {
		t.Fatalf("client: %+v", cc)
	}
	ask(true)
	if n := len(doc.Stat.TunnelConnections); n != 2 {
		t.Fatalf("printAll: %d entries, want 2", n)
	}
}
