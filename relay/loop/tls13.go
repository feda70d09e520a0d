package loop

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/unix"
)

// The relay's own TLS 1.3 record layer. crypto/tls runs the handshake;
// for a server session that negotiated TLS 1.3 the records are then ours:
// they are read into a pooled buffer that is given back as soon as it
// holds nothing, and sealed into a pooled buffer given back once written,
// so an idle session keeps its keys and no buffer (crypto/tls keeps its
// read buffer for the connection's life: ~100 KB after one burst).
//
// The keys come from crypto/tls's key log (Config.KeyLogWriter), which
// OwnRecords points at an in-memory registry: the secrets never leave the
// process and are never logged. The bytes the handshake read and wrote are
// recorded, so that the layer starts exactly where crypto/tls stopped:
// application records the handshake already read (a client's first
// message behind its Finished) are opened by the layer, and its write
// sequence counts the records crypto/tls already sealed with the
// application key (session tickets).
//
// After the take-over the layer handles what TLS 1.3 sends after a
// handshake: application data, KeyUpdate (answered when the peer asks),
// close_notify and other alerts. Everything else (a post-handshake
// message the relay never asked for, a CCS, a fragmented handshake
// message) ends the session with an error, and with the fatal alert
// crypto/tls would send there. It re-keys its own direction
// before AES-GCM's usage limit.
//
// Kernel TLS (kTLS) is the next step and is not built: its
// setsockopt(SOL_TLS, TLS_TX/TLS_RX) takes exactly a direction's state
// (key, IV, sequence number), so a session whose socket accepts
// setsockopt(TCP_ULP, "tls") could hand both directions to the kernel at
// the take-over and keep this layer only for KeyUpdate and alerts. The
// kernel this was built on has no TLS ULP (ENOENT), so that path could not
// be tested, and this layer is what every TLS 1.3 session uses.

// keyUpdateAfter is the number of records the layer seals under one key
// before it re-keys: AES-GCM's limit is 2^24.5 full records (RFC 8446
// 5.5). A variable for the soak test, which re-keys often.
var keyUpdateAfter uint64 = 1 << 24

// TLS record framing.
const (
	recHeader    = 5
	maxPlain     = 1 << 14        // plaintext per record
	maxCiphertxt = maxPlain + 256 // ciphertext per record (RFC 8446 5.2)

	recCCS       = 20
	recAlert     = 21
	recHandshake = 22
	recAppData   = 23

	hsKeyUpdate      = 24
	alertCloseNotify = 0
	alertUserCancel  = 90

	// The fatal alerts the layer sends when the peer breaks the protocol
	// (RFC 8446 6.2), as crypto/tls does in the same places.
	alertUnexpectedMessage = 10
	alertBadRecordMAC      = 20
	alertRecordOverflow    = 22
	alertIllegalParameter  = 47
	alertProtocolVersion   = 70

	// maxUseless bounds records in a row that carry no application data
	// (empty records, KeyUpdates): a peer cannot keep a read spinning.
	maxUseless = 16
)

var (
	// ErrTLSRecord is a record that fails to open, is too long, has no
	// content type or a legacy_record_version other than 0x0303: the peer
	// (or something on the path) is broken.
	ErrTLSRecord = errors.New("tls: bad record")
	// ErrTLSUnexpected is a record or message TLS 1.3 forbids after the
	// handshake, or one the relay never asked for.
	ErrTLSUnexpected = errors.New("tls: unexpected message after the handshake")

	// The kinds of ErrTLSRecord that call for an alert of their own.
	errRecordMAC      = fmt.Errorf("%w: bad record MAC", ErrTLSRecord)
	errRecordOverflow = fmt.Errorf("%w: record overflow", ErrTLSRecord)
	errKeyUpdateValue = fmt.Errorf("%w: KeyUpdate neither requested nor not", ErrTLSRecord)
	errRecordVersion  = fmt.Errorf("%w: legacy_record_version not 0x0303", ErrTLSRecord)
)

