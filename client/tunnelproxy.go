package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
)

// TPOptions configure the TunnelProxy API (nymea 1.x): RegisterTPServer
// makes this program the device, DialTPClient reaches a device.
type TPOptions struct {
	// URL of the relay: ws://, wss://, tcp:// or tls://.
	URL string
	// UUID of this server or client; empty means a random one.
	UUID string
	// Name of this server or client.
	Name string
	// ServerUUID is the device to reach (DialTPClient only).
	ServerUUID string
	// Timeout bounds connecting and registering (default 30s).
	Timeout time.Duration
	// PingInterval is how often a server pings the relay (default 30s; the
	// relay drops servers silent for 60s).
	PingInterval time.Duration
	// TLSConfig is used for wss:// and tls://.
	TLSConfig *tls.Config
	// Verbose, if set, receives the JSON-RPC exchange of the registration.
	Verbose io.Writer
	// Binary: a client's Tunnel sends BINARY WebSocket messages only
	// (see Options.Binary).
	Binary bool
	// Refused, if set, is told of each local connection ServeTPClients
	// could not carry (the relay refused or was unreachable); the local
	// connection is closed either way.
	Refused func(local net.Addr, err error)
	// MaxQueued bounds, in bytes, a registered server's data from one
	// client that the application has not Read (default
	// DefaultTPMaxQueued). While a client's queue is full the server stops
	// reading the relay (TCP flow control slows the client down, and the
	// server's other clients wait with it); see StallTimeout.
	MaxQueued int
	// StallTimeout is how long a full queue may go without a Read before
	// its client is disconnected alone (ErrTPClientSlow), so that one
	// stalled reader holds up the server's other clients this long at
	// most (default DefaultTPStallTimeout). Keep it under the relay's
	// write-stall timeout (10 s by default), or the relay drops the whole
	// server instead.
	StallTimeout time.Duration
}

// DefaultTPMaxQueued is TPOptions.MaxQueued when it is zero: 1 MiB.
const DefaultTPMaxQueued = 1 << 20

// DefaultTPStallTimeout is TPOptions.StallTimeout when it is zero: 5 s,
// half the relay's default write-stall timeout.
const DefaultTPStallTimeout = 5 * time.Second

// ErrTPClientSlow is what a TPConn's Read returns once its client was
// disconnected because the application left TPOptions.MaxQueued bytes
// unread for TPOptions.StallTimeout: the server dropped what it held and
// asked the relay to disconnect the client.
var ErrTPClientSlow = errors.New("tunnelproxy: client disconnected: slow reader (MaxQueued bytes unread for StallTimeout)")

func (o TPOptions) options() Options {
	return Options{URL: o.URL, Timeout: o.Timeout, Verbose: o.Verbose, TLSConfig: o.TLSConfig}
}

// TPError is a TunnelProxy reply carrying a tunnelProxyError other than
// TunnelProxyErrorNoError.
type TPError struct{ Value string }

func (e *TPError) Error() string { return "tunnelproxy: " + e.Value }

func tpResult(m map[string]any) error {
	params, err := replyParams(m)
	if err != nil {
		return err
	}
	v, _ := params["tunnelProxyError"].(string)
	if v != "TunnelProxyErrorNoError" {
		return &TPError{Value: v}
	}
	return nil
}

// DialTPClient registers as a client of device o.ServerUUID and returns the
// stream to it. Errors: *TPError (e.g. TunnelProxyErrorServerNotFound),
// *RPCError, ErrTimeout.
func DialTPClient(ctx context.Context, o TPOptions) (*Tunnel, error) {
	r, err := tpRegister(ctx, o, "TunnelProxy.RegisterClient", map[string]any{
		"clientName": o.Name, "clientUuid": orNewUUID(o.UUID), "serverUuid": o.ServerUUID})
	if err != nil {
		return nil, err
	}
	tun := &Tunnel{r: r, peerUUID: o.ServerUUID}
	tun.text.Binary = o.Binary
	return tun, nil
}

