package main

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
	"github.com/meetpoint/meetpoint/relay/tunnelproxy"
)

// TestTPClientInterrupted: `meetpoint client --server-uuid U` on
// stdin/stdout ends on SIGINT or SIGTERM (its context's end) with 130, as
// the legacy client and the --serve and --listen modes do, even while
// stdin stays open and the server sends nothing.
func TestTPClientInterrupted(t *testing.T) {
	s := relaytest.New(t, nil)
	if _, err := tunnelproxy.New(s, tunnelproxy.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, s)
	reg, cancelReg := context.WithTimeout(context.Background(), relaytest.Patience)
	defer cancelReg()
	su := client.NewUUID()
	dev, err := client.RegisterTPServer(reg, client.TPOptions{URL: relaytest.TCPURL(s), UUID: su, Name: "device"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()

	stdin, w := io.Pipe() // stdin stays open
	defer w.Close()
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	v := &clientSettings{serverUUID: su}
	v.opts.URL, v.opts.Timeout = relaytest.TCPURL(s), relaytest.Patience
	var errb bytes.Buffer
	done := make(chan int, 1)
	stdout, out := io.Pipe()
	go func() { done <- runTunnelProxy(ctx, v, stdin, out, &errb) }()
	conn, err := dev.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(stdout, make([]byte, 2)); err != nil { // the client is through
		t.Fatal(err)
	}
	go io.Copy(io.Discard, stdout)
	interrupt()
	select {
	case code := <-done:
		if code != 130 {
			t.Errorf("interrupted: exit %d, want 130 (stderr %q)", code, errb.String())
		}
	case <-time.After(relaytest.Patience):
		t.Fatal("meetpoint client --server-uuid U did not end on SIGINT/SIGTERM")
	}
}
