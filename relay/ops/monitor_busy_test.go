package ops

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestMonitorBusySocketNotStolen: a socket whose process is alive but
// does not accept right now (its accept queue full: a hung or busy
// relay) is in use, not stale: a second relay must refuse the path
// rather than remove the first one's socket. Only a refused connection
// (ECONNREFUSED: nobody listening) shows a socket is stale.
func TestMonitorBusySocketNotStolen(t *testing.T) {
	s := server(t, nil)
	path := filepath.Join(t.TempDir(), "busy.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // the smallest accept queue: it fills at once
		t.Fatal(err)
	}
	full := false
	for i := 0; i < 16 && !full; i++ {
		c, err := net.Dial("unix", path)
		if err != nil {
			full = true
			break
		}
		defer c.Close()
	}
	if !full {
		t.Skip("the accept queue never filled")
	}
	before, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ServeMonitor(s, path)
	if err == nil {
		cl.Close()
	}
	after, lerr := os.Lstat(path)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("ServeMonitor on a live, busy socket: %v, want an in-use error", err)
	}
	if lerr != nil || !os.SameFile(before, after) {
		t.Errorf("the live process's socket file was replaced or removed (%v)", lerr)
	}
}
