package web_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	meetpointjs "github.com/meetpoint/meetpoint/client/js"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/ops"
	"github.com/meetpoint/meetpoint/relay/relaytest"
	"github.com/meetpoint/meetpoint/relay/web"
)

// relayWithPage starts a relay serving the page (and ops' endpoints), over
// TLS when withTLS; it returns the server and the page's base URL.
func relayWithPage(t *testing.T, withTLS bool) (*relay.Server, string) {
	t.Helper()
	var store interface{ TLSConfig() *tls.Config }
	if withTLS {
		st, _ := relaytest.TLS(t)
		store = st
	}
	s := relaytest.New(t, func(c *relay.Config) {
		c.Auth = relaytest.RefuseBad{}
		c.AloneTimeout = 20 * time.Second
		if store != nil {
			c.TLS = store.TLSConfig()
		}
	})
	ops.Register(s)
	web.Register(s)
	relaytest.Start(t, s)
	scheme := "http://"
	if withTLS {
		scheme = "https://"
	}
	return s, scheme + relaytest.Addr(s)
}

func TestStatusAndFiles(t *testing.T) {
	s, base := relayWithPage(t, false)
	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, b := get("/")
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") ||
		!bytes.Contains(b, []byte(`id="try"`)) || !bytes.Contains(b, []byte(`<h1 id="name">`+s.Name())) {
		t.Fatalf("/: %d %s\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	resp, b = get("/meetpoint.js")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") || !bytes.Equal(b, meetpointjs.Module) {
		t.Fatalf("/meetpoint.js: %d %s, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), len(b))
	}
	if resp, b = get("/meetpoint.d.ts"); resp.StatusCode != 200 || !bytes.Equal(b, meetpointjs.Types) {
		t.Fatalf("/meetpoint.d.ts: %d", resp.StatusCode)
	}
	for _, p := range []string{"/page/app.js", "/page/style.css"} {
		if resp, b = get(p); resp.StatusCode != 200 || len(b) == 0 {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		}
	}
	a, bb := relaytest.Pair(t, relaytest.TCPURL(s), relaytest.WSURL(s), "status-json", "")
	defer a.Close()
	defer bb.Close()
	resp, b = get("/status.json")
	var st web.Status
	if err := json.Unmarshal(b, &st); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/status.json: %d %v %s", resp.StatusCode, err, b)
	}
	if st.State != "ready" || st.Tunnels != 1 || st.Connections != 2 || st.AloneTimeout != 20 || st.Name != s.Name() {
		t.Fatalf("/status.json: %+v", st)
	}
	if resp, _ = get("/nothing-here"); resp.StatusCode != 404 {
		t.Fatalf("/nothing-here: %d", resp.StatusCode)
	}
}

// browser starts a headless Chromium for the test.
func browser(t *testing.T) context.Context { return relaytest.Browser(t) }

// tab opens a new tab in browser b.
func tab(t *testing.T, b context.Context) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("opening a tab: %v", err)
	}
	return ctx
}

// stepTimeout bounds each group of browser steps.
const stepTimeout = 30 * time.Second

// run runs steps in tab ctx, failing the test with what on error.
func run(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// value runs one action that returns a value.
func value[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// awaitJS evaluates an async expression and returns its result.
func awaitJS[T any](expr string) chromedp.Action[T] {
	return chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise)
}

// poll waits until expr is truthy in the page.
func poll(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(10*time.Second))
}

