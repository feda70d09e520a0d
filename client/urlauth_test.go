package client_test

import (
	"context"
	"errors"
	"testing"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestDialURLTokenRefused: a token in a WebSocket URL is checked during
// the upgrade, and the relay refuses a bad one with HTTP 401. Dial gave
// that back as "connect: unexpected HTTP response status: 401", where the
// same token sent with Authenticate gives *AuthError: a caller (the CLI)
// could not tell a refused token from any failure to connect. Now a 401
// is *AuthError (AuthenticationFailed), as for Authenticate; other
// refusals (503: the relay could not check the token now) keep their
// HTTP status and the relay's words.
func TestDialURLTokenRefused(t *testing.T) {
	s := relaytest.Server(t, func(c *relay.Config) { c.Auth = relaytest.RefuseBad{} })
	dial := func(token string) error {
		_, err := client.Dial(context.Background(), client.Options{URL: relaytest.WSURL(s) + "?token=" + token, Timeout: relaytest.Patience})
		return err
	}
	err := dial("bad")
	var ae *client.AuthError
	if !errors.As(err, &ae) || ae.Result != "AuthenticationErrorAuthenticationFailed" {
		t.Errorf("refused URL token: %v (%T), want *AuthError AuthenticationErrorAuthenticationFailed", err, err)
	}
	err = dial("down")
	var se ws.StatusError
	if errors.As(err, &ae) || !errors.As(err, &se) || se != 503 {
		t.Errorf("unchecked URL token: %v, want HTTP 503 and no *AuthError", err)
	}
}
