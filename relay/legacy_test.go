package relay

// Real-socket tests of the legacy nymea-remoteproxy API (RemoteProxy.*,
// Authentication.Authenticate, pairing, timeouts) over WebSocket and raw TCP,
// modelled on nymea-remoteproxy's own test list.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
)

// ---------------------------------------------------------------------------
// The transports these table-driven tests run over (the helpers they use
// are in helpers_test.go and wire_helpers_test.go).

// clientTransport is one client transport of the table-driven tests.
type clientTransport struct {
	name string
	url  func(*Server) string
}

// clientTransports are the transports a single client of these tests uses.
var clientTransports = []clientTransport{{"tcp", tcpURL}, {"ws", wsURL}}

// transportPairs are the (a, b) transport pairs of a tunnel.
var transportPairs = []struct {
	name string
	a, b func(*Server) string
}{
	{"tcp-tcp", tcpURL, tcpURL},
	{"ws-ws", wsURL, wsURL},
	{"tcp-ws", tcpURL, wsURL},
	{"ws-tcp", wsURL, tcpURL},
}

// ---------------------------------------------------------------------------
// RemoteProxy.Hello and RemoteProxy.Introspect

func TestLegacyHello(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	for _, tr := range clientTransports {
		t.Run(tr.name, func(t *testing.T) {
			r := dialRPC(t, tr.url(s))
			m, err := r.Call(42, "RemoteProxy.Hello", nil)
			if err != nil {
				t.Fatal(err)
			}
			if m["status"] != "success" || m["id"] != float64(42) {
				t.Fatalf("reply %v: want status success, id 42", m)
			}
			p, _ := m["params"].(map[string]any)
			want := map[string]any{
				"apiVersion": APIVersion,
				"name":       "legacy-test-relay",
				"server":     "meetpoint", // docs/protocol.md
				"version":    Version,
			}
			if len(p) != len(want) {
				t.Errorf("params %v: want exactly the keys of %v", p, want)
			}
			for k, v := range want {
				if p[k] != v {
					t.Errorf("params[%q] = %v, want %v", k, p[k], v)
				}
			}
			// Hello does not end the connection: a second call works.
			m, err = r.Call(43, "RemoteProxy.Hello", nil)
			if err != nil || m["status"] != "success" || m["id"] != float64(43) {
				t.Fatalf("second Hello: %v, %v", m, err)
			}
		})
	}
	// client.Hello, the library's own path, agrees.
	p, err := client.Hello(context.Background(), client.Options{URL: tcpURL(s), Timeout: 5 * time.Second})
	if err != nil || p["name"] != "legacy-test-relay" {
		t.Fatalf("client.Hello: %v, %v", p, err)
	}
}

