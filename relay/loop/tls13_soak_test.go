package loop

import (
	"crypto/sha256"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stream is n deterministic pseudo-random bytes, produced a chunk at a
// time.
type stream struct {
	r *rand.ChaCha8
	n int64
}

func (s *stream) Read(p []byte) (int, error) {
	if s.n == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), s.n)]
	_, _ = s.r.Read(p)
	s.n -= int64(len(p))
	return len(p), nil
}

func newStream(seed byte, n int64) *stream {
	var k [32]byte
	k[0] = seed
	return &stream{rand.NewChaCha8(k), n}
}

// TestOwnRecordsSoak moves a stream each way at once between a crypto/tls
// client and a session on the own record layer, checksummed, with the
// session re-keying its direction every 64 records (crypto/tls follows
// each KeyUpdate). 16 MiB by default (2 MiB with -short); `make tls-soak` sets
// MEETPOINT_TLS_SOAK_BYTES to 1 GiB.
func TestOwnRecordsSoak(t *testing.T) {
	size := int64(16 << 20)
	if testing.Short() {
		size = 2 << 20 // under emulation (make test-arm64) crypto is slow
	}
	if v := os.Getenv("MEETPOINT_TLS_SOAK_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("MEETPOINT_TLS_SOAK_BYTES=%q: %v", v, err)
		}
		size = n
	}
	defer func(n uint64) { keyUpdateAfter = n }(keyUpdateAfter)
	keyUpdateAfter = 64
	s, c, _ := tlsPair(t, serverConf(t), &tls.Config{InsecureSkipVerify: true}, nil)
	if !s.OwnRecordLayer() {
		t.Fatal("the session stayed on crypto/tls")
	}
	_ = c.SetDeadline(time.Time{})
	wr0 := append([]byte(nil), s.rl.wr.secret...)

	// The client: writes its stream, reads and hashes the session's.
	type sum struct {
		h   [32]byte
		n   int64
		err error
	}
	upDone, downDone := make(chan error, 1), make(chan sum, 1)
	go func() {
		_, err := io.CopyBuffer(c, newStream(1, size), make([]byte, 32<<10))
		upDone <- err
	}()
	go func() {
		h := sha256.New()
		n, err := io.Copy(h, io.LimitReader(c, size))
		downDone <- sum{[32]byte(h.Sum(nil)), n, err}
	}()

	// The session: one goroutine, as a loop drives it: read what is
	// there, write what the socket takes, wait for either.
	src := newStream(2, size)
	h := sha256.New()
	var got int64
	in, obuf := make([]byte, 64<<10), make([]byte, 64<<10)
	var out []byte
	sent, srcDone := int64(0), false
	deadline := time.Now().Add(time.Duration(size>>20+10) * time.Second * 2)
	for got < size || sent < size || s.Flush() == unix.EAGAIN {
		if time.Now().After(deadline) {
			t.Fatalf("soak stalled: read %d, sent %d of %d", got, sent, size)
		}
		n, err := s.Read(in)
		h.Write(in[:n])
		got += int64(n)
		if err != nil && err != unix.EAGAIN {
			t.Fatalf("session read after %d bytes: %v", got, err)
		}
		if len(out) == 0 && !srcDone {
			m, _ := io.ReadFull(src, obuf)
			out, srcDone = obuf[:m], m < len(obuf)
		}
		blocked := false
		if len(out) > 0 {
			m, err := s.Write(out)
			sent += int64(m)
			out = out[m:]
			if err == unix.EAGAIN {
				blocked = true
			} else if err != nil {
				t.Fatalf("session write after %d bytes: %v", sent, err)
			}
		}
		if n == 0 && (blocked || len(out) == 0 && srcDone) {
			ev := int16(unix.POLLIN)
			if blocked || s.Flush() == unix.EAGAIN {
				ev |= unix.POLLOUT
			}
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(s.Fd()), Events: ev}}, 50)
		}
	}
	if err := <-upDone; err != nil {
		t.Fatalf("client write: %v", err)
	}
	if [32]byte(h.Sum(nil)) != streamSum(1, size) {
		t.Fatal("client → session: checksum differs")
	}
	d := <-downDone
	if d.err != nil || d.n != size || d.h != streamSum(2, size) {
		t.Fatalf("session → client: %d of %d bytes, %v, checksum equal %v", d.n, size, d.err, d.h == streamSum(2, size))
	}
	if string(s.rl.wr.secret) == string(wr0) {
		t.Fatal("the session never re-keyed")
	}
	t.Logf("%d bytes each way, write sequence under the last key %d", size, s.rl.wr.seq)
}

// streamSum is the SHA-256 of newStream(seed, n).
func streamSum(seed byte, n int64) [32]byte {
	h := sha256.New()
	_, _ = io.Copy(h, newStream(seed, n))
	return [32]byte(h.Sum(nil))
}
