package relay

// Byte-exact tests of the places where nymea's real clients broke against
// meetpoint (issue 11). Each speaks the bytes a nymea peer sends and checks
// the bytes it gets back, not a decoded view of them.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
)

// Item 1: bytes from a TCP peer reach a WebSocket peer as TEXT frames
// (0x81) while they are valid UTF-8, BINARY (0x82) from the first byte
// that is not.
func TestWireTCPToWebSocketIsText(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	uA, uB := client.NewUUID(), client.NewUUID()

	w := dialCheckedWS(t, s)
	req, reply := nymeaAuth(1, "ws", uA, "wire-text")
	w.send(ws.OpText, true, []byte(req))
	if f := w.read(); f.Header.OpCode != ws.OpText || string(f.Payload) != reply {
		t.Fatalf("ws auth reply: op %v %q", f.Header.OpCode, f.Payload)
	}

	c := dialTCP(t, s)
	br := bufio.NewReader(c)
	req, reply = nymeaAuth(2, "tcp", uB, "wire-text")
	io.WriteString(c, req)
	if got := readLine(t, br); got != reply {
		t.Fatalf("tcp auth reply %q, want %q", got, reply)
	}
	if got := readLine(t, br); got != nymeaEstablished("ws", uA) {
		t.Fatalf("tcp side: %q", got)
	}
	if f := w.read(); f.Header.OpCode != ws.OpText || string(f.Payload) != nymeaEstablished("tcp", uB) {
		t.Fatalf("ws TunnelEstablished: op %v %q", f.Header.OpCode, f.Payload)
	}

	io.WriteString(c, "hi\n")
	raw := make([]byte, 5)
	if _, err := io.ReadFull(w.br, raw); err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x81, 0x03, 'h', 'i', '\n'}; !bytes.Equal(raw, want) {
		t.Fatalf("ws side got % x, want % x", raw, want)
	}
	c.Write([]byte{0x00, 0xC0, 0xDB, 0xFF})
	raw = make([]byte, 6)
	if _, err := io.ReadFull(w.br, raw); err != nil {
		t.Fatal(err)
	}
	// 00 is valid UTF-8 but C0 never is: the frame that carries it is
	// BINARY, and so is every frame after it.
	if want := []byte{0x82, 0x04, 0x00, 0xC0, 0xDB, 0xFF}; !bytes.Equal(raw, want) {
		t.Fatalf("ws side got % x, want % x", raw, want)
	}
}

// Item 7: an unterminated JSON string over raw TCP gets nymea's error reply
// at once and a close, not a wait for the inactive timeout.
func TestWireUnterminatedStringTCP(t *testing.T) {
	t.Parallel()
	// No timeout can end it before dialTCP's deadline: the close is the
	// parse error's.
	s := startServer(t, func(c *Config) { c.InactiveTimeout, c.HandshakeTimeout = time.Hour, time.Hour })
	c := dialTCP(t, s)
	io.WriteString(c, `{"id":42, "method":"RemoteProx}`+"\n")
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v (got %q)", err, got)
	}
	want := `{"error":"Failed to parse JSON data: unterminated string","id":-1,"status":"error"}` + "\n"
	if string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// Item 6: a reply leaves in one TLS record, however large (Go's dynamic
// record sizing would split Introspect into ~1 KiB records first).
func TestWireTLSReplyInOneRecord(t *testing.T) {
	t.Parallel()
	s, cert, _ := startTLSServer(t, nil)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		raw, err := net.Dial("tcp", s.Addrs()[0].String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
		rc := &recordCounter{Conn: raw}
		conf := clientTLS(cert)
		conf.MinVersion, conf.MaxVersion = v, v
		tc := tls.Client(rc, conf)
		br := bufio.NewReader(tc)
		// A first exchange takes the handshake and TLS 1.3's session
		// tickets off the wire.
		io.WriteString(tc, `{"id":1,"method":"RemoteProxy.Hello"}`+"\n")
		readLine(t, br)
		rc.reset()
		io.WriteString(tc, `{"id":2,"method":"RemoteProxy.Introspect"}`+"\n")
		line := readLine(t, br)
		want := string(s.IntrospectReply(2))
		if line != want {
			t.Fatalf("Introspect reply differs: %d bytes, want %d", len(line), len(want))
		}
		// Only what this relay serves: no subsystem registered a method.
		if len(line) > handshake.MaxIntrospect || strings.Contains(line, "TunnelProxy.") || strings.Contains(line, "Events.") {
			t.Fatalf("Introspect of a relay without subsystems (%d bytes): %s", len(line), line)
		}
		if n, sizes := rc.records(); n != 1 {
			t.Fatalf("TLS %x: Introspect (%d bytes) came in %d records %v, want 1", v, len(line), n, sizes)
		}
	}
}

