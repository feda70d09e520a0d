// Package client connects to a meetpoint (or nymea-remoteproxy) relay with
// the legacy API: it authenticates, waits for the partner and then moves
// tunnel bytes over WebSocket or raw TCP.
package client

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// DefaultTimeout bounds Dial when Options.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// ErrTimeout is returned by Dial and Hello when Options.Timeout passes.
var ErrTimeout = errors.New("timed out")

// Options configure Dial.
type Options struct {
	// URL is ws://host:port/path or tcp://host:port; wss:// and tls:// use TLSConfig.
	// A WebSocket URL may carry the token itself (?token=T&nonce=N, the
	// relay checks it during the upgrade): then Token and Nonce are not
	// sent and no Authenticate is made.
	URL string
	// Token is the authentication token; it is never printed.
	Token string
	// Nonce is optional; clients with the same token and nonce meet.
	Nonce string
	// UUID identifies this client; empty means a random version 4 uuid.
	UUID string
	// Name is this client's name, shown to the partner.
	Name string
	// Timeout bounds connect, authentication and pairing together
	// (DefaultTimeout when zero).
	Timeout time.Duration
	// WaitRelay lets Dial wait for the partner as long as the relay keeps
	// the client (its alone timeout: 8 s by default, `make run` 2 minutes);
	// Timeout then bounds connecting and authenticating only.
	WaitRelay bool
	// Verbose, if set, receives every JSON-RPC message sent ("> ...") and
	// received ("< ..."), with the token replaced by "***".
	Verbose io.Writer
	// TLSConfig is used for wss:// and tls:// (nil means defaults).
	TLSConfig *tls.Config
	// LocalIP, if set, is the address to connect from (e.g. one of several
	// 127.0.0.x to spread many connections over more source addresses).
	LocalIP net.IP
	// Binary makes Tunnel.Write send BINARY WebSocket messages only. By
	// default a tunnel over WebSocket sends TEXT messages while what it is
	// given is valid UTF-8 (cut at character boundaries) and BINARY from
	// the first byte that cannot be UTF-8 on: nymea's server refuses
	// binary messages (1011), nymea's clients only listen for text.
	Binary bool
	// Waiting, if set, is called once authenticated, when Dial starts to
	// wait for the partner (a CLI says "waiting for a partner…").
	Waiting func()
}

// NoPartnerError is returned by Dial when the relay ends the connection
// while the client waits for its partner. The relay says why (a
// RemoteProxy.Closing notification over raw TCP, the close frame's text
// over WebSocket): most often its alone timeout (--alone-timeout, 8 s by
// default) passed; a third client for a tunnel that exists, the same uuid
// on both sides, or the relay shutting down are the others. Without a
// reason the connection just ended: the relay stopped, or something in
// between (a balancer) cut it.
type NoPartnerError struct {
	Waited  time.Duration // from the Authenticate reply to the close
	Reason  string        // the relay's reason as its metrics name it ("alone_timeout", "tunnel_exists", "duplicate_uuid", "shutdown", …), or "" when it gave none
	Message string        // the relay's own words, e.g. "No partner arrived within 8s", or ""
	Err     error         // how the connection ended
}

// Error says who ended the wait, and why as far as the relay said.
func (e *NoPartnerError) Error() string {
	waited := e.Waited.Round(100 * time.Millisecond)
	switch {
	case e.Reason == "alone_timeout":
		return fmt.Sprintf("the relay gave up waiting for a partner: %s (its --alone-timeout)", e.Message)
	case e.Message != "":
		return fmt.Sprintf("the relay closed the connection after %v: %s", waited, e.Message)
	}
	return fmt.Sprintf("the connection to the relay ended after %v without a reason (the relay stopped, or something in between cut it): %v",
		waited, e.Err)
}

// Unwrap returns how the connection ended.
func (e *NoPartnerError) Unwrap() error { return e.Err }

// noPartner makes the NoPartnerError for a connection that ended with err
// after note (the RemoteProxy.Closing notification's params, or nil).
func noPartner(waited time.Duration, note map[string]any, err error) *NoPartnerError {
	e := &NoPartnerError{Waited: waited, Err: err}
	if note != nil {
		e.Reason, _ = note["reason"].(string)
		e.Message, _ = note["message"].(string)
		return e
	}
	var ce *CloseError
	if errors.As(err, &ce) && ce.Reason != "" { // WebSocket: the close frame's text
		e.Message = ce.Reason
		switch {
		case strings.HasPrefix(ce.Reason, "No partner arrived"):
			e.Reason = "alone_timeout"
		case ce.Reason == "Tunnel already exists":
			e.Reason = "tunnel_exists"
		case ce.Reason == "Duplicated client UUID.":
			e.Reason = "duplicate_uuid"
		case ce.Code == 1001:
			e.Reason = "shutdown"
		}
	}
	return e
}

