package relay

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/loop"
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

// TestStartFailureUndoes: a Start that fails (here: the second loop
// cannot be created) leaves nothing behind — no goroutine, no bound
// address, no descriptor (defect 8: forwarders, janitor and listeners kept
// running).
func TestStartFailureUndoes(t *testing.T) {
	probe := startServer(t, nil)
	probe.Close()
	runtime.GC()
	base, fds := runtime.NumGoroutine(), lkFDs(t)

	calls := 0
	newLoop = func(cfg loop.Config) (*loop.Loop, error) {
		calls++
		if calls == 2 {
			return nil, errors.New("injected failure")
		}
		return loop.New(cfg)
	}
	defer func() { newLoop = loop.New }()

	cfg := DefaultConfig()
	cfg.Listen = []string{"127.0.0.1:0", "127.0.0.1:0"}
	cfg.Auth = acceptAll{}
	cfg.Loops = 2
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		s.Close()
		t.Fatal("Start succeeded despite a failing loop")
	}
	lcGoroutines(t, base)
	if n := lkFDs(t); n > fds {
		t.Fatalf("%d descriptors open after a failed Start, %d before", n, fds)
	}
	// Undone cleanly: the same server starts once the cause is gone.
	newLoop = loop.New
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
	cfg.Auth = acceptAll{}
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

// TestDrainEndsIdleHTTP: an HTTP/1.1 client that keeps its connection
// open between requests (a balancer polling /readyz, a metrics scraper)
// does not hold the drain: Shutdown closes it once it is idle and returns
// when nothing else is left, as docs/operations.md promises. Without
// net/http being told of the drain the idle connection stayed until
// HTTPIdleTimeout (60 s, beyond the default drain timeout of 30 s), so
// every such drain ran to its timeout and reported that it cut
// connections.
func TestDrainEndsIdleHTTP(t *testing.T) {
	s := startServer(t, nil)
	c, err := net.Dial("tcp", serverAddr(s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Close {
		t.Fatal("the relay closed the connection after one request: no keep-alive to test")
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v, want nil", err)
		}
	case <-time.After(testutil.Patience):
		t.Fatalf("Shutdown still waits on an idle keep-alive HTTP connection (%d sockets held)", s.liveConns())
	}
	_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the idle HTTP connection got bytes, want its close")
	}
}