// tpRegister connects and makes one TunnelProxy registration call; on
// success the connection is handed back for the stream that follows.
func tpRegister(ctx context.Context, o TPOptions, method string, params map[string]any) (*Raw, error) {
	var r *Raw
	err := withTimeout(ctx, o.options(), func(raw *Raw, _ func()) error {
		m, err := raw.Call(1, method, params)
		if err != nil {
			return fmt.Errorf("%s: %w", method, err)
		}
		if err := tpResult(m); err != nil {
			return err
		}
		r = raw
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.verbose = nil
	return r, nil
}

func orNewUUID(u string) string {
	if u == "" {
		return NewUUID()
	}
	return u
}

// TPServer is a registered TunnelProxy server (a device): clients reaching
// it arrive through Accept, each as a TPConn multiplexed over one relay
// connection with SLIP framing. One read loop serves them all: it holds at
// most TPOptions.MaxQueued unread bytes per client, waits while a client's
// queue is full, and disconnects a client whose reader took nothing for
// TPOptions.StallTimeout. At most TPAcceptBacklog clients wait for
// Accept; one arriving beyond them is disconnected at once (Refused).
type TPServer struct {
	r         *Raw
	accept    chan *TPConn // TPAcceptBacklog clients at most
	refused   atomic.Int64 // clients disconnected on arrival: accept was full
	done      chan struct{}
	maxQueued int           // TPOptions.MaxQueued
	stall     time.Duration // TPOptions.StallTimeout

	mu     sync.Mutex
	conns  map[uint16]*TPConn
	err    error // why the server connection ended
	nextID int
}

// TPAcceptBacklog is how many arrived clients a TPServer keeps for
// Accept; more are disconnected as they arrive, so that an application
// that stops calling Accept never holds up the server's read loop (and
// with it the server's other clients).
const TPAcceptBacklog = 64

// RegisterTPServer registers o.UUID as a server and starts serving.
func RegisterTPServer(ctx context.Context, o TPOptions) (*TPServer, error) {
	r, err := tpRegister(ctx, o, "TunnelProxy.RegisterServer", map[string]any{
		"serverName": o.Name, "serverUuid": orNewUUID(o.UUID)})
	if err != nil {
		return nil, err
	}
	s := &TPServer{r: r, accept: make(chan *TPConn, TPAcceptBacklog), done: make(chan struct{}),
		conns: make(map[uint16]*TPConn), nextID: 100, maxQueued: o.MaxQueued, stall: o.StallTimeout}
	if s.maxQueued <= 0 {
		s.maxQueued = DefaultTPMaxQueued
	}
	if s.stall <= 0 {
		s.stall = DefaultTPStallTimeout
	}
	go s.readLoop()
	every := o.PingInterval
	if every <= 0 {
		every = 30 * time.Second
	}
	go s.pingLoop(every)
	return s, nil
}

// Accept returns the next client, or the error that ended the server.
func (s *TPServer) Accept() (*TPConn, error) {
	select {
	case c := <-s.accept:
		return c, nil
	case <-s.done:
		s.mu.Lock()
		defer s.mu.Unlock()
		return nil, s.err
	}
}

// Refused returns how many clients were disconnected as they arrived
// because TPAcceptBacklog clients already waited for Accept.
func (s *TPServer) Refused() int64 { return s.refused.Load() }

// Close unregisters the server (the relay closes its clients).
func (s *TPServer) Close() error {
	return s.fail(net.ErrClosed)
}

// fail ends the server for err, once: its clients end and its relay
// connection is closed, so that the relay unregisters it at once (a
// connection left open would keep its uuid and its clients, unread, for
// the relay's dead-server timeout). It returns what closing the
// connection returned; nil after the first call.
func (s *TPServer) fail(err error) error {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil
	}
	s.err = err
	close(s.done)
	for _, c := range s.conns {
		c.end()
	}
	s.mu.Unlock()
	return s.r.Close()
}

// send writes one SLIP frame to the relay.
func (s *TPServer) send(addr uint16, payload []byte) error {
	frame := handshake.AppendSLIP(nil, addr, payload)
	if s.r.isWS {
		return s.r.writeFrame(ws.OpBinary, frame)
	}
	s.r.wmu.Lock()
	defer s.r.wmu.Unlock()
	_, err := s.r.conn.Write(frame)
	return err
}

func (s *TPServer) call(method string, params map[string]any) error {
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	s.mu.Unlock()
	b, _ := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	return s.send(0, append(b, '\n'))
}

func (s *TPServer) pingLoop(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			if err := s.call("TunnelProxy.Ping", map[string]any{"timestamp": time.Now().Unix()}); err != nil {
				s.fail(err)
				return
			}
		}
	}
}

