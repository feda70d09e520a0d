package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/meetpoint/meetpoint/relay/limits"
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
	// AllowedOrigins, if set, lists the Origin values (e.g.
	// "https://app.example") whose pages may open relay WebSockets; "*"
	// allows any. Requests without an Origin (not from a browser) always
	// may. Empty: any origin.
	AllowedOrigins []string
	// Access, if set, decides what each identity may do (pair, register
	// or reach TunnelProxy servers, HTTP paths): deny unless a rule allows
	// (package relay/access). Nil allows everything.
	Access Access

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
	// WSBinaryOnly sends what raw TCP peers write to a WebSocket client in
	// BINARY frames only. By default it goes in TEXT frames while the
	// stream is valid UTF-8 (cut at character boundaries) — nymea's
	// clients listen for text messages only — and in BINARY frames from
	// the first byte that cannot be UTF-8 on.
	WSBinaryOnly bool
	// TCPSettle holds the partner's first tunnel bytes to a raw TCP (or
	// TLS) client until this long after its TunnelEstablished was written,
	// so that a client that parses its whole receive buffer as one JSON
	// message (nymea's client library) reads the notification alone. It
	// applies to clients that called RemoteProxy.Hello first, which
	// nymea's library always does; others pay nothing. 0 turns it off.
	TCPSettle time.Duration
	// MaxPreAuth is the most bytes of unparsed JSON-RPC accepted before a
	// tunnel exists (nymea: 10 KiB).
	MaxPreAuth int
	// MaxHeader is the most bytes of an HTTP request head.
	MaxHeader int
	// HandshakeTimeout bounds the time from connect until the transport is
	// known (first bytes sniffed, HTTP head complete): slowloris defence.
	HandshakeTimeout time.Duration
	// Limits are the abuse limits.
	Limits limits.Limits
	// HTTPMaxConns bounds the HTTP connections handed to net/http at once
	// (every HTTP request on the relay port that is not a relay
	// WebSocket); beyond it new ones get 503.
	HTTPMaxConns int
	// HTTPMaxConnsPerIP bounds what one client address (or IPv6 prefix;
	// Limits.Exempt addresses are not counted) holds of HTTPMaxConns, so
	// that one address cannot take every slot; beyond it new ones get 429.
	HTTPMaxConnsPerIP int
	// HTTPBodyTimeout and HTTPMinBodyRate bound how slowly a request body
	// may arrive: after HTTPBodyTimeout, at least HTTPMinBodyRate bytes a
	// second on average since the body began, else the read fails and the
	// connection closes (a silent body would hold its slot for good).
	HTTPBodyTimeout time.Duration
	HTTPMinBodyRate int64
	// HTTPReadHeaderTimeout and HTTPIdleTimeout are net/http's
	// ReadHeaderTimeout (for requests after the first on a connection)
	// and IdleTimeout.
	HTTPReadHeaderTimeout, HTTPIdleTimeout time.Duration
	// HTTPMaxBody bounds a request body (larger bodies fail with 413).
	HTTPMaxBody int64
	// Loops is the number of event loops: each accepts, runs the stages
	// before the tunnel and forwards tunnels.
	// 0 means one per CPU.
	Loops int
	// Logger receives the relay's logs. nil means slog.Default().
	Logger *slog.Logger

	// TLS, if set, serves TLS on every listen address beside plaintext
	// (a first byte of 0x16 means TLS); package certs builds it. The
	// engine reads it for each handshake, so a GetCertificate callback can
	// swap certificates while the server runs. NewServer works on a clone
	// with DynamicRecordSizingDisabled set, so each reply is one record.
	TLS *tls.Config
	// TLSOnly refuses plaintext clients.
	TLSOnly bool
	// TLSHandshakeTimeout bounds the TLS handshake, counted from accept
	// (time spent waiting for a handshake slot included).
	TLSHandshakeTimeout time.Duration
	// MaxTLSHandshakes bounds TLS handshakes running at once (each needs a
	// goroutine); up to four times as many more wait for a slot, and
	// beyond that new TLS clients are refused (limit_tls_handshakes).
	MaxTLSHandshakes int
	// MaxTLSHandshakesPerIP bounds the handshakes one client address (or
	// IPv6 prefix; Limits.Exempt addresses are not counted) has running
	// or waiting at once (limit_tls_per_ip beyond it), so that one
	// address cannot fill the gate for everyone.
	MaxTLSHandshakesPerIP int

	// Keepalive is TCP keepalive and TCP_USER_TIMEOUT on every socket of
	// the relay (DefaultKeepalive).
	Keepalive Keepalive

	// MultipathTCP makes the listeners Multipath TCP (RFC 8684) where the
	// kernel has it, for clients that offer it (others get plain TCP from
	// them too). Off by default: nymea's clients do not offer it, and an
	// MPTCP listener does not pass TCP_USER_TIMEOUT on to the sockets it
	// accepts, which then costs a system call per client.
	MultipathTCP bool
}

