package loop

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay/internal/testutil"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// faultMark is the input faultySock panics on.
var faultMark = []byte("fault-me")

// faultySock is a plain socket whose Read panics on input carrying
// faultMark: a stand-in for a bug on the forwarding path (a TLS record
// layer, re-framing).
type faultySock struct{ PlainSock }

func (s faultySock) Read(p []byte) (int, error) {
	n, err := s.PlainSock.Read(p)
	if n > 0 && bytes.Contains(p[:n], faultMark) {
		var short []byte
		_ = short[n] // index out of range
	}
	return n, err
}

// endRecorder hears how a socket ended.
type endRecorder chan reason.Reason

func (e endRecorder) End(r reason.Reason) { e <- r }

// TestPairFaultEndsThePair: a panic while a pair forwards ends that pair
// alone: Config.Fault hears the panic and the stack where it happened,
// both sockets close, both ends and the owner are told reason.Fault, and
// another pair on the same loop forwards on.
func TestPairFaultEndsThePair(t *testing.T) {
	t.Parallel()
	faults := make(chan string, 4)
	l := runningWith(t, Config{Fault: func(_ *Pair, v any, stack []byte) bool {
		faults <- fmt.Sprint(v) + "\n" + string(stack)
		return true
	}})
	ca, fa := tcpPair(t)
	cb, fb := tcpPair(t)
	p, done := plainPair(fa, fb)
	ends := make(endRecorder, 2)
	p.A.Sock, p.A.Ender, p.B.Ender = faultySock{PlainSock(fa)}, ends, ends
	on(t, l, func() { l.StartPair(p) })
	cc, other, _, _ := splicing(t, l)

	roundTrip(t, ca, cb, "before the fault")
	if _, err := ca.Write(faultMark); err != nil {
		t.Fatal(err)
	}
	select {
	case f := <-faults:
		if !strings.Contains(f, "index out of range") || !strings.Contains(f, "loop.faultySock.Read") {
			t.Errorf("the fault was reported without its panic or the stack where it happened:\n%s", f)
		}
	case <-time.After(testutil.Patience):
		t.Fatal("no fault reported")
	}
	var dead bool
	var lingering int
	on(t, l, func() { dead, lingering = p.dead, len(l.lingering) })
	if !dead || lingering != 0 {
		t.Errorf("after the fault: pair torn down %v, %d sockets lingering; want it torn down at once, nothing lingering", dead, lingering)
	}
	for _, c := range []net.Conn{ca, cb} {
		_ = c.SetReadDeadline(time.Now().Add(testutil.Patience))
		if b, err := io.ReadAll(c); len(b) > 0 || (err != nil && !strings.Contains(err.Error(), "reset")) {
			t.Errorf("a faulted pair's client read %q, %v; want the end of the stream", b, err)
		}
	}
	for _, ch := range []chan reason.Reason{ends, ends, done} {
		select {
		case r := <-ch:
			if r != reason.Fault {
				t.Errorf("ended as %v, want %v", r, reason.Fault)
			}
		case <-time.After(testutil.Patience):
			t.Fatal("the faulted pair's ends or owner were not told")
		}
	}
	roundTrip(t, cc, other, "another pair on the loop, after the fault")
}

// roundTrip sends msg from a to b and checks it arrives.
func roundTrip(t *testing.T, a, b net.Conn, msg string) {
	t.Helper()
	if _, err := a.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = b.SetReadDeadline(time.Now().Add(testutil.Patience))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(b, got); err != nil || string(got) != msg {
		t.Fatalf("%s: got %q, %v", msg, got, err)
	}
}

// panickyOwner is a pair owner with a bug in PairClosing.
type panickyOwner struct{ pairOwner }

func (panickyOwner) PairClosing(*Pair, reason.Reason) { panic("an owner's bug") }

// faultChildEnv makes TestPairFaultInOwnerIsFatal the loop that panics, in
// a process of its own.
const faultChildEnv = "MEETPOINT_LOOP_FAULT_CHILD"

