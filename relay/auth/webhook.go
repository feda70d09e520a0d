package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/meetpoint/meetpoint/relay"
)

var _ relay.Authenticator = (*Webhook)(nil)

// Webhook asks an HTTP service whether a token is valid: the self-hosted
// replacement for nymea's AWS Lambda authorizer (--auth
// webhook:https://auth.example/check). For each Authenticate it POSTs
//
//	{"token": T, "uuid": U, "name": N, "nonce": NONCE, "peer": "IP:PORT"}
//
// (the token in the body, never in the URL, which proxies log) and
// accepts on a 2xx answer with {"allow": true, "identity": "alice"} (the
// identity becomes the connection's token identity). A 2xx with allow
// false, any other status, or a malformed body reject
// (AuthenticationFailed; a redirect is never followed: it would send the
// token elsewhere); no answer within the relay's --auth-timeout is
// AuthenticationErrorTimeout; a transport error (the service down) is
// AuthenticationErrorProxyError. Connections to the service are reused,
// at most MaxInFlight requests run at once (more wait, within the auth
// timeout), and positive answers may be cached for CacheTTL.
type Webhook struct {
	url    string
	client *http.Client
	slots  chan struct{}

	// CacheTTL, if positive, keeps positive answers this long, keyed by a
	// hash of the token (never the token itself). Off by default: a
	// revoked token stays good for up to CacheTTL.
	CacheTTL time.Duration

	mu    sync.Mutex
	cache map[[32]byte]cached

	dep *relay.Dependency // the service's health (Watch), or nil
}

type cached struct {
	identity string
	until    time.Time
}

// MaxInFlight is the default bound on concurrent webhook requests.
const MaxInFlight = 64

// maxWebhookAnswer bounds the answer body read.
const maxWebhookAnswer = 64 << 10

// NewWebhook checks rawURL (http:// or https://). Credentials in it
// (user:password@, a key in the query) are sent, and never shown: String
// and the errors it reports leave them out.
func NewWebhook(rawURL string) (*Webhook, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("webhook: want an http:// or https:// URL")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = MaxInFlight
	// Never follow a redirect: it would re-POST the client's token to
	// wherever the answer points. A 3xx is an answer like any non-2xx.
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Webhook{url: u.String(), client: &http.Client{Transport: tr, CheckRedirect: noRedirect}, slots: make(chan struct{}, MaxInFlight),
		cache: map[[32]byte]cached{}}, nil
}

// Authenticate implements relay.Authenticator: the request runs on its
// own goroutine, done is called once.
func (w *Webhook) Authenticate(ctx context.Context, req relay.AuthRequest, done func(relay.AuthResult)) {
	key := sha256.Sum256([]byte(req.Token))
	if w.CacheTTL > 0 {
		w.mu.Lock()
		c, ok := w.cache[key]
		if ok && time.Now().After(c.until) {
			delete(w.cache, key)
			ok = false
		}
		w.mu.Unlock()
		if ok {
			setSubject(req, c.identity)
			done(relay.AuthNoError)
			return
		}
	}
	go func() {
		identity, r := w.ask(ctx, req)
		if r == relay.AuthNoError && w.CacheTTL > 0 {
			w.mu.Lock()
			if len(w.cache) > 100_000 { // bounded: drop all rather than grow
				clear(w.cache)
			}
			w.cache[key] = cached{identity, time.Now().Add(w.CacheTTL)}
			w.mu.Unlock()
		}
		if r == relay.AuthNoError {
			setSubject(req, identity)
		}
		done(r)
	}()
}

// Watch makes w report to d whether the service answered each request (d
// tracks its outages: relay.Server.AddDependency). Call it before the relay
// starts.
func (w *Webhook) Watch(d *relay.Dependency) { w.dep = d }

func (w *Webhook) report(err error) {
	err = w.scrub(err)
	if w.dep != nil {
		w.dep.Report(err)
	}
}

// Probe checks that the service answers: it POSTs a request with an
// empty token (which the service refuses) and takes any answer below 500
// as up. A TCP connection alone is not enough: a proxy in front of a
// failed service accepts it and answers 503 to every request.
func (w *Webhook) Probe(ctx context.Context) error {
	resp, err := w.post(ctx, []byte(`{"token":""}`))
	if err != nil {
		return w.scrub(err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxWebhookAnswer))
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("it answered %s", resp.Status)
	}
	return nil
}

// post sends body (JSON) to the service: a request and a probe alike.
func (w *Webhook) post(ctx context.Context, body []byte) (*http.Response, error) {
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("User-Agent", "meetpoint/"+relay.Version)
	return w.client.Do(hr)
}

// scrub rewrites net/http's error, which quotes the whole URL (its
// credentials and query too), with String's.
func (w *Webhook) scrub(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return &url.Error{Op: ue.Op, URL: w.String(), Err: ue.Err}
	}
	return err
}

// String is the service's URL without its credentials and query (for
// people, in logs).
func (w *Webhook) String() string {
	u, _ := url.Parse(w.url)
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String()
}

func setSubject(req relay.AuthRequest, s string) {
	if req.SetSubject != nil && s != "" {
		req.SetSubject(s)
	}
}

// ask makes one request.
func (w *Webhook) ask(ctx context.Context, req relay.AuthRequest) (string, relay.AuthResult) {
	select {
	case w.slots <- struct{}{}:
		defer func() { <-w.slots }()
	case <-ctx.Done():
		return "", relay.AuthTimeout
	}
	peer := ""
	if req.Peer != nil {
		peer = req.Peer.String()
	}
	body, _ := json.Marshal(map[string]string{"token": req.Token, "uuid": req.UUID, "name": req.Name, "nonce": req.Nonce, "peer": peer})
	resp, err := w.post(ctx, body)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return "", relay.AuthTimeout
		}
		w.report(err)
		return "", relay.AuthProxyError
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 {
		// The service failed (or the proxy in front of it cannot reach
		// it): no token was refused, so no client is charged a guess.
		w.report(fmt.Errorf("it answered %s", resp.Status))
		return "", relay.AuthProxyError
	}
	w.report(nil) // it answered, whatever it said
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxWebhookAnswer))
	if err != nil {
		if ctx.Err() != nil {
			return "", relay.AuthTimeout
		}
		return "", relay.AuthProxyError
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", relay.AuthFailed
	}
	var ans struct {
		Allow    bool   `json:"allow"`
		Identity string `json:"identity"`
	}
	if json.Unmarshal(data, &ans) != nil || !ans.Allow {
		return "", relay.AuthFailed
	}
	return ans.Identity, relay.AuthNoError
}
