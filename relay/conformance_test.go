package relay

// RFC 6455 conformance of the tunnel, modelled on the Autobahn testsuite's
// case groups 1 (framing), 2 (pings/pongs), 3 (reserved bits), 4 (opcodes),
// 5 (fragmentation), 6 (UTF-8), 7 (close handling) and 9 (limits and
// performance, at a small scale). The Autobahn fuzzing client cannot run
// here: these tables play its cases against a real WS↔WS tunnel. Client A
// ("sender") sends the case's bytes; what the relay answers A (pongs, close)
// and what partner B receives are checked. The relay answers control frames
// itself, forwards data frames one for one (same opcode, FIN and payload)
// and validates text as UTF-8 on the fly.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

var cfTokens atomic.Uint64

func cfPair(t testing.TB, s *Server) (*rawWS, *rawWS) {
	t.Helper()
	return rawWSPair(t, s, fmt.Sprintf("conformance-%d", cfTokens.Add(1)))
}

type cfMsg struct {
	op   ws.OpCode
	data string
}

func (m cfMsg) String() string {
	return fmt.Sprintf("op %d %d bytes %.60q", m.op, len(m.data), m.data)
}

func cfText(s string) cfMsg   { return cfMsg{ws.OpText, s} }
func cfBinary(s string) cfMsg { return cfMsg{ws.OpBinary, s} }

// cfRecv is what one side received until the connection ended.
type cfRecv struct {
	msgs    []cfMsg    // complete data messages
	pongs   []string   // pong payloads
	partial []byte     // payload of an unfinished text message
	closed  rawWSClose // how it ended
	ended   bool
}

// cfDrain reads from w until the connection ends (close frame then EOF, or
// EOF) or until want messages arrived (want < 0: until the end).
func cfDrain(t testing.TB, w *rawWS, want int, d time.Duration) cfRecv {
	t.Helper()
	var r cfRecv
	var cur []byte
	var curOp ws.OpCode
	inMsg := false
	end := time.Now().Add(d)
	for want < 0 || len(r.msgs) < want {
		h, p, err := w.readFrame(time.Until(end))
		if err != nil {
			if isClosed(err) {
				r.ended = true
				break
			}
			t.Fatalf("reading: %v (have %d messages: %v)", err, len(r.msgs), r.msgs)
		}
		switch h.OpCode {
		case ws.OpPong:
			r.pongs = append(r.pongs, string(p))
			continue
		case ws.OpPing:
			t.Fatalf("relay forwarded or sent a ping: %q", p)
		case ws.OpClose:
			r.closed.frame = true
			if len(p) >= 2 {
				r.closed.code = ws.StatusCode(uint16(p[0])<<8 | uint16(p[1]))
				r.closed.reason = string(p[2:])
			}
			_ = w.c.SetReadDeadline(time.Now().Add(time.Until(end)))
			if n, err := w.br.Read(make([]byte, 1)); n > 0 || !isClosed(err) {
				t.Fatalf("after close frame: read %d bytes, %v; want the connection closed", n, err)
			}
			r.ended = true
			if inMsg && curOp == ws.OpText {
				r.partial = cur
			}
			return r
		case ws.OpContinuation:
			if !inMsg {
				t.Fatalf("received a continuation frame without a message")
			}
		case ws.OpText, ws.OpBinary:
			if inMsg {
				t.Fatalf("received a new message inside a fragmented one")
			}
			inMsg, curOp, cur = true, h.OpCode, nil
		default:
			t.Fatalf("received opcode %d", h.OpCode)
		}
		if h.Rsv != 0 {
			t.Fatalf("received a frame with RSV bits %d", h.Rsv)
		}
		cur = append(cur, p...)
		if h.Fin {
			if curOp == ws.OpText && !utf8.Valid(cur) {
				t.Fatalf("received an invalid text message: %.100q", cur)
			}
			r.msgs = append(r.msgs, cfMsg{curOp, string(cur)})
			inMsg = false
		}
	}
	if inMsg && curOp == ws.OpText {
		r.partial = cur
	}
	return r
}

// cfCase is one conformance case: A writes send (in one write, or in
// pieces of chop bytes), then A must receive exactly pongs and B exactly
// msgs. close == 0: the tunnel stays open (checked with a message each way
// afterwards). Otherwise A is answered with a close frame of that code
// (after its pongs) and B is closed too.
type cfCase struct {
	name  string
	send  []byte
	chop  int
	pongs []string
	msgs  []cfMsg
	close ws.StatusCode
}

func cfCat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// cfRun plays the cases, each on its own tunnel.
func cfRun(t *testing.T, s *Server, cases []cfCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := cfPair(t, s)
			cfPlay(t, a, b, tc)
		})
	}
}

