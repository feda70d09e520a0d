package relaytest

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
)

// Stream is one tunnel under traffic, for the fault tests: both ends write
// a numbered byte sequence (512 bytes every 5 ms) and read the other's,
// checking each byte. After a fault, every byte must have arrived, or the
// tunnel must have ended at both of its ends with a named reason.
type Stream struct {
	// Name labels the tunnel in failures (e.g. "a↔b").
	Name    string
	ends    [2]*client.Tunnel
	sent    [2]atomic.Int64
	got     [2]atomic.Int64
	ended   [2]atomic.Value // string: why the end's reading stopped ("" while it reads)
	bad     atomic.Bool     // a byte out of sequence
	stop    chan struct{}
	writers sync.WaitGroup
	readers sync.WaitGroup
}

func seqByte(i int64, side int) byte { return byte(i*7 + int64(side)*131) }

// StartStream starts traffic both ways through the tunnel whose ends are a
// and b (four goroutines until Close).
func StartStream(name string, a, b *client.Tunnel) *Stream {
	s := &Stream{Name: name, ends: [2]*client.Tunnel{a, b}, stop: make(chan struct{})}
	for side := range 2 {
		s.ended[side].Store("")
		s.writers.Add(1)
		go func() {
			defer s.writers.Done()
			buf := make([]byte, 512)
			for {
				select {
				case <-s.stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				n := s.sent[side].Load()
				for i := range buf {
					buf[i] = seqByte(n+int64(i), side)
				}
				if _, err := s.ends[side].Write(buf); err != nil {
					return
				}
				s.sent[side].Add(int64(len(buf)))
			}
		}()
		s.readers.Add(1)
		go func() {
			defer s.readers.Done()
			other := 1 - side
			buf := make([]byte, 4096)
			for {
				n, err := s.ends[side].Read(buf)
				for i := range n {
					if buf[i] != seqByte(s.got[side].Load(), other) {
						s.bad.Store(true)
					}
					s.got[side].Add(1)
				}
				if err != nil {
					s.ended[side].Store(why(err))
					return
				}
			}
		}()
	}
	return s
}

// why names how a tunnel end stopped reading.
func why(err error) string {
	var ce *client.CloseError
	switch {
	case errors.As(err, &ce):
		r, _, _ := strings.Cut(ce.Reason, ":")
		return fmt.Sprintf("WebSocket %d %q", ce.Code, r)
	case errors.Is(err, io.EOF):
		return "closed"
	}
	return err.Error()
}

// Corrupt reports whether either end received a byte out of sequence.
func (s *Stream) Corrupt() bool { return s.bad.Load() }

// Settle stops the writers and, for a tunnel still up, waits (up to
// Patience) until every byte sent has arrived. It returns the bytes lost
// (sent, not delivered, on a tunnel that did not end: a test error too),
// whether the tunnel ended at both ends, and how ("WebSocket 1011 \"…\" at
// both", "closed at both", or each end's reason).
func (s *Stream) Settle(t testing.TB) (lost int64, endedBoth bool, reasons string) {
	t.Helper()
	close(s.stop)
	s.writers.Wait()
	deadline := time.Now().Add(Patience)
	for time.Now().Before(deadline) {
		e0, e1 := s.ended[0].Load().(string), s.ended[1].Load().(string)
		if e0 != "" && e1 != "" {
			if e0 == e1 {
				return 0, true, e0 + " at both"
			}
			return 0, true, e0 + " / " + e1
		}
		if e0 == "" && e1 == "" && s.got[0].Load() == s.sent[1].Load() && s.got[1].Load() == s.sent[0].Load() {
			return 0, false, ""
		}
		time.Sleep(20 * time.Millisecond)
	}
	e0, e1 := s.ended[0].Load().(string), s.ended[1].Load().(string)
	t.Errorf("tunnel %s neither delivered everything nor ended at both ends: ends %q %q, %d/%d and %d/%d bytes",
		s.Name, e0, e1, s.got[0].Load(), s.sent[1].Load(), s.got[1].Load(), s.sent[0].Load())
	return s.sent[0].Load() - s.got[1].Load() + s.sent[1].Load() - s.got[0].Load(), false, e0 + " / " + e1
}

// Close closes both ends and waits for the readers.
func (s *Stream) Close() {
	for _, e := range s.ends {
		e.Close()
	}
	s.readers.Wait()
}
