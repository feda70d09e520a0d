package relay

// Leak check: after thousands of malformed connections of every kind the
// relay's goroutines, file descriptors and RSS are back at their baseline,
// and its connection gauges, client list and pairing registry are empty.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// lkConns is how many malformed connections TestLeakMalformedConnections
// makes. 10,000 take about 2 s, and about 6 s under -race, on 2 CPUs: no
// need to scale down for the race detector.
func lkConns() int { return 10000 }

const lkConcurrency = 64

// lkUpgrade is a valid WebSocket upgrade request.
const lkUpgrade = "GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// lkKinds is the number of kinds of malformed connection lkOne makes.
const lkKinds = 10

// lkServers are the two relays the leak test talks to: short, the one
// whose short timeouts end the truncated heads, and patient, whose
// timeouts are out of reach, for the kinds that must authenticate and
// pair (on a loaded machine that can take longer than short's 1 s
// handshake timeout; those kinds end without any timer).
type lkServers struct{ short, patient *Server }

func (ss lkServers) each(f func(*Server)) { f(ss.short); f(ss.patient) }

// lkOne makes malformed connection number i (its kind is i % lkKinds). It
// reports whether the server ended it when it should have (kinds the client
// ends itself always report true).
func lkOne(ss lkServers, i int, hello []byte) (ok bool, what string) {
	r := rand.New(rand.NewPCG(uint64(i), 0x1ea4))
	addr := serverAddr(ss.short)
	if kind := i % lkKinds; kind == 8 || kind == 9 {
		addr = serverAddr(ss.patient)
	}
	c, err := net.DialTimeout("tcp", addr, testutil.Patience)
	if err != nil {
		return false, "dial: " + err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testutil.Patience))
	serverCloses := true
	switch kind := i % lkKinds; kind {
	case 0: // random bytes
		junk := make([]byte, 1+r.IntN(512))
		for j := range junk {
			junk[j] = byte(r.Uint32())
		}
		_, _ = c.Write(junk)
	case 1: // bad HTTP
		heads := []string{
			strings.Replace(lkUpgrade, "dGhlIHNhbXBsZSBub25jZQ==", "short", 1),
			strings.Replace(lkUpgrade, "Version: 13", "Version: 8", 1),
			strings.Replace(lkUpgrade, "GET", "POST", 1),
			"GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Pad: aaaaaaaaaaaaaaaaaaaa\r\n", 400), // > MaxHeader
			"GET /nothing-here HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",                     // served by net/http, which then closes
			"GET / HTTP/1.1\r\nHost: x\r\nUpgr",                                                      // truncated: the handshake timeout ends it
			"GET /\r\n\r\n",
		}
		_, _ = c.Write([]byte(heads[r.IntN(len(heads))]))
	case 2: // WebSocket upgrade and a bad frame in the same write
		frames := [][]byte{
			clientFrame(0x81, true, -1, []byte(`{"id":1}`)),                                    // unmasked
			clientFrame(0xc1, false, -1, []byte("rsv")),                                        // RSV1
			clientFrame(0x83, false, -1, nil),                                                  // reserved opcode
			maskedFrame(ws.OpClose, true, closePayload(1005, "")),                              // bad close code
			maskedFrame(ws.OpText, true, []byte("\xed\xa0\x80")),                               // invalid UTF-8
			clientFrame(0x82, false, 1<<40, nil),                                               // huge length
			clientFrame(0x09, false, -1, []byte("fragmented ping")),                            // fragmented control
			maskedFrame(ws.OpBinary, true, []byte{1, 2, 3}),                                    // binary before auth
			maskedFrame(ws.OpText, false, []byte(strings.Repeat(" ", 200))),                    // unfinished message, then client goes
			append(maskedFrame(ws.OpText, true, hello), maskedFrame(ws.OpPing, false, nil)...), // valid request, then violation
		}
		f := frames[r.IntN(len(frames))]
		_, _ = c.Write(append([]byte(lkUpgrade), f...))
		if f[0] == 0x01 {
			serverCloses = false // an unfinished message: the client leaves
		}
	case 3: // bad JSON over TCP
		msgs := []string{
			`{"id":1,"method":}`,
			`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":5,"name":"n","token":"t"}}`,
			`{"id":1,"method":"No.Such"}`,
			strings.Repeat(`{"a":[`, 100),
			`{"id":1,"method":"RemoteProxy.Hello","params":{"x":"` + strings.Repeat("a", 11<<10),
			`{}`,
		}
		_, _ = c.Write([]byte(msgs[r.IntN(len(msgs))] + "\n"))
	case 4: // bad JSON over WebSocket
		msgs := []string{`[]`, `{"id":1,"method":}`, `1`, strings.Repeat("[", 3000) + strings.Repeat("]", 3000),
			`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":"x"}}`}
		_, _ = c.Write(append([]byte(lkUpgrade), maskedFrame(ws.OpText, true, []byte(msgs[r.IntN(len(msgs))]))...))
	case 5: // silent, or a partial head, then the client leaves
		if r.IntN(2) == 0 {
			_, _ = c.Write([]byte("GE"))
		}
		if r.IntN(2) == 0 {
			time.Sleep(time.Millisecond)
		}
		return true, ""
	case 6: // half-closed: a partial head then FIN; the client leaves soon
		_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n"))
		_ = c.(*net.TCPConn).CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, _ = io.Copy(io.Discard, c)
		return true, ""
	case 7: // a TLS ClientHello, TLS not being configured
		_, _ = c.Write(lkClientHello)
	case 8: // authenticated, waiting for a partner, then gone
		fmt.Fprintf(c, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"%s","name":"x","token":"leak-alone-%d"}}`+"\n", newTestUUID(), i)
		br := bufio.NewReader(c)
		if _, err := br.ReadBytes('\n'); err != nil {
			return false, "authenticate: " + err.Error()
		}
		return true, ""
	case 9: // a WS↔WS tunnel whose one side breaks the protocol
		return lkTunnel(addr, c, i)
	}
	if !serverCloses {
		return true, ""
	}
	_, err = io.Copy(io.Discard, c)
	if err != nil && !isClosed(err) {
		return false, fmt.Sprintf("kind %d: not closed by the server: %v", i%lkKinds, err)
	}
	return true, ""
}

var lkClientHello []byte

// lkTunnel pairs c with a second WebSocket client over raw bytes, then c
// sends a frame with RSV bits set: both must be closed by the relay.
func lkTunnel(addr string, c net.Conn, i int) (bool, string) {
	d, err := net.DialTimeout("tcp", addr, testutil.Patience)
	if err != nil {
		return false, "dial: " + err.Error()
	}
	defer d.Close()
	_ = d.SetDeadline(time.Now().Add(testutil.Patience))
	token := fmt.Sprintf("leak-tunnel-%d", i)
	for _, x := range []net.Conn{c, d} {
		auth := fmt.Sprintf(`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"%s","name":"x","token":"%s"}}`, newTestUUID(), token)
		if _, err := x.Write(append([]byte(lkUpgrade), maskedFrame(ws.OpText, true, []byte(auth))...)); err != nil {
			return false, "write: " + err.Error()
		}
	}
	for _, x := range []net.Conn{c, d} {
		var got []byte
		buf := make([]byte, 1024)
		for !bytes.Contains(got, []byte("TunnelEstablished")) {
			n, err := x.Read(buf)
			if err != nil {
				return false, fmt.Sprintf("waiting for the tunnel: %v (%q)", err, got)
			}
			got = append(got, buf[:n]...)
		}
	}
	_, _ = c.Write(clientFrame(0xa2, false, -1, []byte("rsv2")))
	for _, x := range []net.Conn{c, d} {
		if _, err := io.Copy(io.Discard, x); err != nil && !isClosed(err) {
			return false, "tunnel not closed: " + err.Error()
		}
	}
	return true, ""
}

// lkRun makes n malformed connections, lkConcurrency at a time, starting
// at number from.
func lkRun(t *testing.T, ss lkServers, from, n int) {
	t.Helper()
	hello := []byte(`{"id":1,"method":"RemoteProxy.Hello"}`)
	var next atomic.Int64
	next.Store(int64(from))
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for range lkConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= from+n {
					return
				}
				if ok, what := lkOne(ss, i, hello); !ok {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("connection %d: %s", i, what))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d connections misbehaved, e.g.:\n%s\nrelays' closes: %v (short timeouts), %v (patient)", len(failures), n,
			strings.Join(failures[:min(10, len(failures))], "\n"), ss.short.Stats().Closes, ss.patient.Stats().Closes)
	}
}

func lkFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// lkIdle waits until the relays hold no connection, tunnel or registry
// entry.
func lkIdle(t *testing.T, ss lkServers) {
	t.Helper()
	ss.each(func(s *Server) {
		var st Stats
		var clients, keys int
		for end := time.Now().Add(testutil.Patience); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			st = s.Stats()
			clients, keys = len(s.Snapshot().Clients), s.reg.Len()
			if st.ConnectionsTCP == 0 && st.ConnectionsWS == 0 && st.TunnelsActive == 0 && clients == 0 && keys == 0 {
				return
			}
		}
		t.Fatalf("relay not idle: %d TCP and %d WS connections, %d tunnels, %d clients listed, %d registry keys",
			st.ConnectionsTCP, st.ConnectionsWS, st.TunnelsActive, clients, keys)
	})
}

// TestLeakMalformedConnections makes 10,000 malformed connections, 64 at a
// time: random bytes, bad HTTP, bad WebSocket frames,
// bad JSON over TCP and WebSocket, silent and half-closed connections left
// by the client, TLS without TLS, clients that vanish while waiting, and
// tunnels broken by a protocol violation. Afterwards the relay's
// goroutines, descriptors and RSS must be back at their baseline.
func TestLeakMalformedConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("makes thousands of connections")
	}
	// Not parallel: goroutines, descriptors and RSS are process-wide.
	ss := lkServers{
		// Short enough to end the truncated heads quickly.
		short: shortTimeoutServer(t, func(c *Config) {
			c.HandshakeTimeout = time.Second
			c.InactiveTimeout = 3 * time.Second
			c.AloneTimeout = 3 * time.Second
		}),
		// Out of reach: pairing under load must not race a timer.
		patient: shortTimeoutServer(t, func(c *Config) {
			c.HandshakeTimeout = time.Hour
			c.InactiveTimeout = time.Hour
			c.AloneTimeout = time.Hour
		}),
	}
	lkClientHello = tlsClientHello(t)

	// Warm up every path (pools, loops, forwarders, the heap
	// and the race detector's shadow memory at this concurrency), then
	// take the baseline with every client descriptor closed. A leak grows
	// with the number of connections; the warm-up's cost does not.
	lkRun(t, ss, 0, 2000)
	lkIdle(t, ss)
	time.Sleep(200 * time.Millisecond)
	debug.FreeOSMemory() // RSS then counts what is in use, not what the GC kept
	baseG, baseFD, baseRSS := runtime.NumGoroutine(), lkFDs(t), testutil.RSS(t)

	n := lkConns()
	start := time.Now()
	lkRun(t, ss, 1_000_000, n)
	elapsed := time.Since(start)
	lkIdle(t, ss)

	var g, fds int
	var rss int64
	for end := time.Now().Add(testutil.Patience); ; time.Sleep(50 * time.Millisecond) {
		debug.FreeOSMemory()
		g, fds, rss = runtime.NumGoroutine(), lkFDs(t), testutil.RSS(t)
		if (g <= baseG+16 && fds <= baseFD+4) || time.Now().After(end) {
			break
		}
	}
	var closes uint64
	all := map[string]uint64{}
	ss.each(func(s *Server) {
		for k, v := range s.Stats().Closes {
			closes += v
			all[k] += v
		}
	})
	t.Logf("%d malformed connections in %v: goroutines %d → %d, fds %d → %d, RSS %d → %d MiB; closes counted %d %v",
		n, elapsed.Round(time.Millisecond), baseG, g, baseFD, fds, baseRSS>>20, rss>>20, closes, all)
	if g > baseG+16 {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines: %d at baseline, %d after %d malformed connections:\n%s", baseG, g, n, buf[:runtime.Stack(buf, true)])
	}
	if fds > baseFD+4 {
		t.Fatalf("file descriptors: %d at baseline, %d after %d malformed connections", baseFD, fds, n)
	}
	if rss > baseRSS+32<<20 {
		t.Fatalf("RSS: %d MiB at baseline, %d MiB after %d malformed connections", baseRSS>>20, rss>>20, n)
	}
	if closes < uint64(n) {
		t.Fatalf("only %d closes counted for %d connections", closes, n)
	}
	ss.each(func(s *Server) { expectServes(t, s) })
}