// TLSEnabled reports whether TLS is configured.
func (c *Config) TLSEnabled() bool { return c.TLS != nil }

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
		TCPSettle:         10 * time.Millisecond,
		MaxPreAuth:        10 << 10,
		MaxHeader:         8 << 10,
		HandshakeTimeout:  5 * time.Second,
		Limits:            limits.DefaultLimits(),

		HTTPMaxConns:          1024,
		HTTPMaxConnsPerIP:     128,
		HTTPBodyTimeout:       10 * time.Second,
		HTTPMinBodyRate:       1024,
		HTTPReadHeaderTimeout: 5 * time.Second,
		HTTPIdleTimeout:       60 * time.Second,
		HTTPMaxBody:           1 << 20,

		TLSHandshakeTimeout: 5 * time.Second,
		MaxTLSHandshakes:    256,

		MaxTLSHandshakesPerIP: 64,
		Keepalive:             DefaultKeepalive(),
	}
}

// LoopbackConfig is DefaultConfig serving one free port on 127.0.0.1
// (Server.Addrs tells which after Start) with authenticator a and two
// loops: the relay tests, benchmarks and local demos start.
func LoopbackConfig(a Authenticator) Config {
	c := DefaultConfig()
	c.Listen, c.Auth, c.Loops = []string{"127.0.0.1:0"}, a, 2
	return c
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
		{"http-read-header-timeout", c.HTTPReadHeaderTimeout},
		{"http-idle-timeout", c.HTTPIdleTimeout},
		{"http-body-timeout", c.HTTPBodyTimeout},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s: must be positive, got %v", d.name, d.v)
		}
	}
	if err := c.Keepalive.validate(); err != nil {
		return err
	}
	if c.TCPSettle < 0 || c.TCPSettle > time.Second {
		return fmt.Errorf("tcp-settle: must be between 0 and 1s, got %v", c.TCPSettle)
	}
	if c.MaxBuffer < 4096 {
		return fmt.Errorf("max-buffer: must be at least 4096, got %d", c.MaxBuffer)
	}
	if c.MaxPreAuth < 1024 {
		return fmt.Errorf("max-preauth: must be at least 1024, got %d", c.MaxPreAuth)
	}
	if c.HTTPMaxConns <= 0 {
		return fmt.Errorf("http-max-conns: must be positive, got %d", c.HTTPMaxConns)
	}
	if c.HTTPMaxConnsPerIP <= 0 {
		return fmt.Errorf("http-max-conns-per-ip: must be positive, got %d", c.HTTPMaxConnsPerIP)
	}
	if c.HTTPMinBodyRate <= 0 {
		return fmt.Errorf("http-min-body-rate: must be positive, got %d", c.HTTPMinBodyRate)
	}
	if c.HTTPMaxBody <= 0 {
		return fmt.Errorf("http-max-body: must be positive, got %d", c.HTTPMaxBody)
	}
	if c.MaxHeader < 1024 {
		return fmt.Errorf("max-header: must be at least 1024, got %d", c.MaxHeader)
	}
	if c.TLSOnly && !c.TLSEnabled() {
		return errors.New("tls-only: needs tls-cert and tls-key (or a self-signed certificate)")
	}
	if c.TLSEnabled() && c.TLSHandshakeTimeout <= 0 {
		return fmt.Errorf("tls-handshake-timeout: must be positive, got %v", c.TLSHandshakeTimeout)
	}
	if c.TLSEnabled() && c.MaxTLSHandshakes <= 0 {
		return fmt.Errorf("max-tls-handshakes: must be positive, got %d", c.MaxTLSHandshakes)
	}
	if c.TLSEnabled() && c.MaxTLSHandshakesPerIP <= 0 {
		return fmt.Errorf("max-tls-handshakes-per-ip: must be positive, got %d", c.MaxTLSHandshakesPerIP)
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
