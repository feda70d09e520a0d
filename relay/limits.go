package relay

import "github.com/meetpoint/meetpoint/relay/limits"

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
