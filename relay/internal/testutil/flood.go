package testutil

import (
	"errors"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
)

// FloodBound is the most a relay's RSS may grow while one connection
// floods it with input that never completes a stage.
const FloodBound = 32 << 20

// RSS is this process's resident set size.
func RSS(t testing.TB) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// Flood writes chunk to c as fast as it can for d (or until the relay
// closes c) and returns the process's RSS growth meanwhile, at its peak.
func Flood(t testing.TB, c net.Conn, chunk []byte, d time.Duration) int64 {
	t.Helper()
	runtime.GC()
	base := RSS(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			_ = c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			var ne net.Error
			if _, err := c.Write(chunk); err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				return
			}
		}
	}()
	var peak int64
	for {
		select {
		case <-done:
			return max(peak, RSS(t)-base)
		case <-time.After(20 * time.Millisecond):
			peak = max(peak, RSS(t)-base)
		}
	}
}

// Mask is the mask of the client frames tests send.
var Mask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// Frame is a masked client frame.
func Frame(op ws.OpCode, fin bool, payload []byte) []byte {
	return handshake.AppendFrameMasked(nil, op, fin, payload, Mask)
}

// Pings is a run of n masked pings with 125-byte payloads.
func Pings(n int) []byte {
	payload := make([]byte, 125)
	var out []byte
	for range n {
		out = append(out, Frame(ws.OpPing, true, payload)...)
	}
	return out
}
