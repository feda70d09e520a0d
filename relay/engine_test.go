package relay

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay/internal/strict"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// rawTunnel is a minimal raw-TCP legacy client: it authenticates and waits
// for TunnelEstablished, leaving the socket's buffers under the caller's
// control. br holds bytes read past the notification; w is where the
// tunnel's bytes are written (the socket, or its TLS session).
type rawTunnel struct {
	*net.TCPConn
	br *bufio.Reader
	w  io.Writer
}

// stream is the tunnel's byte stream through the session it was opened
// on (TLS where MEETPOINT_TEST_CLIENTS_TLS is set).
func (r *rawTunnel) stream() io.ReadWriter {
	return struct {
		io.Reader
		io.Writer
	}{r.br, r.w}
}

func dialRawTunnel(addr, token, nonce, name string, setup func(*net.TCPConn)) (*rawTunnel, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if setup != nil {
		setup(tc)
	}
	var rw net.Conn = tc
	if os.Getenv(clientsTLSEnv) != "" { // measuring TLS tunnels (see runClients)
		tlsc := tls.Client(tc, &tls.Config{InsecureSkipVerify: true})
		if err := tlsc.Handshake(); err != nil {
			tc.Close()
			return nil, err
		}
		rw = tlsc
	}
	req := fmt.Sprintf(`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"%s","name":"%s","token":"%s","nonce":"%s"}}`+"\n",
		newTestUUID(), name, token, nonce)
	if _, err := rw.Write([]byte(req)); err != nil {
		tc.Close()
		return nil, err
	}
	br := bufio.NewReader(rw)
	for {
		_ = tc.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := br.ReadBytes('\n')
		if err != nil {
			tc.Close()
			return nil, fmt.Errorf("waiting for tunnel: %w", err)
		}
		if bytes.Contains(line, []byte(`"AuthenticationError`)) && !bytes.Contains(line, []byte("NoError")) {
			tc.Close()
			return nil, errors.New(string(line))
		}
		if bytes.Contains(line, []byte("RemoteProxy.TunnelEstablished")) {
			_ = tc.SetReadDeadline(time.Time{})
			return &rawTunnel{tc, br, rw}, nil
		}
	}
}

func newTestUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func rawPair(t testing.TB, addr, token string, setupA, setupB func(*net.TCPConn)) (*rawTunnel, *rawTunnel) {
	t.Helper()
	type res struct {
		c   *rawTunnel
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := dialRawTunnel(addr, token, "", "a", setupA)
		ch <- res{c, err}
	}()
	b, err := dialRawTunnel(addr, token, "", "b", setupB)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close(); b.Close() })
	return r.c, b
}

// TestBackpressure: a sender blasting into a receiver that never reads must
// be stopped by TCP flow control, not buffered by the relay; after
// WriteStallTimeout the tunnel is closed.
func TestBackpressure(t *testing.T) {
	s := startServer(t, func(c *Config) { c.WriteStallTimeout = 1500 * time.Millisecond })
	addr := s.Addrs()[0].String()
	small := func(c *net.TCPConn) { _ = c.SetReadBuffer(64 << 10); _ = c.SetWriteBuffer(64 << 10) }
	sender, receiver := rawPair(t, addr, "bp", small, small)
	_ = receiver // never reads

	runtime.GC()
	before := testutil.RSS(t)
	chunk := make([]byte, 64<<10)
	var sent int64
	deadline := time.Now().Add(1 * time.Second)
	_ = sender.SetWriteDeadline(deadline)
	for sent < 512<<20 {
		n, err := sender.Write(chunk)
		sent += int64(n)
		if err != nil {
			break
		}
	}
	after := testutil.RSS(t)
	t.Logf("sender got %d KiB into the path before blocking; RSS delta %d KiB", sent>>10, (after-before)>>10)
	// Socket buffers on both sides (auto-tuned up to a few MiB on loopback)
	// plus the relay's 64 KiB: a relay that kept reading would take it all.
	if sent > 48<<20 {
		t.Fatalf("sender pushed %d MiB into a stalled tunnel: relay is not applying backpressure", sent>>20)
	}
	if after-before > 64<<20 {
		t.Fatalf("RSS grew by %d MiB while the receiver stalled", (after-before)>>20)
	}
	// The stalled receiver makes the relay close the tunnel.
	_ = sender.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	for {
		if _, err := sender.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("tunnel not closed after write stall timeout")
			}
			break
		}
	}
	waitFor(t, func() bool { return s.Stats().Closes["write_stall"] >= 1 }, "write_stall counted")
}

// clientsEnv makes the test binary act as a client fleet (see TestMain):
// the clients of the goroutine test live in a subprocess so the relay's
// process holds only its own descriptors.
const clientsEnv = "MEETPOINT_TEST_CLIENTS"

