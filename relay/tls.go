package relay

import (
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
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// TLS is served on the same port as plaintext: a connection whose first
// bytes are a TLS handshake record leaves netpoll (like a paired
// connection), does its handshake on a goroutine of its own bounded by
// TLSHandshakeTimeout (crypto/tls cannot resume a handshake interrupted by
// "would block"), and then lives on a forwarding loop's epoll set: the loop
// drives tls.Conn over a non-blocking adapter whose "would block" error is a
// temporary net.Error, which crypto/tls does not treat as fatal when
// reading. Writes are accepted whole into the adapter's bounded pending
// buffer and flushed on EPOLLOUT. An idle TLS connection or tunnel holds no
// goroutine.

// tlsConfigState holds the server certificate (reloadable) and client
// certificate policy.
type tlsConfigState struct {
	s        *Server
	cert     atomic.Pointer[tls.Certificate]
	clientCA *x509.CertPool
	fps      map[[32]byte]bool // allowed client certificate SHA-256 fingerprints
	conf     *tls.Config

	mu      sync.Mutex
	modTime time.Time // of the cert and key files when last loaded
	stop    chan struct{}
}

func newTLSState(s *Server) (*tlsConfigState, error) {
	cfg := &s.cfg
	ts := &tlsConfigState{s: s, stop: make(chan struct{})}
	switch {
	case cfg.TLSCert != "":
		if err := ts.load(); err != nil {
			return nil, err
		}
	case cfg.TLSSelfSigned:
		cert, err := SelfSignedCert([]string{"localhost", "127.0.0.1", "::1"})
		if err != nil {
			return nil, err
		}
		ts.cert.Store(&cert)
		s.log.Info("TLS with a generated self-signed certificate", "sha256", CertFingerprint(cert.Certificate[0]))
	default:
		return nil, nil
	}
	if cfg.TLSClientCA != "" {
		pemData, err := os.ReadFile(cfg.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls-client-ca: %w", err)
		}
		ts.clientCA = x509.NewCertPool()
		if !ts.clientCA.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("tls-client-ca: no certificate in %s", cfg.TLSClientCA)
		}
	}
	if cfg.TLSClientFingerprints != "" {
		fps, err := loadFingerprints(cfg.TLSClientFingerprints)
		if err != nil {
			return nil, fmt.Errorf("tls-client-fingerprints: %w", err)
		}
		ts.fps = fps
	}
	ts.conf = &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{ // TLS 1.2: forward secrecy and AEAD only (1.3 suites are fixed)
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,
		},
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return ts.cert.Load(), nil
		},
	}
	if ts.clientCA != nil || ts.fps != nil {
		ts.conf.ClientAuth = tls.RequireAnyClientCert
		ts.conf.VerifyPeerCertificate = ts.verifyClient
	}
	return ts, nil
}

// verifyClient admits a client certificate signed by the client CA or whose
// SHA-256 fingerprint is listed.
func (ts *tlsConfigState) verifyClient(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return errors.New("client certificate required")
	}
	if ts.fps[sha256.Sum256(raw[0])] {
		return nil
	}
	if ts.clientCA != nil {
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		inter := x509.NewCertPool()
		for _, r := range raw[1:] {
			if c, err := x509.ParseCertificate(r); err == nil {
				inter.AddCert(c)
			}
		}
		_, err = leaf.Verify(x509.VerifyOptions{Roots: ts.clientCA, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err == nil {
			return nil
		}
		return fmt.Errorf("client certificate not trusted: %w", err)
	}
	return errors.New("client certificate fingerprint not allowed")
}

func loadFingerprints(path string) (map[[32]byte]bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	fps := make(map[[32]byte]bool)
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := hex.DecodeString(strings.ReplaceAll(line, ":", ""))
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("%s:%d: not a SHA-256 fingerprint in hex", path, i+1)
		}
		fps[[32]byte(b)] = true
	}
	return fps, nil
}

