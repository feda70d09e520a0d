package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/relaytest"
	"github.com/meetpoint/meetpoint/relay/tunnelproxy"
)

// TestTPServerSlowClientAlone: a TPServer with two clients, one whose TPConn
// is never read while its remote sends far more than MaxQueued. The server's
// one read loop once waited for that client's reader without end (a
// 256-piece channel, up to 8 MiB): the other client and the relay's
// notifications stalled with it, and the relay dropped the whole device
// for the write stall. Now the stalled client alone is disconnected after
// StallTimeout — its Read ends with ErrTPClientSlow, its remote is closed
// by the relay — the server never holds more than the bound for it, and
// the other client keeps exchanging data both ways, as a client arriving
// later is still accepted.
func TestTPServerSlowClientAlone(t *testing.T) {
	s := relaytest.New(t, nil)
	if _, err := tunnelproxy.New(s, tunnelproxy.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, s)
	t.Run("tcp", func(t *testing.T) { slowClientAlone(t, relaytest.TCPURL(s)) })
	t.Run("ws", func(t *testing.T) { slowClientAlone(t, relaytest.WSURL(s)) })
}

func slowClientAlone(t *testing.T, url string) {
	const bound = client.DefaultTPMaxQueued
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	su := client.NewUUID()
	dev, err := client.RegisterTPServer(ctx, client.TPOptions{URL: url, UUID: su, Name: "device", StallTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	dial := func(name string) (*client.Tunnel, *client.TPConn) {
		t.Helper()
		remote, err := client.DialTPClient(ctx, client.TPOptions{URL: url, ServerUUID: su, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { remote.Close() })
		accepted := make(chan *client.TPConn, 1)
		go func() {
			if c, err := dev.Accept(); err == nil {
				accepted <- c
			}
		}()
		select {
		case c := <-accepted:
			if c.Name != name {
				t.Fatalf("accepted %q, want %q", c.Name, name)
			}
			return remote, c
		case <-time.After(relaytest.Patience):
			t.Fatalf("client %s was never accepted", name)
			return nil, nil
		}
	}
	slowRemote, slow := dial("slow")
	fastRemote, fast := dial("fast")
	go io.Copy(fast, fast) // the device echoes the fast client; slow is never read

	var rounds atomic.Int64 // the fast client's echoes, through all that follows
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		msg := make([]byte, 4096)
		got := make([]byte, len(msg))
		for i := byte(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			for j := range msg {
				msg[j] = i + byte(j)
			}
			if _, err := fastRemote.Write(msg); err != nil {
				return
			}
			if _, err := io.ReadFull(fastRemote, got); err != nil || !bytes.Equal(got, msg) {
				return
			}
			rounds.Add(1)
		}
	}()

	var sent, most atomic.Int64
	go func() { // far more than the bound (the relay may linger, reading, once it closed the client)
		chunk := bytes.Repeat([]byte("slow"), 8<<10)
		for sent.Load() < 64*bound {
			if _, err := slowRemote.Write(chunk); err != nil {
				return
			}
			sent.Add(int64(len(chunk)))
		}
	}()
	go func() { // what the server holds for the slow client, all along
		for {
			select {
			case <-stop:
				return
			default:
			}
			if q := int64(client.TPQueued(slow)); q > most.Load() {
				most.Store(q)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var remoteGone atomic.Bool
	go func() { io.Copy(io.Discard, slowRemote); remoteGone.Store(true) }()
	relaytest.WaitFor(t, func() error {
		if remoteGone.Load() {
			return nil
		}
		return fmt.Errorf("the slow client's remote is still connected: %d bytes sent, %d times the bound; the fast client's echoes: %d",
			sent.Load(), sent.Load()/bound, rounds.Load())
	}, "the relay closing the slow client's remote")

	// The other client goes on both ways, and the relay's notifications
	// still arrive.
	after := rounds.Load()
	relaytest.WaitFor(t, func() error {
		if rounds.Load() >= after+20 {
			return nil
		}
		return fmt.Errorf("the fast client's echoes stuck at %d (%d after the slow client went)", rounds.Load(), rounds.Load()-after)
	}, "the fast client still exchanging data")
	_, late := dial("late")
	if err := late.Close(); err != nil {
		t.Fatalf("closing the late client: %v", err)
	}

	n, err := slow.Read(make([]byte, 1))
	if !errors.Is(err, client.ErrTPClientSlow) {
		t.Fatalf("the slow client's Read: %d, %v; want ErrTPClientSlow", n, err)
	}
	if q := client.TPQueued(slow); q != 0 {
		t.Fatalf("the dropped slow client still holds %d bytes", q)
	}
	if m := most.Load(); m > bound {
		t.Fatalf("the server held %d bytes for the slow client, more than the bound %d", m, bound)
	}
}

// TestTPServerSlowReaderKept: a client sends 8 times MaxQueued to a device
// whose reader takes it slower than it comes but never stops. The server
// once dropped such a client as soon as its queue passed the bound (so
// `meetpoint client --serve` lost a 16 MiB upload to nymea's client library
// whenever its local service lagged); now the server waits for the reader,
// the relay's flow control slows the sender, and every byte arrives in
// order while the server holds no more than the bound.
func TestTPServerSlowReaderKept(t *testing.T) {
	s := relaytest.New(t, nil)
	if _, err := tunnelproxy.New(s, tunnelproxy.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	relaytest.Start(t, s)
	t.Run("tcp", func(t *testing.T) { slowReaderKept(t, relaytest.TCPURL(s)) })
	t.Run("ws", func(t *testing.T) { slowReaderKept(t, relaytest.WSURL(s)) })
}

func slowReaderKept(t *testing.T, url string) {
	const bound = 256 << 10
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	su := client.NewUUID()
	dev, err := client.RegisterTPServer(ctx, client.TPOptions{URL: url, UUID: su, Name: "device", MaxQueued: bound})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	remote, err := client.DialTPClient(ctx, client.TPOptions{URL: url, ServerUUID: su, Name: "uploader"})
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	c, err := dev.Accept()
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 8*bound)
	for i := range want {
		want[i] = byte(i*7 + i>>11)
	}
	sendErr := make(chan error, 1)
	go func() {
		_, err := remote.Write(want)
		sendErr <- err
	}()
	var most int
	got := make([]byte, 0, len(want))
	buf := make([]byte, 16<<10)
	for len(got) < len(want) {
		time.Sleep(2 * time.Millisecond) // slower than the sender: the queue fills
		if q := client.TPQueued(c); q > most {
			most = q
		}
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("the device read %d of %d bytes, then %v", len(got), len(want), err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the device read %d bytes, not what the client sent", len(got))
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("the client's write: %v", err)
	}
	if most > bound {
		t.Fatalf("the server held %d bytes for the client, more than the bound %d", most, bound)
	}
	if most < bound/2 {
		t.Fatalf("the server held at most %d bytes: the reader was never the slower side, the test proves nothing", most)
	}
}
