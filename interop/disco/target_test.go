//go:build linux

package interop

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mosaicnetworks/disco/group"
	"github.com/mosaicnetworks/disco/server"
	"github.com/sirupsen/logrus"
)

// The settings every target gets: the WAMP realm, the static TURN user
// (Disco's --ice-username/--ice-password, Babble's too), a registered
// application for meetpoint, and a group TTL short enough to watch a
// heartbeat keep a group alive and its end let it expire.
const (
	realm    = "main"
	iceUser  = "babble"
	icePass  = "babble-ice-password"
	appID    = "chat"
	appKey   = "chat-key-0123456789abcdef"
	groupTTL = 3 * time.Second
)

// target is a discovery server under test: meetpoint, or Disco's own.
type target struct {
	name string
	// disco is the address Disco's client is given (it prepends
	// https://), signal Babble's signal address (it prepends wss://),
	// turn the TURN server's host:port (UDP).
	disco, signal, turn string
	cert                string // the server's certificate (PEM file), which the clients trust
	meetpoint           bool   // meetpoint: registered apps, metrics
	base                string // meetpoint: https://HOST:PORT
}

// targets names what each test runs against: meetpoint, and Disco's own
// server as the baseline, unless INTEROP_TARGETS narrows it (e.g.
// INTEROP_TARGETS=meetpoint).
func targets(t *testing.T, each func(t *testing.T, start func(t *testing.T) *target)) {
	for _, name := range []string{"meetpoint", "disco"} {
		if only := os.Getenv("INTEROP_TARGETS"); only != "" && !strings.Contains(only, name) {
			continue
		}
		start := startMeetpoint
		if name == "disco" {
			start = startDisco
		}
		t.Run(name, func(t *testing.T) { each(t, start) })
	}
}

var (
	certOnce         sync.Once
	certFile, keyErr string
	keyFile          string
)

// certs writes one self-signed certificate for localhost and 127.0.0.1
// (CN localhost: Babble's and Disco's clients set the server name to the
// trusted certificate's CN).
func certs(t *testing.T) (cert, key string) {
	certOnce.Do(func() {
		dir, err := os.MkdirTemp("", "interop-disco-tls")
		if err != nil {
			keyErr = err.Error()
			return
		}
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		kb, _ := x509.MarshalECPrivateKey(k)
		certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
		_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	})
	if keyErr != "" {
		t.Fatal(keyErr)
	}
	return certFile, keyFile
}

// freePort is a port free on 127.0.0.1 for TCP and UDP both (meetpoint
// serves TURN on UDP at its TCP port's number).
func freePort(t *testing.T) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no port free for TCP and UDP")
	return 0
}

// waitTCP waits until addr accepts connections.
func waitTCP(t *testing.T, addr, what string, logs fmt.Stringer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never listened on %s; its log:\n%s", what, addr, logs)
}

// syncBuffer is a bytes.Buffer safe for a process's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// startMeetpoint runs `meetpoint serve` (MEETPOINT_BIN, which
// scripts/interop-disco.sh builds) with TLS, TURN and its static user, a
// registered application and the short group TTL; it ends with the test.
func startMeetpoint(t *testing.T) *target {
	t.Helper()
	bin := os.Getenv("MEETPOINT_BIN")
	if bin == "" {
		t.Skip("MEETPOINT_BIN is not set: run make interop-disco")
	}
	cert, key := certs(t)
	dir := t.TempDir()
	pass, apps := filepath.Join(dir, "ice-password"), filepath.Join(dir, "apps")
	if err := os.WriteFile(pass, []byte(icePass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(apps, []byte(appID+" "+appKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "serve", "--listen", addr, "--auth", "dummy", "--tls", "--tls-cert", cert, "--tls-key", key,
		"--turn", "--turn-user", iceUser, "--turn-password-file", pass, "--apps", apps,
		"--group-ttl", groupTTL.String(), "--drain-timeout", "100ms", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // a killed test leaves no relay behind
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("meetpoint's log:\n%s", logs)
		}
	})
	waitTCP(t, addr, "meetpoint serve", logs)
	return &target{name: "meetpoint", disco: addr, signal: addr, turn: addr, cert: cert, meetpoint: true, base: "https://" + addr}
}

// startDisco runs Disco's own server (its discovery API, WAMP router and
// TURN server, each on its own port, as `disco` does) in this process.
// Disco's server cannot be stopped: each test leaves one behind until the
// test binary ends.
func startDisco(t *testing.T) *target {
	t.Helper()
	cert, key := certs(t)
	host := func() string { return "127.0.0.1:" + strconv.Itoa(freePort(t)) }
	discoAddr, signalAddr, turnAddr := host(), host(), host()
	log := logrus.New()
	log.Out, log.Level = os.Stderr, logrus.WarnLevel
	srv := server.NewDiscoServer(group.NewInmemGroupRepository(), cert, key, log.WithField("component", "disco-server"))
	go srv.Serve(discoAddr, signalAddr, turnAddr, iceUser, icePass, realm, groupTTL, time.Second/2)
	none := &syncBuffer{}
	waitTCP(t, discoAddr, "Disco's discovery API", none)
	waitTCP(t, signalAddr, "Disco's WAMP router", none)
	return &target{name: "disco", disco: discoAddr, signal: signalAddr, turn: turnAddr, cert: cert}
}

// raw sends one HTTPS request to the target's discovery API (trusting
// its certificate) and returns the status and body.
func (tg *target) raw(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+tg.disco+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a test server's self-signed certificate
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
