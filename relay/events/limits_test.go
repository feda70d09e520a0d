package events_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/events"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestEventOfMaxSize: an event as large as the publish API accepts (64
// KiB of JSON, answered 202) reaches a subscriber that reads, over raw
// TCP and WebSocket; it does not disconnect it as slow_reader.
func TestEventOfMaxSize(t *testing.T) {
	s := relaytest.New(t, func(c *relay.Config) { c.Access = onlyChannels{} })
	ev, err := events.New(s, events.Config{AdminKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	relaytest.Start(t, s)
	body := `{"pad":"` + strings.Repeat("x", 64<<10-len(`{"pad":""}`)) + `"}`
	for _, overWS := range []bool{false, true} {
		sb, _ := subscribe(t, relaytest.Addr(s), overWS, "dev-big")
		req, _ := http.NewRequest("POST", "http://"+relaytest.Addr(s)+"/v1/events/dev-big", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer k")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 202 {
			t.Fatalf("publishing 64 KiB: %d, want 202", resp.StatusCode)
		}
		if ch, data := eventOf(sb.next(t)); ch != "dev-big" || len(data.(map[string]any)["pad"].(string)) != len(body)-len(`{"pad":""}`) {
			t.Fatalf("ws %v: got %q, want the 64 KiB event", overWS, ch)
		}
		sb.c.Close()
	}
	if n := s.Stats().Closes["slow_reader"]; n != 0 {
		t.Fatalf("%d subscribers closed as slow_reader", n)
	}
}
