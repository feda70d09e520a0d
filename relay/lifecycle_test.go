package relay

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cloudwego/netpoll"

	"github.com/meetpoint/meetpoint/client"
)

// lcGoroutines waits for the goroutine count to come back to at most base
// (plus slack for runtime helpers) and fails otherwise.
func lcGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStartFailureUndoes: a Start that fails (here: the second event loop
// cannot be created) leaves nothing behind — no goroutine, no bound
// address, no descriptor (defect 8: forwarders, janitor and listeners kept
// running).
func TestStartFailureUndoes(t *testing.T) {
	netpollInit.Do(func() {}) // netpoll's pollers are process-wide: not ours to count
	probe := startServer(t, nil)
	probe.Close()
	runtime.GC()
	base, fds := runtime.NumGoroutine(), lkFDs(t)

	calls := 0
	newEventLoop = func(h netpoll.OnRequest, opts ...netpoll.Option) (netpoll.EventLoop, error) {
		calls++
		if calls == 2 {
			return nil, errors.New("injected failure")
		}
		return netpoll.NewEventLoop(h, opts...)
	}
	defer func() { newEventLoop = netpoll.NewEventLoop }()

	cfg := DefaultConfig()
	cfg.Listen = []string{"127.0.0.1:0", "127.0.0.1:0"}
	cfg.Auth = Dummy{}
	cfg.Loops = 2
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		s.Close()
		t.Fatal("Start succeeded despite a failing event loop")
	}
	lcGoroutines(t, base)
	if n := lkFDs(t); n > fds {
		t.Fatalf("%d descriptors open after a failed Start, %d before", n, fds)
	}
	// Undone cleanly: the same server starts once the cause is gone.
	newEventLoop = netpoll.NewEventLoop
	if err := s.Start(); err != nil {
		t.Fatalf("Start after a failed one: %v", err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := client.Hello(ctx, client.Options{URL: tcpURL(s)}); err != nil {
		t.Fatal(err)
	}
}

// TestStartAddressInUse: the second address is taken; the first is
// released again.
func TestStartAddressInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	cfg := DefaultConfig()
	cfg.Listen = []string{freeAddr, taken.Addr().String()}
	cfg.Auth = Dummy{}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		s.Close()
		t.Fatal("Start succeeded on an address in use")
	}
	again, err := net.Listen("tcp", freeAddr)
	if err != nil {
		t.Fatalf("the first address stayed bound after the failed Start: %v", err)
	}
	again.Close()
}

// TestShutdownWaitsForLiveConnections: Shutdown returns when the last
// tunnel ends — it waits on the connections themselves — and at once when
// nothing is left; a TunnelProxy server with no client does not hold the
// drain, one with a client does until the client leaves.
func TestShutdownWaitsForLiveConnections(t *testing.T) {
	s := startServer(t, nil)
	a, b := pair(t, tcpURL(s), wsURL(s), "drain", "")
	srv := tpDial(t, s, false)
	su := newTestUUID()
	if e := tpErr(srv.call("TunnelProxy.RegisterServer", map[string]any{"serverName": "s", "serverUuid": su})); e != "TunnelProxyErrorNoError" {
		t.Fatal(e)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while a tunnel was open", err)
	case <-time.After(500 * time.Millisecond):
	}
	if s.Ready() {
		t.Fatal("ready while draining")
	}
	// The lone TunnelProxy server was let go; the tunnel still works.
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.Read(buf); err != nil {
		t.Fatalf("tunnel broken by the drain: %v", err)
	}
	a.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last tunnel ended")
	}
	if n := s.liveConns(); n != 0 {
		t.Fatalf("%d connections live after the drain", n)
	}
}

// TestShutdownRegistrationRace: TunnelProxy clients registering while the
// server closes (defect 6: a netpoll goroutine dropped a client from the
// hub's map, which only the forwarder goroutine may touch). Under -race;
// every connection must end accounted.
func TestShutdownRegistrationRace(t *testing.T) {
	for round := range 15 {
		s := startServer(t, nil)
		srv := tpDial(t, s, round%2 == 0)
		su := newTestUUID()
		if e := tpErr(srv.call("TunnelProxy.RegisterServer", map[string]any{"serverName": "s", "serverUuid": su})); e != "TunnelProxyErrorNoError" {
			t.Fatal(e)
		}
		var wg sync.WaitGroup
		for i := range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				c, err := client.DialTPClient(ctx, client.TPOptions{URL: []string{tcpURL(s), wsURL(s)}[i%2], ServerUUID: su})
				if err == nil {
					c.Close()
				}
			}()
		}
		time.Sleep(time.Duration(round%5) * time.Millisecond)
		s.Close()
		wg.Wait()
		waitFor(t, func() bool { return s.liveConns() == 0 }, "every connection accounted after Close")
	}
}
