//go:build linux

package interop

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mosaicnetworks/babble/src/peers"
	"github.com/mosaicnetworks/disco/client"
	"github.com/mosaicnetworks/disco/group"
	"github.com/sirupsen/logrus"
)

// discoClient is Disco's own client for addr, trusting the target's
// certificate (the way Disco's and Babble's applications are set up).
func discoClient(t *testing.T, addr, cert string) *client.DiscoClient {
	t.Helper()
	log := logrus.New()
	log.Level = logrus.WarnLevel
	c, err := client.NewDiscoClient(addr, cert, false, log.WithField("component", "disco-client"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSetGroup is Disco's own client test (disco/client/client_test.go,
// TestSetGroup), step by step and with its checks, against each target
// instead of the in-process server it starts: create a group, read it
// back, create another application's, list all and per application,
// delete the first, and reading it then is an error.
func TestSetGroup(t *testing.T) {
	targets(t, func(t *testing.T, start func(*testing.T) *target) {
		tg := start(t)
		c := discoClient(t, tg.disco, tg.cert)
		group1 := group.NewGroup("", "TestGroup1", "TestApp1", []*peers.Peer{peers.NewPeer("pub1", "net1", "peer1")})
		group1ID, err := c.CreateGroup(*group1)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.GetGroupByID(group1ID)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case got.Name != group1.Name || got.AppID != group1.AppID || got.ID != group1ID:
			t.Fatalf("group read back %+v, want %+v with ID %s", got, group1, group1ID)
		case !reflect.DeepEqual(group1.Peers, got.Peers):
			t.Fatalf("group Peers %#v, want %#v", got.Peers, group1.Peers)
		case got.LastUpdated <= 0:
			t.Fatal("group LastUpdated should be positive")
		}
		group2 := group.NewGroup("", "TestGroup2", "TestApp2", []*peers.Peer{peers.NewPeer("pub1", "net1", "peer1")})
		if _, err := c.CreateGroup(*group2); err != nil {
			t.Fatal(err)
		}
		for app, want := range map[string]int{"": 2, "TestApp1": 1, "TestApp2": 1} {
			groups, err := c.GetGroups(app)
			if err != nil || len(groups) != want {
				t.Fatalf("GetGroups(%q): %d groups, %v; want %d", app, len(groups), err, want)
			}
		}
		if err := c.DeleteGroup(group1ID); err != nil {
			t.Fatal(err)
		}
		if g, err := c.GetGroupByID(group1ID); g != nil || err == nil {
			t.Fatalf("reading a deleted group: %+v, %v; want nil and an error", g, err)
		}
	})
}

// TestHeartbeat: Disco's documented update — POST the group again with
// its ID, what babble-android's advertise() does as a heartbeat — keeps
// a group alive past its TTL; once the heartbeats stop it expires, and
// Disco's client then reports an error for it. PATCH answers the id.
// Missing groups are errors for the client, except DELETE on Disco's
// server, which answers 200 for any id (meetpoint: 404).
func TestHeartbeat(t *testing.T) {
	targets(t, func(t *testing.T, start func(*testing.T) *target) {
		tg := start(t)
		c := discoClient(t, tg.disco, tg.cert)
		g := group.NewGroup("", "office", "babble-chat", []*peers.Peer{peers.NewPeer("0X04AB", "0X04AB", "alice")})
		id, err := c.CreateGroup(*g)
		if err != nil {
			t.Fatal(err)
		}
		g.ID = id
		for end := time.Now().Add(2 * groupTTL); time.Now().Before(end); time.Sleep(groupTTL / 4) {
			g.Name = "office " + time.Now().Format("15:04:05.000")
			if again, err := c.CreateGroup(*g); err != nil || again != id {
				t.Fatalf("heartbeat (re-POST with the ID): %q, %v; want %q", again, err, id)
			}
		}
		got, err := c.GetGroupByID(id)
		if err != nil || got.Name != g.Name {
			t.Fatalf("after heartbeats for twice the TTL: %+v, %v; want the last one (%q)", got, err, g.Name)
		}
		if all, err := c.GetGroups("babble-chat"); err != nil || len(all) != 1 {
			t.Fatalf("heartbeats made %d groups (%v), want one", len(all), err)
		}
		body, _ := json.Marshal(g)
		if code, answer := tg.raw(t, "PATCH", "/groups/"+id, string(body)); code != 200 || strings.TrimSpace(answer) != `"`+id+`"` {
			t.Errorf("PATCH: %d %q, want 200 and the id as a JSON string", code, answer)
		}
		// The heartbeats stop: the group expires, and the client says so.
		deadline := time.Now().Add(4*groupTTL + 10*time.Second)
		for {
			gone, err := c.GetGroupByID(id)
			if err != nil && gone == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the group outlived its TTL without heartbeats: %+v", gone)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if g, err := c.GetGroupByID("no-such-group"); g != nil || err == nil {
			t.Errorf("a group that never was: %+v, %v; want nil and an error", g, err)
		}
		err = c.DeleteGroup("no-such-group")
		if tg.meetpoint && err == nil {
			t.Error("DELETE of a missing group: no error, want meetpoint's 404 reported")
		}
		if !tg.meetpoint && err != nil {
			t.Errorf("DELETE of a missing group on Disco's server: %v (Disco answers 200 for any id)", err)
		}
	})
}

// TestRegisteredAppURL (meetpoint only: Disco has no registered
// applications): Disco's client, given the address with the key
// (HOST:PORT/app/KEY), manages a registered application's groups; the
// plain address does not reach them, and a wrong key is an error.
func TestRegisteredAppURL(t *testing.T) {
	tg := startMeetpoint(t)
	c := discoClient(t, tg.disco+"/app/"+appKey, tg.cert)
	id, err := c.CreateGroup(*group.NewGroup("", "office", appID, []*peers.Peer{peers.NewPeer("0X04AB", "0X04AB", "alice")}))
	if err != nil {
		t.Fatal(err)
	}
	if g, err := c.GetGroupByID(id); err != nil || g.AppID != appID {
		t.Fatalf("reading it through the app's URL: %+v, %v", g, err)
	}
	if all, err := c.GetGroups(appID); err != nil || len(all) != 1 {
		t.Fatalf("listing through the app's URL: %v, %v", all, err)
	}
	plain := discoClient(t, tg.disco, tg.cert)
	if g, err := plain.GetGroupByID(id); err == nil {
		t.Fatalf("the registered app's group without its key: %+v", g)
	}
	if all, _ := plain.GetGroups(""); len(all) != 0 {
		t.Fatalf("the open listing shows a registered app's group: %v", all)
	}
	if _, err := discoClient(t, tg.disco+"/app/wrong-key-0123456789", tg.cert).CreateGroup(*group.NewGroup("", "x", appID, nil)); err == nil {
		t.Fatal("a wrong key in the URL created a group")
	}
	if err := c.DeleteGroup(id); err != nil {
		t.Fatal(err)
	}
}
