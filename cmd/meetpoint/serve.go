package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/access"
	"github.com/meetpoint/meetpoint/relay/auth"
	"github.com/meetpoint/meetpoint/relay/certs"
	"github.com/meetpoint/meetpoint/relay/disco"
	"github.com/meetpoint/meetpoint/relay/events"
	"github.com/meetpoint/meetpoint/relay/fleet"
	"github.com/meetpoint/meetpoint/relay/ops"
	"github.com/meetpoint/meetpoint/relay/routes"
	"github.com/meetpoint/meetpoint/relay/tunnelproxy"
	"github.com/meetpoint/meetpoint/relay/turn"
	"github.com/meetpoint/meetpoint/relay/wamp"
	"github.com/meetpoint/meetpoint/relay/web"
)

// listFlag is a repeatable string flag; the first Set replaces the default.
type listFlag struct {
	vals []string
	set  bool
	def  []string // the effective default when not set, for --print-config (when vals is empty)
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
	tlsCfg   certs.Config       // the TLS section
	tpCfg    tunnelproxy.Config // the TunnelProxy section
	listen   listFlag
	auth     string
	logLevel string
	exempt   listFlag // --limit-exempt prefixes
	tls      bool     // --tls: serve TLS, self-signed if no certificate is given

	// Operations (config.go, monitor.go).
	logFormat   string
	adminListen string
	monitor     string
	drain       time.Duration
	config      string
	nymeaConfig string
	printConfig bool

	access     string   // --access rules file
	routes     listFlag // --route PREFIX=URL
	origins    listFlag // --allowed-origins
	routeIDHdr string
	adminKey   string        // --admin-key-file: POST /v1/tokens, POST /v1/events
	events     bool          // --events
	eventsURL  string        // --events-redis
	groups     bool          // --groups
	groupTTL   time.Duration // --group-ttl
	groupMax   time.Duration // --group-max-ttl
	grp        disco.Config  // --groups-owner-secrets, --groups-max*, --groups-create-rate
	apps       string        // --apps
	appsOnly   bool          // --apps-only
	signalOn   bool          // --signal
	sigRealm   string        // --signal-realm
	turnOn     bool          // --turn
	turnListen string        // --turn-listen
	turnSecret string        // --turn-secret-file
	turnIP     string        // --turn-relay-ip
	turnPorts  string        // --turn-ports
	turnPerUsr int           // --turn-max-per-user
	turnShared int           // --turn-max-per-shared
	turnPerIP  int           // --turn-max-per-address
	turnUser   string        // --turn-user
	turnPass   string        // --turn-password-file
	turnRate   int64         // --turn-max-rate
	turnAllow  listFlag      // --turn-allow-peer
	turnDeny   listFlag      // --turn-deny-peer
	turnTCP    bool          // --turn-tcp
	fleetURL   string        // --fleet
	nodeID     string        // --node-id
	advertise  string        // --advertise
	meshKey    string        // --mesh-key-file
	meshPing   time.Duration // --mesh-ping
	meshLost   time.Duration // --mesh-lost-after
	meshSrc    listFlag      // --mesh-source-ips
	meshTLS    bool          // --mesh-tls
	reqStore   bool          // --require-store

	// Secrets given inline, from a configuration file only (configOnly).
	certPEM, keyPEM, hmacKey string
}

