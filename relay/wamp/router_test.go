package wamp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// start serves the router on a fresh relay.
func start(t *testing.T, cfg Config) (*Router, *relay.Server) {
	t.Helper()
	srv := relaytest.New(t, nil)
	r, err := New(srv, cfg)
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, srv)
	t.Cleanup(func() { r.Close(); srv.Close() })
	return r, srv
}

// startNode starts a fleet node on the Redis at addr: cfg with a client of
// it (closed when the test ends) as its Redis.
func startNode(t *testing.T, addr string, cfg Config) (*Router, *relay.Server, *redis.Client) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	cfg.Redis = rdb
	r, srv := start(t, cfg)
	return r, srv, rdb
}

// peer is a minimal WAMP client for the tests (the interop proof against
// an independent client is the Chromium test with autobahn-js).
type peer struct {
	t *testing.T
	c net.Conn
}

func dial(t *testing.T, srv *relay.Server) *peer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, _, err := ws.Dialer{Protocols: []string{Subprotocol}}.Dial(ctx, relaytest.WSURL(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &peer{t: t, c: c}
}

func (p *peer) send(v ...any) {
	p.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		p.t.Fatal(err)
	}
	p.raw(b)
}

func (p *peer) raw(b []byte) {
	p.t.Helper()
	if err := wsutil.WriteClientText(p.c, b); err != nil {
		p.t.Fatal(err)
	}
}

// recv reads the next message; it fails the test on a timeout or a
// closed connection.
func (p *peer) recv() Message {
	p.t.Helper()
	m, err := p.next(5 * time.Second)
	if err != nil {
		p.t.Fatalf("reading a WAMP message: %v", err)
	}
	return m
}

func (p *peer) next(d time.Duration) (Message, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(d))
	b, err := wsutil.ReadServerText(p.c)
	if err != nil {
		return Message{}, err
	}
	return Parse(b)
}

// expect reads a message of type want and returns it.
func (p *peer) expect(want int) Message {
	p.t.Helper()
	m := p.recv()
	if m.Type != want {
		p.t.Fatalf("got message type %d %s, want %d", m.Type, fields(m), want)
	}
	return m
}

// closed: the router ends the connection (within 5 s) after what it sent.
func (p *peer) closed() {
	p.t.Helper()
	for {
		if _, err := p.next(5 * time.Second); err != nil {
			if isTimeout(err) {
				p.t.Fatal("the router did not close the connection")
			}
			return
		}
	}
}

func fields(m Message) string {
	var b []string
	for _, f := range m.Fields {
		b = append(b, string(f))
	}
	return "[" + strings.Join(b, ",") + "]"
}

func str(t *testing.T, m Message, i int) string {
	t.Helper()
	var s string
	if i >= len(m.Fields) || json.Unmarshal(m.Fields[i], &s) != nil {
		t.Fatalf("element %d of %s is not a string", i+1, fields(m))
	}
	return s
}

func id(t *testing.T, m Message, i int) uint64 {
	t.Helper()
	v, err := m.ID(i)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// join says HELLO to realm and expects WELCOME.
func (p *peer) join(realm string) uint64 {
	p.t.Helper()
	p.send(mHello, realm, map[string]any{"roles": map[string]any{"caller": map[string]any{}, "callee": map[string]any{}}})
	w := p.expect(mWelcome)
	return id(p.t, w, 0)
}

func (p *peer) register(req int, proc string) uint64 {
	p.t.Helper()
	p.send(mRegister, req, map[string]any{}, proc)
	m := p.expect(mRegistered)
	if got := id(p.t, m, 0); got != uint64(req) {
		p.t.Fatalf("REGISTERED for request %d, want %d", got, req)
	}
	return id(p.t, m, 1)
}

// expectError reads an ERROR for (reqType, req) and returns its URI.
func (p *peer) expectError(reqType, req int) string {
	p.t.Helper()
	m := p.expect(mError)
	if t, _ := m.Int(0); t != reqType {
		p.t.Fatalf("ERROR about message type %d, want %d: %s", t, reqType, fields(m))
	}
	if got := id(p.t, m, 1); got != uint64(req) {
		p.t.Fatalf("ERROR for request %d, want %d", got, req)
	}
	return str(p.t, m, 3)
}

const (
	alice = "0X04A11CE0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
	bob   = "0X04B0B00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
)

// TestBabbleSignalling is Babble's WebRTC signalling exchange: the
// answerer registers a procedure named after its public key; the offerer
// calls it with [its pubkey, the offer as JSON text] and gets [the answer
// as JSON text]; a failure comes back as io.babble.processing_offer.
func TestBabbleSignalling(t *testing.T) {
	_, srv := start(t, Config{})
	b := dial(t, srv)
	b.join("main")
	regID := b.register(1, bob)

	a := dial(t, srv)
	a.join("main")
	offer := `{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}`
	a.send(mCall, 7, map[string]any{}, bob, []any{alice, offer})

	inv := b.expect(mInvocation)
	if got := id(t, inv, 1); got != regID {
		t.Fatalf("INVOCATION names registration %d, want %d", got, regID)
	}
	var args []string
	if err := json.Unmarshal(inv.Fields[3], &args); err != nil || len(args) != 2 || args[0] != alice || args[1] != offer {
		t.Fatalf("INVOCATION arguments %s, want [alice, offer] unchanged", inv.Fields[3])
	}
	answer := `{"type":"answer","sdp":"v=0\r\n"}`
	b.send(mYield, id(t, inv, 0), map[string]any{}, []any{answer})

	res := a.expect(mResult)
	if got := id(t, res, 0); got != 7 {
		t.Fatalf("RESULT for request %d, want 7", got)
	}
	if err := json.Unmarshal(res.Fields[2], &args); err != nil || len(args) != 1 || args[0] != answer {
		t.Fatalf("RESULT arguments %s, want [answer]", res.Fields[2])
	}

	// The answerer fails: its error URI and arguments reach the caller.
	a.send(mCall, 8, map[string]any{}, bob, []any{alice, offer})
	inv = b.expect(mInvocation)
	b.send(mError, mInvocation, id(t, inv, 0), map[string]any{}, "io.babble.processing_offer", []any{"bad SDP"})
	if uri := a.expectError(mCall, 8); uri != "io.babble.processing_offer" {
		t.Fatalf("caller got error %q, want io.babble.processing_offer", uri)
	}

	// Nobody registered alice: no_such_procedure. Bob again: exists.
	a.send(mCall, 9, map[string]any{}, alice, []any{bob, offer})
	if uri := a.expectError(mCall, 9); uri != errNoSuchProcedure {
		t.Fatalf("got %q, want %s", uri, errNoSuchProcedure)
	}
	a.send(mRegister, 10, map[string]any{}, bob)
	if uri := a.expectError(mRegister, 10); uri != errProcedureExists {
		t.Fatalf("got %q, want %s", uri, errProcedureExists)
	}

	// A realm is a namespace: bob is not registered in realm "other".
	o := dial(t, srv)
	o.join("other")
	o.send(mCall, 1, map[string]any{}, bob, []any{alice, offer})
	if uri := o.expectError(mCall, 1); uri != errNoSuchProcedure {
		t.Fatalf("another realm reached bob: %q", uri)
	}

	// UNREGISTER, then the procedure is gone; GOODBYE is answered.
	b.send(mUnregister, 2, regID)
	b.expect(mUnregistered)
	a.send(mCall, 11, map[string]any{}, bob, []any{alice, offer})
	if uri := a.expectError(mCall, 11); uri != errNoSuchProcedure {
		t.Fatalf("after UNREGISTER: %q", uri)
	}
	a.send(mGoodbye, map[string]any{}, closeNormal)
	if g := a.expect(mGoodbye); str(t, g, 1) != closeGoodbyeAndOut {
		t.Fatalf("GOODBYE answered with %s", fields(g))
	}
	a.closed()
}

// TestRealms: a registered application's realm needs ticket
// authentication with its key; with AppsOnly other realms are refused.
func TestRealms(t *testing.T) {
	const key = "0123456789abcdef0123"
	r, srv := start(t, Config{Apps: map[string]string{"chat": key}, AppsOnly: true})

	p := dial(t, srv)
	p.send(mHello, "chat", map[string]any{})
	if m := p.expect(mAbort); str(t, m, 1) != errNotAuthorized {
		t.Fatalf("no authmethods: %s", fields(m))
	}
	p.closed()

	p = dial(t, srv)
	p.send(mHello, "chat", map[string]any{"authmethods": []string{"ticket"}})
	if m := p.expect(mChallenge); str(t, m, 0) != "ticket" {
		t.Fatalf("CHALLENGE %s", fields(m))
	}
	p.send(mAuthenticate, "wrong-key-wrong-key", map[string]any{})
	if m := p.expect(mAbort); str(t, m, 1) != errAuthFailed {
		t.Fatalf("wrong ticket: %s", fields(m))
	}
	p.closed()

	p = dial(t, srv)
	p.send(mHello, "chat", map[string]any{"authmethods": []string{"wampcra", "ticket"}})
	p.expect(mChallenge)
	p.send(mAuthenticate, key, map[string]any{})
	w := p.expect(mWelcome)
	d, _ := w.Dict(1)
	if string(d["authmethod"]) != `"ticket"` || string(d["authrole"]) != `"app"` {
		t.Fatalf("WELCOME details %s", w.Fields[1])
	}

	p = dial(t, srv)
	p.send(mHello, "elsewhere", map[string]any{})
	if m := p.expect(mAbort); str(t, m, 1) != errNoSuchRealm {
		t.Fatalf("unregistered realm with AppsOnly: %s", fields(m))
	}
	dial(t, srv).join("main") // the open realm stays open

	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="auth"}`) == 2 &&
			relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="realm"}`) == 1
	}, "closes counted by reason")
	_ = r
}

