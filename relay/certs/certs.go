// Package certs holds a relay's TLS material: the server certificate
// (files reloaded on change and on Reload, or a self-signed one generated
// and, with a data directory, kept across restarts) and the client
// certificate policy (a CA bundle and/or SHA-256 fingerprints). It hands
// the engine a *tls.Config.
package certs

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
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config is the TLS section of a relay's configuration.
type Config struct {
	// Cert and Key are PEM files (the certificate file may hold the whole
	// chain), reloaded on Reload and when the files change.
	Cert, Key string
	// CertPEM and KeyPEM are the certificate (chain) and key themselves,
	// PEM-encoded, instead of files: for a configuration passed on stdin,
	// so the key never sits in a file. They are not reloaded.
	CertPEM, KeyPEM []byte
	// Chain is an optional PEM file of intermediate certificates sent
	// after Cert's (nymea's [SSL] certificateChain).
	Chain string
	// SelfSigned serves TLS with a generated self-signed certificate when
	// no Cert is given; with DataDir it is kept there and reused.
	SelfSigned bool
	// DataDir, if set, holds the self-signed certificate across restarts
	// (selfsigned-cert.pem, selfsigned-key.pem), so pinned clients keep
	// working.
	DataDir string
	// ClientCA, a PEM bundle, and ClientFingerprints, a file of SHA-256
	// certificate fingerprints in hex (one per line), restrict clients to
	// those presenting a certificate signed by the CA or listed.
	ClientCA, ClientFingerprints string
	// WatchInterval is how often the certificate files are checked for
	// changes (0: 2 s).
	WatchInterval time.Duration
}

// Enabled reports whether TLS is configured.
func (c *Config) Enabled() bool { return c.Cert != "" || len(c.CertPEM) > 0 || c.SelfSigned }

// Validate reports the first invalid field, naming its flag.
func (c *Config) Validate() error {
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("tls-cert/tls-key: both or neither must be given")
	}
	if (len(c.CertPEM) == 0) != (len(c.KeyPEM) == 0) {
		return errors.New("tls-cert-pem/tls-key-pem: both or neither must be given")
	}
	if len(c.CertPEM) > 0 && c.Cert != "" {
		return errors.New("tls-cert-pem and tls-cert: one or the other")
	}
	if (c.ClientCA != "" || c.ClientFingerprints != "") && !c.Enabled() {
		return errors.New("tls-client-ca/tls-client-fingerprints: need TLS")
	}
	return nil
}

// Store is the TLS material in force. Safe for concurrent use.
type Store struct {
	cfg      Config
	log      *slog.Logger
	cert     atomic.Pointer[tls.Certificate]
	clientCA *x509.CertPool
	fps      map[[32]byte]bool // allowed client certificate SHA-256 fingerprints
	conf     *tls.Config

	// now is the clock expiry is judged by (time.Now; tests move it).
	now func() time.Time
	// warned is when the expiry goroutine last warned of a close expiry;
	// only that goroutine reads or writes it.
	warned time.Time

	mu     sync.Mutex
	stamp  filesStamp // of the cert, key and chain files when last loaded
	stop   chan struct{}
	closed bool
	done   sync.WaitGroup // the watch and expiry goroutines
}

// Expiry warnings begin ExpiryWarning before a certificate's NotAfter and
// repeat once a day.
const ExpiryWarning = 14 * 24 * time.Hour

// New loads the material cfg names (or generates a self-signed
// certificate) and starts watching the certificate files. It returns nil
// and no error when cfg enables no TLS.
func New(cfg Config, log *slog.Logger) (*Store, error) {
	return newStore(cfg, log, time.Now, time.Hour)
}