// serveFlags declares the serve flags over settings starting from
// relay.DefaultConfig().
func serveFlags() (*flag.FlagSet, *serveSettings) {
	v := &serveSettings{cfg: relay.DefaultConfig(), tpCfg: tunnelproxy.DefaultConfig()}
	c, o, tc, tp := &v.cfg, v, &v.tlsCfg, &v.tpCfg
	o.listen.vals = c.Listen
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.Var(&o.listen, "listen", "address to listen on, repeatable (`ADDR`: host:port, [::1]:8443)")
	fs.StringVar(&o.auth, "auth", "dummy", "authenticator: dummy, file:PATH, hmac:KEYFILE (or hmac with hmac-key in the configuration) or webhook:URL")
	fs.DurationVar(&c.InactiveTimeout, "inactive-timeout", c.InactiveTimeout, "time from connect to successful authentication")
	fs.DurationVar(&c.AloneTimeout, "alone-timeout", c.AloneTimeout, "time an authenticated client waits for its partner")
	fs.DurationVar(&c.AuthTimeout, "auth-timeout", c.AuthTimeout, "time allowed to the authenticator")
	fs.DurationVar(&c.RPCTimeout, "rpc-timeout", c.RPCTimeout, "time allowed to an asynchronous JSON-RPC call")
	fs.DurationVar(&c.WriteStallTimeout, "write-stall-timeout", c.WriteStallTimeout, "close a tunnel whose receiver accepts nothing for this long")
	fs.DurationVar(&c.Keepalive.Idle, "tcp-keepalive", c.Keepalive.Idle, "TCP keepalive on every socket (clients, mesh links): first probe after this much silence (0: off)")
	fs.DurationVar(&c.Keepalive.Interval, "tcp-keepalive-interval", c.Keepalive.Interval, "time between TCP keepalive probes")
	fs.IntVar(&c.Keepalive.Count, "tcp-keepalive-count", c.Keepalive.Count, "unanswered TCP keepalive probes that end a connection")
	fs.BoolVar(&c.MultipathTCP, "mptcp", c.MultipathTCP, "listen with Multipath TCP where the kernel has it, for clients that offer it (off: plain TCP, and accepted sockets inherit TCP_USER_TIMEOUT without a system call each)")
	fs.DurationVar(&c.Keepalive.UserTimeout, "tcp-user-timeout", c.Keepalive.UserTimeout, "end a connection whose sent data stays unacknowledged this long (TCP_USER_TIMEOUT; 0: the kernel's, ~15 min)")
	fs.IntVar(&c.MaxBuffer, "max-buffer", c.MaxBuffer, "bytes buffered per tunnel direction")
	fs.BoolVar(&c.WSBinaryOnly, "ws-binary", c.WSBinaryOnly, "send raw TCP peers' bytes to WebSocket clients in BINARY frames only (default: TEXT while valid UTF-8, as nymea's clients need)")
	fs.DurationVar(&c.TCPSettle, "tcp-settle", c.TCPSettle, "for raw TCP/TLS clients that call RemoteProxy.Hello first (nymea's library): hold their first tunnel bytes this long after TunnelEstablished or the RegisterClient reply (nymea's client parses its whole buffer as one message; 0: off)")
	fs.StringVar(&c.Name, "name", c.Name, "server name returned by RemoteProxy.Hello")
	fs.IntVar(&c.Loops, "loops", c.Loops, "event loops (0: one per CPU)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")

	fs.BoolVar(&o.tls, "tls", false, "serve TLS on every listen address; without --tls-cert a self-signed certificate is generated and its fingerprint logged")
	fs.StringVar(&tc.Cert, "tls-cert", "", "TLS certificate (chain) PEM `FILE`")
	fs.StringVar(&tc.Key, "tls-key", "", "TLS private key PEM `FILE`")
	fs.StringVar(&tc.Chain, "tls-chain", "", "intermediate certificates PEM `FILE`, sent after --tls-cert's")
	fs.StringVar(&tc.ClientCA, "tls-client-ca", "", "admit only TLS clients with a certificate signed by this CA bundle `FILE`")
	fs.StringVar(&tc.ClientFingerprints, "tls-client-fingerprints", "", "admit only TLS clients whose certificate SHA-256 is listed in `FILE` (or signed by --tls-client-ca)")
	fs.StringVar(&tc.DataDir, "data-dir", "", "keep state here: the generated self-signed certificate (so pinned clients survive a restart) and the groups API's groups")
	fs.BoolVar(&c.TLSOnly, "tls-only", false, "refuse plaintext clients")
	fs.DurationVar(&c.TLSHandshakeTimeout, "tls-handshake-timeout", c.TLSHandshakeTimeout, "TLS handshake deadline, counted from accept")
	fs.IntVar(&c.MaxTLSHandshakes, "max-tls-handshakes", c.MaxTLSHandshakes, "TLS handshakes at once; 4x as many more wait, beyond that TLS clients are refused")
	fs.IntVar(&c.MaxTLSHandshakesPerIP, "max-tls-handshakes-per-ip", c.MaxTLSHandshakesPerIP, "TLS handshakes one source address may have running or waiting at once")
	fs.IntVar(&c.Limits.IPv6Prefix, "ipv6-prefix", c.Limits.IPv6Prefix, "IPv6 clients share per-address limits by this prefix length (128: by address)")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", c.HandshakeTimeout, "deadline for the first bytes and the HTTP head (slowloris)")
	fs.IntVar(&c.MaxPreAuth, "max-preauth", c.MaxPreAuth, "bytes of JSON-RPC or WebSocket message accepted before a tunnel")
	fs.IntVar(&c.MaxHeader, "max-header", c.MaxHeader, "bytes of HTTP request head")
	fs.IntVar(&c.Limits.MaxConns, "max-conns", c.Limits.MaxConns, "open connections in total (0: no limit; the default is 80% of the open-files limit less 256)")
	fs.IntVar(&c.Limits.MaxConnsPerIP, "max-conns-per-ip", c.Limits.MaxConnsPerIP, "open connections per source address (0: no limit)")
	fs.Float64Var(&c.Limits.ConnRatePerIP, "conn-rate-per-ip", c.Limits.ConnRatePerIP, "new connections per second per source address (0: no limit)")
	fs.IntVar(&c.Limits.AuthFailuresPerIP, "auth-failures-per-ip", c.Limits.AuthFailuresPerIP, "failed authentications per minute before an address is banned (0: never)")
	fs.DurationVar(&c.Limits.BanTime, "ban-time", c.Limits.BanTime, "how long a banned address is refused")
	fs.Int64Var(&c.Limits.TunnelRate, "tunnel-rate", c.Limits.TunnelRate, "bytes per second per tunnel direction (0: no limit)")
	for _, p := range o.cfg.Limits.Exempt {
		o.exempt.def = append(o.exempt.def, p.String())
	}
	fs.Var(&o.exempt, "limit-exempt", "`CIDR` exempt from per-address limits, repeatable (default 127.0.0.0/8 and ::1; \"none\" for none)")
	fs.DurationVar(&tp.ServerTimeout, "tp-server-timeout", tp.ServerTimeout, "close a TunnelProxy server silent this long")
	fs.IntVar(&tp.ClientBuffer, "tp-client-buffer", tp.ClientBuffer, "bytes waiting for one TunnelProxy client at which its server is no longer read until the client catches up")
	fs.IntVar(&tp.MaxMessage, "tp-max-message", tp.MaxMessage, "largest JSON-RPC message a TunnelProxy server may send the relay (its data frames may be any size)")
	fs.IntVar(&c.HTTPMaxConns, "http-max-conns", c.HTTPMaxConns, "HTTP connections (API, /metrics) served at once on the relay port; more get 503")
	fs.IntVar(&c.HTTPMaxConnsPerIP, "http-max-conns-per-ip", c.HTTPMaxConnsPerIP, "of --http-max-conns, what one source address may hold; more get 429")
	fs.DurationVar(&c.HTTPBodyTimeout, "http-body-timeout", c.HTTPBodyTimeout, "after this long a request body must average --http-min-body-rate")
	fs.Int64Var(&c.HTTPMinBodyRate, "http-min-body-rate", c.HTTPMinBodyRate, "bytes per second a request body must average after --http-body-timeout, else the connection closes")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", c.HTTPIdleTimeout, "close an idle keep-alive HTTP connection after this long")
	fs.Int64Var(&c.HTTPMaxBody, "http-max-body", c.HTTPMaxBody, "largest HTTP request body on the relay port (bytes)")

	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.adminListen, "admin-listen", "", "also serve /metrics, /healthz, /readyz and /debug/pprof/ on this `ADDR` (keep it private)")
	fs.StringVar(&o.monitor, "monitor", "", "serve the monitor (nymea 1.8 and 1.13 dialects, meetpoint monitor) on this unix socket `PATH`")
	fs.DurationVar(&o.drain, "drain-timeout", 30*time.Second, "on SIGTERM/SIGINT, how long tunnels may go on before they are closed")
	fs.StringVar(&o.config, "config", "", "read settings from this TOML `FILE` (keys are these flag names; flags override it)")
	fs.StringVar(&o.nymeaConfig, "nymea-config", "", "read settings from a nymea-remoteproxy configuration `FILE` (e.g. /etc/nymea/nymea-remoteproxy.conf)")
	fs.BoolVar(&o.printConfig, "print-config", false, "print the effective configuration as TOML and exit")
	fs.StringVar(&o.access, "access", "", "access rules `FILE` (TOML): what each identity may do; once given, everything not allowed is denied (docs/security.md); reloaded on SIGHUP")
	fs.Var(&o.origins, "allowed-origins", "`ORIGIN` whose pages may open relay WebSockets, repeatable (e.g. https://app.example; default: any; clients without an Origin header, i.e. not browsers, always may)")
	fs.Var(&o.routes, "route", "reverse-proxy HTTP under a path prefix to a local service, repeatable (`/PREFIX/=URL`, e.g. /db/=http://127.0.0.1:5984/; /db/=strip:URL drops the prefix)")
	fs.StringVar(&o.adminKey, "admin-key-file", "", "hex key `FILE` (meetpoint token --gen-key) that lets backends mint one-time tokens with POST /v1/tokens (auth onetime or redis://), publish events, and list TURN allocations (GET /v1/turn/allocations)")
	fs.BoolVar(&o.events, "events", false, "serve Events.Subscribe: idle connections receive events published with POST /v1/events/{channel} (needs --admin-key-file) or into Redis (--events-redis)")
	fs.StringVar(&o.eventsURL, "events-redis", "", "carry events between relays through this Redis (`URL` redis://HOST:PORT/DB, redis+cluster://HOST:PORT?addr=…, redis+sentinel://HOST:PORT?master_name=M&addr=…); implies --events")
	fs.BoolVar(&o.groups, "groups", true, "serve the Disco-compatible groups API (POST /group, GET /groups, GET/PATCH/DELETE /groups/{id}; docs/discovery.md), kept under --data-dir (in memory without one)")
	fs.DurationVar(&o.groupTTL, "group-ttl", 5*time.Minute, "a group's life without an update (PATCH refreshes it)")
	fs.DurationVar(&o.groupMax, "group-max-ttl", 24*time.Hour, "the longest TTL a group may ask for")
	fs.BoolVar(&o.grp.OwnerSecrets, "groups-owner-secrets", false, "an unregistered application's groups are replaced, updated and deleted only with the owner secret their creation returned (default: by anyone, as in Disco, which Disco's and Babble's clients need)")
	fs.IntVar(&o.grp.MaxTotal, "groups-max", 10000, "groups kept in all; beyond, unregistered applications' new groups get 503")
	fs.Int64Var(&o.grp.MaxBytes, "groups-max-bytes", 32<<20, "bytes of groups kept in all; beyond, unregistered applications' groups get 503")
	fs.IntVar(&o.grp.MaxGroups, "groups-max-per-app", 1000, "groups one application may have")
	fs.Float64Var(&o.grp.CreateRate, "groups-create-rate", 30, "new groups per minute from one client address (a refresh is not a creation)")
	fs.StringVar(&o.apps, "apps", "", "registered applications `FILE` for the groups API and signalling: lines \"APP_ID KEY\"; their groups and their realm need their key")
	fs.BoolVar(&o.appsOnly, "apps-only", false, "groups API and signalling: refuse applications (realms) not in --apps")
	fs.BoolVar(&o.signalOn, "signal", true, "serve WAMP v2 (wamp.2.json WebSockets) for WebRTC signalling as Babble does it (docs/discovery.md); with --fleet, calls reach other nodes")
	fs.StringVar(&o.sigRealm, "signal-realm", wamp.DefaultRealm, "the signalling router's open `REALM` (a registered application's realm needs its key, WAMP ticket authentication)")
	fs.BoolVar(&o.turnOn, "turn", false, "serve TURN and STUN on UDP at the relay's port number (docs/discovery.md); credentials from GET /v1/turn/credentials")
	fs.StringVar(&o.turnListen, "turn-listen", "", "TURN's UDP `ADDR` (default: the first --listen address)")
	fs.StringVar(&o.turnSecret, "turn-secret-file", "", "the TURN REST shared secret `FILE` (coturn's static-auth-secret); without it a random one is made at start (credentials only from this relay)")
	fs.StringVar(&o.turnIP, "turn-relay-ip", "", "the public `IP` relayed candidates carry (default: TURN's listen address)")
	fs.StringVar(&o.turnPorts, "turn-ports", "49152-65535", "relay port range `MIN-MAX`")
	fs.IntVar(&o.turnPerUsr, "turn-max-per-user", 10, "TURN allocations one user (a token's subject) may hold at once")
	fs.IntVar(&o.turnShared, "turn-max-per-shared", 4096, "TURN allocations a shared credential may hold at once: --turn-user, an application's key, tokens without a subject (default: a Babble group of 32 nodes)")
	fs.IntVar(&o.turnPerIP, "turn-max-per-address", 256, "TURN allocations one client address may hold at once, whatever its credentials")
	fs.StringVar(&o.turnUser, "turn-user", "", "a static TURN user `NAME` (long-term credentials, as Disco's --ice-username and Babble's; password from --turn-password-file)")
	fs.StringVar(&o.turnPass, "turn-password-file", "", "the --turn-user's password `FILE` (at least 8 characters)")
	fs.Int64Var(&o.turnRate, "turn-max-rate", 0, "bytes per second one TURN allocation may relay each way (0: unbounded); datagrams over it are dropped and counted")
	fs.Var(&o.turnAllow, "turn-allow-peer", "`CIDR` TURN allocations may reach although the default policy refuses it (loopback, private, link-local, … and the relay host's own addresses are refused by default), repeatable")
	fs.Var(&o.turnDeny, "turn-deny-peer", "`CIDR` TURN allocations may never reach (wins over --turn-allow-peer), repeatable")
	fs.BoolVar(&o.turnTCP, "turn-tcp", false, "allow RFC 6062 TCP allocations (TURN clients dialling TCP peers); off, they are refused")
	fs.StringVar(&o.fleetURL, "fleet", "", "join a fleet of relays sharing this Redis (`URL` redis://HOST:PORT/DB, rediss://, redis+cluster://, redis+sentinel://): clients pair whichever node each lands on (docs/fleet.md); needs --mesh-key-file")
	fs.StringVar(&o.nodeID, "node-id", "", "this node's name in the fleet, unique (default: the host name)")
	fs.StringVar(&o.advertise, "advertise", "", "`HOST:PORT` where the fleet's other nodes reach this one (default: the first --listen, 0.0.0.0 replaced by this host's first address)")
	fs.BoolVar(&o.reqStore, "require-store", false, "refuse to start (exit 1, so that a supervisor retries) while an outside service the relay relies on does not answer: --auth redis://… or webhook:…, --events-redis; without it the relay starts with a warning and reports the service on /readyz")
	fs.DurationVar(&o.meshPing, "mesh-ping", 2*time.Second, "with --fleet: how often this node pings every other node (liveness, round trip)")
	fs.DurationVar(&o.meshLost, "mesh-lost-after", 15*time.Second, "with --fleet: end the tunnels that cross to a node that answered no ping this long (close reason far_node_lost)")
	fs.BoolVar(&o.meshTLS, "mesh-tls", false, "with --fleet: mesh links to this node over TLS, pinned to its certificate: serves TLS on the relay port as --tls does (self-signed without --tls-cert); plaintext clients are still served unless --tls-only")
	fs.Var(&o.meshSrc, "mesh-source-ips", "with --fleet: local `IP` addresses to dial mesh links from, in turn (each has its own ~28,000 ports toward one node), repeatable")
	fs.StringVar(&o.meshKey, "mesh-key-file", "", "hex key `FILE` (meetpoint token --gen-key) shared by the fleet's nodes: signs node-to-node requests")
	fs.StringVar(&o.routeIDHdr, "route-identity-header", "", "send the client's identity to routed services in this HTTP `HEADER` (e.g. X-Meetpoint-Identity); off by default")
	fs.StringVar(&o.certPEM, "tls-cert-pem", "", "the TLS certificate (chain) itself, PEM (configuration file only, e.g. --config - on stdin)")
	fs.StringVar(&o.keyPEM, "tls-key-pem", "", "the TLS private key itself, PEM (configuration file only; never printed)")
	fs.StringVar(&o.hmacKey, "hmac-key", "", "the HMAC token key itself, hex, with auth = \"hmac\" (configuration file only; never printed)")
	return fs, v
}