// alertFor is the fatal alert a failure of the peer's records calls for;
// 0 for none (an end of the stream, the peer's own alert, a socket error).
func alertFor(err error) byte {
	switch {
	case err == errRecordMAC:
		return alertBadRecordMAC
	case err == errRecordOverflow:
		return alertRecordOverflow
	case err == errKeyUpdateValue:
		return alertIllegalParameter // RFC 8446 4.6.3
	case err == errRecordVersion:
		return alertProtocolVersion
	case errors.Is(err, ErrTLSRecord), errors.Is(err, ErrTLSUnexpected):
		return alertUnexpectedMessage
	}
	return 0
}

// AlertError is a fatal alert the peer sent (RFC 8446 6): its
// description code.
type AlertError byte

func (a AlertError) Error() string { return fmt.Sprintf("tls: peer sent alert %d", byte(a)) }

// TLSFailure reports whether err ended a TLS session for a reason of TLS's
// own (a record that does not open, a message or alert TLS does not allow
// there, from either record layer), not an end of the stream or a socket
// error. Cost: nothing for nil, io.EOF or a bare errno (a plain
// socket's ends); otherwise three small allocations for errors.As.
func TLSFailure(err error) bool {
	if err == nil || err == io.EOF {
		return false
	}
	if _, ok := err.(unix.Errno); ok {
		return false
	}
	var alert AlertError
	var hdr tls.RecordHeaderError
	var op *net.OpError
	return errors.Is(err, ErrTLSRecord) || errors.Is(err, ErrTLSUnexpected) ||
		errors.As(err, &alert) || errors.As(err, &hdr) ||
		errors.As(err, &op) && (op.Op == "remote error" || op.Op == "local error")
}

