package relay

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// sClient is OpenSSL's s_client connected to addr in one TLS version:
// what it prints (stdout and stderr together), its stdin, and a channel
// closed when it exits. OpenSSL 3 (Qt's backend, so nymea's clients)
// reports a TCP close without a close_notify as "unexpected eof while
// reading".
func sClient(t *testing.T, addr, version string) (out func() string, stdin io.WriteCloser, exited <-chan struct{}) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("MEETPOINT_REQUIRE_OPENSSL") != "" {
			t.Fatal("no openssl and MEETPOINT_REQUIRE_OPENSSL is set (apt-get install openssl)")
		}
		t.Skip("no openssl: apt-get install openssl")
	}
	cmd := exec.Command("openssl", "s_client", "-connect", addr, "-"+version, "-quiet", "-no_ign_eof")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var buf strings.Builder
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	return func() string { mu.Lock(); defer mu.Unlock(); return buf.String() }, stdin, done
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestTLSCloseNotifyBeforeFIN: when the relay ends a TLS client's
// connection — after an error reply, or because the tunnel's other end
// left — the client gets a close_notify before the TCP FIN, in TLS 1.3
// (the record layer of our own) and TLS 1.2 (crypto/tls). Without it,
// OpenSSL 3 clients report "unexpected eof while reading", a truncation
// error, where the relay meant a clean close.
func TestTLSCloseNotifyBeforeFIN(t *testing.T) {
	s, _, _ := startTLSServer(t, nil)
	addr := s.Addrs()[0].String()
	for _, version := range []string{"tls1_3", "tls1_2"} {
		t.Run(version+"/error reply", func(t *testing.T) {
			out, stdin, exited := sClient(t, addr, version)
			if _, err := io.WriteString(stdin, "{\"id\":1 garbage}\n"); err != nil {
				t.Fatal(err)
			}
			waitExit(t, out, exited, "Failed to parse JSON")
		})
		t.Run(version+"/partner left", func(t *testing.T) {
			token := "tls-close-" + version
			out, stdin, exited := sClient(t, addr, version)
			if _, err := fmt.Fprintf(stdin, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"%s","name":"openssl","token":"%s"}}`+"\n",
				"3f1b6a52-7a5c-4c1e-9d3e-0c2b8f6a1d11", token); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
			defer cancel()
			tun, err := client.Dial(ctx, client.Options{URL: "tcp://" + addr, Token: token, Name: "go"})
			if err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, func() error {
				if !strings.Contains(out(), "TunnelEstablished") {
					return fmt.Errorf("s_client printed %q", out())
				}
				return nil
			}, "s_client's TunnelEstablished")
			tun.Close()
			waitExit(t, out, exited, "TunnelEstablished")
		})
	}
}

// waitExit waits for s_client to exit on the relay's close and checks
// that it printed want and no truncation error.
func waitExit(t *testing.T, out func() string, exited <-chan struct{}, want string) {
	t.Helper()
	select {
	case <-exited:
	case <-time.After(testutil.Patience):
		t.Fatalf("s_client did not see the relay's close within %v: %q", testutil.Patience, out())
	}
	if o := out(); !strings.Contains(o, want) || strings.Contains(o, "unexpected eof") {
		t.Fatalf("s_client printed %q: want %q and a close_notify before the FIN (no \"unexpected eof\")", o, want)
	}
}
