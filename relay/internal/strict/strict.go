// Package strict holds the switches that make relay servers raise again
// every panic their fault barriers catch (relay's faultsFatal) and panic
// on a connection move their successor table does not list, so that a
// test never passes over a contained bug. Tests set them — the relay's
// own (TestMain) and every test that uses package relaytest — before they
// create servers; production never does.
package strict

import "sync/atomic"

// Faults, when set, makes servers created from then on raise contained
// panics again.
var Faults atomic.Bool

// Moves, when set, makes a connection's move that its successor table
// does not list panic instead of being logged as an internal error.
var Moves atomic.Bool