// tlsSuite is a TLS 1.3 cipher suite: its AEAD and its hash.
type tlsSuite struct {
	keyLen int
	hash   func() hash.Hash
	aead   func(key []byte) (cipher.AEAD, error)
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// The suites the layer serves. All three AEADs add a 16-byte tag.
var (
	suiteAES128   = &tlsSuite{16, sha256.New, gcm}
	suiteAES256   = &tlsSuite{32, sha512.New384, gcm}
	suiteChaCha20 = &tlsSuite{32, sha256.New, chacha20poly1305.New}
)

const tagSize = 16

// suiteOf is the suite with IANA id, nil for one the layer does not serve.
func suiteOf(id uint16) *tlsSuite {
	switch id {
	case tls.TLS_AES_128_GCM_SHA256:
		return suiteAES128
	case tls.TLS_AES_256_GCM_SHA384:
		return suiteAES256
	case tls.TLS_CHACHA20_POLY1305_SHA256:
		return suiteChaCha20
	}
	return nil
}

// expandLabel is HKDF-Expand-Label (RFC 8446 7.1) with an empty context.
func expandLabel(h func() hash.Hash, secret []byte, label string, n int) ([]byte, error) {
	info := make([]byte, 0, 4+6+len(label))
	info = binary.BigEndian.AppendUint16(info, uint16(n))
	info = append(info, byte(6+len(label)))
	info = append(info, "tls13 "...)
	info = append(info, label...)
	info = append(info, 0)
	return hkdf.Expand(h, secret, string(info), n)
}

// direction is one direction's record protection: the traffic secret, the
// key and IV derived from it, the AEAD built from the key, and the
// sequence number of the next record.
//
// The AEAD is most of a session's memory (AES-GCM's key schedule and
// tables: ~1.3 KB where the key and IV are 44 bytes), so a direction idle
// for a sweep of idleKeys drops it and builds it again (~0.8 µs) at its
// next record. Whoever drives the direction holds its lock (records.rmu
// for reading, records.wmu for writing); the sweep takes it with TryLock.
type direction struct {
	suite  *tlsSuite
	secret []byte
	key    [32]byte // suite.keyLen of it
	iv     [12]byte
	seq    uint64
	aead   cipher.AEAD // nil while dropped (idle)
	used   bool        // a record went through since the last sweep
}

// cipher is d's AEAD, built again if an idle sweep dropped it.
func (d *direction) cipher() (cipher.AEAD, error) {
	d.used = true
	if d.aead == nil {
		a, err := d.suite.aead(d.key[:d.suite.keyLen])
		if err != nil {
			return nil, err
		}
		d.aead = a
	}
	return d.aead, nil
}

// idle drops the AEAD of a direction no record went through since the
// last call.
func (d *direction) idle() {
	if !d.used {
		d.aead = nil
	}
	d.used = false
}

// setSecret keys d with a traffic secret; the sequence starts at 0.
func (d *direction) setSecret(s *tlsSuite, secret []byte) error {
	key, err := expandLabel(s.hash, secret, "key", s.keyLen)
	if err != nil {
		return err
	}
	iv, err := expandLabel(s.hash, secret, "iv", 12)
	if err != nil {
		return err
	}
	a, err := s.aead(key)
	if err != nil {
		return err
	}
	d.suite, d.secret, d.aead, d.seq, d.used = s, secret, a, 0, true
	copy(d.key[:], key)
	copy(d.iv[:], iv)
	return nil
}

// update moves d to the next traffic secret (a KeyUpdate).
func (d *direction) update() error {
	next, err := expandLabel(d.suite.hash, d.secret, "traffic upd", d.suite.hash().Size())
	if err != nil {
		return err
	}
	return d.setSecret(d.suite, next)
}

// nonce is the per-record nonce: the IV XOR the sequence number.
func (d *direction) nonce() [12]byte {
	n := d.iv
	for i := 0; i < 8; i++ {
		n[4+i] ^= byte(d.seq >> (56 - 8*i))
	}
	return n
}

// open decrypts the record rec (header included) in place and returns its
// content and inner content type. Padding counts towards the record's
// limit: content, type and padding are at most 2^14 + 1 bytes (RFC 8446
// 5.4).
func (d *direction) open(rec []byte) ([]byte, byte, error) {
	a, err := d.cipher()
	if err != nil {
		return nil, 0, err
	}
	n := d.nonce()
	pt, err := a.Open(rec[recHeader:recHeader], n[:], rec[recHeader:], rec[:recHeader])
	if err != nil {
		return nil, 0, errRecordMAC
	}
	d.seq++
	if len(pt) > maxPlain+1 {
		return nil, 0, errRecordOverflow
	}
	i := len(pt) - 1
	for i >= 0 && pt[i] == 0 {
		i--
	}
	if i < 0 {
		return nil, 0, ErrTLSRecord
	}
	return pt[:i], pt[i], nil
}

// seal appends p, sealed as one record of content type typ, to dst.
func (d *direction) seal(dst []byte, typ byte, p []byte) ([]byte, error) {
	a, err := d.cipher()
	if err != nil {
		return dst, err
	}
	hdr := len(dst)
	dst = append(dst, recAppData, 3, 3, 0, 0)
	body := len(dst)
	dst = append(dst, p...)
	dst = append(dst, typ)
	binary.BigEndian.PutUint16(dst[hdr+3:], uint16(len(dst)-body+tagSize))
	if cap(dst)-len(dst) < tagSize {
		dst = append(dst, make([]byte, tagSize)...)[:len(dst)]
	}
	n := d.nonce()
	d.seq++
	return a.Seal(dst[:body], n[:], dst[body:], dst[hdr:body]), nil
}

// recordBufs hold a session's ciphertext while it is read, and sealed
// records until they are written: as much as one read or write moves (a
// chunk, MaxTLSPending) and one more record.
var recordBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, MaxTLSPending+recHeader+maxCiphertxt+sealSlack)
	return &b
}}

func getRecordBuf() *[]byte { return recordBufs.Get().(*[]byte) }

func putRecordBuf(b *[]byte) {
	if cap(*b) > 2*(MaxTLSPending+sealSlack) {
		return // grown by a burst of WriteAll: let it go
	}
	*b = (*b)[:0]
	recordBufs.Put(b)
}

