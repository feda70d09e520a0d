package relay

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/meetpoint/meetpoint/client"
)

// startServer starts a relay on a free loopback port with the dummy
// authenticator; mutate may change the config first.
func startServer(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.Auth = Dummy{}
	cfg.Loops = 2
	if os.Getenv("MEETPOINT_TEST_LOG") != "" {
		cfg.Logger = testLogger()
	} else {
		// Keep the relay's recent debug log and show it if the test fails,
		// so a failure seen once (e.g. in CI) explains itself.
		tail := &logTail{}
		cfg.Logger = slog.New(slog.NewTextHandler(tail, &slog.HandlerOptions{Level: slog.LevelDebug}))
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("relay log (last %d KiB):\n%s", logTailMax>>10, tail.String())
			}
		})
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// logTailMax bounds what a logTail keeps.
const logTailMax = 32 << 10

// logTail keeps the last logTailMax bytes written to it.
type logTail struct {
	mu  sync.Mutex
	buf []byte
}

func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf = append(l.buf, p...)
	if len(l.buf) > 2*logTailMax { // compact now and then, not per line
		l.buf = append(l.buf[:0], l.buf[len(l.buf)-logTailMax:]...)
	}
	l.mu.Unlock()
	return len(p), nil
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf[max(0, len(l.buf)-logTailMax):])
}

func wsURL(s *Server) string  { return "ws://" + s.Addrs()[0].String() + "/" }
func tcpURL(s *Server) string { return "tcp://" + s.Addrs()[0].String() }

// pair dials two clients with the same token (and nonce) concurrently and
// returns both tunnels.
func pair(t testing.TB, urlA, urlB, token, nonce string) (*client.Tunnel, *client.Tunnel) {
	t.Helper()
	return dialPair(t, client.Options{URL: urlA, Token: token, Nonce: nonce, Name: "alice"},
		client.Options{URL: urlB, Token: token, Nonce: nonce, Name: "bob"})
}

// dialPair dials a and b concurrently and returns both tunnels, closed at
// the end of the test; it fails the test if either dial fails.
func dialPair(t testing.TB, a, b client.Options) (*client.Tunnel, *client.Tunnel) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		tun *client.Tunnel
		err error
	}
	ch := make(chan res, 1)
	go func() {
		tun, err := client.Dial(ctx, a)
		ch <- res{tun, err}
	}()
	tb, err := client.Dial(ctx, b)
	ra := <-ch
	if ra.err != nil || err != nil {
		if ra.tun != nil {
			ra.tun.Close()
		}
		if tb != nil {
			tb.Close()
		}
		t.Fatalf("dial pair: a: %v, b: %v", ra.err, err)
	}
	t.Cleanup(func() { ra.tun.Close(); tb.Close() })
	return ra.tun, tb
}

// testLogger logs everything to stderr (MEETPOINT_TEST_LOG=1).
func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// discardLogger drops every record.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// readFrame reads one frame, refusing payloads over 64 MiB (ws.ReadFrame
// would trust the declared length).
func readFrame(r io.Reader) (ws.Frame, error) {
	h, err := ws.ReadHeader(r)
	if err != nil {
		return ws.Frame{}, err
	}
	if h.Length > 64<<20 {
		return ws.Frame{}, fmt.Errorf("frame of %d bytes", h.Length)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return ws.Frame{}, err
	}
	return ws.Frame{Header: h, Payload: p}, nil
}
