package loop

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// lockedBuffer is a bytes.Buffer written by one goroutine and read by
// another.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// echo reads a non-blocking session and writes back what it read until
// the peer's close_notify (io.EOF), and returns all it read.
func echo(s *TLSSession) ([]byte, error) {
	var got []byte
	buf := make([]byte, 32<<10)
	deadline := time.Now().Add(2 * testutil.Patience)
	for time.Now().Before(deadline) {
		n, err := s.Read(buf)
		got = append(got, buf[:n]...)
		for p := buf[:n]; len(p) > 0; {
			m, werr := s.Write(p)
			p = p[m:]
			if werr != nil && werr != unix.EAGAIN {
				return got, werr
			}
			if werr == unix.EAGAIN {
				_, _ = unix.Poll([]unix.PollFd{{Fd: int32(s.Fd()), Events: unix.POLLOUT}}, 100)
			}
		}
		for s.Flush() == unix.EAGAIN {
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(s.Fd()), Events: unix.POLLOUT}}, 100)
		}
		switch {
		case err == io.EOF:
			return got, nil
		case err == unix.EAGAIN:
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(s.Fd()), Events: unix.POLLIN}}, 100)
		case err != nil:
			return got, err
		}
	}
	return got, fmt.Errorf("no close_notify after %d bytes", len(got))
}

// TestOwnRecordsOpenSSL: OpenSSL's s_client, in each TLS 1.3 cipher
// suite, talks to a session on the own record layer: its lines come
// through, a KeyUpdate it sends asking for ours (s_client's "K" command)
// is answered and both sides go on under the new keys, and its
// close_notify ends the session cleanly. The server echoes; the test
// checks what each side received, byte for byte.
func TestOwnRecordsOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("MEETPOINT_REQUIRE_OPENSSL") != "" {
			t.Fatal("no openssl and MEETPOINT_REQUIRE_OPENSSL is set (apt-get install openssl)")
		}
		t.Skip("no openssl: apt-get install openssl")
	}
	for _, suite := range []struct {
		name string
		id   uint16
	}{
		{"TLS_AES_128_GCM_SHA256", tls.TLS_AES_128_GCM_SHA256},
		{"TLS_AES_256_GCM_SHA384", tls.TLS_AES_256_GCM_SHA384},
		{"TLS_CHACHA20_POLY1305_SHA256", tls.TLS_CHACHA20_POLY1305_SHA256},
	} {
		t.Run(suite.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
			cmd := exec.Command("openssl", "s_client", "-connect", "127.0.0.1:"+port,
				"-tls1_3", "-ciphersuites", suite.name, "-no_ign_eof")
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			var out lockedBuffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

			s, err := acceptSession(ln, serverConf(t))
			if err != nil {
				t.Fatalf("handshake: %v\n%s", err, out.String())
			}
			defer s.Close()
			if got := s.State().CipherSuite; got != suite.id || !s.OwnRecordLayer() {
				t.Fatalf("suite %#x, own record layer %v; want %#x on the own layer", got, s.OwnRecordLayer(), suite.id)
			}
			rd0, wr0 := s.rl.rd.secret, s.rl.wr.secret
			type result struct {
				got []byte
				err error
			}
			done := make(chan result, 1)
			go func() { got, err := echo(s); done <- result{got, err} }()

			// Lines before the KeyUpdate, the "K" command, lines after it:
			// no data line starts with a command letter.
			var sent bytes.Buffer
			line := func(i int) {
				fmt.Fprintf(&sent, "x%05d %s\n", i, strings.Repeat("0123456789abcdef", 6))
			}
			for i := range 500 {
				line(i)
			}
			before := sent.Len()
			for i := 500; i < 1000; i++ {
				line(i)
			}
			// send writes p to s_client and waits for want in its output.
			send := func(p []byte, want, what string) {
				t.Helper()
				if _, err := stdin.Write(p); err != nil {
					t.Fatal(err)
				}
				testutil.WaitFor(t, func() error {
					if !strings.Contains(out.String(), want) {
						return fmt.Errorf("no %q in s_client's output yet", want)
					}
					return nil
				}, what)
			}
			send(sent.Bytes()[:before], "x00499 ", "echo before the KeyUpdate")
			send([]byte("K\n"), "KEYUPDATE", "s_client's KeyUpdate")
			send(sent.Bytes()[before:], "x00999 ", "echo after the KeyUpdate")
			stdin.Close() // s_client sends close_notify and exits

			r := <-done
			if r.err != nil {
				t.Fatalf("server session: %v", r.err)
			}
			if !bytes.Equal(r.got, sent.Bytes()) {
				t.Fatalf("server read %d bytes, want the %d sent, byte for byte", len(r.got), sent.Len())
			}
			if echoed := out.String(); !strings.Contains(echoed, sent.String()[before:]) {
				t.Fatal("s_client's output lacks the echo of the lines after the KeyUpdate")
			}
			// The peer's KeyUpdate moved our read key; our answer, our
			// write key (s_client then read the echo under it).
			if bytes.Equal(s.rl.rd.secret, rd0) || bytes.Equal(s.rl.wr.secret, wr0) {
				t.Fatalf("keys updated: read %v, write %v; want both", !bytes.Equal(s.rl.rd.secret, rd0), !bytes.Equal(s.rl.wr.secret, wr0))
			}
		})
	}
}
