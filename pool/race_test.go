//go:build race

package pool

// raceEnabled: under the race detector sync.Pool drops items at random.
const raceEnabled = true