// newStore is New with the clock expiry is judged by and how often it is
// checked.
func newStore(cfg Config, log *slog.Logger, now func() time.Time, checkEvery time.Duration) (*Store, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.WatchInterval <= 0 {
		cfg.WatchInterval = 2 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	ts := &Store{cfg: cfg, log: log, now: now, stop: make(chan struct{})}
	switch {
	case cfg.Cert != "" || len(cfg.CertPEM) > 0:
		if err := ts.load(); err != nil {
			return nil, err
		}
	default:
		cert, err := ts.selfSigned()
		if err != nil {
			return nil, err
		}
		ts.cert.Store(&cert)
	}
	if cfg.ClientCA != "" {
		pemData, err := os.ReadFile(cfg.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls-client-ca: %w", err)
		}
		ts.clientCA = x509.NewCertPool()
		if !ts.clientCA.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("tls-client-ca: no certificate in %s", cfg.ClientCA)
		}
	}
	if cfg.ClientFingerprints != "" {
		fps, err := loadFingerprints(cfg.ClientFingerprints)
		if err != nil {
			return nil, fmt.Errorf("tls-client-fingerprints: %w", err)
		}
		ts.fps = fps
	}
	ts.conf = &tls.Config{
		MinVersion: tls.VersionTLS12,
		// One record per write: a reply arrives whole (see relay.NewServer).
		DynamicRecordSizingDisabled: true,
		CipherSuites: []uint16{ // TLS 1.2: forward secrecy and AEAD only (1.3 suites are fixed)
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,
		},
		// h2 for HTTP API clients (the relay hands those to net/http);
		// WebSocket and raw clients negotiate http/1.1 or nothing.
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return ts.cert.Load(), nil
		},
	}
	if ts.clientCA != nil || ts.fps != nil {
		ts.conf.ClientAuth = tls.RequireAnyClientCert
		ts.conf.VerifyConnection = ts.verifyClient
	}
	if cfg.Cert != "" {
		ts.done.Go(func() { ts.watch(cfg.WatchInterval) })
	}
	ts.done.Go(func() { ts.expiry(checkEvery) })
	return ts, nil
}

// TLSConfig is the server configuration to hand the engine.
func (ts *Store) TLSConfig() *tls.Config { return ts.conf }

// Fingerprint is the SHA-256 of the certificate in force, in hex.
func (ts *Store) Fingerprint() string { return CertFingerprint(ts.cert.Load().Certificate[0]) }

// NotAfter is when the certificate in force expires (zero if it cannot be
// parsed): meetpoint serve exports it as
// meetpoint_tls_certificate_expiry_timestamp_seconds.
func (ts *Store) NotAfter() time.Time {
	if leaf := ts.cert.Load().Leaf; leaf != nil {
		return leaf.NotAfter
	}
	return time.Time{}
}

// expiry checks the certificate's expiry every period until Close.
func (ts *Store) expiry(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ts.checkExpiry()
		select {
		case <-ts.stop:
			return
		case <-t.C:
		}
	}
}

// checkExpiry warns, once a day, of a certificate that expires within
// ExpiryWarning or has expired. A self-signed certificate that has expired
// is replaced (and kept in DataDir), as a restart would: clients that
// verify validity would otherwise be refused for as long as the relay
// runs, and pinned clients need the new fingerprint either way.
func (ts *Store) checkExpiry() {
	now, end := ts.now(), ts.NotAfter()
	if end.IsZero() {
		return
	}
	selfSigned, expired := ts.cfg.Cert == "" && len(ts.cfg.CertPEM) == 0, !now.Before(end)
	if selfSigned && expired {
		cert, err := ts.selfSigned()
		switch {
		case err != nil && len(cert.Certificate) == 0:
			ts.log.Error("the self-signed certificate has expired and a new one cannot be made; keeping the old one", "err", err)
			return
		case err != nil: // made, not kept: served all the same (the expired one is of no use)
			ts.log.Error("the self-signed certificate has expired; its replacement cannot be kept in the data dir, so a restart makes another: serving it anyway",
				"err", err, "sha256", CertFingerprint(cert.Certificate[0]))
		}
		ts.cert.Store(&cert)
		return
	}
	if end.Sub(now) >= ExpiryWarning || now.Sub(ts.warned) < 24*time.Hour {
		return
	}
	ts.warned = now
	msg := "the TLS certificate expires soon: renew it (the relay loads new files by itself or on SIGHUP)"
	switch {
	case selfSigned:
		msg = "the self-signed certificate expires soon: a new one replaces it then, and clients pinned to the old fingerprint will need the new one"
	case expired:
		msg = "the TLS certificate has expired: clients that verify it are refused; renew it (the relay loads new files by itself or on SIGHUP)"
	}
	ts.log.Warn(msg, "not_after", end.UTC().Format(time.RFC3339), "sha256", ts.Fingerprint())
}

