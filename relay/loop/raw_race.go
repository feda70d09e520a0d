//go:build race

package loop

import "golang.org/x/sys/unix"

// Under the race detector, reads and writes go through x/sys, whose
// annotations tell the detector that a read saw what another goroutine's
// write put through the kernel; RawSyscall has none, and the tests would
// report races between goroutines that a socket orders.

// rawRead is unix.Read under the race detector (raw_norace.go).
func rawRead(fd int, p []byte) (int, error) { return unix.Read(fd, p) }

// rawWrite is unix.Write under the race detector (raw_norace.go).
func rawWrite(fd int, p []byte) (int, error) { return unix.Write(fd, p) }
