package wamp

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Client is a small WAMP caller and callee (what Babble's WebRTC
// transport needs from its router: register a procedure, call another
// peer's), for Go programs and tests. It is not a full WAMP client: no
// pub/sub, no progressive results. One goroutine reads; calls may be made
// from any goroutine.
type Client struct {
	conn net.Conn
	wmu  sync.Mutex // serialises writes: requests', answers' and the reader's pongs and close replies

	mu      sync.Mutex
	next    uint64
	waiting map[uint64]chan Message // request id → its answer
	procs   map[uint64]Handler      // registration id → handler
	// registering is a REGISTER's handler by its request id, until the
	// reader files it under the registration id at REGISTERED, before
	// it reads on: an INVOCATION right behind REGISTERED finds it.
	registering map[uint64]Handler
	err         error // why the session ended
	done        chan struct{}
}

// Handler answers an invocation of a registered procedure with its
// Arguments, or an error (a *CallError keeps its URI; any other error is
// sent as wamp.error.runtime_error).
type Handler func(args []json.RawMessage) ([]any, error)

// CallError is a WAMP ERROR: its URI and Arguments.
type CallError struct {
	URI  string
	Args []json.RawMessage
}

func (e *CallError) Error() string { return "wamp: " + e.URI }

// ErrClosed is returned once the session has ended.
var ErrClosed = errors.New("wamp: session closed")

// Dial opens a WebSocket (wamp.2.json) to url (ws:// or wss://) and joins
// realm; a non-empty ticket answers the router's ticket challenge (a
// registered application's realm).
func Dial(ctx context.Context, url, realm, ticket string) (*Client, error) {
	return DialTLS(ctx, url, realm, ticket, nil)
}

// DialTLS is Dial with the TLS configuration for a wss:// URL (nil: the
// system's roots).
func DialTLS(ctx context.Context, url, realm, ticket string, conf *tls.Config) (*Client, error) {
	conn, _, _, err := ws.Dialer{Protocols: []string{Subprotocol}, TLSConfig: conf}.Dial(ctx, url)
	if err != nil {
		return nil, err
	}
	c := newClient(conn)
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	hello := map[string]any{"roles": map[string]any{"caller": map[string]any{}, "callee": map[string]any{}}}
	if ticket != "" {
		hello["authmethods"] = []string{"ticket"}
	}
	if err := c.write(encode(mHello, realm, hello)); err != nil {
		conn.Close()
		return nil, err
	}
	for {
		m, err := c.read()
		if err != nil {
			conn.Close()
			return nil, err
		}
		switch m.Type {
		case mChallenge:
			if err := c.write(encode(mAuthenticate, ticket, details)); err != nil {
				conn.Close()
				return nil, err
			}
			continue
		case mWelcome:
			_ = conn.SetDeadline(time.Time{})
			go c.loop()
			return c, nil
		case mAbort:
			conn.Close()
			uri := ""
			m.decode(1, &uri)
			return nil, &CallError{URI: uri}
		}
		conn.Close()
		return nil, fmt.Errorf("wamp: message type %d before WELCOME", m.Type)
	}
}

// newClient is a client on conn, its session not yet established.
func newClient(conn net.Conn) *Client {
	return &Client{conn: conn, waiting: map[uint64]chan Message{}, procs: map[uint64]Handler{},
		registering: map[uint64]Handler{}, done: make(chan struct{})}
}

func (c *Client) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return wsutil.WriteClientText(c.conn, b)
}

// read reads the next text message; the control frames before it are
// answered (pongs, a close reply) under the write lock, as every write is:
// a frame is written as its header, then its payload, and a pong between
// them would break the stream.
func (c *Client) read() (Message, error) {
	for {
		b, op, err := wsutil.ReadServerData(lockedConn{c})
		if err != nil {
			return Message{}, err
		}
		if op == ws.OpText {
			return Parse(b)
		}
	}
}

// lockedConn reads the client's connection and writes it under its write
// lock.
type lockedConn struct{ c *Client }

func (l lockedConn) Read(p []byte) (int, error) { return l.c.conn.Read(p) }
func (l lockedConn) Write(p []byte) (int, error) {
	l.c.wmu.Lock()
	defer l.c.wmu.Unlock()
	return l.c.conn.Write(p)
}

// Close says GOODBYE and closes the connection.
func (c *Client) Close() error {
	_ = c.write(encode(mGoodbye, details, closeNormal))
	return c.conn.Close()
}

