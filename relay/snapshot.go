package relay

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"time"
)

// ClientInfo describes one connection for monitors.
type ClientInfo struct {
	ID            uint64    `json:"id"`
	Address       string    `json:"address"`
	Transport     string    `json:"transport"` // "tcp", "websocket" or "" before sniffing
	Connected     time.Time `json:"connected"`
	Authenticated bool      `json:"authenticated"`
	Tunnel        bool      `json:"tunnelConnected"`
	Subscribed    bool      `json:"subscribed,omitempty"` // an events subscriber: authenticated, waiting for no partner
	Name          string    `json:"name"`
	UUID          string    `json:"uuid"`
	TokenHash     string    `json:"tokenHash,omitempty"` // TokenHash of the token; never the token
	Identity      string    `json:"identity,omitempty"`  // Identity.String(), once authenticated
	RxBytes       uint64    `json:"rxDataCount"`
	TxBytes       uint64    `json:"txDataCount"`
}

// TunnelInfo describes one active tunnel.
type TunnelInfo struct {
	ID      uint64     `json:"id"`
	Started time.Time  `json:"started"`
	Splice  bool       `json:"splice"`
	A, B    ClientInfo `json:"-"`
	// BytesAB counts bytes read from A (sent toward B), BytesBA the reverse.
	BytesAB uint64 `json:"bytesAtoB"`
	BytesBA uint64 `json:"bytesBtoA"`
}

// Snapshot is a consistent-enough view of the server for monitors: each
// entry is read under its own lock (TunnelProxy hubs on their loop),
// counters are live.
type Snapshot struct {
	Name    string       `json:"serverName"`
	Clients []ClientInfo `json:"clients"` // connections without a tunnel
	Tunnels []TunnelInfo `json:"tunnels"`
	// TunnelProxy servers with their clients.
	TPServers []TPServerInfo `json:"tunnelProxyServers"`
	// Fleet is the node's fleet (nil on a single node).
	Fleet *FleetInfo `json:"fleet,omitempty"`
}

// FleetInfo describes the fleet a node belongs to.
type FleetInfo struct {
	Node      string      `json:"node"`
	Advertise string      `json:"advertise"`
	Available bool        `json:"available"` // the fleet's store answers
	Nodes     []FleetNode `json:"nodes"`
	MeshLinks uint64      `json:"meshLinks"` // tunnels of this node that cross the mesh (links dialled and accepted)
}

// FleetNode is one node of the fleet's node set.
type FleetNode struct {
	ID      string    `json:"id"`
	Addr    string    `json:"addr"`
	Started time.Time `json:"started"`
	Seen    time.Time `json:"seen"`
	Tunnels uint64    `json:"tunnels"`
}

// TPServerInfo describes a registered TunnelProxy server.
type TPServerInfo struct {
	UUID    string         `json:"uuid"`
	Name    string         `json:"name"`
	Address string         `json:"address"`
	RxBytes uint64         `json:"rxDataCount"` // bytes read from the server
	TxBytes uint64         `json:"txDataCount"` // bytes written to the server
	Clients []TPClientInfo `json:"clients"`
}

// TPClientInfo describes one client of a TunnelProxy server.
type TPClientInfo struct {
	SocketAddress uint16 `json:"socketAddress"`
	UUID          string `json:"uuid"`
	Name          string `json:"name"`
	Address       string `json:"address"`
	RxBytes       uint64 `json:"rxDataCount"`
	TxBytes       uint64 `json:"txDataCount"`
}

// TokenHash returns a short, non-reversible tag of a token for logs and
// monitors: the first 8 hex digits of its SHA-256.
func TokenHash(token string) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:4])
}

// Snapshot lists connections and tunnels. Cost: O(connections + tunnels),
// allocating the result.
func (s *Server) Snapshot() Snapshot {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	tuns := make([]*tunnel, 0, len(s.tunnels))
	for t := range s.tunnels {
		tuns = append(tuns, t)
	}
	s.mu.Unlock()
	snap := Snapshot{Name: s.cfg.Name, Clients: make([]ClientInfo, 0, len(conns)), Tunnels: make([]TunnelInfo, 0, len(tuns))}
	for _, c := range conns {
		snap.Clients = append(snap.Clients, c.info())
	}
	for _, t := range tuns {
		ab, ba, tag := t.ab.Load(), t.ba.Load(), t.tokenHash()
		ti := TunnelInfo{ID: t.id, Started: time.Unix(0, t.start), Splice: t.pair.Splice,
			A: t.infoA.clientInfo(tag, ab, ba), B: t.infoB.clientInfo(tag, ba, ab),
			BytesAB: ab, BytesBA: ba}
		snap.Tunnels = append(snap.Tunnels, ti)
	}
	for _, r := range s.reporters {
		r.Report(&snap)
	}
	sort.Slice(snap.Clients, func(i, j int) bool { return snap.Clients[i].ID < snap.Clients[j].ID })
	sort.Slice(snap.Tunnels, func(i, j int) bool { return snap.Tunnels[i].ID < snap.Tunnels[j].ID })
	return snap
}

func (c *conn) info() ClientInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.infoLocked()
}

// infoLocked is info with mu held.
func (c *conn) infoLocked() ClientInfo {
	a := c.view()
	ci := ClientInfo{ID: c.id, Address: c.peer.String(), Connected: c.created, Name: a.name, UUID: a.uuid,
		TokenHash: TokenHash(a.key.Token)}
	switch transportKind(c.tk.kind.Load()) {
	case kindWS:
		ci.Transport = "websocket"
	case kindTCP:
		ci.Transport = "tcp"
	}
	st := state(c.st.Load())
	ci.Authenticated = st == stPlacing || st == stWaiting || st == stClaimed || st == stSubscribed
	ci.Subscribed = st == stSubscribed
	if a.authed {
		ci.Identity = c.identity().String()
	}
	return ci
}