func (s *TPServer) readLoop() {
	var dec handshake.SLIPDecoder
	var rpc handshake.SLIPHold // JSON-RPC from the relay, at most 64 KiB
	piece := func(addr uint16, data []byte, ev handshake.SLIPEvent) error {
		if addr == 0 {
			msg, err := rpc.Add(data, ev)
			if msg != nil {
				s.rpc(msg)
			}
			return err
		}
		s.data(addr, data, ev)
		return nil
	}
	buf := make([]byte, 32<<10)
	if !s.r.isWS { // the newline ending the registration reply may come late: it is no SLIP byte
		if err := s.r.dropNewline(); err != nil {
			s.fail(err)
			return
		}
	}
	for {
		var data []byte
		if s.r.isWS {
			_, msg, err := s.r.readMessage()
			if err != nil {
				s.fail(err)
				return
			}
			data = msg
		} else {
			n, err := s.r.br.Read(buf)
			if err != nil {
				s.fail(err)
				return
			}
			data = buf[:n]
		}
		if err := dec.Feed(data, piece); err != nil {
			s.fail(err)
			return
		}
	}
}

// data hands a piece of a client's SLIP frame to its TPConn as it
// arrives: frames are not reassembled, whatever their size. It does not
// wait for the TPConn's reader; a dropped client's data is discarded.
func (s *TPServer) data(addr uint16, p []byte, ev handshake.SLIPEvent) {
	s.mu.Lock()
	c := s.conns[addr]
	s.mu.Unlock()
	switch {
	case c == nil:
	case ev == handshake.SLIPAbort: // a malformed frame, partly delivered: the stream has a hole
		_ = c.Close()
	case len(p) > 0:
		c.deliver(p)
	}
}

// rpc handles one JSON-RPC message from the relay (address 0).
func (s *TPServer) rpc(payload []byte) {
	var m struct {
		Notification string         `json:"notification"`
		Params       map[string]any `json:"params"`
	}
	if err := json.Unmarshal(payload, &m); err != nil {
		return // a reply we do not wait for, or noise
	}
	p := m.Params
	switch m.Notification {
	case "TunnelProxy.ClientConnected":
		a, _ := p["socketAddress"].(float64)
		c := &TPConn{s: s, addr: uint16(a), ready: make(chan struct{}, 1), took: make(chan struct{}, 1), closed: make(chan struct{})}
		c.Name, _ = p["clientName"].(string)
		c.UUID, _ = p["clientUuid"].(string)
		c.PeerAddress, _ = p["clientPeerAddress"].(string)
		s.mu.Lock()
		s.conns[c.addr] = c
		s.mu.Unlock()
		select {
		case s.accept <- c:
		default: // the backlog is full: the read loop must not wait for Accept
			s.refused.Add(1)
			if c.forget() {
				go s.call("TunnelProxy.DisconnectClient", map[string]any{"socketAddress": c.addr})
			}
		}
	case "TunnelProxy.ClientDisconnected":
		a, _ := p["socketAddress"].(float64)
		s.mu.Lock()
		c := s.conns[uint16(a)]
		delete(s.conns, uint16(a))
		s.mu.Unlock()
		if c != nil {
			c.end()
		}
	}
}

// TPConn is one client of a TPServer. It implements net.Conn; deadlines are
// not supported (the methods return nil and have no effect).
type TPConn struct {
	// Name, UUID and PeerAddress come from TunnelProxy.ClientConnected.
	Name, UUID, PeerAddress string

	s      *TPServer
	addr   uint16
	ready  chan struct{} // a token once queue grew or err was set
	took   chan struct{} // a token once Read took bytes from queue
	closed chan struct{}
	once   sync.Once

	mu    sync.Mutex
	queue []byte // delivered, not yet Read: at most s.maxQueued bytes
	err   error  // ErrTPClientSlow once the client was dropped for it
}

