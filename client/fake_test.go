package client

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// fakeName is the Hello name; its quotes and braces test the JSON scanner.
const fakeName = `fake "{}" \ }`

// fake is a tiny relay speaking just enough of the legacy API on one port
// (WebSocket or raw TCP, told apart by the first byte). Its behaviour after
// Authenticate depends on the token:
//
//	"rpcerr"  JSON-RPC error, then close
//	"bad"     AuthenticationErrorAuthenticationFailed, then close
//	"alone"   NoError, then no partner ever
//	"closing" NoError, then the relay's reason (RemoteProxy.Closing on
//	          TCP, a close frame on WebSocket) and a close
//	"silent"  NoError, then a close without a reason
//	"late"    NoError, then TunnelEstablished once fake.establish is closed
//	"ok..."   NoError, TunnelEstablished, then echo; variants:
//	"ok-eager" tunnel data "early" in the same write as the JSON (TCP)
//	"ok-ping"  a ping "pp"; the pong is answered with text "got pong pp" (WS)
//	"ok-bye"   data "bye", then a normal close
//	"ok-abort" a close frame 1011 (WS)
type fake struct {
	ln        net.Listener
	split     bool          // TCP: write in 3-byte pieces
	establish chan struct{} // "late": closed when the partner may arrive
}

func startFake(t *testing.T, split bool) *fake {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{ln: ln, split: split, establish: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *fake) tcpURL() string { return "tcp://" + f.ln.Addr().String() }
func (f *fake) wsURL() string  { return "ws://" + f.ln.Addr().String() + "/any/path" }

// fconn is one side of the fake's transport.
type fconn interface {
	recv() ([]byte, error)
	send(data []byte, msgs ...any) error // msgs as JSON lines, then data, in one write
	echo(token string)
	closeWith(code ws.StatusCode, reason string)
}

func (f *fake) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	first, err := br.Peek(1)
	if err != nil {
		return
	}
	var fc fconn
	if first[0] == 'G' {
		if _, err := ws.Upgrade(struct {
			io.Reader
			io.Writer
		}{br, c}); err != nil {
			return
		}
		fc = &fakeWS{c: c, br: br}
	} else {
		fc = &fakeTCP{c: c, br: br, dec: json.NewDecoder(br), split: f.split}
	}
	for {
		p, err := fc.recv()
		if err != nil {
			return
		}
		var req struct {
			ID     any            `json:"id"`
			Method string         `json:"method"`
			Params map[string]any `json:"params"`
		}
		if err := json.Unmarshal(p, &req); err != nil {
			fc.send(nil, map[string]any{"id": -1, "status": "error", "error": "Failed to parse JSON data"})
			return
		}
		ok := func(params map[string]any) map[string]any {
			return map[string]any{"id": req.ID, "status": "success", "params": params}
		}
		auth := func(res string) map[string]any { return ok(map[string]any{"authenticationError": res}) }
		switch req.Method {
		case "RemoteProxy.Hello":
			fc.send(nil, ok(map[string]any{"name": fakeName, "server": "nymea-remoteproxy", "apiVersion": "0.3", "version": "1"}))
		case "Test.Two":
			fc.send(nil, ok(map[string]any{"n": 1}), map[string]any{"id": 0, "notification": "Test.Second", "params": map[string]any{"n": 2}})
		case "Authentication.Authenticate":
			token, _ := req.Params["token"].(string)
			established := map[string]any{"id": 0, "notification": "RemoteProxy.TunnelEstablished",
				"params": map[string]any{"name": "peer", "uuid": "11111111-2222-4333-8444-555555555555"}}
			switch {
			case token == "rpcerr":
				fc.send(nil, map[string]any{"id": req.ID, "status": "error", "error": "Invalid params: Forbidden key"})
				return
			case token == "bad":
				fc.send(nil, auth("AuthenticationErrorAuthenticationFailed"))
				return
			case token == "alone":
				fc.send(nil, auth("AuthenticationErrorNoError"))
				io.Copy(io.Discard, br)
				return
			case token == "closing":
				fc.send(nil, auth("AuthenticationErrorNoError"))
				if _, isWS := fc.(*fakeWS); isWS {
					fc.closeWith(ws.StatusPolicyViolation, "No partner arrived within 8s")
					return
				}
				fc.send(nil, map[string]any{"id": 0, "notification": "RemoteProxy.Closing",
					"params": map[string]any{"reason": "alone_timeout", "message": "No partner arrived within 8s"}})
				return
			case token == "silent":
				fc.send(nil, auth("AuthenticationErrorNoError"))
				return
			case token == "late":
				fc.send(nil, auth("AuthenticationErrorNoError"))
				<-f.establish
				fc.send(nil, established)
				fc.echo(token)
				return
			case token == "ok-eager":
				fc.send([]byte("early"), auth("AuthenticationErrorNoError"), established)
				fc.echo(token)
				return
			case strings.HasPrefix(token, "ok"):
				fc.send(nil, auth("AuthenticationErrorNoError"), established)
				fc.echo(token)
				return
			}
		default:
			fc.send(nil, map[string]any{"id": req.ID, "status": "error", "error": "No such namespace"})
			return
		}
	}
}

