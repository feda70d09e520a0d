package tunnelproxy

import (
	"testing"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestTPClientMetrics: meetpoint_tunnelproxy_clients_total counts every
// client that reached its server (it once stayed 0), beside the gauges.
func TestTPClientMetrics(t *testing.T) {
	s := server(t, nil)
	su := client.NewUUID()
	srv := registerServer(t, s, su, false)
	a := registerClient(t, s, client.NewUUID(), su, false)
	registerClient(t, s, client.NewUUID(), su, true)
	for range 2 {
		if m := srv.nextRPC(); m["notification"] != "TunnelProxy.ClientConnected" {
			t.Fatalf("server heard %v", m)
		}
	}
	a.c.Close()
	if m := srv.nextRPC(); m["notification"] != "TunnelProxy.ClientDisconnected" {
		t.Fatalf("server heard %v", m)
	}
	for name, want := range map[string]float64{
		`meetpoint_tunnelproxy_servers_active`:                        1,
		`meetpoint_tunnelproxy_clients_active`:                        1,
		`meetpoint_tunnelproxy_clients_total`:                         2,
		`meetpoint_tunnelproxy_registrations_total{result="ok"}`:      3,
		`meetpoint_tunnelproxy_registrations_total{result="refused"}`: 0,
	} {
		if got := relaytest.Metric(t, s, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}