// configOnly names the settings that carry key material: they are read
// from a configuration file (--config FILE, or --config - from a pipe)
// and refused on the command line, where every user of the machine could
// read them in the process list.
var configOnly = map[string]bool{"tls-cert-pem": true, "tls-key-pem": true, "hmac-key": true}

// serveOptions is what serve runs: the relay's Config and the operational
// settings around it.
type serveOptions struct {
	cfg         relay.Config
	tlsCfg      certs.Config       // TLS; cfg.TLS is a placeholder until serving starts
	tpCfg       tunnelproxy.Config // the TunnelProxy API
	adminListen string
	monitor     string
	drain       time.Duration
	warnings    []string // from --nymea-config
	reqStore    bool     // --require-store
	routes      routes.Config
	adminKey    string // POST /v1/tokens (one-time authenticator), POST /v1/events
	events      *events.Config
	fleet       *fleetOptions // nil: a single node
	groups      *disco.Config // nil: no groups API
	signal      *wamp.Config  // nil: no WAMP router
	turn        *turn.Config  // nil: no TURN
	// settings is every flag's value as parsed (command line and config
	// files), with the contents' digest of a file that a restart-only
	// setting names: what a SIGHUP's re-parse is compared with.
	settings map[string]string
	// reparse re-reads the command line and config files for SIGHUP; nil
	// means limits are not reloaded.
	reparse func() (serveOptions, error)
}

