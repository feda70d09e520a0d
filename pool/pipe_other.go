//go:build !linux

package pool

import "errors"

// GetPipe always fails outside Linux: splice(2) is Linux-only.
func GetPipe() (*Pipe, error) { return nil, errors.ErrUnsupported }

// close does nothing: no pipe is ever created outside Linux.
func (p *Pipe) close() {}
