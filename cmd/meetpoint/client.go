package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"sync/atomic"
	"syscall"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
)

// clientSettings is what the client flags fill in.
type clientSettings struct {
	opts    client.Options
	verbose bool
	hello   bool

	// TLS
	caFile      string
	fingerprint string
	insecure    bool
	certFile    string // client certificate (relays with --tls-client-ca / --tls-client-fingerprints)
	keyFile     string

	// TunnelProxy API
	serve      string // register as a server and bridge clients to this address
	serverUUID string // the server's uuid (with --serve: ours)
	listen     string // client side: carry each local connection as a client
	closeOnEOF bool
}

// clientFlags declares the client flags.
func clientFlags() (*flag.FlagSet, *clientSettings) {
	v := &clientSettings{}
	name := "meetpoint-client"
	if host, err := os.Hostname(); err == nil && host != "" {
		name += "@" + host
	}
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.StringVar(&v.opts.URL, "url", "", "relay `URL`: ws://host:port/path, wss://..., tcp://host:port or tls://host:port (ssl:// as nymea)")
	fs.StringVar(&v.opts.Token, "token", "", "authentication token")
	fs.StringVar(&v.opts.Nonce, "nonce", "", "nonce; clients with the same token and nonce meet")
	fs.StringVar(&v.opts.UUID, "uuid", "", "client uuid (default random)")
	fs.StringVar(&v.opts.Name, "name", name, "client name shown to the partner")
	fs.DurationVar(&v.opts.Timeout, "timeout", 0, "give up when no partner has come within this `DURATION` of starting (default: wait as long as the relay keeps us, its --alone-timeout; connecting and authenticating get 30s)")
	fs.BoolVar(&v.verbose, "verbose", false, "print the JSON-RPC exchange to stderr (token masked)")
	fs.BoolVar(&v.hello, "hello", false, "call RemoteProxy.Hello, print the reply's params and exit")
	fs.BoolVar(&v.closeOnEOF, "close-on-eof", false, "close the tunnel when stdin ends (default: wait for the partner, like nc)")
	fs.StringVar(&v.caFile, "ca", "", "trust the relay certificate(s) in this PEM `FILE` (wss://, tls://)")
	fs.StringVar(&v.fingerprint, "fingerprint", "", "accept only a relay certificate with this SHA-256 (hex), e.g. a self-signed one")
	fs.BoolVar(&v.insecure, "insecure", false, "do not verify the relay's certificate (testing only)")
	fs.StringVar(&v.certFile, "cert", "", "present this client certificate (PEM `FILE`, with --key) to a relay that requires one")
	fs.StringVar(&v.keyFile, "key", "", "the client certificate's private key (PEM `FILE`)")
	fs.StringVar(&v.serve, "serve", "", "TunnelProxy: register as a server and connect each client to this local `ADDR` (e.g. 127.0.0.1:80)")
	fs.StringVar(&v.serverUUID, "server-uuid", "", "TunnelProxy: the server's `UUID` (to reach it, or with --serve our own; default random)")
	fs.StringVar(&v.listen, "listen", "", "TunnelProxy client: accept local connections on `ADDR` and carry each to --server-uuid")
	return fs, v
}

// runClient connects to a partner and copies stdin to the tunnel and the
// tunnel to stdout until the partner closes.
func runClient(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs, v := clientFlags()
	if code := parseFlags(fs, args, stdout, stderr); code >= 0 {
		return code
	}
	if v.opts.URL == "" {
		fmt.Fprintln(stderr, "meetpoint client: --url is required (e.g. --url tcp://127.0.0.1:8443)")
		return 2
	}
	secure, err := checkURL(v.opts.URL)
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint client: %v\n", err)
		return 2
	}
	if !secure && v.fingerprint != "" {
		// A pin that silently pins nothing would be worse than none.
		fmt.Fprintf(stderr, "meetpoint client: --fingerprint needs a TLS URL (wss:// or tls://), not %s\n", shownURL(v.opts.URL))
		return 2
	}
	if v.serverUUID != "" {
		if _, ok := handshake.ParseUUID(v.serverUUID); !ok {
			fmt.Fprintf(stderr, "meetpoint client: --server-uuid %q is not a UUID (e.g. 6ba7b810-9dad-11d1-80b4-00c04fd430c8)\n", v.serverUUID)
			return 2
		}
	}
	if msg := modeConflict(v); msg != "" {
		fmt.Fprintf(stderr, "meetpoint client: %s\n", msg)
		return 2
	}
	if v.opts.Timeout < 0 {
		fmt.Fprintln(stderr, "meetpoint client: --timeout must be positive (or 0: wait as long as the relay does)")
		return 2
	}
	if v.opts.Timeout == 0 { // the relay's alone timeout decides how long we wait
		v.opts.Timeout, v.opts.WaitRelay = client.DefaultTimeout, true
	}
	if v.verbose {
		v.opts.Verbose = stderr
	}
	tlsConf, err := clientTLS(v.caFile, v.fingerprint, v.insecure, v.certFile, v.keyFile)
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint client: %v\n", err)
		return 2
	}
	v.opts.TLSConfig = tlsConf
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if v.serve != "" || v.serverUUID != "" {
		return runTunnelProxy(ctx, v, stdin, stdout, stderr)
	}
	if !v.hello {
		switch inURL := client.URLHasToken(v.opts.URL); {
		case inURL && v.opts.Token != "":
			fmt.Fprintln(stderr, "meetpoint client: a token in --url and --token: give one")
			return 2
		case !inURL && v.opts.Token == "":
			// An empty token would pair with anyone's empty token on a
			// relay that accepts every token (--auth dummy).
			fmt.Fprintln(stderr, "meetpoint client: --token is required (or ?token= in a ws:// or wss:// --url)")
			return 2
		}
	}

	if v.hello {
		params, err := client.Hello(ctx, v.opts)
		if err != nil {
			return clientFail(stderr, err, v.opts, false)
		}
		b, _ := json.MarshalIndent(params, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return 0
	}

	waiting := false
	v.opts.Waiting = func() {
		waiting = true
		fmt.Fprintln(stderr, "meetpoint: authenticated; waiting for a partner…")
	}
	tun, err := client.Dial(ctx, v.opts)
	if err != nil {
		return clientFail(stderr, err, v.opts, waiting)
	}
	defer tun.Close()
	fmt.Fprintf(stderr, "meetpoint: tunnel established with %q (%s)\n", tun.PeerName(), tun.PeerUUID())
	interrupted := context.AfterFunc(ctx, func() { tun.Close() })
	defer interrupted()

	// By default stdin's end does not end the session (the partner decides,
	// as with nc); --close-on-eof closes the tunnel once stdin is sent.
	var stdinDone atomic.Bool
	go func() {
		if _, err := io.Copy(tun, stdin); err == nil {
			stdinDone.Store(true)
			if v.closeOnEOF {
				tun.Close()
			}
		}
	}()
	_, err = io.Copy(stdout, tun)
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "meetpoint: interrupted")
		return 130
	case v.closeOnEOF && stdinDone.Load():
		return 0 // we closed it
	case err != nil:
		fmt.Fprintf(stderr, "meetpoint: partner lost: %v\n", err)
		return 1
	case !stdinDone.Load():
		fmt.Fprintln(stderr, "meetpoint: partner closed the tunnel")
		return 1
	}
	return 0 // we had said everything; the partner finished
}

