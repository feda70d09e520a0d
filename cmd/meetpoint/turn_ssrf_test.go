package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/logging"
	pturn "github.com/pion/turn/v5"
	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/relay/turn"
)

// inNS runs f with the calling goroutine's thread in network namespace
// ns, so that the sockets f makes live there (a socket stays in the
// namespace it was made in, whichever thread uses it later).
func inNS(t *testing.T, ns string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("setns %s: %v", ns, err)
	}
	defer func() {
		// Back home, or the thread stays locked and dies with the
		// goroutine rather than serve others in the wrong namespace.
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	f()
}

// hostServices are a UDP echo and an HTTP server on one address, counting
// what reaches them.
type hostServices struct {
	udp  net.PacketConn
	http net.Listener
	hits atomic.Int64
}

func listenServices(t *testing.T, ip string) *hostServices {
	t.Helper()
	s := &hostServices{}
	var err error
	if s.udp, err = net.ListenPacket("udp4", ip+":7"); err != nil {
		t.Fatal(err)
	}
	if s.http, err = net.Listen("tcp4", ip+":80"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.udp.Close(); s.http.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := s.udp.ReadFrom(buf)
			if err != nil {
				return
			}
			s.hits.Add(1)
			_, _ = s.udp.WriteTo(buf[:n], from)
		}
	}()
	go func() {
		_ = http.Serve(s.http, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			s.hits.Add(1)
			_, _ = io.WriteString(w, "admin secrets")
		}))
	}()
	return s
}

// TestTURNNoSSRF: an attacker outside the relay host, holding TURN
// credentials, cannot make meetpoint's TURN reach the relay host's
// loopback services, a private address (in a namespace), or the host's
// own addresses — over UDP or through an RFC 6062 TCP allocation — while
// a peer on a public-range address (in a namespace) is relayed both ways.
//
//	relay namespace: 10.77.0.1, 11.77.0.1 (relay IP), services on 127.0.0.1
//	peer namespace:  10.77.0.2 (private), 11.77.0.2 (public range), services on each;
//	                 the attacker's TURN client
func TestTURNNoSSRF(t *testing.T) {
	rns, pns := twoNamespaces(t)
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Skipf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	sh("-n", rns.name, "addr", "add", "10.77.0.1/24", "dev", rns.dev)
	sh("-n", rns.name, "addr", "add", "11.77.0.1/24", "dev", rns.dev)
	sh("-n", pns.name, "addr", "add", "10.77.0.2/24", "dev", pns.dev)
	sh("-n", pns.name, "addr", "add", "11.77.0.2/24", "dev", pns.dev)

	var local, private, public *hostServices
	inNS(t, rns.name, func() { local = listenServices(t, "127.0.0.1") })
	inNS(t, pns.name, func() { private, public = listenServices(t, "10.77.0.2"), listenServices(t, "11.77.0.2") })

	secret := "ssrf-test-secret-0123456789"
	secretFile := filepath.Join(t.TempDir(), "turn.secret")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := rns.meetpoint("serve", "--auth", "dummy", "--listen", "0.0.0.0:8443", "--turn", "--turn-tcp",
		"--turn-relay-ip", "11.77.0.1", "--turn-secret-file", secretFile, "--turn-ports", "40000-40100", "--log-level", "warn")
	srv.Stderr = testWriter{t, "relay"}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })

	user, pass := turn.Credentials([]byte(secret), "mallory", time.Hour, time.Now())
	const server = "11.77.0.1:8443"
	newClient := func(conn net.PacketConn) *pturn.Client {
		c, err := pturn.NewClient(&pturn.ClientConfig{STUNServerAddr: server, TURNServerAddr: server, Conn: conn,
			Username: user, Password: pass, Realm: "meetpoint", LoggerFactory: logging.NewDefaultLoggerFactory()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		if err := c.Listen(); err != nil {
			t.Fatal(err)
		}
		return c
	}

	// UDP: allocate (waiting for the relay to come up), then try each peer.
	var udpConn net.PacketConn
	inNS(t, pns.name, func() {
		var err error
		if udpConn, err = net.ListenPacket("udp4", "11.77.0.2:0"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { udpConn.Close() })
	c := newClient(udpConn)
	var relayed net.PacketConn
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if relayed, err = c.Allocate(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no allocation from the relay in its namespace: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	defer relayed.Close()
	echoes := func(to string) (permErr error, echoed bool) {
		addr, _ := net.ResolveUDPAddr("udp4", to)
		if permErr = c.CreatePermission(addr); permErr != nil {
			return permErr, false
		}
		buf := make([]byte, 1500)
		for range 10 {
			_, _ = relayed.WriteTo([]byte("probe"), addr)
			_ = relayed.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, _, err := relayed.ReadFrom(buf); err == nil && string(buf[:n]) == "probe" {
				return nil, true
			}
		}
		return nil, false
	}
	for _, to := range []string{"127.0.0.1:7", "10.77.0.2:7", "10.77.0.1:7"} {
		if err, echoed := echoes(to); err == nil || echoed {
			t.Errorf("UDP peer %s: permission error %v, echoed %v; want refused", to, err, echoed)
		}
	}
	if err, echoed := echoes("11.77.0.1:7"); echoed { // the relay IP: granted, but port 7 is no allocation's
		t.Errorf("UDP to the relay IP's port 7 came back (permission error %v)", err)
	}
	if err, echoed := echoes("11.77.0.2:7"); err != nil || !echoed {
		t.Errorf("UDP peer on a public-range address: permission error %v, echoed %v; want relayed", err, echoed)
	}

	// TCP (RFC 6062) allocation over a TCP control connection.
	var control net.Conn
	inNS(t, pns.name, func() {
		var err error
		if control, err = net.Dial("tcp4", server); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { control.Close() })
	tc := newClient(pturn.NewSTUNConn(control))
	alloc, err := tc.AllocateTCP()
	if err != nil {
		t.Fatalf("TCP allocation with --turn-tcp: %v", err)
	}
	defer alloc.Close()
	get := func(to string) (string, error) {
		// The data connection is dialled in the peer namespace too.
		var dc net.Conn
		var err error
		inNS(t, pns.name, func() { dc, err = net.Dial("tcp4", server) })
		if err != nil {
			return "", err
		}
		addr, _ := net.ResolveTCPAddr("tcp4", to)
		conn, err := alloc.DialTCPWithConn(dc, "tcp4", addr)
		if err != nil {
			dc.Close()
			return "", err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	for _, to := range []string{"127.0.0.1:80", "10.77.0.2:80", "10.77.0.1:80", "11.77.0.1:80"} {
		if body, err := get(to); err == nil {
			t.Errorf("TCP peer %s reached through TURN: %q", to, body)
		}
	}
	if body, err := get("11.77.0.2:80"); err != nil || body != "admin secrets" {
		t.Errorf("TCP peer on a public-range address: %q %v; want relayed", body, err)
	}

	if n := local.hits.Load(); n != 0 {
		t.Errorf("the relay host's loopback services were reached %d times", n)
	}
	if n := private.hits.Load(); n != 0 {
		t.Errorf("the private address's services were reached %d times", n)
	}
	if n := public.hits.Load(); n < 2 {
		t.Errorf("the public-range services were reached %d times, want the UDP echo and the GET", n)
	}
}
