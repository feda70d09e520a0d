// Package strict holds the switch that makes relay servers raise again
// every panic their fault barriers catch (relay's faultsFatal), so that a
// test never passes over a contained bug. Tests set it — the relay's own
// (TestMain) and every test that uses package relaytest — before they
// create servers; production never does.
package strict

import "sync/atomic"

// Faults, when set, makes servers created from then on raise contained
// panics again.
var Faults atomic.Bool