// records is a TLS 1.3 session's record layer over one socket: a
// non-blocking descriptor driven by a loop, or (after Blocking) a
// net.Conn on Go's poller.
type records struct {
	fd int
	nc net.Conn // blocking mode: raw I/O through it; nil on a loop

	// Read side: one reader at a time (the loop, or net/http's reader),
	// holding rmu (the idle sweep takes it with TryLock).
	rmu     sync.Mutex
	rd      direction
	in      *[]byte // pooled, nil when empty: plaintext not yet returned, then ciphertext not yet opened
	pl, pe  int     // plaintext window in *in
	raw     int     // ciphertext starts at (*in)[raw:]
	part    []byte  // while in is nil: what came of a record not yet complete (idleRead)
	bulk    bool    // the last record opened was a bulk one (see TLSSession.Read)
	useless int     // records in a row without application data
	rerr    error   // sticky: the read side has ended

	wmu sync.Mutex // guards the write side: writes come from any goroutine
	wr  direction
	out *[]byte // pooled, nil when empty: sealed records not yet written
	off int     // written so far of *out
	// answered: a KeyUpdate answering the peer's request is sealed and no
	// application data since; further requests need no answer of their
	// own (RFC 8446 4.6.3), so a peer that asks and does not read cannot
	// pile answers up.
	answered bool
	// writes counts write(2) calls that moved ciphertext, short those the
	// socket took only part of (as nbConn's).
	writes, short int
	werr          error // sticky: the write side failed
	// notified: a close_notify (sealCloseNotify) or a fatal alert
	// (fatal) is sealed, the last record: nothing more is sealed after it.
	notified bool
}

// Read implements Sock: decrypted application data, unix.EAGAIN when none
// is ready. Like crypto/tls through TLSSession.Read, it goes on filling p
// while records come in bulk and returns after a small one. An error after
// some bytes is returned by the next call.
func (r *records) Read(p []byte) (int, error) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	n := 0
	for n < len(p) {
		if r.pl < r.pe {
			m := copy(p[n:], (*r.in)[r.pl:r.pe])
			r.pl += m
			n += m
			if r.pl < r.pe || !r.bulk {
				break
			}
			continue
		}
		if r.rerr != nil {
			break
		}
		if ok, err := r.next(); err != nil {
			r.rerr = err
			r.fatal(err)
			break
		} else if ok {
			continue
		}
		if err := r.fill(); err != nil {
			var ne net.Error
			if err == unix.EAGAIN || errors.As(err, &ne) && ne.Timeout() {
				if n == 0 { // nothing yet (a deadline in blocking mode)
					r.release()
					return 0, err
				}
				break
			}
			r.rerr = err
			break
		}
	}
	r.release()
	if n == 0 && r.rerr != nil {
		return 0, r.rerr
	}
	return n, nil
}

// release gives the read buffer back once it holds nothing, or once the
// read side has ended (what is left will never be opened; the plaintext
// window is empty whenever rerr is set).
func (r *records) release() {
	if r.in != nil && r.pl == r.pe && (r.raw == len(*r.in) || r.rerr != nil) {
		putRecordBuf(r.in)
		r.in, r.pl, r.pe, r.raw = nil, 0, 0, 0
	}
}

// fill reads ciphertext behind what is buffered.
func (r *records) fill() error {
	if r.in == nil {
		r.in = getRecordBuf()
		if r.part != nil {
			*r.in = append((*r.in)[:0], r.part...)
			r.part = nil
		}
	}
	b := *r.in
	if r.pl == r.pe && r.raw > 0 && cap(b)-len(b) < recHeader+maxCiphertxt {
		// Move a partial record to the front: room for a whole one.
		m := copy(b, b[r.raw:])
		b = b[:m]
		r.pl, r.pe, r.raw = 0, 0, 0
	}
	if len(b) == cap(b) {
		return ErrTLSRecord // cannot happen: a record fits behind the chunk
	}
	var n int
	var err error
	if r.nc != nil {
		n, err = r.nc.Read(b[len(b):cap(b)])
	} else {
		n, err = rawRead(r.fd, b[len(b):cap(b)])
		for err == unix.EINTR {
			n, err = rawRead(r.fd, b[len(b):cap(b)])
		}
	}
	if n > 0 {
		*r.in = b[:len(b)+n]
		return nil
	}
	*r.in = b
	switch {
	case err != nil && err != io.EOF:
		return err
	case r.raw < len(b):
		return io.ErrUnexpectedEOF // inside a record
	default:
		return io.EOF // no close_notify: the stream ended anyway
	}
}