// AuthError is returned by Dial when the server answers Authenticate with an
// authenticationError other than AuthenticationErrorNoError.
type AuthError struct {
	Result string // e.g. "AuthenticationErrorAuthenticationFailed"
}

// Error returns "authentication failed: <Result>".
func (e *AuthError) Error() string { return "authentication failed: " + e.Result }

// RPCError is a JSON-RPC error reply ({"error":...,"status":"error"}).
type RPCError struct {
	Text string
}

// Error returns "json-rpc error: <Text>".
func (e *RPCError) Error() string { return "json-rpc error: " + e.Text }

// Dial connects, authenticates and waits for the partner.
//
// Errors: *AuthError for a non-NoError authenticationError (and, for a
// token in a WebSocket URL, for the relay's HTTP 401), *RPCError for a
// JSON-RPC error, ErrTimeout when Options.Timeout passes, *NoPartnerError
// when the relay closes while we wait for the partner, other errors wrapped
// with the step that failed ("connect: ...", "authenticate: ...", "wait for
// partner: ...").
func Dial(ctx context.Context, o Options) (*Tunnel, error) {
	uuid := o.UUID
	if uuid == "" {
		uuid = NewUUID()
	}
	var tun *Tunnel
	inURL := URLHasToken(o.URL)
	if inURL {
		o.URL = withIdentity(o.URL, uuid, o.Name)
	}
	err := withTimeout(ctx, o, func(r *Raw, untimed func()) error {
		if !inURL { // else the upgrade authenticated us
			if err := authenticate(r, uuid, o); err != nil {
				return err
			}
		}
		if o.Waiting != nil {
			o.Waiting()
		}
		if o.WaitRelay {
			untimed()
		}
		since := time.Now()
		var closing map[string]any // the relay's RemoteProxy.Closing, if it said why
		for {
			p, err := r.Recv()
			if err != nil {
				if ctx.Err() == nil && isClosed(err) {
					return noPartner(time.Since(since), closing, err)
				}
				return fmt.Errorf("wait for partner: %w", err)
			}
			m, err := decodeObject(p)
			if err != nil {
				return fmt.Errorf("wait for partner: %w", err)
			}
			if m["status"] == "error" {
				return rpcError(m)
			}
			if m["notification"] == "RemoteProxy.Closing" {
				closing, _ = m["params"].(map[string]any)
				continue
			}
			if m["notification"] != "RemoteProxy.TunnelEstablished" {
				continue
			}
			peer, _ := m["params"].(map[string]any)
			name, _ := peer["name"].(string)
			id, _ := peer["uuid"].(string)
			tun = &Tunnel{r: r, peerName: name, peerUUID: id}
			tun.text.Binary = o.Binary
			return nil
		}
	})
	if se := ws.StatusError(0); inURL && errors.As(err, &se) && se == 401 {
		// The relay refused the token in the URL: as Authenticate's refusal.
		return nil, &AuthError{Result: "AuthenticationErrorAuthenticationFailed"}
	}
	if err != nil {
		return nil, err
	}
	tun.r.verbose = nil
	return tun, nil
}

// authenticate calls Authentication.Authenticate with o's token.
func authenticate(r *Raw, uuid string, o Options) error {
	params := map[string]any{"uuid": uuid, "name": o.Name, "token": o.Token}
	if o.Nonce != "" {
		params["nonce"] = o.Nonce
	}
	reply, err := r.Call(1, "Authentication.Authenticate", params)
	if err != nil {
		return fmt.Errorf("authenticate: %w", err)
	}
	res, err := replyParams(reply)
	if err != nil {
		return fmt.Errorf("authenticate: %w", err)
	}
	result, _ := res["authenticationError"].(string)
	if result == "" {
		return errors.New("authenticate: reply without authenticationError")
	}
	if result != "AuthenticationErrorNoError" {
		return &AuthError{Result: result}
	}
	return nil
}

// URLHasToken reports whether rawURL is a WebSocket URL carrying a token
// (?token= or ?ws_token=), which the relay checks during the upgrade.
func URLHasToken(rawURL string) bool {
	u, err := ParseURL(rawURL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") {
		return false
	}
	q := u.Query()
	return q.Has("token") || q.Has("ws_token")
}

