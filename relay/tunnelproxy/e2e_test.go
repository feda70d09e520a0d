package tunnelproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestTPRemoteWebUI: a device's web UI reached with a plain HTTP client
// through the relay — the device bridges TunnelProxy clients to its local
// HTTP server, the user's side turns local connections into clients.
func TestTPRemoteWebUI(t *testing.T) {
	s := server(t, nil)
	ui := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "device UI at "+r.URL.Path)
	}))
	defer ui.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, scheme := range []string{"tcp://", "ws://"} {
		su := client.NewUUID()
		dev, err := client.RegisterTPServer(ctx, client.TPOptions{URL: scheme + s.Addrs()[0].String(), UUID: su, Name: "device"})
		if err != nil {
			t.Fatal(err)
		}
		go dev.Bridge(strings.TrimPrefix(ui.URL, "http://"))
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go client.ServeTPClients(ctx, ln, client.TPOptions{URL: scheme + s.Addrs()[0].String(), ServerUUID: su, Name: "browser"})
		hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		for i := range 5 {
			resp, err := hc.Get("http://" + ln.Addr().String() + "/page" + string(rune('0'+i)))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "device UI at /page"+string(rune('0'+i)) {
				t.Fatalf("%s: got %q", scheme, body)
			}
		}
		ln.Close()
		dev.Close()
	}
	// ServerNotFound is a clear error.
	_, err := client.DialTPClient(ctx, client.TPOptions{URL: relaytest.TCPURL(s), ServerUUID: client.NewUUID()})
	var te *client.TPError
	if err == nil || !asTPError(err, &te) || te.Value != "TunnelProxyErrorServerNotFound" {
		t.Fatalf("want ServerNotFound, got %v", err)
	}
}

func asTPError(err error, te **client.TPError) bool {
	for err != nil {
		if e, ok := err.(*client.TPError); ok {
			*te = e
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// TestTPServeClientsReportsRefusals: a local connection to an unknown
// server is closed and reported (the CLI prints one line for each).
func TestTPServeClientsReportsRefusals(t *testing.T) {
	s := server(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	refused := make(chan error, 1)
	go client.ServeTPClients(ctx, ln, client.TPOptions{URL: "tcp://" + s.Addrs()[0].String(), ServerUUID: client.NewUUID(),
		Refused: func(_ net.Addr, err error) { refused <- err }})
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err := <-refused:
		var te *client.TPError
		if !errors.As(err, &te) || te.Value != "TunnelProxyErrorServerNotFound" {
			t.Fatalf("refusal %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no refusal reported")
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("local connection kept: %d %v", n, err)
	}
}
