package fleet

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// Mesh liveness. Every node keeps one control connection to each other
// node it knows of (the node set, and any node a tunnel of it crosses the
// mesh to) and sends a signed Mesh.Ping on it every MeshPing; the other
// node answers. Both nodes do, so each direction is checked. A node that
// has answered no ping for MeshLost, while tunnels of this node cross the
// mesh to it, is lost: those tunnels are ended at once (close reason
// far_node_lost, WebSocket 1011), instead of staying half-open until TCP
// gives up. A refused connection is an answer: the node's host is up and
// its kernel resets our links if its relay is gone (a draining relay
// closes its listener but keeps its tunnels).

// peer is what this node knows of another node's liveness.
type peer struct {
	id   string
	addr string // guarded by f.mu
	// pinging is set while a ping runs (one at a time per peer).
	pinging atomic.Bool
	// noRid: the next ping goes without a rid, as pings did before they
	// had one (a node of that version forbids the key and answers
	// bad_request). Flipped by each bad_request answer.
	noRid  atomic.Bool
	mu     sync.Mutex
	conn   net.Conn      // the control connection (nil: none)
	rd     *bufio.Reader // conn's
	lastOK atomic.Int64  // unix ns of the last answer (or of discovery)
	rtt    atomic.Int64  // ns, the last ping's round trip
	lost   bool          // its tunnels were ended for the current silence (ping loop only)

	dialFails *metrics.Counter
	lostTotal *metrics.Counter
	pings     *metrics.Counter // answered
	pingFails *metrics.Counter // sent, and answered with an error or not at all
}

// peerOf returns the peer id, made if need be. Called with f.mu held.
func (f *Fleet) peerOf(id string) *peer {
	p := f.peers[id]
	if p == nil {
		p = &peer{id: id,
			dialFails: f.set.GetOrCreateCounter(fmt.Sprintf(`meetpoint_mesh_dial_failures_total{peer=%q}`, id)),
			lostTotal: f.set.GetOrCreateCounter(fmt.Sprintf(`meetpoint_mesh_peer_lost_total{peer=%q}`, id)),
			pings:     f.set.GetOrCreateCounter(fmt.Sprintf(`meetpoint_mesh_pings_total{peer=%q}`, id)),
			pingFails: f.set.GetOrCreateCounter(fmt.Sprintf(`meetpoint_mesh_ping_failures_total{peer=%q}`, id))}
		p.lastOK.Store(time.Now().UnixNano())
		f.set.GetOrCreateGauge(fmt.Sprintf(`meetpoint_mesh_rtt_seconds{peer=%q}`, id), func() float64 {
			return time.Duration(p.rtt.Load()).Seconds()
		})
		f.set.GetOrCreateGauge(fmt.Sprintf(`meetpoint_mesh_peer_reachable{peer=%q}`, id), func() float64 {
			return b2f(time.Since(time.Unix(0, p.lastOK.Load())) < f.cfg.MeshLost)
		})
		f.set.GetOrCreateGauge(fmt.Sprintf(`meetpoint_mesh_links_active{peer=%q}`, id), func() float64 {
			return float64(f.srv.MeshPeers()[id])
		})
		f.peers[id] = p
	}
	return p
}

// unreachable reports whether node has answered no ping for MeshLost
// (false for a node not pinged yet).
func (f *Fleet) unreachable(node string) bool {
	f.mu.Lock()
	p := f.peers[node]
	f.mu.Unlock()
	return p != nil && time.Since(time.Unix(0, p.lastOK.Load())) >= f.cfg.MeshLost
}

// meshReady is the mesh's part of readiness: not ready while a node of
// the set (alive in the store) answers no ping over the mesh, naming it.
func (f *Fleet) meshReady() (bool, string) {
	var cut []string
	f.mu.Lock()
	for id, p := range f.peers {
		if _, alive := f.nodes[id]; alive && time.Since(time.Unix(0, p.lastOK.Load())) >= f.cfg.MeshLost {
			cut = append(cut, id)
		}
	}
	f.mu.Unlock()
	if len(cut) == 0 {
		return true, "ready"
	}
	sort.Strings(cut)
	return false, "cannot reach node " + strings.Join(cut, ", ") + " over the mesh (alive in the store): its clients and this node's are paired on whichever of the two holds their key"
}

