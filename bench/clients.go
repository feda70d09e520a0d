package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
)

// The setup scenario's lean clients.
//
// A set-up benchmark on two shared cores measures the harness as much as
// the relay: what the clients spend, the relay cannot. client.Dial is the
// library users get (it decodes every message into a map, reads through
// a 32 KiB bufio.Reader, runs a timeout goroutine, and net.Dialer sets
// four keep-alive options per socket), so `bench setup` opens its tunnels
// with lean clients instead, on one of two socket layers:
//
//   - "lean" (the default): Go's net, no keep-alive, a 4 KiB reader; the
//     worker goroutine blocks in the runtime's poller.
//   - "netpoll": cloudwego/netpoll, every socket on its poller goroutines,
//     which read eagerly into the connection's buffer and wake the worker
//     waiting for its line. Measured against "lean" in the same runs
//     (docs/BENCHMARKS.md, "The harness's clients"), it costs the harness
//     more: its dial registers the socket twice (once to wait for connect,
//     once for the connection), and every reply is a hop from its poller
//     to the worker. It stays as the comparison that says so.
//
// What a lean tunnel does on the wire is what client.Dial and
// Tunnel.Close do (so that the relay's CPU per tunnel is comparable with
// rows measured with the client library): both ends connect (the WebSocket
// ones upgrade), each sends one Authenticate request and reads lines (TEXT
// messages) until RemoteProxy.TunnelEstablished; WebSocket ends send a
// close frame before closing. The requests are pre-built bytes and the
// replies are matched, not decoded: a reply that is not the success the
// relay sends is an error with its text.

// clientTimeout bounds one dial, and the reads of a client's replies.
const clientTimeout = 20 * time.Second

// clientMaxLine bounds a reply line (or WebSocket message) a client reads:
// the relay's replies are a few hundred bytes.
const clientMaxLine = 4 << 10

// replyReader is what a client reads replies with: netpoll's Reader, or
// goReader over Go's net. A slice it returns is valid until Release.
type replyReader interface {
	Until(delim byte) ([]byte, error)
	Next(n int) ([]byte, error)
	Release() error
}

// clientConn is one lean client's socket and its reader.
type clientConn struct {
	net.Conn
	r replyReader
}

// goReader is a replyReader on a small bufio.Reader: a slice is valid
// until the next read (the fleet reads one reply at a time).
type goReader struct{ *bufio.Reader }

// Until reads up to and including delim; a line longer than the buffer
// is an error.
func (g goReader) Until(delim byte) ([]byte, error) { return g.ReadSlice(delim) }

// Next returns the next n bytes.
func (g goReader) Next(n int) ([]byte, error) {
	b, err := g.Peek(n)
	if err != nil {
		return nil, err
	}
	_, _ = g.Discard(n)
	return b, nil
}

// Release does nothing: a slice lives until the next read.
func (goReader) Release() error { return nil }

// dialClient connects to host ("ip:port") with the fleet's socket layer:
// Go's net without keep-alive and with a 4 KiB reader, or netpoll
// (onNetpoll).
func dialClient(ctx context.Context, host string, onNetpoll bool) (*clientConn, error) {
	if !onNetpoll {
		d := net.Dialer{KeepAlive: -1, Timeout: clientTimeout}
		c, err := d.DialContext(ctx, "tcp", host)
		if err != nil {
			return nil, err
		}
		c.SetReadDeadline(time.Now().Add(clientTimeout))
		return &clientConn{Conn: c, r: goReader{bufio.NewReaderSize(c, clientMaxLine)}}, nil
	}
	c, err := netpollDial(ctx, host)
	if err != nil {
		return nil, err
	}
	return &clientConn{Conn: c, r: c.Reader()}, nil
}

// netpollDial connects to host ("ip:port") on netpoll, with reads bounded
// by clientTimeout.
func netpollDial(ctx context.Context, host string) (netpoll.Connection, error) {
	ap, err := netip.ParseAddrPort(host)
	if err != nil {
		return nil, fmt.Errorf("setup client: %q is not ip:port: %w", host, err)
	}
	raddr := &netpoll.TCPAddr{TCPAddr: *net.TCPAddrFromAddrPort(ap)}
	ctx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	c, err := netpoll.DialTCP(ctx, "tcp", nil, raddr)
	if errors.Is(err, netpoll.ErrConnClosed) && ctx.Err() == nil {
		// Under load netpoll's dialer reports a fresh connection "closed
		// by peer" that nobody closed (cloudwego/netpoll#363, open; its
		// poller logs "operator has critical problem" beside it). Go's
		// net never does here, so it is netpoll's, not the relay's: one
		// retry, counted for the report.
		netpollDialRetries.Add(1)
		c, err = netpoll.DialTCP(ctx, "tcp", nil, raddr)
	}
	if err != nil {
		return nil, err
	}
	c.SetReadTimeout(clientTimeout)
	return c, nil
}

// netpollDialRetries counts netpollDial's retries (the setup table names
// them per row).
var netpollDialRetries atomic.Int64