// load reads the certificate chain and key; on error the current ones stay.
func (ts *tlsConfigState) load() error {
	cfg := &ts.s.cfg
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return fmt.Errorf("tls-cert/tls-key: %w", err)
	}
	if cfg.TLSChain != "" {
		chain, err := os.ReadFile(cfg.TLSChain)
		if err != nil {
			return fmt.Errorf("tls-chain: %w", err)
		}
		n := 0
		for block, rest := pem.Decode(chain); block != nil; block, rest = pem.Decode(rest) {
			if block.Type == "CERTIFICATE" {
				cert.Certificate = append(cert.Certificate, block.Bytes)
				n++
			}
		}
		if n == 0 {
			return fmt.Errorf("tls-chain: no certificate in %s", cfg.TLSChain)
		}
	}
	if cert.Leaf != nil && time.Now().After(cert.Leaf.NotAfter) {
		return fmt.Errorf("tls-cert: certificate expired on %s", cert.Leaf.NotAfter.Format(time.RFC3339))
	}
	ts.cert.Store(&cert)
	ts.mu.Lock()
	ts.modTime = ts.filesModTime()
	ts.mu.Unlock()
	return nil
}

func (ts *tlsConfigState) filesModTime() time.Time {
	var latest time.Time
	for _, p := range []string{ts.s.cfg.TLSCert, ts.s.cfg.TLSKey, ts.s.cfg.TLSChain} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil && st.ModTime().After(latest) {
			latest = st.ModTime()
		}
	}
	return latest
}

// watch reloads the certificate when its files change.
func (ts *tlsConfigState) watch(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ts.stop:
			return
		case <-t.C:
		}
		ts.mu.Lock()
		changed := !ts.filesModTime().Equal(ts.modTime)
		ts.mu.Unlock()
		if !changed {
			continue
		}
		if err := ts.load(); err != nil {
			ts.s.log.Error("certificate changed but cannot be loaded; keeping the old one", "err", err)
			ts.mu.Lock()
			ts.modTime = ts.filesModTime() // don't retry until the files change again
			ts.mu.Unlock()
			continue
		}
		ts.s.log.Info("certificate reloaded", "sha256", CertFingerprint(ts.cert.Load().Certificate[0]))
	}
}

// CertFingerprint is the SHA-256 of a DER certificate, in hex.
func CertFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// SelfSignedCert generates an ECDSA P-256 certificate valid for a year for
// the given host names and IP addresses.
func SelfSignedCert(hosts []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "meetpoint self-signed"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// WriteSelfSigned writes a certificate and key in PEM (key mode 0600).
func WriteSelfSigned(cert tls.Certificate, certPath, keyPath string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

// errWouldBlock is the adapter's "no bytes now": a temporary net.Error, so
// tls.Conn keeps its state and the caller retries on the next EPOLLIN.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// maxTLSPending bounds ciphertext waiting for a slow TLS reader.
const maxTLSPending = 256 << 10

// nbConn is the net.Conn under a tls.Conn. During the handshake it is a
// blocking net.Conn on Go's poller (the handshake goroutine parks there);
// afterwards it reads and writes the raw non-blocking descriptor.
type nbConn struct {
	prefix []byte   // bytes sniffed before the handshake started
	hs     net.Conn // handshake phase; nil afterwards
	fd     int

	mu      sync.Mutex // guards pending: tls writes come from any goroutine
	pending []byte
}

func (a *nbConn) Read(p []byte) (int, error) {
	if len(a.prefix) > 0 {
		n := copy(p, a.prefix)
		a.prefix = a.prefix[n:]
		if len(a.prefix) == 0 {
			a.prefix = nil // don't pin the sniffed ClientHello for the session's life
		}
		return n, nil
	}
	if a.hs != nil {
		return a.hs.Read(p)
	}
	n, err := unix.Read(a.fd, p)
	switch {
	case n > 0:
		return n, nil
	case err == unix.EAGAIN || err == unix.EINTR:
		return 0, errWouldBlock
	case err != nil:
		return 0, err
	default:
		return 0, io.EOF
	}
}

func (a *nbConn) Write(p []byte) (int, error) {
	if a.hs != nil {
		return a.hs.Write(p)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.pending) == 0 {
		n, err := unix.Write(a.fd, p)
		if n > 0 {
			p = p[n:]
		}
		if err != nil && err != unix.EAGAIN {
			return 0, err
		}
		if len(p) == 0 {
			return len(p), nil
		}
	}
	if len(a.pending)+len(p) > maxTLSPending {
		return 0, errors.New("tls: peer not reading")
	}
	a.pending = append(a.pending, p...)
	return len(p), nil
}

// flush writes pending ciphertext; unix.EAGAIN if some remains.
func (a *nbConn) flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.pending) > 0 {
		n, err := unix.Write(a.fd, a.pending)
		if n > 0 {
			a.pending = a.pending[:copy(a.pending, a.pending[n:])]
		}
		if err != nil {
			return err
		}
	}
	if cap(a.pending) > 16<<10 {
		a.pending = nil // don't keep a big buffer on an idle connection
	}
	return nil
}

