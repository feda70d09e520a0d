package loop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loop's calls on its non-blocking descriptors go through RawSyscall:
// none of them can block (the relay sets no SO_LINGER, so a close returns
// at once, and never makes a descriptor the loop may still write
// blocking: TLSSession.Blocking hands off through Go's poller), so what
// Syscall adds — the runtime's bookkeeping around a call that might
// block, and sysmon taking the P of a call that outlives its 20 µs tick
// (a loopback write runs the receiver's TCP input) and waking a thread to
// run it — buys nothing here. 3% less relay CPU per
// set-up TCP tunnel (docs/BENCHMARKS.md). rawRead and rawWrite are in
// raw_norace.go, with race-build twins in raw_race.go.

// rawErr is errno as an error (nil for 0). Errno values box without an
// allocation.
func rawErr(errno unix.Errno) error {
	if errno == 0 {
		return nil
	}
	return errno
}

// rawClose is close(2).
func rawClose(fd int) error {
	_, _, errno := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	return rawErr(errno)
}

// rawShutdown is shutdown(2).
func rawShutdown(fd, how int) error {
	_, _, errno := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return rawErr(errno)
}

// rawSplice is splice(2) without offsets; -1 and the errno on failure.
func rawSplice(in, out, n, flags int) (int64, error) {
	r, _, errno := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), uintptr(flags))
	if errno != 0 {
		return -1, errno
	}
	return int64(r), nil
}

// rawEpollCtl is epoll_ctl(2).
func rawEpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return rawErr(errno)
}
