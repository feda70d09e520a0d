package client

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/meetpoint/meetpoint/handshake"
)

// Tunnel is an established tunnel. It implements net.Conn.
//
// Over WebSocket, Write sends at most one message per call (TEXT while the
// stream is valid UTF-8, then BINARY; BINARY only with Options.Binary: see
// Write) and Read returns message payloads as a byte stream; a close frame with code 1000, 1001 or
// none, or the connection's end, reads as io.EOF, any other close code as
// *CloseError. After a read deadline expires in the middle of a WebSocket
// frame the tunnel must be closed; after a write deadline cuts a frame
// short, every later write fails.
//
// One goroutine may read (Read, ReadMessage) while others write.
type Tunnel struct {
	r         *Raw
	peerName  string
	peerUUID  string
	text      handshake.TextFramer
	wbuf      []byte // scratch for Write's frames
	wmu       sync.Mutex
	closeOnce sync.Once
	closeErr  error
}

// PeerName returns the partner's name from RemoteProxy.TunnelEstablished.
func (t *Tunnel) PeerName() string { return t.peerName }

// PeerUUID returns the partner's uuid from RemoteProxy.TunnelEstablished.
func (t *Tunnel) PeerUUID() string { return t.peerUUID }

// IsWebSocket reports whether the tunnel runs over WebSocket.
func (t *Tunnel) IsWebSocket() bool { return t.r.isWS }

// Read reads tunnel bytes.
func (t *Tunnel) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !t.r.isWS {
		if err := t.r.dropNewline(); err != nil {
			return 0, err
		}
		return t.r.br.Read(p)
	}
	for { // payload straight into p; frames without any skipped
		n, _, err := t.r.readData(p)
		if n > 0 {
			return n, nil
		}
		if err != nil {
			return 0, normalClose(err)
		}
	}
}

// ReadMessage returns the next WebSocket message with its opcode (the unread
// rest of a message partly consumed by Read first). Over TCP it returns
// whatever bytes arrived, as ws.OpBinary.
func (t *Tunnel) ReadMessage() (ws.OpCode, []byte, error) {
	if !t.r.isWS {
		buf := make([]byte, 32<<10)
		n, err := t.Read(buf)
		if err != nil {
			return 0, nil, err
		}
		return ws.OpBinary, buf[:n], nil
	}
	op, msg, err := t.r.readMessage()
	return op, msg, normalClose(err)
}

// normalClose maps a normal WebSocket close to io.EOF.
func normalClose(err error) error {
	var ce *CloseError
	if errors.As(err, &ce) {
		switch ce.Code {
		case 0, ws.StatusNormalClosure, ws.StatusGoingAway, ws.StatusNoStatusRcvd:
			return io.EOF
		}
	}
	return err
}

// Write sends p: over TCP as-is; over WebSocket as one message, TEXT
// while the stream written so far is valid UTF-8 (the end of a character
// cut by p's end goes with the next Write), BINARY from the first byte
// that cannot be UTF-8 on, or BINARY only with Options.Binary.
func (t *Tunnel) Write(p []byte) (int, error) {
	if !t.r.isWS {
		return t.r.writeTCP(p)
	}
	t.wmu.Lock()
	defer t.wmu.Unlock()
	t.wbuf = append(append(t.wbuf[:0], 0, 0, 0), p...)
	op, s, e := t.text.Next(t.wbuf, 3, len(t.wbuf))
	if e > s || op == ws.OpBinary {
		if err := t.r.writeFrame(op, t.wbuf[s:e]); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// WriteMessage sends one WebSocket message with opcode op. Over TCP only
// ws.OpBinary is accepted and p is written as-is.
func (t *Tunnel) WriteMessage(op ws.OpCode, p []byte) error {
	if !t.r.isWS {
		if op != ws.OpBinary {
			return errors.New("WriteMessage: only binary messages over TCP")
		}
		return t.r.Send(p)
	}
	return t.r.writeFrame(op, p)
}

// Close sends a WebSocket close frame (1000) when the tunnel runs over
// WebSocket and none was sent yet (Read answers the relay's), then closes
// the connection. It gives writing up after a
// second, a Write blocked on a relay that stopped reading with it.
func (t *Tunnel) Close() error {
	t.closeOnce.Do(func() {
		if t.r.isWS {
			// The deadline first: a Write blocked on a relay that stopped
			// reading holds the locks below until its conn.Write fails.
			t.r.conn.SetWriteDeadline(time.Now().Add(time.Second))
			t.wmu.Lock()
			if rest := t.text.Flush(); len(rest) > 0 { // the end of a cut character
				_ = t.r.writeFrame(ws.OpBinary, rest)
			}
			t.wmu.Unlock()
			_ = t.r.writeFrame(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
		}
		t.closeErr = t.r.conn.Close()
	})
	return t.closeErr
}

// LocalAddr returns the local network address.
func (t *Tunnel) LocalAddr() net.Addr { return t.r.conn.LocalAddr() }

// RemoteAddr returns the relay's network address.
func (t *Tunnel) RemoteAddr() net.Addr { return t.r.conn.RemoteAddr() }

// SetDeadline sets the read and write deadlines of the connection.
func (t *Tunnel) SetDeadline(d time.Time) error { return t.r.conn.SetDeadline(d) }

// SetReadDeadline sets the read deadline of the connection.
func (t *Tunnel) SetReadDeadline(d time.Time) error { return t.r.conn.SetReadDeadline(d) }

// SetWriteDeadline sets the write deadline of the connection.
func (t *Tunnel) SetWriteDeadline(d time.Time) error { return t.r.conn.SetWriteDeadline(d) }

var _ net.Conn = (*Tunnel)(nil)