// recordCounter counts the TLS records the server sends, following record
// headers across reads.
type recordCounter struct {
	net.Conn
	mu    sync.Mutex
	hdr   []byte // partial record header
	skip  int    // body bytes of the current record still to come
	sizes []int
}

func (r *recordCounter) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	for b := p[:n]; len(b) > 0; {
		if r.skip > 0 {
			k := min(r.skip, len(b))
			r.skip -= k
			b = b[k:]
			continue
		}
		k := min(5-len(r.hdr), len(b))
		r.hdr = append(r.hdr, b[:k]...)
		b = b[k:]
		if len(r.hdr) == 5 {
			r.skip = int(r.hdr[3])<<8 | int(r.hdr[4])
			r.sizes = append(r.sizes, r.skip)
			r.hdr = r.hdr[:0]
		}
	}
	return n, err
}

func (r *recordCounter) reset() {
	r.mu.Lock()
	r.sizes = nil
	r.mu.Unlock()
}

func (r *recordCounter) records() (int, []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sizes), append([]int(nil), r.sizes...)
}

// Item 8: on raw TCP, TunnelEstablished is alone in what a client reads
// even when its partner writes at once: nymea's client library parses a
// buffer only when it ends in "}\n", so notification and data in one read
// stall the pairing. The partner's first bytes are held for TCPSettle for
// a client that said Hello first, as nymea's library always does.
func TestWireTunnelEstablishedAlone(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		settle time.Duration
		hello  bool
		alone  bool
	}{{300 * time.Millisecond, true, true}, {0, true, false}, {300 * time.Millisecond, false, false}} {
		s := startServer(t, func(c *Config) { c.TCPSettle = tc.settle })
		uA, uB := client.NewUUID(), client.NewUUID()
		a := dialTCP(t, s)
		abr := bufio.NewReader(a)
		if tc.hello {
			io.WriteString(a, `{"id":0,"method":"RemoteProxy.Hello"}`+"\n")
			if got := readLine(t, abr); !strings.Contains(got, `"apiVersion"`) {
				t.Fatalf("hello: %q", got)
			}
		}
		req, reply := nymeaAuth(1, "a", uA, "wire-settle")
		io.WriteString(a, req)
		if got := readLine(t, abr); got != reply {
			t.Fatalf("a auth reply %q", got)
		}
		b := dialTCP(t, s)
		bbr := bufio.NewReader(b)
		req, reply = nymeaAuth(1, "b", uB, "wire-settle")
		io.WriteString(b, req)
		if got := readLine(t, bbr); got != reply {
			t.Fatalf("b auth reply %q", got)
		}
		if got := readLine(t, bbr); got != nymeaEstablished("a", uA) {
			t.Fatalf("b: %q", got)
		}
		io.WriteString(b, "first bytes\n") // at once, as nymea's server side does
		time.Sleep(50 * time.Millisecond)  // a slow reader: both would be waiting
		buf := make([]byte, 4096)
		n, err := a.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		want := nymeaEstablished("b", uB)
		if tc.alone {
			if string(buf[:n]) != want {
				t.Fatalf("settle %v, hello %v: first read %q, want the notification alone", tc.settle, tc.hello, buf[:n])
			}
			n, err = io.ReadFull(a, buf[:len("first bytes\n")])
			if err != nil || string(buf[:n]) != "first bytes\n" {
				t.Fatalf("data after settle: %q %v", buf[:n], err)
			}
		} else if !strings.HasPrefix(string(buf[:n]), want) || n == len(want) {
			// Without the settle window the bytes do meet in one read: the
			// window is what keeps them apart (and a client that did not say
			// Hello first does not wait for it).
			t.Fatalf("settle %v, hello %v: first read %q; want notification and data together", tc.settle, tc.hello, buf[:n])
		}
	}
}