// dialFailed counts a mesh connection to node that could not be made.
func (f *Fleet) dialFailed(node string) {
	f.mu.Lock()
	p := f.peerOf(node)
	f.mu.Unlock()
	p.dialFails.Inc()
}

// pingLoop pings the peers every MeshPing until Close.
func (f *Fleet) pingLoop() {
	defer f.done.Done()
	t := time.NewTicker(f.cfg.MeshPing)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			f.cancelPings()
			f.mu.Lock()
			for _, p := range f.peers {
				p.drop(nil)
			}
			f.mu.Unlock()
			f.pings.Wait()
			return
		case <-t.C:
			f.pingRound()
		}
	}
}

// pingRound starts a ping to every peer not still answering the last one
// and ends the tunnels of peers silent for MeshLost.
func (f *Fleet) pingRound() {
	tunnels := f.srv.MeshPeers()
	var ps []*peer
	f.mu.Lock()
	for id, n := range f.nodes {
		if id != f.cfg.NodeID {
			f.peerOf(id).addr = n.Addr
		}
	}
	for id := range tunnels {
		f.peerOf(id)
	}
	for id, p := range f.peers {
		_, known := f.nodes[id]
		if !known && tunnels[id] == 0 && !p.pinging.Load() { // gone, and nothing of ours crosses to it
			p.drop(nil)
			delete(f.peers, id)
			for _, m := range []string{"meetpoint_mesh_dial_failures_total", "meetpoint_mesh_peer_lost_total", "meetpoint_mesh_rtt_seconds",
				"meetpoint_mesh_pings_total", "meetpoint_mesh_ping_failures_total",
				"meetpoint_mesh_links_active", "meetpoint_mesh_peer_reachable"} {
				f.set.UnregisterMetric(fmt.Sprintf(`%s{peer=%q}`, m, id))
			}
			continue
		}
		ps = append(ps, p)
	}
	f.mu.Unlock()
	for _, p := range ps {
		if p.pinging.CompareAndSwap(false, true) {
			f.pings.Add(1)
			go f.ping(p)
		}
		silent := time.Since(time.Unix(0, p.lastOK.Load()))
		switch {
		case silent < f.cfg.MeshLost:
			p.lost = false
		case !p.lost && tunnels[p.id] > 0:
			p.lost = true
			p.lostTotal.Inc()
			n := f.srv.EndMeshTunnels(p.id, reason.FarNodeLost, "relay node lost: the relay of the other end stopped answering")
			f.log.Warn("fleet: node lost (no answer to mesh pings): ending the tunnels that cross to it",
				"node", f.cfg.NodeID, "peer", p.id, "silent", silent.Round(time.Millisecond), "tunnels", n)
		}
	}
}

// ping sends one Mesh.Ping to p over its control connection (dialled if
// need be) and records the answer.
func (f *Fleet) ping(p *peer) {
	defer f.pings.Done()
	defer p.pinging.Store(false)
	f.mu.Lock()
	addr := p.addr
	f.mu.Unlock()
	if addr == "" {
		return // a node known only by its tunnels, gone from the set: nothing to dial
	}
	timeout := f.cfg.MeshLost / 3
	start := time.Now()
	p.mu.Lock()
	c, rd := p.conn, p.rd
	p.mu.Unlock()
	if c == nil {
		ctx, cancel := context.WithTimeout(f.pingCtx, timeout)
		var err error
		c, err = f.dialControl(ctx, p.id, addr)
		cancel()
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				p.lastOK.Store(time.Now().UnixNano()) // its host answers (see above)
				return
			}
			p.dialFails.Inc()
			f.log.Debug("fleet: mesh ping: node unreachable", "peer", p.id, "addr", addr, "error", err)
			return
		}
		rd = bufio.NewReaderSize(c, 512)
		p.mu.Lock()
		if f.pingCtx.Err() != nil { // closing meanwhile
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conn, p.rd = c, rd
		p.mu.Unlock()
	}
	// rid makes each ping's signature unique: the owner accepts a
	// signature once, and two pings in the same second would otherwise
	// sign the same fields (every other ping refused as a replay with a
	// mesh ping interval under a second).
	req := f.pingRequest(!p.noRid.Load()) // noRid: an older node
	_ = c.SetDeadline(time.Now().Add(timeout))
	var ans struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	_, err := c.Write(req)
	var line []byte
	if err == nil {
		line, err = rd.ReadSlice('\n')
	}
	if err == nil {
		if err = json.Unmarshal(line, &ans); err == nil && ans.Status != "success" {
			err = fmt.Errorf("answer %q", line)
			if ans.Error == "bad_request" {
				// An older node, or a refusal for another cause (clock
				// skew): the next ping tries the other form, and the
				// form an older node answers sticks.
				p.noRid.Store(!p.noRid.Load())
			}
		}
	}
	if err != nil {
		p.pingFails.Inc()
		f.log.Debug("fleet: mesh ping failed", "peer", p.id, "addr", addr, "error", err)
		p.drop(c)
		return
	}
	p.pings.Inc()
	p.rtt.Store(int64(time.Since(start)))
	p.lastOK.Store(time.Now().UnixNano())
}