func (a *nbConn) Close() error                       { return unix.Close(a.fd) }
func (a *nbConn) LocalAddr() net.Addr                { return nil }
func (a *nbConn) RemoteAddr() net.Addr               { return nil }
func (a *nbConn) SetDeadline(t time.Time) error      { return a.deadline(t) }
func (a *nbConn) SetReadDeadline(t time.Time) error  { return a.deadline(t) }
func (a *nbConn) SetWriteDeadline(t time.Time) error { return a.deadline(t) }
func (a *nbConn) deadline(t time.Time) error {
	if a.hs != nil {
		return a.hs.SetDeadline(t)
	}
	return nil
}

// tlsSock is a TLS session as a sock for the forwarding loops.
type tlsSock struct {
	tc *tls.Conn
	ad *nbConn
}

func (s *tlsSock) Fd() int { return s.ad.fd }

func (s *tlsSock) Read(p []byte) (int, error) {
	for {
		n, err := s.tc.Read(p)
		switch {
		case n > 0:
			return n, nil
		case err == nil: // a record without application data
			continue
		case errors.Is(err, errWouldBlock):
			return 0, unix.EAGAIN
		default:
			return 0, err
		}
	}
}

// Write encrypts at most one record's worth of p; it refuses (EAGAIN) while
// earlier ciphertext is still pending, so at most one record plus the
// adapter's bound is buffered.
func (s *tlsSock) Write(p []byte) (int, error) {
	if err := s.ad.flush(); err != nil {
		return 0, err
	}
	if len(p) > 16<<10 {
		p = p[:16<<10]
	}
	return s.tc.Write(p)
}

func (s *tlsSock) Flush() error { return s.ad.flush() }

func (s *tlsSock) Close() error {
	_ = s.tc.SetWriteDeadline(time.Now()) // no blocking close_notify
	return s.ad.Close()
}

// tlsTransport is a TLS connection before its tunnel: read by forwarder f's
// loop, written from any goroutine holding the conn's lock.
type tlsTransport struct {
	f       *forwarder
	s       *tlsSock
	c       *conn
	state   tls.ConnectionState
	dropped bool // loop-owned: removed from the epoll set
}

