package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/fleet"
)

// The fleet peers (meetpoint bench --fleet URL|local): two relays in this
// process joined to one Redis, compared with the single relay. "fleet
// same-node" meets both ends on node A (the cost of the fleet's Redis
// round trip); "fleet cross-node" puts the first end on node A and the
// second on node B, which tunnels it to A over a mesh link (two relay
// hops).

// fleetEnv is the bench's fleet: two nodes and the Redis they share.
type fleetEnv struct {
	nodes [2]*relay.Server
	fl    [2]*fleet.Fleet
	hosts [2][]string // listen addresses per node
}

// startFleet starts the two fleet nodes on url ("local": a redis-server
// of its own, in the run's temporary folder).
func (e *Env) startFleet() error {
	url := e.opt.Fleet
	if url == "local" {
		addr, err := e.startRedis()
		if err != nil {
			return err
		}
		url = "redis://" + addr + "/0"
	}
	key := []byte("meetpoint bench mesh key, 32 B..")
	fe := &fleetEnv{}
	for i := range fe.nodes {
		rdb, err := fleet.ParseURL(url)
		if err != nil {
			return err
		}
		cfg := e.inProcessConfig(relayListen(2))
		srv, err := relay.NewServer(cfg)
		if err != nil {
			return err
		}
		fc := fleet.Config{Redis: rdb, NodeID: fmt.Sprintf("bench-%s-%c", e.runID, 'a'+i), MeshKey: key, Logger: cfg.Logger}
		if e.certs != nil {
			fc.CertFingerprint = e.certs.Fingerprint // mesh links over TLS, pinned (--mesh-tls)
		}
		f, err := fleet.New(fc, srv)
		if err != nil {
			return err
		}
		if err := srv.Start(); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = f.Start(ctx)
		cancel()
		if err != nil {
			srv.Close()
			return fmt.Errorf("fleet: %w", err)
		}
		fe.nodes[i], fe.fl[i] = srv, f
		for _, a := range srv.Addrs() {
			fe.hosts[i] = append(fe.hosts[i], a.String())
		}
	}
	e.fleet = fe
	e.note("fleet: two relays in this process on %s (node A and node B); each fleet tunnel costs its node one Redis round trip (the claim script) and one asynchronous release", redactURL(url))
	return nil
}

// startRedis runs a throw-away redis-server for --fleet local.
func (e *Env) startRedis() (string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", errors.New("fleet local: no redis-server (apt-get install redis-server), or give --fleet redis://HOST:PORT/DB")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := filepath.Join(e.tmp, "redis")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	e.procs = append(e.procs, cmd)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "", errors.New("fleet local: redis-server did not start")
}

// redactURL is u without its password, for the report.
func redactURL(u string) string {
	if pu, err := url.Parse(u); err == nil {
		return pu.Redacted()
	}
	return "(unparsable URL)"
}

// fleetPair opens one tunnel through the fleet: both ends on node A
// (cross false) or the first on A and the second on B.
func (e *Env) fleetPair(ctx context.Context, transport string, cross bool) (End, End, error) {
	fe := e.fleet
	n := int(e.rr.Add(1))
	hostA := fe.hosts[0][n%len(fe.hosts[0])]
	hostB := hostA
	if cross {
		hostB = fe.hosts[1][n%len(fe.hosts[1])]
	}
	nonce := fmt.Sprintf("%s-f%d", e.runID, e.nonce.Add(1))
	ta, tb := transport, transport
	if transport == "mixed" {
		ta, tb = "tcp", "ws"
	}
	return dialPairOn(ctx, hostA, hostB, ta, tb, nonce)
}

func (fe *fleetEnv) close() {
	for i := range fe.nodes {
		if fe.fl[i] != nil {
			fe.fl[i].Close()
		}
		if fe.nodes[i] != nil {
			fe.nodes[i].Close()
		}
	}
}