// reloadable are the settings a SIGHUP puts in force (the abuse limits);
// a change to any other is told to need a restart.
var reloadable = map[string]bool{"max-conns": true, "max-conns-per-ip": true, "conn-rate-per-ip": true,
	"auth-failures-per-ip": true, "ban-time": true, "tunnel-rate": true, "limit-exempt": true}

// rereadOnReload are the settings naming a file whose contents a SIGHUP
// reads again (the others' files are read at start only).
var rereadOnReload = map[string]bool{"config": true, "nymea-config": true, "access": true,
	"tls-cert": true, "tls-key": true, "tls-chain": true}

// parseServe turns serve's arguments into a validated relay.Config. Logs go
// to logOut. It returns the exit status to use when serve must stop (see
// parseFlags), or -1.
func parseServe(args []string, logOut, stdout, stderr io.Writer) (relay.Config, int) {
	o, code := parseServeOptions(args, nil, logOut, stdout, stderr)
	return o.cfg, code
}

// parseServeOptions parses serve's flags and configuration files
// (precedence: flags, --config, --nymea-config, defaults) and validates the
// result. Every error is one line on stderr naming the setting, with exit
// status 2. --print-config prints the configuration and returns 0.
//
// stdin supplies `--config -` (nil: none); it is read once, so a SIGHUP
// re-parse sees the same configuration.
func parseServeOptions(args []string, stdin *stdinConfig, logOut, stdout, stderr io.Writer) (serveOptions, int) {
	var a relay.Authenticator // closed again on failure (discardAuth)
	fail := func(format string, args ...any) (serveOptions, int) {
		discardAuth(a)
		fmt.Fprintf(stderr, "meetpoint serve: "+format+"\n", args...)
		return serveOptions{}, 2
	}
	fs, v := serveFlags()
	if code := parseFlags(fs, args, stdout, stderr); code >= 0 {
		return serveOptions{}, code
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	for name := range configOnly {
		if explicit[name] {
			return fail("--%s: key material is read from a configuration file only (--config FILE, or --config - on stdin), never from the command line", name)
		}
	}
	var warnings []string
	var ss []setting
	if v.nymeaConfig != "" {
		ns, warn, err := readNymeaConfig(v.nymeaConfig, fs)
		if err != nil {
			return fail("%v", err)
		}
		ss, warnings = append(ss, ns...), warn
	}
	if v.config != "" {
		ts, err := readTOMLConfig(v.config, fs, stdin)
		if err != nil {
			return fail("%v", err)
		}
		ss = append(ss, ts...)
	}
	if err := applySettings(fs, explicit, ss); err != nil {
		return fail("%v", err)
	}
	settings := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		settings[f.Name] = f.Value.String()
		// A file that a restart-only setting names is read at start only:
		// new contents (a rotated key) change the setting as a new path does.
		if kind, _ := flag.UnquoteUsage(f); kind == "FILE" && !rereadOnReload[f.Name] && f.Value.String() != "" {
			if b, err := os.ReadFile(f.Value.String()); err == nil {
				settings[f.Name] += fmt.Sprintf(" (contents sha256:%x)", sha256.Sum256(b))
			}
		}
	})
	// The float settings are rates, checked by comparisons that NaN fails
	// every one of (a NaN rate was no limit at all).
	var notFinite string
	fs.VisitAll(func(f *flag.Flag) {
		if g, ok := f.Value.(flag.Getter); ok && notFinite == "" {
			if x, ok := g.Get().(float64); ok && (math.IsNaN(x) || math.IsInf(x, 0)) {
				notFinite = fmt.Sprintf("%s: want a finite number, got %v", f.Name, x)
			}
		}
	})
	if notFinite != "" {
		return fail("%s", notFinite)
	}
	cfg := v.cfg
	cfg.Listen = v.listen.vals
	for _, addr := range cfg.Listen {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return fail("listen: %v", err)
		}
		// The kernel's answer would be "invalid argument".
		if ip := net.ParseIP(host); ip != nil && ip.To4() == nil && ip.IsLinkLocalUnicast() {
			return fail("listen %s: a link-local address needs its interface as a zone, e.g. [%s%%eth0]:PORT", addr, host)
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
				return fail("limit-exempt: %v", err)
			}
			cfg.Limits.Exempt = append(cfg.Limits.Exempt, pfx)
		}
	}
	tlsCfg := v.tlsCfg
	if v.meshTLS {
		switch {
		case v.fleetURL == "":
			return fail("mesh-tls needs --fleet")
		case tlsCfg.ClientCA != "" || tlsCfg.ClientFingerprints != "":
			return fail("mesh-tls: the client-certificate policy (--tls-client-ca, --tls-client-fingerprints) would refuse the mesh links, which present no certificate")
		}
		v.tls = true // the node's certificate, announced in its heartbeat, is what the others pin
	}
	if v.certPEM != "" { // each alone is refused by Validate: both or neither
		tlsCfg.CertPEM = []byte(v.certPEM)
	}
	if v.keyPEM != "" {
		tlsCfg.KeyPEM = []byte(v.keyPEM)
	}
	if v.tls && tlsCfg.Cert == "" && len(tlsCfg.CertPEM) == 0 {
		tlsCfg.SelfSigned = true
	}
	if err := tlsCfg.Validate(); err != nil {
		return fail("%v", err)
	}
	if tlsCfg.Enabled() {
		// The store (certificate files, a self-signed certificate) is made
		// when serving starts; its config takes this placeholder's place.
		cfg.TLS = &tls.Config{}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(v.logLevel)); err != nil {
		return fail("log-level: %q: want debug, info, warn or error", v.logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch v.logFormat {
	case "text":
		cfg.Logger = slog.New(slog.NewTextHandler(logOut, hopts))
	case "json":
		cfg.Logger = slog.New(slog.NewJSONHandler(logOut, hopts))
	default:
		return fail("log-format: %q: want text or json", v.logFormat)
	}
	if v.drain <= 0 {
		return fail("drain-timeout: must be positive, got %v", v.drain)
	}
	if v.adminListen != "" {
		if _, _, err := net.SplitHostPort(v.adminListen); err != nil {
			return fail("admin-listen: %v", err)
		}
	}
	var err error
	switch {
	case v.hmacKey != "" && v.auth != "hmac":
		return fail(`hmac-key: needs auth = "hmac" (the key is given inline instead of hmac:KEYFILE)`)
	case v.hmacKey != "":
		a, err = auth.NewHMACAuthKey(v.hmacKey)
	case v.auth == "hmac":
		return fail(`auth: "hmac" without a key file needs hmac-key in the configuration (or use hmac:KEYFILE)`)
	default:
		a, err = auth.ParseAuth(v.auth)
	}
	if err != nil {
		return fail("auth: %v", err)
	}
	cfg.Auth = a
	var adminKey string
	if v.adminKey != "" {
		if _, ok := a.(*auth.OneTime); !ok && !v.events && v.eventsURL == "" {
			return fail(`admin-key-file: the admin key serves POST /v1/tokens (auth = "onetime" or "redis://…") and POST /v1/events (events): neither is on`)
		}
		b, err := auth.LoadHMACKey(v.adminKey) // the same hex key format
		if err != nil {
			return fail("admin-key-file: %v", err)
		}
		adminKey = fmt.Sprintf("%x", b)
	}
	if v.access != "" {
		pol, err := access.Load(v.access)
		if err != nil {
			return fail("%v", err)
		}
		cfg.Access = pol
	}
	var rcfg routes.Config
	for _, spec := range v.routes.vals {
		rt, err := routes.Parse(spec)
		if err != nil {
			return fail("%v", err)
		}
		rcfg.Routes = append(rcfg.Routes, rt)
	}
	rcfg.IdentityHeader = v.routeIDHdr
	var evCfg *events.Config
	if v.events || v.eventsURL != "" {
		evCfg = &events.Config{Redis: v.eventsURL, AdminKey: adminKey}
	}
	var fl *fleetOptions
	switch {
	case v.fleetURL == "" && (v.meshKey != "" || v.nodeID != "" || v.advertise != "" || len(v.meshSrc.vals) > 0):
		return fail("node-id, advertise, mesh-key-file and mesh-source-ips need --fleet")
	case v.fleetURL != "":
		if v.meshKey == "" {
			return fail("fleet: --mesh-key-file is required (write one with meetpoint token --gen-key and give every node the same)")
		}
		key, err := auth.LoadHMACKey(v.meshKey)
		if err != nil {
			return fail("mesh-key-file: %v", err)
		}
		rdb, err := fleet.ParseURL(v.fleetURL) // checked here, made again when serving starts
		if err != nil {
			return fail("%v", err)
		}
		rdb.Close()
		id := v.nodeID
		if id == "" {
			if id, err = os.Hostname(); err != nil || id == "" {
				return fail("node-id: no host name to default to: give --node-id")
			}
		}
		if v.advertise != "" {
			if _, _, err := net.SplitHostPort(v.advertise); err != nil {
				return fail("advertise %q: want HOST:PORT", v.advertise)
			}
		}
		var src []net.IP
		for _, s := range v.meshSrc.vals {
			ip := net.ParseIP(s)
			if ip == nil {
				return fail("mesh-source-ips: %q is not an IP address", s)
			}
			src = append(src, ip)
		}
		if v.meshPing <= 0 || v.meshLost < 2*v.meshPing {
			return fail("mesh-ping must be positive and mesh-lost-after at least twice it, got %v and %v", v.meshPing, v.meshLost)
		}
		fl = &fleetOptions{url: v.fleetURL, nodeID: id, advertise: v.advertise, key: key, ping: v.meshPing, lost: v.meshLost, src: src}
	}
	var apps map[string]string
	if v.apps != "" {
		a, err := disco.LoadApps(v.apps)
		if err != nil {
			return fail("apps: %v", err)
		}
		apps = a
	}
	if (v.apps != "" || v.appsOnly) && !v.groups && !v.signalOn {
		return fail("apps and apps-only need the groups API (--groups) or signalling (--signal)")
	}
	var gcfg *disco.Config
	if v.groups {
		g := v.grp
		g.DataDir, g.TTL, g.MaxTTL, g.AppsOnly, g.Apps = v.tlsCfg.DataDir, v.groupTTL, v.groupMax, v.appsOnly, apps
		gcfg = &g
		if v.groupTTL <= 0 || v.groupMax < v.groupTTL {
			return fail("group-ttl must be positive and at most group-max-ttl (%v, %v)", v.groupTTL, v.groupMax)
		}
		if g.MaxTotal <= 0 || g.MaxBytes <= 0 || g.MaxGroups <= 0 || g.CreateRate <= 0 {
			return fail("groups-max, groups-max-bytes, groups-max-per-app and groups-create-rate must be positive")
		}
	}
	var scfg *wamp.Config
	if v.signalOn {
		scfg = &wamp.Config{Realm: v.sigRealm, Apps: apps, AppsOnly: v.appsOnly}
	} else if v.sigRealm != wamp.DefaultRealm {
		return fail("signal-realm needs --signal")
	}
	var tcfg *turn.Config
	if v.turnOn {
		tcfg = &turn.Config{Listen: v.turnListen, MaxPerUser: v.turnPerUsr, MaxPerShared: v.turnShared, MaxPerAddress: v.turnPerIP,
			MaxRate: v.turnRate, AdminKey: adminKey, Apps: apps}
		if v.turnPerUsr <= 0 || v.turnShared <= 0 || v.turnPerIP <= 0 {
			return fail("turn-max-per-user, turn-max-per-shared and turn-max-per-address must be positive")
		}
		if (v.turnUser == "") != (v.turnPass == "") {
			return fail("turn-user and turn-password-file go together")
		}
		if v.turnUser != "" {
			if strings.Contains(v.turnUser, ":") {
				return fail("turn-user %q: no ':' in a static user's name (TURN REST usernames have one)", v.turnUser)
			}
			pass, err := turn.LoadPassword(v.turnPass)
			if err != nil {
				return fail("turn-password-file: %v", err)
			}
			tcfg.User, tcfg.Password = v.turnUser, pass
		}
		if v.turnRate < 0 {
			return fail("turn-max-rate %d: want bytes per second, 0 for unbounded", v.turnRate)
		}
		if v.turnSecret != "" {
			sec, err := turn.LoadSecret(v.turnSecret)
			if err != nil {
				return fail("turn-secret-file: %v", err)
			}
			tcfg.Secret = sec
		} else {
			b := make([]byte, 24)
			_, _ = rand.Read(b)
			tcfg.Secret = []byte(hex.EncodeToString(b))
		}
		if v.turnIP != "" {
			if tcfg.RelayIP = net.ParseIP(v.turnIP); tcfg.RelayIP == nil {
				return fail("turn-relay-ip %q: not an IP address", v.turnIP)
			}
		}
		lo, hi, err := turn.ParsePorts(v.turnPorts)
		if err != nil {
			return fail("turn-ports: %v", err)
		}
		tcfg.PortMin, tcfg.PortMax = lo, hi
		for _, l := range []struct {
			name string
			vals []string
			to   *[]netip.Prefix
		}{{"turn-allow-peer", v.turnAllow.vals, &tcfg.AllowPeers}, {"turn-deny-peer", v.turnDeny.vals, &tcfg.DenyPeers}} {
			for _, s := range l.vals {
				p, err := turn.ParsePeerPrefix(s)
				if err != nil {
					return fail("%s: %v", l.name, err)
				}
				*l.to = append(*l.to, p)
			}
		}
		tcfg.TCPAllocations = v.turnTCP
	} else if v.turnListen != "" || v.turnSecret != "" || v.turnIP != "" || len(v.turnAllow.vals) > 0 || len(v.turnDeny.vals) > 0 || v.turnTCP || v.turnUser != "" {
		return fail("turn-listen, turn-secret-file, turn-relay-ip, turn-allow-peer, turn-deny-peer, turn-tcp and turn-user need --turn")
	}
	cfg.AllowedOrigins = v.origins.vals
	if err := cfg.Validate(); err != nil {
		return fail("%v", err)
	}
	tpCfg := v.tpCfg
	tpCfg.WriteStallTimeout = cfg.WriteStallTimeout
	tpCfg.Settle = cfg.TCPSettle
	if err := tpCfg.Validate(); err != nil {
		return fail("%v", err)
	}
	if v.nymeaConfig != "" && v.auth == "dummy" {
		warnings = append(warnings, `auth is "dummy": every token is accepted (nymea authenticated through [AWS], its Lambda authorizer); set auth = "webhook:URL" (the same question asked of your own HTTP service, docs/auth.md), "file:PATH" or "hmac:KEYFILE"`)
	}
	if v.printConfig {
		for _, w := range warnings { // on stderr too: stdout may go to a file
			fmt.Fprintf(stderr, "meetpoint serve: nymea-config: %s\n", w)
		}
		if err := writeConfig(stdout, fs, warnings); err != nil {
			fmt.Fprintf(stderr, "meetpoint serve: print-config: %v\n", err)
			return serveOptions{}, 1
		}
		return serveOptions{}, 0
	}
	return serveOptions{cfg: cfg, tlsCfg: tlsCfg, tpCfg: tpCfg, adminListen: v.adminListen, monitor: v.monitor, drain: v.drain,
		warnings: warnings, reqStore: v.reqStore, routes: rcfg, adminKey: adminKey, events: evCfg, fleet: fl, groups: gcfg, signal: scfg, turn: tcfg,
		settings: settings}, -1
}

// oneLine writes err (several joined, each perhaps already saying the
// other: the token file read by the authenticator and again by the
// limits' re-parse) as one line that says each thing once.
func oneLine(err error) string {
	var kept []string
	for l := range strings.Lines(err.Error()) {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "meetpoint serve: "))
		switch {
		case l == "", slices.ContainsFunc(kept, func(k string) bool { return strings.Contains(k, l) }):
			continue
		}
		kept = slices.DeleteFunc(kept, func(k string) bool { return strings.Contains(l, k) })
		kept = append(kept, l)
	}
	return strings.Join(kept, "; ")
}

