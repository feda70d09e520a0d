package ops

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
)

// TestMonitorSocketNeverWider: the monitor socket is 0660 from the moment
// its path exists, whatever the process's umask: a socket bound at its
// final path under umask 0 and only then chmodded is, for a moment,
// srwxrwxrwx, and anyone on the machine who connects then keeps the
// connection. The umask is process-wide, so the check runs in a child
// process of the test binary.
func TestMonitorSocketNeverWider(t *testing.T) {
	if os.Getenv("MEETPOINT_TEST_UMASK0") != "1" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMonitorSocketNeverWider$", "-test.count=1")
		cmd.Env = append(os.Environ(), "MEETPOINT_TEST_UMASK0=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("under umask 0: %v\n%s", err, out)
		}
		return
	}
	syscall.Umask(0)
	s := server(t, nil)
	path := filepath.Join(t.TempDir(), "monitor.sock")
	var wider atomic.Uint32 // the widest mode seen at path, beyond 0660
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if fi, err := os.Lstat(path); err == nil && fi.Mode().Perm()&^0o660 != 0 {
				wider.Store(uint32(fi.Mode().Perm()))
			}
		}
	}()
	for i := 0; i < 500 && wider.Load() == 0; i++ {
		cl, err := ServeMonitor(s, path)
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o660 {
			t.Fatalf("socket after ServeMonitor: %v %v, want mode 0660", fi, err)
		}
		cl.Close()
	}
	close(stop)
	<-done
	if m := wider.Load(); m != 0 {
		t.Fatalf("the socket existed at %s with mode %#o, wider than 0660", path, m)
	}
}
