package auth

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay"
)

// webhookServer answers like an auth service: tokens "good-*" allowed
// with identity "user-of-<token>", "slow" after 2 s, "fail" with 500,
// "junk" with a malformed body, anything else allow=false. It records the
// most requests it saw at once and what it was sent.
type webhookServer struct {
	*httptest.Server
	inFlight, most atomic.Int32
	hits           atomic.Int32
	mu             sync.Mutex
	last           map[string]string
	lastURL        string
}

func newWebhookServer(t *testing.T) *webhookServer {
	ws := &webhookServer{}
	ws.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := ws.inFlight.Add(1)
		defer ws.inFlight.Add(-1)
		for m := ws.most.Load(); n > m && !ws.most.CompareAndSwap(m, n); m = ws.most.Load() {
		}
		ws.hits.Add(1)
		var body map[string]string
		_ = json.NewDecoder(r.Body).Decode(&body)
		ws.mu.Lock()
		ws.last, ws.lastURL = body, r.URL.String()
		ws.mu.Unlock()
		tok := body["token"]
		switch {
		case r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json":
			w.WriteHeader(400)
		case strings.HasPrefix(tok, "good-"):
			json.NewEncoder(w).Encode(map[string]any{"allow": true, "identity": "user-of-" + tok})
		case tok == "slow":
			time.Sleep(2 * time.Second)
			json.NewEncoder(w).Encode(map[string]any{"allow": true})
		case tok == "hold":
			time.Sleep(100 * time.Millisecond)
			json.NewEncoder(w).Encode(map[string]any{"allow": true})
		case tok == "fail":
			w.WriteHeader(500)
			json.NewEncoder(w).Encode(map[string]any{"allow": true}) // a 500 never allows, whatever it says
		case tok == "gone":
			w.WriteHeader(http.StatusServiceUnavailable) // its proxy cannot reach it
		case tok == "refuse":
			w.WriteHeader(http.StatusForbidden)
		case tok == "junk":
			w.Write([]byte("{allow: yes"))
		default:
			json.NewEncoder(w).Encode(map[string]any{"allow": false})
		}
	}))
	t.Cleanup(ws.Close)
	return ws
}

// ask runs one Authenticate and returns its result and subject.
func ask(t *testing.T, w *Webhook, token string, timeout time.Duration) (relay.AuthResult, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var subject atomic.Pointer[string]
	res := make(chan relay.AuthResult, 1)
	w.Authenticate(ctx, relay.AuthRequest{Token: token, UUID: "u", Name: "n", Nonce: "room",
		Peer: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 4242}, SetSubject: func(s string) { subject.Store(&s) }},
		func(r relay.AuthResult) { res <- r })
	select {
	case r := <-res:
		s := ""
		if p := subject.Load(); p != nil {
			s = *p
		}
		return r, s
	case <-time.After(timeout + 2*time.Second):
		t.Fatal("done never called")
		return 0, ""
	}
}

func TestWebhook(t *testing.T) {
	srv := newWebhookServer(t)
	w, err := NewWebhook(srv.URL + "/check")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		token   string
		want    relay.AuthResult
		subject string
	}{
		{"good-1", relay.AuthNoError, "user-of-good-1"},
		{"nope", relay.AuthFailed, ""},
		{"refuse", relay.AuthFailed, ""},
		{"junk", relay.AuthFailed, ""},
		// 5xx: the service failed, no token was refused (no ban).
		{"fail", relay.AuthProxyError, ""},
		{"gone", relay.AuthProxyError, ""},
	} {
		if r, s := ask(t, w, c.token, 5*time.Second); r != c.want || s != c.subject {
			t.Errorf("%s: %v %q, want %v %q", c.token, r, s, c.want, c.subject)
		}
	}
	srv.mu.Lock()
	if srv.last["uuid"] != "u" || srv.last["name"] != "n" || srv.last["nonce"] != "room" || srv.last["peer"] != "192.0.2.1:4242" {
		t.Errorf("the service was sent %v", srv.last)
	}
	if strings.Contains(srv.lastURL, "junk") || srv.lastURL != "/check" {
		t.Errorf("the token went into the URL: %s", srv.lastURL)
	}
	srv.mu.Unlock()
	if r, _ := ask(t, w, "slow", 300*time.Millisecond); r != relay.AuthTimeout {
		t.Errorf("a slow service: %v, want AuthenticationErrorTimeout", r)
	}
	// The service down: a transport error.
	down, _ := NewWebhook("http://127.0.0.1:1/check")
	if r, _ := ask(t, down, "good-1", 5*time.Second); r != relay.AuthProxyError {
		t.Errorf("service down: %v, want AuthenticationErrorProxyError", r)
	}
}