// deliver queues p for Read. While the queue holds s.maxQueued bytes it
// waits for Read to take some (the server's read loop, and so its other
// clients, wait with it); after s.stall without a Read the client is
// dropped: its queue is freed, Read returns ErrTPClientSlow and the relay
// is asked to disconnect it. Costs one copy of p (and, amortized, of the
// queue as it grows) and, only when the queue is full, a timer.
func (c *TPConn) deliver(p []byte) {
	var stall *time.Timer
	defer func() {
		if stall != nil {
			stall.Stop()
		}
	}()
	for {
		c.mu.Lock()
		select {
		case <-c.closed:
			c.mu.Unlock()
			return
		default:
		}
		k := min(len(p), c.s.maxQueued-len(c.queue))
		c.queue = append(c.queue, p[:k]...)
		p = p[k:]
		c.mu.Unlock()
		if k > 0 {
			c.signal()
		}
		if len(p) == 0 {
			return
		}
		if stall == nil {
			stall = time.NewTimer(c.s.stall)
		} else {
			stall.Reset(c.s.stall) // Read took some: the stall starts again
		}
		select {
		case <-c.took:
		case <-c.closed:
			return
		case <-c.s.done:
			return
		case <-stall.C:
			c.mu.Lock()
			c.queue, c.err = nil, ErrTPClientSlow
			c.mu.Unlock()
			if c.forget() { // the read loop does not wait on a write for one client
				go c.s.call("TunnelProxy.DisconnectClient", map[string]any{"socketAddress": c.addr})
			}
			return
		}
	}
}

// signal wakes a waiting Read.
func (c *TPConn) signal() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// queuedBytes is how many bytes of the client's data wait for Read.
func (c *TPConn) queuedBytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// end marks c closed; it reports whether this call did.
func (c *TPConn) end() (first bool) {
	c.once.Do(func() { close(c.closed); first = true })
	return first
}

// forget ends c and takes it off its server; false if c had ended.
func (c *TPConn) forget() bool {
	if !c.end() {
		return false
	}
	c.s.mu.Lock()
	if c.s.conns[c.addr] == c {
		delete(c.s.conns, c.addr)
	}
	c.s.mu.Unlock()
	return true
}

// Read reads what the client sent; io.EOF once it is gone, ErrTPClientSlow
// if it was disconnected because TPOptions.MaxQueued bytes waited unread
// for TPOptions.StallTimeout (those are lost).
func (c *TPConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if n, err := c.take(p); n > 0 || err != nil {
			return n, err
		}
		select {
		case <-c.ready:
		case <-c.closed: // what was delivered before still comes first
			if n, err := c.take(p); n > 0 || err != nil {
				return n, err
			}
			return 0, io.EOF
		}
	}
}

// take moves queued bytes into p; an emptied queue frees its memory.
func (c *TPConn) take(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	n := copy(p, c.queue)
	c.queue = c.queue[n:]
	if len(c.queue) == 0 {
		c.queue = nil
	}
	if n > 0 {
		select { // a full queue's deliver waits for this
		case c.took <- struct{}{}:
		default:
		}
	}
	return n, nil
}

// Write sends p to the client (in SLIP frames of at most 32 KiB).
func (c *TPConn) Write(p []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	written := 0
	for len(p) > 0 {
		k := min(len(p), 32<<10)
		if err := c.s.send(c.addr, p[:k]); err != nil {
			return written, err
		}
		written += k
		p = p[k:]
	}
	return written, nil
}

// Close asks the relay to disconnect this client.
func (c *TPConn) Close() error {
	if !c.forget() {
		return nil
	}
	return c.s.call("TunnelProxy.DisconnectClient", map[string]any{"socketAddress": c.addr})
}

// SocketAddress is the client's address on the server connection.
func (c *TPConn) SocketAddress() uint16 { return c.addr }

type tpAddr string

func (a tpAddr) Network() string { return "tunnelproxy" }
func (a tpAddr) String() string  { return string(a) }

