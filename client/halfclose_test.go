package client_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// TestServeTPClientsLocalHalfClose: a local client that sends its request
// and then shuts its sending side (nc -N, an HTTP/1.0-style client) must
// still get the reply. ServeTPClients closed the tunnel, and so the local
// connection, as soon as the local side's FIN was read: the device's
// reply, sent a moment later, was lost. TunnelProxy has no half-close to
// pass the FIN on, so it is not passed on: the reply flows until the
// device ends the tunnel.
func TestServeTPClientsLocalHalfClose(t *testing.T) {
	s := tpRelay(t)
	for name, url := range map[string]string{"tcp": relaytest.TCPURL(s), "ws": relaytest.WSURL(s)} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dev, su := tpDevice(t, ctx, url)
			go func() { // the device: one line in, a moment's work, one line out, then it hangs up
				for {
					c, err := dev.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						line, err := bufio.NewReader(c).ReadString('\n')
						if err != nil {
							return
						}
						time.Sleep(100 * time.Millisecond)
						io.WriteString(c, "re: "+line)
					}()
				}
			}()
			local := tpLocal(t, ctx, url, su)
			local.SetDeadline(time.Now().Add(relaytest.Patience))
			io.WriteString(local, "hello\n")
			local.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(local)
			if string(got) != "re: hello\n" || err != nil {
				t.Fatalf("after its FIN the local client read %q, %v; want the device's reply", got, err)
			}
		})
	}
}

// TestServeTPClientsLocalGoneDeviceSilent: a local client that closes
// for good (which looks the same as a FIN) while the device waits for
// input that will never come does not hold its tunnel for ever: it is
// ended once nothing came from the device for the reply wait, and the
// device sees its client disconnected.
func TestServeTPClientsLocalGoneDeviceSilent(t *testing.T) {
	defer client.SetReplyIdle(300 * time.Millisecond)()
	s := tpRelay(t)
	url := relaytest.TCPURL(s)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dev, su := tpDevice(t, ctx, url)
	local := tpLocal(t, ctx, url, su)
	io.WriteString(local, "hello\n")
	c, err := dev.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local.Close() // gone for good; the device never answers
	c.SetReadDeadline(time.Now().Add(relaytest.Patience))
	got, err := io.ReadAll(c)
	if string(got) != "hello\n" || err != nil {
		t.Fatalf("the device read %q, %v; want the request, then its client disconnected (EOF)", got, err)
	}
}