// Done is closed when the session ends.
func (c *Client) Done() <-chan struct{} { return c.done }

// loop dispatches what the router sends.
func (c *Client) loop() {
	var err error
	defer func() {
		c.mu.Lock()
		c.err = err
		for _, ch := range c.waiting {
			close(ch)
		}
		c.waiting = nil
		c.mu.Unlock()
		close(c.done)
		c.conn.Close()
	}()
	for {
		var m Message
		if m, err = c.read(); err != nil {
			return
		}
		switch m.Type {
		case mInvocation:
			go c.invoked(m)
		case mRegistered, mUnregistered, mResult, mError:
			at := 0
			if m.Type == mError {
				at = 1
			}
			req, _ := m.ID(at)
			c.mu.Lock()
			ch := c.waiting[req]
			delete(c.waiting, req)
			if h := c.registering[req]; h != nil {
				if reg, err := m.ID(1); m.Type == mRegistered && err == nil {
					c.procs[reg] = h
				}
				delete(c.registering, req)
			}
			c.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		case mGoodbye, mAbort:
			err = ErrClosed
			return
		}
	}
}

// invoked runs a handler and YIELDs (or ERRORs) its answer.
func (c *Client) invoked(m Message) {
	inv, _ := m.ID(0)
	reg, _ := m.ID(1)
	c.mu.Lock()
	h := c.procs[reg]
	c.mu.Unlock()
	var args []json.RawMessage
	m.decode(3, &args)
	if h == nil {
		_ = c.write(encode(mError, mInvocation, inv, details, errNoSuchProcedure))
		return
	}
	res, err := h(args)
	if err != nil {
		var ce *CallError
		if errors.As(err, &ce) {
			var payload json.RawMessage // nil: no Arguments
			if ce.Args != nil {
				payload, _ = json.Marshal(ce.Args)
			}
			_ = c.write(encode(mError, mInvocation, inv, map[string]any{"message": err.Error()}, ce.URI, payload))
			return
		}
		_ = c.write(encode(mError, mInvocation, inv, map[string]any{}, "wamp.error.runtime_error", []any{err.Error()}))
		return
	}
	if res == nil {
		res = []any{}
	}
	_ = c.write(encode(mYield, inv, details, res))
}

// request sends a message built with its request id and waits for the
// answer. A CALL (call) whose ctx ends first is CANCELed: the router
// ends it then, and it stops counting among the session's calls in
// flight there, instead of at its timeout.
func (c *Client) request(ctx context.Context, call bool, build func(req uint64) []byte) (Message, error) {
	c.mu.Lock()
	if c.waiting == nil {
		c.mu.Unlock()
		return Message{}, ErrClosed
	}
	c.next++
	req := c.next
	ch := make(chan Message, 1)
	c.waiting[req] = ch
	c.mu.Unlock()
	if err := c.write(build(req)); err != nil {
		return Message{}, err
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return Message{}, ErrClosed
		}
		if m.Type == mError {
			e := &CallError{}
			m.decode(3, &e.URI)
			m.decode(4, &e.Args)
			return Message{}, e
		}
		return m, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.waiting, req)
		c.mu.Unlock()
		if call {
			_ = c.write(encode(mCancel, req, details)) // its ERROR (canceled) is dropped
		}
		return Message{}, ctx.Err()
	}
}

// Register registers proc with handler h.
func (c *Client) Register(ctx context.Context, proc string, h Handler) error {
	var req uint64
	_, err := c.request(ctx, false, func(id uint64) []byte {
		req = id
		c.mu.Lock()
		c.registering[id] = h // filed by the reader at REGISTERED
		c.mu.Unlock()
		return encode(mRegister, id, details, proc)
	})
	if err != nil {
		c.mu.Lock()
		delete(c.registering, req)
		c.mu.Unlock()
	}
	return err
}

// Call calls proc with args and returns the result's Arguments; a ctx
// that ends first CANCELs the call at the router.
func (c *Client) Call(ctx context.Context, proc string, args ...any) ([]json.RawMessage, error) {
	opts := map[string]any{}
	if d, ok := ctx.Deadline(); ok {
		opts["timeout"] = max(time.Until(d).Milliseconds(), 1)
	}
	if args == nil {
		args = []any{}
	}
	m, err := c.request(ctx, true, func(req uint64) []byte { return encode(mCall, req, opts, proc, args) })
	if err != nil {
		return nil, err
	}
	var res []json.RawMessage
	m.decode(2, &res)
	return res, nil
}
