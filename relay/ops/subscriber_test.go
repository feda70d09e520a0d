package ops

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/events"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// anyChannel lets every identity do everything (an events channel too).
type anyChannel struct{}

func (anyChannel) Allow(*relay.Identity, string, string) (bool, string) { return true, "test" }

// TestMonitorSubscriberIsNotWaiting: an events subscriber is not a
// legacy client waiting for its partner: nymea 1.13's statistic must not
// count or list it as a server connection, and the meetpoint dialect tells
// it apart (subscribed) from the client that does wait.
func TestMonitorSubscriberIsNotWaiting(t *testing.T) {
	s := relaytest.New(t, func(c *relay.Config) { c.Access = anyChannel{} })
	Register(s)
	ev, err := events.New(s, events.Config{AdminKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ev.Close() })
	relaytest.Start(t, s)
	path := startMonitor(t, s)

	sc, err := net.Dial("tcp", relaytest.Addr(s))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	io.WriteString(sc, `{"id":1,"method":"Events.Subscribe","params":{"token":"sub-token","channels":["dev-1"]}}`+"\n")
	_ = sc.SetReadDeadline(time.Now().Add(relaytest.Patience))
	if line, err := bufio.NewReader(sc).ReadBytes('\n'); err != nil || !bytes.Contains(line, []byte(`"success"`)) {
		t.Fatalf("subscribe: %q %v", line, err)
	}
	relaytest.WaitFor(t, func() bool { return ev.Deliver("dev-1", []byte(`{}`)) == 1 }, "the subscriber subscribed")
	w := waitingClient(t, s, "mon-subscriber-alone")
	defer w.Close()

	c := dialMonitor(t, path)
	r := bufio.NewReader(c)
	ask := func(req string, v any) {
		t.Helper()
		if _, err := io.WriteString(c, req+"\n"); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(line, v); err != nil {
			t.Fatal(err)
		}
	}
	var doc nymea113Doc
	ask(`{"method":"refresh","params":{"printAll":true}}`, &doc)
	if doc.Stat.ServerConnectionsCount != 1 || len(doc.Stat.TunnelConnections) != 1 {
		t.Fatalf("nymea 1.13: %d server connections, %d listed; want 1 (the waiting client), not the subscriber: %+v",
			doc.Stat.ServerConnectionsCount, len(doc.Stat.TunnelConnections), doc.Stat)
	}
	if e := doc.Stat.TunnelConnections[0]; e.Name != "alone" {
		t.Fatalf("nymea 1.13 lists %+v, want the waiting client", e)
	}
	var st struct {
		Clients []struct {
			Name       string `json:"name"`
			Subscribed bool   `json:"subscribed"`
		} `json:"clients"`
	}
	ask(`{"method":"meetpoint.status"}`, &st)
	if len(st.Clients) != 2 {
		t.Fatalf("meetpoint.status lists %d clients, want the subscriber and the waiting client: %+v", len(st.Clients), st.Clients)
	}
	for _, cl := range st.Clients {
		if cl.Subscribed != (cl.Name == "") {
			t.Errorf("meetpoint.status: client %+v, want subscribed for the subscriber (no name) only", cl)
		}
	}
}