type fakeTCP struct {
	c     net.Conn
	br    *bufio.Reader
	dec   *json.Decoder
	split bool
}

func (t *fakeTCP) recv() ([]byte, error) {
	var m json.RawMessage
	err := t.dec.Decode(&m)
	return m, err
}

func (t *fakeTCP) send(data []byte, msgs ...any) error {
	var buf []byte
	for _, m := range msgs {
		b, _ := json.Marshal(m)
		buf = append(append(buf, b...), '\n')
	}
	buf = append(buf, data...)
	if !t.split {
		_, err := t.c.Write(buf)
		return err
	}
	for len(buf) > 0 {
		n := min(3, len(buf))
		if _, err := t.c.Write(buf[:n]); err != nil {
			return err
		}
		buf = buf[n:]
		time.Sleep(time.Millisecond)
	}
	return nil
}

func (t *fakeTCP) echo(token string) {
	if token == "ok-bye" {
		t.c.Write([]byte("bye"))
		return
	}
	// Like a real relay, drop the newline that ended the Authenticate request.
	rd := bufio.NewReader(io.MultiReader(t.dec.Buffered(), t.br))
	if b, err := rd.Peek(1); err == nil && b[0] == '\n' {
		rd.Discard(1)
	}
	io.Copy(t.c, rd)
}

func (t *fakeTCP) closeWith(ws.StatusCode, string) {}

type fakeWS struct {
	c  net.Conn
	br *bufio.Reader
}

func (w *fakeWS) recv() ([]byte, error) {
	msg, op, err := wsutil.ReadClientData(struct {
		io.Reader
		io.Writer
	}{w.br, w.c})
	if err != nil {
		return nil, err
	}
	if op == ws.OpBinary {
		w.closeWith(1011, "Binary message not expected.")
		return nil, io.EOF
	}
	return msg, nil
}

func (w *fakeWS) send(data []byte, msgs ...any) error {
	for _, m := range msgs {
		b, _ := json.Marshal(m)
		if err := wsutil.WriteServerMessage(w.c, ws.OpText, append(b, '\n')); err != nil {
			return err
		}
	}
	if data != nil {
		return wsutil.WriteServerMessage(w.c, ws.OpBinary, data)
	}
	return nil
}

func (w *fakeWS) closeWith(code ws.StatusCode, reason string) {
	wsutil.WriteServerMessage(w.c, ws.OpClose, ws.NewCloseFrameBody(code, reason))
}

func (w *fakeWS) echo(token string) {
	switch token {
	case "ok-bye":
		wsutil.WriteServerMessage(w.c, ws.OpBinary, []byte("bye"))
		w.closeWith(ws.StatusNormalClosure, "")
		return
	case "ok-abort":
		w.closeWith(1011, "boom")
		return
	case "ok-ping":
		wsutil.WriteServerMessage(w.c, ws.OpPing, []byte("pp"))
	}
	for {
		f, err := readFrame(w.br)
		if err != nil {
			return
		}
		f = ws.UnmaskFrameInPlace(f)
		switch f.Header.OpCode {
		case ws.OpPong:
			wsutil.WriteServerMessage(w.c, ws.OpText, append([]byte("got pong "), f.Payload...))
		case ws.OpPing:
			wsutil.WriteServerMessage(w.c, ws.OpPong, f.Payload)
		case ws.OpClose:
			wsutil.WriteServerMessage(w.c, ws.OpClose, f.Payload)
			return
		default:
			wsutil.WriteServerMessage(w.c, f.Header.OpCode, f.Payload)
		}
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// readFrame reads one frame, refusing payloads over 1 MiB (ws.ReadFrame
// would trust the declared length).
func readFrame(r io.Reader) (ws.Frame, error) {
	h, err := ws.ReadHeader(r)
	if err != nil {
		return ws.Frame{}, err
	}
	if h.Length > 1<<20 {
		return ws.Frame{}, fmt.Errorf("frame of %d bytes", h.Length)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r, p); err != nil {
		return ws.Frame{}, err
	}
	return ws.Frame{Header: h, Payload: p}, nil
}