// The wait between two tries of a fleet's store at start: storeRetry,
// doubling up to storeRetryMax.
var storeRetry, storeRetryMax = time.Second, 30 * time.Second

// waitStore pings a fleet's Redis until it answers: a node that boots
// before its store waits for it, logging each failed try, instead of
// exiting. SIGTERM or SIGINT meanwhile ends the wait (false).
func waitStore(rdb redis.UniversalClient, log *slog.Logger, sigs <-chan os.Signal) bool {
	wait := storeRetry
	for try := 1; ; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			if try > 1 {
				log.Info("fleet store reachable: joining the fleet", "tries", try)
			}
			return true
		}
		log.Warn("fleet store unreachable: waiting for it before joining the fleet", "err", err.Error(),
			"try", try, "retry_in", wait.String())
		select {
		case sig := <-sigs:
			if sig != syscall.SIGHUP {
				log.Info("stopped while waiting for the fleet store", "signal", sig.String())
				return false
			}
		case <-time.After(wait):
		}
		wait = min(2*wait, storeRetryMax)
	}
}

// fleetOptions is --fleet with its companions.
type fleetOptions struct {
	url, nodeID, advertise string
	key                    []byte
	ping, lost             time.Duration // --mesh-ping, --mesh-lost-after
	src                    []net.IP      // --mesh-source-ips
}

