package limits

import (
	"net/netip"
	"sync"
)

// Shares counts what each client address holds of a resource the relay
// bounds in all (HTTP connections handed to net/http, TLS handshakes in
// flight), so that one address can hold only its share: without it, one
// address filling the global bound refuses everyone. Keys are limiter keys
// (Limiter.Key: IPv6 by prefix, link-local by interface); the zero key —
// an exempt address — is never counted. Safe for concurrent use.
type Shares struct {
	mu   sync.Mutex
	held map[netip.Addr]int
}

// Take counts one more for key and reports true, or reports false when
// key holds max already. Cost: one map update under a mutex.
func (s *Shares) Take(key netip.Addr, max int) bool {
	if !key.IsValid() {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = map[netip.Addr]int{}
	}
	if s.held[key] >= max {
		return false
	}
	s.held[key]++
	return true
}

// Give gives back one that Take counted for key (nothing for the zero
// key); an address that holds nothing leaves the map.
func (s *Shares) Give(key netip.Addr) {
	if !key.IsValid() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.held[key]; n > 1 {
		s.held[key] = n - 1
	} else {
		delete(s.held, key)
	}
}