func (t *tlsTransport) write(b []byte) error {
	for len(b) > 0 {
		n, err := t.s.tc.Write(b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// close removes the connection from its loop, then releases it.
func (t *tlsTransport) close() {
	if !t.f.do(func() { t.drop(t.f) }) {
		t.c.released(nil)
	}
}

func (t *tlsTransport) drop(f *forwarder) {
	if t.dropped {
		return
	}
	t.dropped = true
	f.unregister(t.s.Fd())
	t.c.released(nil)
}

func (t *tlsTransport) detach() (sock, error) { return t.s, nil }
func (t *tlsTransport) discard()              { t.s.Close() }

// event implements pollee: decrypt what arrived and feed the conn's stages.
func (t *tlsTransport) event(f *forwarder, events uint32) {
	if events&unix.EPOLLOUT != 0 {
		if err := t.s.Flush(); err != nil && err != unix.EAGAIN {
			t.fail(ReasonIOError)
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		t.readAll(f)
	}
}

func (t *tlsTransport) readAll(f *forwarder) {
	if f.scratch == nil {
		f.scratch = make([]byte, 16<<10)
	}
	for !t.dropped {
		n, err := t.s.Read(f.scratch)
		if n > 0 {
			c := t.c
			c.mu.Lock()
			c.consume(f.scratch[:n])
			start := c.authStart
			c.authStart = nil
			c.unlock()
			if start != nil {
				c.startAuth(start)
			}
			continue
		}
		if err != unix.EAGAIN {
			t.fail(ReasonPeerClosed)
		}
		return
	}
}

func (t *tlsTransport) fail(r Reason) {
	c := t.c
	c.mu.Lock()
	if state(c.st.Load()) == stClaimed {
		c.dataLate = true // the peer is gone: the target sees a failed set-up
	}
	c.closeNow(r)
	c.unlock()
}

func (t *tlsTransport) shutdown(f *forwarder) {
	c := t.c
	c.mu.Lock()
	c.fail(ReasonShutdown, 1001, "Server shutting down")
	c.closing, c.closeIssued = true, true
	c.mu.Unlock()
	t.drop(f)
}

// startTLS runs the handshake for a connection that left netpoll, then
// gives the session to a forwarding loop as a new conn.
func (s *Server) startTLS(fd int, prefix []byte, peer net.Addr, adm *admission) {
	s.stats.tlsStarted.Inc()
	file := os.NewFile(uintptr(fd), "tls")
	hs, err := net.FileConn(file)
	file.Close()
	if err != nil {
		adm.release()
		s.stats.tlsFailed.Inc()
		s.stats.closes[ReasonTLS].Inc()
		return
	}
	ad := &nbConn{prefix: prefix, hs: hs, fd: -1}
	tc := tls.Server(ad, s.tls.conf)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.TLSHandshakeTimeout)
	_ = hs.SetDeadline(time.Now().Add(s.cfg.TLSHandshakeTimeout))
	err = tc.HandshakeContext(ctx)
	cancel()
	if err == nil {
		err = ad.takeFd(hs)
	}
	hs.Close()
	if err != nil {
		s.log.Debug("TLS handshake failed", "peer", peer.String(), "err", err)
		s.stats.tlsFailed.Inc()
		s.stats.closes[ReasonTLS].Inc()
		if ad.fd >= 0 {
			unix.Close(ad.fd)
		}
		adm.release()
		return
	}
	s.stats.tlsOK.Inc()
	ad.hs = nil
	tsock := &tlsSock{tc: tc, ad: ad}
	f := s.pickForwarder(ad.fd)
	tr := &tlsTransport{f: f, s: tsock, state: tc.ConnectionState()}
	c := s.newConn(tr, peer, adm)
	if c == nil {
		tsock.Close()
		adm.release()
		return
	}
	tr.c = c
	if !f.do(func() {
		if err := f.register(ad.fd, tr); err != nil {
			tr.fail(ReasonIOError)
			return
		}
		tr.readAll(f) // the handshake may have read application data already
	}) {
		c.shutdown()
	}
}

// takeFd keeps a descriptor of our own for the socket behind Go's conn.
func (a *nbConn) takeFd(hs net.Conn) error {
	sc, ok := hs.(syscall.Conn)
	if !ok {
		return errors.New("tls: not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var derr error
	if err := rc.Control(func(fd uintptr) {
		a.fd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return err
	}
	if derr != nil {
		a.fd = -1
		return derr
	}
	return unix.SetNonblock(a.fd, true)
}
