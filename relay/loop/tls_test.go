package loop

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// TestNBConnWrite: the TLS adapter's Write honours io.Writer: n is the
// number of bytes accepted (it once returned 0 after a full write).
func TestNBConnWrite(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	nb := &nbConn{fd: fds[0]}
	defer nb.Close()
	p := []byte("hello, world")
	n, err := nb.Write(p)
	if err != nil || n != len(p) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(p))
	}
	// Past the socket's buffer the rest is pending, still accepted whole,
	// until MaxTLSPending.
	big := make([]byte, 1<<20)
	n, err = nb.Write(big)
	if err != ErrTLSPending || n >= len(big) {
		t.Fatalf("Write of 1 MiB to a full socket = %d, %v; want a short count and ErrTLSPending", n, err)
	}
}

// TestNBConnWriteToClosedPeer: a write the socket refuses (the peer has
// gone: EPIPE) fails at once; it was queued as pending and reported
// written, the error left for a later flush.
func TestNBConnWriteToClosedPeer(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fds[1])
	nb := &nbConn{fd: fds[0]}
	defer nb.Close()
	if n, err := nb.Write([]byte("hello")); err == nil || n != 0 || len(nb.pending) != 0 {
		t.Fatalf("Write to a socket whose peer has gone = %d, %v, %d bytes pending; want 0, EPIPE, none", n, err, len(nb.pending))
	}
}

// TestNBConnDeadlinesApart: in the blocking phase a write deadline does
// not end a read (it once set both, so a TLS WebSocket session that wrote
// with a 10 s deadline lost its reader after 10 s of silence).
func TestNBConnDeadlinesApart(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	f := os.NewFile(uintptr(fds[0]), "pair")
	hs, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	nb := &nbConn{hs: hs, fd: -1}
	defer hs.Close()
	if err := nb.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := nb.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil { // as a writer does after the reader set its own
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		_, _ = unix.Write(fds[1], []byte("late"))
	}()
	buf := make([]byte, 8)
	if n, err := nb.Read(buf); err != nil || string(buf[:n]) != "late" {
		t.Fatalf("read after the write deadline passed: %q, %v; want the bytes", buf[:n], err)
	}
	if _, err := nb.Write([]byte("x")); err == nil {
		t.Fatal("a write past its deadline succeeded")
	}
}

// TestTLSSessionSealsAChunkInOneWrite: one Read returns a 64 KiB burst
// whole; one Write seals a whole 64 KiB
// chunk (several records) and writes it with one write(2) — on loopback
// with TCP_NODELAY the peer receives it in at most two segments (its MSS
// is just under 64 KiB), where a write per 16 KiB record made four — and
// keeps no buffer once written.
func TestTLSSessionSealsAChunkInOneWrite(t *testing.T) {
	cert := testutil.Cert(t, "relay", nil, false, net.IPv4(127, 0, 0, 1))
	plain := &tls.Config{Certificates: []tls.Certificate{cert}}
	t.Run("crypto_tls", func(t *testing.T) { sealsAChunkInOneWrite(t, plain) })
	t.Run("own_records", func(t *testing.T) { sealsAChunkInOneWrite(t, OwnRecords(plain)) })
}

// writeCounts are the write(2) calls that moved s's ciphertext, and the
// short ones among them.
func writeCounts(s *TLSSession) (writes, short int) {
	if s.rl != nil {
		s.rl.wmu.Lock()
		defer s.rl.wmu.Unlock()
		return s.rl.writes, s.rl.short
	}
	return s.ad.writes, s.ad.short
}

func sealsAChunkInOneWrite(t *testing.T, conf *tls.Config) {
	s, cc, _ := tlsPair(t, conf, &tls.Config{InsecureSkipVerify: true}, nil)
	if _, own := conf.KeyLogWriter.(keyLog); s.OwnRecordLayer() != own {
		t.Fatalf("own record layer %v; want %v", s.OwnRecordLayer(), own)
	}
	// A first byte read through: whatever the handshake still sent
	// (session tickets) has arrived before it.
	if n, err := s.Write([]byte("x")); n != 1 || err != nil {
		t.Fatalf("Write of 1 byte = %d, %v", n, err)
	}
	if _, err := io.ReadFull(cc, make([]byte, 1)); err != nil {
		t.Fatalf("first byte: %v", err)
	}
	writes0, short0 := writeCounts(s)
	p := make([]byte, 64<<10)
	for i := range p {
		p[i] = byte(i * 7)
	}
	n, err := s.Write(p)
	if err != nil || n != len(p) {
		t.Fatalf("Write of 64 KiB = %d, %v; want all of it in one call", n, err)
	}
	if err := s.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if s.ad.pending != nil || s.ad.sealed != nil {
		t.Errorf("a buffer kept after the write: %d bytes", cap(s.ad.pending))
	}
	if s.rl != nil {
		idleHoldsNothing(t, s)
	}
	got := make([]byte, len(p))
	_ = cc.SetReadDeadline(time.Now().Add(testutil.Patience))
	if _, err := io.ReadFull(cc, got); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("the peer read %v, equal %v", err, bytes.Equal(got, p))
	}
	// One write(2) for the whole chunk, and one more only each time the
	// socket took part of it (on a loaded machine it may): never one per
	// record.
	writes1, short1 := writeCounts(s)
	if w, sh := writes1-writes0, short1-short0; w < 1 || w > 1+sh {
		t.Errorf("64 KiB went out in %d write(2) calls, %d of them short: want one, plus one per short write", w, sh)
	}

	// The other way, once all of it has arrived: one Read takes the four
	// records whole.
	if _, err := cc.Write(p); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, func() bool {
		q, err := unix.IoctlGetInt(s.Fd(), unix.SIOCINQ)
		return err == nil && q > len(p)
	}, "64 KiB of ciphertext in the relay's socket")
	if n, err := s.Read(got); err != nil || n != len(p) || !bytes.Equal(got, p) {
		t.Fatalf("Read = %d, %v; want all 64 KiB in one call", n, err)
	}
}
