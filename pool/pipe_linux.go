package pool

import "golang.org/x/sys/unix"

// GetPipe returns an idle empty pipe, or creates a non-blocking, close-on-exec
// one sized PipeSize when none is idle (a failure to resize is ignored: the
// pipe keeps the kernel's default size). Return it with PutPipe.
func GetPipe() (*Pipe, error) {
	if p := popPipe(); p != nil {
		return p, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	_, _ = unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, PipeSize)
	return &Pipe{R: fds[0], W: fds[1]}, nil
}

// close closes both ends of p.
func (p *Pipe) close() {
	_ = unix.Close(p.R)
	_ = unix.Close(p.W)
}
