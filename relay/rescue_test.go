package relay

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// TestRescueFromNetpollHangUp: netpoll letting go of a connection on its
// own (as its race build does when a stale event reaches a reused
// descriptor number) does not end a client whose socket is alive: the
// connection moves to a forwarding loop and goes on, through pairing and
// its tunnel. A real hang-up still ends the connection.
func TestRescueFromNetpollHangUp(t *testing.T) {
	s := startServer(t, nil)
	addr := s.Addrs()[0].String()
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}
	// hangUp closes the netpoll side of the server's only connection on
	// netpoll from peer, as netpoll's poller would.
	hangUp := func(peer string) {
		t.Helper()
		var found *netpollTransport
		waitFor(t, func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			for c := range s.conns {
				if nt, ok := c.tr.(*netpollTransport); ok && c.peer.String() == peer {
					found = nt
					return true
				}
			}
			return false
		}, "the connection on netpoll")
		found.nc.Close() // not through release: netpoll's own decision, as far as the conn knows
	}

	// A client mid-JSON-RPC keeps its connection.
	a, ar := dial()
	if _, err := a.Write([]byte(`{"id":1,"method":"RemoteProxy.Hello"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := ar.ReadString('\n'); err != nil || !strings.Contains(line, "apiVersion") {
		t.Fatalf("hello: %q %v", line, err)
	}
	before := s.Stats().Rescued
	hangUp(a.LocalAddr().String())
	waitFor(t, func() bool { return s.Stats().Rescued == before+1 }, "a rescue")
	auth := `{"id":2,"method":"Authentication.Authenticate","params":{"uuid":"` + newTestUUID() + `","name":"a","token":"rescue"}}` + "\n"
	if _, err := a.Write([]byte(auth)); err != nil {
		t.Fatal(err)
	}
	if line, err := ar.ReadString('\n'); err != nil || !strings.Contains(line, "AuthenticationErrorNoError") {
		t.Fatalf("authenticate after the rescue: %q %v", line, err)
	}
	// Its partner arrives; the tunnel carries bytes both ways.
	b, br := dial()
	auth = `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"` + newTestUUID() + `","name":"b","token":"rescue"}}` + "\n"
	if _, err := b.Write([]byte(auth)); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*bufio.Reader{ar, br} {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("waiting for TunnelEstablished: %v", err)
			}
			if strings.Contains(line, "TunnelEstablished") {
				break
			}
		}
	}
	if _, err := a.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("a→b: %q %v", line, err)
	}
	if _, err := b.Write([]byte("pong\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := ar.ReadString('\n'); err != nil || line != "pong\n" {
		t.Fatalf("b→a: %q %v", line, err)
	}

	// A client that really left is not rescued: netpoll's hang-up, checked,
	// stands.
	c, _ := dial()
	peer := c.LocalAddr().String()
	waitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for cc := range s.conns {
			if cc.peer.String() == peer {
				return true
			}
		}
		return false
	}, "the third connection")
	before = s.Stats().Rescued
	closesBefore := s.Stats().Closes["peer_closed"]
	c.(*net.TCPConn).CloseWrite()
	waitFor(t, func() bool { return s.Stats().Closes["peer_closed"] > closesBefore }, "the real hang-up counted")
	if got := s.Stats().Rescued; got != before {
		t.Fatalf("a closed client was rescued (%d → %d)", before, got)
	}
}