// clientsTLSEnv makes those clients speak TLS (for memory measurements of
// TLS tunnels: docs/BENCHMARKS.md).
const clientsTLSEnv = "MEETPOINT_TEST_CLIENTS_TLS"

// clientsBurstEnv makes every tunnel of those clients carry that many
// bytes each way once, before they are held idle (memory after traffic).
const clientsBurstEnv = "MEETPOINT_TEST_CLIENTS_BURST"

// runClients opens tunnels, alone-waiting clients and silent connections
// against addr, prints "ready" and holds them until stdin closes.
func runClients(spec string) {
	var addr string
	var tunnels, alone, silent int
	fmt.Sscanf(spec, "%s %d %d %d", &addr, &tunnels, &alone, &silent)
	burst, _ := strconv.Atoi(os.Getenv(clientsBurstEnv))
	var mu sync.Mutex
	var held []net.Conn
	var failed error
	pairs := make([][2]*rawTunnel, tunnels)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range tunnels {
		for side := range 2 {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, err := dialRawTunnel(addr, "t"+strconv.Itoa(i), "", "s"+strconv.Itoa(side), nil)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed = err
					return
				}
				held = append(held, c)
				pairs[i][side] = c
			}()
		}
	}
	wg.Wait()
	for i := 0; burst > 0 && failed == nil && i < tunnels; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := burstBothWays(pairs[i][0].stream(), pairs[i][1].stream(), burst); err != nil {
				mu.Lock()
				failed = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for i := range alone {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			fmt.Fprintf(c, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"%s","name":"x","token":"alone%d"}}`+"\n", newTestUUID(), i)
			held = append(held, c)
		} else {
			failed = err
		}
	}
	for range silent {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			held = append(held, c)
		} else {
			failed = err
		}
	}
	if failed != nil {
		fmt.Println("error:", failed)
		os.Exit(1)
	}
	fmt.Println("ready")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	for _, c := range held {
		c.Close()
	}
	os.Exit(0)
}

// burstBothWays sends n bytes from a to b and from b to a at once and
// reads them at the other end.
func burstBothWays(a, b io.ReadWriter, n int) error {
	errs := make(chan error, 2)
	for _, c := range []io.ReadWriter{a, b} {
		go func() { _, err := c.Write(make([]byte, n)); errs <- err }()
	}
	for _, c := range []io.ReadWriter{b, a} {
		if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
			return err
		}
	}
	if err := <-errs; err != nil {
		return err
	}
	return <-errs
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(clientsEnv); spec != "" {
		runClients(spec)
	}
	strictMoves = true        // every move the tests drive is checked against the successor table
	strict.Faults.Store(true) // a panic a fault barrier would contain ends the run instead of passing unseen
	code := m.Run()
	if !reflect.ValueOf(noAuth).IsZero() { // view's shared zero part: read, never written
		fmt.Fprintf(os.Stderr, "relay tests: a path wrote through conn.view(): noAuth is %+v\n", noAuth)
		code = 1
	}
	os.Exit(code)
}

// TestNoGoroutinePerIdleConnection holds 5,000 idle tunnels plus clients
// waiting alone and silent connections, and checks the relay's goroutine
// count does not grow with them.
func TestNoGoroutinePerIdleConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 21,000 sockets")
	}
	const tunnels, alone, silent = 5000, 500, 500
	s := startServer(t, func(c *Config) {
		c.InactiveTimeout = 2 * time.Minute
		c.AloneTimeout = 2 * time.Minute
	})
	runtime.GC()
	base := runtime.NumGoroutine()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d %d", clientsEnv, s.Addrs()[0], tunnels, alone, silent))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("clients: %q %v", line, err)
	}
	waitFor(t, func() bool { return s.Stats().TunnelsActive == tunnels }, "all tunnels active")
	waitFor(t, func() bool {
		snap := s.Snapshot()
		return len(snap.Tunnels) == tunnels && len(snap.Clients) == alone+silent
	}, "snapshot lists every tunnel and client")
	// Authenticator and handshake goroutines retire shortly after the last
	// pairing.
	n := runtime.NumGoroutine()
	for end := time.Now().Add(3 * time.Second); n > base+32 && time.Now().Before(end); n = runtime.NumGoroutine() {
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("goroutines: %d before, %d with %d tunnels + %d alone + %d silent connections", base, n, tunnels, alone, silent)
	if n > base+32 {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines grew from %d to %d with idle connections:\n%s", base, n, buf[:runtime.Stack(buf, true)])
	}
	st := s.Stats()
	b, _ := json.Marshal(st)
	t.Logf("stats: %s", b)
}
