package loop

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"sync"
)

// How a server session moves from crypto/tls to the record layer of our
// own (records): the secrets from the key log, the handshake's bytes from
// the adapter's logs, checked against each other before anything is
// trusted. Every failure keeps the session on crypto/tls, which is always
// correct, only heavier.

// OwnRecords returns a copy of conf whose server sessions can move to the
// relay's own TLS 1.3 record layer after their handshake (HandshakeTLS):
// its key log goes to an in-memory registry of the handshakes in flight,
// and on to conf's own KeyLogWriter, if any. A config from
// GetConfigForClient keeps its sessions on crypto/tls.
func OwnRecords(conf *tls.Config) *tls.Config {
	c := conf.Clone()
	c.KeyLogWriter = keyLog{next: conf.KeyLogWriter}
	return c
}

// maxHandshakeLog bounds each direction's log of a handshake's bytes; a
// handshake past it (a client certificate chain of 60 KiB) stays on
// crypto/tls.
const maxHandshakeLog = 64 << 10

// trafficSecrets are one TLS 1.3 handshake's secrets, by key log label.
type trafficSecrets struct {
	mu                 sync.Mutex
	clientHS, serverHS []byte // CLIENT/SERVER_HANDSHAKE_TRAFFIC_SECRET
	client, server     []byte // CLIENT/SERVER_TRAFFIC_SECRET_0
}

// handshakeKeys holds the secrets of handshakes in flight, by client
// random, from crypto/tls's key log line until the handshake's goroutine
// takes them (whatever the handshake's outcome). Two handshakes that share
// a client random (a replayed ClientHello) mix their secrets: each then
// fails the check of its logged records and stays on crypto/tls.
var handshakeKeys sync.Map // [32]byte → *trafficSecrets

// keyLog is the KeyLogWriter of OwnRecords' configs. Only the four TLS 1.3
// traffic secrets are kept; nothing is logged.
type keyLog struct{ next io.Writer }

func (k keyLog) Write(line []byte) (int, error) {
	if k.next != nil {
		_, _ = k.next.Write(line)
	}
	f := bytes.Fields(line)
	if len(f) != 3 || hex.DecodedLen(len(f[1])) != 32 {
		return len(line), nil
	}
	var dst *[]byte
	var random [32]byte
	if _, err := hex.Decode(random[:], f[1]); err != nil {
		return len(line), nil
	}
	secret := make([]byte, hex.DecodedLen(len(f[2])))
	if _, err := hex.Decode(secret, f[2]); err != nil {
		return len(line), nil
	}
	v, _ := handshakeKeys.LoadOrStore(random, &trafficSecrets{})
	ts := v.(*trafficSecrets)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	switch string(f[0]) {
	case "CLIENT_HANDSHAKE_TRAFFIC_SECRET":
		dst = &ts.clientHS
	case "SERVER_HANDSHAKE_TRAFFIC_SECRET":
		dst = &ts.serverHS
	case "CLIENT_TRAFFIC_SECRET_0":
		dst = &ts.client
	case "SERVER_TRAFFIC_SECRET_0":
		dst = &ts.server
	default:
		return len(line), nil
	}
	*dst = secret
	return len(line), nil
}

// takeKeys removes and returns the secrets of the handshake whose client
// sent log (its first records hold the ClientHello and its random).
func takeKeys(log []byte) *trafficSecrets {
	var hello []byte // the handshake messages of the leading plaintext records
	for len(log) >= recHeader && log[0] == recHandshake && len(hello) < 38 {
		size := int(binary.BigEndian.Uint16(log[3:5]))
		if len(log) < recHeader+size {
			break
		}
		hello = append(hello, log[recHeader:recHeader+size]...)
		log = log[recHeader+size:]
	}
	if len(hello) < 38 || hello[0] != 1 { // 1: ClientHello; random at 4+2
		return nil
	}
	v, ok := handshakeKeys.LoadAndDelete([32]byte(hello[6:38]))
	if !ok {
		return nil
	}
	return v.(*trafficSecrets)
}

