package fleet

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/loop"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// The mesh link: the dialling node opens a plain TCP connection to the
// owner's advertised address (the relay port: the dispatch table sees a
// JSON-RPC object) and sends one request,
//
//	{"id":1,"method":"Mesh.Join","params":{"node":N,"time":T,"mac":M,
//	 "token":..,"nonce":..,"uuid":..,"name":..,"identity":..,"rid":R}}
//
// M is HMAC-SHA256(mesh key, every other param), hex; T (unix seconds)
// must be within maxSkew of the owner's clock; R is random, so each
// request's signature is unique, and the owner accepts a signature once
// (replayCache). A refused request counts as a failed authentication of
// its address (toward a ban), and its log line is rate-limited. The owner answers with
// TunnelEstablished (its waiting client's name and uuid) and the link is
// the client's end of the tunnel from then on, or with a JSON-RPC error
// (relay.MeshNotWaiting, ...) and a close.

// maxSkew bounds the clock difference between nodes a signed request
// tolerates (and how long a captured request could be replayed).
const maxSkew = 30 * time.Second

// maxAnswer bounds the owner's answer line.
const maxAnswer = 4 << 10

// sign is the MAC of a mesh request: its method, node, time and fields.
func (f *Fleet) sign(method, node string, t int64, fields ...string) []byte {
	m := hmac.New(sha256.New, f.cfg.MeshKey)
	for _, s := range append([]string{"meetpoint mesh v1", method, node, strconv.FormatInt(t, 10)}, fields...) {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}

// verify checks a mesh request's signature over fields (in order, and
// its rid when it has one: nodes of earlier versions send none), its age
// and that it was not accepted before; a request that fails is refused.
func (f *Fleet) verify(c relay.Conn, req *handshake.Request, fields ...string) bool {
	p := func(k string) string { v, _ := req.Param(k); return v }
	t, _ := req.Uint("time")
	mac, err := hex.DecodeString(p("mac"))
	sent := time.Unix(int64(t), 0)
	skew := time.Since(sent)
	if _, ok := req.Param("rid"); ok {
		fields = append(fields[:len(fields):len(fields)], "rid")
	}
	vals := make([]string, len(fields))
	for i, k := range fields {
		vals[i] = p(k)
	}
	why := ""
	switch {
	case err != nil || !hmac.Equal(mac, f.sign(req.Method, p("node"), int64(t), vals...)):
		why = "bad signature"
	case skew > maxSkew || skew < -maxSkew:
		why = "clock skew"
	case c.WebSocket():
		why = "over WebSocket"
	default:
		switch f.replays.first(mac, sent.Add(maxSkew), time.Now()) {
		case replayed:
			why = "replayed"
		case full: // well signed, and new: too many within maxSkew, no guess
			why = "replay cache full"
		}
	}
	if why != "" {
		if ok, held := f.refusalLog.allow(time.Now()); ok {
			f.log.Warn("fleet: mesh request refused (meetpoint_mesh_refused_total counts them all)", "why", why,
				"peer", c.Peer().String(), "node", p("node"), "skew", skew.Round(time.Second), "not_logged_since_last", held)
		}
		c.RefuseMesh(req.ID, why == "bad signature" || why == "replayed") // well signed, its time off: a node's clock, no guess
		return false
	}
	return true
}

// wireString is s as a mesh request carries it: JSON text is UTF-8, so
// each byte of s that is not (a WebSocket URL's %FF) goes as U+FFFD, as
// handshake.Str writes it. A request is signed over these values, the
// ones its receiver reads.
func wireString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// joinFields and reachFields are what Mesh.Join's and Mesh.Reach's
// signatures cover, besides the method, node and time.
var (
	joinFields  = []string{"token", "nonce", "uuid", "name", "identity"}
	reachFields = []string{"serverUuid", "clientUuid", "clientName", "identity"}
)

// handleJoin is the owner's side: Mesh.Join, registered on the server.
func (f *Fleet) handleJoin(c relay.Conn, req *handshake.Request) {
	if !f.verify(c, req, joinFields...) {
		return
	}
	p := func(k string) string { v, _ := req.Param(k); return v }
	k := relay.PairKey{Token: p("token"), Nonce: p("nonce")}
	absent := relay.MeshNotWaiting
	f.mu.Lock()
	if f.held[f.pairKey(k)] != nil {
		absent = relay.MeshRetry // its client is joining, or the key being released
	}
	f.mu.Unlock()
	c.JoinMesh(req.ID, k, p("uuid"), p("name"), p("node"), "via "+p("node")+" ("+p("identity")+")", absent)
}

// dial opens the mesh link to the owner at addr for the client p. It
// returns the link (the owner paired it), or the owner's refusal code, or
// an error (the owner could not be reached or answered nonsense).
func (f *Fleet) dial(ctx context.Context, addr, node string, p relay.Placing) (*relay.MeshLink, string, error) {
	now, rid := time.Now().Unix(), newRequestID()
	// Signed as the owner reads them (a WebSocket URL's parameters may
	// be bytes that are not UTF-8; JSON carries U+FFFD for them).
	token, nonce, uuid, name, identity := wireString(p.Key.Token), wireString(p.Key.Nonce), wireString(p.UUID),
		wireString(p.Name), wireString(p.Identity)
	mac := f.sign("Mesh.Join", f.cfg.NodeID, now, token, nonce, uuid, name, identity, rid)
	req := handshake.AppendRequest(nil, 1, "Mesh.Join",
		handshake.Str("identity", identity), handshake.Str("mac", hex.EncodeToString(mac)),
		handshake.Str("name", name), handshake.Str("node", f.cfg.NodeID), handshake.Str("nonce", nonce),
		handshake.Str("rid", rid), handshake.Int("time", now), handshake.Str("token", token), handshake.Str("uuid", uuid))
	sock, line, err := f.request(ctx, node, addr, req)
	if err != nil {
		return nil, "", err
	}
	var ans struct {
		Notification string `json:"notification"`
		Error        string `json:"error"`
		Params       struct {
			Name string `json:"name"`
			UUID string `json:"uuid"`
		} `json:"params"`
	}
	err = json.Unmarshal(line, &ans)
	switch {
	case err != nil:
		err = fmt.Errorf("mesh answer: %v", err)
	case ans.Error != "":
		sock.Close()
		return nil, ans.Error, nil
	case ans.Notification != "RemoteProxy.TunnelEstablished":
		err = fmt.Errorf("mesh answer: unexpected %q", line)
	}
	if err != nil {
		sock.Close()
		return nil, "", err
	}
	link := f.link(sock, node, addr)
	link.Name, link.UUID = ans.Params.Name, ans.Params.UUID
	return link, "", nil
}

// request dials the mesh address of node, sends one request and reads
// the answer's line without reading past it: over TLS, pinned to the
// certificate the node announces, if it announces one (its relay serves
// TLS), else plain TCP. The returned socket is the caller's to close, or
// to make a link of.
func (f *Fleet) request(ctx context.Context, node, addr string, req []byte) (loop.Sock, []byte, error) {
	pin, err := f.certOf(ctx, node)
	if err != nil {
		return nil, nil, err
	}
	nc, err := f.dialer().DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	tc := nc.(*net.TCPConn)
	defer tc.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(5 * time.Second)
	}
	_ = tc.SetDeadline(deadline)
	_ = tc.SetNoDelay(true)
	if pin == "" {
		if _, err := tc.Write(req); err != nil {
			return nil, nil, err
		}
		line, err := readLine(tc)
		if err != nil {
			return nil, nil, fmt.Errorf("mesh answer: %w", err)
		}
		fd, err := loop.DupConn(tc)
		if err != nil {
			return nil, nil, err
		}
		return loop.PlainSock(fd), line, nil
	}
	fd, err := loop.DupConn(tc)
	if err != nil {
		return nil, nil, err
	}
	_ = tc.SetDeadline(time.Time{})
	var line []byte
	sess, err := loop.ClientTLS(fd, f.pinned(node, pin), deadline, tc.RemoteAddr(), func(c *tls.Conn) error {
		if _, err := c.Write(req); err != nil {
			return err
		}
		var one [1]byte
		for len(line) < maxAnswer { // one byte at a time from what TLS decrypted: nothing past the line is taken
			if _, err := io.ReadFull(c, one[:]); err != nil {
				return fmt.Errorf("mesh answer: %w", err)
			}
			if one[0] == '\n' {
				return nil
			}
			line = append(line, one[0])
		}
		return errors.New("mesh answer: too long")
	})
	if fault := (*loop.Fault)(nil); errors.As(err, &fault) { // ClientTLS's barrier caught a panic in the handshake
		if !f.srv.ContainFault(fault.Value, fault.Stack, "internal error: the relay panicked in a mesh link's TLS handshake; the link is not made",
			"node", node) {
			panic(fmt.Sprintf("%v\n\nwhere it happened:\n%s", fault.Value, fault.Stack))
		}
	}
	if err != nil {
		return nil, nil, err
	}
	return sess, line, nil
}