func cfPlay(t *testing.T, a, b *rawWS, tc cfCase) {
	t.Helper()
	done := make(chan struct{})
	go func() { // B may have to read before all of it can be written
		defer close(done)
		if tc.chop <= 0 {
			a.write(tc.send)
			return
		}
		for p := tc.send; len(p) > 0; {
			n := min(tc.chop, len(p))
			a.write(p[:n])
			p = p[n:]
			if tc.chop < 16 {
				time.Sleep(200 * time.Microsecond)
			}
		}
	}()
	defer func() { <-done }()
	if tc.close == 0 {
		rb := cfDrain(t, b, len(tc.msgs), 20*time.Second)
		cfSame(t, "partner received", rb.msgs, tc.msgs)
		if rb.ended {
			t.Fatalf("partner closed (%d %q)", rb.closed.code, rb.closed.reason)
		}
		<-done
		var pongs []string
		for len(pongs) < len(tc.pongs) {
			h, p, err := a.readFrame(10 * time.Second)
			if err != nil || h.OpCode != ws.OpPong {
				t.Fatalf("sender: want pong %d of %d, got op %d %q, %v", len(pongs)+1, len(tc.pongs), h.OpCode, p, err)
			}
			pongs = append(pongs, string(p))
		}
		cfSameStr(t, "pongs", pongs, tc.pongs)
		// Nothing else arrives: the next thing each side gets is a marker.
		a.send(ws.OpText, true, []byte("marker-a"))
		b.send(ws.OpText, true, []byte("marker-b"))
		rb = cfDrain(t, b, 1, 10*time.Second)
		cfSame(t, "partner received after the case", rb.msgs, []cfMsg{cfText("marker-a")})
		ra := cfDrain(t, a, 1, 10*time.Second)
		cfSame(t, "sender received", ra.msgs, []cfMsg{cfText("marker-b")})
		cfSameStr(t, "pongs after the expected ones", ra.pongs, nil)
		if len(rb.pongs) != 0 {
			t.Fatalf("partner received pongs %q", rb.pongs)
		}
		return
	}
	ra := cfDrain(t, a, -1, 10*time.Second)
	if !ra.closed.frame || ra.closed.code != tc.close {
		t.Fatalf("sender: close frame %v code %d (%q), want code %d", ra.closed.frame, ra.closed.code, ra.closed.reason, tc.close)
	}
	cfSameStr(t, "pongs", ra.pongs, tc.pongs)
	if len(ra.msgs) != 0 {
		t.Fatalf("sender received %v", ra.msgs)
	}
	rb := cfDrain(t, b, -1, 10*time.Second)
	cfSame(t, "partner received", rb.msgs, tc.msgs)
	if rb.closed.frame && rb.closed.code != ws.StatusNormalClosure {
		t.Fatalf("partner closed with %d (%q)", rb.closed.code, rb.closed.reason)
	}
	var v handshake.UTF8
	if !v.Feed(rb.partial) {
		t.Fatalf("partner received invalid UTF-8 in an unfinished text message: %q", rb.partial)
	}
}

func cfSame(t testing.TB, what string, got, want []cfMsg) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s %d messages %v, want %d %v", what, len(got), got, len(want), want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: message %d is %v, want %v", what, i, got[i], want[i])
		}
	}
}

func cfSameStr(t testing.TB, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\x00|") != strings.Join(want, "\x00|") || len(got) != len(want) {
		t.Fatalf("%s %q, want %q", what, got, want)
	}
}

func cfPayload(n int, textual bool, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	p := make([]byte, n)
	for i := range p {
		if textual {
			p[i] = byte(' ' + r.IntN(95))
		} else {
			p[i] = byte(r.Uint32())
		}
	}
	return p
}

// fr is a masked client frame.
func cfFr(op ws.OpCode, fin bool, p string) []byte { return maskedFrame(op, fin, []byte(p)) }

func cfClose(code uint16, reason string) []byte {
	return maskedFrame(ws.OpClose, true, closePayload(code, reason))
}

// ---------------------------------------------------------------------------

// TestConformance1Framing: text and binary messages of the boundary payload
// lengths go through intact, in both directions, as one frame each with the
// same opcode; also with the frame written in small pieces.
func TestConformance1Framing(t *testing.T) {
	s := shortTimeoutServer(t, nil)
	a, b := cfPair(t, s)
	for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for i, n := range []int{0, 1, 125, 126, 127, 128, 65535, 65536, 65537, 1 << 20} {
			for _, chop := range []int{0, 997} {
				name := fmt.Sprintf("op%d/%dB/chop%d", op, n, chop)
				t.Run(name, func(t *testing.T) {
					p := cfPayload(n, op == ws.OpText, uint64(i))
					from, to := a, b
					if i%2 == 1 {
						from, to = b, a
					}
					done := make(chan struct{})
					go func() {
						defer close(done)
						f := maskedFrame(op, true, p)
						if chop == 0 {
							from.write(f)
							return
						}
						for len(f) > 0 {
							k := min(chop, len(f))
							from.write(f[:k])
							f = f[k:]
						}
					}()
					h, got, err := to.readFrame(20 * time.Second)
					<-done
					if err != nil {
						t.Fatal(err)
					}
					if h.OpCode != op || !h.Fin || h.Rsv != 0 {
						t.Fatalf("received op %d fin %v rsv %d", h.OpCode, h.Fin, h.Rsv)
					}
					if !bytes.Equal(got, p) {
						t.Fatalf("payload of %d bytes differs (got %d bytes)", n, len(got))
					}
				})
			}
		}
	}
}