// TestRealmByURLKey: a client that cannot authenticate (Babble's) is
// admitted to a registered application's realm by the key in its URL
// (/app/KEY), to that realm only; a key no application has is refused
// before the upgrade.
func TestRealmByURLKey(t *testing.T) {
	const key = "0123456789abcdef0123"
	_, srv := start(t, Config{Apps: map[string]string{"chat": key}, AppsOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := relaytest.WSURL(srv) + "app/" + key
	callee, err := Dial(ctx, url, "chat", "")
	if err != nil {
		t.Fatalf("joining the app's realm with the key in the URL: %v", err)
	}
	defer callee.Close()
	if err := callee.Register(ctx, "0XCALLEE", func(args []json.RawMessage) ([]any, error) { return []any{"answer"}, nil }); err != nil {
		t.Fatal(err)
	}
	caller, err := Dial(ctx, url, "chat", "")
	if err != nil {
		t.Fatal(err)
	}
	defer caller.Close()
	if res, err := caller.Call(ctx, "0XCALLEE", "0XCALLER", "offer"); err != nil || len(res) != 1 || string(res[0]) != `"answer"` {
		t.Fatalf("a call within the app's realm: %s %v", res, err)
	}
	if _, err := Dial(ctx, url, "main", ""); err == nil || !strings.Contains(err.Error(), errNotAuthorized) {
		t.Errorf("another realm through the app's URL: %v, want %s", err, errNotAuthorized)
	}
	if _, err := Dial(ctx, relaytest.WSURL(srv)+"app/not-a-key-0123456789", "chat", ""); err == nil {
		t.Error("an unknown key in the URL was admitted")
	}
	if code, _, _ := relaytest.HTTP(t, "GET", "http://"+relaytest.Addr(srv)+"/app/not-a-key-0123456789", "",
		"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==",
		"Sec-WebSocket-Protocol", Subprotocol); code != 401 {
		t.Errorf("an unknown key's upgrade: %d, want 401 before the upgrade", code)
	}
}

// TestBadInput: garbage, messages out of order, an oversized message and
// a silent client each get a clear ABORT and a closed connection.
func TestBadInput(t *testing.T) {
	_, srv := start(t, Config{MaxMessage: 1024, HelloTimeout: 300 * time.Millisecond})
	for _, tc := range []struct{ name, msg string }{
		{"not JSON", `{"hello"`},
		{"not an array", `{"type":1}`},
		{"short HELLO", `[1,"main"]`},
		{"CALL before HELLO", `[48,1,{},"x"]`},
		{"realm not a URI", `[1,"has space",{}]`},
	} {
		p := dial(t, srv)
		p.raw([]byte(tc.msg))
		if m := p.expect(mAbort); len(m.Fields) != 2 {
			t.Fatalf("%s: ABORT %s", tc.name, fields(m))
		}
		p.closed()
	}
	// Inside a session: an unknown message type, a bad request id, a
	// PUBLISH whose Options are not a dictionary (whether it awaits an
	// answer is unknown).
	for _, msg := range []string{`[99]`, `[64,"x",{},"p"]`, `[2,1,{}]`, `[16,1,"x","t"]`} {
		p := dial(t, srv)
		p.join("main")
		p.raw([]byte(msg))
		if m := p.expect(mAbort); str(t, m, 1) != errProtocolViolation {
			t.Fatalf("%s: %s", msg, fields(m))
		}
		p.closed()
	}
	p := dial(t, srv)
	p.join("main")
	p.raw([]byte(`[16,1,{},"t",["` + strings.Repeat("x", 2000) + `"]]`))
	if m := p.expect(mAbort); !strings.Contains(string(m.Fields[0]), "1024") {
		t.Fatalf("oversized: %s", fields(m))
	}
	p.closed()
	// A binary frame: wamp.2.json is text.
	p = dial(t, srv)
	p.join("main")
	_ = wsutil.WriteClientBinary(p.c, []byte(`[6,{},"x"]`))
	p.expect(mAbort)
	p.closed()
	// Silence: no HELLO within HelloTimeout.
	p = dial(t, srv)
	p.expect(mAbort)
	p.closed()
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="timeout"}`) == 1 &&
			relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="too_large"}`) == 1 &&
			relaytest.Metric(t, srv, `meetpoint_signal_sessions`) == 0
	}, "every bad session ended and counted")
}

// TestCallBounds: calls in flight and registrations per session are
// bounded; a call times out (its own timeout option); a callee that
// leaves fails its callers' calls; a late YIELD is dropped.
func TestCallBounds(t *testing.T) {
	// The router's own call timeout is out of reach: a call that times
	// out did so by its own option.
	_, srv := start(t, Config{MaxPending: 2, MaxRegistrations: 2, CallTimeout: time.Hour})
	b := dial(t, srv)
	b.join("main")
	b.register(1, "p1")
	b.register(2, "p2")
	b.send(mRegister, 3, map[string]any{}, "p3")
	if uri := b.expectError(mRegister, 3); uri != errLimit {
		t.Fatalf("third registration: %q", uri)
	}

	a := dial(t, srv)
	a.join("main")
	a.send(mCall, 1, map[string]any{}, "p1", []any{1})
	a.send(mCall, 2, map[string]any{}, "p1", []any{2})
	a.send(mCall, 3, map[string]any{}, "p1", []any{3})
	if uri := a.expectError(mCall, 3); uri != errLimit {
		t.Fatalf("third call in flight: %q", uri)
	}
	inv1 := b.expect(mInvocation)
	b.expect(mInvocation)
	b.send(mYield, id(t, inv1, 0), map[string]any{}, []any{"one"})
	a.expect(mResult)

	// Its own timeout option: 200 ms.
	a.send(mCall, 4, map[string]any{"timeout": 200}, "p2")
	inv4 := b.expect(mInvocation)
	if uri := a.expectError(mCall, 4); uri != errTimeout {
		t.Fatalf("timed-out call: %q", uri)
	}
	b.send(mYield, id(t, inv4, 0), map[string]any{}, []any{"late"}) // dropped

	// The callee leaves: the call still open (request 2) fails.
	b.c.Close()
	if uri := a.expectError(mCall, 2); uri != errCanceled {
		t.Fatalf("callee gone: %q", uri)
	}
	a.send(mCall, 5, map[string]any{}, "p1")
	if uri := a.expectError(mCall, 5); uri != errNoSuchProcedure {
		t.Fatalf("after the callee left: %q", uri)
	}
	// Counted once the error is sent: wait for it.
	relaytest.WaitFor(t, func() error {
		if n := relaytest.Metric(t, srv, `meetpoint_signal_calls_total{result="timeout"}`); n != 1 {
			return fmt.Errorf("timeouts counted %v", n)
		}
		return nil
	}, "the timed-out call counted once")
}