// next opens the next complete record buffered, if any: ok reports that
// it consumed one (application data is then in the plaintext window).
func (r *records) next() (ok bool, err error) {
	if r.in == nil {
		return false, nil
	}
	b := (*r.in)[r.raw:]
	if len(b) < recHeader {
		return false, nil
	}
	size := int(binary.BigEndian.Uint16(b[3:5]))
	if b[1] != 3 || b[2] != 3 {
		// Every TLS 1.3 record after the ClientHello says TLS 1.2 (RFC
		// 8446 5.1); crypto/tls and OpenSSL refuse any other.
		return false, errRecordVersion
	}
	if size > maxCiphertxt {
		return false, errRecordOverflow
	}
	if b[0] != recAppData {
		if b[0] == recCCS {
			return false, ErrTLSUnexpected
		}
		return false, ErrTLSRecord
	}
	if len(b) < recHeader+size {
		return false, nil
	}
	start := r.raw + recHeader
	r.raw += recHeader + size
	content, typ, err := r.rd.open(b[:recHeader+size])
	if err != nil {
		return false, err
	}
	if typ == recAppData && len(content) > 0 {
		r.pl, r.pe = start, start+len(content)
		r.bulk = len(content) >= bulkRecord
		r.useless = 0
		return true, nil
	}
	// An alert that ends the session (close_notify, a fatal one) is no
	// useless record: as crypto/tls, the layer counts those it ignores.
	ends := typ == recAlert && !(len(content) == 2 && content[1] == alertUserCancel)
	if r.useless++; r.useless > maxUseless && !ends {
		return false, ErrTLSUnexpected
	}
	return true, r.control(typ, content)
}

// control handles a record that is not application data: a KeyUpdate, an
// alert; an empty application record is allowed. io.EOF: close_notify.
func (r *records) control(typ byte, content []byte) error {
	switch typ {
	case recAppData:
		return nil
	case recAlert:
		if len(content) != 2 {
			return ErrTLSRecord
		}
		switch content[1] {
		case alertCloseNotify:
			return io.EOF
		case alertUserCancel:
			return nil
		}
		return AlertError(content[1])
	case recHandshake:
		if len(content) == 0 {
			return ErrTLSUnexpected // RFC 8446 5.4: a handshake record is never empty
		}
		for len(content) > 0 {
			if len(content) < 4 {
				return ErrTLSUnexpected // a message split across records
			}
			size := int(content[1])<<16 | int(content[2])<<8 | int(content[3])
			if content[0] != hsKeyUpdate || size != 1 || len(content) != 5 {
				// Not a KeyUpdate, or one not alone at the end of its
				// record (RFC 8446 5.1: none may span a key change).
				return ErrTLSUnexpected
			}
			asked := content[4]
			if asked > 1 {
				return errKeyUpdateValue
			}
			if err := r.rd.update(); err != nil {
				return err
			}
			if asked == 1 {
				if err := r.answerKeyUpdate(); err != nil && err != unix.EAGAIN {
					return err
				}
			}
			content = content[5:]
		}
		return nil
	}
	return ErrTLSUnexpected
}

// fatal sends the alert that err, a failure of the peer's records, calls
// for (RFC 8446 6.2), as the session's last record: a close_notify after
// it (at Close) would tell the peer that what it sent was taken and the
// session ended cleanly. Nothing for an end of the stream, the peer's own
// alert or a socket error. Its lock is released by defer (see
// answerKeyUpdate).
func (r *records) fatal(err error) {
	a := alertFor(err)
	if a == 0 {
		return
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.sealLastLocked(2, a) {
		_ = r.flushLocked()
	}
}

// sealLastLocked seals the alert (level, desc) as the session's last
// record (notified), unless the write side has failed or a last record is
// sealed already; it reports whether it sealed it. Called with wmu held.
func (r *records) sealLastLocked(level, desc byte) bool {
	if r.werr != nil || r.wr.suite == nil || r.notified {
		return false
	}
	r.sealLocked(recAlert, []byte{level, desc})
	r.notified = true
	return true
}

// answerKeyUpdate sends our KeyUpdate answering the peer's request and
// flushes it; one already sealed since our last application data answers
// this request too. Its lock is released by defer, as everywhere a pair's
// read takes one: a panic must not leave it held (the loop's fault
// barrier closes the session, which takes it).
func (r *records) answerKeyUpdate() error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if !r.answered {
		if err := r.keyUpdateLocked(false); err != nil {
			return err
		}
		r.answered = true
	}
	return r.flushLocked()
}