// errTakeOver: the logs and the secrets do not agree; crypto/tls keeps the
// session.
var errTakeOver = errors.New("tls: handshake log does not match its secrets")

// takeOver builds the record layer of a server session that finished its
// TLS 1.3 handshake on fd, from its secrets and the bytes the handshake
// read (in) and wrote (out). The client's records behind its Finished,
// which crypto/tls read but did not open, become the layer's first
// ciphertext; the records crypto/tls sealed under the server's
// application key (session tickets) set the write sequence.
func takeOver(fd int, suiteID uint16, ts *trafficSecrets, in, out []byte) (*records, error) {
	s := suiteOf(suiteID)
	if s == nil || ts == nil {
		return nil, errTakeOver
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.clientHS == nil || ts.serverHS == nil || ts.client == nil || ts.server == nil {
		return nil, errTakeOver
	}
	r := &records{fd: fd}
	if err := r.rd.setSecret(s, ts.client); err != nil {
		return nil, err
	}
	if err := r.wr.setSecret(s, ts.server); err != nil {
		return nil, err
	}
	// Write side: after its handshake-key records (Finished at least),
	// every record the server wrote opens with its application key;
	// opening them moves the write sequence past them.
	rest, n, err := skipHandshakeKey(s, ts.serverHS, out, false)
	if err != nil || n == 0 {
		return nil, errTakeOver
	}
	for len(rest) > 0 {
		size, ok := recordSize(rest)
		if !ok || rest[0] != recAppData {
			return nil, errTakeOver
		}
		if _, _, err := r.wr.open(rest[:recHeader+size]); err != nil {
			return nil, errTakeOver
		}
		rest = rest[recHeader+size:]
	}
	// Read side: past the plaintext records, the client's handshake-key
	// records (its Finished at least) were consumed; the rest is ours.
	rest, n, err = skipHandshakeKey(s, ts.clientHS, in, true)
	if err != nil || n == 0 {
		return nil, errTakeOver
	}
	if len(rest) > 0 {
		r.in = getRecordBuf()
		*r.in = append((*r.in)[:0], rest...)
	}
	r.sweep()
	return r, nil
}

// recordSize is the length of the complete record at the head of b.
func recordSize(b []byte) (int, bool) {
	if len(b) < recHeader {
		return 0, false
	}
	size := int(binary.BigEndian.Uint16(b[3:5]))
	return size, size <= maxCiphertxt && len(b) >= recHeader+size
}

// skipHandshakeKey skips the plaintext records at the head of log, then
// the records that open with the handshake traffic secret hs (opening them
// in place), and returns what follows and how many opened. A partial
// record is left to the caller only where partialOK (the reading side: the
// client's next record, cut by the read).
func skipHandshakeKey(s *tlsSuite, hs []byte, log []byte, partialOK bool) ([]byte, int, error) {
	for len(log) > 0 && log[0] != recAppData {
		size, ok := recordSize(log)
		if !ok || (log[0] != recHandshake && log[0] != recCCS) {
			return nil, 0, errTakeOver
		}
		log = log[recHeader+size:]
	}
	var d direction
	if err := d.setSecret(s, hs); err != nil {
		return nil, 0, err
	}
	n := 0
	for len(log) > 0 {
		size, ok := recordSize(log)
		if !ok {
			if partialOK && (len(log) < recHeader || size <= maxCiphertxt) {
				break
			}
			return nil, 0, errTakeOver
		}
		// Open a copy: a record that does not open here is the first of
		// the application's, and must stay as it came.
		rec := append([]byte(nil), log[:recHeader+size]...)
		if _, _, err := d.open(rec); err != nil {
			break
		}
		n++
		log = log[recHeader+size:]
	}
	return log, n, nil
}