// TestPairFaultInOwnerIsFatal: a panic in the pair's owner's code is not
// contained, even with Config.Fault set — the owner may hold locks of its
// own — so the process ends, with the panic on stderr. Run in a child
// process.
func TestPairFaultInOwnerIsFatal(t *testing.T) {
	if os.Getenv(faultChildEnv) != "" {
		l := runningWith(t, Config{Fault: func(*Pair, any, []byte) bool { return true }})
		ca, fa := tcpPair(t)
		_, fb := tcpPair(t)
		p, done := plainPair(fa, fb)
		p.Owner = panickyOwner{done}
		on(t, l, func() { l.StartPair(p) })
		ca.Close() // the pair closes: PairClosing
		time.Sleep(testutil.Patience)
		t.Fatal("the loop contained a panic from the pair's owner")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPairFaultInOwnerIsFatal$")
	cmd.Env = append(os.Environ(), faultChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err == nil || bytes.Contains(out, []byte("contained a panic")) || !bytes.Contains(out, []byte("panic: an owner's bug")) {
		t.Fatalf("the child loop did not end with the owner's panic (%v):\n%s", err, out)
	}
}

// TestTLSFaultAfterKeysLogged: a panic in a handshake after crypto/tls
// logged its secrets (here in VerifyConnection) returns a *Fault, closes
// the socket (the client sees its end, not a timeout) and leaves no
// secrets in the registry.
func TestTLSFaultAfterKeysLogged(t *testing.T) {
	conf := serverConf(t)
	conf.VerifyConnection = func(tls.ConnectionState) error { panic("a verifier's bug") }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cerr := make(chan error, 1)
	go func() {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			cerr <- err
			return
		}
		c := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
		_ = c.SetDeadline(time.Now().Add(testutil.Patience))
		err = c.Handshake()
		if err == nil {
			_, err = c.Read(make([]byte, 1))
		}
		c.Close()
		cerr <- err
	}()
	s, err := acceptSession(ln, conf)
	var f *Fault
	if !errors.As(err, &f) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("got %v, want a *Fault", err)
	}
	if !strings.Contains(f.Error(), "a verifier's bug") || !bytes.Contains(f.Stack, []byte("TestTLSFaultAfterKeysLogged")) {
		t.Errorf("the fault lacks its panic or stack: %v\n%s", f, f.Stack)
	}
	err = <-cerr
	var ne net.Error
	switch {
	case err == nil:
		t.Fatal("the client's handshake succeeded")
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("the faulted socket was left open (%v)", err)
	}
	n := 0
	handshakeKeys.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d faulted handshakes' secrets left in the registry", n)
	}
}

// TestAbandonSendsNothing: an abandoned TLS session closes without a
// close_notify (its write state is not trusted after a fault), where a
// session closed as usual sends one: the client's socket receives fewer
// bytes before the end (both see the same session tickets first).
func TestAbandonSendsNothing(t *testing.T) {
	var got [2]int
	for i, abandon := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		raw := make(chan net.Conn, 1)
		go func() {
			nc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				raw <- nil
				return
			}
			c := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
			_ = c.SetDeadline(time.Now().Add(testutil.Patience))
			if c.Handshake() != nil {
				nc.Close()
				nc = nil
			}
			raw <- nc // read below the TLS layer from here on
		}()
		s, err := acceptSession(ln, serverConf(t))
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		nc := <-raw
		if nc == nil {
			s.Close()
			t.Fatal("client handshake failed")
		}
		if !s.OwnRecordLayer() {
			s.Close()
			nc.Close()
			t.Skip("the session stayed on crypto/tls, which sends no close_notify anyway")
		}
		if abandon {
			Abandon(s)
			if _, err := s.Write([]byte("x")); err == nil {
				t.Error("an abandoned session took a write")
			}
		}
		s.Close()
		b, err := io.ReadAll(nc)
		nc.Close()
		if err != nil {
			t.Fatalf("abandoned %v: %v", abandon, err)
		}
		got[i] = len(b)
	}
	if got[1] >= got[0] {
		t.Fatalf("the client received %d bytes from an abandoned session, %d from one closed as usual: want fewer (no close_notify)", got[1], got[0])
	}
}
