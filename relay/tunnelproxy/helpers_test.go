package tunnelproxy

import (
	"sync"
	"testing"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// server starts a relay serving the TunnelProxy API (with cfgMutate's
// changes to its section, if given).
func server(t testing.TB, mutate func(*relay.Config), cfgMutate ...func(*Config)) *relay.Server {
	t.Helper()
	s := relaytest.New(t, mutate)
	cfg := DefaultConfig()
	for _, m := range cfgMutate {
		m(&cfg)
	}
	svc, err := New(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	services.Store(s, svc)
	return relaytest.Start(t, s)
}

// services maps a test's relay to its TunnelProxy service.
var services sync.Map

func serviceOf(s *relay.Server) *Service {
	v, _ := services.Load(s)
	return v.(*Service)
}