// TestPageTwoTabs: the "try it" panel, as a person uses it, over HTTP and
// HTTPS: two tabs pair on a token, one sends a message, the other a
// dropped file (several chunks of binary), the status shows the tunnel,
// one leaves and the other sees why — with a clean WebSocket close.
func TestPageTwoTabs(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		name := map[bool]string{false: "http", true: "https"}[withTLS]
		t.Run(name, func(t *testing.T) {
			_, base := relayWithPage(t, withTLS)
			b := browser(t)
			token := "page-test-" + name
			a, c := tab(t, b), tab(t, b)
			run(t, a, "tab A pairs",
				chromedp.Navigate(base+"/#token="+token),
				chromedp.WaitVisible(chromedp.ID("pair")),
				chromedp.Click(chromedp.ID("pair")),
				chromedp.WaitVisible(`//p[@id="state" and contains(., "waiting for a partner")]`),
			)
			run(t, c, "tab B pairs",
				chromedp.Navigate(base+"/#token="+token),
				chromedp.WaitVisible(chromedp.ID("pair")),
				chromedp.Click(chromedp.ID("pair")),
				chromedp.WaitVisible(`//p[@id="state" and contains(., "paired with")]`),
			)
			run(t, a, "tab A sees the pairing", chromedp.WaitVisible(`//p[@id="state" and contains(., "paired with")]`))

			run(t, a, "tab A sends a message",
				chromedp.SendKeys(chromedp.ID("message"), "hello from A ✓"),
				chromedp.Click(chromedp.ID("send")),
			)
			run(t, c, "tab B receives it", chromedp.WaitVisible(`//ol[@id="log"]/li[contains(., "them: hello from A ✓")]`))

			file := make([]byte, 300<<10+17) // five chunks and a bit
			_, _ = rand.Read(file)
			path := filepath.Join(t.TempDir(), "dropped.bin")
			if err := os.WriteFile(path, file, 0o644); err != nil {
				t.Fatal(err)
			}
			run(t, c, "tab B sends a file", chromedp.SetUploadFiles(chromedp.ID("file"), []string{path}))
			run(t, a, "tab A receives the file", chromedp.WaitVisible(chromedp.CSS("a.received-file")))
			got := value(t, a, "tab A reads the file", awaitJS[string](`(async () => {
					const a = document.querySelector("a.received-file");
					const b = new Uint8Array(await (await fetch(a.href)).arrayBuffer());
					let s = ""; for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
					return btoa(s);
				})()`))
			if dec, _ := base64.StdEncoding.DecodeString(got); !bytes.Equal(dec, file) {
				t.Fatalf("the file arrived as %d bytes, not the %d sent (or differs)", len(dec), len(file))
			}
			run(t, c, "tab B shows it sent", chromedp.WaitVisible(chromedp.CSS("li.sent-file")))

			// The status refreshes itself (every 2 s) and shows the tunnel.
			run(t, a, "the status shows the tunnel", chromedp.WaitVisible(`//td[@id="tunnels" and text()="1"]`))
			checkScreenshot(t, a, name)

			run(t, c, "tab B leaves", chromedp.Click(chromedp.ID("leave")))
			run(t, a, "tab A sees the partner leave", chromedp.WaitVisible(`//p[@id="state" and @data-code="partner_left"]`))
			clean := value(t, a, "tab A's close", chromedp.AttributeValue(chromedp.ID("state"), "data-clean")).Value
			if clean != "true" {
				t.Errorf("tab A: the relay's close was not clean (wasClean=%s): the close handshake must complete", clean)
			}
			run(t, c, "tab B sees itself leave", chromedp.WaitVisible(`//p[@id="state" and @data-code]`))
			code := value(t, c, "tab B's close", chromedp.AttributeValue(chromedp.ID("state"), "data-code")).Value
			if code != "closed" {
				t.Errorf("tab B: state code %q, want closed", code)
			}
		})
	}
}

// checkScreenshot photographs the page and each element a visitor must
// see: each must be rendered (a non-empty area with more than one colour).
// With MEETPOINT_SCREENSHOTS=DIR the full page is kept there as NAME.png.
func checkScreenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	full := value(t, ctx, "screenshot", chromedp.FullScreenshot(100))
	if dir := os.Getenv("MEETPOINT_SCREENSHOTS"); dir != "" {
		_ = os.MkdirAll(dir, 0o755)
		_ = os.WriteFile(filepath.Join(dir, "page-"+name+".png"), full, 0o644)
	}
	if w, h := rendered(t, full, "the page"); w < 600 || h < 600 {
		t.Fatalf("the page screenshot is %dx%d", w, h)
	}
	for _, sel := range []string{"#name", "#about", "#status", "#try", "#token", "#pair", "#state", "#message", "#drop", "#log", "#use"} {
		rendered(t, value(t, ctx, "screenshot of "+sel, chromedp.Screenshot(chromedp.CSS(sel))), sel)
	}
}

// rendered decodes a PNG screenshot and fails unless it shows something.
func rendered(t *testing.T, b []byte, what string) (int, int) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: screenshot is not a PNG: %v", what, err)
	}
	r := img.Bounds()
	if r.Dx() < 4 || r.Dy() < 4 {
		t.Fatalf("%s: rendered %dx%d", what, r.Dx(), r.Dy())
	}
	if colours(img) < 2 {
		t.Fatalf("%s: rendered as one flat colour", what)
	}
	return r.Dx(), r.Dy()
}