// TestPubSub: EVENT reaches subscribers but (by default) not the
// publisher; acknowledge gets PUBLISHED.
func TestPubSub(t *testing.T) {
	_, srv := start(t, Config{})
	s1, s2 := dial(t, srv), dial(t, srv)
	s1.join("main")
	s2.join("main")
	s1.send(mSubscribe, 1, map[string]any{}, "io.babble.peers")
	sub := id(t, s1.expect(mSubscribed), 1)
	s2.send(mSubscribe, 1, map[string]any{}, "io.babble.peers")
	if got := id(t, s2.expect(mSubscribed), 1); got != sub {
		t.Fatalf("one topic, two subscription ids: %d %d", sub, got)
	}
	s2.send(mPublish, 2, map[string]any{"acknowledge": true}, "io.babble.peers", []any{"hello"}, map[string]any{"n": 1})
	s2.expect(mPublished)
	ev := s1.expect(mEvent)
	if id(t, ev, 0) != sub || string(ev.Fields[3]) != `["hello"]` || string(ev.Fields[4]) != `{"n":1}` {
		t.Fatalf("EVENT %s", fields(ev))
	}
	if m, err := s2.next(300 * time.Millisecond); err == nil {
		t.Fatalf("the publisher got its own event: %s", fields(m))
	}
	s1.send(mUnsubscribe, 3, sub)
	s1.expect(mUnsubscribed)
	s1.send(mUnsubscribe, 4, sub)
	if uri := s1.expectError(mUnsubscribe, 4); uri != errNoSuchSubscription {
		t.Fatalf("second UNSUBSCRIBE: %q", uri)
	}
}

// TestSlowReader: a session that never reads while events pile up for it
// is closed once MaxQueue messages wait: the router's memory for it is
// bounded, and the others go on.
func TestSlowReader(t *testing.T) {
	_, srv := start(t, Config{MaxQueue: 16})
	pub, big := slowSubscriber(t, srv)
	for i := 0; i < 2000; i++ { // 120 MB offered; the slow one reads nothing
		pub.send(mPublish, i+1, map[string]any{}, "t", []any{big})
		if relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="slow"}`) == 1 {
			break
		}
	}
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="slow"}`) == 1
	}, "the slow reader closed")
	pub.send(mPublish, 1, map[string]any{"acknowledge": true}, "t")
	pub.expect(mPublished) // the publisher is fine
}

// slowSubscriber joins a session to topic "t" on srv that never reads
// (its receive buffer 4 KiB) and returns a publisher in the same realm
// and a 60 KiB event payload.
func slowSubscriber(t *testing.T, srv *relay.Server) (pub *peer, big string) {
	t.Helper()
	slow := dial(t, srv)
	_ = slow.c.(*net.TCPConn).SetReadBuffer(4 << 10)
	slow.join("main")
	slow.send(mSubscribe, 1, map[string]any{}, "t")
	slow.expect(mSubscribed)
	pub = dial(t, srv)
	pub.join("main")
	return pub, strings.Repeat("x", 60<<10)
}

// TestShutdown: Close says GOODBYE system_shutdown to every session.
func TestShutdown(t *testing.T) {
	r, srv := start(t, Config{})
	p := dial(t, srv)
	p.join("main")
	go r.Close()
	if g := p.expect(mGoodbye); str(t, g, 1) != closeShutdown {
		t.Fatalf("GOODBYE %s", fields(g))
	}
	p.closed()
}

// TestDrainSaysGoodbye: a session holds no tunnel, so the relay's drain
// (SIGTERM) says GOODBYE system_shutdown to it at once, as it closes every
// other connection without a tunnel, instead of keeping it, and the drain
// with it, until the drain timeout cuts it.
func TestDrainSaysGoodbye(t *testing.T) {
	_, srv := start(t, Config{})
	p := dial(t, srv)
	p.join("main")
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		drained <- srv.Shutdown(ctx)
	}()
	if g := p.expect(mGoodbye); str(t, g, 1) != closeShutdown {
		t.Fatalf("GOODBYE %s", fields(g))
	}
	p.closed()
	select {
	case err := <-drained:
		if err != nil {
			t.Fatalf("drain: %v, want it to end once the session left", err)
		}
	case <-time.After(relaytest.Patience):
		t.Fatal("the drain did not end after the session left")
	}
}

// TestFleetCall: two relays sharing one Redis: a procedure registered on
// one is called from the other (and answered, errors too), registered
// only once fleet-wide, released when its session leaves; events reach
// the other node's subscribers.
func TestFleetCall(t *testing.T) {
	addr := relaytest.Redis(t)
	node := func(name string) *relay.Server {
		_, srv, _ := startNode(t, addr, Config{NodeID: name})
		return srv
	}
	n1, n2 := node("n1"), node("n2")
	b := dial(t, n1)
	b.join("main")
	b.register(1, bob)
	a := dial(t, n2)
	a.join("main")
	a.send(mRegister, 1, map[string]any{}, bob)
	if uri := a.expectError(mRegister, 1); uri != errProcedureExists {
		t.Fatalf("registered twice in the fleet: %q", uri)
	}
	for i := 2; i < 5; i++ {
		a.send(mCall, i, map[string]any{}, bob, []any{alice, fmt.Sprintf("offer %d", i)})
		inv := b.expect(mInvocation)
		if string(inv.Fields[3]) != fmt.Sprintf(`[%q,"offer %d"]`, alice, i) {
			t.Fatalf("INVOCATION across nodes: %s", fields(inv))
		}
		if i == 4 {
			b.send(mError, mInvocation, id(t, inv, 0), map[string]any{}, "io.babble.processing_offer")
			if uri := a.expectError(mCall, i); uri != "io.babble.processing_offer" {
				t.Fatalf("error across nodes: %q", uri)
			}
			continue
		}
		b.send(mYield, id(t, inv, 0), map[string]any{}, []any{fmt.Sprintf("answer %d", i)})
		res := a.expect(mResult)
		if id(t, res, 0) != uint64(i) || string(res.Fields[2]) != fmt.Sprintf(`["answer %d"]`, i) {
			t.Fatalf("RESULT across nodes: %s", fields(res))
		}
	}
	// Events: a subscriber on n1, a publisher on n2.
	b.send(mSubscribe, 5, map[string]any{}, "io.babble.peers")
	b.expect(mSubscribed)
	a.send(mPublish, 6, map[string]any{}, "io.babble.peers", []any{"joined"})
	if ev := b.expect(mEvent); string(ev.Fields[3]) != `["joined"]` {
		t.Fatalf("EVENT across nodes: %s", fields(ev))
	}
	// bob's session leaves n1: the claim goes, and n2's session may
	// register the name.
	b.c.Close()
	relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, n1, "meetpoint_signal_sessions") == 0 }, "bob's session ended")
	a.send(mCall, 7, map[string]any{}, bob)
	if uri := a.expectError(mCall, 7); uri != errNoSuchProcedure {
		t.Fatalf("after bob left: %q", uri)
	}
	a.register(8, bob)
	if n := relaytest.Metric(t, n2, `meetpoint_signal_forwarded_total{result="ok"}`); n != 2 {
		t.Fatalf("forwarded calls counted %v, want 2", n)
	}
}