// LocalAddr returns the client's socket address on the relay connection.
func (c *TPConn) LocalAddr() net.Addr { return tpAddr(strconv.Itoa(int(c.addr))) }

// RemoteAddr returns the client's address as the relay saw it.
func (c *TPConn) RemoteAddr() net.Addr { return tpAddr(c.PeerAddress) }

// SetDeadline is not supported; it returns nil.
func (c *TPConn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline is not supported; it returns nil.
func (c *TPConn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline is not supported; it returns nil.
func (c *TPConn) SetWriteDeadline(time.Time) error { return nil }

// Bridge serves the TunnelProxy server by connecting every client to
// localAddr (e.g. a device's web UI on 127.0.0.1:80) and copying both ways.
// It returns when the server connection ends. A client whose local
// connection takes less than it sends is slowed down to its pace; one whose
// local connection takes nothing for TPOptions.StallTimeout while
// TPOptions.MaxQueued bytes wait is disconnected (ErrTPClientSlow), and the
// others go on.
func (s *TPServer) Bridge(localAddr string) error {
	for {
		c, err := s.Accept()
		if err != nil {
			return err
		}
		go func() {
			local, err := net.DialTimeout("tcp", localAddr, 10*time.Second)
			if err != nil {
				c.Close()
				return
			}
			pipe(c, local, false)
		}()
	}
}

// ServeTPClients accepts local connections on ln (e.g. from a browser) and
// carries each to the device o.ServerUUID as its own TunnelProxy client. A
// local connection that shuts its sending side still gets what the device
// sends, until the device ends the tunnel or sends nothing for 30 s
// (TunnelProxy has no half-close: the device does not see that end). It
// returns when ln is closed.
func ServeTPClients(ctx context.Context, ln net.Listener, o TPOptions) error {
	for {
		local, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			opts := o
			opts.UUID = ""
			tun, err := DialTPClient(ctx, opts)
			if err != nil {
				if o.Refused != nil && ctx.Err() == nil {
					o.Refused(local.RemoteAddr(), err)
				}
				local.Close()
				return
			}
			pipe(tun, local, true)
		}()
	}
}

// pipe copies both ways between tun and local, and closes both when
// either direction ends — except, with waitReply, local's clean end (its
// FIN: a request then shutdown(SHUT_WR), as nc -N or an HTTP/1.0 client
// does): TunnelProxy has no half-close to pass it on, so it is not passed
// on, and what the tunnel sends flows to local while it keeps coming. A
// FIN looks the same as a client gone for good, so the tunnel is ended
// once nothing came from it for replyIdle (30 s): a device waiting for input
// that will never come must not hold it for ever.
func pipe(tun, local net.Conn, waitReply bool) {
	var moved atomic.Int64     // bytes from tun to local
	done := make(chan bool, 2) // whether both ends are to be closed
	go func() {
		_, err := io.Copy(tun, local)
		done <- err != nil || !waitReply
	}()
	go func() {
		_, _ = io.Copy(countingWriter{local, &moved}, tun)
		done <- true
	}()
	left := 1
	if !<-done { // local's FIN: wait for the reply while it flows
		idle := time.Duration(replyIdle.Load())
		t := time.NewTicker(idle / 8) // ends between idle and 9/8 idle after the last byte
		last, at := moved.Load(), time.Now()
	wait:
		for {
			select {
			case <-done:
				left--
				break wait
			case now := <-t.C:
				if n := moved.Load(); n != last {
					last, at = n, now
				} else if now.Sub(at) >= idle {
					break wait
				}
			}
		}
		t.Stop()
	}
	tun.Close()
	local.Close()
	if left > 0 {
		<-done
	}
}

// replyIdle is how long ServeTPClients keeps a tunnel after its local
// client's FIN while nothing comes from the device, in nanoseconds (30 s;
// tests shorten it).
var replyIdle atomic.Int64

func init() { replyIdle.Store(int64(30 * time.Second)) }

// countingWriter is w counting the bytes written through it in n.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	k, err := c.w.Write(p)
	c.n.Add(int64(k))
	return k, err
}
