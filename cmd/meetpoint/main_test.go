package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/auth"
	"github.com/meetpoint/meetpoint/relay/certs"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

func TestParseServeDefaults(t *testing.T) {
	var stderr bytes.Buffer
	cfg, code := parseServe(nil, io.Discard, io.Discard, &stderr)
	if code != -1 {
		t.Fatalf("code %d: %s", code, stderr.String())
	}
	if _, ok := cfg.Auth.(auth.Dummy); !ok || cfg.Logger == nil {
		t.Fatalf("auth %T, logger %v", cfg.Auth, cfg.Logger)
	}
	want := relay.DefaultConfig()
	cfg.Auth, cfg.Logger = nil, nil
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
}

func TestParseServeFlags(t *testing.T) {
	args := []string{
		"--listen", "127.0.0.1:9001", "--listen", "[::1]:9002",
		"--inactive-timeout", "1s", "--alone-timeout", "2s", "--auth-timeout", "3s",
		"--rpc-timeout", "4s", "--write-stall-timeout", "5s", "--max-buffer", "8192",
		"--name", "relay-x", "--loops", "3", "--log-level", "debug",
		"--tcp-keepalive", "11s", "--tcp-keepalive-interval", "2s", "--tcp-keepalive-count", "5", "--tcp-user-timeout", "7s",
	}
	var stderr bytes.Buffer
	cfg, code := parseServe(args, io.Discard, io.Discard, &stderr)
	if code != -1 {
		t.Fatalf("code %d: %s", code, stderr.String())
	}
	want := relay.DefaultConfig()
	want.Listen = []string{"127.0.0.1:9001", "[::1]:9002"}
	want.InactiveTimeout, want.AloneTimeout, want.AuthTimeout = time.Second, 2*time.Second, 3*time.Second
	want.RPCTimeout, want.WriteStallTimeout = 4*time.Second, 5*time.Second
	want.MaxBuffer, want.Name, want.Loops = 8192, "relay-x", 3
	want.Keepalive = relay.Keepalive{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 5, UserTimeout: 7 * time.Second}
	if !cfg.Logger.Enabled(context.Background(), -4) {
		t.Fatal("debug level not enabled")
	}
	cfg.Auth, cfg.Logger = nil, nil
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
}

func TestParseServeAuthFile(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	var said bytes.Buffer
	if code := run([]string{"token", "--gen-key", key}, nil, io.Discard, &said); code != 0 || !strings.Contains(said.String(), "wrote a new key to "+key) {
		t.Fatalf("gen-key: %d %q", code, said.String())
	}
	cfg, code := parseServe([]string{"--auth", "hmac:" + key}, io.Discard, io.Discard, io.Discard)
	if _, ok := cfg.Auth.(*auth.HMACAuth); code != -1 || !ok {
		t.Fatalf("code %d, auth %T", code, cfg.Auth)
	}
}

func TestParseServeErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--inactive-timeout", "abc"}, "inactive-timeout"},
		{[]string{"--alone-timeout", "0s"}, "alone-timeout"},
		{[]string{"--listen", "[fe80::1]:8443"}, "a link-local address needs its interface as a zone, e.g. [fe80::1%eth0]:PORT"},
		{[]string{"--max-buffer", "10"}, "max-buffer"},
		{[]string{"--tcp-keepalive-count", "0"}, "tcp-keepalive-count"},
		{[]string{"--tcp-keepalive-interval", "10ms"}, "tcp-keepalive-interval"},
		{[]string{"--tcp-user-timeout", "-1s"}, "tcp-user-timeout"},
		{[]string{"--loops", "-1"}, "loops"},
		{[]string{"--auth", "bogus"}, "auth"},
		{[]string{"--auth", "file:/nonexistent/tokens"}, "auth"},
		{[]string{"--listen", "no-port"}, "listen"},
		{[]string{"--log-level", "loud"}, "log-level"},
		{[]string{"--nope"}, "nope"},
		{[]string{"extra"}, "extra"},
	} {
		var stderr bytes.Buffer
		_, code := parseServe(tc.args, io.Discard, io.Discard, &stderr)
		line := stderr.String()
		if code != 2 || !strings.Contains(line, tc.want) || strings.Count(line, "\n") != 1 {
			t.Errorf("%v: code %d, stderr %q", tc.args, code, line)
		}
	}
	var stderr bytes.Buffer
	if code := run([]string{"serve", "--rpc-timeout", "soon"}, nil, io.Discard, &stderr); code != 2 {
		t.Fatalf("run serve with bad duration: %d %q", code, stderr.String())
	}
}

