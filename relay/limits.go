package relay

import (
	"crypto/subtle"
	"net/http"
	"net/netip"

	"github.com/meetpoint/meetpoint/relay/limits"
)

// SetLimits replaces the server's abuse limits while it runs (e.g. on
// SIGHUP). Connections already admitted stay; new ones meet the new limits.
func (s *Server) SetLimits(lim limits.Limits) error {
	if err := s.CheckLimits(lim); err != nil {
		return err
	}
	s.lim.SetLimits(lim)
	s.tunnelRate.Store(lim.TunnelRate)
	return nil
}

// CheckLimits reports whether SetLimits would take lim (nil) or why not.
func (s *Server) CheckLimits(lim limits.Limits) error {
	c := s.cfg
	c.Limits = lim
	return c.Validate()
}

// ClientKey is the key under which the per-address limits count ip
// (global IPv6 addresses by --ipv6-prefix), and whether ip is exempt from
// them (--limit-exempt): subsystems that bound something per client
// address (the groups API's creation rate, TURN's allocations) count by
// it, so one host is one client everywhere.
func (s *Server) ClientKey(ip netip.Addr) (key netip.Addr, exempt bool) {
	return s.lim.Key(ip.Unmap())
}

// CountAuthFailure counts a secret that r presented and a handler refused (a
// wrong token, application key, admin key or owner secret) against the
// client's address, as a refused Authenticate is: past
// AuthFailuresPerIP a minute the address is banned for BanTime, its new
// connections refused at accept and its further requests on the ones it
// holds answered 403. Handlers that check a secret themselves call it
// once per refusal; a request with no secret at all is not a guess and
// is not counted. A request the relay's port did not serve is ignored.
func CountAuthFailure(r *http.Request) {
	if s, ok := r.Context().Value(serverKey{}).(*Server); ok {
		if ip := RequestAddr(r); ip.IsValid() {
			s.authFailedAt(ip)
		}
	}
}

// RequestAddr is r's client address, an IPv4-mapped IPv6 address as IPv4
// (invalid if r has none, as in tests' recorders).
func RequestAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
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