func colours(img image.Image) int {
	seen := map[[4]uint32]bool{}
	r := img.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y += 2 {
		for x := r.Min.X; x < r.Max.X; x += 2 {
			cr, cg, cb, ca := img.At(x, y).RGBA()
			seen[[4]uint32{cr, cg, cb, ca}] = true
			if len(seen) > 1 {
				return len(seen)
			}
		}
	}
	return len(seen)
}

// TestJSClientInChromium: meetpoint.js as served by the relay, in two real
// browser tabs: they pair, exchange text and binary both ways, one closes
// and the other sees the reason, cleanly.
func TestJSClientInChromium(t *testing.T) {
	_, base := relayWithPage(t, false)
	b := browser(t)
	a, c := tab(t, b), tab(t, b)
	for _, x := range []context.Context{a, c} {
		run(t, x, "open the page", chromedp.Navigate(base+"/"), chromedp.WaitReady(chromedp.CSS("body")))
	}
	pairJS := func(name string) string {
		return fmt.Sprintf(`(async () => {
			const m = await import("/meetpoint.js");
			window.got = [];
			window.t = await m.pair({ url: "ws://" + location.host + "/", token: "chromium-js", name: %q });
			window.t.onmessage = (ev) => window.got.push(typeof ev.data === "string" ? "text:" + ev.data : "binary:" + Array.from(new Uint8Array(ev.data)).join(","));
			window.t.addEventListener("close", (ev) => { window.end = { code: ev.detail.error.code, wasClean: ev.detail.wasClean, closeCode: ev.detail.code, buffered: window.t.bufferedAmount }; });
			return window.t.peer.name;
		})()`, name)
	}
	type res struct {
		peer string
		err  error
	}
	resA := make(chan res, 1)
	go func() {
		ctx, cancel := context.WithTimeout(a, stepTimeout)
		defer cancel()
		p, err := chromedp.Run(ctx, awaitJS[string](pairJS("tab-a")))
		resA <- res{p, err}
	}()
	peerOfC := value(t, c, "tab C pairs", awaitJS[string](pairJS("tab-c")))
	ra := <-resA
	if ra.err != nil {
		t.Fatalf("tab A pairs: %v", ra.err)
	}
	peerOfA := ra.peer
	if peerOfA != "tab-c" || peerOfC != "tab-a" {
		t.Fatalf("peers: A sees %q, C sees %q", peerOfA, peerOfC)
	}
	value(t, a, "A sends", chromedp.Evaluate[bool](`window.t.send("from A"); window.t.send(new Uint8Array([0, 255, 128])); true`))
	value(t, c, "C sends", chromedp.Evaluate[bool](`window.t.send("from C"); window.t.send(new Uint8Array([1, 2, 3]).buffer); true`))
	wait := func(ctx context.Context, want []string) {
		t.Helper()
		run(t, ctx, "receive", poll(`window.got.length >= 2`))
		got := value(t, ctx, "read what arrived", chromedp.Evaluate[[]string](`window.got`))
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("received %q, want %q", got, want)
		}
	}
	wait(a, []string{"text:from C", "binary:1,2,3"})
	wait(c, []string{"text:from A", "binary:0,255,128"})

	type endInfo struct {
		Code      string `json:"code"`
		WasClean  bool   `json:"wasClean"`
		CloseCode int    `json:"closeCode"`
		Buffered  int    `json:"buffered"` // C's unsent bytes at the close: Chromium calls such a close unclean itself
	}
	// C keeps sending while A leaves (a message each millisecond while
	// its send queue is empty: Chromium calls any close with unsent data
	// unclean, whatever the server does): what C sent after the end is
	// unread by the relay, and closing a socket with unread input sends a
	// reset that makes the browser call the close unclean — unless the
	// relay completes the closing handshake, reading until C's close.
	value(t, c, "C sends and sends", chromedp.Evaluate[bool](`window.flood = setInterval(() => { try { if (window.t.bufferedAmount === 0) window.t.send("x".repeat(4096)); } catch (_) {} }, 1); true`))
	time.Sleep(50 * time.Millisecond)
	value(t, a, "A closes", chromedp.Evaluate[bool](`window.t.close(); true`))
	run(t, c, "C sees why", poll(`window.end`))
	end := value(t, c, "C's end", chromedp.Evaluate[endInfo](`window.end`))
	t.Logf("C ended: %+v", end)
	if end.Code != "partner_left" || end.CloseCode != 1000 || (!end.WasClean && end.Buffered == 0) {
		t.Fatalf("C's end: %+v, want partner_left, clean, 1000", end)
	}
}