func TestLegacyIntrospect(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	for _, tr := range clientTransports {
		t.Run(tr.name, func(t *testing.T) {
			r := dialRPC(t, tr.url(s))
			m, err := r.Call(3, "RemoteProxy.Introspect", nil)
			if err != nil {
				t.Fatal(err)
			}
			if m["status"] != "success" || m["id"] != float64(3) {
				t.Fatalf("reply %v", m)
			}
			p, _ := m["params"].(map[string]any)
			methods, _ := p["methods"].(map[string]any)
			for _, name := range []string{"RemoteProxy.Hello", "RemoteProxy.Introspect", "Authentication.Authenticate"} {
				if _, ok := methods[name]; !ok {
					t.Errorf("methods lack %s (have %v)", name, keys(methods))
				}
			}
			auth, _ := methods["Authentication.Authenticate"].(map[string]any)
			params, _ := auth["params"].(map[string]any)
			for _, k := range []string{"uuid", "name", "token", "o:nonce"} {
				if _, ok := params[k]; !ok {
					t.Errorf("Authenticate params lack %q: %v", k, params)
				}
			}
			notifs, _ := p["notifications"].(map[string]any)
			if _, ok := notifs["RemoteProxy.TunnelEstablished"]; !ok {
				t.Errorf("notifications lack RemoteProxy.TunnelEstablished: %v", keys(notifs))
			}
			types, _ := p["types"].(map[string]any)
			checkList := func(name string, want []string) {
				got, _ := types[name].([]any)
				if len(got) != len(want) {
					t.Errorf("types[%s] = %v, want %v", name, got, want)
					return
				}
				for i := range want {
					if got[i] != want[i] {
						t.Errorf("types[%s][%d] = %v, want %v", name, i, got[i], want[i])
					}
				}
			}
			checkList("AuthenticationError", []string{
				"AuthenticationErrorNoError", "AuthenticationErrorUnknown",
				"AuthenticationErrorTimeout", "AuthenticationErrorAborted",
				"AuthenticationErrorAuthenticationFailed", "AuthenticationErrorProxyError",
			})
			checkList("BasicType", []string{"Uuid", "String", "StringList", "Int", "UInt", "Double", "Bool", "Variant", "Object"})
		})
	}
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// ---------------------------------------------------------------------------
// apiBasicCalls

func TestLegacyBasicCalls(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	cases := []struct {
		name string
		req  string
		id   float64
		err  string // exact text; a trailing "*" matches a prefix
	}{
		{"missing id", `{"method":"RemoteProxy.Hello"}`, -1, "Error parsing command. Missing 'id'"},
		{"id not a number", `{"id":"x","method":"RemoteProxy.Hello"}`, -1, "Error parsing command. Missing 'id'"},
		{"missing method", `{"id":3}`, 3, "Error parsing method. Got: ''', Expected: 'Namespace.method'"},
		{"method without dot", `{"id":4,"method":"RemoteProxyHello"}`, 4,
			"Error parsing method. Got: 'RemoteProxyHello'', Expected: 'Namespace.method'"},
		{"method with two dots", `{"id":4,"method":"RemoteProxy.Hello.x"}`, 4,
			"Error parsing method. Got: 'RemoteProxy.Hello.x'', Expected: 'Namespace.method'"},
		{"invalid json", `{"id":5,"method":}`, -1, "Failed to parse JSON data: *"},
		{"invalid json value", `{"id":5,"method":"RemoteProxy.Hello","x":tru}`, -1, "Failed to parse JSON data: *"},
		{"no such namespace", `{"id":6,"method":"Foo.Hello"}`, 6, "No such namespace"},
		{"no such method", `{"id":7,"method":"RemoteProxy.Foo"}`, 7, "No such method"},
		{"no such method in auth namespace", `{"id":7,"method":"Authentication.Foo"}`, 7, "No such method"},
		{"hello forbidden key", `{"id":8,"method":"RemoteProxy.Hello","params":{"foo":1}}`, 8, "Invalid params: Forbidden key foo"},
		{"authenticate forbidden key", `{"id":9,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"t","foo":"bar"}}`,
			9, "Invalid params: Forbidden key foo"},
		{"authenticate missing token", `{"id":10,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n"}}`,
			10, "Invalid params: Missing key token"},
		{"authenticate missing uuid", `{"id":10,"method":"Authentication.Authenticate","params":{"name":"n","token":"t"}}`,
			10, "Invalid params: Missing key uuid"},
		{"authenticate no params", `{"id":12,"method":"Authentication.Authenticate"}`, 12, "Invalid params: Missing key name"},
		{"authenticate token not a string", `{"id":13,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":5}}`,
			13, "Invalid params: Invalid value type for key token"},
	}
	for _, tr := range clientTransports {
		t.Run(tr.name, func(t *testing.T) {
			t.Run("valid", func(t *testing.T) {
				r := dialRPC(t, tr.url(s))
				for _, req := range []string{
					`{"id":1,"method":"RemoteProxy.Hello"}`,
					`{"id":"7","method":"RemoteProxy.Hello","params":{}}`, // lenient id
					`{"id":2,"method":"RemoteProxy.Introspect"}`,
				} {
					sendRPC(t, r, req+"\n")
					m := recvRPC(t, r)
					if m["status"] != "success" {
						t.Fatalf("%s: %v", req, m)
					}
				}
				expectOpen(t, r, 50*time.Millisecond)
			})
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					r := dialRPC(t, tr.url(s))
					sendRPC(t, r, c.req+"\n")
					m := recvRPC(t, r)
					if m["status"] != "error" || m["id"] != c.id {
						t.Errorf("reply %v: want status error, id %v", m, c.id)
					}
					text, _ := m["error"].(string)
					if p, ok := strings.CutSuffix(c.err, "*"); ok {
						if !strings.HasPrefix(text, p) || len(text) == len(p) {
							t.Errorf("error %q, want %q followed by details", text, p)
						}
					} else if text != c.err {
						t.Errorf("error %q, want %q", text, c.err)
					}
					if len(m) != 3 {
						t.Errorf("error reply %v: want exactly error, id, status", m)
					}
					expectClosed(t, r)
				})
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Raw TCP stream framing

func TestLegacyTCPStream(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	hello := func(id int) string { return fmt.Sprintf(`{"id":%d,"method":"RemoteProxy.Hello"}`, id) }
	expectIDs := func(t *testing.T, r *client.Raw, ids ...int) {
		t.Helper()
		for _, id := range ids {
			m := recvRPC(t, r)
			if m["status"] != "success" || m["id"] != float64(id) {
				t.Fatalf("reply %v, want success with id %d", m, id)
			}
		}
	}
	t.Run("two requests in one write", func(t *testing.T) {
		r := dialRPC(t, tcpURL(s))
		sendRPC(t, r, hello(1)+"\n"+hello(2)+"\n")
		expectIDs(t, r, 1, 2)
		expectOpen(t, r, 30*time.Millisecond)
	})
	t.Run("three requests without newlines", func(t *testing.T) {
		r := dialRPC(t, tcpURL(s))
		sendRPC(t, r, hello(1)+hello(2)+" \r\n\t"+hello(3))
		expectIDs(t, r, 1, 2, 3)
	})
	t.Run("one request split over writes", func(t *testing.T) {
		r := dialRPC(t, tcpURL(s))
		if nc, ok := r.Conn().(*net.TCPConn); ok {
			_ = nc.SetNoDelay(true)
		}
		req := `{"id":9,"method":"Authentication.Authenticate","params":{"name":"sp}lit{\"","token":"split-token","uuid":"` + client.NewUUID() + `"}}` + "\n"
		for _, part := range []string{req[:1], req[1:20], req[20:40], req[40:45], req[45 : len(req)-3], req[len(req)-3:]} {
			sendRPC(t, r, part)
			if part != req[len(req)-3:] {
				// Nothing may be answered before the object is complete
				// (this also lets each part arrive on its own).
				expectOpen(t, r, 20*time.Millisecond)
			}
		}
		m := recvRPC(t, r)
		p, _ := m["params"].(map[string]any)
		if m["id"] != float64(9) || p["authenticationError"] != "AuthenticationErrorNoError" {
			t.Fatalf("reply %v", m)
		}
	})
	t.Run("large request under the limit", func(t *testing.T) {
		r := dialRPC(t, tcpURL(s))
		name := strings.Repeat("n", 9<<10)
		req := `{"id":4,"method":"Authentication.Authenticate","params":{"name":"` + name + `","token":"t","uuid":"u"}}`
		sendRPC(t, r, req[:5000])
		expectOpen(t, r, 20*time.Millisecond)
		sendRPC(t, r, req[5000:])
		m := recvRPC(t, r)
		if m["id"] != float64(4) || m["status"] != "success" {
			t.Fatalf("reply %v", m)
		}
	})
	t.Run("unterminated JSON over 10 KiB closes", func(t *testing.T) {
		r := dialRPC(t, tcpURL(s))
		big := `{"id":1,"method":"RemoteProxy.Hello","params":{"x":"` + strings.Repeat("a", 11<<10)
		_ = r.SetDeadline(time.Now().Add(5 * time.Second))
		// The server may close while we write: a failed write is fine.
		_ = r.Send([]byte(big))
		expectClosed(t, r)
	})
	t.Run("unterminated JSON in pieces over 10 KiB closes", func(t *testing.T) {
		r := dialRPC(t, tcpURL(s))
		sendRPC(t, r, `{"id":1,"method":"RemoteProxy.Hello","params":{"x":"`)
		piece := strings.Repeat("b", 1024)
		var err error
		for i := 0; i < 12 && err == nil; i++ {
			err = r.Send([]byte(piece))
		}
		expectClosed(t, r)
	})
}

func TestLegacyWSMessageTooBig(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	r := dialRPC(t, wsURL(s))
	big := `{"id":1,"method":"RemoteProxy.Hello","params":{"x":"` + strings.Repeat("a", 11<<10) + `"}}`
	_ = r.Send([]byte(big))
	ce := expectClosed(t, r)
	if ce == nil || ce.Code != ws.StatusMessageTooBig {
		t.Fatalf("close %v, want code %d", ce, ws.StatusMessageTooBig)
	}
}

// ---------------------------------------------------------------------------
// Authentication

func TestLegacyAuthenticate(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	for _, tr := range clientTransports {
		for _, nonce := range []string{"", "nonce-1"} {
			name := tr.name + "/no-nonce"
			if nonce != "" {
				name = tr.name + "/nonce"
			}
			t.Run(name, func(t *testing.T) {
				t.Run("success", func(t *testing.T) {
					r := dialRPC(t, tr.url(s))
					res := authenticateRPC(t, r, authParams("good-"+name, nonce, client.NewUUID(), "n"))
					if res != "AuthenticationErrorNoError" {
						t.Fatalf("got %s", res)
					}
					// Authenticated and waiting: the connection stays open.
					expectOpen(t, r, 50*time.Millisecond)
				})
				t.Run("failure", func(t *testing.T) {
					r := dialRPC(t, tr.url(s))
					res := authenticateRPC(t, r, authParams("bad-"+name, nonce, client.NewUUID(), "n"))
					if res != "AuthenticationErrorAuthenticationFailed" {
						t.Fatalf("got %s", res)
					}
					expectClosed(t, r)
				})
				// Every AuthenticationError value goes on the wire as the
				// authenticator gave it; all but NoError close.
				for i, want := range AuthResultNames()[1:] {
					t.Run(want, func(t *testing.T) {
						r := dialRPC(t, tr.url(s))
						res := authenticateRPC(t, r, authParams(fmt.Sprintf("result-%d", i+1), nonce, client.NewUUID(), "n"))
						if res != want {
							t.Fatalf("got %s, want %s", res, want)
						}
						expectClosed(t, r)
					})
				}
			})
		}
	}
	// client.Dial reports the failure as *AuthError.
	_, err := client.Dial(context.Background(), client.Options{URL: tcpURL(s), Token: "bad", Timeout: 5 * time.Second})
	var ae *client.AuthError
	if !errors.As(err, &ae) || ae.Result != "AuthenticationErrorAuthenticationFailed" {
		t.Fatalf("client.Dial with a bad token: %v", err)
	}
}

func TestLegacyAuthTimeout(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, func(c *Config) {
		c.AuthTimeout = 150 * time.Millisecond
		c.RPCTimeout = time.Hour // only the auth timeout can answer
	})
	for _, tr := range clientTransports {
		t.Run(tr.name, func(t *testing.T) {
			r := dialRPC(t, tr.url(s))
			start := time.Now()
			res := authenticateRPC(t, r, authParams("hang", "", client.NewUUID(), "n"))
			if res != "AuthenticationErrorTimeout" {
				t.Fatalf("got %s", res)
			}
			if el := time.Since(start); el < 150*time.Millisecond {
				t.Errorf("answered after %v, before AuthTimeout (150ms)", el)
			}
			expectClosed(t, r)
		})
	}
}

func TestLegacyRPCTimeout(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, func(c *Config) {
		c.AuthTimeout = time.Hour // only the RPC timeout can answer
		c.RPCTimeout = 150 * time.Millisecond
	})
	for _, tr := range clientTransports {
		t.Run(tr.name, func(t *testing.T) {
			r := dialRPC(t, tr.url(s))
			start := time.Now()
			sendRPC(t, r, `{"id":77,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"hang"}}`+"\n")
			m := recvRPC(t, r)
			if m["status"] != "error" || m["id"] != float64(77) || m["error"] != "Command timed out" {
				t.Fatalf("reply %v, want error \"Command timed out\" with id 77", m)
			}
			if el := time.Since(start); el < 150*time.Millisecond {
				t.Errorf("answered after %v, before RPCTimeout (150ms)", el)
			}
			expectClosed(t, r)
		})
	}
}

func TestLegacyAsyncAuthenticator(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	s := legacyServer(t, func(c *Config) { c.Auth = legacyTestAuth{gate: gate} })
	var rs []*client.Raw
	for _, tr := range clientTransports {
		r := dialRPC(t, tr.url(s))
		sendRPC(t, r, `{"id":21,"method":"Authentication.Authenticate","params":{"uuid":"`+client.NewUUID()+`","name":"n","token":"async-`+tr.name+`"}}`+"\n")
		rs = append(rs, r)
	}
	for _, r := range rs {
		expectOpen(t, r, 50*time.Millisecond) // the authenticator has not answered
	}
	close(gate)
	for _, r := range rs {
		m := recvRPC(t, r)
		p, _ := m["params"].(map[string]any)
		if m["id"] != float64(21) || p["authenticationError"] != "AuthenticationErrorNoError" {
			t.Fatalf("reply %v", m)
		}
		expectOpen(t, r, 30*time.Millisecond)
	}
	// And an async authentication leads to a working tunnel.
	gate2 := make(chan struct{})
	close(gate2)
	s2 := legacyServer(t, func(c *Config) { c.Auth = legacyTestAuth{gate: gate2} })
	a, b := pair(t, tcpURL(s2), wsURL(s2), "async-pair", "")
	exchangeTagged(t, a, b, "async")
}

// ---------------------------------------------------------------------------
// Pairing

func TestLegacyNoncePairing(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	for _, c := range transportPairs {
		t.Run(c.name, func(t *testing.T) {
			a, b := pair(t, c.a(s), c.b(s), "tok-"+c.name, "nonce-"+c.name)
			exchangeTagged(t, a, b, c.name)
		})
	}
	// Clients that must not meet, on a server that sends them away soon.
	const alone = 500 * time.Millisecond
	s = legacyServer(t, func(c *Config) { c.AloneTimeout = alone })
	t.Run("same token different nonce", func(t *testing.T) {
		start := time.Now()
		a := dialWaiting(t, tcpURL(s), "tok-dn", "n1", "", "a")
		b := dialWaiting(t, wsURL(s), "tok-dn", "n2", "", "b")
		expectAlone(t, a, start, alone)
		expectAlone(t, b, start, alone)
	})
	t.Run("different token same nonce", func(t *testing.T) {
		start := time.Now()
		a := dialWaiting(t, tcpURL(s), "tok-x", "same-nonce", "", "a")
		b := dialWaiting(t, tcpURL(s), "tok-y", "same-nonce", "", "b")
		expectAlone(t, a, start, alone)
		expectAlone(t, b, start, alone)
	})
	t.Run("nonce does not meet no nonce", func(t *testing.T) {
		for _, order := range []struct{ first, second string }{{"n", ""}, {"", "n"}} {
			tok := "tok-nn-" + order.first
			start := time.Now()
			a := dialWaiting(t, wsURL(s), tok, order.first, "", "a")
			b := dialWaiting(t, tcpURL(s), tok, order.second, "", "b")
			expectAlone(t, a, start, alone)
			expectAlone(t, b, start, alone)
		}
	})
}

func TestLegacyMultipleNonces(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	type tun struct{ a, b *client.Tunnel }
	var tuns []tun
	for i := range 5 {
		urlA, urlB := tcpURL(s), wsURL(s)
		if i%2 == 1 {
			urlA, urlB = wsURL(s), tcpURL(s)
		}
		a, b := pair(t, urlA, urlB, "one-token", fmt.Sprintf("nonce-%d", i))
		tuns = append(tuns, tun{a, b})
	}
	// Everyone writes first, then everyone reads: a message delivered to
	// the wrong tunnel would be read in place of the right one.
	for i, tn := range tuns {
		for _, d := range []struct {
			w   *client.Tunnel
			tag string
		}{{tn.a, "a"}, {tn.b, "b"}} {
			_ = d.w.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintf(d.w, "tunnel %d from %s|", i, d.tag); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, tn := range tuns {
		for _, d := range []struct {
			r    *client.Tunnel
			from string
		}{{tn.b, "a"}, {tn.a, "b"}} {
			want := fmt.Sprintf("tunnel %d from %s|", i, d.from)
			buf := make([]byte, len(want))
			_ = d.r.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(d.r, buf); err != nil {
				t.Fatal(err)
			}
			if string(buf) != want {
				t.Fatalf("tunnel %d got %q, want %q", i, buf, want)
			}
		}
	}
	if got := s.Stats().TunnelsActive; got != 5 {
		t.Errorf("TunnelsActive = %d, want 5", got)
	}
	// Nothing else arrived anywhere.
	for i, tn := range tuns {
		for _, r := range []*client.Tunnel{tn.a, tn.b} {
			_ = r.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if n, err := r.Read(make([]byte, 64)); n > 0 || !isTimeout(err) {
				t.Fatalf("tunnel %d: extra read %d, %v", i, n, err)
			}
		}
	}
	// Closing one tunnel leaves the others working.
	tuns[2].a.Close()
	expectTunnelEOF(t, tuns[2].b, 2*time.Second)
	for i, tn := range tuns {
		if i != 2 {
			exchangeTagged(t, tn.a, tn.b, fmt.Sprintf("tunnel %d again", i))
		}
	}
}

func TestLegacyThirdClient(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	for _, nonce := range []string{"", "n3"} {
		for _, tr := range clientTransports {
			t.Run(tr.name+"/nonce="+nonce, func(t *testing.T) {
				tok := "triple-" + tr.name
				a, b := pair(t, tcpURL(s), wsURL(s), tok, nonce)
				c := dialRPC(t, tr.url(s))
				res := authenticateRPC(t, c, authParams(tok, nonce, client.NewUUID(), "carol"))
				if res != "AuthenticationErrorNoError" {
					// nymea authenticates the third client, then closes it.
					t.Logf("third client: %s", res)
				}
				if _, why := expectClosedWhy(t, c); why != "Tunnel already exists" {
					t.Errorf("third client closed saying %q, want \"Tunnel already exists\"", why)
				}
				exchangeTagged(t, a, b, "after third")
			})
		}
	}
}

func TestLegacyDuplicateUUID(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	for _, c := range transportPairs {
		for _, nonce := range []string{"", "dn"} {
			t.Run(c.name+"/nonce="+nonce, func(t *testing.T) {
				uuid := client.NewUUID()
				tok := "dup-" + c.name + nonce
				a := dialWaiting(t, c.a(s), tok, nonce, uuid, "a")
				b := dialWaiting(t, c.b(s), tok, nonce, uuid, "b")
				for _, r := range []*client.Raw{a, b} {
					if _, why := expectClosedWhy(t, r); why != "Duplicated client UUID." {
						t.Errorf("closed saying %q, want \"Duplicated client UUID.\"", why)
					}
				}
				// The key is free again afterwards.
				x, y := pair(t, c.a(s), c.b(s), tok, nonce)
				exchangeTagged(t, x, y, "after duplicate")
			})
		}
	}
}

// ---------------------------------------------------------------------------
// TunnelEstablished

func TestLegacyTunnelEstablished(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	for _, c := range transportPairs {
		t.Run(c.name, func(t *testing.T) {
			uA, uB := client.NewUUID(), client.NewUUID()
			a := dialWaiting(t, c.a(s), "te-"+c.name, "", uA, "alice")
			b := dialWaiting(t, c.b(s), "te-"+c.name, "", uB, "bob")
			for _, d := range []struct {
				r          *client.Raw
				name, uuid string
			}{{a, "bob", uB}, {b, "alice", uA}} {
				_ = d.r.SetDeadline(time.Now().Add(5 * time.Second))
				p, err := d.r.Recv()
				if err != nil {
					t.Fatal(err)
				}
				m := decodeJSON(t, p)
				if m["notification"] != "RemoteProxy.TunnelEstablished" {
					t.Fatalf("got %s", p)
				}
				if m["id"] != float64(0) { // the connection's first notification
					t.Errorf("notification id %v, want 0: %s", m["id"], p)
				}
				params, _ := m["params"].(map[string]any)
				if len(params) != 2 || params["name"] != d.name || params["uuid"] != d.uuid {
					t.Errorf("params %v, want name %q uuid %q", params, d.name, d.uuid)
				}
				// It is the last JSON-RPC message: nothing follows.
				expectOpen(t, d.r, 30*time.Millisecond)
			}
		})
	}
	t.Run("client library", func(t *testing.T) {
		uA, uB := client.NewUUID(), client.NewUUID()
		a, b := dialPair(t,
			client.Options{URL: tcpURL(s), Token: "te-lib", Name: "alice", UUID: uA, Timeout: 5 * time.Second},
			client.Options{URL: wsURL(s), Token: "te-lib", Name: "bob", UUID: uB, Timeout: 5 * time.Second})
		if a.PeerName() != "bob" || a.PeerUUID() != uB {
			t.Errorf("a sees %q %q, want bob %s", a.PeerName(), a.PeerUUID(), uB)
		}
		if b.PeerName() != "alice" || b.PeerUUID() != uA {
			t.Errorf("b sees %q %q, want alice %s", b.PeerName(), b.PeerUUID(), uA)
		}
		exchangeTagged(t, a, b, "lib")
	})
}

// ---------------------------------------------------------------------------
// Data before TunnelEstablished

func TestLegacyDataBeforeTunnel(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	for _, tr := range clientTransports {
		t.Run(tr.name+"/after reply", func(t *testing.T) {
			tok := "early-" + tr.name
			a := dialWaiting(t, tr.url(s), tok, "", "", "a")
			sendRPC(t, a, "early bytes")
			expectClosed(t, a)
			// a left the registry: a newcomer waits for a partner of its own
			// and pairs with the next one.
			x, y := pair(t, tcpURL(s), tr.url(s), tok, "")
			exchangeTagged(t, x, y, "after early")
		})
		t.Run(tr.name+"/before reply", func(t *testing.T) {
			r := dialRPC(t, tr.url(s))
			req := `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"` + client.NewUUID() + `","name":"n","token":"early-2-` + tr.name + `"}}` + "\n"
			sendRPC(t, r, req)
			sendRPC(t, r, "{}")
			// The reply may or may not come first; then the connection ends.
			_ = r.SetDeadline(time.Now().Add(2 * time.Second))
			for {
				p, err := r.Recv()
				if err != nil {
					if !isClosed(err) {
						t.Fatalf("want close, got %v", err)
					}
					break
				}
				if m := decodeJSON(t, p); m["notification"] != nil && m["notification"] != "RemoteProxy.Closing" {
					t.Fatalf("got %s", p)
				}
			}
		})
	}
	t.Run("ws binary after authenticate", func(t *testing.T) {
		a := dialWaiting(t, wsURL(s), "early-bin", "", "", "a")
		if err := a.SendFrame(ws.OpBinary, []byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, a)
	})
}

// ---------------------------------------------------------------------------
// Disconnect propagation

func TestLegacyDisconnectPropagation(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	for _, c := range transportPairs {
		for _, closer := range []string{"a", "b"} {
			t.Run(c.name+"/"+closer+" closes", func(t *testing.T) {
				a, b := pair(t, c.a(s), c.b(s), "dc-"+c.name+closer, "")
				exchangeTagged(t, a, b, "before")
				x, y := a, b
				if closer == "b" {
					x, y = b, a
				}
				x.Close()
				expectTunnelEOF(t, y, 5*time.Second)
			})
		}
	}
	for _, c := range transportPairs {
		t.Run(c.name+"/pending data is delivered before the close", func(t *testing.T) {
			a, b := pair(t, c.a(s), c.b(s), "dc-pending-"+c.name, "")
			_, _ = a.Write([]byte("last words"))
			a.Close()
			_ = b.SetReadDeadline(time.Now().Add(2 * time.Second))
			got, err := io.ReadAll(b)
			if string(got) != "last words" || err != nil {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	t.Run("ws abrupt close without close frame", func(t *testing.T) {
		w1, w2 := dtRawWSPair(t, s, "dc-abrupt")
		w1.conn.Close()
		// w2 gets a close frame (or the connection's end), then EOF.
		_ = w2.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		f, err := readFrame(w2.br)
		if err == nil {
			if f.Header.OpCode != ws.OpClose {
				t.Fatalf("got op %v %q, want close", f.Header.OpCode, f.Payload)
			}
			_, err = readFrame(w2.br)
		}
		if !isClosed(err) {
			t.Fatalf("want EOF, got %v", err)
		}
	})
}

// TestLegacyRepairAfterTunnelClose: once a client has seen its tunnel end,
// the token+nonce is free again: reconnecting both sides at once gives a new
// tunnel, not "Tunnel already exists".
func TestLegacyRepairAfterTunnelClose(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	for _, c := range transportPairs {
		t.Run(c.name, func(t *testing.T) {
			tok := "repair-" + c.name
			failures := 0
			const rounds = 20
			for i := range rounds {
				a, b, err := tryPair(c.a(s), c.b(s), tok)
				if err != nil {
					failures++
					t.Logf("round %d: re-pair after the previous tunnel ended: %v", i, err)
					continue
				}
				exchangeTagged(t, a, b, "repair")
				a.Close()
				expectTunnelEOF(t, b, 2*time.Second)
				b.Close()
			}
			if failures > 0 {
				// Seen: "Tunnel already exists" for one side. forward.go's
				// teardown closes both sockets before reg.Leave, so a client
				// can see the end of its tunnel while the key is still held.
				t.Errorf("%d of %d re-pairings right after the previous tunnel ended failed", failures, rounds)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Timeouts

func TestLegacyInactiveTimeout(t *testing.T) {
	t.Parallel()
	const d = time.Second // long enough for dial + Hello on a loaded machine under -race
	s := legacyServer(t, func(c *Config) { c.InactiveTimeout = d })
	t.Run("silent tcp", func(t *testing.T) {
		start := time.Now()
		c, err := net.Dial("tcp", s.Addrs()[0].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := c.Read(make([]byte, 16))
		if n > 0 || !isClosed(err) {
			t.Fatalf("read %d, %v; want EOF", n, err)
		}
		if el := time.Since(start); el < d {
			t.Fatalf("closed after %v, before InactiveTimeout %v", el, d)
		}
	})
	for _, tr := range clientTransports {
		t.Run(tr.name+" after hello", func(t *testing.T) {
			start := time.Now()
			r := dialRPC(t, tr.url(s))
			if m, err := r.Call(1, "RemoteProxy.Hello", nil); err != nil || m["status"] != "success" {
				t.Fatalf("hello: %v %v", m, err)
			}
			expectClosed(t, r)
			if el := time.Since(start); el < d {
				t.Fatalf("closed after %v, before InactiveTimeout %v", el, d)
			}
		})
		t.Run(tr.name+" while authenticating", func(t *testing.T) {
			// The authenticator never answers and its timeouts are long:
			// the inactive timeout still ends the connection.
			start := time.Now()
			r := dialRPC(t, tr.url(s))
			sendRPC(t, r, `{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"hang"}}`)
			_ = r.SetDeadline(time.Now().Add(3 * time.Second))
			for {
				p, err := r.Recv()
				if err != nil {
					if !isClosed(err) {
						t.Fatalf("want close, got %v", err)
					}
					break
				}
				t.Logf("got %s", p)
			}
			if el := time.Since(start); el < d {
				t.Fatalf("closed after %v, before InactiveTimeout %v", el, d)
			}
		})
	}
}

func TestLegacyAloneTimeout(t *testing.T) {
	t.Parallel()
	// Well apart: the check that the inactive timeout no longer applies
	// ends long before the alone timeout, however late it starts.
	const inactive, alone = 300 * time.Millisecond, 3 * time.Second
	s := legacyServer(t, func(c *Config) { c.InactiveTimeout = inactive; c.AloneTimeout = alone })
	for _, tr := range clientTransports {
		t.Run(tr.name, func(t *testing.T) {
			tok := "alone-" + tr.name
			start := time.Now()
			a := dialWaiting(t, tr.url(s), tok, "", "", "a")
			// Authenticated: the inactive timeout no longer applies.
			expectOpen(t, a, inactive+150*time.Millisecond)
			expectAlone(t, a, start, alone)
			// The registry forgot it: the next two clients pair.
			x, y := pair(t, tr.url(s), tcpURL(s), tok, "")
			exchangeTagged(t, x, y, "after alone")
		})
	}
}

func TestLegacyNoTimeoutInTunnel(t *testing.T) {
	t.Parallel()
	const d = 2 * time.Second // short, but long enough to pair under load
	s := legacyServer(t, func(c *Config) { c.InactiveTimeout = d; c.AloneTimeout = d })
	a, b := pair(t, tcpURL(s), wsURL(s), "no-timeout", "")
	// Wait past both timeouts, watching that nothing arrives.
	_ = b.SetReadDeadline(time.Now().Add(3 * d))
	if n, err := b.Read(make([]byte, 16)); n > 0 || !isTimeout(err) {
		t.Fatalf("idle tunnel: read %d, %v", n, err)
	}
	exchangeTagged(t, a, b, "idle")
}

// ---------------------------------------------------------------------------
// WebSocket specifics

func TestLegacyWSBinaryBeforeAuth(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	r := dialRPC(t, wsURL(s))
	if err := r.SendFrame(ws.OpBinary, []byte(`{"id":1,"method":"RemoteProxy.Hello"}`)); err != nil {
		t.Fatal(err)
	}
	_ = r.SetDeadline(time.Now().Add(2 * time.Second))
	_, err := r.Recv()
	var ce *client.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("want a close frame, got %v", err)
	}
	if ce.Code != ws.StatusInternalServerError || ce.Reason != "Binary message not expected." {
		t.Fatalf("close %d %q, want 1011 %q", ce.Code, ce.Reason, "Binary message not expected.")
	}
}

func TestLegacyWSPing(t *testing.T) {
	t.Parallel()
	s := legacyServer(t, nil)
	expectPong := func(t *testing.T, w *checkedWS, payload []byte) {
		t.Helper()
		f := w.read()
		if f.Header.OpCode != ws.OpPong || !f.Header.Fin || !bytes.Equal(f.Payload, payload) {
			t.Fatalf("got op %v fin %v %q, want pong %q", f.Header.OpCode, f.Header.Fin, f.Payload, payload)
		}
	}
	t.Run("before auth", func(t *testing.T) {
		w := dialCheckedWS(t, s)
		for _, p := range [][]byte{[]byte("ping-payload"), {}, bytes.Repeat([]byte{0xff}, 125)} {
			w.send(ws.OpPing, true, p)
			expectPong(t, w, p)
		}
		// Still a working JSON-RPC connection.
		w.send(ws.OpText, true, []byte(`{"id":3,"method":"RemoteProxy.Hello"}`+"\n"))
		if m := w.readJSON(); m["id"] != float64(3) || m["status"] != "success" {
			t.Fatalf("hello after ping: %v", m)
		}
	})
	t.Run("while waiting", func(t *testing.T) {
		w := dialCheckedWS(t, s)
		w.authenticate("ping-wait", "", "w")
		w.send(ws.OpPing, true, []byte("waiting"))
		expectPong(t, w, []byte("waiting"))
	})
	for _, peer := range clientTransports {
		t.Run("in tunnel with "+peer.name, func(t *testing.T) {
			tok := "ping-tunnel-" + peer.name
			w := dialCheckedWS(t, s)
			w.authenticate(tok, "", "w")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			b, err := client.Dial(ctx, client.Options{URL: peer.url(s), Token: tok, Name: "b"})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if m := w.readJSON(); m["notification"] != "RemoteProxy.TunnelEstablished" {
				t.Fatalf("want TunnelEstablished, got %v", m)
			}
			w.send(ws.OpPing, true, []byte("tunnel-ping"))
			expectPong(t, w, []byte("tunnel-ping"))
			// The ping was answered by the relay, not forwarded: b's first
			// bytes are the data sent next.
			w.send(ws.OpBinary, true, []byte("after ping"))
			buf := make([]byte, len("after ping"))
			_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "after ping" {
				t.Fatalf("b read %q, %v", buf, err)
			}
			// A ping between the fragments of a message is answered at once.
			w.send(ws.OpBinary, false, []byte("frag1-"))
			w.send(ws.OpPing, true, []byte("mid"))
			expectPong(t, w, []byte("mid"))
			w.send(ws.OpContinuation, true, []byte("frag2"))
			buf = make([]byte, len("frag1-frag2"))
			if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "frag1-frag2" {
				t.Fatalf("b read %q, %v", buf, err)
			}
			// Neither ping nor pong reached b.
			_ = b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if n, err := b.Read(make([]byte, 16)); n > 0 || !isTimeout(err) {
				t.Fatalf("b: extra read %d, %v", n, err)
			}
		})
	}
}