// pingRequest is a signed Mesh.Ping from this node, with a request id
// (withRid) or, for a node of an earlier version, without.
func (f *Fleet) pingRequest(withRid bool) []byte {
	now := time.Now().Unix()
	params := []handshake.Field{handshake.Str("node", f.cfg.NodeID), handshake.Int("time", now)}
	var mac []byte
	if withRid {
		rid := newRequestID()
		mac = f.sign("Mesh.Ping", f.cfg.NodeID, now, rid)
		params = append(params, handshake.Str("rid", rid))
	} else {
		mac = f.sign("Mesh.Ping", f.cfg.NodeID, now)
	}
	return handshake.AppendRequest(nil, 1, "Mesh.Ping", append(params, handshake.Str("mac", hex.EncodeToString(mac)))...)
}

// drop closes p's control connection if it is c (nil: whichever).
func (p *peer) drop(c net.Conn) {
	p.mu.Lock()
	if p.conn != nil && (c == nil || p.conn == c) {
		p.conn.Close()
		p.conn, p.rd = nil, nil
	}
	p.mu.Unlock()
}

// dialControl opens a control connection to node at addr: TLS pinned to
// the certificate it announces, if any, else plain TCP.
func (f *Fleet) dialControl(ctx context.Context, node, addr string) (net.Conn, error) {
	pin, err := f.certOf(ctx, node)
	if err != nil {
		return nil, err
	}
	nc, err := f.dialer().DialContext(ctx, "tcp", addr)
	if err != nil || pin == "" {
		return nc, err
	}
	tc := tls.Client(nc, f.pinned(node, pin))
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return tc, nil
}

// handlePing answers a node's Mesh.Ping, and keeps its control
// connection open.
func (f *Fleet) handlePing(c relay.Conn, req *handshake.Request) {
	if !f.verify(c, req) {
		return
	}
	node, _ := req.Param("node")
	c.KeepMesh(node)
	c.Reply(handshake.AppendSuccess(nil, req.ID, handshake.Str("node", f.cfg.NodeID), handshake.Str("instance", f.instance)))
}

// liveAt reports whether a process other than this one answers a Mesh.Ping
// at addr as this node: one that still runs under its id. Nothing
// answering (a dead predecessor), this process itself, or another node
// (one that shares the address) is not one; an answer that names no node
// (an earlier version's) is.
func (f *Fleet) liveAt(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := f.dialControl(ctx, f.cfg.NodeID, addr)
	if err != nil {
		return false
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	if _, err := c.Write(f.pingRequest(true)); err != nil {
		return false
	}
	line, err := bufio.NewReaderSize(c, 512).ReadSlice('\n')
	if err != nil {
		return false // closed or silent: nothing there runs as a node
	}
	var ans struct {
		Params struct {
			Node     *string `json:"node"`
			Instance string  `json:"instance"`
		} `json:"params"`
	}
	_ = json.Unmarshal(line, &ans)
	if n := ans.Params.Node; n != nil && *n != f.cfg.NodeID {
		return false
	}
	return ans.Params.Instance != f.instance
}
