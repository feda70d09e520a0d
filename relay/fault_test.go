package relay

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// faultMark is the input injectFault panics on.
var faultMark = []byte("fault-me")

// injectFault stands in for a bug in the relay's input path: it panics on
// input carrying faultMark (Server.inputHook).
func injectFault(p []byte) {
	if bytes.Contains(p, faultMark) {
		var short []byte
		_ = short[len(p)] // index out of range, as the key check's was
	}
}

// faultServer is a relay with the fault barrier on, as in production (the
// package's other tests make it re-raise), whose input path panics on
// faultMark; its log goes to logs as well.
func faultServer(t *testing.T, logs io.Writer, before func(*Server)) *Server {
	return startServerWith(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(logs, testutilWriter(t)), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}, func(s *Server) {
		s.faultsFatal = false
		s.inputHook = injectFault
		if before != nil {
			before(s)
		}
	})
}

// testutilWriter is where the relay's log goes besides the test's copy:
// the tail printed if the test fails.
func testutilWriter(t *testing.T) io.Writer {
	tail := &testutil.Tail{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("relay log:\n%s", tail.String())
		}
	})
	return tail
}

// TestFaultEndsOnlyTheConnection: a panic on a connection's input, at
// every stage before its tunnel, ends that connection alone — closed,
// counted as internal_fault, logged with the stack where it happened, its
// registry key given back — while the relay serves on: a tunnel made
// before still forwards, new clients pair, and no socket is left behind.
func TestFaultEndsOnlyTheConnection(t *testing.T) {
	logs := &testutil.Tail{}
	s := faultServer(t, logs, nil)
	a, b := pair(t, tcpURL(s), wsURL(s), "tunnel-before", "")

	cases := []struct {
		name string
		// faulted opens a connection, brings it to its stage and sends
		// faultMark; it returns the connection to watch close.
		faulted func(t *testing.T) io.Reader
	}{
		{"sniff", func(t *testing.T) io.Reader {
			c := dialTCP(t, s)
			writeRaw(c, faultMark)
			return c
		}},
		{"raw JSON-RPC", func(t *testing.T) io.Reader {
			r := dialRPC(t, tcpURL(s))
			writeRaw(r.Conn(), append([]byte(`{"id":7,"method":"`), faultMark...))
			return r.Conn()
		}},
		{"HTTP head", func(t *testing.T) io.Reader {
			c := dialTCP(t, s)
			writeRaw(c, []byte("GET / HTTP/1.1\r\nHost: x\r\n"))
			writeRaw(c, append(append([]byte("X-Fault: "), faultMark...), "\r\n"...))
			return c
		}},
		{"WebSocket frame", func(t *testing.T) io.Reader {
			w := dialRawWS(t, s)
			w.write(handshake.AppendFrameMasked(nil, ws.OpText, true, faultMark, [4]byte{})) // a zero mask: the payload as sent
			return w.c
		}},
		{"waiting for a partner", func(t *testing.T) io.Reader {
			r := dialWaiting(t, tcpURL(s), "secret-fault-token", "", "", "waiter")
			writeRaw(r.Conn(), faultMark)
			return r.Conn()
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.faulted(t)
			if _, err := io.ReadAll(c); err != nil && !isClosed(err) {
				t.Fatalf("the faulted connection was not closed: %v", err)
			}
			waitFor(t, func() bool { return s.stats.closes[reason.Fault].Get() == uint64(i+1) }, "the fault counted as internal_fault")
		})
	}

	exchangeTagged(t, a, b, "the tunnel made before the faults")
	expectServes(t, s)
	c, d := pair(t, tcpURL(s), tcpURL(s), "secret-fault-token", "") // the faulted waiter gave its key back
	exchangeTagged(t, c, d, "a tunnel on the faulted waiter's key")

	log := logs.String()
	if n := strings.Count(log, "reason=internal_fault") + strings.Count(log, "(internal_fault)"); n < len(cases) {
		t.Errorf("%d fault log lines, want %d:\n%s", n, len(cases), log)
	}
	if !strings.Contains(log, "relay.injectFault") || !strings.Contains(log, "index out of range") {
		t.Errorf("the fault log lacks the panic or the stack where it happened:\n%s", log)
	}
	if strings.Contains(log, "secret-fault-token") {
		t.Error("the fault log holds a token")
	}

	for _, tun := range []io.Closer{a, b, c, d} {
		tun.Close()
	}
	waitFor(t, func() bool { return s.live.count() == 0 }, "every socket closed")
}

// faultChildEnv makes TestFaultThroughHandlerIsFatal the relay that
// panics, in a process of its own.
const faultChildEnv = "MEETPOINT_FAULT_CHILD"

// TestFaultThroughHandlerIsFatal: a panic that comes through a subsystem's
// method handler is not contained — the handler may hold locks of its own,
// and a relay with a lock left held would hang — so the process ends, with
// the panic and its stack on stderr. Run in a child process.
func TestFaultThroughHandlerIsFatal(t *testing.T) {
	if os.Getenv(faultChildEnv) != "" {
		s := faultServer(t, io.Discard, func(s *Server) {
			s.HandleMethod("TunnelProxy.Ping", func(Conn, *handshake.Request) { panic("a handler's bug") })
		})
		r := dialRPC(t, tcpURL(s))
		writeRaw(r.Conn(), []byte(`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":5}}`+"\n"))
		time.Sleep(testutil.Patience) // the process ends long before, unless the barrier took the panic
		t.Fatal("the relay contained a panic from a method handler")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFaultThroughHandlerIsFatal$")
	cmd.Env = append(os.Environ(), faultChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err == nil || bytes.Contains(out, []byte("contained a panic")) {
		t.Fatalf("the child relay survived (%v):\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("panic: a handler's bug")) || !bytes.Contains(out, []byte("relay.TestFaultThroughHandlerIsFatal")) {
		t.Fatalf("the child ended without the handler's panic and its stack (%v):\n%s", err, out)
	}
}