// keyUpdateLocked seals a KeyUpdate (asking the peer to update too, or
// not) with the current key, then moves the write side to the next one.
func (r *records) keyUpdateLocked(ask bool) error {
	m := []byte{hsKeyUpdate, 0, 0, 1, 0}
	if ask {
		m[4] = 1
	}
	r.sealLocked(recHandshake, m)
	return r.wr.update()
}

// sealLocked appends p to the pending records, in records of at most
// maxPlain bytes, re-keying first where the key has sealed its share.
func (r *records) sealLocked(typ byte, p []byte) {
	if r.out == nil {
		r.out = getRecordBuf()
		r.off = 0
	}
	if typ == recAppData {
		r.answered = false
	}
	for first := true; first || len(p) > 0; first = false {
		if r.wr.seq >= keyUpdateAfter && typ == recAppData {
			if err := r.keyUpdateLocked(false); err != nil {
				r.werr = err
				return
			}
		}
		m := min(len(p), maxPlain)
		var err error
		if *r.out, err = r.wr.seal(*r.out, typ, p[:m]); err != nil {
			r.werr = err
			return
		}
		p = p[m:]
	}
}

// sealedSize is the ciphertext n bytes of plaintext make.
func (r *records) sealedSize(n int) int {
	recs := max(1, (n+maxPlain-1)/maxPlain)
	return n + recs*(recHeader+1+tagSize)
}

// flushLocked writes pending records; unix.EAGAIN if some remain. In
// blocking mode it writes them all.
func (r *records) flushLocked() error {
	if r.werr != nil {
		return r.werr
	}
	for r.out != nil && r.off < len(*r.out) {
		b := (*r.out)[r.off:]
		var n int
		var err error
		if r.nc != nil {
			n, err = r.nc.Write(b)
		} else {
			n, err = rawWrite(r.fd, b)
		}
		if n > 0 {
			r.writes++
			if n < len(b) {
				r.short++
			}
			r.off += n
		}
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return err
		}
		if err != nil {
			r.werr = err
			return err
		}
	}
	if r.out != nil {
		putRecordBuf(r.out)
		r.out, r.off = nil, 0
	}
	return nil
}

// pendingLocked is the sealed ciphertext not yet written.
func (r *records) pendingLocked() int {
	if r.out == nil {
		return 0
	}
	return len(*r.out) - r.off
}

// Write implements Sock: see TLSSession.Write.
func (r *records) Write(p []byte) (int, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.notified {
		return 0, net.ErrClosed
	}
	if err := r.flushLocked(); err != nil {
		return 0, err // EAGAIN: the last write is still pending
	}
	if len(p) > MaxTLSPending {
		p = p[:MaxTLSPending]
	}
	r.sealLocked(recAppData, p)
	if err := r.flushLocked(); err != nil && err != unix.EAGAIN {
		return 0, err
	}
	return len(p), nil
}

// WriteAll seals all of b and writes what the socket takes, keeping the
// rest pending; it fails with ErrTLSPending (and seals nothing) where more
// than MaxTLSPending would then be pending.
func (r *records) WriteAll(b []byte) (int, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.werr != nil {
		return 0, r.werr
	}
	if r.notified {
		return 0, net.ErrClosed
	}
	if r.nc == nil && r.pendingLocked()+r.sealedSize(len(b)) > MaxTLSPending+sealSlack {
		return 0, ErrTLSPending
	}
	r.sealLocked(recAppData, b)
	if err := r.flushLocked(); err != nil && err != unix.EAGAIN {
		return 0, err
	}
	return len(b), nil
}

