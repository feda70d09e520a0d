package bench

import (
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
	"time"

	"github.com/cloudwego/netpoll"
)

// The setup scenario's client fleet on cloudwego/netpoll.
//
// netpoll's model fits a fleet of short client connections: every socket
// sits on netpoll's few poller goroutines, which read eagerly into the
// connection's own buffer, so a connection costs no goroutine, no 32 KiB
// bufio reader and no Go-netpoller registration of its own; a waiting
// worker parks on a channel until its line is there. The relay cannot use
// it (netpoll's eager reads leave no socket for splice(2), see
// docs/architecture.md), a load generator can: it only opens, reads a few
// replies and closes.
//
// What a fleet tunnel does on the wire is what client.Dial and
// Tunnel.Close do (so that the relay's CPU per tunnel is comparable with
// rows measured with the client library): both ends connect (the WebSocket
// ones upgrade), each sends one Authenticate request and reads lines (TEXT
// messages) until RemoteProxy.TunnelEstablished; WebSocket ends send a
// close frame before closing. The requests are pre-built bytes and the
// replies are matched, not decoded: a reply that is not the success the
// relay sends is an error with its text.

// npDialTimeout bounds one fleet dial, and each read of a reply.
const npDialTimeout = 20 * time.Second

// npMaxLine bounds a reply line (or WebSocket message) the fleet reads.
const npMaxLine = 64 << 10

// npDial connects to host ("ip:port") from local (nil: the kernel's
// choice) on netpoll, with reads bounded by npDialTimeout.
func npDial(ctx context.Context, host string, local net.IP) (netpoll.Connection, error) {
	ap, err := netip.ParseAddrPort(host)
	if err != nil {
		return nil, fmt.Errorf("fleet: %q is not ip:port: %w", host, err)
	}
	var laddr *netpoll.TCPAddr
	if local != nil {
		laddr = &netpoll.TCPAddr{TCPAddr: net.TCPAddr{IP: local}}
	}
	raddr := &netpoll.TCPAddr{TCPAddr: *net.TCPAddrFromAddrPort(ap)}
	ctx, cancel := context.WithTimeout(ctx, npDialTimeout)
	defer cancel()
	c, err := netpoll.DialTCP(ctx, "tcp", laddr, raddr)
	if err != nil {
		return nil, err
	}
	c.SetReadTimeout(npDialTimeout)
	return c, nil
}

