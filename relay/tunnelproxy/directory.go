package tunnelproxy

import (
	"context"
	"time"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/reason"
)

// Directory makes TunnelProxy servers reachable across a fleet of relays
// (package relay/fleet implements it; cmd/meetpoint wires it): a server
// registered on one node is reachable by clients on any node, and its
// uuid is taken fleet-wide.
type Directory interface {
	// Register takes server uuid for this node, fleet-wide; it may block
	// (ctx bounds it). ok false: another live node has registered it.
	// The lease is released when the server goes.
	Register(ctx context.Context, uuid string) (lease relay.Lease, ok bool)
	// Reach registers a client with the node where server uuid is, over a
	// mesh link (ctx bounds it): the link, past its RegisterClient reply,
	// or that node's refusal (ServerNotFound when no node has the server).
	Reach(ctx context.Context, serverUUID, clientUUID, clientName, identity string) (*relay.MeshLink, handshake.TunnelProxyError)
}

// SetDirectory makes s fleet-wide through d. Call it before the server
// starts.
func (s *Service) SetDirectory(d Directory) {
	s.dir = d
	s.srv.AddMeshSessions(s)
}

// meshCount adds delta to the clients here that node's clients reach
// over mesh links.
func (s *Service) meshCount(node string, delta int) {
	s.meshMu.Lock()
	if s.meshClients == nil {
		s.meshClients = make(map[string]int)
	}
	if s.meshClients[node] += delta; s.meshClients[node] <= 0 {
		delete(s.meshClients, node)
	}
	s.meshMu.Unlock()
}

// MeshPeers implements relay.MeshSessions: clients reached from other
// nodes, by node. (Clients of this node bridged to a server elsewhere are
// the engine's tunnels: counted there.)
func (s *Service) MeshPeers(into map[string]int) {
	s.meshMu.Lock()
	for n, c := range s.meshClients {
		into[n] += c
	}
	s.meshMu.Unlock()
}

// EndMesh implements relay.MeshSessions: the clients that node's clients
// reach over mesh links are dropped for r (their servers are told
// ClientDisconnected), on each hub's loop.
func (s *Service) EndMesh(node string, r reason.Reason, _ string) int {
	s.meshMu.Lock()
	n := s.meshClients[node]
	s.meshMu.Unlock()
	if n == 0 {
		return 0
	}
	for _, h := range s.reg.all() {
		h.l.Do(func() {
			defer h.contain(nil)          // dropping and telling the server: the event path's work, under its barrier too
			for _, c := range h.clients { // (deleting while ranging is safe)
				if c.node == node {
					h.dropClient(c, true, r)
				}
			}
			kept := h.pending[:0]
			for _, c := range h.pending { // not started: the server knows nothing of them
				if c.node == node {
					h.dropClient(c, false, r)
				} else {
					kept = append(kept, c)
				}
			}
			h.pending = kept
		})
	}
	return n
}

// dirTimeout bounds a directory call.
const dirTimeout = 5 * time.Second

// RegisterMeshClient is TunnelProxy.RegisterClient for a mesh link from
// another node (its Mesh.Reach request, whose params are RegisterClient's):
// that node checked the access rules for its client.
func (s *Service) RegisterMeshClient(c relay.Conn, req *handshake.Request) {
	s.registerClientAs(c, req, true)
}

// dirServer is a server registration waiting for the directory's answer.
type dirServer struct{ hubServer }

// Ready implements relay.Target: the directory is asked off the relay's
// goroutines; a uuid taken on another node is refused as
// AlreadyRegistered, exactly as on one node.
func (t dirServer) Ready(ho *relay.Handover) {
	go func() {
		h := t.h
		ctx, cancel := context.WithTimeout(context.Background(), dirTimeout)
		lease, ok := h.s.dir.Register(ctx, h.uuid)
		cancel()
		if !ok {
			h.s.reg.removeHub(h)
			h.l.Do(func() { h.close(reason.PartnerClosed) }) // clients that came meanwhile
			h.s.m.refused.Inc()
			dismissWith(h.s, ho, refusal(t.replyID, true, handshake.TunnelProxyErrorAlreadyRegistered))
			return
		}
		h.s.reg.setLease(h, lease)
		h.s.m.registered.Inc()
		t.hubServer.Ready(ho)
	}()
}

// dirClient is a client of a server this node does not have.
type dirClient struct {
	s              *Service
	replyID        int
	server, uuid   string
	name, identity string
}

// Ready implements relay.Target: the client is bridged to the node where
// its server is, or refused with that node's answer.
func (t dirClient) Ready(ho *relay.Handover) {
	if ho.Failed {
		t.s.srv.Dismiss(ho, ho.Reason, 0, "")
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), dirTimeout)
		link, e := t.s.dir.Reach(ctx, t.server, t.uuid, t.name, t.identity)
		cancel()
		if link == nil {
			t.s.m.refused.Inc()
			dismissWith(t.s, ho, refusal(t.replyID, false, e))
			return
		}
		t.s.m.registered.Inc()
		t.s.m.remote.Inc()
		reply := handshake.AppendSuccess(nil, t.replyID, handshake.Str("tunnelProxyError", handshake.TunnelProxyErrorNoError.String()))
		t.s.srv.Bridge(ho, link, reply)
	}()
}

// dismissWith ends a handed-over registration with a last reply.
func dismissWith(s *Service, ho *relay.Handover, reply []byte) {
	if ho.WS != nil {
		reply = handshake.AppendFrame(nil, ws.OpText, true, reply)
	}
	ho.Out = append(ho.Out, reply...)
	s.srv.Dismiss(ho, reason.RPC, ws.StatusPolicyViolation, "TunnelProxy registration refused")
}