// TestConformance2Pings: the relay answers pings itself with the same
// payload, never forwards pings or pongs, ignores unsolicited pongs and
// answers a ping in the middle of a fragmented message.
func TestConformance2Pings(t *testing.T) {
	s := shortTimeoutServer(t, nil)
	p125 := strings.Repeat("\xfe", 125)
	var tenPings []byte
	var tenPongs []string
	for i := range 10 {
		tenPings = append(tenPings, cfFr(ws.OpPing, true, fmt.Sprintf("payload-%d", i))...)
		tenPongs = append(tenPongs, fmt.Sprintf("payload-%d", i))
	}
	cfRun(t, s, []cfCase{
		{name: "2.1 empty ping", send: cfFr(ws.OpPing, true, ""), pongs: []string{""}},
		{name: "2.2 ping with text payload", send: cfFr(ws.OpPing, true, "Hello, world!"), pongs: []string{"Hello, world!"}},
		{name: "2.3 ping with binary payload", send: cfFr(ws.OpPing, true, "\x00\xff\xfe\xfd\xfc\xfb\x00\xff"), pongs: []string{"\x00\xff\xfe\xfd\xfc\xfb\x00\xff"}},
		{name: "2.4 ping with 125 bytes", send: cfFr(ws.OpPing, true, p125), pongs: []string{p125}},
		{name: "2.5 ping with 126 bytes", send: cfFr(ws.OpPing, true, p125+"x"), close: ws.StatusProtocolError},
		{name: "2.6 ping with 125 bytes chopped", send: cfFr(ws.OpPing, true, p125), chop: 1, pongs: []string{p125}},
		{name: "2.7 unsolicited pong without payload", send: cfFr(ws.OpPong, true, "")},
		{name: "2.8 unsolicited pong with payload", send: cfFr(ws.OpPong, true, "unsolicited pong payload")},
		{name: "2.9 unsolicited pong then ping", send: cfCat(cfFr(ws.OpPong, true, "unsolicited"), cfFr(ws.OpPing, true, "solicited")), pongs: []string{"solicited"}},
		{name: "2.10 ten pings", send: tenPings, pongs: tenPongs},
		{name: "2.11 ten pings chopped", send: tenPings, chop: 1, pongs: tenPongs},
		{name: "ping in a fragmented message",
			send:  cfCat(cfFr(ws.OpText, false, "frag1"), cfFr(ws.OpPing, true, "p"), cfFr(ws.OpContinuation, true, "frag2")),
			pongs: []string{"p"}, msgs: []cfMsg{cfText("frag1frag2")}},
		{name: "ping between messages",
			send:  cfCat(cfFr(ws.OpBinary, true, "m1"), cfFr(ws.OpPing, true, "p"), cfFr(ws.OpText, true, "m2")),
			pongs: []string{"p"}, msgs: []cfMsg{cfBinary("m1"), cfText("m2")}},
		{name: "ping then close", send: cfCat(cfFr(ws.OpPing, true, "p"), cfClose(1000, "")), pongs: []string{"p"}, close: 1000},
	})
}

// TestConformance3ReservedBits: any RSV bit (no extension is negotiated) is
// a protocol error; what came before it is delivered, what follows is not
// acted on.
func TestConformance3ReservedBits(t *testing.T) {
	s := shortTimeoutServer(t, nil)
	rsv := func(b0 byte, rsv byte, p string) []byte { return clientFrame(b0|rsv<<4, false, -1, []byte(p)) }
	cfRun(t, s, []cfCase{
		{name: "3.1 text RSV1", send: rsv(0x81, 4, "Hello, world!"), close: 1002},
		{name: "3.2 RSV2 after a text, then ping", send: cfCat(cfFr(ws.OpText, true, "Hello, world!"), rsv(0x81, 2, "Hello, world!"), cfFr(ws.OpPing, true, "")),
			msgs: []cfMsg{cfText("Hello, world!")}, close: 1002},
		{name: "3.3 RSV3 after a text, then ping, chopped", send: cfCat(cfFr(ws.OpText, true, "Hello, world!"), rsv(0x81, 6, "Hello, world!"), cfFr(ws.OpPing, true, "")),
			chop: 1, msgs: []cfMsg{cfText("Hello, world!")}, close: 1002},
		{name: "3.4 RSV4 after a text, chopped", send: cfCat(cfFr(ws.OpText, true, "Hello, world!"), rsv(0x81, 1, "Hello, world!")),
			chop: 3, msgs: []cfMsg{cfText("Hello, world!")}, close: 1002},
		{name: "3.5 binary RSV5", send: rsv(0x82, 5, "\x00\xff\xfe"), close: 1002},
		{name: "3.6 ping RSV6", send: rsv(0x89, 6, "Hello, world!"), close: 1002},
		{name: "3.7 close RSV7", send: clientFrame(0x88|7<<4, false, -1, closePayload(1000, "")), close: 1002},
		{name: "RSV on a continuation", send: cfCat(cfFr(ws.OpText, false, "a"), rsv(0x80, 4, "b")), close: 1002},
		{name: "RSV on a pong", send: rsv(0x8a, 1, ""), close: 1002},
	})
}

