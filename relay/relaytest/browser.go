package relaytest

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/chromedp/chromedp"
)

// Chromium finds a Chromium or Chrome binary (MEETPOINT_CHROMIUM first);
// tests skip without one, and under -short, unless
// MEETPOINT_REQUIRE_BROWSER is set (CI sets it).
func Chromium(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: browser tests skipped")
	}
	if p := os.Getenv("MEETPOINT_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("MEETPOINT_REQUIRE_BROWSER") != "" {
		t.Fatal("no chromium found and MEETPOINT_REQUIRE_BROWSER is set (apt-get install chromium)")
	}
	t.Skip("no chromium found: apt-get install chromium to run the browser tests")
	return ""
}

// Browser starts a headless Chromium for the test (it ends with the
// test); tabs are new contexts derived from the returned one. extra adds
// command-line flags.
func Browser(t testing.TB, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(Chromium(t)),
		chromedp.NoSandbox,                               // CI runs as root
		chromedp.Flag("ignore-certificate-errors", true), // tests' self-signed certificates
		chromedp.WindowSize(1000, 1400),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), append(opts, extra...)...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	if err := chromedp.Do(ctx); err != nil { // starts the browser (no timeout here: it would stop the browser)
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}
