package turn

import (
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
)

// TestWebRTCRelayOnly: two pion/webrtc peers with ICE policy relay-only
// connect through meetpoint's TURN (credentials as GET
// /v1/turn/credentials mints them) and exchange 256 KiB on a data channel
// labelled "data", checksummed. Signalling is in-process here (the WAMP
// router is not built yet).
func TestWebRTCRelayOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a WebRTC session")
	}
	s, _ := start(t, Config{})
	user, pass := Credentials(secret, "webrtc", time.Minute, time.Now())
	conf := webrtc.Configuration{
		ICEServers:         []webrtc.ICEServer{{URLs: []string{"turn:" + s.Addr().String() + "?transport=udp"}, Username: user, Credential: pass}},
		ICETransportPolicy: webrtc.ICETransportPolicyRelay,
	}
	offerer, err := webrtc.NewPeerConnection(conf)
	if err != nil {
		t.Fatal(err)
	}
	defer offerer.Close()
	answerer, err := webrtc.NewPeerConnection(conf)
	if err != nil {
		t.Fatal(err)
	}
	defer answerer.Close()

	payload := make([]byte, 256<<10)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	want := sha256.Sum256(payload)
	got := make(chan [32]byte, 1)
	answerer.OnDataChannel(func(dc *webrtc.DataChannel) {
		if dc.Label() != "data" {
			t.Errorf("data channel %q", dc.Label())
		}
		var buf []byte
		dc.OnMessage(func(m webrtc.DataChannelMessage) {
			buf = append(buf, m.Data...)
			if len(buf) == len(payload) {
				got <- sha256.Sum256(buf)
			}
		})
	})
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
	// Non-trickle signalling: each description with its gathered candidates.
	offer, err := offerer.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	done := webrtc.GatheringCompletePromise(offerer)
	if err := offerer.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-done
	if err := answerer.SetRemoteDescription(*offerer.LocalDescription()); err != nil {
		t.Fatal(err)
	}
	answer, err := answerer.CreateAnswer(nil)
	if err != nil {
		t.Fatal(err)
	}
	done = webrtc.GatheringCompletePromise(answerer)
	if err := answerer.SetLocalDescription(answer); err != nil {
		t.Fatal(err)
	}
	<-done
	if err := offerer.SetRemoteDescription(*answerer.LocalDescription()); err != nil {
		t.Fatal(err)
	}
	select {
	case sum := <-got:
		if sum != want {
			t.Fatal("the data channel's bytes differ")
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no data through TURN (ICE %s, %d allocations)", offerer.ICEConnectionState(), s.allocsTotal.Get())
	}
	pair, err := pairOf(offerer)
	if err != nil {
		t.Fatal(err)
	}
	if pair != "relay" {
		t.Errorf("selected candidate type %q, want relay", pair)
	}
	if s.allocsTotal.Get() < 2 {
		t.Errorf("%d TURN allocations, want one per peer at least", s.allocsTotal.Get())
	}
}

// pairOf is the local candidate type of pc's selected pair.
func pairOf(pc *webrtc.PeerConnection) (string, error) {
	for _, st := range pc.GetStats() {
		if cp, ok := st.(webrtc.ICECandidatePairStats); ok && cp.Nominated {
			for _, st2 := range pc.GetStats() {
				if c, ok := st2.(webrtc.ICECandidateStats); ok && c.ID == cp.LocalCandidateID {
					return c.CandidateType.String(), nil
				}
			}
		}
	}
	return "", fmt.Errorf("no nominated candidate pair")
}
