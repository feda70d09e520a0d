package relay

import (
	"crypto/subtle"
	"net/netip"

	"github.com/meetpoint/meetpoint/relay/limits"
)

// SetLimits replaces the server's abuse limits while it runs (e.g. on
// SIGHUP). Connections already admitted stay; new ones meet the new limits.
func (s *Server) SetLimits(lim limits.Limits) error {
	c := s.cfg
	c.Limits = lim
	if err := c.Validate(); err != nil {
		return err
	}
	s.lim.SetLimits(lim)
	s.tunnelRate.Store(lim.TunnelRate)
	return nil
}

// ClientKey is the key under which the per-address limits count ip
// (global IPv6 addresses by --ipv6-prefix), and whether ip is exempt from
// them (--limit-exempt): subsystems that bound something per client
// address (the groups API's creation rate, TURN's allocations) count by
// it, so one host is one client everywhere.
func (s *Server) ClientKey(ip netip.Addr) (key netip.Addr, exempt bool) {
	return s.lim.Key(ip.Unmap())
}

// MatchKey finds which of keys (id → key, e.g. registered applications)
// presented is; every key is compared, in constant time, so timing tells
// nothing of which matched or how much of one.
func MatchKey(keys map[string]string, presented string) (id string, ok bool) {
	for k, key := range keys {
		if subtle.ConstantTimeCompare([]byte(presented), []byte(key)) == 1 {
			id, ok = k, true
		}
	}
	return id, ok
}
