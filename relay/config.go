package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config is the complete configuration of a relay Server. The zero value is
// not usable; start from DefaultConfig and override fields.
type Config struct {
	// Listen holds the addresses to listen on ("127.0.0.1:8443", "[::1]:8443").
	// Every address serves every transport (WebSocket and raw TCP JSON-RPC).
	Listen []string
	// Name is returned by RemoteProxy.Hello.
	Name string
	// Auth decides whether a token is valid. Required.
	Auth Authenticator

	// InactiveTimeout bounds the time from connect until a successful
	// Authenticate (nymea's inactiveTimeout).
	InactiveTimeout time.Duration
	// AloneTimeout bounds the time an authenticated client waits for its partner.
	AloneTimeout time.Duration
	// AuthTimeout bounds the authenticator; when it fires the client gets
	// AuthenticationErrorTimeout.
	AuthTimeout time.Duration
	// RPCTimeout bounds any asynchronous JSON-RPC call; when it fires the client
	// gets "Command timed out" and is closed.
	RPCTimeout time.Duration
	// WriteStallTimeout closes a tunnel whose receiver has accepted no byte
	// for this long while data is waiting for it.
	WriteStallTimeout time.Duration
	// MaxBuffer is the most bytes buffered by the relay per tunnel direction.
	// When it is full the relay stops reading the sender so that TCP flow
	// control pushes back.
	MaxBuffer int
	// MaxPreAuth is the most bytes of unparsed JSON-RPC accepted before a
	// tunnel exists (nymea: 10 KiB).
	MaxPreAuth int
	// MaxHeader is the most bytes of an HTTP request head.
	MaxHeader int
	// HandshakeTimeout bounds the time from connect until the transport is
	// known (first bytes sniffed, HTTP head complete): slowloris defence.
	HandshakeTimeout time.Duration
	// Limits are the abuse limits.
	Limits Limits
	// TPServerTimeout closes a registered TunnelProxy server silent this
	// long (its client pings every 30 s).
	TPServerTimeout time.Duration
	// TPClientBuffer is the most bytes waiting for one TunnelProxy client;
	// beyond it that client is disconnected (never the server).
	TPClientBuffer int
	// Loops is the number of netpoll event loops and forwarding loops.
	// 0 means one per CPU.
	Loops int
	// Logger receives the relay's logs. nil means slog.Default().
	Logger *slog.Logger

	// TLSCert and TLSKey are PEM files (the certificate file may hold the
	// whole chain). With them, TLS is served on every listen address beside
	// plaintext; they are reloaded on SIGHUP (Server.Reload) and when the
	// files change.
	TLSCert, TLSKey string
	// TLSChain is an optional PEM file of intermediate certificates sent
	// after TLSCert's (nymea's [SSL] certificateChain).
	TLSChain string
	// TLSSelfSigned serves TLS with a certificate generated at start-up when
	// no TLSCert is given.
	TLSSelfSigned bool
	// TLSClientCA, a PEM bundle, and TLSClientFingerprints, a file of SHA-256
	// certificate fingerprints in hex (one per line), restrict TLS clients to
	// those presenting a certificate signed by the CA or listed.
	TLSClientCA, TLSClientFingerprints string
	// TLSOnly refuses plaintext clients.
	TLSOnly bool
	// TLSHandshakeTimeout bounds the TLS handshake, counted from accept
	// (time spent waiting for a handshake slot included).
	TLSHandshakeTimeout time.Duration
	// MaxTLSHandshakes bounds TLS handshakes running at once (each needs a
	// goroutine); up to four times as many more wait for a slot, and
	// beyond that new TLS clients are refused (limit_tls_handshakes).
	MaxTLSHandshakes int
	// TLSWatchInterval is how often the certificate files are checked for
	// changes.
	TLSWatchInterval time.Duration
}

// TLSEnabled reports whether TLS is configured.
func (c *Config) TLSEnabled() bool { return c.TLSCert != "" || c.TLSSelfSigned }