// TestClientOverTLS: the Go client over wss:// on a TLS relay port (the
// dispatch table unwraps TLS, then hands the wamp.2.json upgrade to the
// router), in an application's realm with its ticket: register, call,
// an error URI carried back, and a wrong ticket refused.
func TestClientOverTLS(t *testing.T) {
	store, conf := relaytest.TLS(t)
	srv := relaytest.New(t, func(c *relay.Config) { c.TLS = store.TLSConfig() })
	const key = "chat-key-0123456789abcdef"
	r, err := New(srv, Config{Apps: map[string]string{"chat": key}})
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, srv)
	t.Cleanup(func() { r.Close(); srv.Close() })
	url := "wss://" + relaytest.Addr(srv) + "/"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := DialTLS(ctx, url, "chat", "wrong-ticket-wrong-ticket", conf); err == nil || !strings.Contains(err.Error(), errAuthFailed) {
		t.Fatalf("wrong ticket: %v", err)
	}
	callee, err := DialTLS(ctx, url, "chat", key, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer callee.Close()
	if err := callee.Register(ctx, bob, func(args []json.RawMessage) ([]any, error) {
		if len(args) != 2 {
			return nil, &CallError{URI: "io.babble.processing_offer"}
		}
		return []any{"answer"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	caller, err := DialTLS(ctx, url, "chat", key, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer caller.Close()
	res, err := caller.Call(ctx, bob, alice, "offer")
	if err != nil || len(res) != 1 || string(res[0]) != `"answer"` {
		t.Fatalf("call: %s %v", res, err)
	}
	var ce *CallError
	if _, err := caller.Call(ctx, bob, "only one argument"); !errors.As(err, &ce) || ce.URI != "io.babble.processing_offer" {
		t.Fatalf("a callee's error: %v", err)
	}
	if err := caller.Register(ctx, bob, nil); !errors.As(err, &ce) || ce.URI != errProcedureExists {
		t.Fatalf("registering a taken name: %v", err)
	}
}

// TestChurn: sessions register, call each other, and leave while calls
// are in flight, concurrently (under -race in make test). Every call
// ends with a result or an error, and once all have left the router
// holds nothing: no session, realm, registration or call.
func TestChurn(t *testing.T) {
	r, srv := start(t, Config{CallTimeout: 2 * time.Second})
	url := relaytest.WSURL(srv)
	const n, calls = 12, 40
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			errs <- func() error {
				c, err := Dial(ctx, url, "main", "")
				if err != nil {
					return err
				}
				defer c.Close()
				if err := c.Register(ctx, fmt.Sprintf("p%d", i), func(args []json.RawMessage) ([]any, error) {
					if i%3 == 0 {
						return nil, &CallError{URI: "io.babble.processing_offer"}
					}
					return []any{i}, nil
				}); err != nil {
					return err
				}
				for k := 0; k < calls; k++ {
					if i%4 == 1 && k == calls/2 {
						return nil // leaves with callers of p<i> possibly in flight
					}
					cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
					_, err := c.Call(cctx, fmt.Sprintf("p%d", (i+k)%n), i, k)
					ccancel()
					var ce *CallError
					if err != nil && !errors.As(err, &ce) {
						return fmt.Errorf("call %d from %d: %v", k, i, err)
					}
				}
				return nil
			}()
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	relaytest.WaitFor(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.sessions) == 0 && len(r.realms) == 0 && len(r.calls) == 0 && len(r.outbound) == 0
	}, "the router empty after every session left")
}

// pathRule is an access policy that allows HTTP on one path prefix only.
type pathRule string

func (p pathRule) Allow(_ *relay.Identity, action, target string) (bool, string) {
	return action == relay.ActionHTTP && strings.HasPrefix(target, string(p)), "test"
}

// TestUpgradeChecks: a WAMP upgrade passes the same checks as every other
// request on the relay port: --allowed-origins (a page from a refused
// origin registers nothing) and the access rules on its path.
func TestUpgradeChecks(t *testing.T) {
	srv := relaytest.New(t, func(c *relay.Config) {
		c.AllowedOrigins = []string{"https://good.example"}
		c.Access = pathRule("/signal")
	})
	r, err := New(srv, Config{})
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, srv)
	t.Cleanup(func() { r.Close(); srv.Close() })
	upgrade := func(path, origin string) int {
		t.Helper()
		c, err := net.Dial("tcp", relaytest.Addr(srv))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		req := "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: " + Subprotocol + "\r\n"
		if origin != "" {
			req += "Origin: " + origin + "\r\n"
		}
		c.Write([]byte(req + "\r\n"))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("upgrade to %s: %v", path, err)
		}
		return resp.StatusCode
	}
	for _, c := range []struct {
		path, origin string
		want         int
	}{
		{"/signal", "https://evil.example", 403},
		{"/signal", "https://good.example", 101},
		{"/signal", "", 101}, // not a browser
		{"/other", "https://good.example", 403},
		{"/signal/%2e%2e/other", "https://good.example", 400},
		{"/signal/../other", "https://good.example", 403}, // decided on /other
	} {
		if got := upgrade(c.path, c.origin); got != c.want {
			t.Errorf("upgrade to %s from origin %q: %d, want %d", c.path, c.origin, got, c.want)
		}
	}
	if n := relaytest.Metric(t, srv, `meetpoint_http_origin_refused_total`); n != 1 {
		t.Errorf("origin refusals counted %v, want 1", n)
	}
}

// TestProcKeyUnambiguous: realms and procedures with colons never share a
// claim key across the fleet.
func TestProcKeyUnambiguous(t *testing.T) {
	pairs := [][2]string{{"a:b", "c"}, {"a", "b:c"}, {"a", "b:c:"}, {"", "a:b:c"}, {"a:b:c", ""}, {"1:a", "b"}, {"1", "a:b"}}
	seen := map[string][2]string{}
	for _, p := range pairs {
		k := procKey(p[0], p[1])
		if q, dup := seen[k]; dup {
			t.Errorf("realm %q proc %q and realm %q proc %q share the key %q", p[0], p[1], q[0], q[1], k)
		}
		seen[k] = p
	}
}

