//go:build race

package handshake

// raceEnabled: under the race detector sync.Pool drops items at random, so
// allocation counts of code using pooled state (encoding/json's scanner) vary.
const raceEnabled = true
