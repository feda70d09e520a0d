package relay

import (
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
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

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
