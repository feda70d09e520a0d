package pool

import "sync"

// Pipe is a kernel pipe used as the intermediate buffer of splice(2).
type Pipe struct {
	R, W int // read and write file descriptors
	N    int // bytes currently inside the pipe, maintained by the caller
}

// MaxIdlePipes is the most idle pipes kept for reuse; PutPipe closes any
// pipe beyond it.
const MaxIdlePipes = 1024

// PipeSize is the capacity GetPipe asks the kernel for (F_SETPIPE_SZ).
const PipeSize = 64 << 10

// pipes is the idle stack. A mutex-guarded slice rather than sync.Pool:
// sync.Pool drops items at GC without closing them, which would leak fds.
var pipes struct {
	mu   sync.Mutex
	idle []*Pipe
	max  int // MaxIdlePipes; lowered by tests
}

func init() { pipes.max = MaxIdlePipes }

// popPipe takes an idle pipe, or returns nil if there is none.
func popPipe() *Pipe {
	pipes.mu.Lock()
	defer pipes.mu.Unlock()
	n := len(pipes.idle)
	if n == 0 {
		return nil
	}
	p := pipes.idle[n-1]
	pipes.idle[n-1] = nil
	pipes.idle = pipes.idle[:n-1]
	return p
}

// PutPipe returns p for reuse. Only an empty pipe (N == 0) is kept, and only
// while fewer than MaxIdlePipes are idle; any other pipe is closed. p must
// not be used afterwards. A nil p is ignored.
func PutPipe(p *Pipe) {
	if p == nil {
		return
	}
	if p.N == 0 {
		pipes.mu.Lock()
		if len(pipes.idle) < pipes.max {
			pipes.idle = append(pipes.idle, p)
			pipes.mu.Unlock()
			return
		}
		pipes.mu.Unlock()
	}
	p.close()
}

// DropPipe closes p without pooling it, whatever it holds: for a pipe
// whose count (N) cannot be trusted. A nil p is ignored.
func DropPipe(p *Pipe) {
	if p != nil {
		p.close()
	}
}

// ClosePipes closes every idle pipe, for shutdown and tests. Pipes in use are
// not affected.
func ClosePipes() {
	pipes.mu.Lock()
	idle := pipes.idle
	pipes.idle = nil
	pipes.mu.Unlock()
	for _, p := range idle {
		p.close()
	}
}

// IdlePipes returns the number of pipes waiting for reuse.
func IdlePipes() int {
	pipes.mu.Lock()
	defer pipes.mu.Unlock()
	return len(pipes.idle)
}