// withIdentity adds uuid and name to a URL carrying a token, where it has
// none of its own (the relay reads them from the URL then).
func withIdentity(rawURL, uuid, name string) string {
	u, err := ParseURL(rawURL)
	if err != nil {
		return rawURL
	}
	q := u.Query()
	for k, v := range map[string]string{"uuid": uuid, "name": name} {
		if !q.Has(k) && v != "" {
			q.Set(k, v)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Hello performs RemoteProxy.Hello on a fresh connection and returns the
// reply's params. It uses URL, Timeout, Verbose and TLSConfig of o.
func Hello(ctx context.Context, o Options) (map[string]any, error) {
	var params map[string]any
	err := withTimeout(ctx, o, func(r *Raw, _ func()) error {
		defer r.Close()
		reply, err := r.Call(1, "RemoteProxy.Hello", nil)
		if err != nil {
			return fmt.Errorf("hello: %w", err)
		}
		params, err = replyParams(reply)
		if err != nil {
			return fmt.Errorf("hello: %w", err)
		}
		return nil
	})
	return params, err
}

// NewUUID returns a random version 4 uuid in its canonical text form.
func NewUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// withTimeout connects and runs fn under o.Timeout. On success the
// connection is left open with no deadline; on failure it is closed and a
// timeout is reported as ErrTimeout. fn may call untimed to lift the
// timeout from then on (ctx still cancels).
func withTimeout(ctx context.Context, o Options, fn func(r *Raw, untimed func()) error) error {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	tctx, cancel := context.WithTimeoutCause(ctx, timeout, ErrTimeout)
	defer cancel()
	cur := tctx // the context that ends fn now

	fail := func(err error) error {
		if cause := context.Cause(cur); cause != nil {
			if errors.Is(cause, ErrTimeout) {
				return ErrTimeout
			}
			var ae *AuthError
			var re *RPCError
			if !errors.As(err, &ae) && !errors.As(err, &re) {
				return fmt.Errorf("%w (%v)", cause, err)
			}
		}
		return err
	}

	r, err := dialRaw(tctx, o.URL, o.TLSConfig, o.LocalIP)
	if err != nil {
		return fail(fmt.Errorf("connect: %w", err))
	}
	r.verbose, r.secret = o.Verbose, o.Token
	interrupt := func() { r.conn.SetDeadline(time.Unix(1, 0)) }
	stop := context.AfterFunc(tctx, interrupt)
	untimed := func() {
		if stop() { // not ended yet: from now on only ctx ends fn
			cur, stop = ctx, context.AfterFunc(ctx, interrupt)
		}
	}
	err = fn(r, untimed)
	if !stop() && err == nil {
		err = cur.Err()
	}
	if err != nil {
		r.Close()
		return fail(err)
	}
	r.conn.SetDeadline(time.Time{})
	return nil
}

// replyParams returns the params of a success reply or an *RPCError.
func replyParams(m map[string]any) (map[string]any, error) {
	if m["status"] == "error" {
		return nil, rpcError(m)
	}
	if m["status"] != "success" {
		return nil, fmt.Errorf("unexpected reply status %v", m["status"])
	}
	params, _ := m["params"].(map[string]any)
	if params == nil {
		params = map[string]any{}
	}
	return params, nil
}

// rpcError turns an error reply into *RPCError.
func rpcError(m map[string]any) error {
	text, ok := m["error"].(string)
	if !ok {
		text = fmt.Sprint(m["error"])
	}
	return &RPCError{Text: text}
}

// DialPair dials both ends of one tunnel at once (a and b normally share a
// token) and returns them paired; on error neither is left open. Handy for
// tests, benchmarks and local demos.
func DialPair(ctx context.Context, a, b Options) (*Tunnel, *Tunnel, error) {
	type res struct {
		tun *Tunnel
		err error
	}
	ch := make(chan res, 1)
	go func() {
		tun, err := Dial(ctx, a)
		ch <- res{tun, err}
	}()
	tb, errB := Dial(ctx, b)
	ra := <-ch
	if ra.err == nil && errB == nil {
		return ra.tun, tb, nil
	}
	if ra.tun != nil {
		ra.tun.Close()
	}
	if tb != nil {
		tb.Close()
	}
	return nil, nil, fmt.Errorf("dial pair: a: %v, b: %v", ra.err, errB)
}

// isClosed reports whether err means the relay ended the connection (a
// close, an EOF or a reset) rather than a local timeout or failure.
func isClosed(err error) bool {
	var ce *CloseError
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ce) ||
		errors.Is(err, syscall.ECONNRESET)
}
