package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestClientSaysWhyTheRelayClosed: against a real relay, meetpoint client
// prints the relay's reason for ending its wait, over raw TCP and
// WebSocket alike: the alone timeout (blamed on the relay, not on the
// client's --timeout) and a third client on a pair's token.
func TestClientSaysWhyTheRelayClosed(t *testing.T) {
	s := relaytest.Server(t, func(c *relay.Config) { c.AloneTimeout = 300 * time.Millisecond })
	pair := relaytest.Server(t, nil)
	relaytest.Pair(t, relaytest.TCPURL(pair), relaytest.WSURL(pair), "two", "")
	for _, tc := range []struct {
		url, token, want string
	}{
		{relaytest.TCPURL(s), "alone", "meetpoint: the relay gave up waiting for a partner: No partner arrived within 300ms (its --alone-timeout)\n"},
		{relaytest.WSURL(s), "alone", "meetpoint: the relay gave up waiting for a partner: No partner arrived within 300ms (its --alone-timeout)\n"},
		{relaytest.TCPURL(pair), "two", ": Tunnel already exists\n"},
		{relaytest.WSURL(pair), "two", ": Tunnel already exists\n"},
	} {
		var errb bytes.Buffer
		code := run([]string{"client", "--url", tc.url, "--token", tc.token}, strings.NewReader(""), &bytes.Buffer{}, &errb)
		if code != 1 || !strings.HasSuffix(errb.String(), tc.want) {
			t.Errorf("%s token %s: exit %d, stderr %q; want it to end %q", tc.url, tc.token, code, errb.String(), tc.want)
		}
	}
}

// TestClientTokenInURL: meetpoint client takes the token (and nonce) in a
// WebSocket URL, and pairs with a client that sent its token in
// Authenticate; a refused URL token, or plaintext to a TLS-only relay,
// prints what the relay answered.
func TestClientTokenInURL(t *testing.T) {
	s := relaytest.Server(t, func(c *relay.Config) { c.Auth = relaytest.RefuseBad{} })
	type dialed struct {
		tun *client.Tunnel
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		tun, err := client.Dial(context.Background(), client.Options{URL: relaytest.TCPURL(s), Token: "good", Nonce: "n1",
			Name: "tcp", Timeout: relaytest.Patience})
		ch <- dialed{tun, err}
	}()
	go func() { // the other side: read what the CLI sends, answer, close
		d := <-ch
		if d.err != nil {
			ch <- d
			return
		}
		buf := make([]byte, len("from ws\n"))
		_ = d.tun.SetReadDeadline(time.Now().Add(relaytest.Patience))
		_, err := io.ReadFull(d.tun, buf)
		if err == nil && string(buf) != "from ws\n" {
			err = fmt.Errorf("read %q", buf)
		}
		d.tun.Write([]byte("from tcp\n"))
		d.tun.Close()
		ch <- dialed{err: err}
	}()
	var out, errb bytes.Buffer
	code := run([]string{"client", "--url", relaytest.WSURL(s) + "?token=good&nonce=n1", "--name", "ws"},
		strings.NewReader("from ws\n"), &out, &errb)
	if code != 0 || out.String() != "from tcp\n" || !strings.Contains(errb.String(), `tunnel established with "tcp"`) {
		t.Errorf("URL token: exit %d, out %q, stderr %q", code, out.String(), errb.String())
	}
	if d := <-ch; d.err != nil {
		t.Errorf("the --token side: %v", d.err)
	}
	errb.Reset()
	code = run([]string{"client", "--url", relaytest.WSURL(s) + "?token=bad"}, strings.NewReader(""), &bytes.Buffer{}, &errb)
	if code != 1 || errb.String() != "meetpoint: authentication failed: AuthenticationErrorAuthenticationFailed\n" {
		t.Errorf("refused URL token: exit %d, %q", code, errb.String())
	}
}

// TestClientURLErrorsHideToken: a token in --url (?token=, ?ws_token=) is
// a credential. The usage errors that refuse such a URL quoted it whole,
// token included, into whatever collects the client's stderr (a CI log, a
// journal); they must name the URL with the token left out.
func TestClientURLErrorsHideToken(t *testing.T) {
	for _, args := range [][]string{
		{"--url", "ws://bad host/?token=S3CRET"},
		{"--url", "ws://127.0.0.1:1/%zz?ws_token=S3CRET"},
		{"--url", "tcp://127.0.0.1:1/?token=S3CRET"},
		{"--url", "ws://127.0.0.1:1/?nonce=n&token=S3CRET", "--fingerprint", "ab"},
	} {
		var errb bytes.Buffer
		code := run(append([]string{"client"}, args...), strings.NewReader(""), &bytes.Buffer{}, &errb)
		if code != 2 || strings.Contains(errb.String(), "S3CRET") || !strings.Contains(errb.String(), "127.0.0.1:1/") && !strings.Contains(errb.String(), "bad host") {
			t.Errorf("client %v: exit %d %q, want 2 and the URL without its token", args, code, errb.String())
		}
	}
}
