package bench

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"slices"
	"sync/atomic"

	"github.com/meetpoint/meetpoint/relay/certs"
)

// TLS transports (--transports tls,wss): the harness's in-process relays
// serve TLS beside plaintext on their ports with one self-signed
// certificate per run, and the clients trust exactly it. With --fleet the
// nodes announce that certificate, so their mesh links are TLS sessions
// pinned to it (--mesh-tls): a cross-node TLS tunnel is encrypted on every
// hop. A spawned or external relay gets no certificate from the harness:
// its TLS rows are skipped with a note.

// clientTLS is the client side of the run's certificate (nil: no TLS
// transport asked for). Set once, before any dial.
var clientTLS atomic.Pointer[tls.Config]

// wantsTLS reports whether o asks for a TLS transport.
func wantsTLS(o *Options) bool {
	return slices.Contains(o.Transports, "tls") || slices.Contains(o.Transports, "wss")
}

// isTLS reports whether a meetpoint transport is TLS.
func isTLS(transport string) bool { return transport == "tls" || transport == "wss" }

// startTLS makes the run's certificate (in the run's temporary folder)
// and the client configuration that trusts it.
func (e *Env) startTLS() error {
	cert, err := certs.SelfSignedCert([]string{"localhost", "127.0.0.1"})
	if err != nil {
		return err
	}
	cp, kp := filepath.Join(e.tmp, "cert.pem"), filepath.Join(e.tmp, "key.pem")
	if err := certs.WriteSelfSigned(cert, cp, kp); err != nil {
		return err
	}
	st, err := certs.New(certs.Config{Cert: cp, Key: kp}, nil)
	if err != nil {
		return err
	}
	e.certs = st
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	clientTLS.Store(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	e.note("tls, wss: the relays serve TLS beside plaintext with one self-signed ECDSA certificate; the clients trust it (TLS 1.3, Go's crypto/tls on both sides)")
	return nil
}