// Reload re-reads the certificate files (SIGHUP); on error the current
// certificate stays. A self-signed store has nothing to reload.
func (ts *Store) Reload() error {
	commit, err := ts.PrepareReload()
	if err == nil {
		commit()
	}
	return err
}

// PrepareReload reads the certificate files again, and commit puts them
// in force (nothing to read without files).
func (ts *Store) PrepareReload() (commit func(), err error) {
	if ts.cfg.Cert == "" {
		return func() {}, nil
	}
	return ts.read()
}

// Close stops watching the files and the expiry, and returns once they
// have stopped.
func (ts *Store) Close() {
	ts.mu.Lock()
	if !ts.closed {
		ts.closed = true
		close(ts.stop)
	}
	ts.mu.Unlock()
	ts.done.Wait()
}

// selfSigned generates the self-signed certificate, or reuses the one kept
// in DataDir. Where DataDir cannot keep a new one, the certificate made
// is returned with the error.
func (ts *Store) selfSigned() (tls.Certificate, error) {
	var certPath, keyPath string
	if d := ts.cfg.DataDir; d != "" {
		certPath, keyPath = filepath.Join(d, "selfsigned-cert.pem"), filepath.Join(d, "selfsigned-key.pem")
		cert, err := tls.LoadX509KeyPair(certPath, keyPath)
		switch {
		case err == nil && cert.Leaf != nil && ts.now().Before(cert.Leaf.NotAfter):
			ts.log.Info("TLS with the kept self-signed certificate", "sha256", CertFingerprint(cert.Certificate[0]), "file", certPath)
			return cert, nil
		case err == nil:
			ts.log.Warn("the kept self-signed certificate has expired: a new one replaces it, and clients pinned to the old fingerprint need the new one",
				"old_sha256", CertFingerprint(cert.Certificate[0]), "file", certPath)
		case !errors.Is(err, fs.ErrNotExist) || exists(certPath) || exists(keyPath): // one of the pair gone is no pair
			ts.log.Warn("the kept self-signed certificate cannot be used: a new one replaces it, and clients pinned to the old fingerprint need the new one",
				"err", err, "file", certPath)
		}
	}
	cert, err := SelfSignedCert([]string{"localhost", "127.0.0.1", "::1"})
	if err != nil {
		return cert, err
	}
	if certPath != "" {
		if err := os.MkdirAll(ts.cfg.DataDir, 0o700); err != nil {
			return cert, fmt.Errorf("data-dir: %w", err)
		}
		if err := WriteSelfSigned(cert, certPath, keyPath); err != nil {
			return cert, fmt.Errorf("data-dir: %w", err)
		}
	}
	ts.log.Info("TLS with a generated self-signed certificate", "sha256", CertFingerprint(cert.Certificate[0]), "file", certPath)
	return cert, nil
}