// pinned is the TLS configuration of a mesh connection to node, whose
// certificate's SHA-256 is pin.
func (f *Fleet) pinned(node, pin string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The node's certificate may be self-signed: it is pinned to the
		// SHA-256 the node announces in the store (which the fleet trusts).
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || certFingerprint(cs.PeerCertificates[0].Raw) != pin {
				return fmt.Errorf("mesh: node %s's certificate is not the one it announces", node)
			}
			return nil
		},
	}
}

// dialer dials mesh connections with the relay's keepalive and
// TCP_USER_TIMEOUT (relay.Keepalive), as on the sockets it accepts, from
// the next of the source addresses (Config.SourceIPs) if any.
func (f *Fleet) dialer() *net.Dialer {
	k := f.srv.Keepalive()
	var local net.Addr
	if n := len(f.cfg.SourceIPs); n > 0 {
		local = &net.TCPAddr{IP: f.cfg.SourceIPs[(f.nextSource.Add(1)-1)%uint64(n)]}
	}
	return &net.Dialer{LocalAddr: local, KeepAlive: -1, Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		if cerr := rc.Control(func(fd uintptr) { err = k.Apply(int(fd)) }); cerr != nil {
			return cerr
		}
		return err
	}}
}

// certOf is the certificate fingerprint node announces ("" : none, plain
// TCP), from the node set or, for a node not in it yet, the store.
func (f *Fleet) certOf(ctx context.Context, node string) (string, error) {
	f.mu.Lock()
	n, ok := f.nodes[node]
	f.mu.Unlock()
	if ok {
		return n.Cert, nil
	}
	v, err := f.rdb.Get(ctx, f.nodeKey(node)).Result()
	if err != nil {
		return "", fmt.Errorf("mesh: node %s: %v", node, err)
	}
	if err := json.Unmarshal([]byte(v), &n); err != nil {
		return "", fmt.Errorf("mesh: node %s: %v", node, err)
	}
	return n.Cert, nil
}

func certFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// link makes a relay.MeshLink of an answered mesh socket.
func (f *Fleet) link(sock loop.Sock, node, addr string) *relay.MeshLink {
	return &relay.MeshLink{Sock: sock, Node: node, Addr: addr, Identity: "via " + node, Ender: linkEnder{}}
}

// readLine reads the owner's answer up to and including its newline and
// not a byte more (what follows is tunnel data, left in the socket for
// the loop): it peeks, then reads exactly the line.
func readLine(tc *net.TCPConn) ([]byte, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, maxAnswer)
	var line []byte
	var serr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, e := unix.Recvfrom(int(fd), buf, unix.MSG_PEEK)
		switch {
		case e == unix.EAGAIN || e == unix.EINTR:
			return false
		case e != nil:
			serr = e
			return true
		case n == 0:
			serr = errors.New("closed before answering")
			return true
		}
		i := bytes.IndexByte(buf[:n], '\n')
		if i < 0 {
			if n == len(buf) {
				serr = errors.New("answer too long")
				return true
			}
			return false // wait for the rest
		}
		m, e := unix.Read(int(fd), buf[:i+1])
		if e != nil || m != i+1 {
			serr = fmt.Errorf("short read: %d of %d (%v)", m, i+1, e)
			return true
		}
		line = buf[:i]
		return true
	})
	if err == nil {
		err = serr
	}
	return line, err
}

// linkEnder is a dialled link's: the tunnel counts its end
// (meetpoint_mesh_links_active comes from the server's tunnels).
type linkEnder struct{}

// End implements reason.Ender.
func (linkEnder) End(reason.Reason) {}