func TestRunMisc(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(nil, nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "usage") {
		t.Fatalf("no args: %d %q", code, errb.String())
	}
	if code := run([]string{"frob"}, nil, &out, &errb); code != 2 {
		t.Fatalf("unknown: %d", code)
	}
	out.Reset()
	if code := run([]string{"version"}, nil, &out, &errb); code != 0 || out.String() != "meetpoint dev\n" {
		t.Fatalf("version: %d %q", code, out.String())
	}
	for _, args := range [][]string{{"help"}, {"help", "serve"}, {"help", "client"}, {"help", "token"}, {"serve", "-h"}} {
		out.Reset()
		if code := run(args, nil, &out, &errb); code != 0 || out.Len() == 0 {
			t.Fatalf("%v: %d", args, code)
		}
	}
}

func TestToken(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	var said bytes.Buffer
	if code := run([]string{"token", "--gen-key", key}, nil, io.Discard, &said); code != 0 || !strings.Contains(said.String(), "wrote a new key to "+key) {
		t.Fatalf("gen-key: %d %q", code, said.String())
	}
	for _, use := range []string{"--auth hmac:" + key, "--admin-key-file " + key, "--mesh-key-file " + key} {
		if !strings.Contains(said.String(), use) {
			t.Errorf("gen-key does not mention %q: %q", use, said.String())
		}
	}
	st, err := os.Stat(key)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	data, _ := os.ReadFile(key)
	if len(strings.TrimSpace(string(data))) != 64 {
		t.Fatalf("key %d chars", len(data))
	}
	var errb bytes.Buffer
	if code := run([]string{"token", "--gen-key", key}, nil, io.Discard, &errb); code != 1 {
		t.Fatalf("gen-key over an existing file: %d", code)
	}
	var out bytes.Buffer
	if code := run([]string{"token", "--key", key, "--ttl", "1m", "--id", "dev-1"}, nil, &out, &errb); code != 0 {
		t.Fatalf("mint: %d %s", code, errb.String())
	}
	if tok := strings.TrimSpace(out.String()); !strings.HasPrefix(tok, "dev-1.") || strings.Count(tok, ".") != 2 {
		t.Fatalf("token %q", tok)
	}
	if code := run([]string{"token", "--key", key, "--ttl", "xyz"}, nil, io.Discard, io.Discard); code != 2 {
		t.Fatalf("bad ttl: %d", code)
	}
	if code := run([]string{"token"}, nil, io.Discard, io.Discard); code != 2 {
		t.Fatalf("no key: %d", code)
	}
	// A Redis that does not answer: one line saying so, not go-redis's retries.
	errb.Reset()
	dead := fmt.Sprintf("redis://127.0.0.1:%d/0", relaytest.FreePort(t))
	if code := run([]string{"token", "--redis", dead, "--user", "u"}, nil, io.Discard, &errb); code != 1 ||
		strings.Count(errb.String(), "\n") != 1 || !strings.Contains(errb.String(), "unreachable") {
		t.Errorf("token --redis on a dead Redis: %d %q", code, errb.String())
	}
}

// fakeRelay answers one Authenticate per connection over raw TCP: token
// "bad" fails, "alone" never gets a partner, anything else gets a tunnel
// whose partner sends "hi\n" and closes.
func fakeRelay(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				var req struct {
					ID     int               `json:"id"`
					Params map[string]string `json:"params"`
				}
				if json.NewDecoder(br).Decode(&req) != nil {
					return
				}
				reply := func(res string) string {
					return `{"id":` + itoa(req.ID) + `,"params":{"authenticationError":"` + res + `"},"status":"success"}` + "\n"
				}
				switch req.Params["token"] {
				case "bad":
					io.WriteString(c, reply("AuthenticationErrorAuthenticationFailed"))
				case "leave": // the partner arrives and leaves at once
					io.WriteString(c, reply("AuthenticationErrorNoError")+
						`{"id":0,"notification":"RemoteProxy.TunnelEstablished","params":{"name":"p","uuid":"u"}}`+"\n")
				case "alone":
					io.WriteString(c, reply("AuthenticationErrorNoError"))
					io.Copy(io.Discard, br)
				case "lonely": // the connection ends without a reason
					io.WriteString(c, reply("AuthenticationErrorNoError"))
				case "third": // the relay says why
					io.WriteString(c, reply("AuthenticationErrorNoError")+
						`{"id":0,"notification":"RemoteProxy.Closing","params":{"reason":"tunnel_exists","message":"Tunnel already exists"}}`+"\n")
				default:
					io.WriteString(c, reply("AuthenticationErrorNoError")+
						`{"id":0,"notification":"RemoteProxy.TunnelEstablished","params":{"name":"p","uuid":"u"}}`+"\nhi\n")
					// Read what the client sends before closing, so the close
					// is a FIN, not a reset for unread data.
					c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
					io.Copy(io.Discard, br)
				}
			}()
		}
	}()
	return "tcp://" + ln.Addr().String()
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestClientPartnerLoss(t *testing.T) {
	url := fakeRelay(t)
	stdin, w := io.Pipe() // stdin stays open: we still had things to say
	defer w.Close()
	var errb bytes.Buffer
	code := run([]string{"client", "--url", url, "--token", "leave"}, stdin, io.Discard, &errb)
	want := "meetpoint: authenticated; waiting for a partner…\nmeetpoint: tunnel established with \"p\" (u)\nmeetpoint: partner closed the tunnel\n"
	if code != 1 || errb.String() != want {
		t.Fatalf("partner loss: %d %q", code, errb.String())
	}
}

