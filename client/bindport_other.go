//go:build !linux

package client

import "syscall"

// noPortAtBind does nothing where IP_BIND_ADDRESS_NO_PORT does not exist.
func noPortAtBind(_, _ string, _ syscall.RawConn) error { return nil }
