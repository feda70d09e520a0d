package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/meetpoint/meetpoint/relay"
)

// listFlag is a repeatable string flag; the first Set replaces the default.
type listFlag struct {
	vals []string
	set  bool
}

// String returns the addresses joined by commas.
func (l *listFlag) String() string { return strings.Join(l.vals, ",") }

// Set adds an address.
func (l *listFlag) Set(v string) error {
	if !l.set {
		l.vals, l.set = nil, true
	}
	l.vals = append(l.vals, v)
	return nil
}

// serveSettings is what the serve flags fill in: a Config plus the flags
// that need converting before they go into it.
type serveSettings struct {
	cfg      relay.Config
	listen   listFlag
	auth     string
	logLevel string
	exempt   listFlag // --limit-exempt prefixes
	tls      bool     // --tls: serve TLS, self-signed if no certificate is given
}

// serveFlags declares the serve flags over settings starting from
// relay.DefaultConfig().
func serveFlags() (*flag.FlagSet, *serveSettings) {
	v := &serveSettings{cfg: relay.DefaultConfig()}
	c, o := &v.cfg, v
	o.listen.vals = c.Listen
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.Var(&o.listen, "listen", "address to listen on, repeatable (`ADDR`: host:port, [::1]:8443)")
	fs.StringVar(&o.auth, "auth", "dummy", "authenticator: dummy, file:PATH or hmac:KEYFILE")
	fs.DurationVar(&c.InactiveTimeout, "inactive-timeout", c.InactiveTimeout, "time from connect to successful authentication")
	fs.DurationVar(&c.AloneTimeout, "alone-timeout", c.AloneTimeout, "time an authenticated client waits for its partner")
	fs.DurationVar(&c.AuthTimeout, "auth-timeout", c.AuthTimeout, "time allowed to the authenticator")
	fs.DurationVar(&c.RPCTimeout, "rpc-timeout", c.RPCTimeout, "time allowed to an asynchronous JSON-RPC call")
	fs.DurationVar(&c.WriteStallTimeout, "write-stall-timeout", c.WriteStallTimeout, "close a tunnel whose receiver accepts nothing for this long")
	fs.IntVar(&c.MaxBuffer, "max-buffer", c.MaxBuffer, "bytes buffered per tunnel direction")
	fs.StringVar(&c.Name, "name", c.Name, "server name returned by RemoteProxy.Hello")
	fs.IntVar(&c.Loops, "loops", c.Loops, "event loops (0: one per CPU)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")

	fs.BoolVar(&o.tls, "tls", false, "serve TLS on every listen address; without --tls-cert a self-signed certificate is generated and its fingerprint logged")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "TLS certificate (chain) PEM `FILE`")
	fs.StringVar(&c.TLSKey, "tls-key", "", "TLS private key PEM `FILE`")
	fs.StringVar(&c.TLSClientCA, "tls-client-ca", "", "admit only TLS clients with a certificate signed by this CA bundle `FILE`")
	fs.StringVar(&c.TLSClientFingerprints, "tls-client-fingerprints", "", "admit only TLS clients whose certificate SHA-256 is listed in `FILE` (or signed by --tls-client-ca)")
	fs.BoolVar(&c.TLSOnly, "tls-only", false, "refuse plaintext clients")
	fs.DurationVar(&c.TLSHandshakeTimeout, "tls-handshake-timeout", c.TLSHandshakeTimeout, "TLS handshake deadline")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", c.HandshakeTimeout, "deadline for the first bytes and the HTTP head (slowloris)")
	fs.IntVar(&c.MaxPreAuth, "max-preauth", c.MaxPreAuth, "bytes of JSON-RPC or WebSocket message accepted before a tunnel")
	fs.IntVar(&c.MaxHeader, "max-header", c.MaxHeader, "bytes of HTTP request head")
	fs.IntVar(&c.Limits.MaxConns, "max-conns", c.Limits.MaxConns, "open connections in total (0: no limit)")
	fs.IntVar(&c.Limits.MaxConnsPerIP, "max-conns-per-ip", c.Limits.MaxConnsPerIP, "open connections per source address (0: no limit)")
	fs.Float64Var(&c.Limits.ConnRatePerIP, "conn-rate-per-ip", c.Limits.ConnRatePerIP, "new connections per second per source address (0: no limit)")
	fs.IntVar(&c.Limits.AuthFailuresPerIP, "auth-failures-per-ip", c.Limits.AuthFailuresPerIP, "failed authentications per minute before an address is banned (0: never)")
	fs.DurationVar(&c.Limits.BanTime, "ban-time", c.Limits.BanTime, "how long a banned address is refused")
	fs.Int64Var(&c.Limits.TunnelRate, "tunnel-rate", c.Limits.TunnelRate, "bytes per second per tunnel direction (0: no limit)")
	fs.Var(&o.exempt, "limit-exempt", "`CIDR` exempt from per-address limits, repeatable (default 127.0.0.0/8 and ::1; \"none\" for none)")
	fs.DurationVar(&c.TPServerTimeout, "tp-server-timeout", c.TPServerTimeout, "close a TunnelProxy server silent this long")
	fs.IntVar(&c.TPClientBuffer, "tp-client-buffer", c.TPClientBuffer, "bytes waiting for one TunnelProxy client before it is disconnected")
	return fs, v
}