// reparser re-reads serve's command line and config files (for SIGHUP).
func reparser(args []string, stdin *stdinConfig) func() (serveOptions, error) {
	return func() (serveOptions, error) {
		var errb bytes.Buffer
		again, code := parseServeOptions(args, stdin, io.Discard, io.Discard, &errb)
		if code >= 0 {
			return serveOptions{}, errors.New(strings.TrimSpace(errb.String()))
		}
		return again, nil
	}
}

// discardAuth closes an authenticator that will not serve (a SIGHUP's
// re-parse made it, or the parse failed after it): a Redis store's client
// left open keeps its goroutines and timers for the life of the process.
func discardAuth(a relay.Authenticator) {
	if o, ok := a.(*auth.OneTime); ok {
		if c, ok := o.Store().(io.Closer); ok {
			c.Close()
		}
	}
}

// needRestart names the settings that differ between was and now and
// that a SIGHUP does not put in force (not reloadable), sorted.
func needRestart(was, now map[string]string) []string {
	var names []string
	for name, v := range now {
		if !reloadable[name] && was[name] != v {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// runServe runs the relay until SIGINT or SIGTERM; SIGHUP reloads the
// authenticator's files and the TLS certificate.
func runServe(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	in := &stdinConfig{r: stdin}
	o, code := parseServeOptions(args, in, stderr, stdout, stderr)
	if code >= 0 {
		return code
	}
	relay.Version = version // Hello, the monitor and meetpoint_build_info
	// A panic that ends the process (one outside the fault barriers) dies
	// of SIGABRT after its traceback, instead of Go's default exit status
	// 2: that is the bad-configuration status the systemd unit is told
	// never to restart on (RestartPreventExitStatus=2), and Restart= is
	// what brings a crashed relay back.
	debug.SetTraceback("crash")
	o.reparse = reparser(args, in)
	sigs, stop := notifySignals()
	defer stop()
	return serveUntilSignal(o, sigs, stderr, nil)
}

// notifySignals delivers SIGHUP, SIGINT and SIGTERM on one channel without
// losing a stop signal: signal.Notify drops a signal whose channel is full,
// and a SIGHUP waiting there (sent during start-up, or during a reload)
// made a SIGTERM after it be lost, the relay serving on until systemd's
// SIGKILL. So SIGHUPs wait in a channel of their own (coalesced: a reload
// re-reads everything), the stop signals in another, and a stop signal is
// passed on first. stop ends the delivery.
func notifySignals() (sigs <-chan os.Signal, stop func()) {
	hup, term := make(chan os.Signal, 1), make(chan os.Signal, 2)
	signal.Notify(hup, syscall.SIGHUP)
	signal.Notify(term, syscall.SIGINT, syscall.SIGTERM)
	out, done := make(chan os.Signal), make(chan struct{})
	go func() {
		for {
			var sig os.Signal
			select {
			case sig = <-term:
			default:
				select {
				case sig = <-term:
				case sig = <-hup:
				case <-done:
					return
				}
			}
			select {
			case out <- sig:
			case <-done:
				return
			}
		}
	}()
	return out, func() {
		signal.Stop(hup)
		signal.Stop(term)
		close(done)
	}
}

// serveStarted is told what serveUntilSignal started (tests use it).
type serveStarted struct {
	srv   *relay.Server
	admin net.Addr // nil without --admin-listen
}

// serveUntilSignal starts the relay (with its monitor socket and admin
// listener) and handles signals: SIGHUP reloads; SIGTERM or SIGINT drains
// (readyz false, no new clients, tunnels get the drain timeout to end, the
// rest are closed) and returns 0; a second SIGTERM/SIGINT during the drain
// closes everything at once. Start-up failures return 1.
func serveUntilSignal(o serveOptions, sigs <-chan os.Signal, stderr io.Writer, started func(serveStarted)) int {
	log := o.cfg.Logger
	quietRedis(log)
	for _, w := range o.warnings {
		log.Warn("nymea-config: " + w)
	}
	if (o.tlsCfg.ClientCA != "" || o.tlsCfg.ClientFingerprints != "") && !o.cfg.TLSOnly {
		log.Warn("client certificates are required on TLS connections only: plaintext clients (ws://, tcp://) connect without one; add --tls-only to require them of every client")
	}
	store, err := certs.New(o.tlsCfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
		return 2
	}
	if store != nil {
		defer store.Close()
		o.cfg.TLS = store.TLSConfig()
	}
	srv, err := relay.NewServer(o.cfg)
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
		return 2
	}
	if store != nil {
		srv.AddMetrics(certMetrics(store))
	}
	// The subsystems, each on the engine's interfaces.
	tp, err := tunnelproxy.New(srv, o.tpCfg)
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
		return 2
	}
	ops.Register(srv)
	web.Register(srv)
	// Outside services the authenticator relies on: their outages on
	// /readyz, in metrics, one log line each (relay.Dependency).
	switch a := o.cfg.Auth.(type) {
	case *auth.OneTime:
		srv.AddMetrics(a.Metrics())
		if o.adminKey != "" {
			srv.Handle("POST /v1/tokens", auth.MintHandler(a, o.adminKey))
		}
		if rs, ok := a.Store().(*auth.RedisStore); ok {
			a.Watch(srv.AddDependency("auth_redis", "the one-time token store ("+rs.String()+")", rs.Ping))
		}
	case *auth.Webhook:
		a.Watch(srv.AddDependency("auth_webhook", "the authentication webhook ("+a.String()+")", a.Probe))
	}
	if o.events != nil {
		ev, err := events.New(srv, *o.events)
		if err != nil {
			fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
			return 2
		}
		defer ev.Close()
	}
	// A fleet's nodes share one Redis: the pairing registry, the groups
	// and the signalling router's registrations live there.
	var fleetRedis redis.UniversalClient
	if o.fleet != nil {
		if fleetRedis, err = fleet.ParseURL(o.fleet.url); err != nil {
			fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
			return 2
		}
		defer fleetRedis.Close()
		if !waitStore(fleetRedis, log, sigs) {
			return 0 // stopped while waiting
		}
	}
	if o.groups != nil {
		gc := *o.groups
		gc.Redis = fleetRedis // nil: this node's own, under --data-dir
		gs, err := disco.New(srv, gc)
		if err != nil {
			fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
			if errors.Is(err, disco.ErrDataDirBusy) {
				return 1 // a predecessor still exiting frees it: restart
			}
			return 2
		}
		defer gs.Close()
	}
	var ts *turn.Service
	if o.turn != nil {
		if ts, err = turn.New(srv, *o.turn); err != nil {
			fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
			return 2
		}
	}
	if err := routes.Register(srv, o.routes); err != nil {
		fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
		return 2
	}
	var fl *fleet.Fleet
	if o.fleet != nil {
		fc := fleet.Config{Redis: fleetRedis, NodeID: o.fleet.nodeID, Advertise: o.fleet.advertise,
			MeshKey: o.fleet.key, MeshPing: o.fleet.ping, MeshLost: o.fleet.lost, SourceIPs: o.fleet.src, Logger: log, Reach: tp.RegisterMeshClient}
		if store != nil {
			fc.CertFingerprint = store.Fingerprint // mesh links to this node: TLS, pinned
		}
		if fl, err = fleet.New(fc, srv); err != nil {
			fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
			return 2
		}
		tp.SetDirectory(fl)
	}
	if o.signal != nil {
		sc := *o.signal
		if fleetRedis != nil {
			sc.Redis, sc.NodeID = fleetRedis, o.fleet.nodeID // calls and events reach every node
		}
		sr, err := wamp.New(srv, sc)
		if err != nil {
			fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
			return 2
		}
		defer sr.Close()
	}
	checkCtx, checked := context.WithTimeout(context.Background(), 5*time.Second)
	err = srv.CheckDependencies(checkCtx) // each one down is logged, once
	checked()
	if err != nil && o.reqStore {
		srv.Close()
		fmt.Fprintf(stderr, "meetpoint serve: %v (--require-store: not starting without it)\n", err)
		return 1
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
		return 1
	}
	if ts != nil {
		if err := ts.Start(); err != nil {
			srv.Close()
			fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
			return 1
		}
		defer ts.Close()
	}
	if fl != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := fl.Start(ctx)
		cancel()
		if err != nil {
			srv.Close()
			fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
			return 1
		}
		defer fl.Close()
	}
	var mon io.Closer
	if o.monitor != "" {
		if mon, err = ops.ServeMonitor(srv, o.monitor); err != nil {
			srv.Close()
			fmt.Fprintf(stderr, "meetpoint serve: %v\n", err)
			if errors.Is(err, ops.ErrMonitorPath) {
				return 2 // a bad --monitor: restarting will not fix it
			}
			return 1
		}
		defer mon.Close()
	}
	var admin *http.Server
	var adminAddr net.Addr
	if o.adminListen != "" {
		ln, err := net.Listen("tcp", o.adminListen)
		if err != nil {
			if mon != nil {
				mon.Close()
			}
			srv.Close()
			fmt.Fprintf(stderr, "meetpoint serve: admin-listen: %v\n", err)
			return 1
		}
		adminAddr = ln.Addr()
		admin = &http.Server{Handler: ops.AdminHandler(srv, hiddenArgs(os.Args)), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: o.cfg.HTTPIdleTimeout, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go func() {
			if err := admin.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin listener", "err", err)
			}
		}()
		defer admin.Close()
	}
	addrs := make([]string, 0, len(o.cfg.Listen))
	for _, a := range srv.Addrs() {
		addrs = append(addrs, a.String())
	}
	attrs := []any{"addrs", addrs, "name", o.cfg.Name, "version", version, "tls", o.cfg.TLSEnabled()}
	if adminAddr != nil {
		attrs = append(attrs, "admin", adminAddr.String())
	}
	if o.monitor != "" {
		attrs = append(attrs, "monitor", o.monitor)
	}
	log.Info("listening", attrs...)
	if started != nil {
		started(serveStarted{srv: srv, admin: adminAddr})
	}
	var stopSig os.Signal
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			reload(o, srv, store, log)
			continue
		}
		stopSig = sig
		break
	}
	sigName := "closed channel"
	if stopSig != nil {
		sigName = stopSig.String()
	}
	log.Info("draining: no new clients; waiting for tunnels to end", "signal", sigName,
		"tunnels", srv.Stats().TunnelsActive, "drain_timeout", o.drain.String())
	ctx, cancel := context.WithTimeout(context.Background(), o.drain)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- srv.Shutdown(ctx) }()
	for {
		select {
		case err := <-done:
			waited := time.Since(start).Round(time.Millisecond).String()
			if err != nil {
				log.Info("drain timeout passed: closed the remaining tunnels", "waited", waited)
			} else {
				log.Info("drained: every tunnel ended", "waited", waited)
			}
			return 0
		case sig, ok := <-sigs:
			if !ok {
				sigs = nil
				continue
			}
			if sig == syscall.SIGHUP {
				continue
			}
			log.Info("second signal: closing every tunnel now", "signal", sig.String())
			cancel()
		}
	}
}

