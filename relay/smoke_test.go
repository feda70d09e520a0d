package relay

import (
	"io"
	"testing"
)

func TestSmokeTCP(t *testing.T) {
	s := startServer(t, nil)
	for _, c := range []struct{ name, a, b string }{
		{"tcp-tcp", tcpURL(s), tcpURL(s)},
		{"ws-ws", wsURL(s), wsURL(s)},
		{"tcp-ws", tcpURL(s), wsURL(s)},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b := pair(t, c.a, c.b, "tok-"+c.name, "")
			if _, err := a.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(b, buf); err != nil {
				t.Fatal(err)
			}
			if string(buf) != "hello" {
				t.Fatalf("got %q", buf)
			}
			if _, err := b.Write([]byte("world")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(a, buf); err != nil {
				t.Fatal(err)
			}
			if string(buf) != "world" {
				t.Fatalf("got %q", buf)
			}
		})
	}
}