// TestConformance4Opcodes: reserved opcodes are protocol errors, with or
// without payload, after a valid message.
func TestConformance4Opcodes(t *testing.T) {
	s := shortTimeoutServer(t, nil)
	var cases []cfCase
	for _, op := range []byte{3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf} {
		cases = append(cases,
			cfCase{name: fmt.Sprintf("opcode %d", op), send: clientFrame(0x80|op, false, -1, nil), close: 1002},
			cfCase{name: fmt.Sprintf("opcode %d after text, then ping", op),
				send: cfCat(cfFr(ws.OpText, true, "Hello"), clientFrame(0x80|op, false, -1, []byte("reserved opcode payload")), cfFr(ws.OpPing, true, "")),
				msgs: []cfMsg{cfText("Hello")}, close: 1002},
			cfCase{name: fmt.Sprintf("opcode %d chopped", op), send: cfCat(cfFr(ws.OpBinary, true, "x"), clientFrame(0x80|op, false, -1, []byte("y"))),
				chop: 1, msgs: []cfMsg{cfBinary("x")}, close: 1002},
		)
	}
	cfRun(t, s, cases)
}

// TestConformance5Fragmentation: fragmented messages are forwarded as they
// are and reassemble intact; control frames may be interleaved; broken
// fragment sequences are protocol errors.
func TestConformance5Fragmentation(t *testing.T) {
	s := shortTimeoutServer(t, nil)
	var many []byte
	var manyWant strings.Builder
	for i := range 300 {
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpBinary
		}
		p := fmt.Sprintf("<%d>", i)
		many = append(many, cfFr(op, i == 299, p)...)
		manyWant.WriteString(p)
	}
	var pinged []byte
	var pingedPongs []string
	for i := range 20 {
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpText
		}
		pinged = append(pinged, cfFr(op, i == 19, "ab")...)
		if i < 19 {
			pinged = append(pinged, cfFr(ws.OpPing, true, fmt.Sprint(i))...)
			pingedPongs = append(pingedPongs, fmt.Sprint(i))
		}
	}
	cfRun(t, s, []cfCase{
		{name: "5.1 ping in 2 fragments", send: cfCat(cfFr(ws.OpPing, false, "frag1"), cfFr(ws.OpContinuation, true, "frag2")), close: 1002},
		{name: "5.2 pong in 2 fragments", send: cfCat(cfFr(ws.OpPong, false, "frag1"), cfFr(ws.OpContinuation, true, "frag2")), close: 1002},
		{name: "5.3 text in 2 fragments", send: cfCat(cfFr(ws.OpText, false, "fragment1"), cfFr(ws.OpContinuation, true, "fragment2")),
			msgs: []cfMsg{cfText("fragment1fragment2")}},
		{name: "5.4 text in 2 fragments chopped", send: cfCat(cfFr(ws.OpText, false, "fragment1"), cfFr(ws.OpContinuation, true, "fragment2")),
			chop: 1, msgs: []cfMsg{cfText("fragment1fragment2")}},
		{name: "5.5 binary in 2 fragments", send: cfCat(cfFr(ws.OpBinary, false, "\x00\x01"), cfFr(ws.OpContinuation, true, "\xff\xfe")),
			msgs: []cfMsg{cfBinary("\x00\x01\xff\xfe")}},
		{name: "5.6 text in 2 fragments with a ping between",
			send:  cfCat(cfFr(ws.OpText, false, "fragment1"), cfFr(ws.OpPing, true, "ping payload"), cfFr(ws.OpContinuation, true, "fragment2")),
			pongs: []string{"ping payload"}, msgs: []cfMsg{cfText("fragment1fragment2")}},
		{name: "5.7 same, chopped",
			send:  cfCat(cfFr(ws.OpText, false, "fragment1"), cfFr(ws.OpPing, true, "ping payload"), cfFr(ws.OpContinuation, true, "fragment2")),
			chop:  1,
			pongs: []string{"ping payload"}, msgs: []cfMsg{cfText("fragment1fragment2")}},
		{name: "5.8 binary fragments with a pong between",
			send: cfCat(cfFr(ws.OpBinary, false, "a"), cfFr(ws.OpPong, true, "unsolicited"), cfFr(ws.OpContinuation, true, "b")),
			msgs: []cfMsg{cfBinary("ab")}},
		{name: "5.9 continuation (FIN) without a message", send: cfCat(cfFr(ws.OpContinuation, true, "fragment2"), cfFr(ws.OpText, true, "x")), close: 1002},
		{name: "5.10 same, chopped", send: cfFr(ws.OpContinuation, true, "fragment2"), chop: 1, close: 1002},
		{name: "5.12 continuation (no FIN) without a message", send: cfFr(ws.OpContinuation, false, "fragment1"), close: 1002},
		{name: "5.15 continuation after the message ended",
			send: cfCat(cfFr(ws.OpText, false, "f1"), cfFr(ws.OpContinuation, true, "f2"), cfFr(ws.OpContinuation, false, "f3"), cfFr(ws.OpText, true, "f4")),
			msgs: []cfMsg{cfText("f1f2")}, close: 1002},
		{name: "5.17 text inside a fragmented text", send: cfCat(cfFr(ws.OpText, false, "f1"), cfFr(ws.OpText, true, "f2")), close: 1002},
		{name: "binary inside a fragmented text", send: cfCat(cfFr(ws.OpText, false, "f1"), cfFr(ws.OpBinary, true, "f2")), close: 1002},
		{name: "text inside a fragmented binary", send: cfCat(cfFr(ws.OpBinary, false, "f1"), cfFr(ws.OpText, false, "f2")), close: 1002},
		{name: "5.19 fragments with pings between",
			send:  cfCat(cfFr(ws.OpText, false, "f1"), cfFr(ws.OpContinuation, false, "f2"), cfFr(ws.OpPing, true, "p1"), cfFr(ws.OpContinuation, false, "f3"), cfFr(ws.OpContinuation, false, "f4"), cfFr(ws.OpPing, true, "p2"), cfFr(ws.OpContinuation, true, "f5")),
			pongs: []string{"p1", "p2"}, msgs: []cfMsg{cfText("f1f2f3f4f5")}},
		{name: "many fragments", send: many, msgs: []cfMsg{cfBinary(manyWant.String())}},
		{name: "many fragments chopped", send: many, chop: 7, msgs: []cfMsg{cfBinary(manyWant.String())}},
		{name: "fragments interleaved with pings", send: pinged, pongs: pingedPongs, msgs: []cfMsg{cfText(strings.Repeat("ab", 20))}},
		{name: "empty fragments", send: cfCat(cfFr(ws.OpText, false, ""), cfFr(ws.OpContinuation, false, ""), cfFr(ws.OpContinuation, true, "")),
			msgs: []cfMsg{cfText("")}},
		{name: "two fragmented messages back to back",
			send: cfCat(cfFr(ws.OpText, false, "a"), cfFr(ws.OpContinuation, true, "b"), cfFr(ws.OpBinary, false, "c"), cfFr(ws.OpContinuation, true, "d")),
			msgs: []cfMsg{cfText("ab"), cfBinary("cd")}},
	})
}