// TestModuleFromAnotherOrigin: a page served elsewhere imports the client
// from the relay (module scripts need CORS) and pairs through it.
func TestModuleFromAnotherOrigin(t *testing.T) {
	_, base := relayWithPage(t, false)
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><script type="module">
			import { pair, VERSION } from %q;
			const url = %q;
			const [a, b] = await Promise.all([pair({ url, token: "cross-origin" }), pair({ url, token: "cross-origin" })]);
			b.onmessage = (ev) => { document.title = VERSION + " " + ev.data; };
			a.send("over the relay");
		</script>`, base+"/meetpoint.js", "ws"+strings.TrimPrefix(base, "http")+"/")
	}))
	defer page.Close()
	b := browser(t)
	x := tab(t, b)
	run(t, x, "the other origin's page pairs", chromedp.Navigate(page.URL), poll(`document.title.endsWith("over the relay")`))
	want := value(t, x, "title", chromedp.Evaluate[string](`document.title`))
	if !strings.HasPrefix(want, string(versionOf(t))+" ") {
		t.Fatalf("title %q", want)
	}
}

func versionOf(t *testing.T) string {
	var pkg struct{ Version string }
	if err := json.Unmarshal(meetpointjs.PackageJSON, &pkg); err != nil {
		t.Fatal(err)
	}
	return pkg.Version
}

// TestURLTokenInChromium: a browser tab authenticates with the token in
// the WebSocket URL (a browser cannot set headers) and pairs with another
// tab speaking JSON-RPC; a refused token never opens a WebSocket.
func TestURLTokenInChromium(t *testing.T) {
	_, base := relayWithPage(t, false)
	b := browser(t)
	a, c := tab(t, b), tab(t, b)
	for _, x := range []context.Context{a, c} {
		run(t, x, "open the page", chromedp.Navigate(base+"/"), chromedp.WaitReady(chromedp.CSS("body")))
	}
	js := func(urlToken bool, name string) string {
		return fmt.Sprintf(`(async () => {
			const m = await import("/meetpoint.js");
			window.t = await m.pair({ url: "ws://" + location.host + "/", token: "chromium-url", name: %q, urlToken: %v });
			return window.t.peer.name;
		})()`, name, urlToken)
	}
	type res struct {
		peer string
		err  error
	}
	ra := make(chan res, 1)
	go func() {
		ctx, cancel := context.WithTimeout(a, stepTimeout)
		defer cancel()
		p, err := chromedp.Run(ctx, awaitJS[string](js(true, "in-url")))
		ra <- res{p, err}
	}()
	if peer := value(t, c, "the JSON-RPC tab pairs", awaitJS[string](js(false, "rpc"))); peer != "in-url" {
		t.Fatalf("the JSON-RPC tab paired with %q", peer)
	}
	if r := <-ra; r.err != nil || r.peer != "rpc" {
		t.Fatalf("the URL-token tab: %q %v", r.peer, r.err)
	}
	code := value(t, a, "a refused URL token", awaitJS[string](`(async () => {
		const m = await import("/meetpoint.js");
		try { await m.pair({ url: "ws://" + location.host + "/", token: "bad-token", urlToken: true }); return "paired?!"; }
		catch (e) { return e.code; }
	})()`))
	if code != "network" {
		t.Fatalf("a refused URL token in the browser: %q", code)
	}
}

// TestPageReceivedFileIsNotActive: a file the partner sends is offered for
// download as bytes, never as the type the partner claims. The partner
// (anyone with the token) chooses the type: were the received blob
// text/html, opening its link in a new tab (middle click) would run the
// partner's script in the relay's origin, next to whatever else the relay
// serves there (--route).
func TestPageReceivedFileIsNotActive(t *testing.T) {
	_, base := relayWithPage(t, false)
	b := browser(t)
	victim, partner := tab(t, b), tab(t, b)
	const token = "page-file-type"
	run(t, victim, "the victim pairs",
		chromedp.Navigate(base+"/#token="+token),
		chromedp.WaitVisible(chromedp.ID("pair")),
		chromedp.Click(chromedp.ID("pair")),
		chromedp.WaitVisible(`//p[@id="state" and contains(., "waiting for a partner")]`),
	)
	run(t, partner, "open the page", chromedp.Navigate(base+"/"), chromedp.WaitReady(chromedp.CSS("body")))
	const payload = `<script>document.title = "ran in " + location.origin</script>`
	value(t, partner, "the partner sends an HTML file", awaitJS[bool](fmt.Sprintf(`(async () => {
		const m = await import("/meetpoint.js");
		const t = await m.pair({ url: "ws://" + location.host + "/", token: %q, name: "partner" });
		const body = new TextEncoder().encode(%q);
		t.send(JSON.stringify({ t: "file", name: "report.html", size: body.length, type: "text/html" }));
		t.send(body);
		return true;
	})()`, token, payload)))
	run(t, victim, "the victim receives the file", chromedp.WaitVisible(chromedp.CSS("a.received-file")))
	type got struct {
		Href     string `json:"href"`
		Download string `json:"download"`
		Type     string `json:"type"`
	}
	g := value(t, victim, "the received file's link", awaitJS[got](`(async () => {
		const a = document.querySelector("a.received-file");
		const r = await fetch(a.href);
		return { href: a.href, download: a.download, type: r.headers.get("content-type") || "" };
	})()`))
	if g.Download != "report.html" {
		t.Errorf("the download is named %q, want the sender's name report.html", g.Download)
	}
	if g.Type != "application/octet-stream" {
		// Show what that means: the link opened in a tab of its own.
		opened := tab(t, b)
		ctx, cancel := context.WithTimeout(opened, stepTimeout)
		defer cancel()
		title := "(not opened)"
		if err := chromedp.Do(ctx, chromedp.Navigate(g.Href)); err == nil {
			title, _ = chromedp.Run(ctx, chromedp.Evaluate[string](`document.title`))
		}
		t.Fatalf("the received file is served as %q, not application/octet-stream: opened in a tab, its title is %q", g.Type, title)
	}
}

