package tunnelproxy

// Byte-exact tests of the TunnelProxy replies nymea's clients and tests
// depend on (issue 11, items 3 to 5).

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay"
)

// wireCall sends req on a fresh TCP connection and returns all the server
// sends until it closes (5 s at most).
func wireCall(t *testing.T, s *relay.Server, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, req)
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("%v (got %q): the connection was not closed", err, got)
	}
	return string(got)
}

const (
	wireNil          = "{00000000-0000-0000-0000-000000000000}"
	wireInvalidSrv   = `{"id":1,"params":{"slipEnabled":false,"tunnelProxyError":"TunnelProxyErrorInvalidUuid"},"status":"success"}` + "\n"
	wireInvalidCli   = `{"id":1,"params":{"tunnelProxyError":"TunnelProxyErrorInvalidUuid"},"status":"success"}` + "\n"
	wireDuplicateSrv = `{"id":1,"params":{"slipEnabled":false,"tunnelProxyError":"TunnelProxyErrorAlreadyRegistered"},"status":"success"}` + "\n"
)

func wireRegisterServer(id, uuid string) string {
	return `{"id":` + id + `,"method":"TunnelProxy.RegisterServer","params":{"serverName":"dev","serverUuid":"` + uuid + `"}}` + "\n"
}

func wireRegisterClient(cu, su string) string {
	return `{"id":1,"method":"TunnelProxy.RegisterClient","params":{"clientName":"ui","clientUuid":"` + cu + `","serverUuid":"` + su + `"}}` + "\n"
}

// Items 3 and 4: the nil UUID is InvalidUuid, and a failed RegisterServer
// reply says slipEnabled false.
func TestWireNilUUIDAndFailedRegisterServer(t *testing.T) {
	s := server(t, nil)
	su := client.NewUUID()
	registerServer(t, s, su, false)
	for _, tc := range []struct{ name, req, want string }{
		{"nil server uuid", wireRegisterServer("1", wireNil), wireInvalidSrv},
		{"nil server uuid, no braces", wireRegisterServer("1", wireNil[1:37]), wireInvalidSrv},
		{"nil client uuid", wireRegisterClient(wireNil, su), wireInvalidCli},
		{"nil server uuid for a client", wireRegisterClient(client.NewUUID(), wireNil), wireInvalidCli},
		{"garbage server uuid", wireRegisterServer("1", "nope"), wireInvalidSrv},
		{"duplicate server", wireRegisterServer("1", su), wireDuplicateSrv},
	} {
		if got := wireCall(t, s, tc.req); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// Item 5: a second RegisterServer or RegisterClient on a registered server
// connection gets AlreadyRegistered, then the connection closes.
func TestWireSecondRegistrationCloses(t *testing.T) {
	s := server(t, nil)
	for _, tc := range []struct{ name, req, want string }{
		{"RegisterServer", wireRegisterServer("2", "%s"),
			`{"id":2,"params":{"slipEnabled":false,"tunnelProxyError":"TunnelProxyErrorAlreadyRegistered"},"status":"success"}` + "\n"},
		{"RegisterClient", `{"id":2,"method":"TunnelProxy.RegisterClient","params":{"clientName":"ui","clientUuid":"` + client.NewUUID() + `","serverUuid":"%s"}}` + "\n",
			`{"id":2,"params":{"tunnelProxyError":"TunnelProxyErrorAlreadyRegistered"},"status":"success"}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			su := client.NewUUID()
			c, err := net.Dial("tcp", s.Addrs()[0].String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			io.WriteString(c, wireRegisterServer("1", su))
			line, err := br.ReadString('\n')
			if ok := `{"id":1,"params":{"slipEnabled":true,"tunnelProxyError":"TunnelProxyErrorNoError"},"status":"success"}` + "\n"; line != ok {
				t.Fatalf("register: %q %v, want %q", line, err, ok)
			}
			// From here on SLIP: address 0 carries JSON-RPC.
			req := []byte(tc.req)
			req = bytes.Replace(req, []byte("%s"), []byte(su), 1)
			c.Write(handshake.AppendSLIP(nil, 0, req))
			got, err := io.ReadAll(br)
			if err != nil {
				t.Fatalf("%v (got %q): the connection was not closed", err, got)
			}
			want := append([]byte{0x00, 0x00}, tc.want...)
			want = append(want, 0xC0) // SLIP END; the reply has nothing to escape
			if !bytes.Equal(got, want) {
				t.Fatalf("got %q, want %q", got, want)
			}
			// And the uuid is free again.
			registerServer(t, s, su, false)
		})
	}
}

// Issue 11 #8 on TunnelProxy: a raw TCP client reads its RegisterClient
// reply alone even when its server answers ClientConnected with data at
// once (nymea's client library stalls when reply and data share a read).
// The client is announced to the server only after Settle, if it said
// Hello first as nymea's library does.
func TestWireRegisterClientReplyAlone(t *testing.T) {
	for _, tc := range []struct {
		settle time.Duration
		hello  bool
		alone  bool
	}{{300 * time.Millisecond, true, true}, {0, true, false}, {300 * time.Millisecond, false, false}} {
		s := server(t, nil, func(c *Config) { c.Settle = tc.settle })
		su, cu := client.NewUUID(), client.NewUUID()
		srv := registerServer(t, s, su, false)
		// The server greets each client as soon as it hears of it.
		go func() {
			for {
				f, ok := <-srv.msgs
				if !ok {
					return
				}
				if f[0] == 0 && f[1] == 0 && bytes.Contains(f, []byte("ClientConnected")) {
					var addr uint16
					if i := bytes.Index(f, []byte(`"socketAddress":`)); i > 0 {
						for _, d := range f[i+len(`"socketAddress":`):] {
							if d < '0' || d > '9' {
								break
							}
							addr = addr*10 + uint16(d-'0')
						}
					}
					srv.sendRaw(ws.OpBinary, handshake.AppendSLIP(nil, addr, []byte("greeting\n")))
				}
			}
		}()
		c, err := net.Dial("tcp", s.Addrs()[0].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		hello := ""
		if tc.hello {
			io.WriteString(c, `{"id":0,"method":"RemoteProxy.Hello"}`+"\n")
			br := bufio.NewReader(c)
			if hello, err = br.ReadString('\n'); err != nil || br.Buffered() > 0 {
				t.Fatalf("hello: %q %v", hello, err)
			}
		}
		io.WriteString(c, wireRegisterClient(cu, su))
		time.Sleep(50 * time.Millisecond) // a slow reader: whatever was sent is waiting
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		reply := `{"id":1,"params":{"tunnelProxyError":"TunnelProxyErrorNoError"},"status":"success"}` + "\n"
		if tc.alone {
			if string(buf[:n]) != reply {
				t.Fatalf("settle %v: first read %q, want the reply alone", tc.settle, buf[:n])
			}
			if n, err = io.ReadFull(c, buf[:len("greeting\n")]); err != nil || string(buf[:n]) != "greeting\n" {
				t.Fatalf("greeting after the settle window: %q %v", buf[:n], err)
			}
		} else if string(buf[:n]) != reply+"greeting\n" {
			// Without the window reply and data meet in one read: the window
			// is what keeps them apart.
			t.Fatalf("settle %v, hello %v: first read %q; want reply and greeting together", tc.settle, tc.hello, buf[:n])
		}
	}
}