// Flush implements Sock.
func (r *records) Flush() error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	return r.flushLocked()
}

// closeNotify seals a close_notify and tries one write of what is
// pending, without waiting; the session leaves the idle sweep. Unless
// wait, a write in flight (a blocking one after Blocking, held up by a
// client that does not read) is not waited for: the session then closes
// without a close_notify, as crypto/tls's Close does while a Write is in
// flight, and closing the socket ends that write.
func (r *records) closeNotify(wait bool) {
	keyed.Delete(r)
	if wait {
		r.wmu.Lock()
	} else if !r.wmu.TryLock() {
		return
	}
	defer r.wmu.Unlock()
	if r.werr != nil || r.wr.suite == nil {
		return
	}
	r.sealLastLocked(1, alertCloseNotify) // none after a fatal alert, nor a second one
	if r.out != nil {
		_, _ = rawWrite(r.fd, (*r.out)[r.off:])
		putRecordBuf(r.out)
		r.out = nil
	}
	r.werr = net.ErrClosed
}

// sealCloseNotify seals a close_notify after what is pending, for the
// next Flush to write: the last record of the session (Write and
// WriteAll fail with net.ErrClosed from then on). Goodbye sends it before
// the FIN, which closeNotify at Close could only follow.
func (r *records) sealCloseNotify() {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.sealLastLocked(1, alertCloseNotify)
}

// free gives back both buffers (the session is closed; no reader runs,
// but a sweep that began before it left may still visit the read side).
func (r *records) free() {
	keyed.Delete(r)
	r.rmu.Lock()
	if r.in != nil {
		putRecordBuf(r.in)
		r.in, r.pl, r.pe, r.raw = nil, 0, 0, 0
	}
	r.part = nil
	r.rmu.Unlock()
	r.wmu.Lock()
	if r.out != nil {
		putRecordBuf(r.out)
		r.out = nil
	}
	r.wmu.Unlock()
}

// idleKeys is the period of the idle sweep: a direction no record went
// through for one to two periods holds no AEAD.
const idleKeys = 10 * time.Second

// keyed is the sessions on the record layer of our own, for the idle
// sweep: one goroutine per process, started with the first session.
var (
	keyed     sync.Map // *records → struct{}
	sweepOnce sync.Once
)

// sweep adds r to the idle sweep.
func (r *records) sweep() {
	keyed.Store(r, struct{}{})
	sweepOnce.Do(func() {
		go func() {
			for range time.Tick(idleKeys) {
				sweepIdleKeys()
			}
		}()
	})
}

// idleRead is the sweep's visit of the read side (rmu held): the
// direction drops its AEAD if idle, and then a read buffer that holds
// only the start of a record (a peer that stopped mid-record) gives way
// to a copy of those bytes, so that the session holds no pooled buffer
// (~88 KiB) for them; fill puts them back in front of what comes next.
func (r *records) idleRead() {
	idle := !r.rd.used
	r.rd.idle()
	if !idle || r.in == nil || r.pl != r.pe || r.rerr != nil {
		return
	}
	rest := (*r.in)[r.raw:]
	if _, whole := recordSize(rest); whole || len(rest) >= recHeader+maxCiphertxt {
		return // a record is waiting for a reader, not for the peer
	}
	r.part = append([]byte(nil), rest...)
	putRecordBuf(r.in)
	r.in, r.pl, r.pe, r.raw = nil, 0, 0, 0
}

// sweepIdleKeys drops the AEADs of the directions idle since the last
// sweep. A direction in use (its lock held) is left for the next one.
func sweepIdleKeys() {
	keyed.Range(func(k, _ any) bool {
		r := k.(*records)
		if r.rmu.TryLock() {
			r.idleRead()
			r.rmu.Unlock()
		}
		if r.wmu.TryLock() {
			r.wr.idle()
			r.wmu.Unlock()
		}
		return true
	})
}
