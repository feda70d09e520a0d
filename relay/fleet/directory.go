package fleet

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay"
)

// The TunnelProxy directory (tunnelproxy.Directory, wired by
// cmd/meetpoint): a registered server's uuid is a key of the store held
// by its node like a pairing key (same lease, renewal and release), so a
// uuid is registered once fleet-wide and a client on any node finds the
// node to reach it through.

func (f *Fleet) tpKey(uuid string) string { return f.cfg.Prefix + "tp:" + uuid }

// Register implements tunnelproxy.Directory. With the store unreachable
// the server is registered here only (clients on this node reach it).
func (f *Fleet) Register(ctx context.Context, uuid string) (relay.Lease, bool) {
	key := f.tpKey(uuid)
	for range 4 {
		f.mu.Lock()
		if h := f.held[key]; h != nil {
			w := h.wait
			f.mu.Unlock()
			if h.state == held || w == nil {
				return nil, false // registered here already (the local registry refuses first)
			}
			select {
			case <-w:
				continue
			case <-ctx.Done():
				return nil, false
			}
		}
		h := &hold{f: f, key: key, value: f.newValue(), state: placing, wait: make(chan struct{})}
		f.held[key] = h
		f.mu.Unlock()
		taken, owner, err := f.claim(ctx, h)
		if err != nil || taken {
			h.finish(true, err == nil) // the store away: registered here only
			return h, true
		}
		node, addr := parseValue(owner)
		if node != f.cfg.NodeID && f.aliveNow(ctx, node) && !f.refused(ctx, addr) {
			h.finish(false, false)
			return nil, false // AlreadyRegistered: a live node has it
		}
		if _, again := f.takeover(ctx, h, owner); !again {
			return h, true
		}
	}
	return nil, false
}

// refused reports whether nothing listens at a node's mesh address (a
// connection there is refused): its process is gone, whatever its
// heartbeat still says, as Place finds when it dials an owner.
func (f *Fleet) refused(ctx context.Context, addr string) bool {
	c, err := f.dialer().DialContext(ctx, "tcp", addr)
	if err != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	c.Close()
	return false
}

// Reach implements tunnelproxy.Directory.
func (f *Fleet) Reach(ctx context.Context, serverUUID, clientUUID, clientName, identity string) (*relay.MeshLink, handshake.TunnelProxyError) {
	owner, err := f.rdb.Get(ctx, f.tpKey(serverUUID)).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, handshake.TunnelProxyErrorServerNotFound
	case err != nil:
		f.storeDown(err)
		return nil, handshake.TunnelProxyErrorInternalServerError
	}
	node, addr := parseValue(owner)
	if node == f.cfg.NodeID || !f.aliveNow(ctx, node) {
		return nil, handshake.TunnelProxyErrorServerNotFound // a stale registration
	}
	now, rid := time.Now().Unix(), newRequestID()
	clientName, identity = wireString(clientName), wireString(identity) // as the node reads them
	mac := f.sign("Mesh.Reach", f.cfg.NodeID, now, serverUUID, clientUUID, clientName, identity, rid)
	req := handshake.AppendRequest(nil, 1, "Mesh.Reach",
		handshake.Str("clientName", clientName), handshake.Str("clientUuid", clientUUID),
		handshake.Str("identity", identity), handshake.Str("mac", hex.EncodeToString(mac)),
		handshake.Str("node", f.cfg.NodeID), handshake.Str("rid", rid), handshake.Str("serverUuid", serverUUID), handshake.Int("time", now))
	sock, line, err := f.request(ctx, node, addr, req)
	if errors.Is(err, syscall.ECONNREFUSED) {
		// Nothing listens at the node's address: its process is gone
		// (its heartbeat has not expired yet), and the server with it.
		return nil, handshake.TunnelProxyErrorServerNotFound
	}
	if err != nil {
		f.dialFailed(node)
		f.log.Warn("fleet: TunnelProxy server's node unreachable", "node", node, "addr", addr, "error", err)
		return nil, handshake.TunnelProxyErrorInternalServerError
	}
	var ans struct {
		Params struct {
			Error string `json:"tunnelProxyError"`
		} `json:"params"`
	}
	if json.Unmarshal(line, &ans) != nil {
		sock.Close()
		return nil, handshake.TunnelProxyErrorInternalServerError
	}
	if e, _ := handshake.ParseTunnelProxyError(ans.Params.Error); e != handshake.TunnelProxyErrorNoError {
		sock.Close()
		return nil, e
	}
	f.placed[outRemote].Inc()
	return f.link(sock, node, addr), handshake.TunnelProxyErrorNoError
}

// handleReach is the server's node's side: Mesh.Reach, a RegisterClient
// for another node's client, handed to the TunnelProxy service
// (Config.Reach).
func (f *Fleet) handleReach(c relay.Conn, req *handshake.Request) {
	if !f.verify(c, req, reachFields...) {
		return
	}
	node, _ := req.Param("node")
	id, _ := req.Param("identity")
	c.MarkMesh(node, "via "+node+" ("+id+")")
	f.cfg.Reach(c, req)
}