// modeConflict says which flag cannot apply to the mode the flags select
// (TunnelProxy: --serve or --server-uuid; legacy: neither), or "" when all
// do: a flag silently ignored would leave the user thinking it took
// effect, e.g. a --token protecting a TunnelProxy server, which has none.
func modeConflict(v *clientSettings) string {
	switch {
	case v.listen != "" && v.serve != "":
		return "--listen and --serve: give one (--listen reaches a server, --serve is one)"
	case v.listen != "" && v.serverUUID == "":
		return "--listen needs --server-uuid (the TunnelProxy server to carry connections to)"
	}
	if v.serve == "" && v.serverUUID == "" {
		return ""
	}
	for _, f := range []struct {
		name string
		set  bool
	}{{"--hello", v.hello}, {"--token", v.opts.Token != ""}, {"--nonce", v.opts.Nonce != ""}, {"--close-on-eof", v.closeOnEOF}} {
		if f.set {
			return f.name + " does not go with --serve or --server-uuid (the TunnelProxy modes, which take none of --hello, --token, --nonce, --close-on-eof)"
		}
	}
	return ""
}

// clientFail prints one line for a failed connection and returns 1; it
// says which side gave up: this client (--timeout) or the relay.
// waiting is whether the client had authenticated and waited for its
// partner.
func clientFail(stderr io.Writer, err error, o client.Options, waiting bool) int {
	var ae *client.AuthError
	var np *client.NoPartnerError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.Is(err, client.ErrTimeout) && waiting:
		fmt.Fprintf(stderr, "meetpoint: this client gave up: no partner within %v (--timeout; without it the client waits as long as the relay does)\n", o.Timeout)
	case errors.Is(err, client.ErrTimeout):
		fmt.Fprintf(stderr, "meetpoint: timed out after %v connecting to the relay and authenticating (--timeout)\n", o.Timeout)
	case errors.As(err, &np):
		fmt.Fprintf(stderr, "meetpoint: %v\n", np)
	case errors.As(err, &ae):
		fmt.Fprintf(stderr, "meetpoint: authentication failed: %s\n", ae.Result)
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "meetpoint: interrupted")
		return 130
	case errors.As(err, &ua):
		fmt.Fprintf(stderr, "meetpoint: %v\n  (a relay with a self-signed certificate? pin it with --fingerprint SHA256 —\n   the relay logs it at start — or trust its certificate with --ca FILE)\n", err)
	default:
		fmt.Fprintf(stderr, "meetpoint: %v\n", err)
	}
	return 1
}

// checkURL accepts the relay URL forms the client dials and reports
// whether it is TLS; the error says what a valid URL looks like.
func checkURL(raw string) (secure bool, err error) {
	u, perr := client.ParseURL(raw)
	bad := func() (bool, error) {
		return false, fmt.Errorf("--url %q: want ws://HOST:PORT/PATH, wss://HOST:PORT/PATH, tcp://HOST:PORT or tls://HOST:PORT (ssl:// as nymea), e.g. tcp://127.0.0.1:8443", shownURL(raw))
	}
	if perr != nil || u.Host == "" {
		return bad()
	}
	switch u.Scheme {
	case "ws":
		return false, nil
	case "wss":
		return true, nil
	case "tcp", "tls", "ssl":
		if u.Port() == "" {
			return bad()
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return false, fmt.Errorf("--url %q: a %s:// URL is HOST:PORT only, no path or query (the token goes in --token; a token in the URL needs ws:// or wss://)", shownURL(raw), u.Scheme)
		}
		return u.Scheme != "tcp", nil
	}
	return bad()
}

// urlTokens finds the value of a token in a URL's query (?token=,
// ?ws_token=); its first group is what comes before it.
var urlTokens = regexp.MustCompile(`([?&](?:ws_)?token=)[^&#]*`)

// shownURL is a --url as errors quote it: its token and any password
// written xxxxx. It works on the text, so that a URL too broken to
// parse is shown without them too.
func shownURL(raw string) string {
	return hideCredentials(urlTokens.ReplaceAllString(raw, "${1}xxxxx"))
}