// parseServe turns serve's arguments into a validated relay.Config. Logs go
// to logOut. It returns the exit status to use when serve must stop (see
// parseFlags), or -1.
func parseServe(args []string, logOut, stdout, stderr io.Writer) (relay.Config, int) {
	fs, v := serveFlags()
	if code := parseFlags(fs, args, stdout, stderr); code >= 0 {
		return relay.Config{}, code
	}
	cfg := v.cfg
	cfg.Listen = v.listen.vals
	for _, addr := range cfg.Listen {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			fmt.Fprintf(stderr, "meetpoint serve: listen: %v\n", err)
			return relay.Config{}, 2
		}
	}
	if v.exempt.set {
		cfg.Limits.Exempt = nil
		for _, p := range v.exempt.vals {
			if p == "none" {
				continue
			}
			pfx, err := netip.ParsePrefix(p)
			if err != nil {
				fmt.Fprintf(stderr, "meetpoint serve: limit-exempt: %v\n", err)
				return relay.Config{}, 2
			}
			cfg.Limits.Exempt = append(cfg.Limits.Exempt, pfx)
		}
	}
	if v.tls && cfg.TLSCert == "" {
		cfg.TLSSelfSigned = true
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(v.logLevel)); err != nil {
		fmt.Fprintf(stderr, "meetpoint serve: log-level: %q: want debug, info, warn or error\n", v.logLevel)
		return relay.Config{}, 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level}))
	auth, err := relay.ParseAuth(v.auth)
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint serve: auth: %v\n", err)
		return relay.Config{}, 2
	}
	cfg.Auth = auth
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
		return relay.Config{}, 2
	}
	return cfg, -1
}

// runServe runs the relay until SIGINT or SIGTERM; SIGHUP reloads the
// authenticator's files.
func runServe(args []string, stdout, stderr io.Writer) int {
	cfg, code := parseServe(args, stderr, stdout, stderr)
	if code >= 0 {
		return code
	}
	log := cfg.Logger
	srv, err := relay.NewServer(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
		return 2
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := srv.Start(); err != nil {
		fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
		return 1
	}
	addrs := make([]string, 0, len(cfg.Listen))
	for _, a := range srv.Addrs() {
		addrs = append(addrs, a.String())
	}
	log.Info("listening", "addrs", addrs, "name", cfg.Name, "version", version)
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			if err := srv.Reload(); err != nil {
				log.Error("reload failed", "err", err)
			} else {
				log.Info("reloaded")
			}
			continue
		}
		log.Info("shutting down", "signal", sig.String())
		if err := srv.Close(); err != nil {
			log.Error("close", "err", err)
		}
		return 0
	}
	return 0
}