// npAuthRequest is the Authenticate request of a fleet client, a line.
func npAuthRequest(name, nonce string) []byte {
	return fmt.Appendf(nil, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"%s","name":"%s","token":"bench","nonce":"%s"}}`+"\n",
		newUUID(), name, nonce)
}

// newUUID returns a random version 4 UUID in its text form.
func newUUID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// npEnd is one fleet client: its connection and whether it speaks WebSocket.
type npEnd struct {
	c  netpoll.Connection
	ws bool
}

// npOpenEnd connects to host over transport (tcp or ws) and sends the
// Authenticate request for nonce; it does not wait for the reply.
func npOpenEnd(ctx context.Context, host, transport, name, nonce string) (*npEnd, error) {
	c, err := npDial(ctx, host, sourceFor(host))
	if err != nil {
		return nil, err
	}
	e := &npEnd{c: c, ws: transport == "ws"}
	req := npAuthRequest(name, nonce)
	if e.ws {
		if err := npUpgrade(c, host); err != nil {
			c.Close()
			return nil, err
		}
		req = npMasked(0x1, req)
	}
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	return e, nil
}

// npUpgrade makes the WebSocket upgrade on c and checks the 101 reply and
// its Sec-WebSocket-Accept (RFC 6455 4.1).
func npUpgrade(c netpoll.Connection, host string) error {
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
	r := c.Reader()
	defer r.Release()
	status, err := r.Until('\n')
	if err != nil {
		return fmt.Errorf("fleet: upgrade: %w", err)
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 101 ")) {
		return fmt.Errorf("fleet: upgrade refused: %q", bytes.TrimSpace(status))
	}
	accepted := false
	for n := 0; ; n++ {
		line, err := r.Until('\n')
		if err != nil {
			return fmt.Errorf("fleet: upgrade: %w", err)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			break
		}
		if n > 64 {
			return errors.New("fleet: upgrade: more than 64 header lines")
		}
		if name, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(name, []byte("Sec-WebSocket-Accept")) {
			accepted = string(bytes.TrimSpace(v)) == want
		}
	}
	if !accepted {
		return errors.New("fleet: upgrade: Sec-WebSocket-Accept missing or wrong")
	}
	return nil
}

// npMasked returns one client frame (FIN, opcode op, a random mask) with
// payload p.
func npMasked(op byte, p []byte) []byte {
	f := make([]byte, 0, 14+len(p))
	f = append(f, 0x80|op)
	switch n := len(p); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	case n <= 0xffff:
		f = append(f, 0x80|126)
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	default:
		f = append(f, 0x80|127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	var m [4]byte
	binary.LittleEndian.PutUint32(m[:], rand.Uint32())
	f = append(f, m[:]...)
	for i, b := range p {
		f = append(f, b^m[i&3])
	}
	return f
}

// npMessage calls f with the payload of each message the relay sends (a
// line over TCP, a TEXT message over WebSocket; control frames are
// skipped, a close frame ends it) until f returns done or an error. The
// payload is valid only during f.
func (e *npEnd) npMessage(f func(p []byte) (done bool, err error)) error {
	r := e.c.Reader()
	defer r.Release()
	for {
		var p []byte
		var err error
		if e.ws {
			p, err = npFrame(r)
		} else {
			p, err = r.Until('\n')
			if err == nil && len(p) > npMaxLine {
				err = fmt.Errorf("fleet: a line of %d bytes", len(p))
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

// npFrame reads one server frame: its payload for a TEXT or BINARY frame
// (FIN set: the relay does not fragment its own messages), nil for ping
// and pong, and an error for a close frame or a bad header.
func npFrame(r netpoll.Reader) ([]byte, error) {
	h, err := r.Next(2)
	if err != nil {
		return nil, err
	}
	op, masked, n := h[0]&0x0f, h[1]&0x80 != 0, uint64(h[1]&0x7f)
	if masked || h[0]&0x80 == 0 {
		return nil, fmt.Errorf("fleet: unexpected frame header %#x %#x", h[0], h[1])
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
	if n > npMaxLine {
		return nil, fmt.Errorf("fleet: a frame of %d bytes", n)
	}
	p, err := r.Next(int(n))
	if err != nil {
		return nil, err
	}
	switch op {
	case 0x1, 0x2:
		return p, nil
	case 0x8:
		return nil, fmt.Errorf("fleet: the relay closed: %q", p)
	}
	return nil, nil
}

// awaitPartner reads the Authenticate reply (it must be a success) and
// then messages until RemoteProxy.TunnelEstablished.
func (e *npEnd) awaitPartner() error {
	replied := false
	return e.npMessage(func(p []byte) (bool, error) {
		switch {
		case bytes.Contains(p, []byte(`"RemoteProxy.TunnelEstablished"`)):
			if !replied {
				return false, errors.New("fleet: TunnelEstablished before the Authenticate reply")
			}
			return true, nil
		case bytes.Contains(p, []byte(`"AuthenticationErrorNoError"`)):
			replied = true
		case bytes.Contains(p, []byte(`"notification"`)) && !bytes.Contains(p, []byte(`"RemoteProxy.Closing"`)):
			// another notification: not ours to judge
		default:
			return false, fmt.Errorf("fleet: the relay said %q", bytes.TrimSpace(p))
		}
		return false, nil
	})
}

// npCloseFrame is the close frame a fleet client sends before closing, as
// client.Tunnel.Close does: status 1000, no reason.
var npCloseFrame = []byte{0x03, 0xe8}

// Close ends the client as client.Tunnel.Close does.
func (e *npEnd) Close() error {
	if e.ws {
		_, _ = e.c.Write(npMasked(0x8, npCloseFrame))
	}
	return e.c.Close()
}

// npMeetpointTunnel opens one tunnel through the relay at host with two
// fleet clients (b first, as dialPairOn does) and waits until both are
// paired. It returns the two clients' closer.
func npMeetpointTunnel(ctx context.Context, host, transport, nonce string) (func(), error) {
	b, err := npOpenEnd(ctx, host, transport, "b", nonce)
	if err != nil {
		return nil, err
	}
	a, err := npOpenEnd(ctx, host, transport, "a", nonce)
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

// npServes reports whether the netpoll fleet opens p's setup tunnels:
// meetpoint over tcp and ws, and the TCP peers (direct, haproxy, socat).
// TLS, wss, mixed and the fleet-of-relays peers keep the client library.
func npServes(p *Peer) bool {
	switch p.Name {
	case "meetpoint":
		return p.Transport == "tcp" || p.Transport == "ws"
	case "direct", "haproxy", "socat":
		return true
	}
	return false
}

// openForSetup opens one tunnel through p for the setup scenario, with the
// netpoll fleet where clients is "netpoll" and it serves p (npServes), and
// p.Pair otherwise, and returns what closes both ends.
func (p *Peer) openForSetup(ctx context.Context, clients string) (func(), error) {
	if clients != "netpoll" || !npServes(p) {
		a, b, err := p.Pair(ctx)
		if err != nil {
			return nil, err
		}
		return func() { a.Close(); b.Close() }, nil
	}
	if p.Name == "meetpoint" {
		nonce := fmt.Sprintf("%s-%d", p.env.runID, p.env.nonce.Add(1))
		return npMeetpointTunnel(ctx, p.env.relayHost(), p.Transport, nonce)
	}
	a, b, err := p.env.back.pairVia(ctx, p.front, func(ctx context.Context) (net.Conn, error) {
		return npDial(ctx, p.front, nil)
	})
	if err != nil {
		return nil, err
	}
	return func() { a.Close(); b.Close() }, nil
}

// setupClientsNote says in the report what opened the setup rows' tunnels.
func setupClientsNote(clients string) string {
	if clients == "netpoll" {
		return "Clients (--clients netpoll): the harness's netpoll fleet (bench/npfleet.go: sockets on netpoll's " +
			"pollers, pre-built requests, replies matched, not decoded) for meetpoint tcp and ws and for direct/haproxy/socat; " +
			"the client library (client.Dial) for tls, wss, mixed and the fleet-of-relays rows."
	}
	return "Clients (--clients library): client.Dial for meetpoint, net.Dialer for direct/haproxy/socat."
}
