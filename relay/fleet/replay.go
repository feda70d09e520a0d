package fleet

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"
)

// maxReplayEntries bounds the replay cache: every signed mesh request a
// node accepted within the last 2×maxSkew (only nodes holding the mesh key
// can add one, so legitimate traffic sizes it: 262,144 is 2,000
// cross-node pairs a second). A node whose cache is full of live entries
// refuses mesh requests until some expire, rather than forget one: well
// signed and new, they are no guess (not counted toward the sending
// node's ban).
const maxReplayEntries = 1 << 18

// replayCache remembers the signatures of the mesh requests a node
// accepted until they are too old to be accepted anyway (their time plus
// maxSkew), so a captured request cannot be sent again within its
// validity window. Safe for concurrent use.
type replayCache struct {
	mu   sync.Mutex
	seen map[[sha256.Size]byte]time.Time // signature → when it stops mattering
}

// seen is what replayCache.first found.
type seen uint8

const (
	fresh    seen = iota // not seen before: recorded
	replayed             // accepted before, within its validity
	full                 // not seen, but the cache is full of live entries: not recorded
)

// first records mac, good until until, and reports whether it was new.
func (r *replayCache) first(mac []byte, until, now time.Time) seen {
	var k [sha256.Size]byte
	copy(k[:], mac)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[[sha256.Size]byte]time.Time{}
	}
	if t, ok := r.seen[k]; ok && now.Before(t) {
		return replayed
	}
	if len(r.seen) >= maxReplayEntries {
		for s, t := range r.seen {
			if !now.Before(t) {
				delete(r.seen, s)
			}
		}
		if len(r.seen) >= maxReplayEntries {
			return full
		}
	}
	r.seen[k] = until
	return fresh
}

// newRequestID is a mesh request's random id (signed with it), so that
// two requests with the same fields in the same second — a retry — have
// different signatures.
func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// logEvery lets one log line through per period and counts the ones it
// held back, so a flood of refusals is one line per period, not one per
// request. Safe for concurrent use.
type logEvery struct {
	period time.Duration
	mu     sync.Mutex
	last   time.Time
	held   int
}

// allow reports whether a line may be written now and, if so, how many
// were held back since the last one.
func (l *logEvery) allow(now time.Time) (ok bool, heldBack int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.period {
		l.held++
		return false, 0
	}
	heldBack, l.held, l.last = l.held, 0, now
	return true, heldBack
}