// utf8Kosme is "κόσμε", Autobahn's sample text.
const utf8Kosme = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"

// TestConformance6UTF8: valid UTF-8 passes however it is fragmented;
// invalid UTF-8 closes the sender with 1007 and the partner never receives
// an invalid text.
func TestConformance6UTF8(t *testing.T) {
	s := shortTimeoutServer(t, nil)
	valid := []string{
		"", "Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!", utf8Kosme,
		"\x00", "\xc2\x80", "\xe0\xa0\x80", "\xf0\x90\x80\x80", // first of each length
		"\x7f", "\xdf\xbf", "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf", // last of each length
		"\xed\x9f\xbf", "\xee\x80\x80", "\xef\xbf\xbd", // around the surrogates
		"\xef\xbf\xbe", "\xf0\x9f\xbf\xbe", "\xf4\x8f\xbf\xbe", // noncharacters are valid
		"😀 mixed ascii ümlauts 中文",
	}
	invalid := []string{
		utf8Kosme + "\xed\xa0\x80edited",                                       // 6.3.1: surrogate
		"\xf8\x88\x80\x80\x80", "\xfc\x84\x80\x80\x80\x80", "\xf4\x90\x80\x80", // above U+10FFFF
		"\x80", "\xbf", "\x80\xbf", "\x80\xbf\x80\xbf", // lone continuations
		"\xc0 ", "\xe0 ", "\xf0 ", "\xf8 ", "\xfc ", // lonely start bytes
		"\xc0", "\xe0\x80", "\xf0\x80\x80", "\xdf", "\xef\xbf", "\xf7\xbf\xbf", // truncated sequences
		"\xfe", "\xff", "\xfe\xfe\xff\xff", // impossible bytes
		"\xc0\xaf", "\xe0\x80\xaf", "\xf0\x80\x80\xaf", "\xc1\xbf", "\xe0\x9f\xbf", "\xf0\x8f\xbf\xbf", "\xc0\x80", "\xe0\x80\x80", // overlong
		"\xed\xa0\x80", "\xed\xad\xbf", "\xed\xae\x80", "\xed\xaf\xbf", "\xed\xb0\x80", "\xed\xbe\x80", "\xed\xbf\xbf", "\xed\xa0\x80\xed\xb0\x80", // surrogates
		"valid prefix " + utf8Kosme[:3], // code point cut at the end of the message
	}
	for i := 1; i < len(utf8Kosme); i++ { // 6.6: every prefix of κόσμε
		if !utf8.ValidString(utf8Kosme[:i]) {
			invalid = append(invalid, utf8Kosme[:i])
		} else {
			valid = append(valid, utf8Kosme[:i])
		}
	}
	// Each text as one frame, in 2 fragments at every split, and one byte
	// per fragment.
	fragments := func(s string, size int) []byte {
		if size <= 0 || len(s) == 0 {
			return cfFr(ws.OpText, true, s)
		}
		var out []byte
		for i := 0; i < len(s); i += size {
			op := ws.OpContinuation
			if i == 0 {
				op = ws.OpText
			}
			out = append(out, cfFr(op, i+size >= len(s), s[i:min(i+size, len(s))])...)
		}
		return out
	}
	split := func(s string, at int) []byte {
		return cfCat(cfFr(ws.OpText, false, s[:at]), cfFr(ws.OpContinuation, true, s[at:]))
	}
	t.Run("valid", func(t *testing.T) {
		a, b := cfPair(t, s)
		for i, v := range valid {
			sends := [][]byte{fragments(v, 0), fragments(v, 1)}
			for at := 0; at <= len(v); at++ {
				sends = append(sends, split(v, at))
			}
			for j, send := range sends {
				a.write(send)
				r := cfDrain(t, b, 1, 10*time.Second)
				if len(r.msgs) != 1 || r.msgs[0] != cfText(v) {
					t.Fatalf("valid text %d %q (variant %d): partner received %v", i, v, j, r.msgs)
				}
			}
		}
	})
	var cases []cfCase
	for i, v := range invalid {
		cases = append(cases,
			cfCase{name: fmt.Sprintf("invalid %d %q", i, v), send: fragments(v, 0), close: 1007},
			cfCase{name: fmt.Sprintf("invalid %d %q per byte", i, v), send: fragments(v, 1), close: 1007},
			cfCase{name: fmt.Sprintf("invalid %d %q chopped", i, v), send: fragments(v, 0), chop: 1, close: 1007},
		)
	}
	cases = append(cases,
		// 6.4: fail fast, in the first fragment of a message still going.
		cfCase{name: "6.4.1 fail in the first fragment", send: cfCat(cfFr(ws.OpText, false, utf8Kosme+"\xf4\x90\x80\x80"), cfFr(ws.OpContinuation, true, "edited")), close: 1007},
		cfCase{name: "6.4.2 fail at a fragment boundary", send: cfCat(cfFr(ws.OpText, false, utf8Kosme+"\xf4"), cfFr(ws.OpContinuation, false, "\x90\x80\x80"), cfFr(ws.OpContinuation, true, "edited")), close: 1007},
		cfCase{name: "invalid after a valid message", send: cfCat(cfFr(ws.OpText, true, utf8Kosme), cfFr(ws.OpText, true, "\xff")), msgs: []cfMsg{cfText(utf8Kosme)}, close: 1007},
		cfCase{name: "binary is not validated", send: cfFr(ws.OpBinary, true, "\xff\xfe\xed\xa0\x80"), msgs: []cfMsg{cfBinary("\xff\xfe\xed\xa0\x80")}},
		cfCase{name: "close reason invalid", send: cfClose(1000, "\xff"), close: 1007},
	)
	cfRun(t, s, cases)
}