// authRequest is the Authenticate request of a fleet client, a line.
func authRequest(name, nonce string) []byte {
	return fmt.Appendf(nil, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"%s","name":"%s","token":"bench","nonce":"%s"}}`+"\n",
		client.NewUUID(), name, nonce)
}

// setupClient is one fleet client: its connection and whether it speaks WebSocket.
type setupClient struct {
	c  *clientConn
	ws bool
}

// openSetupClient connects to host over transport (tcp or ws) and sends the
// Authenticate request for nonce; it does not wait for the reply. It
// connects from the kernel's choice of address and port, not from one of
// the 127.0.0.x the other scenarios spread their clients over: a bind
// before connect(2) picks a port no TIME_WAIT socket holds, a search that
// slows down run after run as they fill the range (a setup run leaves
// tens of thousands for 60 s; netpoll's dialer cannot be told
// IP_BIND_ADDRESS_NO_PORT), where connect(2) picks one for the 4-tuple
// and reuses TIME_WAIT ports on loopback. Set-up holds only 2 × --conc
// connections at a time.
func openSetupClient(ctx context.Context, host, transport, name, nonce string, onNetpoll bool) (*setupClient, error) {
	c, err := dialClient(ctx, host, onNetpoll)
	if err != nil {
		return nil, err
	}
	e := &setupClient{c: c, ws: transport == "ws"}
	req := authRequest(name, nonce)
	if e.ws {
		if err := upgradeWS(c, host); err != nil {
			c.Close()
			return nil, err
		}
		req = maskedFrame(ws.OpText, req)
	}
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	return e, nil
}

// upgradeWS makes the WebSocket upgrade on c and checks the 101 reply and
// its Sec-WebSocket-Accept (RFC 6455 4.1).
func upgradeWS(c *clientConn, host string) error {
	var key [16]byte
	binary.LittleEndian.PutUint64(key[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(key[8:], rand.Uint64())
	k := base64.StdEncoding.EncodeToString(key[:])
	req := "GET / HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + k + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		return err
	}
	sum := sha1.Sum([]byte(k + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	want := base64.StdEncoding.EncodeToString(sum[:])
	r := c.r
	defer r.Release()
	status, err := r.Until('\n')
	if err != nil {
		return fmt.Errorf("setup client: upgrade: %w", err)
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 101 ")) {
		return fmt.Errorf("setup client: upgrade refused: %q", bytes.TrimSpace(status))
	}
	accepted := false
	for n := 0; ; n++ {
		line, err := r.Until('\n')
		if err != nil {
			return fmt.Errorf("setup client: upgrade: %w", err)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			break
		}
		if n > 64 {
			return errors.New("setup client: upgrade: more than 64 header lines")
		}
		if name, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(name, []byte("Sec-WebSocket-Accept")) {
			accepted = string(bytes.TrimSpace(v)) == want
		}
	}
	if !accepted {
		return errors.New("setup client: upgrade: Sec-WebSocket-Accept missing or wrong")
	}
	return nil
}

// maskedFrame returns one client frame (FIN, opcode op, a random mask) with
// payload p.
func maskedFrame(op ws.OpCode, p []byte) []byte {
	var m [4]byte
	binary.LittleEndian.PutUint32(m[:], rand.Uint32())
	return handshake.AppendFrameMasked(make([]byte, 0, 14+len(p)), op, true, p, m)
}

// messages calls f with the payload of each message the relay sends (a
// line over TCP, a TEXT message over WebSocket; control frames are
// skipped, a close frame ends it) until f returns done or an error. The
// payload is valid only during f.
func (e *setupClient) messages(f func(p []byte) (done bool, err error)) error {
	r := e.c.r
	defer r.Release()
	for {
		var p []byte
		var err error
		if e.ws {
			p, err = readFrame(r)
		} else {
			p, err = r.Until('\n')
			if err == nil && len(p) > clientMaxLine {
				err = fmt.Errorf("setup client: a line of %d bytes", len(p))
			}
		}
		if err != nil {
			return err
		}
		if p == nil { // a control frame
			continue
		}
		if done, err := f(p); done || err != nil {
			return err
		}
	}
}

// readFrame reads one server frame: its payload for a TEXT or BINARY frame
// (FIN set: the relay does not fragment its own messages), nil for ping
// and pong, and an error for a close frame or a bad header.
func readFrame(r replyReader) ([]byte, error) {
	h, err := r.Next(2)
	if err != nil {
		return nil, err
	}
	op, masked, n := h[0]&0x0f, h[1]&0x80 != 0, uint64(h[1]&0x7f)
	if masked || h[0]&0x80 == 0 {
		return nil, fmt.Errorf("setup client: unexpected frame header %#x %#x", h[0], h[1])
	}
	switch n {
	case 126:
		x, err := r.Next(2)
		if err != nil {
			return nil, err
		}
		n = uint64(binary.BigEndian.Uint16(x))
	case 127:
		x, err := r.Next(8)
		if err != nil {
			return nil, err
		}
		n = binary.BigEndian.Uint64(x)
	}
	if n > clientMaxLine {
		return nil, fmt.Errorf("setup client: a frame of %d bytes", n)
	}
	p, err := r.Next(int(n))
	if err != nil {
		return nil, err
	}
	switch op {
	case 0x1, 0x2:
		return p, nil
	case 0x8:
		return nil, fmt.Errorf("setup client: the relay closed: %q", p)
	}
	return nil, nil
}

// awaitPartner reads the Authenticate reply (it must be a success) and
// then messages until RemoteProxy.TunnelEstablished.
func (e *setupClient) awaitPartner() error {
	replied := false
	return e.messages(func(p []byte) (bool, error) {
		switch {
		case bytes.Contains(p, []byte(`"RemoteProxy.TunnelEstablished"`)):
			if !replied {
				return false, errors.New("setup client: TunnelEstablished before the Authenticate reply")
			}
			return true, nil
		case bytes.Contains(p, []byte(`"AuthenticationErrorNoError"`)):
			replied = true
		case bytes.Contains(p, []byte(`"notification"`)) && !bytes.Contains(p, []byte(`"RemoteProxy.Closing"`)):
			// another notification: not ours to judge
		default:
			return false, fmt.Errorf("setup client: the relay said %q", bytes.TrimSpace(p))
		}
		return false, nil
	})
}

// normalClose is the close frame's payload a fleet client sends before
// closing, as client.Tunnel.Close does: status 1000, no reason.
var normalClose = ws.NewCloseFrameBody(ws.StatusNormalClosure, "")

// Close ends the client as client.Tunnel.Close does.
func (e *setupClient) Close() error {
	if e.ws {
		_, _ = e.c.Write(maskedFrame(ws.OpClose, normalClose))
	}
	return e.c.Close()
}

// openMeetpointTunnel opens one tunnel through the relay at host with two
// fleet clients (b first, as dialPairOn does) and waits until both are
// paired. It returns the two clients' closer.
func openMeetpointTunnel(ctx context.Context, host, transport, nonce string, onNetpoll bool) (func(), error) {
	b, err := openSetupClient(ctx, host, transport, "b", nonce, onNetpoll)
	if err != nil {
		return nil, err
	}
	a, err := openSetupClient(ctx, host, transport, "a", nonce, onNetpoll)
	if err != nil {
		b.Close()
		return nil, err
	}
	closeBoth := func() { a.Close(); b.Close() }
	if err := b.awaitPartner(); err != nil {
		closeBoth()
		return nil, fmt.Errorf("b: %w", err)
	}
	if err := a.awaitPartner(); err != nil {
		closeBoth()
		return nil, fmt.Errorf("a: %w", err)
	}
	return closeBoth, nil
}

// leanServes reports whether lean clients open p's setup tunnels:
// meetpoint over tcp and ws, and the TCP peers (direct, haproxy, socat).
// TLS, wss, mixed and the fleet-of-relays peers keep the client library.
func leanServes(p *Peer) bool {
	switch p.Name {
	case "meetpoint":
		return p.Transport == "tcp" || p.Transport == "ws"
	case "direct", "haproxy", "socat":
		return true
	}
	return false
}

// openForSetup opens one tunnel through p for the setup scenario, with
// lean clients on the socket layer clients names ("lean" or "netpoll")
// where they serve p (leanServes), and p.Pair otherwise ("library"), and
// returns what closes both ends.
func (p *Peer) openForSetup(ctx context.Context, clients string) (func(), error) {
	if clients == "library" || !leanServes(p) {
		a, b, err := p.Pair(ctx)
		if err != nil {
			return nil, err
		}
		return func() { a.Close(); b.Close() }, nil
	}
	if p.Name == "meetpoint" {
		return openMeetpointTunnel(ctx, p.env.relayHost(), p.Transport, p.env.nextNonce(), clients == "netpoll")
	}
	a, b, err := p.env.back.pairVia(ctx, p.front, func(ctx context.Context) (net.Conn, error) {
		c, err := dialClient(ctx, p.front, clients == "netpoll")
		if err != nil {
			return nil, err
		}
		return c.Conn, nil
	})
	if err != nil {
		return nil, err
	}
	return func() { a.Close(); b.Close() }, nil
}

// setupClientsNote says in the report what opened the setup rows' tunnels.
func setupClientsNote(clients string) string {
	if clients == "library" {
		return "Clients (--clients library): client.Dial for meetpoint, net.Dialer for direct/haproxy/socat."
	}
	layer := "Go's net without keep-alive, a 4 KiB reader"
	if clients == "netpoll" {
		layer = "cloudwego/netpoll"
	}
	return "Clients (--clients " + clients + "): the harness's lean clients (bench/clients.go: pre-built requests, " +
		"replies matched, not decoded; on " + layer + ") for meetpoint tcp and ws and for direct/haproxy/socat; " +
		"the client library (client.Dial) for tls, wss, mixed and the fleet-of-relays rows."
}
