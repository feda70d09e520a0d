package auth_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/auth"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestWebhookThroughTheRelay: --auth webhook:URL end to end: the
// service's identity becomes the clients' identity (monitor, logs), and a
// refusal is AuthenticationFailed.
func TestWebhookThroughTheRelay(t *testing.T) {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b struct{ Token, Name string }
		_ = json.NewDecoder(r.Body).Decode(&b)
		json.NewEncoder(w).Encode(map[string]any{"allow": strings.HasPrefix(b.Token, "ok-"), "identity": "alice@" + b.Name})
	}))
	defer svc.Close()
	a, err := auth.ParseAuth("webhook:" + svc.URL + "/check")
	if err != nil {
		t.Fatal(err)
	}
	s := relaytest.Server(t, func(c *relay.Config) { c.Auth = a })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	x, y, err := client.DialPair(ctx, client.Options{URL: relaytest.TCPURL(s), Token: "ok-1", Name: "laptop"},
		client.Options{URL: relaytest.WSURL(s), Token: "ok-1", Name: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	defer y.Close()
	tun := s.Snapshot().Tunnels
	if len(tun) != 1 || tun[0].A.Identity+" "+tun[0].B.Identity != "token:alice@laptop token:alice@phone" &&
		tun[0].B.Identity+" "+tun[0].A.Identity != "token:alice@laptop token:alice@phone" {
		t.Fatalf("identities %+v", tun)
	}
	_, err = client.Dial(ctx, client.Options{URL: relaytest.WSURL(s), Token: "no-1"})
	var ae *client.AuthError
	if !errors.As(err, &ae) || ae.Result != "AuthenticationErrorAuthenticationFailed" {
		t.Fatalf("refused token: %v", err)
	}
}
