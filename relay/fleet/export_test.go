package fleet

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/meetpoint/meetpoint/relay"
)

// Held is how many keys f holds or is placing.
func Held(f *Fleet) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.held)
}

// HeldKey reports whether f holds the key of (token, nonce).
func HeldKey(f *Fleet, token, nonce string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := f.held[f.pairKey(relay.PairKey{Token: token, Nonce: nonce})]
	return h != nil && h.state == held
}

// Ready is f's readiness.
func Ready(f *Fleet) (bool, string) { return f.ready() }

// Kill stops f's heartbeat without releasing anything, as a killed
// process leaves the store.
func Kill(f *Fleet) {
	close(f.stop)
	f.done.Wait()
	f.rdb.Close() // releases from now on fail, as they never happen after SIGKILL
}

// PairKeyName is the Redis key of (token, nonce) in f's fleet.
func PairKeyName(f *Fleet, token, nonce string) string {
	return f.pairKey(relay.PairKey{Token: token, Nonce: nonce})
}

// Renew runs f's lease renewal now.
func Renew(f *Fleet) { f.renew(context.Background()) }

// Instance is f's process instance, as its node record names it.
func Instance(f *Fleet) string { return f.instance }

// FillReplays fills f's replay cache with n live signatures that no
// request carries, as n accepted mesh requests within the last 30 s would.
func FillReplays(f *Fleet, n int) {
	now := time.Now()
	var mac [32]byte
	for i := range n {
		binary.BigEndian.PutUint64(mac[:], uint64(i))
		f.replays.first(mac[:], now.Add(maxSkew), now)
	}
}

// MaxReplayEntries is how many signatures the replay cache holds.
const MaxReplayEntries = maxReplayEntries

// FillPlacements takes every placement slot of f, as MaxPlacing
// placements in flight would, until the returned func gives them back.
func FillPlacements(f *Fleet) func() {
	for range cap(f.slots) {
		f.slots <- struct{}{}
	}
	return func() {
		for range cap(f.slots) {
			<-f.slots
		}
	}
}