// TestConformance7Close: a close is echoed with its code and ends the
// tunnel (the partner gets 1000); data after it is not forwarded; invalid
// close payloads are protocol errors.
func TestConformance7Close(t *testing.T) {
	s := shortTimeoutServer(t, nil)
	cases := []cfCase{
		{name: "7.1.1 text then close", send: cfCat(cfFr(ws.OpText, true, "Hello World!"), cfClose(1000, "")), msgs: []cfMsg{cfText("Hello World!")}, close: 1000},
		{name: "7.1.2 close twice", send: cfCat(cfClose(1000, ""), cfClose(1000, "")), close: 1000},
		{name: "7.1.3 ping after close", send: cfCat(cfClose(1000, ""), cfFr(ws.OpPing, true, "")), close: 1000},
		{name: "7.1.4 text after close", send: cfCat(cfClose(1000, ""), cfFr(ws.OpText, true, "ignored")), close: 1000},
		{name: "7.1.5 close inside a fragmented message",
			send: cfCat(cfFr(ws.OpText, false, "fragment1"), cfClose(1000, ""), cfFr(ws.OpContinuation, true, "fragment2")), close: 1000},
		{name: "7.1.6 large message then close", send: cfCat(cfFr(ws.OpText, true, strings.Repeat("BAsd7&jh23", 26214)), cfClose(1000, ""), cfFr(ws.OpPing, true, "")),
			msgs: []cfMsg{cfText(strings.Repeat("BAsd7&jh23", 26214))}, close: 1000},
		{name: "7.3.1 close with an empty payload", send: maskedFrame(ws.OpClose, true, nil), close: 1000},
		{name: "7.3.2 close with a 1-byte payload", send: maskedFrame(ws.OpClose, true, []byte{0x03}), close: 1002},
		{name: "7.3.3 close 1000 without reason", send: cfClose(1000, ""), close: 1000},
		{name: "7.3.4 close with a reason", send: cfClose(1000, "Hello World!"), close: 1000},
		{name: "7.3.5 close with a 123-byte reason", send: cfClose(1000, strings.Repeat("*", 123)), close: 1000},
		{name: "7.3.6 close with a 124-byte reason", send: cfClose(1000, strings.Repeat("*", 124)), close: 1002},
		{name: "7.5.1 close reason invalid UTF-8", send: cfClose(1000, utf8Kosme+"\xed\xa0\x80edited"), close: 1007},
		{name: "close chopped", send: cfClose(1001, "bye"), chop: 1, close: 1001},
	}
	for _, code := range []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999} {
		cases = append(cases, cfCase{name: fmt.Sprintf("7.7 valid code %d", code), send: cfClose(code, "reason"), close: ws.StatusCode(code)})
	}
	for _, code := range []uint16{0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		cases = append(cases, cfCase{name: fmt.Sprintf("7.9 invalid code %d", code), send: cfClose(code, ""), close: 1002})
	}
	cfRun(t, s, cases)

	t.Run("partner closes during a message", func(t *testing.T) {
		// B closes while A is in the middle of sending a fragmented message:
		// A gets a close frame at its next frame boundary.
		a, b := cfPair(t, s)
		a.write(cfFr(ws.OpText, false, "part"))
		if r := cfDrain(t, b, 0, time.Second); len(r.msgs) != 0 {
			t.Fatal(r.msgs)
		}
		b.write(cfClose(1000, ""))
		rb := cfDrain(t, b, -1, 5*time.Second)
		if !rb.closed.frame || rb.closed.code != 1000 {
			t.Fatalf("closer: %+v", rb.closed)
		}
		ra := cfDrain(t, a, -1, 5*time.Second)
		if !ra.ended || (ra.closed.frame && ra.closed.code != 1000) {
			t.Fatalf("partner: %+v", ra.closed)
		}
	})
	t.Run("TCP reset by the sender closes the partner", func(t *testing.T) {
		a, b := cfPair(t, s)
		if tc, ok := a.c.(interface{ SetLinger(int) error }); ok {
			_ = tc.SetLinger(0)
		}
		a.c.Close()
		rb := cfDrain(t, b, -1, 5*time.Second)
		if !rb.ended || (rb.closed.frame && rb.closed.code != 1000) {
			t.Fatalf("partner: %+v", rb.closed)
		}
	})
}

