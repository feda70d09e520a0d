package client_test

import (
	"context"
	"net"
	"testing"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
	"github.com/meetpoint/meetpoint/relay/tunnelproxy"
)

// tpRelay starts a relay serving TunnelProxy.
func tpRelay(t *testing.T) *relay.Server {
	t.Helper()
	s := relaytest.New(t, nil)
	if _, err := tunnelproxy.New(s, tunnelproxy.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	return relaytest.Start(t, s)
}

// tpDevice registers a TunnelProxy server named "device" at url under a
// fresh uuid (closed at cleanup) and returns it with its uuid.
func tpDevice(t *testing.T, ctx context.Context, url string) (*client.TPServer, string) {
	t.Helper()
	su := client.NewUUID()
	dev, err := client.RegisterTPServer(ctx, client.TPOptions{URL: url, UUID: su, Name: "device"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev, su
}

// tpLocal serves local connections to the device su at url
// (ServeTPClients, until ctx ends) and returns one such connection,
// closed at cleanup.
func tpLocal(t *testing.T, ctx context.Context, url, su string) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go client.ServeTPClients(ctx, ln, client.TPOptions{URL: url, ServerUUID: su, Name: "local"})
	local, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { local.Close() })
	return local
}
