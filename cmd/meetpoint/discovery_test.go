package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/meetpoint/meetpoint/relay/relaytest"
	"github.com/meetpoint/meetpoint/relay/wamp"
)

// httpJSON sends one request to the relay and decodes the JSON answer
// into out (nil: none); it fails the test unless the status is want.
func httpJSON(t *testing.T, method, url, body string, want int, out any, hdr ...string) {
	t.Helper()
	code, _, b := relaytest.HTTP(t, method, url, body, hdr...)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, url, code, b, want)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(b), out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, url, err, b)
		}
	}
}

// babblePeer is one side of the Babble flow: a WebRTC peer with ICE
// policy relay-only and meetpoint's TURN as its only ICE server.
func babblePeer(t *testing.T, base string) *webrtc.PeerConnection {
	t.Helper()
	var cred struct {
		Username, Password string
		URIs               []string `json:"uris"`
	}
	httpJSON(t, "GET", base+"/v1/turn/credentials", "", 200, &cred, "Authorization", "Bearer babble-token")
	var turnURLs []string
	for _, u := range cred.URIs {
		if strings.HasPrefix(u, "turn:") && strings.HasSuffix(u, "transport=udp") {
			turnURLs = append(turnURLs, u)
		}
	}
	pc, err := webrtc.NewPeerConnection(webrtc.Configuration{
		ICEServers:         []webrtc.ICEServer{{URLs: turnURLs, Username: cred.Username, Credential: cred.Password}},
		ICETransportPolicy: webrtc.ICETransportPolicyRelay,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// described is pc's local description with its gathered candidates, as
// JSON text (Babble signals whole descriptions, not trickled candidates).
func described(t *testing.T, pc *webrtc.PeerConnection, d webrtc.SessionDescription) string {
	t.Helper()
	done := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(d); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ICE gathering did not complete")
	}
	b, _ := json.Marshal(pc.LocalDescription())
	return string(b)
}

// TestBabbleFlowWebRTC is the whole discovery path as Babble's WebRTC
// transport uses it, against `meetpoint serve` with its defaults plus
// --turn: two pion/webrtc peers find each other through the groups API,
// signal through the WAMP router (the answerer's procedure is its public
// key; the offerer calls it with [its key, the offer] and gets [the
// answer]), connect relay-only through meetpoint's TURN with credentials
// from GET /v1/turn/credentials, and exchange 256 KiB on a data channel
// labelled "data", checksummed.
func TestBabbleFlowWebRTC(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a WebRTC session")
	}
	ts := startServe(t, "--turn", "--turn-ports", "41400-41500", "--drain-timeout", "100ms")
	base := "http://" + ts.addr()
	wsURL := "ws://" + ts.addr() + "/"
	const alice, bob = "0X04A11CE", "0X04B0B"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Alice advertises a group with herself as its genesis peer.
	group := fmt.Sprintf(`{"Name":"office","AppID":"chat","PubKey":%q,"Peers":[{"NetAddr":%[1]q,"PubKeyHex":%[1]q,"Moniker":"alice"}],"GenesisPeers":[{"NetAddr":%[1]q,"PubKeyHex":%[1]q,"Moniker":"alice"}]}`, alice)
	var groupID string
	httpJSON(t, "POST", base+"/group", group, 201, &groupID)

	// Alice answers offers on her procedure.
	answerer := babblePeer(t, base)
	payload := make([]byte, 256<<10)
	for i := range payload {
		payload[i] = byte(i*13 + 1)
	}
	got := make(chan [32]byte, 1)
	answerer.OnDataChannel(func(dc *webrtc.DataChannel) {
		if dc.Label() != "data" {
			t.Errorf("data channel %q, want data", dc.Label())
		}
		var buf []byte
		dc.OnMessage(func(m webrtc.DataChannelMessage) {
			if buf = append(buf, m.Data...); len(buf) == len(payload) {
				got <- sha256.Sum256(buf)
			}
		})
	})
	ac, err := wamp.Dial(ctx, wsURL, "main", "")
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	offerFrom := make(chan string, 1)
	err = ac.Register(ctx, alice, func(args []json.RawMessage) ([]any, error) {
		var from, offerText string
		if len(args) != 2 || json.Unmarshal(args[0], &from) != nil || json.Unmarshal(args[1], &offerText) != nil {
			return nil, &wamp.CallError{URI: "io.babble.processing_offer"}
		}
		var offer webrtc.SessionDescription
		if err := json.Unmarshal([]byte(offerText), &offer); err != nil {
			return nil, &wamp.CallError{URI: "io.babble.processing_offer"}
		}
		if err := answerer.SetRemoteDescription(offer); err != nil {
			return nil, &wamp.CallError{URI: "io.babble.processing_offer"}
		}
		answer, err := answerer.CreateAnswer(nil)
		if err != nil {
			return nil, &wamp.CallError{URI: "io.babble.processing_offer"}
		}
		offerFrom <- from
		return []any{described(t, answerer, answer)}, nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Bob finds the group and its peer's key, registers his own
	// procedure (as every Babble node does), and calls Alice's.
	var groups map[string]struct {
		Peers []struct{ PubKeyHex string }
	}
	httpJSON(t, "GET", base+"/groups?app-id=chat", "", 200, &groups)
	if len(groups[groupID].Peers) != 1 || groups[groupID].Peers[0].PubKeyHex != alice {
		t.Fatalf("GET /groups: %+v", groups)
	}
	peerKey := groups[groupID].Peers[0].PubKeyHex
	bc, err := wamp.Dial(ctx, wsURL, "main", "")
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	if err := bc.Register(ctx, bob, func([]json.RawMessage) ([]any, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	offerer := babblePeer(t, base)
	dc, err := offerer.CreateDataChannel("data", nil)
	if err != nil {
		t.Fatal(err)
	}
	dc.OnOpen(func() {
		for off := 0; off < len(payload); off += 16 << 10 {
			if err := dc.Send(payload[off : off+16<<10]); err != nil {
				t.Error(err)
				return
			}
		}
	})
	offer, err := offerer.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := bc.Call(ctx, peerKey, bob, described(t, offerer, offer))
	if err != nil {
		t.Fatal(err)
	}
	if from := <-offerFrom; from != bob {
		t.Fatalf("the offer came from %q, want %q", from, bob)
	}
	var answerText string
	var answer webrtc.SessionDescription
	if len(res) != 1 || json.Unmarshal(res[0], &answerText) != nil || json.Unmarshal([]byte(answerText), &answer) != nil {
		t.Fatalf("the call's result %s is not [answer]", res)
	}
	if err := offerer.SetRemoteDescription(answer); err != nil {
		t.Fatal(err)
	}
	select {
	case sum := <-got:
		if sum != sha256.Sum256(payload) {
			t.Fatal("the data channel's bytes differ")
		}
	case <-ctx.Done():
		t.Fatalf("no data through TURN: ICE %s / %s", offerer.ICEConnectionState(), answerer.ICEConnectionState())
	}
	// Both peers used a relayed candidate pair.
	for name, pc := range map[string]*webrtc.PeerConnection{"offerer": offerer, "answerer": answerer} {
		relayed := false
		for _, s := range pc.GetStats() {
			if c, ok := s.(webrtc.ICECandidateStats); ok && c.Type == "local-candidate" && c.CandidateType == webrtc.ICECandidateTypeRelay {
				relayed = true
			}
		}
		if !relayed {
			t.Errorf("%s has no relayed local candidate", name)
		}
	}
	// A Babble call to a key nobody registered fails as a WAMP error.
	if _, err := bc.Call(ctx, "0X04CAFE", bob, "{}"); err == nil || !strings.Contains(err.Error(), "no_such_procedure") {
		t.Fatalf("call to an unknown key: %v", err)
	}
}
