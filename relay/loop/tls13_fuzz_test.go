package loop

import (
	"bytes"
	"crypto/tls"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzRecords feeds the record layer a peer's bytes: in raw mode (first
// byte even) the input is the ciphertext itself (headers, lengths and tags
// as they come); in sealed mode each piece (a length byte, a content type
// byte, content) is sealed with the session's key, so the fuzzer reaches
// what follows a record that opens: alerts, KeyUpdates (asked for or not),
// stray handshake messages, padding-only records. Whatever comes, Read
// returns only application data, in order, and ends with an error; it
// never panics, spins or keeps a buffer once it has ended.
func FuzzRecords(f *testing.F) {
	f.Add([]byte{0, recAppData, 3, 3, 0, 1, 0})
	f.Add([]byte{1, 3, recAppData, 'h', 'i', 2, recHandshake, hsKeyUpdate, 4, recAppData, 'a', 'b', 'c'})
	f.Add([]byte{1, 6, recHandshake, hsKeyUpdate, 0, 0, 1, 1, 2, recAppData, 'x'})
	f.Add([]byte{1, 3, recAlert, 1, alertCloseNotify, 2, recAppData, 'y'})
	f.Add([]byte{1, 3, recAlert, 1, alertUserCancel, 1, recAppData, 1, recCCS})
	f.Add([]byte{1, 1, 0, 5, recHandshake, 4, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 || len(in) > 4<<10 { // its records fit a socket buffer
			return
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[0])
		defer unix.Close(fds[1])
		if err := unix.SetNonblock(fds[0], true); err != nil {
			t.Fatal(err)
		}
		s := suiteOf(tls.TLS_AES_128_GCM_SHA256)
		secret := bytes.Repeat([]byte{7}, 32)
		r := &records{fd: fds[0]}
		var peer direction
		for _, d := range []*direction{&r.rd, &r.wr, &peer} {
			if err := d.setSecret(s, secret); err != nil {
				t.Fatal(err)
			}
		}

		wire, want := in[1:], []byte(nil)
		if in[0]&1 == 1 {
			wire = nil
			for p := in[1:]; len(p) >= 2; {
				n := min(int(p[0]), len(p)-2)
				typ, content := p[1], p[2:2+n]
				p = p[2+n:]
				if typ == 0 {
					continue // not a content type: it would read as padding
				}
				wire, _ = peer.seal(wire, typ, content)
				if typ == recAppData {
					want = append(want, content...)
				}
				if typ == recHandshake && len(content) == 5 && content[0] == hsKeyUpdate && content[3] == 1 {
					_ = peer.update() // as the peer does after its KeyUpdate
				}
			}
		}
		if _, err := unix.Write(fds[1], wire); err != nil {
			t.Fatal(err)
		}
		_ = unix.Shutdown(fds[1], unix.SHUT_WR)

		var got []byte
		buf := make([]byte, 1000)
		for i := 0; ; i++ {
			if i > len(wire)+10 {
				t.Fatalf("Read has not ended after %d calls", i)
			}
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				if err == unix.EAGAIN {
					t.Fatalf("EAGAIN on a stream whose end was read")
				}
				break
			}
			if n == 0 {
				t.Fatal("Read returned 0 bytes and no error")
			}
		}
		if in[0]&1 == 1 && !bytes.HasPrefix(want, got) {
			t.Fatalf("read %q; not a prefix of the application data %q", got, want)
		}
		if in[0]&1 == 0 && len(got) > 0 {
			t.Fatalf("read %d bytes of plaintext from unsealed input", len(got))
		}
		if r.in != nil {
			t.Fatal("the read buffer is kept after the read side ended")
		}
		r.free()
	})
}
