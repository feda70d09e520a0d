package pool

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// freshPipes empties the idle stack before and after the test.
func freshPipes(t *testing.T) {
	t.Helper()
	ClosePipes()
	t.Cleanup(ClosePipes)
}

func isOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

func assertClosed(t *testing.T, p *Pipe) {
	t.Helper()
	for _, fd := range []int{p.R, p.W} {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if !errors.Is(err, unix.EBADF) {
			t.Errorf("fd %d: F_GETFD error %v, want EBADF", fd, err)
		}
	}
}

func TestPipeWorks(t *testing.T) {
	freshPipes(t)
	p, err := GetPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer PutPipe(p)
	if p.N != 0 {
		t.Fatalf("new pipe N = %d", p.N)
	}
	for _, fd := range []int{p.R, p.W} {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Fatalf("fd %d: flags %#x err %v, want FD_CLOEXEC", fd, flags, err)
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_NONBLOCK == 0 {
			t.Fatalf("fd %d: status %#x err %v, want O_NONBLOCK", fd, fl, err)
		}
	}
	if _, err := unix.Write(p.W, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	n, err := unix.Read(p.R, buf)
	if err != nil || string(buf[:n]) != "abc" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if _, err := unix.Read(p.R, buf); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("read on empty pipe: %v, want EAGAIN", err)
	}
}

func TestPipeReuse(t *testing.T) {
	freshPipes(t)
	p, err := GetPipe()
	if err != nil {
		t.Fatal(err)
	}
	PutPipe(p)
	if n := IdlePipes(); n != 1 {
		t.Fatalf("IdlePipes = %d, want 1", n)
	}
	q, err := GetPipe()
	if err != nil {
		t.Fatal(err)
	}
	if q != p {
		t.Fatal("the idle pipe was not reused")
	}
	if n := IdlePipes(); n != 0 {
		t.Fatalf("IdlePipes = %d, want 0", n)
	}
	PutPipe(q)
}

func TestPipeNotEmptyClosed(t *testing.T) {
	freshPipes(t)
	p, err := GetPipe()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(p.W, []byte("x")); err != nil {
		t.Fatal(err)
	}
	p.N = 1
	PutPipe(p)
	if n := IdlePipes(); n != 0 {
		t.Fatalf("IdlePipes = %d, want 0", n)
	}
	assertClosed(t, p)
	PutPipe(nil) // ignored
}

func TestPipeIdleBound(t *testing.T) {
	freshPipes(t)
	defer func(m int) { pipes.max = m }(pipes.max)
	pipes.max = 3

	var ps []*Pipe
	for range 5 {
		p, err := GetPipe()
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	for _, p := range ps {
		PutPipe(p)
	}
	if n := IdlePipes(); n != 3 {
		t.Fatalf("IdlePipes = %d, want 3", n)
	}
	for _, p := range ps[:3] {
		if !isOpen(p.R) || !isOpen(p.W) {
			t.Fatalf("idle pipe %v was closed", p)
		}
	}
	for _, p := range ps[3:] {
		assertClosed(t, p)
	}
}

func TestClosePipes(t *testing.T) {
	freshPipes(t)
	var ps []*Pipe
	for range 4 {
		p, err := GetPipe()
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	for _, p := range ps {
		PutPipe(p)
	}
	ClosePipes()
	if n := IdlePipes(); n != 0 {
		t.Fatalf("IdlePipes = %d after ClosePipes, want 0", n)
	}
	for _, p := range ps {
		assertClosed(t, p)
	}
}

func TestPipeConcurrent(t *testing.T) {
	freshPipes(t)
	done := make(chan error)
	for range 8 {
		go func() {
			for range 200 {
				p, err := GetPipe()
				if err != nil {
					done <- err
					return
				}
				PutPipe(p)
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if n := IdlePipes(); n < 1 || n > 8 {
		t.Fatalf("IdlePipes = %d, want 1..8", n)
	}
}

func TestPipeDefaultBound(t *testing.T) {
	if pipes.max != MaxIdlePipes {
		t.Fatalf("bound %d, want %d", pipes.max, MaxIdlePipes)
	}
}
