package wamp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// splitConn is a client's connection that records what the client writes
// and, once the client has written the header of a text frame (a frame is
// written as its header, then its payload), holds that write until a pong
// is written or a while has passed: a pong written from another goroutine
// without the client's write lock lands inside the frame.
type splitConn struct {
	net.Conn // reads: what the test's router side writes
	mu       sync.Mutex
	out      bytes.Buffer
	header   chan struct{} // closed at the first text frame header
	pong     chan struct{} // closed at the first pong
	once     [2]sync.Once
}

func (c *splitConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.out.Write(b)
	c.mu.Unlock()
	switch {
	case len(b) > 0 && ws.OpCode(b[0]&0x0f) == ws.OpPong:
		c.once[1].Do(func() { close(c.pong) })
	case len(b) > 0 && b[0] == 0x80|byte(ws.OpText) && len(b) <= ws.MaxHeaderSize:
		c.once[0].Do(func() { close(c.header) })
		select {
		case <-c.pong:
		case <-time.After(300 * time.Millisecond):
		}
	}
	return len(b), nil
}

// TestClientPongInsideAFrame: the client answers the router's pings (every
// PingEvery) from its reading goroutine while calls write from theirs;
// the pong must not land between a frame's header and its payload, which
// breaks the stream (the router sees a frame it cannot read and drops the
// session).
func TestClientPongInsideAFrame(t *testing.T) {
	cc, sc := net.Pipe()
	t.Cleanup(func() { cc.Close(); sc.Close() })
	conn := &splitConn{Conn: cc, header: make(chan struct{}), pong: make(chan struct{})}
	c := newClient(conn)
	go c.loop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go c.Call(ctx, "io.example.p", "an offer")
	select {
	case <-conn.header:
	case <-ctx.Done():
		t.Fatal("the client wrote no CALL")
	}
	if err := wsutil.WriteServerMessage(sc, ws.OpPing, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-conn.pong:
	case <-ctx.Done():
		t.Fatal("the client did not answer the ping")
	}
	conn.mu.Lock()
	out := bytes.NewReader(bytes.Clone(conn.out.Bytes()))
	conn.mu.Unlock()
	var ops []ws.OpCode
	for out.Len() > 0 {
		h, err := ws.ReadHeader(out)
		if err != nil || h.Length > int64(out.Len()) {
			t.Fatalf("the client's stream breaks after frames %v: %v (header %+v)", ops, err, h)
		}
		f := ws.Frame{Header: h, Payload: make([]byte, h.Length)}
		_, _ = io.ReadFull(out, f.Payload)
		ops = append(ops, f.Header.OpCode)
		if f.Header.OpCode == ws.OpText {
			f = ws.UnmaskFrameInPlace(f)
			if m, err := Parse(f.Payload); err != nil || m.Type != mCall {
				t.Fatalf("the client's CALL reads as %q (a pong inside it)", f.Payload)
			}
		}
	}
	if len(ops) != 2 || ops[0] != ws.OpText || ops[1] != ws.OpPong {
		t.Fatalf("the client wrote frames %v, want a CALL, then a pong", ops)
	}
}

// TestClientInvocationRightAfterRegistered: a router may send an
// INVOCATION right behind REGISTERED (a caller was waiting for the
// procedure); the client must route it to the handler just registered,
// not answer it wamp.error.no_such_procedure because Register has not yet
// stored its handler.
func TestClientInvocationRightAfterRegistered(t *testing.T) {
	for i := 0; i < 50; i++ {
		cc, sc := net.Pipe()
		c := newClient(cc)
		go c.loop()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		registered := make(chan error, 1)
		go func() {
			registered <- c.Register(ctx, "io.example.p", func([]json.RawMessage) ([]any, error) { return []any{"answer"}, nil })
		}()
		b, err := wsutil.ReadClientText(sc)
		if m, perr := Parse(b); err != nil || perr != nil || m.Type != mRegister {
			t.Fatalf("the client's REGISTER: %q %v %v", b, err, perr)
		}
		// REGISTERED and an INVOCATION for it, in one write.
		var both bytes.Buffer
		_ = wsutil.WriteServerText(&both, encode(mRegistered, 1, 7))
		_ = wsutil.WriteServerText(&both, encode(mInvocation, 100, 7, details, []any{"offer"}))
		if _, err := sc.Write(both.Bytes()); err != nil {
			t.Fatal(err)
		}
		b, err = wsutil.ReadClientText(sc)
		m, perr := Parse(b)
		if err != nil || perr != nil || m.Type != mYield {
			t.Fatalf("try %d: the client answered an INVOCATION right behind REGISTERED with %s, want YIELD", i, b)
		}
		if err := <-registered; err != nil {
			t.Fatal(err)
		}
		cancel()
		cc.Close()
		sc.Close()
	}
}

// TestClientCallCanceled: a Call whose context ends CANCELs the call at
// the router, which frees its place among the session's calls in flight
// (MaxPending) there and then, not at the router's call timeout.
func TestClientCallCanceled(t *testing.T) {
	_, srv := start(t, Config{MaxPending: 1, CallTimeout: time.Hour})
	callee := dial(t, srv)
	callee.join("main")
	callee.register(1, "io.example.p")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, relaytest.WSURL(srv), "main", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := c.Call(first, "io.example.p", "one"); done <- err }()
	callee.expect(mInvocation) // never answered
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled call: %v", err)
	}
	type result struct {
		res []json.RawMessage
		err error
	}
	second := make(chan result, 1)
	go func() { res, err := c.Call(ctx, "io.example.p", "two"); second <- result{res, err} }()
	var got result
	select {
	case m := <-callee.invoked():
		callee.send(mYield, id(t, m, 0), map[string]any{}, []any{"two"})
		got = <-second
	case got = <-second:
	}
	if res, err := got.res, got.err; err != nil || len(res) != 1 || string(res[0]) != `"two"` {
		t.Fatalf("a call after a canceled one: %s %v (the canceled one still in flight at the router)", res, err)
	}
}

// invoked reads the next INVOCATION in the background.
func (p *peer) invoked() <-chan Message {
	ch := make(chan Message, 1)
	go func() {
		if m, err := p.next(5 * time.Second); err == nil && m.Type == mInvocation {
			ch <- m
		}
	}()
	return ch
}
