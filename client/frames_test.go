package client

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
)

// tcpPair is a connected loopback TCP pair.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if b, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestTunnelFramesNoAlloc: over WebSocket, a tunnel's Write
// masks into a reused buffer and Read unmasks straight into the caller's
// buffer (a ping on the way answered from a fixed one): no allocation per
// frame, where the client once cloned and re-framed every message. The
// bytes arrive intact both ways.
func TestTunnelFramesNoAlloc(t *testing.T) {
	a, b := tcpPair(t)
	tun := &Tunnel{r: &Raw{conn: a, br: bufio.NewReaderSize(a, 64<<10), isWS: true}}
	tun.text.Binary = true
	msg := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KiB: written in pieces

	// Write: the peer decodes what arrives.
	got := make(chan []byte, 1)
	go func() {
		var out []byte
		dec := handshake.Decoder{}
		buf := make([]byte, 64<<10)
		for len(out) < 102*len(msg) { // one Write, then AllocsPerRun's warm-up run and 100
			n, err := b.Read(buf)
			if err != nil {
				break
			}
			for p := buf[:n]; len(p) > 0; {
				f, m, err := dec.Decode(p)
				if err != nil {
					got <- nil
					return
				}
				if f.Kind == handshake.FragPayload {
					out = append(out, f.Data...)
				}
				p = p[m:]
			}
		}
		got <- out
	}()
	if _, err := tun.Write(msg); err != nil { // the buffer is made once
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() {
		if _, err := tun.Write(msg); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Write of 64 KiB allocates %v times", n)
	}
	select {
	case out := <-got:
		if !bytes.Equal(out, bytes.Repeat(msg, 102)) {
			t.Fatalf("the peer decoded %d bytes, not the %d written", len(out), 102*len(msg))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the peer did not get the frames")
	}

	// Read: frames of 1 KiB with a ping among them.
	payload := bytes.Repeat([]byte("x"), 1<<10)
	var stream []byte
	for i := range 102 {
		stream = handshake.AppendFrame(stream, ws.OpBinary, true, payload)
		if i%10 == 0 {
			stream = handshake.AppendFrame(stream, ws.OpPing, true, []byte("p"))
		}
	}
	go func() { _, _ = b.Write(stream) }()
	go func() { _, _ = io.Copy(io.Discard, b) }() // the pongs
	buf := make([]byte, 1<<10)
	read := func() {
		if _, err := io.ReadFull(tun, buf); err != nil || !bytes.Equal(buf, payload) {
			t.Fatalf("Read: %v", err)
		}
	}
	read()
	if n := testing.AllocsPerRun(100, read); n != 0 {
		t.Errorf("Read of a 1 KiB frame allocates %v times", n)
	}
}

// sinkConn takes what the client writes (pongs, close replies) and
// nothing else.
type sinkConn struct{ net.Conn }

func (sinkConn) Write(p []byte) (int, error) { return len(p), nil }

// FuzzRawFrames feeds arbitrary bytes as the server's side of a
// WebSocket to the client's frame reader, whole messages (readMessage)
// and streamed (Tunnel.Read into a small buffer): an error or io.EOF, never
// a panic, and the same payload bytes either way.
func FuzzRawFrames(f *testing.F) {
	for _, seed := range [][]byte{
		handshake.AppendFrame(nil, ws.OpText, true, []byte("hello")),
		append(handshake.AppendFrame(nil, ws.OpBinary, false, []byte("ab")), handshake.AppendFrame(nil, ws.OpContinuation, true, []byte("cd"))...),
		append(handshake.AppendFrame(nil, ws.OpPing, true, []byte("p")), handshake.AppendFrame(nil, ws.OpBinary, true, nil)...),
		handshake.AppendFrameMasked(nil, ws.OpText, true, []byte("masked"), [4]byte{1, 2, 3, 4}),
		handshake.AppendClose(nil, ws.StatusGoingAway, "bye"),
		{0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		{0x82, 0x7e, 0x01},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		raw := &Raw{conn: sinkConn{}, br: bufio.NewReader(bytes.NewReader(stream)), isWS: true}
		var whole []byte
		for range 1000 {
			_, msg, err := raw.readMessage()
			if err != nil {
				break
			}
			whole = append(whole, msg...)
		}
		tun := &Tunnel{r: &Raw{conn: sinkConn{}, br: bufio.NewReader(bytes.NewReader(stream)), isWS: true}}
		var streamed []byte
		buf := make([]byte, 3)
		for range 100000 {
			n, err := tun.Read(buf)
			streamed = append(streamed, buf[:n]...)
			if err != nil {
				break
			}
		}
		if !bytes.HasPrefix(streamed, whole) {
			t.Fatalf("streamed %q, whole messages %q", streamed, whole)
		}
	})
}

// TestWSReservedBitsAndOpcodes: a frame with an RSV bit set (no extension
// was negotiated: a permessage-deflate frame, say) or a reserved opcode
// fails the tunnel, as RFC 6455 (5.2) requires, with nothing of it
// delivered. The reader once handed such a frame's payload over as tunnel
// bytes (an RSV bit, opcodes 3 to 7) or skipped it in silence (opcodes 11
// to 15).
func TestWSReservedBitsAndOpcodes(t *testing.T) {
	frame := func(first byte, payload string) []byte {
		return append([]byte{first, byte(len(payload))}, payload...)
	}
	after := handshake.AppendFrame(nil, ws.OpBinary, true, []byte("after"))
	for name, bad := range map[string][]byte{
		"rsv1":      frame(0x80|0x40|byte(ws.OpBinary), "deflated?"),
		"rsv3":      frame(0x80|0x10|byte(ws.OpText), "rsv3"),
		"opcode 3":  frame(0x80|0x3, "data3"),
		"opcode 7":  frame(0x80|0x7, "data7"),
		"opcode 11": frame(0x80|0xB, "ctl11"),
		"opcode 15": frame(0x80|0xF, "ctl15"),
	} {
		stream := append(append([]byte(nil), bad...), after...)
		tun := &Tunnel{r: &Raw{conn: sinkConn{}, br: bufio.NewReader(bytes.NewReader(stream)), isWS: true}}
		if n, err := tun.Read(make([]byte, 64)); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("%s: Read gave %d bytes, %v; want a protocol error", name, n, err)
		}
		raw := &Raw{conn: sinkConn{}, br: bufio.NewReader(bytes.NewReader(stream)), isWS: true}
		if op, msg, err := raw.readMessage(); err == nil {
			t.Errorf("%s: readMessage gave %v %q; want a protocol error", name, op, msg)
		}
	}
}

// TestWSTextMustBeUTF8: a TEXT message that is not valid UTF-8 fails the
// tunnel (RFC 6455, 8.1; the relay never sends one, docs/protocol.md's
// UTF-8 rule), wherever its frames cut it, and a valid one cut inside a
// character passes whole. The reader once returned any TEXT payload as
// it came, so ReadMessage handed out a "text" message that no string
// could hold.
func TestWSTextMustBeUTF8(t *testing.T) {
	frag := func(op ws.OpCode, parts ...string) (out []byte) {
		for i, p := range parts {
			if i > 0 {
				op = ws.OpContinuation
			}
			out = handshake.AppendFrame(out, op, i == len(parts)-1, []byte(p))
		}
		return out
	}
	good := frag(ws.OpText, "h\xc3", "\xa9llo \xe2\x82", "\xac") // "héllo €" cut inside characters
	binary := frag(ws.OpBinary, "\xff\xfe")                      // not text: anything goes
	for name, bad := range map[string][]byte{
		"invalid byte":          frag(ws.OpText, "ok \xff"),
		"surrogate":             frag(ws.OpText, "\xed\xa0\x80"),
		"overlong":              frag(ws.OpText, "\xc0\xaf"),
		"across fragments":      frag(ws.OpText, "ab\xe2", "\x28\xa1"),
		"ends inside character": frag(ws.OpText, "ab\xe2\x82"),
	} {
		stream := append(append(append([]byte(nil), good...), binary...), bad...)
		raw := &Raw{conn: sinkConn{}, br: bufio.NewReader(bytes.NewReader(stream)), isWS: true}
		if op, msg, err := raw.readMessage(); err != nil || op != ws.OpText || string(msg) != "héllo €" {
			t.Fatalf("%s: the valid text: %v %q %v", name, op, msg, err)
		}
		if op, msg, err := raw.readMessage(); err != nil || op != ws.OpBinary || string(msg) != "\xff\xfe" {
			t.Fatalf("%s: the binary message: %v %q %v", name, op, msg, err)
		}
		if op, msg, err := raw.readMessage(); err == nil {
			t.Errorf("%s: readMessage gave %v %q; want an error", name, op, msg)
		}
		tun := &Tunnel{r: &Raw{conn: sinkConn{}, br: bufio.NewReader(bytes.NewReader(stream)), isWS: true}}
		var got []byte
		buf := make([]byte, 2)
		var err error
		for err == nil {
			var n int
			n, err = tun.Read(buf)
			got = append(got, buf[:n]...)
		}
		if errors.Is(err, io.EOF) || !bytes.HasPrefix(got, []byte("héllo €\xff\xfe")) {
			t.Errorf("%s: Read gave %q, then %v; want the valid messages, then an error", name, got, err)
		}
	}
}

// recConn records what the client writes.
type recConn struct {
	sinkConn
	w bytes.Buffer
}

func (c *recConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// TestWSBadCloseFrame: a close frame whose body is malformed (one byte),
// carries a code no endpoint may send (1005, 1006, 1015, under 1000) or a
// reason that is not UTF-8 is a protocol error (RFC 6455, 5.5.1 and 7.4):
// the client answers 1002 and reports an error, where it once read a
// clean end (a one-byte body) or echoed the forbidden code onto the wire.
// A good close is echoed and reported as a CloseError.
func TestWSBadCloseFrame(t *testing.T) {
	closeFrame := func(body []byte) []byte { return handshake.AppendFrame(nil, ws.OpClose, true, body) }
	for name, body := range map[string][]byte{
		"one byte": {0x03},
		"1005":     ws.NewCloseFrameBody(ws.StatusNoStatusRcvd, ""),
		"1006":     ws.NewCloseFrameBody(ws.StatusAbnormalClosure, ""),
		"999":      ws.NewCloseFrameBody(999, ""),
		"bad utf8": ws.NewCloseFrameBody(ws.StatusNormalClosure, "\xff\xfe"),
	} {
		c := &recConn{}
		raw := &Raw{conn: c, br: bufio.NewReader(bytes.NewReader(closeFrame(body))), isWS: true}
		_, _, err := raw.readMessage()
		var ce *CloseError
		if err == nil || errors.As(err, &ce) {
			t.Errorf("%s: readMessage = %v; want a protocol error", name, err)
		}
		f, ferr := readFrame(&c.w)
		if ferr != nil || f.Header.OpCode != ws.OpClose {
			t.Fatalf("%s: the client's answer: %v %v; want a close frame", name, f.Header.OpCode, ferr)
		}
		if f.Header.Masked {
			ws.Cipher(f.Payload, f.Header.Mask, 0)
		}
		if code, _ := ws.ParseCloseFrameData(f.Payload); code != ws.StatusProtocolError {
			t.Errorf("%s: the client closed with %d, want 1002", name, code)
		}
	}
	c := &recConn{}
	raw := &Raw{conn: c, br: bufio.NewReader(bytes.NewReader(closeFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, "bye")))), isWS: true}
	var ce *CloseError
	if _, _, err := raw.readMessage(); !errors.As(err, &ce) || ce.Code != ws.StatusGoingAway {
		t.Fatalf("a good close: %v; want CloseError 1001", err)
	}
}
