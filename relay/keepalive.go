package relay

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Keepalive is what the relay sets on every TCP socket it holds (clients
// accepted on its listeners, mesh links it accepts or dials): TCP
// keepalive, so that a peer that vanished (power loss, a partition, a NAT
// that forgot the flow) is noticed on an idle connection, and
// TCP_USER_TIMEOUT, so that data left unacknowledged that long ends the
// connection instead of being retransmitted for ~15 minutes.
type Keepalive struct {
	// Idle is the silence before the first probe (0: keepalive off).
	Idle time.Duration
	// Interval is the time between probes.
	Interval time.Duration
	// Count is how many unanswered probes end the connection.
	Count int
	// UserTimeout ends a connection whose sent data stays unacknowledged
	// this long (0: the kernel's retransmission limit).
	UserTimeout time.Duration
}

// DefaultKeepalive is the default of every relay socket: a silent dead
// peer is noticed within 30 s + 3 × 10 s, unacknowledged data within 60 s.
func DefaultKeepalive() Keepalive {
	return Keepalive{Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3, UserTimeout: 60 * time.Second}
}

// validate reports a setting the kernel would refuse.
func (k Keepalive) validate() error {
	switch {
	case k.Idle < 0 || k.Idle > 32767*time.Second:
		return fmt.Errorf("tcp-keepalive: must be between 0 (off) and 32767s, got %v", k.Idle)
	case k.Idle > 0 && (k.Interval < time.Second || k.Interval > 32767*time.Second):
		return fmt.Errorf("tcp-keepalive-interval: must be between 1s and 32767s, got %v", k.Interval)
	case k.Idle > 0 && (k.Count < 1 || k.Count > 127):
		return fmt.Errorf("tcp-keepalive-count: must be between 1 and 127, got %d", k.Count)
	case k.UserTimeout < 0 || k.UserTimeout > time.Duration(1<<31-1)*time.Millisecond:
		return fmt.Errorf("tcp-user-timeout: must be between 0 (the kernel's) and 596h, got %v", k.UserTimeout)
	}
	return nil
}

// Apply sets k on the socket fd.
func (k Keepalive) Apply(fd int) error {
	if err := k.applyKeepalive(fd); err != nil {
		return err
	}
	return k.applyUserTimeout(fd)
}

// applyKeepalive sets k's keepalive on fd. On a listening socket, Linux
// passes it on to every socket it accepts (no system call per client).
// TCP_USER_TIMEOUT is passed on the same way, but a Multipath TCP listener
// (Config.MultipathTCP) refuses that option: then each accepted socket
// gets it (Server.Start tries the listener).
func (k Keepalive) applyKeepalive(fd int) error {
	on := 0
	if k.Idle > 0 {
		on = 1
		secs := func(d time.Duration) int { return max(1, int(d/time.Second)) }
		for _, o := range [][2]int{{unix.TCP_KEEPIDLE, secs(k.Idle)}, {unix.TCP_KEEPINTVL, secs(k.Interval)}, {unix.TCP_KEEPCNT, k.Count}} {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, o[0], o[1]); err != nil {
				return fmt.Errorf("keepalive: %w", err)
			}
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, on); err != nil {
		return fmt.Errorf("keepalive: %w", err)
	}
	return nil
}

// applyUserTimeout sets TCP_USER_TIMEOUT on fd, if k has one.
func (k Keepalive) applyUserTimeout(fd int) error {
	if k.UserTimeout == 0 {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(k.UserTimeout/time.Millisecond)); err != nil {
		return fmt.Errorf("tcp user timeout: %w", err)
	}
	return nil
}

// Keepalive is the server's socket keepalive (Config.Keepalive), for the
// sockets its subsystems dial (mesh links).
func (s *Server) Keepalive() Keepalive { return s.cfg.Keepalive }
