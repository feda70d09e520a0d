package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

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