// TestWebhookBoundedAndCached: at most MaxInFlight requests at once (here
// 3), the rest wait; with CacheTTL a positive answer is reused, a
// negative one never.
func TestWebhookBoundedAndCached(t *testing.T) {
	srv := newWebhookServer(t)
	w, _ := NewWebhook(srv.URL)
	w.slots = make(chan struct{}, 3)
	var wg sync.WaitGroup
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, _ := ask(t, w, "hold", 5*time.Second); r != relay.AuthNoError {
				t.Errorf("hold: %v", r)
			}
		}()
	}
	wg.Wait()
	if m := srv.most.Load(); m > 3 || m < 2 {
		t.Errorf("%d requests at once, bound 3", m)
	}
	w.CacheTTL = time.Minute
	before := srv.hits.Load()
	for range 3 {
		if r, s := ask(t, w, "good-cached", 5*time.Second); r != relay.AuthNoError || s != "user-of-good-cached" {
			t.Fatalf("cached: %v %q", r, s)
		}
		ask(t, w, "nope", 5*time.Second)
	}
	if n := srv.hits.Load() - before; n != 4 { // one good, three nope
		t.Errorf("%d requests for 3 good (cached) and 3 bad answers, want 4", n)
	}
	if _, err := NewWebhook("ftp://x"); err == nil {
		t.Error("ftp:// accepted")
	}
}

// TestWebhookNoRedirect: a service answering with a redirect (307/308
// keep the method and body) refuses the token; the relay never sends the
// token to where the redirect points.
func TestWebhookNoRedirect(t *testing.T) {
	var leaked atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		leaked.Add(1)
		rw.Write([]byte(`{"allow":true,"identity":"thief"}`))
	}))
	defer elsewhere.Close()
	for _, code := range []int{301, 302, 303, 307, 308} {
		redirector := httptest.NewServer(http.RedirectHandler(elsewhere.URL+"/steal", code))
		w, err := NewWebhook(redirector.URL + "/check")
		if err != nil {
			t.Fatal(err)
		}
		if r, _ := ask(t, w, "good-1", 5*time.Second); r != relay.AuthFailed {
			t.Errorf("a %d answer: %v, want AuthenticationFailed", code, r)
		}
		redirector.Close()
	}
	if n := leaked.Load(); n != 0 {
		t.Fatalf("the token was sent %d times to where a redirect pointed", n)
	}
}

// TestWebhookProbeAsksTheService: the probe that decides whether the
// webhook is up makes a request (an empty token): a service that answers
// (here refusing) is up; one whose proxy answers 503 to everything is
// down, though it accepts connections; nothing listening is down.
func TestWebhookProbeAsksTheService(t *testing.T) {
	ctx := context.Background()
	up, _ := NewWebhook(newWebhookServer(t).URL + "/check")
	if err := up.Probe(ctx); err != nil {
		t.Errorf("a service that answers: %v, want up", err)
	}
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream unavailable", http.StatusServiceUnavailable)
	}))
	defer failing.Close()
	proxied, _ := NewWebhook(failing.URL)
	if err := proxied.Probe(ctx); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("a service answering 503: %v, want down", err)
	}
	gone, _ := NewWebhook("http://u:PASSW0RD@127.0.0.1:1/check")
	if err := gone.Probe(ctx); err == nil || strings.Contains(err.Error(), "PASSW0RD") {
		t.Errorf("nothing listening: %v, want down, without the URL's password", err)
	}
}