// certMetrics exports when the certificate in force expires, for an alert
// well before it.
func certMetrics(store *certs.Store) (*metrics.Set, map[string]relay.MetricDoc) {
	set := metrics.NewSet()
	set.NewGauge("meetpoint_tls_certificate_expiry_timestamp_seconds", func() float64 { return float64(store.NotAfter().Unix()) })
	return set, map[string]relay.MetricDoc{"meetpoint_tls_certificate_expiry_timestamp_seconds": {Type: "gauge",
		Help: "When the TLS certificate in force expires, in seconds since 1970 (files are reloaded when they change; a self-signed certificate is replaced when it expires)."}}
}

// reload is SIGHUP's: every part is read and checked first — the
// authenticator's and access rules' files, the TLS certificate, the
// limits from the command line and config files — and put in force only
// if none failed, so a reload is all or nothing. A changed setting that
// only a restart puts in force is told.
func reload(o serveOptions, srv *relay.Server, store *certs.Store, log *slog.Logger) {
	commitRelay, err := srv.PrepareReload()
	commitCert := func() {}
	if store != nil {
		c, cerr := store.PrepareReload()
		if cerr == nil {
			commitCert = c
		}
		err = errors.Join(err, cerr)
	}
	var again serveOptions
	if o.reparse != nil {
		var perr error
		if again, perr = o.reparse(); perr == nil {
			// The relay keeps its authenticator (its files are re-read
			// above): the re-parse's own is never used.
			discardAuth(again.cfg.Auth)
			// The IPv6 prefix stays: the per-address state (bans included)
			// is kept under keys it made (a change is named below).
			again.cfg.Limits.IPv6Prefix = o.cfg.Limits.IPv6Prefix
			perr = srv.CheckLimits(again.cfg.Limits)
		}
		err = errors.Join(err, perr)
	}
	if err != nil {
		log.Error("reload failed: nothing changed, the previous state stays in force", "err", oneLine(err))
		return
	}
	commitRelay()
	commitCert()
	if o.reparse != nil {
		_ = srv.SetLimits(again.cfg.Limits) // checked above
		if names := needRestart(o.settings, again.settings); len(names) > 0 {
			log.Warn("settings changed that only a restart puts in force; they are not in force", "settings", strings.Join(names, ", "))
		}
	}
	log.Info("reloaded: authenticator, access rules, certificate, limits")
}