// TestSlowReaderBytes: the write queue is bounded in bytes as well as in
// messages: a subscriber that reads nothing is closed as slow once 256 KiB
// (the default) wait for it beyond what its socket took, long before 256
// large messages (16 MiB) could pile up.
func TestSlowReaderBytes(t *testing.T) {
	_, srv := start(t, Config{})
	pub, big := slowSubscriber(t, srv)
	closed := func() bool { return relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="slow"}`) == 1 }
	for i := 0; i < 240 && !closed(); i++ { // 14 MiB at most; acknowledged, so each is queued before the next
		pub.send(mPublish, i+1, map[string]any{"acknowledge": true}, "t", []any{big})
		pub.expect(mPublished)
	}
	if !closed() {
		t.Fatal("240 events of 60 KiB were queued for a subscriber that reads nothing, and it was not closed as slow")
	}
}

// TestFleetClaimSurvivesARelease: a session unregisters a procedure while
// another on the same node registers it. The new registration finds the
// node's claim still in Redis and keeps it; the release that follows must
// not delete it, or the procedure is registered here with no claim and
// another node may register it too. (Before claims and releases of one
// key took turns, this lost the claim within a few tries.)
func TestFleetClaimSurvivesARelease(t *testing.T) {
	addr := relaytest.Redis(t)
	node := func(name string) (*relay.Server, *redis.Client) {
		_, srv, rdb := startNode(t, addr, Config{NodeID: name})
		return srv, rdb
	}
	n1, rdb := node("n1")
	n2, _ := node("n2")
	a, b := dial(t, n1), dial(t, n1)
	a.join("main")
	b.join("main")
	key := procKey("main", bob)
	for try := range 100 {
		reg := a.register(1, bob)
		a.send(mUnregister, 2, reg)
		b.send(mRegister, 3, map[string]any{}, bob) // at once
		a.expect(mUnregistered)                     // sent after the release
		m := b.recv()
		if m.Type != mRegistered { // a still held it: an ERROR
			continue
		}
		if rdb.Exists(t.Context(), key).Val() == 0 {
			c := dial(t, n2)
			c.join("main")
			c.send(mRegister, 1, map[string]any{}, bob)
			t.Fatalf("try %d: registered on n1 but its claim is gone from Redis; n2's REGISTER answered %s", try, fields(c.recv()))
		}
		b.send(mUnregister, 4, id(t, m, 1))
		b.expect(mUnregistered)
	}
}

// TestFleetCancelReachesTheCallee: a CANCEL of a call forwarded to another
// node (or its caller leaving) ends the invocation there too, so a
// session's calls in flight are bounded at the callee's node as at its
// own (MaxPending): a CALL+CANCEL loop does not pile up invocations until
// CallTimeout. A timeout option too large for nanoseconds is the router's
// timeout, not an instant one.
func TestFleetCancelReachesTheCallee(t *testing.T) {
	addr := relaytest.Redis(t)
	node := func(name string) (*Router, *relay.Server) {
		r, srv, _ := startNode(t, addr, Config{NodeID: name, MaxPending: 4, CallTimeout: time.Hour})
		return r, srv
	}
	_, n1 := node("n1")
	r2, n2 := node("n2")
	callee := dial(t, n2) // reads its invocations, never answers
	callee.join("main")
	callee.register(1, "sink")
	go func() {
		for {
			if _, err := callee.next(time.Hour); err != nil {
				return
			}
		}
	}()
	held := func() int {
		r2.mu.Lock()
		defer r2.mu.Unlock()
		return len(r2.calls) + len(r2.remote)
	}
	caller := dial(t, n1)
	caller.join("main")
	for i := 1; i <= 100; i++ {
		opts := map[string]any{}
		if i%2 == 1 {
			opts["timeout"] = int64(9223372036855) // ms: overflows as nanoseconds
		}
		caller.send(mCall, i, opts, "sink")
		caller.send(mCancel, i, map[string]any{})
		if uri := caller.expectError(mCall, i); uri != errCanceled {
			t.Fatalf("call %d: %q, want canceled", i, uri)
		}
	}
	relaytest.WaitFor(t, func() error {
		if n := held(); n != 0 {
			return fmt.Errorf("%d invocations (and index entries) still held", n)
		}
		return nil
	}, "the callee's node ends every canceled invocation")
	// The caller leaves with calls in flight: they end at the callee's node.
	for i := 101; i <= 104; i++ {
		caller.send(mCall, i, map[string]any{}, "sink")
	}
	relaytest.WaitFor(t, func() bool { return held() == 8 }, "four calls in flight at the callee's node")
	caller.c.Close()
	relaytest.WaitFor(t, func() error {
		if n := held(); n != 0 {
			return fmt.Errorf("%d invocations (and index entries) still held", n)
		}
		return nil
	}, "the callee's node ends the calls of a caller that left")
}

// TestHelloBehindTheUpgrade: a client that writes its HELLO in the same
// segment as the upgrade request (RFC 6455 says to wait for the 101; some
// do not) is served: net/http read the frame past the request head, and
// the session reads it from there first.
func TestHelloBehindTheUpgrade(t *testing.T) {
	_, srv := start(t, Config{})
	c, err := net.Dial("tcp", relaytest.Addr(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b bytes.Buffer
	fmt.Fprintf(&b, "GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n\r\n", Subprotocol)
	hello, _ := json.Marshal([]any{mHello, "main", map[string]any{"roles": map[string]any{"caller": map[string]any{}}}})
	if err := wsutil.WriteClientText(&b, hello); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(relaytest.Patience))
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	msg, err := wsutil.ReadServerText(struct {
		io.Reader
		io.Writer
	}{br, c})
	if err != nil {
		t.Fatalf("no answer to the HELLO sent behind the upgrade: %v", err)
	}
	if m, _ := Parse(msg); m.Type != mWelcome {
		t.Fatalf("the HELLO sent behind the upgrade answered %s, want WELCOME", msg)
	}
}

// TestAppKeyGuessesBanned: a wrong ticket and a wrong key in an /app/KEY
// URL count toward the address's ban as a refused relay token does: past
// AuthFailuresPerIP the address cannot even bring the right key, and
// another address can.
func TestAppKeyGuessesBanned(t *testing.T) {
	const key = "0123456789abcdef"
	srv := relaytest.New(t, func(c *relay.Config) {
		c.Limits.Exempt = nil // 127.0.0.2 is an ordinary client
		c.Limits.AuthFailuresPerIP = 3
	})
	r, err := New(srv, Config{Apps: map[string]string{"chat": key}})
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, srv)
	t.Cleanup(func() { r.Close(); srv.Close() })
	dialFrom := func(ip, path string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), relaytest.Patience)
		defer cancel()
		d := ws.Dialer{Protocols: []string{Subprotocol}, NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext(ctx, network, addr)
		}}
		c, _, _, err := d.Dial(ctx, "ws://"+relaytest.Addr(srv)+path)
		return c, err
	}
	for i := range 2 { // wrong tickets
		c, err := dialFrom("127.0.0.2", "/")
		if err != nil {
			t.Fatalf("attempt %d refused: %v", i, err)
		}
		p := &peer{t: t, c: c}
		p.send(mHello, "chat", map[string]any{"authmethods": []string{"ticket"}})
		p.expect(mChallenge)
		p.send(mAuthenticate, fmt.Sprintf("guess%011d", i), map[string]any{})
		p.expect(mAbort)
		c.Close()
	}
	for i := range 2 { // wrong keys in the URL
		if _, err := dialFrom("127.0.0.2", fmt.Sprintf("/app/guess%011d", i)); err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("URL guess %d: %v, want 401", i, err)
		}
	}
	if c, err := dialFrom("127.0.0.2", "/app/"+key); err == nil {
		c.Close()
		t.Fatal("four wrong keys from one address (a ban past 3): the right key still got in")
	}
	c, err := dialFrom("127.0.0.3", "/app/"+key)
	if err != nil {
		t.Fatalf("another address with the right key: %v", err)
	}
	(&peer{t: t, c: c}).join("chat")
	c.Close()
}

// TestIDsStartAtRandom: router-scope ids start at random, so a node
// restarted under its fleet id does not reuse its previous process's call
// ids (a late answer or CANCEL for an old call would find a new one), and
// stay within WAMP's id range.
func TestIDsStartAtRandom(t *testing.T) {
	a, _ := start(t, Config{})
	b, _ := start(t, Config{})
	x, y := a.newID(), b.newID()
	if x == y || x > maxID || y > maxID || x == 0 || y == 0 {
		t.Fatalf("two routers' first ids: %d and %d, want different, in 1..2^53", x, y)
	}
}

// TestFleetMetricsDocumented: with a fleet, every signalling family on
// /metrics has its # HELP text and # TYPE (the forwarded calls' too).
func TestFleetMetricsDocumented(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: relaytest.Redis(t)})
	t.Cleanup(func() { rdb.Close() })
	_, srv := start(t, Config{Redis: rdb, NodeID: "n1"})
	var b strings.Builder
	srv.WritePrometheus(&b)
	if typeOf := relaytest.CheckMetrics(t, b.String()); typeOf["meetpoint_signal_forwarded_total"] != "counter" {
		t.Errorf("meetpoint_signal_forwarded_total is %q on /metrics, want a counter", typeOf["meetpoint_signal_forwarded_total"])
	}
}

// TestBrokenFramesAborted: WebSocket-level bad input — a text message
// that is not UTF-8, a client frame without a mask, a continuation with
// no message begun — gets an ABORT (wamp.error.protocol_violation) and a
// clean close, counted as a protocol close, as bad WAMP does; not a bare
// close counted as a client that went away.
func TestBrokenFramesAborted(t *testing.T) {
	_, srv := start(t, Config{})
	frames := map[string]func(c net.Conn) error{
		"not UTF-8": func(c net.Conn) error { return wsutil.WriteClientText(c, []byte("[6,{},\"\xff\xfe\"]")) },
		"no mask": func(c net.Conn) error {
			return ws.WriteFrame(c, ws.NewTextFrame([]byte(`[6,{},"wamp.close.normal"]`)))
		},
		"stray continuation": func(c net.Conn) error {
			return ws.WriteFrame(c, ws.MaskFrameInPlace(ws.NewFrame(ws.OpContinuation, true, []byte("x"))))
		},
	}
	for name, write := range frames {
		p := dial(t, srv)
		p.join("main")
		if err := write(p.c); err != nil {
			t.Fatal(err)
		}
		m, err := p.next(relaytest.Patience)
		if err != nil {
			t.Fatalf("%s: no ABORT before the close: %v", name, err)
		}
		if m.Type != mAbort || str(t, m, 1) != errProtocolViolation {
			t.Fatalf("%s: %d %s, want ABORT %s", name, m.Type, fields(m), errProtocolViolation)
		}
		p.closed()
	}
	relaytest.WaitFor(t, func() error {
		if n := relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="protocol"}`); n != float64(len(frames)) {
			return fmt.Errorf("protocol closes counted %v, want %d", n, len(frames))
		}
		return nil
	}, "every broken session counted as a protocol close")
}

// TestBadURIs: a procedure or topic that is not a URI is
// wamp.error.invalid_uri whichever message names it (WAMP's error for
// any URI-based attribute): REGISTER, SUBSCRIBE, CALL and PUBLISH alike.
func TestBadURIs(t *testing.T) {
	_, srv := start(t, Config{})
	p := dial(t, srv)
	p.join("main")
	for i, msg := range []struct {
		typ  int
		send []any
	}{
		{mRegister, []any{mRegister, 1, map[string]any{}, "has space"}},
		{mSubscribe, []any{mSubscribe, 2, map[string]any{}, "has#hash"}},
		{mCall, []any{mCall, 3, map[string]any{}, "has space", []any{1}}},
		{mPublish, []any{mPublish, 4, map[string]any{"acknowledge": true}, "has space", []any{1}}},
	} {
		p.send(msg.send...)
		if uri := p.expectError(msg.typ, i+1); uri != errInvalidURI {
			t.Errorf("message type %d naming a bad URI: %s, want %s", msg.typ, uri, errInvalidURI)
		}
	}
}