// TestPageSecurityHeaders: the page may not be framed by another site (it
// has a token field and a Pair button to click through a frame) and runs
// only the relay's own scripts, so that markup that reaches it (or a blob
// it creates) cannot run script in the relay's origin.
func TestPageSecurityHeaders(t *testing.T) {
	_, base := relayWithPage(t, false)
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		req, _ := http.NewRequest(method, base+"/", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		csp := resp.Header.Get("Content-Security-Policy")
		directives := map[string]string{}
		for _, d := range strings.Split(csp, ";") {
			if f := strings.Fields(d); len(f) > 0 {
				directives[f[0]] = strings.Join(f[1:], " ")
			}
		}
		for name, want := range map[string]string{
			"frame-ancestors": "'none'", "script-src": "'self'", "object-src": "'none'", "base-uri": "'none'",
		} {
			if got, ok := directives[name]; !ok || got != want {
				t.Errorf("%s /: Content-Security-Policy %s is %q, want %q (policy %q)", method, name, got, want, csp)
			}
		}
		if got := resp.Header.Get("X-Frame-Options"); got != "DENY" {
			t.Errorf("%s /: X-Frame-Options %q, want DENY", method, got)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s /: X-Content-Type-Options %q, want nosniff", method, got)
		}
	}
}

// TestPageShowsPartnerTextAsSent: a text message from a partner that is
// not the page (the JavaScript client, any WebSocket client) is shown as
// sent, even when it happens to parse as JSON: "42", "null", an object
// without the page's own fields.
func TestPageShowsPartnerTextAsSent(t *testing.T) {
	_, base := relayWithPage(t, false)
	b := browser(t)
	page, partner := tab(t, b), tab(t, b)
	const token = "page-partner-text"
	run(t, page, "the page pairs",
		chromedp.Navigate(base+"/#token="+token),
		chromedp.WaitVisible(chromedp.ID("pair")),
		chromedp.Click(chromedp.ID("pair")),
		chromedp.WaitVisible(`//p[@id="state" and contains(., "waiting for a partner")]`),
	)
	run(t, partner, "open the page", chromedp.Navigate(base+"/"), chromedp.WaitReady(chromedp.CSS("body")))
	texts := []string{"42", "null", `{"x":1}`, `"quoted"`, "plain", "last"}
	js, _ := json.Marshal(texts)
	value(t, partner, "the partner sends texts", awaitJS[bool](fmt.Sprintf(`(async () => {
		const m = await import("/meetpoint.js");
		const t = await m.pair({ url: "ws://" + location.host + "/", token: %q, name: "partner" });
		for (const s of %s) t.send(s);
		return true;
	})()`, token, js)))
	run(t, page, "the page receives the last one", chromedp.WaitVisible(`//ol[@id="log"]/li[. = "them: last"]`))
	got := value(t, page, "the page's log", chromedp.Evaluate[[]string](`[...document.querySelectorAll("#log li")].map((li) => li.textContent)`))
	var want []string
	for _, s := range texts {
		want = append(want, "them: "+s)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the page shows\n%q\nwant\n%q", got, want)
	}
}