// TestConformance9ManyMessages: thousands of small messages each way at
// once arrive complete and in order.
func TestConformance9ManyMessages(t *testing.T) {
	s := shortTimeoutServer(t, nil)
	a, b := cfPair(t, s)
	n := 10000
	if raceEnabled {
		n = 3000
	}
	var wg sync.WaitGroup
	for _, dir := range []struct {
		from, to *rawWS
		tag      string
	}{{a, b, "ab"}, {b, a, "ba"}} {
		wg.Add(2)
		go func() {
			defer wg.Done()
			var buf []byte
			for i := range n {
				op := ws.OpText
				if i%3 == 0 {
					op = ws.OpBinary
				}
				buf = append(buf, maskedFrame(op, true, []byte(fmt.Sprintf("%s-%d-%s", dir.tag, i, strings.Repeat("x", i%200))))...)
				if len(buf) > 16<<10 || i == n-1 {
					dir.from.write(buf)
					buf = buf[:0]
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := range n {
				h, p, err := dir.to.readFrame(30 * time.Second)
				if err != nil {
					t.Errorf("%s: message %d: %v", dir.tag, i, err)
					return
				}
				want := fmt.Sprintf("%s-%d-%s", dir.tag, i, strings.Repeat("x", i%200))
				wantOp := ws.OpText
				if i%3 == 0 {
					wantOp = ws.OpBinary
				}
				if string(p) != want || h.OpCode != wantOp || !h.Fin {
					t.Errorf("%s: message %d is op %d %q, want op %d %q", dir.tag, i, h.OpCode, p, wantOp, want)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestConformance9LargeMessages: large messages, whole and fragmented in
// frames of many sizes, in one write or chopped, arrive intact; the partner
// echoes them back (Autobahn's echo set-up).
func TestConformance9LargeMessages(t *testing.T) {
	s := shortTimeoutServer(t, nil)
	a, b := cfPair(t, s)
	// B echoes every frame back as it is.
	go func() {
		for {
			h, p, err := b.readFrame(time.Minute)
			if err != nil {
				return
			}
			if h.OpCode.IsData() {
				b.send(h.OpCode, h.Fin, p)
			}
		}
	}()
	sizes := []int{64 << 10, 256 << 10, 1 << 20, 4 << 20}
	frames := []int{0, 64, 1 << 10, 4 << 10, 64 << 10, 1 << 20}
	if raceEnabled {
		sizes = []int{64 << 10, 1 << 20}
	}
	for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for _, size := range sizes {
			for _, fsize := range frames {
				if fsize == 64 && size > 256<<10 {
					continue
				}
				t.Run(fmt.Sprintf("op%d/%dKiB/frames%d", op, size>>10, fsize), func(t *testing.T) {
					p := cfPayload(size, op == ws.OpText, uint64(size+fsize))
					var send []byte
					if fsize == 0 {
						send = maskedFrame(op, true, p)
					} else {
						for i := 0; i < size; i += fsize {
							o := ws.OpContinuation
							if i == 0 {
								o = op
							}
							send = append(send, maskedFrame(o, i+fsize >= size, p[i:min(i+fsize, size)])...)
						}
					}
					go a.write(send)
					r := cfDrain(t, a, 1, 60*time.Second)
					if len(r.msgs) != 1 || r.msgs[0].op != op || r.msgs[0].data != string(p) {
						t.Fatalf("echo of %d bytes: got %d messages", size, len(r.msgs))
					}
				})
			}
		}
	}
	t.Run("chopped writes", func(t *testing.T) {
		p := cfPayload(1<<20, true, 9)
		f := maskedFrame(ws.OpText, true, p)
		go func() {
			for i := 0; i < len(f); i += 1021 {
				a.write(f[i:min(i+1021, len(f))])
			}
		}()
		r := cfDrain(t, a, 1, 60*time.Second)
		if len(r.msgs) != 1 || r.msgs[0].data != string(p) {
			t.Fatal("chopped 1 MiB message not echoed intact")
		}
	})
}

// TestConformance9Streaming: a 16 MiB message in 64 KiB frames is streamed
// through the relay, never held: the process's heap stays far below the
// message size while it passes.
func TestConformance9Streaming(t *testing.T) {
	// Not parallel (none of these tests is, to keep their load off the
	// timing-sensitive parallel tests of the package): the heap is measured.
	s := shortTimeoutServer(t, nil)
	a, b := cfPair(t, s)
	const total, fsize = 16 << 20, 64 << 10

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	rssBefore := testutil.RSS(t)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
		}
	}()

	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		r := rand.New(rand.NewPCG(16, 64))
		payload := make([]byte, fsize)
		buf := make([]byte, 0, fsize+16)
		for i := 0; i < total/fsize; i++ {
			for j := range payload {
				payload[j] = byte(r.Uint32())
			}
			sent.Write(payload)
			op := ws.OpContinuation
			if i == 0 {
				op = ws.OpBinary
			}
			buf = handshake.AppendFrameMasked(buf[:0], op, i == total/fsize-1, payload, clientMask)
			_ = a.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := a.c.Write(buf); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	got := sha256.New()
	n, frames := 0, 0
	buf := make([]byte, fsize)
	for {
		_ = b.c.SetReadDeadline(time.Now().Add(30 * time.Second))
		h, err := ws.ReadHeader(b.br)
		if err != nil {
			t.Fatalf("after %d bytes: %v", n, err)
		}
		if h.Length > fsize || h.Masked {
			t.Fatalf("frame of %d bytes, masked %v", h.Length, h.Masked)
		}
		if _, err := io.ReadFull(b.br, buf[:h.Length]); err != nil {
			t.Fatal(err)
		}
		got.Write(buf[:h.Length])
		n += int(h.Length)
		frames++
		if h.Fin {
			break
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-sampled
	if n != total || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Fatalf("received %d bytes in %d frames, digest differs or short", n, frames)
	}
	grow := int64(peak.Load()) - int64(base)
	rssAfter := testutil.RSS(t)
	t.Logf("16 MiB in %d frames: heap peak +%d KiB, RSS %+d KiB", frames, grow>>10, (rssAfter-rssBefore)>>10)
	if grow > 8<<20 {
		t.Fatalf("heap grew by %d MiB while a 16 MiB message passed: the relay is holding it", grow>>20)
	}
	// The tunnel is still usable.
	a.send(ws.OpText, true, []byte("after"))
	if r := cfDrain(t, b, 1, 5*time.Second); len(r.msgs) != 1 || r.msgs[0] != cfText("after") {
		t.Fatalf("after the large message: %v", r.msgs)
	}
}

// raceEnabled reports whether the test binary was built with -race (the
// build settings say so), to scale the heavier cases down.
var raceEnabled = func() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}()
