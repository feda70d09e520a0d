// Package relaytest starts real relays on loopback for the tests of the
// packages built on the engine (subsystems, the command).
package relaytest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/auth"
	"github.com/meetpoint/meetpoint/relay/certs"
	"github.com/meetpoint/meetpoint/relay/internal/strict"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// The tests that use this package run their relays strict: a panic a
// fault barrier would contain (a closed connection and an error log), or
// a connection's move its successor table does not list (an internal
// error log), ends the test binary instead of passing unseen.
func init() {
	strict.Faults.Store(true)
	strict.Moves.Store(true)
}

// New prepares a relay on a free loopback port with the dummy
// authenticator and two loops; mutate may change the config first.
// Register subsystems on it, then Start it.
func New(t testing.TB, mutate func(*relay.Config)) *relay.Server {
	t.Helper()
	cfg := relay.LoopbackConfig(auth.Dummy{})
	cfg.Logger = testutil.Logger(t)
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := relay.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Start starts s, failing the test if it cannot.
func Start(t testing.TB, s *relay.Server) *relay.Server {
	t.Helper()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// Server is New then Start.
func Server(t testing.TB, mutate func(*relay.Config)) *relay.Server {
	t.Helper()
	return Start(t, New(t, mutate))
}

// Addr is s's first listen address.
func Addr(s *relay.Server) string { return s.Addrs()[0].String() }

// WSURL and TCPURL are the client URLs of s.
func WSURL(s *relay.Server) string  { return "ws://" + Addr(s) + "/" }
func TCPURL(s *relay.Server) string { return "tcp://" + Addr(s) }

// TLS makes a self-signed certificate for 127.0.0.1 in a temporary
// directory and returns a store serving it and a client config trusting
// exactly it.
func TLS(t testing.TB) (*certs.Store, *tls.Config) {
	t.Helper()
	cert, err := certs.SelfSignedCert([]string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cp, kp := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := certs.WriteSelfSigned(cert, cp, kp); err != nil {
		t.Fatal(err)
	}
	st, err := certs.New(certs.Config{Cert: cp, Key: kp, WatchInterval: 50 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	return st, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}

// Patience is how long a test waits for what should happen at once
// (testutil.Patience: 20 s, for -race on a loaded machine).
const Patience = testutil.Patience

// WaitFor polls cond every 10 ms until it holds, for up to Patience, and
// then fails the test naming what; cond is a func() bool, or a func() error
// returning nil once it holds, whose last error the failure prints
// (testutil.WaitFor).
func WaitFor[C func() bool | func() error](t testing.TB, cond C, what string) {
	t.Helper()
	testutil.WaitFor(t, cond, what)
}

// DialPair dials a and b concurrently and returns both tunnels, closed at
// the end of the test; it fails the test if either dial fails.
func DialPair(t testing.TB, a, b client.Options) (*client.Tunnel, *client.Tunnel) {
	t.Helper()
	return testutil.DialPair(t, a, b)
}

// Pair dials two clients with the same token (and nonce).
func Pair(t testing.TB, urlA, urlB, token, nonce string) (*client.Tunnel, *client.Tunnel) {
	t.Helper()
	return DialPair(t, client.Options{URL: urlA, Token: token, Nonce: nonce, Name: "alice"},
		client.Options{URL: urlB, Token: token, Nonce: nonce, Name: "bob"})
}

// Meets reports whether two fresh clients of token, at urlA and urlB, are
// paired within wait (each client's timeout); the tunnel is closed at once.
// The fault tests' probe: false is an answer, not a test failure.
func Meets(urlA, urlB, token string, wait time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
	defer cancel()
	a, b, err := client.DialPair(ctx, client.Options{URL: urlA, Token: token, Timeout: wait},
		client.Options{URL: urlB, Token: token, Timeout: wait})
	if err != nil {
		return false
	}
	a.Close()
	b.Close()
	return true
}

// Redis starts a throw-away redis-server for the test and returns its
// address (the test skips without redis-server, unless
// MEETPOINT_REQUIRE_REDIS is set).
func Redis(t testing.TB) string {
	t.Helper()
	addr, _ := testutil.Redis(t, 0)
	return addr
}

// RedisOn is Redis on 127.0.0.1:port: a test starts the store where a
// relay already expects it. It returns the address and a function that
// stops it (also run at cleanup).
func RedisOn(t testing.TB, port int) (addr string, stop func()) {
	t.Helper()
	return testutil.Redis(t, port)
}

// FreePort returns a loopback TCP port nothing listened on a moment ago
// (for a service a test starts later, where a relay already expects it).
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// RefuseBad accepts every token except those starting with "bad"
// (AuthenticationFailed) and those starting with "down" (ProxyError: as
// if the authenticator's store were unreachable): a relay on which tests
// can be refused on purpose.
type RefuseBad struct{}

// Authenticate implements relay.Authenticator.
func (RefuseBad) Authenticate(_ context.Context, r relay.AuthRequest, done func(relay.AuthResult)) {
	switch {
	case strings.HasPrefix(r.Token, "bad"):
		done(relay.AuthFailed)
	case strings.HasPrefix(r.Token, "down"):
		done(relay.AuthProxyError)
	default:
		done(relay.AuthNoError)
	}
}

// Cert makes a test certificate (see testutil.Cert: a CA, or a leaf for
// client and server authentication), signed by parent (nil: self-signed).
func Cert(t testing.TB, cn string, parent *tls.Certificate, isCA bool, ips ...net.IP) tls.Certificate {
	t.Helper()
	return testutil.Cert(t, cn, parent, isCA, ips...)
}

// WriteCert writes c's certificate and (keyPath not empty) key as PEM.
func WriteCert(t testing.TB, c tls.Certificate, certPath, keyPath string) {
	t.Helper()
	testutil.WriteCert(t, c, certPath, keyPath)
}

// Metric is the value of one sample of s's /metrics (name with its labels,
// e.g. `meetpoint_closes_total{reason="tunnel_exists"}`), or -1 if s does
// not export it.
func Metric(t testing.TB, s *relay.Server, name string) float64 {
	t.Helper()
	var b strings.Builder
	s.WritePrometheus(&b)
	return MetricIn(t, b.String(), name)
}

// MetricIn is Metric over a Prometheus text exposition (what an admin
// listener's /metrics answered).
func MetricIn(t testing.TB, text, name string) float64 {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %q", name, v)
			}
			return f
		}
	}
	return -1
}
