package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestBabbleFlowChromium is TestBabbleFlowWebRTC in real Chromium with
// autobahn-js (vendored in third_party/autobahn-browser), the reference
// WAMP client: the page finds a group, signals through meetpoint's router
// in a registered application's realm (WAMP ticket authentication with
// the app key), and connects two RTCPeerConnections with
// iceTransportPolicy "relay" through meetpoint's TURN.
func TestBabbleFlowChromium(t *testing.T) {
	b := relaytest.Browser(t, chromedp.Flag("allow-loopback-in-peer-connection", true))
	const key = "chat-app-key-0123456789"
	apps := filepath.Join(t.TempDir(), "apps")
	if err := os.WriteFile(apps, []byte("chat "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServe(t, "--turn", "--turn-ports", "41600-41700", "--apps", apps, "--drain-timeout", "100ms")
	srv := ts.started.srv
	srv.Handle("GET /test/babble.html", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, "testdata/babble.html")
	}))
	srv.Handle("GET /test/autobahn.min.js", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, "../../third_party/autobahn-browser/autobahn.min.js")
	}))

	ctx, cancel := chromedp.NewContext(b)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+ts.addr()+"/test/babble.html")); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithTimeout(ctx, 60*time.Second)
	defer stop()
	v, err := chromedp.Run(runCtx, chromedp.Evaluate[map[string]string](`babble(`+strconv.Quote(key)+`, "chat")`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("the page's Babble flow: %v", err)
	}
	res := struct{ Label, Sent, Got, OfferFrom, Offerer, Answerer, Unknown string }{
		v["label"], v["sent"], v["got"], v["offerFrom"], v["offerer"], v["answerer"], v["unknown"]}
	if res.Label != "data" || res.Sent != res.Got || res.Sent == "" {
		t.Fatalf("data channel %q: sent %s, received %s", res.Label, res.Sent, res.Got)
	}
	if res.OfferFrom != "0X04B0B" {
		t.Fatalf("the offer's caller key %q", res.OfferFrom)
	}
	if res.Offerer != "relay" || res.Answerer != "relay" {
		t.Fatalf("selected candidates %q / %q, want relay / relay", res.Offerer, res.Answerer)
	}
	if res.Unknown != "wamp.error.no_such_procedure" {
		t.Fatalf("a call to an unknown key failed with %q", res.Unknown)
	}
	if n := relaytest.Metric(t, srv, `meetpoint_signal_calls_total{result="ok"}`); n != 1 {
		t.Fatalf("router counted %v answered calls, want 1", n)
	}
}
