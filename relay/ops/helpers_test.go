package ops

import (
	"testing"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// server starts a relay with the operational endpoints on its port.
func server(t testing.TB, mutate func(*relay.Config)) *relay.Server {
	t.Helper()
	s := relaytest.New(t, mutate)
	Register(s)
	return relaytest.Start(t, s)
}
