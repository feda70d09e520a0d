package turn

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// rawClient is a TURN client that builds its own requests (pion's client
// binds channels on its own schedule): long-term credentials, over a
// datagram socket or a stream framed as TURN frames.
type rawClient struct {
	t                 *testing.T
	conn              net.Conn
	user, pass, realm string
	nonce             stun.Nonce
}

// do sends a request of type typ with attrs (and the credentials) and
// returns the answer, learning the nonce on a challenge (a 401 or 438
// without MESSAGE-INTEGRITY) and asking again.
func (c *rawClient) do(typ stun.MessageType, attrs ...stun.Setter) *stun.Message {
	c.t.Helper()
	for range 3 {
		set := append([]stun.Setter{stun.TransactionID, typ}, attrs...)
		if c.nonce != nil {
			set = append(set, stun.NewUsername(c.user), stun.NewRealm(c.realm), c.nonce, stun.NewLongTermIntegrity(c.user, c.realm, c.pass))
		}
		m := stun.MustBuild(set...)
		_, err := c.conn.Write(m.Raw)
		if err != nil {
			c.t.Fatal(err)
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 1500)
		var n int
		if _, udp := c.conn.(*net.UDPConn); udp {
			n, err = c.conn.Read(buf)
		} else if n, err = readFull(c.conn, buf[:20]); err == nil { // a stream: the header, then the rest
			var k int
			k, err = readFull(c.conn, buf[20:20+(int(buf[2])<<8|int(buf[3]))])
			n += k
		}
		if err != nil {
			c.t.Fatalf("%v: %v", typ, err)
		}
		r := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if err := r.Decode(); err != nil {
			c.t.Fatal(err)
		}
		var code stun.ErrorCodeAttribute
		if r.Type.Class == stun.ClassErrorResponse && code.GetFrom(r) == nil && (code.Code == stun.CodeUnauthorized || code.Code == stun.CodeStaleNonce) &&
			!r.Contains(stun.AttrMessageIntegrity) { // a challenge, not a refusal
			_ = c.nonce.GetFrom(r)
			var realm stun.Realm
			_ = realm.GetFrom(r)
			c.realm = realm.String()
			continue
		}
		return r
	}
	c.t.Fatalf("%v: refused for its credentials", typ)
	return nil
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// allocate makes a UDP allocation.
func (c *rawClient) allocate() {
	c.t.Helper()
	r := c.do(stun.NewType(stun.MethodAllocate, stun.ClassRequest), stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}})
	if r.Type.Class != stun.ClassSuccessResponse {
		c.t.Fatalf("Allocate: %v", r)
	}
}

// bind asks for channel number ch to peer; it says whether it was
// granted.
func (c *rawClient) bind(ch uint16, peer *net.UDPAddr) bool {
	c.t.Helper()
	r := c.do(stun.NewType(stun.MethodChannelBind, stun.ClassRequest),
		stun.RawAttribute{Type: stun.AttrChannelNumber, Value: []byte{byte(ch >> 8), byte(ch), 0, 0}},
		setterFunc(func(m *stun.Message) error {
			return stun.XORMappedAddress{IP: peer.IP, Port: peer.Port}.AddToAs(m, stun.AttrXORPeerAddress)
		}))
	return r.Type.Class == stun.ClassSuccessResponse
}

type setterFunc func(*stun.Message) error

func (f setterFunc) AddTo(m *stun.Message) error { return f(m) }

// TestTURNChannelsBounded: one allocation holds at most MaxChannels
// channels, over UDP and over a TCP control connection; one more is
// refused (pion answers a ChannelBind it may not make with an
// authenticated 401) and counted, a held one is still refreshed. The binds
// name one permitted peer IP at port after port, so MaxPermissions (one
// peer) never stopped them: pion granted every channel number there is
// (16384 each allocation), each with its binding and timer.
func TestTURNChannelsBounded(t *testing.T) {
	s, srv := start(t, Config{})
	user, pass := Credentials(secret, "mallory", time.Minute, time.Now())
	peer := func(i int) *net.UDPAddr { return &net.UDPAddr{IP: net.IPv4(1, 2, 3, 4), Port: 1000 + i} }
	udp, err := net.Dial("udp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	tcp, err := net.Dial("tcp", relaytest.Addr(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	for i, conn := range []net.Conn{udp, tcp} {
		c := &rawClient{t: t, conn: conn, user: user, pass: pass}
		c.allocate()
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for ch := range MaxChannels {
			if !c.bind(0x4000+uint16(ch), peer(ch)) {
				t.Fatalf("%v: ChannelBind %d refused", conn.LocalAddr().Network(), ch+1)
			}
		}
		if c.bind(0x4000+MaxChannels, peer(MaxChannels)) {
			var after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&after)
			t.Errorf("%v: ChannelBind %d granted, want refused (MaxChannels %d); %d channels took %d KiB of heap",
				conn.LocalAddr().Network(), MaxChannels+1, MaxChannels, MaxChannels+1, (int64(after.HeapAlloc)-int64(before.HeapAlloc))>>10)
		}
		if n := relaytest.Metric(t, srv, `meetpoint_turn_refused_total{reason="quota_channel"}`); n != float64(i+1) {
			t.Errorf("%v: quota_channel refusals counted %v, want %d", conn.LocalAddr().Network(), n, i+1)
		}
		if !c.bind(0x4000, peer(0)) {
			t.Errorf("%v: refreshing a held channel refused", conn.LocalAddr().Network())
		}
	}
}