// TestPublishErrorOnlyAcknowledged: a PUBLISH the router cannot fulfil is
// answered with ERROR only when it asked for acknowledge, as WAMP says: a
// publisher that did not keeps no request for it, and autobahn-js takes an
// ERROR for a request it does not know as a protocol violation and closes
// its session.
func TestPublishErrorOnlyAcknowledged(t *testing.T) {
	_, srv := start(t, Config{})
	p := dial(t, srv)
	p.join("main")
	p.send(mPublish, 1, map[string]any{}, "has space", []any{1})
	p.send(mPublish, 2, map[string]any{}, "io.example.t", map[string]any{"not": "a list"})
	p.send(mPublish, 3, map[string]any{"acknowledge": true}, "io.example.t", []any{1})
	if m := p.recv(); m.Type != mPublished || id(t, m, 0) != 3 {
		t.Fatalf("after two failed PUBLISHes without acknowledge: %d %s, want PUBLISHED for request 3", m.Type, fields(m))
	}
}

// TestCallerLeavesCounted: a call routed to a callee here whose caller
// leaves before the answer ends as canceled in
// meetpoint_signal_calls_total, as it does when the caller is on another
// node (its node's cancel): every call routed here is counted once.
func TestCallerLeavesCounted(t *testing.T) {
	r, srv := start(t, Config{CallTimeout: time.Hour})
	callee := dial(t, srv)
	callee.join("main")
	callee.register(1, bob)
	caller := dial(t, srv)
	caller.join("main")
	caller.send(mCall, 1, map[string]any{}, bob, []any{alice, "offer"})
	callee.expect(mInvocation)
	caller.c.Close()
	relaytest.WaitFor(t, func() error {
		r.mu.Lock()
		held := len(r.calls)
		r.mu.Unlock()
		n := relaytest.Metric(t, srv, `meetpoint_signal_calls_total{result="canceled"}`)
		if held != 0 || n != 1 {
			return fmt.Errorf("%d calls held, counted as canceled %v times, want 0 and 1", held, n)
		}
		return nil
	}, "the call whose caller left ended and counted")
}

// TestFleetResultsCounted: a forwarded call is counted at the caller's
// node by how it ended at the callee's: a callee that leaves is
// callee_lost (not a callee's error), and a callee's own ERROR is an error
// whatever its URI (wamp.error.no_such_procedure included, which the Go
// Client answers for a registration it does not know).
func TestFleetResultsCounted(t *testing.T) {
	addr := relaytest.Redis(t)
	node := func(name string) *relay.Server {
		_, srv, _ := startNode(t, addr, Config{NodeID: name, CallTimeout: time.Hour})
		return srv
	}
	n1, n2 := node("n1"), node("n2")
	callee := dial(t, n2)
	callee.join("main")
	callee.register(1, bob)
	caller := dial(t, n1)
	caller.join("main")
	caller.send(mCall, 1, map[string]any{}, bob, []any{alice, "offer"})
	inv := callee.expect(mInvocation)
	callee.send(mError, mInvocation, id(t, inv, 0), map[string]any{}, errNoSuchProcedure)
	if uri := caller.expectError(mCall, 1); uri != errNoSuchProcedure {
		t.Fatalf("the callee's error: %q", uri)
	}
	caller.send(mCall, 2, map[string]any{}, bob, []any{alice, "offer"})
	callee.expect(mInvocation)
	callee.c.Close()
	if uri := caller.expectError(mCall, 2); uri != errCanceled {
		t.Fatalf("the callee left: %q", uri)
	}
	relaytest.WaitFor(t, func() error {
		var got []string
		for _, res := range []string{"ok", "error", "no_procedure", "timeout", "canceled", "callee_lost"} {
			if n := relaytest.Metric(t, n1, fmt.Sprintf(`meetpoint_signal_forwarded_total{result=%q}`, res)); n != 0 {
				got = append(got, fmt.Sprintf("%s=%v", res, n))
			}
		}
		if strings.Join(got, " ") != "error=1 callee_lost=1" {
			return fmt.Errorf("forwarded calls counted %v, want error=1 callee_lost=1", got)
		}
		return nil
	}, "the forwarded calls counted by how they ended")
}

// TestStalledReaderIsSlow: a subscriber that stops reading while less than
// its queue's bound waits for it is closed once a write to it stalls for
// the write timeout, and that close is counted as slow (a reader that does
// not keep up), not as a client gone.
func TestStalledReaderIsSlow(t *testing.T) {
	r, srv := start(t, Config{})
	pub, big := slowSubscriber(t, srv)
	queued := func() int64 { // the most any session has queued
		r.mu.Lock()
		defer r.mu.Unlock()
		var n int64
		for s := range r.sessions {
			n = max(n, s.queued.Load())
		}
		return n
	}
	// Acknowledged, so each event is queued before the next is sent; stop
	// once one waits behind the one being written (120 KiB of 256 KiB).
	for i := 0; queued() < int64(2*len(big)); i++ {
		if i == 1000 {
			t.Fatal("1000 events of 60 KiB sent to a subscriber that reads nothing, and none waits for it")
		}
		pub.send(mPublish, i+1, map[string]any{"acknowledge": true}, "t", []any{big})
		pub.expect(mPublished)
	}
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="slow"}`)+
			relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="gone"}`) == 1
	}, "the stalled subscriber closed")
	if n := relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="slow"}`); n != 1 {
		t.Fatalf("the stalled subscriber's close counted as slow %v times (gone: %v), want 1", n,
			relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="gone"}`))
	}
}