func TestClientCommand(t *testing.T) {
	url := fakeRelay(t)
	var out, errb bytes.Buffer
	code := run([]string{"client", "--url", url, "--token", "good", "--verbose"}, strings.NewReader("x"), &out, &errb)
	if code != 0 || out.String() != "hi\n" || strings.Contains(errb.String(), "good") {
		t.Fatalf("ok: %d %q %q", code, out.String(), errb.String())
	}
	errb.Reset()
	code = run([]string{"client", "--url", url, "--token", "bad"}, strings.NewReader(""), io.Discard, &errb)
	if code != 1 || errb.String() != "meetpoint: authentication failed: AuthenticationErrorAuthenticationFailed\n" {
		t.Fatalf("bad: %d %q", code, errb.String())
	}
	errb.Reset()
	code = run([]string{"client", "--url", url, "--token", "alone", "--timeout", "200ms"}, strings.NewReader(""), io.Discard, &errb)
	if code != 1 || errb.String() != "meetpoint: authenticated; waiting for a partner…\n"+
		"meetpoint: this client gave up: no partner within 200ms (--timeout; without it the client waits as long as the relay does)\n" {
		t.Fatalf("alone: %d %q", code, errb.String())
	}
	// The relay ending the wait: its reason, or that it gave none (and no
	// blame on a timeout).
	errb.Reset()
	code = run([]string{"client", "--url", url, "--token", "third"}, strings.NewReader(""), io.Discard, &errb)
	if code != 1 || !strings.HasSuffix(errb.String(), ": Tunnel already exists\n") {
		t.Fatalf("third: %d %q", code, errb.String())
	}
	errb.Reset()
	code = run([]string{"client", "--url", url, "--token", "lonely"}, strings.NewReader(""), io.Discard, &errb)
	if code != 1 || !strings.Contains(errb.String(), "meetpoint: the connection to the relay ended after ") ||
		!strings.Contains(errb.String(), "without a reason") || strings.Contains(errb.String(), "alone-timeout") {
		t.Fatalf("lonely: %d %q", code, errb.String())
	}
	// Bad URLs and flags that cannot apply are usage errors (2) that say
	// what is wanted.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"client", "--url", "127.0.0.1:8443", "--token", "x"}, "want ws://HOST:PORT/PATH"},
		{[]string{"client", "--url", "http://127.0.0.1:8443", "--token", "x"}, "e.g. tcp://127.0.0.1:8443"},
		{[]string{"client", "--url", "tcp://127.0.0.1", "--token", "x"}, "want ws://"},
		{[]string{"client", "--url", url, "--token", "x", "--fingerprint", strings.Repeat("ab", 32)}, "--fingerprint needs a TLS URL"},
		{[]string{"client", "--url", url, "--server-uuid", "dev-1"}, `--server-uuid "dev-1" is not a UUID (e.g. `},
		{[]string{"client", "--url", url + "/path", "--token", "x"}, "is HOST:PORT only, no path or query"},
		{[]string{"client", "--url", url + "?token=x"}, "is HOST:PORT only, no path or query"},
		{[]string{"client", "--url", url}, "--token is required"},
		{[]string{"client", "--url", "ws://127.0.0.1:1/?token=x", "--token", "y"}, "a token in --url and --token"},
		// TunnelProxy flags outside their modes, legacy flags in them.
		{[]string{"client", "--url", url, "--token", "x", "--listen", "127.0.0.1:0"}, "--listen needs --server-uuid"},
		{[]string{"client", "--url", url, "--serve", "127.0.0.1:1", "--listen", "127.0.0.1:0"}, "--listen and --serve"},
		{[]string{"client", "--url", url, "--hello", "--server-uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"}, "--hello does not go with"},
		{[]string{"client", "--url", url, "--serve", "127.0.0.1:1", "--token", "x"}, "--token does not go with"},
		{[]string{"client", "--url", url, "--server-uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "--nonce", "n"}, "--nonce does not go with"},
		{[]string{"client", "--url", url, "--server-uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "--close-on-eof"}, "--close-on-eof does not go with"},
	} {
		errb.Reset()
		if code := run(tc.args, strings.NewReader(""), io.Discard, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: %d %q, want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
	for _, args := range [][]string{{"client"}, {"client", "--url", url, "--timeout", "abc"}, {"client", "--url", url, "--timeout", "-1s"}} {
		errb.Reset()
		if code := run(args, strings.NewReader(""), io.Discard, &errb); code != 2 || strings.Count(errb.String(), "\n") != 1 {
			t.Fatalf("%v: %d %q", args, code, errb.String())
		}
	}
}

// TestServeEndToEnd runs the real relay with two clients.
func TestServeEndToEnd(t *testing.T) {
	cfg, code := parseServe([]string{"--listen", "127.0.0.1:0", "--log-level", "error"}, io.Discard, io.Discard, io.Discard)
	if code != -1 {
		t.Fatalf("parse: %d", code)
	}
	srv, err := relay.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	addr := srv.Addrs()[0].String()
	ctx := context.Background()
	type res struct {
		tun *client.Tunnel
		err error
	}
	ch := make(chan res, 1)
	go func() {
		tun, err := client.Dial(ctx, client.Options{URL: "ws://" + addr + "/", Token: "t", Nonce: "n", Name: "a", Timeout: 5 * time.Second})
		ch <- res{tun, err}
	}()
	b, err := client.Dial(ctx, client.Options{URL: "tcp://" + addr, Token: "t", Nonce: "n", Name: "b", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	a := r.tun
	defer a.Close()
	if a.PeerName() != "b" || b.PeerName() != "a" {
		t.Fatalf("peers %q %q", a.PeerName(), b.PeerName())
	}
	a.Write([]byte("ping"))
	got := make([]byte, 4)
	if _, err := io.ReadFull(b, got); err != nil || string(got) != "ping" {
		t.Fatalf("b read %q %v", got, err)
	}
	b.Write([]byte("pong"))
	if _, err := io.ReadFull(a, got); err != nil || string(got) != "pong" {
		t.Fatalf("a read %q %v", got, err)
	}
}

// An unpinned self-signed relay gets a hint, not just Go's x509 error.
func TestClientUnknownAuthorityHint(t *testing.T) {
	cert, err := certs.SelfSignedCert([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	var errb bytes.Buffer
	code := run([]string{"client", "--url", "tls://" + ln.Addr().String(), "--token", "x", "--timeout", "5s"}, strings.NewReader(""), io.Discard, &errb)
	if code != 1 || !strings.Contains(errb.String(), "x509: certificate signed by unknown authority") ||
		!strings.Contains(errb.String(), "pin it with --fingerprint") {
		t.Fatalf("%d %q", code, errb.String())
	}
}

// TestTokenRedisBadArgs: a one-time token's user and lifetime are checked
// before Redis is asked. A missing --user or a --ttl over the hour is a
// usage error (exit 2, saying which), whatever the state of the Redis: it
// was reported as "… unreachable" (exit 1) while the Redis was down, which
// sent the operator to fix the wrong thing.
func TestTokenRedisBadArgs(t *testing.T) {
	dead := fmt.Sprintf("redis://127.0.0.1:%d/0", relaytest.FreePort(t))
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--user", ""}, "user"},
		{[]string{"--user", "u", "--ttl", "2h"}, "ttl"},
		{[]string{"--user", "u", "--ttl", "-1s"}, "ttl"},
	} {
		var errb bytes.Buffer
		code := run(append([]string{"token", "--redis", dead}, c.args...), nil, io.Discard, &errb)
		if code != 2 || !strings.Contains(errb.String(), c.want) || strings.Contains(errb.String(), "unreachable") {
			t.Errorf("token --redis %v: exit %d %q, want 2 and what is wrong with %s", c.args, code, errb.String(), c.want)
		}
	}
}
