package relay

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/certs"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// tlsFiles writes a fresh self-signed server certificate and returns the
// paths and the certificate.
func tlsFiles(t *testing.T, dir string) (certPath, keyPath string, cert tls.Certificate) {
	t.Helper()
	cert, err := certs.SelfSignedCert([]string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := certs.WriteSelfSigned(cert, certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath, cert
}

// clientTLS trusts exactly cert.
func clientTLS(cert tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}

// tlsStore serves the material tc names (the certificate files are
// watched every 50 ms).
func tlsStore(t *testing.T, tc certs.Config) *certs.Store {
	t.Helper()
	tc.WatchInterval = 50 * time.Millisecond
	st, err := certs.New(tc, testutil.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// startTLSServer starts a relay serving TLS (and plaintext) with a fresh
// self-signed certificate in a temporary directory.
func startTLSServer(t *testing.T, mutate func(*Config)) (*Server, tls.Certificate, string) {
	s, cert, dir, _ := startTLSServerWith(t, nil, mutate)
	return s, cert, dir
}

// startTLSServerWith is startTLSServer with the TLS section changed by
// tcMutate first; it also returns the certificate store.
func startTLSServerWith(t *testing.T, tcMutate func(*certs.Config), mutate func(*Config)) (*Server, tls.Certificate, string, *certs.Store) {
	t.Helper()
	dir := t.TempDir()
	cp, kp, cert := tlsFiles(t, dir)
	tc := certs.Config{Cert: cp, Key: kp}
	if tcMutate != nil {
		tcMutate(&tc)
	}
	st := tlsStore(t, tc)
	s := startServer(t, func(c *Config) {
		c.TLS = st.TLSConfig()
		if mutate != nil {
			mutate(c)
		}
	})
	return s, cert, dir, st
}

// exchange sends n random bytes each way at once and checks them.
func exchange(t *testing.T, a, b io.ReadWriter, n int) {
	t.Helper()
	send := func(w io.Writer, p []byte, done chan<- error) {
		for len(p) > 0 {
			k := min(len(p), 32<<10)
			if _, err := w.Write(p[:k]); err != nil {
				done <- err
				return
			}
			p = p[k:]
		}
		done <- nil
	}
	pa, pb := make([]byte, n), make([]byte, n)
	rand.Read(pa)
	rand.Read(pb)
	errs := make(chan error, 2)
	go send(a, pa, errs)
	go send(b, pb, errs)
	ga, gb := make([]byte, n), make([]byte, n)
	if _, err := io.ReadFull(b, ga); err != nil {
		t.Fatalf("read at b: %v", err)
	}
	if _, err := io.ReadFull(a, gb); err != nil {
		t.Fatalf("read at a: %v", err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if sha256.Sum256(ga) != sha256.Sum256(pa) || sha256.Sum256(gb) != sha256.Sum256(pb) {
		t.Fatal("digest mismatch")
	}
}

// TestTLSSamePort: wss://, tls://, ws:// and tcp:// on one port, paired in
// every mix, moving 1 MiB each way.
func TestTLSSamePort(t *testing.T) {
	s, cert, _ := startTLSServer(t, nil)
	addr := s.Addrs()[0].String()
	conf := clientTLS(cert)
	urls := map[string]string{"wss": "wss://" + addr + "/", "tls": "tls://" + addr, "ws": "ws://" + addr + "/", "tcp": "tcp://" + addr,
		"ssl": "ssl://" + addr} // nymea's name for tls://
	for _, c := range [][2]string{{"tls", "tls"}, {"wss", "wss"}, {"tls", "tcp"}, {"wss", "tcp"}, {"tls", "ws"}, {"wss", "tls"}, {"ssl", "ws"}} {
		t.Run(c[0]+"-"+c[1], func(t *testing.T) {
			tok := "tok-" + c[0] + c[1]
			a, b := dialPair(t, client.Options{URL: urls[c[0]], Token: tok, TLSConfig: conf, Name: "a"},
				client.Options{URL: urls[c[1]], Token: tok, TLSConfig: conf, Name: "b"})
			exchange(t, a, b, 1<<20)
		})
	}
	if st := s.Stats(); st.SplicedBytes != 0 {
		t.Fatalf("TLS tunnels must not splice, spliced %d", st.SplicedBytes)
	}
	// 10 TLS 1.3 sessions: every one moved to the relay's record layer.
	if own, lib := s.stats.tlsOwn.Get(), s.stats.tlsLib.Get(); own != 10 || lib != 0 {
		t.Fatalf("sessions on the own record layer %d, on crypto/tls %d; want 10 and 0", own, lib)
	}
}

// TestTLS12StaysOnCryptoTLS: a TLS 1.2 client's session stays on
// crypto/tls (the own record layer is TLS 1.3 only) and forwards, paired
// with a TLS 1.3 one, both ways.
func TestTLS12StaysOnCryptoTLS(t *testing.T) {
	s, cert, _ := startTLSServer(t, nil)
	addr := s.Addrs()[0].String()
	old := clientTLS(cert)
	old.MaxVersion = tls.VersionTLS12
	a, b := dialPair(t, client.Options{URL: "tls://" + addr, Token: "v12", TLSConfig: old, Name: "a"},
		client.Options{URL: "wss://" + addr + "/", Token: "v12", TLSConfig: clientTLS(cert), Name: "b"})
	exchange(t, a, b, 1<<20)
	if own, lib := s.stats.tlsOwn.Get(), s.stats.tlsLib.Get(); own != 1 || lib != 1 {
		t.Fatalf("sessions on the own record layer %d, on crypto/tls %d; want 1 and 1", own, lib)
	}
}

// TestTLSBadRecordInTunnel: a record that does not open, in a tunnel on
// the own record layer, ends the tunnel counted as reason tls (not as the
// peer closing), and the partner sees its end.
func TestTLSBadRecordInTunnel(t *testing.T) {
	s, cert, _ := startTLSServer(t, nil)
	addr := s.Addrs()[0].String()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	a := tls.Client(raw, clientTLS(cert))
	_ = a.SetDeadline(time.Now().Add(testutil.Patience))
	if _, err := io.WriteString(a, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"`+newTestUUID()+`","name":"a","token":"bad-record"}}`+"\n"); err != nil {
		t.Fatal(err)
	}
	b, err := client.Dial(context.Background(), client.Options{URL: "tcp://" + addr, Token: "bad-record", Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	br := bufio.NewReader(a)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("waiting for TunnelEstablished: %v", err)
		}
		if strings.Contains(line, "TunnelEstablished") {
			break
		}
	}
	// An application-data record of 20 bytes that no key opens.
	if _, err := raw.Write([]byte{23, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}); err != nil {
		t.Fatal(err)
	}
	_ = b.SetReadDeadline(time.Now().Add(testutil.Patience))
	if _, err := b.Read(make([]byte, 1)); err == nil {
		t.Fatal("the partner read data; want the end of the tunnel")
	}
	waitFor(t, func() bool { return s.stats.closes[reason.TLS].Get() == 1 }, "one close counted as reason tls")
	if n := s.stats.closes[reason.PeerClosed].Get(); n != 0 {
		t.Fatalf("%d closes counted as peer_closed; the bad record is reason tls", n)
	}
}

func TestTLSMessagesKeepOpcode(t *testing.T) {
	s, cert, _ := startTLSServer(t, nil)
	u := "wss://" + s.Addrs()[0].String() + "/"
	a, b := dialPair(t, client.Options{URL: u, Token: "op", TLSConfig: clientTLS(cert)},
		client.Options{URL: u, Token: "op", TLSConfig: clientTLS(cert)})
	if err := a.WriteMessage(ws.OpText, []byte("héllo")); err != nil {
		t.Fatal(err)
	}
	op, p, err := b.ReadMessage()
	if err != nil || op != ws.OpText || string(p) != "héllo" {
		t.Fatalf("got %v %q %v", op, p, err)
	}
}

func TestTLSOnlyRefusesPlaintext(t *testing.T) {
	s, cert, _ := startTLSServer(t, func(c *Config) { c.TLSOnly = true })
	addr := s.Addrs()[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Each plaintext client is told why, in its own protocol.
	_, err := client.Hello(ctx, client.Options{URL: "tcp://" + addr})
	var re *client.RPCError
	if !errors.As(err, &re) || re.Text != tlsOnlyText {
		t.Fatalf("plaintext Hello on a TLS-only relay: %v, want the JSON-RPC error %q", err, tlsOnlyText)
	}
	if _, err := client.Hello(ctx, client.Options{URL: "ws://" + addr + "/"}); err == nil || !strings.Contains(err.Error(), "426: "+tlsOnlyText) {
		t.Fatalf("plaintext WebSocket Hello on a TLS-only relay: %v, want the 426 and its text", err)
	}
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
		"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		writeRaw(c, []byte(req))
		got := string(readToClose(t, c, testutil.Patience))
		c.Close()
		if !strings.HasPrefix(got, "HTTP/1.1 426 Upgrade Required\r\n") || !strings.HasSuffix(got, "\r\n\r\n"+tlsOnlyText+"\n") {
			t.Errorf("plaintext HTTP on a TLS-only relay: %q", got)
		}
	}
	res, err := client.Hello(ctx, client.Options{URL: "tls://" + addr, TLSConfig: clientTLS(cert)})
	if err != nil || res["name"] != "meetpoint" {
		t.Fatalf("TLS Hello: %v %v", res, err)
	}
}

func TestTLSHandshakeDeadline(t *testing.T) {
	// Only the TLS handshake deadline can end this client: the others are
	// out of reach.
	s, _, _ := startTLSServer(t, func(c *Config) {
		c.TLSHandshakeTimeout = 500 * time.Millisecond
		c.HandshakeTimeout, c.InactiveTimeout = time.Hour, time.Hour
	})
	c, err := net.Dial("tcp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A ClientHello record header, then silence (slowloris).
	if _, err := c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("expected the close at the 500ms handshake deadline, got %v", err)
	}
	waitFor(t, func() bool { return s.Stats().Closes["tls"] >= 1 }, "tls close counted")
}

func TestTLSGarbageAfterClientHello(t *testing.T) {
	s, _, _ := startTLSServer(t, nil)
	c, err := net.Dial("tcp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	junk := make([]byte, 600)
	rand.Read(junk)
	_, _ = c.Write(append([]byte{0x16, 0x03, 0x01, 0x02, 0x00}, junk...))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.ReadAll(c) // an alert, then close; must not hang
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open")
	}
	// The relay still serves.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := client.Hello(ctx, client.Options{URL: "tcp://" + s.Addrs()[0].String()}); err != nil {
		t.Fatal(err)
	}
}

// clientCert makes a CA and a client certificate it signed.
func clientCert(t *testing.T) (ca *x509.Certificate, caPEM []byte, leaf tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caT := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caT, caT, &caKey.PublicKey, caKey)
	ca, _ = x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	lt := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "device-42"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, _ := x509.CreateCertificate(rand.Reader, lt, ca, &key.PublicKey, caKey)
	parsed, _ := x509.ParseCertificate(der)
	return ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: parsed}
}

// identityAuth records the client certificate the authenticator saw.
type identityAuth struct{ seen chan string }

func (a identityAuth) Authenticate(_ context.Context, req AuthRequest, done func(AuthResult)) {
	name := ""
	if req.ClientCert != nil {
		name = req.ClientCert.Subject.CommonName
	}
	a.seen <- name
	done(AuthNoError)
}

func TestTLSClientCertificates(t *testing.T) {
	_, caPEM, leaf := clientCert(t)
	_, _, stranger := clientCert(t) // signed by another CA
	dir := t.TempDir()
	caPath := filepath.Join(dir, "ca.pem")
	os.WriteFile(caPath, caPEM, 0o644)
	fpPath := filepath.Join(dir, "fps")
	sum := sha256.Sum256(stranger.Certificate[0])
	os.WriteFile(fpPath, []byte("# allowed\n"+hex.EncodeToString(sum[:])+"\n"), 0o644)
	seen := make(chan string, 4)
	s, cert, _, _ := startTLSServerWith(t, func(tc *certs.Config) { tc.ClientCA = caPath },
		func(c *Config) { c.Auth = identityAuth{seen} })
	u := "tls://" + s.Addrs()[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// No certificate: refused.
	if _, err := client.Hello(ctx, client.Options{URL: u, TLSConfig: clientTLS(cert)}); err == nil {
		t.Fatal("client without certificate admitted")
	}
	// Signed by the CA: admitted, identity visible to the authenticator.
	conf := clientTLS(cert)
	conf.Certificates = []tls.Certificate{leaf}
	a, b := dialPair(t, client.Options{URL: u, Token: "id", TLSConfig: conf}, client.Options{URL: u, Token: "id", TLSConfig: conf})
	exchange(t, a, b, 1000)
	if got := <-seen; got != "device-42" {
		t.Fatalf("authenticator saw identity %q", got)
	}
	// Another CA's certificate: refused unless its fingerprint is listed.
	conf2 := clientTLS(cert)
	conf2.Certificates = []tls.Certificate{stranger}
	if _, err := client.Hello(ctx, client.Options{URL: u, TLSConfig: conf2}); err == nil {
		t.Fatal("certificate from another CA admitted")
	}
	s2, cert2, _, _ := startTLSServerWith(t, func(tc *certs.Config) { tc.ClientFingerprints = fpPath }, nil)
	conf3 := clientTLS(cert2)
	conf3.Certificates = []tls.Certificate{stranger}
	if _, err := client.Hello(ctx, client.Options{URL: "tls://" + s2.Addrs()[0].String(), TLSConfig: conf3}); err != nil {
		t.Fatalf("listed fingerprint refused: %v", err)
	}
	conf4 := clientTLS(cert2)
	conf4.Certificates = []tls.Certificate{leaf}
	if _, err := client.Hello(ctx, client.Options{URL: "tls://" + s2.Addrs()[0].String(), TLSConfig: conf4}); err == nil {
		t.Fatal("unlisted fingerprint admitted")
	}
}

func peerCert(t *testing.T, addr string) []byte {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Raw
}

// TestTLSReload: new certificate files are picked up without dropping a
// live tunnel; a broken new certificate keeps the old one.
func TestTLSReload(t *testing.T) {
	s, cert, dir, store := startTLSServerWith(t, nil, nil)
	addr := s.Addrs()[0].String()
	u := "tls://" + addr
	a, b := dialPair(t, client.Options{URL: u, Token: "r", TLSConfig: clientTLS(cert)}, client.Options{URL: u, Token: "r", TLSConfig: clientTLS(cert)})
	exchange(t, a, b, 1000)

	cert2, _ := certs.SelfSignedCert([]string{"127.0.0.1"})
	if err := certs.WriteSelfSigned(cert2, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(2 * time.Second)
	os.Chtimes(filepath.Join(dir, "cert.pem"), future, future)
	waitFor(t, func() bool { return string(peerCert(t, addr)) == string(cert2.Certificate[0]) }, "new certificate served")
	exchange(t, a, b, 1000) // the live tunnel survived

	os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("garbage"), 0o644)
	future = future.Add(2 * time.Second)
	os.Chtimes(filepath.Join(dir, "cert.pem"), future, future)
	time.Sleep(300 * time.Millisecond)
	if err := store.Reload(); err == nil {
		t.Fatal("Reload accepted a broken certificate")
	}
	if string(peerCert(t, addr)) != string(cert2.Certificate[0]) {
		t.Fatal("broken certificate replaced the good one")
	}
}

// TestTLSIdleTunnelsHoldNoGoroutine: 200 idle TLS tunnels, no goroutines.
func TestTLSIdleTunnelsHoldNoGoroutine(t *testing.T) {
	s, cert, _ := startTLSServer(t, nil)
	u := "tls://" + s.Addrs()[0].String()
	runtime.GC()
	base := runtime.NumGoroutine()
	var tuns []*client.Tunnel
	for i := range 200 {
		tok := "idle" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		a, b := dialPair(t, client.Options{URL: u, Token: tok, TLSConfig: clientTLS(cert)}, client.Options{URL: u, Token: tok, TLSConfig: clientTLS(cert)})
		tuns = append(tuns, a, b)
	}
	waitFor(t, func() bool { return s.Stats().TunnelsActive == 200 }, "200 tunnels")
	// The test's own client connections hold goroutines only when reading;
	// crypto/tls on the client side holds none while idle. Handshake and
	// authenticator goroutines retire shortly after the last pairing.
	deadline := time.Now().Add(testutil.Patience)
	n := runtime.NumGoroutine()
	for n > base+20 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	if n > base+20 {
		t.Fatalf("goroutines grew from %d to %d with 200 idle TLS tunnels", base, n)
	}
	exchange(t, tuns[0], tuns[1], 1000)
}

// TestTLSChainFile: intermediates from TLSChain follow the leaf.
func TestTLSChainFile(t *testing.T) {
	dir := t.TempDir()
	cp, kp, _ := tlsFiles(t, dir)
	inter, _ := certs.SelfSignedCert([]string{"intermediate.example"})
	chain := filepath.Join(dir, "chain.pem")
	os.WriteFile(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: inter.Certificate[0]}), 0o644)
	store := tlsStore(t, certs.Config{Cert: cp, Key: kp, Chain: chain})
	s := startServer(t, func(c *Config) { c.TLS = store.TLSConfig() })
	c, err := tls.Dial("tcp", s.Addrs()[0].String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	served := c.ConnectionState().PeerCertificates
	if len(served) != 2 || string(served[1].Raw) != string(inter.Certificate[0]) {
		t.Fatalf("served %d certificates", len(served))
	}
	os.WriteFile(chain, []byte("nothing"), 0o644)
	if err := store.Reload(); err == nil {
		t.Fatal("a chain file without certificates was accepted")
	}
}
