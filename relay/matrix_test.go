package relay

// The race matrix: for each transport pair and each step on the way to a
// tunnel, one side pings, sends data, half-closes or closes — at the exact
// moments a pair is formed included — and the relay must leave no registry
// key, descriptor, goroutine or ticket behind and count the right reasons.

import (
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/pool"
	"github.com/meetpoint/meetpoint/relay/certs"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// mxStep is where on the way to a tunnel the actor acts.
type mxStep int

const (
	mxSniff     mxStep = iota // first byte sent
	mxHead                    // half of the HTTP upgrade request sent (WebSocket only)
	mxBeforeAut               // transport up, Hello answered
	mxAuthing                 // Authenticate sent, reply not read
	mxWaiting                 // authenticated, no partner yet
	mxClaim                   // the partner's Authenticate races the act
	mxHandover                // the completing side acts right after its Authenticate
	mxFirstByte               // in the tunnel, right after the first forwarded byte
	mxSteps
)

var mxStepNames = [...]string{"sniff", "http-head", "before-auth", "authing", "waiting", "at-claim", "hand-over", "first-byte"}

type mxAction int

const (
	mxPing mxAction = iota
	mxData
	mxHalfClose
	mxClose
	mxActions
)

var mxActionNames = [...]string{"ping", "data", "half-close", "close"}

func (m *anyConn) act(a mxAction) {
	switch a {
	case mxPing:
		_ = m.ping()
	case mxData:
		_ = m.send([]byte("early data\n"))
	case mxHalfClose:
		m.halfClose()
	case mxClose:
		m.close()
	}
}

// mxCell is one transport pair, step and action, run reps times.
type mxCell struct {
	kindA, kindB string // the waiting side and the completing side
	step         mxStep
	action       mxAction
	reps         int
}

func (c mxCell) name() string {
	return fmt.Sprintf("%s-%s/%s/%s", c.kindA, c.kindB, mxStepNames[c.step], mxActionNames[c.action])
}

// valid reports whether the cell makes sense: pings are WebSocket frames,
// and only a WebSocket client has an HTTP head.
func (c mxCell) valid() bool {
	actor := c.kindA
	if c.step == mxHandover {
		actor = c.kindB
	}
	isWS := actor == "ws" || actor == "wss"
	switch {
	case c.action == mxPing && (!isWS || c.step < mxBeforeAut):
		return false
	case c.step == mxHead && !isWS:
		return false
	}
	return true
}

// racy reports whether the act races the relay's own work (the hand-over).
func (c mxCell) racy() bool {
	return c.step == mxClaim || c.step == mxHandover || c.step == mxFirstByte
}

// mxOutcome is what one repetition saw.
type mxOutcome struct {
	paired  bool // both sides got TunnelEstablished
	flowed  bool // data went both ways afterwards
	problem string
}

// run plays one repetition: A goes to the step (acting unless the actor
// is B), B follows, and both are driven to their end.
func (c mxCell) run(s *Server, conf *tls.Config, token string, rng *rand.Rand) (out mxOutcome) {
	addr := s.Addrs()[0].String()
	a, err := dialAny(addr, c.kindA, conf)
	if err != nil {
		return mxOutcome{problem: "dial A: " + err.Error()}
	}
	defer a.close()
	// After a ping or data the actor goes on as a client would (the relay
	// has its say); after a half-close or close it stops.
	actedA := false
	actA := func() { a.act(c.action); actedA = c.action == mxHalfClose || c.action == mxClose }
	first := []byte{'{'}
	if a.ws {
		first = []byte{'G'}
	}
	switch c.step {
	case mxSniff:
		_ = a.write(first)
		actA()
		if !actedA { // the rest of what A had started
			if a.ws {
				_ = a.write([]byte(anyUpgradeRequest[1:]))
			} else {
				_ = a.write([]byte(`"id":0,"method":"RemoteProxy.Hello"}` + "\n"))
			}
		}
	case mxHead:
		_ = a.write([]byte(anyUpgradeRequest[:len(anyUpgradeRequest)/2]))
		actA()
		if !actedA {
			_ = a.write([]byte(anyUpgradeRequest[len(anyUpgradeRequest)/2:]))
		}
	}
	if !actedA {
		if c.step <= mxHead {
			a.skipUpgradeRequest = true
		}
		if err := a.upgrade(); err != nil {
			if c.action == mxData {
				return out // the relay refused the garbage: fine
			}
			return mxOutcome{problem: "upgrade A: " + err.Error()}
		}
		_ = a.send([]byte(`{"id":1,"method":"RemoteProxy.Hello"}` + "\n"))
		helloWait := testutil.Patience
		if c.action == mxData { // "{early data" may be an object that never ends: no answer
			helloWait = time.Second
		}
		if _, err := a.recv(helloWait); err != nil && c.action != mxData {
			return mxOutcome{problem: "hello A: " + err.Error()}
		}
		if c.step == mxBeforeAut {
			actA()
		}
	}
	if !actedA {
		_ = a.send(authLine(token, "a"))
		if c.step == mxAuthing {
			actA()
		} else if !a.authed() && c.action != mxData {
			return mxOutcome{problem: "authenticate A refused"}
		}
		if c.step == mxWaiting {
			actA()
		}
	}
	// B arrives.
	b, err := dialAny(addr, c.kindB, conf)
	if err != nil {
		return mxOutcome{problem: "dial B: " + err.Error()}
	}
	defer b.close()
	if err := b.upgrade(); err != nil {
		return mxOutcome{problem: "upgrade B: " + err.Error()}
	}
	switch c.step {
	case mxClaim:
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(rng.IntN(400)) * time.Microsecond)
			actA()
		}()
		_ = b.send(authLine(token, "b"))
		wg.Wait()
	case mxHandover:
		_ = b.send(authLine(token, "b"))
		time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
		b.act(c.action)
	default:
		_ = b.send(authLine(token, "b"))
	}
	// Drive both to the end. Cells that must pair wait long; the others
	// close a client left alone themselves rather than wait for the
	// relay's alone timeout.
	wait := 600 * time.Millisecond
	if c.action == mxPing || c.step == mxFirstByte {
		wait = testutil.Patience
	}
	gotA := !a.done && a.tunnel(wait)
	gotB := !b.done && b.tunnel(wait)
	out.paired = gotA && gotB
	if c.step == mxFirstByte && out.paired {
		actor, other := a, b
		if rng.IntN(2) == 1 {
			actor, other = b, a
		}
		_ = actor.send([]byte("1\n"))
		actor.act(c.action)
		if c.action == mxPing || c.action == mxData {
			if p, err := other.recv(testutil.Patience); err != nil || len(p) == 0 {
				out.problem = fmt.Sprintf("first byte not forwarded: %v", err)
			}
		}
	}
	if out.paired && (c.action == mxPing || (c.step == mxFirstByte && c.action == mxData)) {
		_ = a.send([]byte("from a\n"))
		_ = b.send([]byte("from b\n"))
		pa, ea := a.recv(testutil.Patience)
		pb, eb := b.recv(testutil.Patience)
		out.flowed = ea == nil && eb == nil && len(pa) > 0 && len(pb) > 0
	}
	a.close()
	b.close()
	return out
}

