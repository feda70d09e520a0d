package client

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"math/rand"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/handshake"
)

// TestTPServerTakesHugeFrames: a relay may send a client's data to the
// server as one SLIP frame of any size (nymea's server forwards each read
// of the client as one frame): a registered TPServer passes a 1 MiB frame,
// which arrives in many reads, to its TPConn whole. (The decoder once
// stopped at 64 KiB with "slip: frame too big" and dropped the server.)
func TestTPServerTakesHugeFrames(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	want := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(want)
	go func() { // the relay
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := bufio.NewReader(c).ReadBytes('\n'); err != nil { // RegisterServer
			return
		}
		io.WriteString(c, `{"id":1,"params":{"slipEnabled":true,"tunnelProxyError":"TunnelProxyErrorNoError"},"status":"success"}`+"\n")
		stream := handshake.AppendSLIP(nil, 0, []byte(`{"id":0,"notification":"TunnelProxy.ClientConnected","params":{"clientName":"big","clientPeerAddress":"127.0.0.1","clientUuid":"`+NewUUID()+`","socketAddress":5}}`+"\n"))
		stream = handshake.AppendSLIP(stream, 5, want)
		for len(stream) > 0 { // in pieces, as a network delivers them
			n := min(len(stream), 4096)
			if _, err := c.Write(stream[:n]); err != nil {
				return
			}
			stream = stream[n:]
		}
		io.Copy(io.Discard, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := RegisterTPServer(ctx, TPOptions{URL: "tcp://" + ln.Addr().String(), Name: "device"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn, err := s.Accept()
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(conn, got); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("reading the client's 1 MiB: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("timed out reading the client's 1 MiB frame")
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the client's bytes differ")
	}
}

// TestTPServerNewlineArrivesLate: the newline ending the relay's
// RegisterServer reply may reach a TCP server after the reply itself (its
// own segment, a slow link): it is not part of the SLIP stream. The read
// loop once fed it to the SLIP decoder as the first byte of the first
// frame, which then went to address 0x0a00 and was lost with the
// ClientConnected it carried: Accept never returned.
func TestTPServerNewlineArrivesLate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // the relay
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := br.ReadBytes('\n'); err != nil { // RegisterServer
			return
		}
		io.WriteString(c, `{"id":1,"params":{"slipEnabled":true,"tunnelProxyError":"TunnelProxyErrorNoError"},"status":"success"}`)
		// The server's first ping (a SLIP frame) says RegisterTPServer
		// returned: the reply was read without its newline.
		if _, err := br.ReadBytes(0xC0); err != nil {
			return
		}
		stream := append([]byte("\n"), handshake.AppendSLIP(nil, 0, []byte(`{"id":0,"notification":"TunnelProxy.ClientConnected","params":{"clientName":"late","clientPeerAddress":"127.0.0.1","clientUuid":"`+NewUUID()+`","socketAddress":5}}`+"\n"))...)
		stream = handshake.AppendSLIP(stream, 5, []byte("hi"))
		if _, err := c.Write(stream); err != nil {
			return
		}
		io.Copy(io.Discard, br)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := RegisterTPServer(ctx, TPOptions{URL: "tcp://" + ln.Addr().String(), Name: "device", PingInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	accepted := make(chan *TPConn, 1)
	go func() {
		if c, err := s.Accept(); err == nil {
			accepted <- c
		}
	}()
	select {
	case conn := <-accepted:
		got := make([]byte, 2)
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != "hi" {
			t.Fatalf("read %q, %v", got, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client the relay announced after a late newline was never accepted")
	}
}

// TestTPServerEndsItsConnectionOnError: once the read loop ends a
// TPServer for an error (here an address-0 message over its 64 KiB bound,
// a ClientConnected whose client name is long), the relay connection is
// closed too. It was left open, still registered: the relay kept the
// server's uuid and its clients for its dead-server timeout (60 s), with
// nobody reading, and a new RegisterTPServer with that uuid was refused
// as AlreadyRegistered meanwhile.
func TestTPServerEndsItsConnectionOnError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed := make(chan error, 1)
	go func() { // the relay
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := br.ReadBytes('\n'); err != nil { // RegisterServer
			return
		}
		io.WriteString(c, `{"id":1,"params":{"slipEnabled":true,"tunnelProxyError":"TunnelProxyErrorNoError"},"status":"success"}`+"\n")
		name := strings.Repeat("n", 70<<10)
		c.Write(handshake.AppendSLIP(nil, 0, []byte(`{"id":0,"notification":"TunnelProxy.ClientConnected","params":{"clientName":"`+name+`","clientPeerAddress":"127.0.0.1","clientUuid":"`+NewUUID()+`","socketAddress":5}}`+"\n")))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, br)
		closed <- err // nil: the server closed its end
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := RegisterTPServer(ctx, TPOptions{URL: "tcp://" + ln.Addr().String(), Name: "device"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Accept(); err == nil {
		t.Fatal("Accept returned a client from an oversized notification")
	}
	if err := <-closed; err != nil {
		t.Fatalf("the server's read loop ended (Accept failed) but its relay connection stayed open: %v", err)
	}
}