// DefaultConfig returns the defaults documented in docs/protocol.md.
func DefaultConfig() Config {
	return Config{
		Listen:            []string{"127.0.0.1:8443"},
		Name:              "meetpoint",
		InactiveTimeout:   8 * time.Second,
		AloneTimeout:      8 * time.Second,
		AuthTimeout:       8 * time.Second,
		RPCTimeout:        10 * time.Second,
		WriteStallTimeout: 10 * time.Second,
		MaxBuffer:         64 << 10,
		MaxPreAuth:        10 << 10,
		MaxHeader:         8 << 10,
		HandshakeTimeout:  5 * time.Second,
		Limits:            DefaultLimits(),
		TPServerTimeout:   60 * time.Second,
		TPClientBuffer:    1 << 20,

		TLSHandshakeTimeout: 5 * time.Second,
		MaxTLSHandshakes:    256,
		TLSWatchInterval:    2 * time.Second,
	}
}

// Validate reports the first invalid field, naming it.
func (c *Config) Validate() error {
	if len(c.Listen) == 0 {
		return errors.New("listen: at least one address is required")
	}
	if c.Auth == nil {
		return errors.New("auth: an authenticator is required")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"inactive-timeout", c.InactiveTimeout},
		{"alone-timeout", c.AloneTimeout},
		{"auth-timeout", c.AuthTimeout},
		{"rpc-timeout", c.RPCTimeout},
		{"write-stall-timeout", c.WriteStallTimeout},
		{"handshake-timeout", c.HandshakeTimeout},
		{"tp-server-timeout", c.TPServerTimeout},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s: must be positive, got %v", d.name, d.v)
		}
	}
	if c.MaxBuffer < 4096 {
		return fmt.Errorf("max-buffer: must be at least 4096, got %d", c.MaxBuffer)
	}
	if c.MaxPreAuth < 1024 {
		return fmt.Errorf("max-preauth: must be at least 1024, got %d", c.MaxPreAuth)
	}
	if c.TPClientBuffer < 64<<10 {
		return fmt.Errorf("tp-client-buffer: must be at least 65536, got %d", c.TPClientBuffer)
	}
	if c.MaxHeader < 1024 {
		return fmt.Errorf("max-header: must be at least 1024, got %d", c.MaxHeader)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("tls-cert/tls-key: both or neither must be given")
	}
	if c.TLSOnly && !c.TLSEnabled() {
		return errors.New("tls-only: needs tls-cert and tls-key (or a self-signed certificate)")
	}
	if (c.TLSClientCA != "" || c.TLSClientFingerprints != "") && !c.TLSEnabled() {
		return errors.New("tls-client-ca/tls-client-fingerprints: need TLS")
	}
	if c.TLSEnabled() && c.TLSHandshakeTimeout <= 0 {
		return fmt.Errorf("tls-handshake-timeout: must be positive, got %v", c.TLSHandshakeTimeout)
	}
	if c.TLSEnabled() && c.MaxTLSHandshakes <= 0 {
		return fmt.Errorf("max-tls-handshakes: must be positive, got %d", c.MaxTLSHandshakes)
	}
	l := &c.Limits
	switch {
	case l.MaxConns < 0:
		return fmt.Errorf("max-conns: must not be negative, got %d", l.MaxConns)
	case l.MaxConnsPerIP < 0:
		return fmt.Errorf("max-conns-per-ip: must not be negative, got %d", l.MaxConnsPerIP)
	case l.ConnRatePerIP < 0:
		return fmt.Errorf("conn-rate-per-ip: must not be negative, got %v", l.ConnRatePerIP)
	case l.AuthFailuresPerIP < 0:
		return fmt.Errorf("auth-failures-per-ip: must not be negative, got %d", l.AuthFailuresPerIP)
	case l.AuthFailuresPerIP > 0 && l.BanTime <= 0:
		return fmt.Errorf("ban-time: must be positive when auth-failures-per-ip is set, got %v", l.BanTime)
	case l.TunnelRate < 0:
		return fmt.Errorf("tunnel-rate: must not be negative, got %d", l.TunnelRate)
	case l.IPv6Prefix < 0 || l.IPv6Prefix > 128:
		return fmt.Errorf("ipv6-prefix: must be between 0 and 128, got %d", l.IPv6Prefix)
	}
	if c.Loops < 0 {
		return fmt.Errorf("loops: must not be negative, got %d", c.Loops)
	}
	return nil
}
