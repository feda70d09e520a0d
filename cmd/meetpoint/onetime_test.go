package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// pairOnce pairs two clients on token at the relay ts serves and returns
// the partner identities the monitor shows.
func pairOnce(t *testing.T, ts *testServe, token string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b, err := client.DialPair(ctx, client.Options{URL: "tcp://" + ts.addr(), Token: token, Name: "a"},
		client.Options{URL: "ws://" + ts.addr() + "/", Token: token, Name: "b"})
	if err != nil {
		t.Fatalf("pairing on a fresh one-time token: %v", err)
	}
	defer a.Close()
	defer b.Close()
	var ids []string
	for _, tun := range ts.started.srv.Snapshot().Tunnels {
		ids = append(ids, tun.A.Identity, tun.B.Identity)
	}
	return ids
}

func refused(t *testing.T, ts *testServe, token string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, client.Options{URL: "tcp://" + ts.addr(), Token: token})
	var ae *client.AuthError
	if !errors.As(err, &ae) || ae.Result != "AuthenticationErrorAuthenticationFailed" {
		t.Fatalf("a used one-time token: %v, want AuthenticationFailed", err)
	}
}

// TestOneTimeTokensMintedOverHTTP: --auth onetime (no Redis) with
// --admin-key-file: a backend mints with POST /v1/tokens, both ends of one
// tunnel pair with it as that user, and it never works again.
func TestOneTimeTokensMintedOverHTTP(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "admin.key")
	if code := run([]string{"token", "--gen-key", keyFile}, nil, &bytes.Buffer{}, &bytes.Buffer{}); code != 0 {
		t.Fatal("gen-key")
	}
	key, _ := os.ReadFile(keyFile)
	ts := startServe(t, "--auth", "onetime", "--admin-key-file", keyFile)
	mint := func(auth, body string) (int, map[string]any) {
		req, _ := http.NewRequest("POST", "http://"+ts.addr()+"/v1/tokens", strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if code, _ := mint("", `{"user":"alice"}`); code != 401 {
		t.Fatalf("no key: %d", code)
	}
	wrong := []byte(strings.TrimSpace(string(key)))
	wrong[0] ^= 1 // another hex digit ("00"+key[2:] was the key itself 1 time in 256)
	if code, _ := mint(string(wrong), `{"user":"alice"}`); code != 401 {
		t.Fatalf("a wrong key: %d", code)
	}
	if code, _ := mint(strings.TrimSpace(string(key)), `{"ttl":"20s"}`); code != 400 {
		t.Fatalf("no user: %d", code)
	}
	code, m := mint(strings.TrimSpace(string(key)), `{"user":"alice","ttl":"20s"}`)
	tok, _ := m["token"].(string)
	if code != 201 || tok == "" || m["expires"] == nil {
		t.Fatalf("mint: %d %v", code, m)
	}
	if ids := pairOnce(t, ts, tok); len(ids) != 2 || ids[0] != "token:alice" || ids[1] != "token:alice" {
		t.Fatalf("identities %v", ids)
	}
	refused(t, ts, tok)
}

// TestOneTimeTokensInRedis: serve --auth redis://…, mint with `meetpoint
// token --redis … --user …` (or any backend's redis-cli SET).
func TestOneTimeTokensInRedis(t *testing.T) {
	url := "redis://" + relaytest.Redis(t) + "/0?prefix=tok:"
	var tok string
	for i := 0; ; i++ {
		var out, errb bytes.Buffer
		if run([]string{"token", "--redis", url, "--user", "frank", "--ttl", "20s"}, nil, &out, &errb) == 0 {
			tok = strings.TrimSpace(out.String())
			break
		}
		if i > 100 {
			t.Fatalf("token --redis: %s", errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	ts := startServe(t, "--auth", url)
	if ids := pairOnce(t, ts, tok); len(ids) != 2 || ids[0] != "token:frank" {
		t.Fatalf("identities %v", ids)
	}
	refused(t, ts, tok)
}

// TestConnectEventDemo is docs/events.md's use case end to end, on one
// relay with no Redis: a device holds an idle subscription to its
// channel; the backend mints a one-time token and publishes "connect with
// it"; the device opens the tunnel with it and the user's client pairs.
func TestConnectEventDemo(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "admin.key")
	run([]string{"token", "--gen-key", keyFile}, nil, &bytes.Buffer{}, &bytes.Buffer{})
	keyb, _ := os.ReadFile(keyFile)
	key := strings.TrimSpace(string(keyb))
	ts := startServe(t, "--auth", "onetime", "--events", "--admin-key-file", keyFile)
	api := func(path, body string) map[string]any {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+ts.addr()+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode/100 != 2 {
			t.Fatalf("POST %s: %v %v", path, resp, err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return m
	}
	// subscribe subscribes a new connection to device-7 with token and
	// returns its reader and the reply line.
	subscribe := func(token string) (*bufio.Reader, string) {
		t.Helper()
		c, err := net.Dial("tcp", ts.addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.Write([]byte(`{"id":1,"method":"Events.Subscribe","params":{"token":"` + token + `","channels":["device-7"]}}` + "\n"))
		br := bufio.NewReader(c)
		_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
		line, _ := br.ReadString('\n')
		return br, line
	}
	// The device subscribes (with a one-time token of its own).
	sub := api("/v1/tokens", `{"user":"device-7"}`)["token"].(string)
	br, line := subscribe(sub)
	if !strings.Contains(line, "AuthenticationErrorNoError") {
		t.Fatalf("subscribe: %q", line)
	}
	// The device's token is spent whole by its subscription: a second
	// subscription (the partner slot a tunnel would have) is refused.
	if _, line := subscribe(sub); !strings.Contains(line, "AuthenticationErrorAuthenticationFailed") {
		t.Fatalf("the device's token used for a second subscription: %q, want AuthenticationFailed", line)
	}
	// A stranger with a good token of its own may not listen on the
	// device's channel (it would take the connect token and pair first).
	stranger := api("/v1/tokens", `{"user":"mallory"}`)["token"].(string)
	if _, line := subscribe(stranger); !strings.Contains(line, "AuthenticationErrorAuthenticationFailed") {
		t.Fatalf("a stranger subscribing to device-7: %q, want AuthenticationFailed", line)
	}
	// The backend: a token for the tunnel, and the event.
	tok := api("/v1/tokens", `{"user":"alice"}`)["token"].(string)
	api("/v1/events/device-7", `{"connect":{"token":"`+tok+`","nonce":"session-1"}}`)
	line, err := br.ReadString('\n')
	var ev struct {
		Notification string
		Params       struct {
			Channel string
			Data    struct{ Connect struct{ Token, Nonce string } }
		}
	}
	if err != nil || json.Unmarshal([]byte(line), &ev) != nil || ev.Notification != "Events.Event" || ev.Params.Data.Connect.Token != tok {
		t.Fatalf("the device got %q %v", line, err)
	}
	// The device and the user's client meet on it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := ev.Params.Data.Connect
	a, b, err := client.DialPair(ctx, client.Options{URL: "tcp://" + ts.addr(), Token: c.Token, Nonce: c.Nonce, Name: "device-7"},
		client.Options{URL: "ws://" + ts.addr() + "/", Token: c.Token, Nonce: c.Nonce, Name: "alice's browser"})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
}
