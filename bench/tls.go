package bench

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync/atomic"

	"github.com/meetpoint/meetpoint/relay/certs"
)

// TLS transports (--transports tls,wss): the harness's in-process relays
// serve TLS beside plaintext on their ports with one self-signed
// certificate per run, and the clients trust exactly it. With --fleet the
// nodes announce that certificate, so their mesh links are TLS sessions
// pinned to it (--mesh-tls): a cross-node TLS tunnel is encrypted on every
// hop. A spawned relay (--spawn-relay) gets the certificate's files; an
// external one (--relay-url) gets none: its TLS rows are skipped with a
// note.

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
	e.certs, e.tlsCert, e.tlsKey = st, cp, kp
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	clientTLS.Store(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	// The reference for the TLS rows: HAProxy terminating TLS on both
	// sides (a TLS client in front, a TLS backend behind), as the relay
	// does for two TLS clients. Its PEM is the certificate and key.
	ln, err := listenNoKeepAlive()
	if err != nil {
		return err
	}
	e.backTLS = &backend{ln: tls.NewListener(ln, st.TLSConfig()), addr: ln.Addr().String(),
		pending: map[uint64]chan net.Conn{}, tls: clientTLS.Load()}
	go e.backTLS.serve()
	pemCert, err := os.ReadFile(cp)
	if err != nil {
		return err
	}
	pemKey, err := os.ReadFile(kp)
	if err != nil {
		return err
	}
	e.haproxyPEM = filepath.Join(e.tmp, "haproxy.pem")
	if err := os.WriteFile(e.haproxyPEM, append(pemCert, pemKey...), 0o600); err != nil {
		return err
	}
	e.note("tls, wss: the relays serve TLS beside plaintext with one self-signed ECDSA certificate; the clients trust it (TLS 1.3, Go's crypto/tls on both sides)")
	return nil
}

// haproxyTLS starts haproxy once per Env terminating TLS on both sides:
// clients connect with TLS, and it connects to a TLS backend (the
// certificate is not checked there; the clients check it in front).
func (e *Env) haproxyTLS() *Peer {
	return e.startHAProxy("haproxy-tls", func(front string) (string, string) {
		return fmt.Sprintf(`global
    maxconn 7900
    nbthread %d
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind %s ssl crt %s
    maxconn 7900
    default_backend be
backend be
    server s1 %s ssl verify none maxconn 7900
`, runtime.NumCPU(), front, e.haproxyPEM, e.backTLS.addr), fmt.Sprintf("tcp mode, TLS terminated on both sides (the run's certificate in front, a TLS backend behind), nbthread %d", runtime.NumCPU())
	})
}
