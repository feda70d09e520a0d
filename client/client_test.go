package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

func dialOK(t *testing.T, url, token string) *Tunnel {
	t.Helper()
	tun, err := Dial(context.Background(), Options{URL: url, Token: token, Name: "me", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("Dial(%s): %v", url, err)
	}
	t.Cleanup(func() { tun.Close() })
	return tun
}

func TestDialEcho(t *testing.T) {
	f := startFake(t, false)
	for _, url := range []string{f.tcpURL(), f.wsURL()} {
		tun := dialOK(t, url, "ok")
		if tun.PeerName() != "peer" || tun.PeerUUID() != "11111111-2222-4333-8444-555555555555" {
			t.Fatalf("peer = %q %q", tun.PeerName(), tun.PeerUUID())
		}
		if tun.IsWebSocket() != strings.HasPrefix(url, "ws") {
			t.Fatalf("IsWebSocket = %v for %s", tun.IsWebSocket(), url)
		}
		if _, err := tun.Write([]byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 6)
		if _, err := io.ReadFull(tun, got); err != nil || string(got) != "hello\n" {
			t.Fatalf("%s: read %q, %v", url, got, err)
		}
	}
}

func TestDialEarlyDataTCP(t *testing.T) {
	for _, split := range []bool{false, true} {
		f := startFake(t, split)
		tun := dialOK(t, f.tcpURL(), "ok-eager")
		got := make([]byte, 5)
		if _, err := io.ReadFull(tun, got); err != nil || string(got) != "early" {
			t.Fatalf("split=%v: read %q, %v", split, got, err)
		}
	}
}

func TestDialErrors(t *testing.T) {
	f := startFake(t, false)
	for _, url := range []string{f.tcpURL(), f.wsURL()} {
		_, err := Dial(context.Background(), Options{URL: url, Token: "bad", Timeout: 5 * time.Second})
		var ae *AuthError
		if !errors.As(err, &ae) || ae.Result != "AuthenticationErrorAuthenticationFailed" {
			t.Fatalf("%s: bad token: %v", url, err)
		}
		_, err = Dial(context.Background(), Options{URL: url, Token: "rpcerr", Timeout: 5 * time.Second})
		var re *RPCError
		if !errors.As(err, &re) || re.Text != "Invalid params: Forbidden key" {
			t.Fatalf("%s: rpc error: %v", url, err)
		}
		_, err = Dial(context.Background(), Options{URL: url, Token: "alone", Timeout: 300 * time.Millisecond})
		if !errors.Is(err, ErrTimeout) { // the fake never answers: only Timeout ends it
			t.Fatalf("%s: alone: %v", url, err)
		}
	}
}

func TestDialConnectError(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	for _, url := range []string{"tcp://" + addr, "ws://" + addr + "/", "http://" + addr} {
		_, err := Dial(context.Background(), Options{URL: url, Timeout: 2 * time.Second})
		if err == nil || !strings.HasPrefix(err.Error(), "connect: ") {
			t.Fatalf("%s: %v", url, err)
		}
	}
}

func TestDialCanceled(t *testing.T) {
	f := startFake(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := Dial(ctx, Options{URL: f.tcpURL(), Token: "alone"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
}

func TestWSOpcodes(t *testing.T) {
	f := startFake(t, false)
	tun := dialOK(t, f.wsURL(), "ok")
	for _, m := range []struct {
		op ws.OpCode
		p  string
	}{{ws.OpText, "text"}, {ws.OpBinary, "\x00\xffbin"}, {ws.OpBinary, ""}} {
		if err := tun.WriteMessage(m.op, []byte(m.p)); err != nil {
			t.Fatal(err)
		}
		op, p, err := tun.ReadMessage()
		if err != nil || op != m.op || string(p) != m.p {
			t.Fatalf("got %v %q %v, want %v %q", op, p, err, m.op, m.p)
		}
	}
	// Read as a stream across messages, then the rest through ReadMessage.
	// Write sends TEXT messages while the data is valid UTF-8.
	tun.Write([]byte("abcd"))
	tun.Write([]byte("ef"))
	b := make([]byte, 3)
	io.ReadFull(tun, b)
	op, rest, err := tun.ReadMessage()
	if string(b) != "abc" || op != ws.OpText || string(rest) != "d" || err != nil {
		t.Fatalf("stream: %q then %v %q %v", b, op, rest, err)
	}
	b = make([]byte, 2)
	if _, err := io.ReadFull(tun, b); err != nil || string(b) != "ef" {
		t.Fatalf("stream: %q %v", b, err)
	}
	// Bytes that cannot be UTF-8: BINARY, and the stream stays binary.
	tun.Write([]byte{0x00, 0xC0, 0xDB, 0xFF})
	if op, p, err := tun.ReadMessage(); err != nil || op != ws.OpBinary || string(p) != "\x00\xc0\xdb\xff" {
		t.Fatalf("binary write: %v %q %v", op, p, err)
	}
	tun.Write([]byte("text"))
	if op, p, err := tun.ReadMessage(); err != nil || op != ws.OpBinary || string(p) != "text" {
		t.Fatalf("after binary: %v %q %v", op, p, err)
	}
	// Options.Binary: BINARY only.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	bt, err := Dial(ctx, Options{URL: f.wsURL(), Token: "ok", Binary: true})
	if err != nil {
		t.Fatal(err)
	}
	defer bt.Close()
	bt.Write([]byte("text"))
	if op, p, err := bt.ReadMessage(); err != nil || op != ws.OpBinary || string(p) != "text" {
		t.Fatalf("Binary option: %v %q %v", op, p, err)
	}
}

func TestWSPing(t *testing.T) {
	f := startFake(t, false)
	tun := dialOK(t, f.wsURL(), "ok-ping")
	op, p, err := tun.ReadMessage()
	if err != nil || op != ws.OpText || string(p) != "got pong pp" {
		t.Fatalf("got %v %q %v", op, p, err)
	}
}

func TestPartnerClose(t *testing.T) {
	f := startFake(t, false)
	for _, url := range []string{f.tcpURL(), f.wsURL()} {
		tun := dialOK(t, url, "ok-bye")
		got, err := io.ReadAll(tun)
		if err != nil || string(got) != "bye" {
			t.Fatalf("%s: %q %v", url, got, err)
		}
	}
	tun := dialOK(t, f.wsURL(), "ok-abort")
	_, err := tun.Read(make([]byte, 10))
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != 1011 || ce.Reason != "boom" {
		t.Fatalf("abort: %v", err)
	}
}

func TestTCPWriteMessage(t *testing.T) {
	f := startFake(t, false)
	tun := dialOK(t, f.tcpURL(), "ok")
	if err := tun.WriteMessage(ws.OpText, []byte("x")); err == nil {
		t.Fatal("text message accepted over TCP")
	}
	if err := tun.WriteMessage(ws.OpBinary, []byte("xyz")); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for len(got) < 3 {
		op, p, err := tun.ReadMessage()
		if err != nil || op != ws.OpBinary {
			t.Fatalf("%v %v", op, err)
		}
		got = append(got, p...)
	}
	if string(got) != "xyz" {
		t.Fatalf("got %q", got)
	}
}

func TestConcurrentReadWrite(t *testing.T) {
	f := startFake(t, false)
	for _, url := range []string{f.tcpURL(), f.wsURL()} {
		tun := dialOK(t, url, "ok")
		const n = 200
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				tun.Write([]byte("0123456789"))
			}
		}()
		got := make([]byte, 10*n)
		if _, err := io.ReadFull(tun, got); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if !bytes.Equal(got, bytes.Repeat([]byte("0123456789"), n)) {
			t.Fatalf("%s: data corrupted", url)
		}
	}
}

func TestVerboseMasksToken(t *testing.T) {
	f := startFake(t, false)
	const token = `ok-SeCrEt"<&>`
	for _, url := range []string{f.tcpURL(), f.wsURL()} {
		var buf bytes.Buffer
		tun, err := Dial(context.Background(), Options{URL: url, Token: token, Nonce: "n1", Timeout: 5 * time.Second, Verbose: &buf})
		if err != nil {
			t.Fatal(err)
		}
		tun.Close()
		out := buf.String()
		if strings.Contains(out, "SeCrEt") {
			t.Fatalf("token leaked: %s", out)
		}
		for _, want := range []string{`> {"id":1,"method":"Authentication.Authenticate"`, `"token":"***"`, `"nonce":"n1"`,
			`< {"id":1,`, `< {"id":0,"notification":"RemoteProxy.TunnelEstablished"`} {
			if !strings.Contains(out, want) {
				t.Fatalf("%s: verbose output lacks %q:\n%s", url, want, out)
			}
		}
	}
}

func TestHello(t *testing.T) {
	f := startFake(t, false)
	for _, url := range []string{f.tcpURL(), f.wsURL()} {
		params, err := Hello(context.Background(), Options{URL: url, Timeout: 5 * time.Second})
		if err != nil || params["name"] != fakeName || params["server"] != "nymea-remoteproxy" {
			t.Fatalf("%s: %v %v", url, params, err)
		}
	}
}

func TestRawCall(t *testing.T) {
	for _, split := range []bool{false, true} {
		f := startFake(t, split)
		for _, url := range []string{f.tcpURL(), f.wsURL()} {
			r, err := DialRaw(context.Background(), url, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			r.SetDeadline(time.Now().Add(5 * time.Second))
			reply, err := r.Call(7, "RemoteProxy.Hello", nil)
			if err != nil {
				t.Fatal(err)
			}
			params, _ := reply["params"].(map[string]any)
			if reply["id"] != float64(7) || reply["status"] != "success" || params["name"] != fakeName {
				t.Fatalf("%s split=%v: %v", url, split, reply)
			}
		}
	}
}

func TestRawSendRecv(t *testing.T) {
	f := startFake(t, false)
	for _, url := range []string{f.tcpURL(), f.wsURL()} {
		r, err := DialRaw(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		r.SetDeadline(time.Now().Add(5 * time.Second))
		// Two messages answered in one write (TCP) or two frames (WS).
		if err := r.Send([]byte(`{"id":1,"method":"Test.Two"}` + "\n")); err != nil {
			t.Fatal(err)
		}
		one, err := r.Recv()
		if err != nil || string(one) != `{"id":1,"params":{"n":1},"status":"success"}` {
			t.Fatalf("%s: first %q %v", url, one, err)
		}
		two, err := r.Recv()
		if err != nil || string(two) != `{"id":0,"notification":"Test.Second","params":{"n":2}}` {
			t.Fatalf("%s: second %q %v", url, two, err)
		}
		// An unknown namespace: error reply, then the server closes.
		reply, err := r.Call(2, "Nope.Nope", nil)
		if err != nil || reply["status"] != "error" || reply["error"] != "No such namespace" {
			t.Fatalf("%s: %v %v", url, reply, err)
		}
		if _, err := r.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("%s: after error: %v", url, err)
		}
	}
}

func TestRawTCPSplitRequest(t *testing.T) {
	f := startFake(t, false)
	r, err := DialRaw(context.Background(), f.tcpURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.SetDeadline(time.Now().Add(5 * time.Second))
	r.Send([]byte(`{"id":3,"met`))
	time.Sleep(20 * time.Millisecond)
	r.Send([]byte(`hod":"RemoteProxy.Hello"}`))
	p, err := r.Recv()
	if err != nil || !strings.HasPrefix(string(p), `{"id":3,`) || !strings.HasSuffix(string(p), `"status":"success"}`) {
		t.Fatalf("%q %v", p, err)
	}
}

func TestRawWSBinaryClose(t *testing.T) {
	f := startFake(t, false)
	r, err := DialRaw(context.Background(), f.wsURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.SetDeadline(time.Now().Add(5 * time.Second))
	if err := r.SendFrame(ws.OpBinary, []byte("x")); err != nil {
		t.Fatal(err)
	}
	_, err = r.Recv()
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != 1011 || ce.Reason != "Binary message not expected." {
		t.Fatalf("got %v", err)
	}
	if _, err := r.Recv(); err != io.EOF {
		t.Fatalf("after close: %v", err)
	}
	tcp, err := DialRaw(context.Background(), f.tcpURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	if tcp.SendFrame(ws.OpText, nil) == nil {
		t.Fatal("SendFrame accepted on TCP")
	}
}

func TestScanObject(t *testing.T) {
	in := " \n{\"a\":\"}{\\\"\",\"b\":[{}]}\n{}{\"c\":1}x"
	r := &Raw{br: bufioReader(in)}
	for _, want := range []string{`{"a":"}{\"","b":[{}]}`, `{}`, `{"c":1}`} {
		got, err := r.scanObject()
		if err != nil || string(got) != want {
			t.Fatalf("got %q %v, want %q", got, err, want)
		}
	}
	if _, err := r.scanObject(); err == nil {
		t.Fatal("garbage accepted")
	}
	r = &Raw{br: bufioReader(`{"a":`)}
	if _, err := r.scanObject(); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated: %v", err)
	}
}

func TestNewUUID(t *testing.T) {
	u := NewUUID()
	if len(u) != 36 || u[14] != '4' || !strings.ContainsRune("89ab", rune(u[19])) || u == NewUUID() {
		t.Fatalf("bad uuid %q", u)
	}
}

// TestNoPartnerSaysWhy: when the relay ends the wait, Dial's error says
// what the relay said (RemoteProxy.Closing on raw TCP, the close frame's
// text on WebSocket), and a close without a reason blames nobody's timeout.
func TestNoPartnerSaysWhy(t *testing.T) {
	f := startFake(t, false)
	for _, url := range []string{f.tcpURL(), f.wsURL()} {
		_, err := Dial(context.Background(), Options{URL: url, Token: "closing", Timeout: 20 * time.Second})
		var np *NoPartnerError
		if !errors.As(err, &np) || np.Reason != "alone_timeout" || np.Message != "No partner arrived within 8s" {
			t.Fatalf("%s: relay's reason: %#v (%v)", url, np, err)
		}
		if want := "the relay gave up waiting for a partner: No partner arrived within 8s (its --alone-timeout)"; err.Error() != want {
			t.Errorf("%s: %q, want %q", url, err, want)
		}
		_, err = Dial(context.Background(), Options{URL: url, Token: "silent", Timeout: 20 * time.Second})
		if !errors.As(err, &np) || np.Reason != "" || !strings.Contains(err.Error(), "without a reason") ||
			strings.Contains(err.Error(), "alone") {
			t.Errorf("%s: a close without a reason: %v", url, err)
		}
	}
}

// TestWaitRelay: with WaitRelay, Timeout bounds connecting and
// authenticating only; the wait for the partner lasts as long as the
// relay keeps the client. Without it, Timeout ends the wait.
func TestWaitRelay(t *testing.T) {
	const timeout = 200 * time.Millisecond
	f := startFake(t, false)
	defer close(f.establish)
	for _, url := range []string{f.tcpURL(), f.wsURL()} {
		if _, err := Dial(context.Background(), Options{URL: url, Token: "late", Timeout: timeout}); !errors.Is(err, ErrTimeout) {
			t.Fatalf("%s: without WaitRelay: %v, want ErrTimeout", url, err)
		}
	}
	for _, ws := range []bool{false, true} {
		f := startFake(t, false) // its partner comes once
		url := f.tcpURL()
		if ws {
			url = f.wsURL()
		}
		waiting := make(chan struct{})
		go func() {
			<-waiting
			time.Sleep(3 * timeout) // the partner comes after Timeout has passed
			close(f.establish)
		}()
		tun, err := Dial(context.Background(), Options{URL: url, Token: "late", Timeout: timeout, WaitRelay: true,
			Waiting: func() { close(waiting) }})
		if err != nil {
			t.Fatalf("%s: with WaitRelay: %v", url, err)
		}
		tun.Close()
	}
}

// TestCloseWhileWriteBlocked: Close returns while a Write is blocked on a
// relay that stopped reading (its receive window full), as net.Conn's
// Close promises, and the blocked Write returns an error. Close once
// waited for the writer's lock before it set its write deadline, so both
// hung for as long as the relay kept the connection open.
func TestCloseWhileWriteBlocked(t *testing.T) {
	a, b := tcpPair(t) // b: the relay, which never reads
	a.(*net.TCPConn).SetWriteBuffer(4 << 10)
	b.(*net.TCPConn).SetReadBuffer(4 << 10)
	tun := &Tunnel{r: &Raw{conn: a, br: bufio.NewReader(a), isWS: true}}
	tun.text.Binary = true
	wrote := make(chan error, 1)
	go func() {
		_, err := tun.Write(make([]byte, 64<<20)) // far more than the socket buffers hold
		wrote <- err
	}()
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil { // the Write has begun: it holds the lock
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- tun.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return while a Write was blocked")
	}
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("the blocked Write succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the blocked Write did not return after Close")
	}
}
