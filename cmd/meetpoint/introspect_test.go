package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/handshake"
)

// TestServeIntrospectUnder4KiB: RemoteProxy.Introspect lists what this
// relay serves (Events.* only with --events) and, over TCP and TLS, stays
// under handshake.MaxIntrospect bytes: nymea's Qt test clients read it in
// one piece, and Qt hands TLS data over 4,096 bytes at a time.
func TestServeIntrospectUnder4KiB(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		events bool
	}{{"default", nil, false}, {"events", []string{"--events"}, true}, {"events-tls", []string{"--events", "--tls"}, true}} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServe(t, tc.args...)
			c, err := net.DialTimeout("tcp", ts.addr(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var rw io.ReadWriter = c
			if tc.name == "events-tls" {
				rw = tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(rw, `{"id":2147483647,"method":"RemoteProxy.Introspect"}`+"\n")
			line, err := bufio.NewReaderSize(rw, 64<<10).ReadBytes('\n')
			if err != nil {
				t.Fatal(err)
			}
			if len(line) > handshake.MaxIntrospect {
				t.Fatalf("Introspect reply is %d bytes, over %d", len(line), handshake.MaxIntrospect)
			}
			var m struct {
				Params struct {
					Methods       map[string]any `json:"methods"`
					Notifications map[string]any `json:"notifications"`
				} `json:"params"`
			}
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatal(err)
			}
			_, sub := m.Params.Methods["Events.Subscribe"]
			_, ev := m.Params.Notifications["Events.Event"]
			_, tp := m.Params.Methods["TunnelProxy.RegisterServer"]
			if sub != tc.events || ev != tc.events || !tp {
				t.Fatalf("Events.Subscribe %v, Events.Event %v, TunnelProxy.RegisterServer %v; want %v, %v, true", sub, ev, tp, tc.events, tc.events)
			}
		})
	}
}
