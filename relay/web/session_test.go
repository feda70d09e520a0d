package web_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestPageNewSessionStartsClean: a partner that leaves in the middle of a
// file left the page's file being received in place, so the next
// session's binary messages were appended to it: a stale file from the
// last partner, completed with bytes of the new one, was offered for
// download. A file interrupted by the tunnel's end is now dropped (and
// said so), and the next session's binary is shown as such. The files of
// a session, whose links go when the next session clears the log, are
// freed with them (their blob URLs revoked): they stayed in memory for
// as long as the page was open.
func TestPageNewSessionStartsClean(t *testing.T) {
	s, base := relayWithPage(t, false)
	tb := tab(t, browser(t))
	const token = "page-test-sessions"
	partner := func() *client.Tunnel { // a Go client pairing with the tab, which waits
		t.Helper()
		run(t, tb, "the tab pairs",
			chromedp.WaitEnabled(chromedp.ID("pair")),
			chromedp.Click(chromedp.ID("pair")),
			chromedp.WaitVisible(`//p[@id="state" and contains(., "waiting for a partner")]`))
		tun, err := client.Dial(context.Background(), client.Options{URL: relaytest.WSURL(s), Token: token, Timeout: relaytest.Patience})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tun.Close() })
		run(t, tb, "the tab is paired", chromedp.WaitVisible(`//p[@id="state" and contains(., "paired with")]`))
		return tun
	}
	send := func(tun *client.Tunnel, op ws.OpCode, p string) {
		t.Helper()
		if err := tun.WriteMessage(op, []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	run(t, tb, "open the page", chromedp.Navigate(base+"/#token="+token))

	first := partner()
	send(first, ws.OpText, `{"t":"file","name":"whole.bin","size":5}`)
	send(first, ws.OpBinary, "12345")
	run(t, tb, "the tab gets a whole file", chromedp.WaitVisible(chromedp.CSS("a.received-file")))
	href := value(t, tb, "its link", chromedp.AttributeValue(chromedp.CSS("a.received-file"), "href")).Value
	send(first, ws.OpText, `{"t":"file","name":"first.bin","size":100}`)
	send(first, ws.OpBinary, string(make([]byte, 10)))
	send(first, ws.OpText, `{"t":"msg","text":"leaving"}`)
	run(t, tb, "the tab gets the start of the file", chromedp.WaitVisible(`//ol[@id="log"]/li[contains(., "them: leaving")]`))
	first.Close()
	run(t, tb, "the tab sees the partner leave", chromedp.WaitVisible(`//p[@id="state" and @data-code="partner_left"]`))

	second := partner()
	send(second, ws.OpBinary, string(make([]byte, 90)))
	send(second, ws.OpText, `{"t":"msg","text":"done"}`)
	run(t, tb, "the tab gets the second session's messages", chromedp.WaitVisible(`//ol[@id="log"]/li[contains(., "them: done")]`))
	links := value(t, tb, "received files", chromedp.Evaluate[int](`document.querySelectorAll("a.received-file").length`))
	if links != 0 {
		t.Errorf("the second session offers %d received file(s): the first partner's interrupted file, completed with the second's bytes", links)
	}
	run(t, tb, "the second session's binary is shown as such",
		poll(`[...document.querySelectorAll("#log li")].some((li) => li.textContent.includes("them: 90 bytes of binary"))`))
	kept := value(t, tb, "the first session's file", awaitJS[bool](`fetch(`+strconv.Quote(href)+`).then(() => true, () => false)`))
	if kept {
		t.Errorf("the first session's file %s is still held, its link gone with the log", href)
	}
}