// exists reports whether something is at path (a kept file, damaged or not).
func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// verifyClient admits a client certificate signed by the client CA or whose
// SHA-256 fingerprint is listed. It is the VerifyConnection callback, not
// VerifyPeerCertificate, because crypto/tls calls the latter on full
// handshakes only: a resumed session (its ticket good for seven days)
// would keep a certificate that has since expired.
func (ts *Store) verifyClient(cs tls.ConnectionState) error {
	peers := cs.PeerCertificates
	if len(peers) == 0 {
		return errors.New("client certificate required")
	}
	leaf := peers[0]
	if ts.fps[sha256.Sum256(leaf.Raw)] {
		return nil
	}
	if ts.clientCA != nil {
		inter := x509.NewCertPool()
		for _, c := range peers[1:] {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: ts.clientCA, Intermediates: inter, CurrentTime: ts.now(),
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
func (ts *Store) load() error {
	commit, err := ts.read()
	if err == nil {
		commit()
	}
	return err
}

// read reads and checks the certificate; commit puts it in force.
func (ts *Store) read() (commit func(), err error) {
	cfg := &ts.cfg
	stamp := ts.filesStamp() // before reading: a change meanwhile is seen by the watch
	var cert tls.Certificate
	if len(cfg.CertPEM) > 0 {
		if cert, err = tls.X509KeyPair(cfg.CertPEM, cfg.KeyPEM); err != nil {
			return nil, fmt.Errorf("tls-cert-pem/tls-key-pem: %w", err)
		}
	} else if cert, err = tls.LoadX509KeyPair(cfg.Cert, cfg.Key); err != nil {
		return nil, fmt.Errorf("tls-cert/tls-key: %w", err)
	}
	if cfg.Chain != "" {
		chain, err := os.ReadFile(cfg.Chain)
		if err != nil {
			return nil, fmt.Errorf("tls-chain: %w", err)
		}
		n := 0
		for block, rest := pem.Decode(chain); block != nil; block, rest = pem.Decode(rest) {
			if block.Type == "CERTIFICATE" {
				cert.Certificate = append(cert.Certificate, block.Bytes)
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("tls-chain: no certificate in %s", cfg.Chain)
		}
	}
	if cert.Leaf != nil && ts.now().After(cert.Leaf.NotAfter) {
		return nil, fmt.Errorf("tls-cert: certificate expired on %s", cert.Leaf.NotAfter.Format(time.RFC3339))
	}
	return func() {
		ts.cert.Store(&cert)
		ts.mu.Lock()
		ts.stamp = stamp
		ts.mu.Unlock()
	}, nil
}

// filesStamp is what the watch compares: each file's inode, modification
// time and size (cert, key, chain; zero for one absent), so that any file
// changing is seen, also one replaced by a file older than another of
// them (mv keeps its time; a key is made before its certificate), or by
// one of the same size written within the same clock tick (a renewed
// ECDSA key: its inode differs).
type filesStamp [3]struct {
	ino       uint64
	mod, size int64
}

func (ts *Store) filesStamp() filesStamp {
	var s filesStamp
	for i, p := range []string{ts.cfg.Cert, ts.cfg.Key, ts.cfg.Chain} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil {
			s[i].mod, s[i].size = st.ModTime().UnixNano(), st.Size()
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				s[i].ino = uint64(sys.Ino)
			}
		}
	}
	return s
}

// watch reloads the certificate when its files change.
func (ts *Store) watch(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ts.stop:
			return
		case <-t.C:
		}
		// The stamp is taken before the files are read (here and in
		// read): a file changing while they are read or refused is seen
		// at the next look, not counted as seen already.
		ts.mu.Lock()
		now := ts.filesStamp()
		changed := now != ts.stamp
		ts.mu.Unlock()
		if !changed {
			continue
		}
		if err := ts.load(); err != nil {
			ts.log.Error("certificate changed but cannot be loaded; keeping the old one", "err", err)
			ts.mu.Lock()
			ts.stamp = now // don't retry until the files change again
			ts.mu.Unlock()
			continue
		}
		ts.log.Info("certificate reloaded", "sha256", CertFingerprint(ts.cert.Load().Certificate[0]))
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

// WriteSelfSigned writes a certificate and key in PEM (key mode 0600,
// certificate 0644), each to a new file renamed over the old, so that a
// key file left readable by others does not hold the new key, and a crash
// leaves the old file or the new, never half of one.
func WriteSelfSigned(cert tls.Certificate, certPath, keyPath string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return err
	}
	if err := replaceFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
		return err
	}
	return replaceFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

// replaceFile writes data to a new file beside path, with mode perm, and
// renames it over path.
func replaceFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*") // mode 0600 from the start
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a rename: nothing there
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
