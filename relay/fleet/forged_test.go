package fleet_test

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/fleet"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// signJoin signs a Mesh.Join as a node holding key does (fleet/mesh.go's
// format: fields separated by NUL, the rid last).
func signJoin(key []byte, node string, t int64, token, nonce, uuid, name, identity, rid string) string {
	m := hmac.New(sha256.New, key)
	for _, s := range []string{"meetpoint mesh v1", "Mesh.Join", node, strconv.FormatInt(t, 10), token, nonce, uuid, name, identity, rid} {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}

// TestForgedMeshRequests: a mesh request is accepted once (a captured,
// validly signed one sent again is refused as a replay); forged ones
// count toward the address's ban like failed authentications; and a flood
// of refusals is one log line, not one per request.
func TestForgedMeshRequests(t *testing.T) {
	tail := &testutil.Tail{}
	n := startNodeWith(t, redisAddr(t), "node-a", func(c *relay.Config) {
		c.Limits.Exempt = nil // the test's requests come from loopback
		c.Limits.AuthFailuresPerIP = 3
		c.Limits.BanTime = time.Minute
	}, func(fc *fleet.Config) { fc.Logger = slog.New(slog.NewTextHandler(tail, nil)) })
	send := func(req string) string {
		t.Helper()
		c, err := net.Dial("tcp", relaytest.Addr(n.s))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(req + "\n"))
		_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line
	}
	now := time.Now().Unix()
	mac := signJoin(meshKey, "node-b", now, "tok", "", "u", "n", "id", "r1")
	valid := fmt.Sprintf(`{"id":1,"method":"Mesh.Join","params":{"node":"node-b","time":%d,"mac":%q,"token":"tok","uuid":"u","name":"n","identity":"id","rid":"r1"}}`, now, mac)
	if got := send(valid); !strings.Contains(got, relay.MeshNotWaiting) {
		t.Fatalf("a validly signed Mesh.Join for a key nobody waits under: %q, want %s", got, relay.MeshNotWaiting)
	}
	if got := send(valid); !strings.Contains(got, relay.MeshBadRequest) {
		t.Fatalf("the same request again: %q, want %s (a replay)", got, relay.MeshBadRequest)
	}
	forged := fmt.Sprintf(`{"id":1,"method":"Mesh.Join","params":{"node":"node-b","time":%d,"mac":"%s","token":"tok","uuid":"u","name":"n","rid":"x"}}`, now, strings.Repeat("00", 32))
	for i := range 3 {
		if got := send(forged); !strings.Contains(got, relay.MeshBadRequest) {
			t.Fatalf("forged request %d: %q, want %s", i+1, got, relay.MeshBadRequest)
		}
	}
	// Four refusals from the address: banned.
	c, err := net.Dial("tcp", relaytest.Addr(n.s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the address that sent forged mesh requests was not banned")
	}
	if k := n.s.Stats().Closes["banned"]; k != 1 {
		t.Errorf("banned closes %d, want 1", k)
	}
	if lines := strings.Count(tail.String(), "mesh request refused"); lines != 1 {
		t.Errorf("%d log lines for 4 refused mesh requests within 10 s, want 1:\n%s", lines, tail.String())
	}
}

// TestMeshClockSkewIsNoGuess: a mesh request signed with the mesh key
// but refused for its time (a node whose clock is more than 30 s off) is
// refused and counted, but not as a failed authentication: a node pings
// every 2 s, and the ban that counting earned (30 a minute) outlasted the
// clock's fix by ten minutes.
func TestMeshClockSkewIsNoGuess(t *testing.T) {
	n := startNodeWith(t, redisAddr(t), "node-a", func(c *relay.Config) {
		c.Limits.Exempt = nil // the test's requests come from loopback
		c.Limits.AuthFailuresPerIP = 3
	}, nil)
	for i := range 5 {
		old := time.Now().Add(-2 * time.Minute).Unix()
		rid := fmt.Sprintf("skew-%d", i)
		mac := signJoin(meshKey, "node-b", old, "tok", "", "u", "n", "id", rid)
		c, err := net.Dial("tcp", relaytest.Addr(n.s))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(fmt.Sprintf(`{"id":1,"method":"Mesh.Join","params":{"node":"node-b","time":%d,"mac":%q,"token":"tok","uuid":"u","name":"n","identity":"id","rid":%q}}`+"\n", old, mac, rid)))
		_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if !strings.Contains(line, relay.MeshBadRequest) {
			t.Fatalf("request %d, two minutes old: %q, want %s (the node's address banned?)", i+1, line, relay.MeshBadRequest)
		}
	}
	if b := relaytest.Metric(t, n.s, "meetpoint_bans_total"); b > 0 {
		t.Errorf("meetpoint_bans_total %v after 5 well-signed requests refused for their time, want 0", b)
	}
	if r := relaytest.Metric(t, n.s, "meetpoint_mesh_refused_total"); r != 5 {
		t.Errorf("meetpoint_mesh_refused_total %v, want 5", r)
	}
}
