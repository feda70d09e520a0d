package fleet

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"time"

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
//	 "token":..,"nonce":..,"uuid":..,"name":..,"identity":..}}
//
// M is HMAC-SHA256(mesh key, every other param), hex; T (unix seconds)
// must be within maxSkew of the owner's clock. The owner answers with
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

// verify checks a mesh request's signature over fields (in order) and
// its age; a request that fails is refused and logged.
func (f *Fleet) verify(c relay.Conn, req *handshake.Request, fields ...string) bool {
	p := func(k string) string { v, _ := req.Param(k); return v }
	t, _ := req.Uint("time")
	mac, err := hex.DecodeString(p("mac"))
	skew := time.Since(time.Unix(int64(t), 0))
	vals := make([]string, len(fields))
	for i, k := range fields {
		vals[i] = p(k)
	}
	if err != nil || c.WebSocket() || skew > maxSkew || skew < -maxSkew ||
		!hmac.Equal(mac, f.sign(req.Method, p("node"), int64(t), vals...)) {
		f.log.Warn("fleet: mesh request refused (bad signature, clock skew or WebSocket)", "peer", c.Peer().String(),
			"node", p("node"), "skew", skew.Round(time.Second))
		c.RefuseMesh(req.ID)
		return false
	}
	return true
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
	c.JoinMesh(req.ID, k, p("uuid"), p("name"), "via "+p("node")+" ("+p("identity")+")", absent)
}

// dial opens the mesh link to the owner at addr for the client p. It
// returns the link (the owner paired it), or the owner's refusal code, or
// an error (the owner could not be reached or answered nonsense).
func (f *Fleet) dial(ctx context.Context, addr, node string, p relay.Placing) (*relay.MeshLink, string, error) {
	now := time.Now().Unix()
	mac := f.sign("Mesh.Join", f.cfg.NodeID, now, p.Key.Token, p.Key.Nonce, p.UUID, p.Name, p.Identity)
	req := handshake.AppendRequest(nil, 1, "Mesh.Join",
		handshake.Str("identity", p.Identity), handshake.Str("mac", hex.EncodeToString(mac)),
		handshake.Str("name", p.Name), handshake.Str("node", f.cfg.NodeID), handshake.Str("nonce", p.Key.Nonce),
		handshake.Int("time", now), handshake.Str("token", p.Key.Token), handshake.Str("uuid", p.UUID))
	tc, line, err := f.request(ctx, addr, req)
	if err != nil {
		return nil, "", err
	}
	defer tc.Close()
	var ans struct {
		Notification string `json:"notification"`
		Error        string `json:"error"`
		Params       struct {
			Name string `json:"name"`
			UUID string `json:"uuid"`
		} `json:"params"`
	}
	if err := json.Unmarshal(line, &ans); err != nil {
		return nil, "", fmt.Errorf("mesh answer: %v", err)
	}
	switch {
	case ans.Error != "":
		return nil, ans.Error, nil
	case ans.Notification != "RemoteProxy.TunnelEstablished":
		return nil, "", fmt.Errorf("mesh answer: unexpected %q", line)
	}
	link, err := f.link(tc, node, addr)
	if err != nil {
		return nil, "", err
	}
	link.Name, link.UUID = ans.Params.Name, ans.Params.UUID
	return link, "", nil
}

// request dials addr, sends one request and reads the answer's line; the
// caller closes the connection.
func (f *Fleet) request(ctx context.Context, addr string, req []byte) (*net.TCPConn, []byte, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	tc := nc.(*net.TCPConn)
	if dl, ok := ctx.Deadline(); ok {
		_ = tc.SetDeadline(dl)
	}
	_ = tc.SetNoDelay(true)
	if _, err := tc.Write(req); err != nil {
		tc.Close()
		return nil, nil, err
	}
	line, err := readLine(tc)
	if err != nil {
		tc.Close()
		return nil, nil, fmt.Errorf("mesh answer: %w", err)
	}
	return tc, line, nil
}

// link turns an answered mesh connection into a relay.MeshLink on a
// descriptor of its own (tc is closed by the caller).
func (f *Fleet) link(tc *net.TCPConn, node, addr string) (*relay.MeshLink, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = loop.Dup(int(s)) }); err != nil || derr != nil {
		return nil, errors.Join(err, derr)
	}
	f.linksOpen.Inc()
	return &relay.MeshLink{Fd: fd, Node: node, Addr: addr, Identity: "via " + node, Ender: &linkEnder{f: f}}, nil
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

// linkEnder counts a dialled link's end.
type linkEnder struct {
	f    *Fleet
	done atomic.Bool
}

// End implements reason.Ender.
func (l *linkEnder) End(reason.Reason) {
	if l.done.CompareAndSwap(false, true) {
		l.f.linksOpen.Dec()
	}
}