// TestRaceMatrix runs every cell (racy ones many times, concurrently, on
// a server of their own) and checks after each: every connection ended
// and was counted (closes sum to accepted), no registry key is left, the
// counted reasons are ones the cell can produce, pings never broke a
// pairing; and at the end descriptors and goroutines are back to where
// they were.
func TestRaceMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("race matrix: thousands of connections")
	}
	kinds := [][2]string{{"tcp", "tcp"}, {"ws", "ws"}, {"tls", "tls"}, {"wss", "wss"}, {"tcp", "wss"}, {"ws", "tls"}}
	reps := func(c mxCell) int {
		switch {
		case !c.racy():
			return 3
		case strings.HasPrefix(c.kindA, "t") && c.kindA == c.kindB && c.kindA == "tcp", c.kindA == "ws" && c.kindB == "ws":
			return 100
		default:
			return 50 // TLS handshakes under -race cost the most
		}
	}
	var cells []mxCell
	for _, k := range kinds {
		for st := mxStep(0); st < mxSteps; st++ {
			for ac := mxAction(0); ac < mxActions; ac++ {
				c := mxCell{kindA: k[0], kindB: k[1], step: st, action: ac}
				if c.valid() {
					c.reps = reps(c)
					cells = append(cells, c)
				}
			}
		}
	}
	dir := t.TempDir()
	cp, kp, cert := tlsFiles(t, dir)
	conf := clientTLS(cert)
	srvTLS := tlsStore(t, certs.Config{Cert: cp, Key: kp}).TLSConfig()
	warm := mxServer(t, srvTLS) // the first server warms the pools
	mxFreshPair(warm, "warm-up")
	warm.Close()
	runtime.GC()
	baseG, baseFD := runtime.NumGoroutine(), mxFDs(t)
	total := 0
	var pingBroken atomic.Int32
	for _, c := range cells {
		total += c.reps
	}
	sem := make(chan struct{}, 4) // cells in parallel
	var wg sync.WaitGroup
	for i, c := range cells {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s := mxServer(t, srvTLS)
			defer s.Close()
			var cwg sync.WaitGroup
			csem := make(chan struct{}, 8)
			problems := make(chan string, c.reps)
			var paired atomic.Int32
			for r := range c.reps {
				csem <- struct{}{}
				cwg.Add(1)
				go func() {
					defer cwg.Done()
					defer func() { <-csem }()
					rng := rand.New(rand.NewPCG(uint64(i), uint64(r)))
					out := c.run(s, conf, fmt.Sprintf("mx-%d-%d", i, r), rng)
					if out.paired {
						paired.Add(1)
					}
					if out.problem != "" {
						problems <- out.problem
					}
					if c.action == mxPing && !(out.paired && out.flowed) {
						pingBroken.Add(1)
						problems <- fmt.Sprintf("a ping broke the pairing (paired %v, data flowed %v)", out.paired, out.flowed)
					}
				}()
			}
			cwg.Wait()
			close(problems)
			for p := range problems {
				t.Errorf("%s: %s", c.name(), p)
				break
			}
			if msg := mxSettled(s, c); msg != "" {
				t.Errorf("%s: %s", c.name(), msg)
			} else if msg := mxFreshPair(s, fmt.Sprintf("mx-%d-0", i)); msg != "" {
				t.Errorf("%s: token used again: %s", c.name(), msg)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d cells, %d repetitions", len(cells), total)
	runtime.GC()
	lcGoroutines(t, baseG)
	deadline := time.Now().Add(testutil.Patience)
	for mxFDs(t) > baseFD && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := mxFDs(t); n > baseFD {
		var open []string
		ents, _ := os.ReadDir("/proc/self/fd")
		for _, e := range ents {
			l, _ := os.Readlink("/proc/self/fd/" + e.Name())
			open = append(open, e.Name()+"->"+l)
		}
		t.Errorf("%d descriptors open after the matrix, %d before (idle splice pipes not counted): %v", n, baseFD, open)
	}
}

// mxFDs counts this process's descriptors, less the idle splice pipes the
// pool keeps for reuse.
func mxFDs(t *testing.T) int { return lkFDs(t) - 2*pool.IdlePipes() }

// mxServer starts a cell's server: TLS on the port, and timeouts no
// repetition reaches even on a loaded machine (a cell's clients are
// closed by the cell itself), so that a pairing is never raced by one.
func mxServer(t *testing.T, conf *tls.Config) *Server {
	cfg := DefaultConfig()
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.Auth = acceptAll{}
	cfg.Loops = 2
	cfg.TLS = conf
	cfg.AloneTimeout = time.Minute
	cfg.HandshakeTimeout = time.Minute
	cfg.InactiveTimeout = time.Minute
	cfg.TLSHandshakeTimeout = time.Minute
	if os.Getenv("MEETPOINT_TEST_LOG") != "" {
		cfg.Logger = testutil.Logger(t)
	} else {
		cfg.Logger = testutil.Discard()
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// mxSettled waits until the cell's server holds nothing, then checks the
// books: closes sum to accepted, no key left, and only reasons the cell
// can produce were counted.
func mxSettled(s *Server, c mxCell) string {
	deadline := time.Now().Add(testutil.Patience)
	for (s.liveConns() > 0 || s.reg.Len() > 0) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.liveConns(); n > 0 {
		return fmt.Sprintf("%d connections never ended", n)
	}
	if n := s.reg.Len(); n > 0 {
		return fmt.Sprintf("%d registry keys stuck", n)
	}
	st := s.Stats()
	var sum uint64
	for _, n := range st.Closes {
		sum += n
	}
	if sum != st.Accepted {
		return fmt.Sprintf("closes sum to %d, accepted %d: %v", sum, st.Accepted, st.Closes)
	}
	allowed := mxAllowed(c)
	for name, n := range st.Closes {
		if !allowed[name] {
			return fmt.Sprintf("%d closes counted as %s, which this cell cannot cause (%v)", n, name, st.Closes)
		}
	}
	return ""
}

// mxAllowed is the set of close reasons a cell may produce.
func mxAllowed(c mxCell) map[string]bool {
	ok := map[string]bool{"peer_closed": true, "partner_closed": true, "alone_timeout": true}
	switch c.action {
	case mxData:
		ok["data_before_tunnel"] = true
		switch c.step {
		case mxSniff:
			ok["sniff"] = true
			ok["rpc"] = true
		case mxHead:
			ok["http"] = true
		case mxBeforeAut:
			ok["rpc"] = true
		}
	case mxHalfClose, mxClose:
		if c.step == mxSniff || c.step == mxHead {
			ok["handshake_timeout"] = true
		}
	}
	if c.action == mxClose {
		ok["io_error"] = true // a write to the client that just left
	}
	if c.action == mxData && c.step == mxSniff {
		ok["inactive_timeout"] = true // "{early data": an object that never ends
	}
	if c.step == mxSniff && (c.kindA == "tls" || c.kindA == "wss") {
		ok["tls"] = true // a ClientHello cut short
	}
	return ok
}

// mxFreshPair pairs two new TCP clients on a token the cell used: no key
// may be stuck on it.
func mxFreshPair(s *Server, token string) string {
	addr := s.Addrs()[0].String()
	ch := make(chan error, 1)
	go func() {
		c, err := dialRawTunnel(addr, token, "", "x", nil)
		if err == nil {
			c.Close()
		}
		ch <- err
	}()
	c, err := dialRawTunnel(addr, token, "", "y", nil)
	if err == nil {
		c.Close()
	}
	if err2 := <-ch; err == nil {
		err = err2
	}
	if err != nil {
		return err.Error()
	}
	return ""
}