// TestDrainRefusesAndAborts: once the drain has begun, an upgrade that
// still reaches the router (on an HTTP connection kept alive from before)
// is refused before the upgrade, 503, not switched and then closed bare;
// and a session that has not been welcomed gets ABORT system_shutdown,
// not GOODBYE, which WAMP allows only inside an established session.
func TestDrainRefusesAndAborts(t *testing.T) {
	_, srv := start(t, Config{Apps: map[string]string{"app": "k"}})
	// A keep-alive HTTP connection opened before the drain.
	c, err := net.Dial("tcp", relaytest.Addr(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(relaytest.Patience))
	fmt.Fprintf(c, "GET /nothing-here HTTP/1.1\r\nHost: relay\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// Sessions not yet welcomed: one said nothing, one is challenged.
	quiet := dial(t, srv)
	challenged := dial(t, srv)
	challenged.send(mHello, "app", map[string]any{"authmethods": []string{"ticket"}, "roles": map[string]any{"caller": map[string]any{}}})
	challenged.expect(mChallenge)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Shutdown(ctx)
	for _, p := range []*peer{quiet, challenged} {
		if m := p.recv(); m.Type != mAbort || str(t, m, 1) != closeShutdown {
			t.Fatalf("a session not yet welcomed got %d %s at the drain, want ABORT %s", m.Type, fields(m), closeShutdown)
		}
		p.closed()
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n\r\n", Subprotocol)
	// The drain also closes idle keep-alive connections (net/http's
	// Shutdown): the upgrade finds its connection closed, or, where it
	// came first, is answered 503; never 101.
	resp, err = http.ReadResponse(br, nil)
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
	case err != nil:
		t.Fatalf("an upgrade during the drain: %v", err)
	case resp.StatusCode != http.StatusServiceUnavailable:
		t.Fatalf("an upgrade during the drain answered %s, want 503 (or its connection closed)", resp.Status)
	}
}

// storeHook lets a test fail or hold one Redis command on the node's
// client: fail makes a command with that name fail, and hold (when set)
// is waited on before a command with that name runs.
type storeHook struct {
	name string
	fail bool
	hold chan struct{}
}

func (h *storeHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *storeHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *storeHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != h.name {
			return next(ctx, cmd)
		}
		if h.hold != nil {
			<-h.hold
		}
		if h.fail {
			err := errors.New("store failed (test)")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

// TestFleetClaimStoreErrorNotOwned: a REGISTER whose SETNX finds the
// procedure claimed and whose GET of the owner then fails is refused: a
// store error does not make the claim this node's (or the procedure would
// be registered on two nodes at once).
func TestFleetClaimStoreErrorNotOwned(t *testing.T) {
	addr := relaytest.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	if err := rdb.Set(t.Context(), procKey("main", bob), "n9", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.AddHook(&storeHook{name: "get", fail: true})
	_, srv := start(t, Config{Redis: rdb, NodeID: "n1"})
	b := dial(t, srv)
	b.join("main")
	b.send(mRegister, 1, map[string]any{}, bob)
	m := b.recv()
	if m.Type != mError || str(t, m, 3) != errUnavailable {
		t.Fatalf("REGISTER of a procedure node n9 holds, its owner unreadable: answered %d %s, want ERROR %s", m.Type, fields(m), errUnavailable)
	}
}

// TestFleetRegistrationRoutableOnceClaimed: while a REGISTER's fleet claim
// is under way the procedure takes no calls: a CALL meanwhile does not
// reach the session, which must not get an INVOCATION for a registration
// it was never told of (here the claim fails: another node holds it).
func TestFleetRegistrationRoutableOnceClaimed(t *testing.T) {
	addr := relaytest.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	if err := rdb.Set(t.Context(), procKey("main", bob), "n9", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	rdb.AddHook(&storeHook{name: "set", hold: hold}) // SETNX with a TTL is SET … NX
	released := false
	t.Cleanup(func() {
		if !released {
			close(hold)
		}
	})
	r, srv := start(t, Config{Redis: rdb, NodeID: "n1"})
	b := dial(t, srv)
	b.join("main")
	b.send(mRegister, 1, map[string]any{}, bob)
	relaytest.WaitFor(t, func() bool { return r.registered("main", bob) }, "the REGISTER under way")
	a := dial(t, srv)
	a.join("main")
	a.send(mCall, 1, map[string]any{}, bob, []any{alice})
	answer, aerr := a.next(5 * time.Second)
	close(hold)
	released = true
	if m := b.recv(); m.Type != mError {
		t.Fatalf("the registering session got %d %s before its REGISTER's answer, want ERROR (node n9 holds the procedure)", m.Type, fields(m))
	}
	if aerr != nil || answer.Type != mError || str(t, answer, 3) != errNoSuchProcedure {
		t.Fatalf("a CALL while the claim was under way: %v %d %s, want ERROR %s", aerr, answer.Type, fields(answer), errNoSuchProcedure)
	}
}

// joinCanceling says HELLO as a callee that announces call_canceling.
func (p *peer) joinCanceling(realm string) {
	p.t.Helper()
	p.send(mHello, realm, map[string]any{"roles": map[string]any{"caller": map[string]any{},
		"callee": map[string]any{"features": map[string]any{"call_canceling": true}}}})
	p.expect(mWelcome)
}

// expectInterrupt reads an INTERRUPT for invocation inv in mode.
func (p *peer) expectInterrupt(inv uint64, mode string) {
	p.t.Helper()
	m := p.expect(mInterrupt)
	var opts struct{ Mode string }
	if id(p.t, m, 0) != inv || len(m.Fields) < 2 || json.Unmarshal(m.Fields[1], &opts) != nil || opts.Mode != mode {
		p.t.Fatalf("INTERRUPT %s, want invocation %d, mode %s", fields(m), inv, mode)
	}
}

// TestCancelInterrupts: the dealer honours call_canceling and call_timeout
// as WELCOME advertises them: a CANCEL (killnowait by default) or a
// timeout sends INTERRUPT to a callee that announced call_canceling, and
// its late answer is dropped and counted; in kill mode the caller gets
// the callee's answer to the INTERRUPT; skip, or a callee without the
// feature, gets no INTERRUPT; a caller leaving interrupts its calls.
func TestCancelInterrupts(t *testing.T) {
	_, srv := start(t, Config{CallTimeout: time.Hour})
	b := dial(t, srv)
	b.joinCanceling("main")
	b.register(1, "p")
	c := dial(t, srv) // no call_canceling
	c.join("main")
	c.register(1, "q")
	a := dial(t, srv)
	a.join("main")

	a.send(mCall, 1, map[string]any{}, "p")
	inv := id(t, b.expect(mInvocation), 0)
	a.send(mCancel, 1, map[string]any{})
	if uri := a.expectError(mCall, 1); uri != errCanceled {
		t.Fatalf("killnowait: %q", uri)
	}
	b.expectInterrupt(inv, "killnowait")
	b.send(mYield, inv, map[string]any{}, []any{"late"}) // dropped
	relaytest.WaitFor(t, func() bool { return relaytest.Metric(t, srv, "meetpoint_signal_late_answers_total") == 1 }, "the late YIELD counted")

	a.send(mCall, 2, map[string]any{}, "p")
	inv = id(t, b.expect(mInvocation), 0)
	a.send(mCancel, 2, map[string]any{"mode": "kill"})
	b.expectInterrupt(inv, "kill")
	b.send(mError, mInvocation, inv, map[string]any{}, errCanceled, []any{"cleaned up"})
	if m := a.expect(mError); id(t, m, 1) != 2 || str(t, m, 3) != errCanceled || len(m.Fields) < 5 || string(m.Fields[4]) != `["cleaned up"]` {
		t.Fatalf("kill: the caller got %s, want the callee's ERROR", fields(m))
	}

	a.send(mCall, 3, map[string]any{"timeout": 100}, "p")
	inv = id(t, b.expect(mInvocation), 0)
	if uri := a.expectError(mCall, 3); uri != errTimeout {
		t.Fatalf("timeout: %q", uri)
	}
	b.expectInterrupt(inv, "killnowait")

	a.send(mCall, 4, map[string]any{}, "p")
	id(t, b.expect(mInvocation), 0)
	a.send(mCancel, 4, map[string]any{"mode": "skip"})
	if uri := a.expectError(mCall, 4); uri != errCanceled {
		t.Fatalf("skip: %q", uri)
	}
	a.send(mCall, 5, map[string]any{}, "q")
	c.expect(mInvocation)
	a.send(mCancel, 5, map[string]any{"mode": "kill"}) // c cannot be interrupted: skipped
	if uri := a.expectError(mCall, 5); uri != errCanceled {
		t.Fatalf("kill on a callee without call_canceling: %q", uri)
	}
	a.send(mCancel, 6, map[string]any{"mode": "bogus"})
	if uri := a.expectError(mCancel, 6); uri != errInvalidArgument {
		t.Fatalf("a bad mode: %q", uri)
	}
	// Neither skipped callee got an INTERRUPT: its next message is the next INVOCATION.
	a.send(mCall, 7, map[string]any{}, "q")
	c.expect(mInvocation)
	a.send(mCall, 8, map[string]any{}, "p")
	inv = id(t, b.expect(mInvocation), 0)

	a.c.Close() // the caller leaves: its call to b is interrupted
	b.expectInterrupt(inv, "killnowait")
}

// TestFleetCancelInterrupts: a CANCEL of a call forwarded to another node
// interrupts the callee there: killnowait answers the caller at once;
// kill waits for the callee's answer, carried back across the fleet.
func TestFleetCancelInterrupts(t *testing.T) {
	addr := relaytest.Redis(t)
	node := func(name string) *relay.Server {
		_, srv, _ := startNode(t, addr, Config{NodeID: name, CallTimeout: time.Hour})
		return srv
	}
	n1, n2 := node("n1"), node("n2")
	b := dial(t, n2)
	b.joinCanceling("main")
	b.register(1, "p")
	a := dial(t, n1)
	a.join("main")

	a.send(mCall, 1, map[string]any{}, "p")
	inv := id(t, b.expect(mInvocation), 0)
	a.send(mCancel, 1, map[string]any{"mode": "killnowait"})
	if uri := a.expectError(mCall, 1); uri != errCanceled {
		t.Fatalf("killnowait: %q", uri)
	}
	b.expectInterrupt(inv, "killnowait")

	a.send(mCall, 2, map[string]any{}, "p")
	inv = id(t, b.expect(mInvocation), 0)
	a.send(mCancel, 2, map[string]any{"mode": "kill"})
	b.expectInterrupt(inv, "kill")
	b.send(mError, mInvocation, inv, map[string]any{}, errCanceled, []any{"cleaned up"})
	if m := a.expect(mError); id(t, m, 1) != 2 || str(t, m, 3) != errCanceled || len(m.Fields) < 5 || string(m.Fields[4]) != `["cleaned up"]` {
		t.Fatalf("kill across nodes: the caller got %s, want the callee's ERROR", fields(m))
	}
	relaytest.WaitFor(t, func() bool {
		return relaytest.Metric(t, n1, `meetpoint_signal_forwarded_total{result="canceled"}`) == 2 &&
			relaytest.Metric(t, n2, `meetpoint_signal_calls_total{result="canceled"}`) == 2
	}, "both calls counted canceled on both nodes")
}

// TestRequestOptionsAreDicts: a REGISTER or SUBSCRIBE whose Options are
// not a dictionary is refused (wamp.error.protocol_violation), as a
// CALL's are, not taken as if they were empty.
func TestRequestOptionsAreDicts(t *testing.T) {
	_, srv := start(t, Config{})
	p := dial(t, srv)
	p.join("main")
	for i, typ := range []int{mRegister, mSubscribe, mCall} {
		p.send(typ, i+1, "not options", "io.example.x")
		if m := p.recv(); m.Type != mError || str(t, m, 3) != errProtocolViolation {
			t.Errorf("message type %d with Options a string: %d %s, want ERROR %s", typ, m.Type, fields(m), errProtocolViolation)
		}
	}
	p.register(4, "io.example.x") // the session goes on
}

// TestPatternMatchRefused: the router matches procedures and topics
// exactly and does not announce pattern_based_registration or
// pattern_based_subscription; a REGISTER or SUBSCRIBE asking for prefix
// or wildcard matching is refused (wamp.error.invalid_argument), not
// registered or subscribed exactly, which would leave the client waiting
// for calls and events that never match.
func TestPatternMatchRefused(t *testing.T) {
	_, srv := start(t, Config{})
	p := dial(t, srv)
	p.join("main")
	for i, tc := range []struct {
		typ   int
		match any
		uri   string
	}{
		{mSubscribe, "prefix", "io.example"},
		{mSubscribe, "wildcard", "io..peers"},
		{mRegister, "prefix", "io.example"},
		{mRegister, "wildcard", "io..offer"},
		{mRegister, 7, "io.example.q"},
	} {
		p.send(tc.typ, i+1, map[string]any{"match": tc.match}, tc.uri)
		if m := p.recv(); m.Type != mError || str(t, m, 3) != errInvalidArgument {
			t.Errorf("message type %d with match %v: %d %s, want ERROR %s", tc.typ, tc.match, m.Type, fields(m), errInvalidArgument)
		}
	}
	p.send(mSubscribe, 10, map[string]any{"match": "exact"}, "io.example.t")
	p.expect(mSubscribed)
	p.send(mRegister, 11, map[string]any{"match": "exact"}, "io.example.p")
	p.expect(mRegistered)
}

// TestPublishAudienceRefused: the broker does not implement subscriber
// black- and whitelisting (and does not announce it); a PUBLISH that
// names its audience (eligible, exclude and their authid and authrole
// forms) is refused, not delivered to every subscriber: one meant for a
// single session would reach all.
func TestPublishAudienceRefused(t *testing.T) {
	_, srv := start(t, Config{})
	sub, pub := dial(t, srv), dial(t, srv)
	subID := sub.join("main")
	pubID := pub.join("main")
	sub.send(mSubscribe, 1, map[string]any{}, "io.example.t")
	sub.expect(mSubscribed)
	for i, opt := range []string{"eligible", "exclude", "eligible_authid", "exclude_authid", "eligible_authrole", "exclude_authrole"} {
		var v any = []uint64{pubID}
		if opt == "exclude" {
			v = []uint64{subID}
		}
		if strings.HasSuffix(opt, "_authid") {
			v = []string{fmt.Sprint(pubID)}
		}
		if strings.HasSuffix(opt, "_authrole") {
			v = []string{"nobody"}
		}
		pub.send(mPublish, i+1, map[string]any{opt: v, "acknowledge": true}, "io.example.t", []any{"secret"})
		if m := pub.recv(); m.Type != mError || str(t, m, 3) != errOptionNotAllowed {
			t.Errorf("PUBLISH with %s: %d %s, want ERROR %s", opt, m.Type, fields(m), errOptionNotAllowed)
		}
		pub.send(mPublish, 10+i, map[string]any{opt: v}, "io.example.t", []any{"secret"})
	}
	pub.send(mPublish, 20, map[string]any{}, "io.example.t", []any{"for all"})
	if ev := sub.expect(mEvent); string(ev.Fields[3]) != `["for all"]` {
		t.Fatalf("the subscriber got %s, meant for another audience", fields(ev))
	}
}

// TestClientAbortEndsQuietly: a client's ABORT (one that cannot answer
// the ticket CHALLENGE, or that gives up inside its session) ends the
// session without a reply — WAMP answers nothing to ABORT — and is
// counted as the client leaving, not as its protocol violation.
func TestClientAbortEndsQuietly(t *testing.T) {
	_, srv := start(t, Config{Apps: map[string]string{"chat": "0123456789abcdef0123"}})
	p := dial(t, srv)
	p.send(mHello, "chat", map[string]any{"authmethods": []string{"ticket"}})
	p.expect(mChallenge)
	p.send(mAbort, map[string]any{"message": "no ticket here"}, "wamp.error.cannot_authenticate")
	if m, err := p.next(5 * time.Second); err == nil {
		t.Fatalf("the router answered the client's ABORT with %d %s", m.Type, fields(m))
	}
	p = dial(t, srv)
	p.join("main")
	p.send(mAbort, map[string]any{}, "wamp.error.protocol_violation")
	if m, err := p.next(5 * time.Second); err == nil {
		t.Fatalf("the router answered the client's ABORT in a session with %d %s", m.Type, fields(m))
	}
	relaytest.WaitFor(t, func() error {
		if n := relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="goodbye"}`); n != 2 {
			return fmt.Errorf("sessions ended by their client counted %v, protocol closes %v", n,
				relaytest.Metric(t, srv, `meetpoint_signal_closed_total{reason="protocol"}`))
		}
		return nil
	}, "both ABORTs counted as the client leaving")
}

// TestPayloadNotInflated: Arguments and Details travel on as they came;
// a message the router lets in is not re-encoded larger (HTML-escaped:
// '<' as \u003c, six bytes for one) on its way out, where one CALL of
// '<' would overflow the callee's write queue and close it as slow —
// anyone could disconnect any callee (a Babble peer, by its public key),
// or every subscriber of a topic, with one message. Across a fleet too.
func TestPayloadNotInflated(t *testing.T) {
	_, srv := start(t, Config{})
	notInflated(t, srv, srv)
	addr := relaytest.Redis(t)
	_, n1, _ := startNode(t, addr, Config{NodeID: "n1"})
	_, n2, _ := startNode(t, addr, Config{NodeID: "n2"})
	notInflated(t, n1, n2)
}

// notInflated calls a callee on calleeSrv from callerSrv with arguments
// of '<', '>' and '&', and sees the INVOCATION, the RESULT and an ERROR's
// Details arrive no larger than they were sent.
func notInflated(t *testing.T, calleeSrv, callerSrv *relay.Server) {
	t.Helper()
	callee, caller := dial(t, calleeSrv), dial(t, callerSrv)
	callee.join("main")
	caller.join("main")
	callee.register(1, bob)
	big := strings.Repeat("<>&", 20000) // 60 KB; 360 KB escaped
	for req := 1; req <= 2; req++ {
		caller.raw([]byte(fmt.Sprintf(`[48,%d,{},"%s",["%s","%s"]]`, req, bob, alice, big))) // as it is: json.Marshal would escape it
		inv, err := callee.next(5 * time.Second)
		if err != nil || inv.Type != mInvocation {
			t.Fatalf("the callee got no INVOCATION (%v), closed as slow: %v", err,
				relaytest.Metric(t, calleeSrv, `meetpoint_signal_closed_total{reason="slow"}`))
		}
		var args []string
		if err := json.Unmarshal(inv.Fields[3], &args); err != nil || len(args) != 2 || args[1] != big {
			t.Fatalf("INVOCATION arguments: %v", err)
		}
		if n := len(inv.Fields[3]); n > len(big)+len(alice)+16 {
			t.Fatalf("INVOCATION arguments grew to %d bytes from %d", n, len(big)+len(alice)+7)
		}
		if req == 1 {
			callee.raw([]byte(fmt.Sprintf(`[70,%d,{},["%s"]]`, id(t, inv, 0), big)))
			if n := len(caller.expect(mResult).Fields[2]); n > len(big)+16 {
				t.Fatalf("RESULT arguments grew to %d bytes from %d", n, len(big)+4)
			}
			continue
		}
		callee.raw([]byte(fmt.Sprintf(`[8,68,%d,{"message":"%s"},"io.babble.processing_offer"]`, id(t, inv, 0), big)))
		m, err := caller.next(5 * time.Second)
		if err != nil || m.Type != mError {
			t.Fatalf("the caller got no ERROR (%v)", err)
		}
		if n := len(m.Fields[2]); n > len(big)+16 {
			t.Fatalf("ERROR details grew to %d bytes from %d", n, len(big)+14)
		}
	}
}
