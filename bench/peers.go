package bench

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/auth"
	"github.com/meetpoint/meetpoint/relay/certs"
)

// End is one end of a tunnel: a *client.Tunnel for meetpoint, a TCP
// connection for the other peers.
type End interface {
	io.ReadWriteCloser
	SetDeadline(time.Time) error
}

// Peer is one way to join two connections: the direct loopback connection,
// a forwarding proxy (haproxy, socat) or the meetpoint relay with a given
// transport pair.
type Peer struct {
	Name      string // direct, haproxy, socat, meetpoint
	Transport string // tcp, ws or mixed (tcp↔ws); tcp for the others
	PID       int    // the forwarding process (0: none, e.g. direct)
	env       *Env
	front     string // haproxy/socat/direct: address clients dial
}

// Label is the row name: "meetpoint tcp", "haproxy", ...
func (p *Peer) Label() string {
	switch p.Name {
	case "meetpoint":
		return "meetpoint " + p.Transport
	case "fleet-same":
		return "fleet same-node " + p.Transport
	case "fleet-cross":
		return "fleet cross-node " + p.Transport
	case "haproxy-tls":
		return "haproxy tls"
	}
	return p.Name
}

// Pair opens one tunnel and returns its two ends.
func (p *Peer) Pair(ctx context.Context) (a, b End, err error) {
	switch p.Name {
	case "meetpoint":
		return p.env.meetpointPair(ctx, p.Transport)
	case "fleet-same", "fleet-cross":
		return p.env.fleetPair(ctx, p.Transport, p.Name == "fleet-cross")
	}
	if p.Name == "haproxy-tls" {
		return p.env.backTLS.pair(ctx, p.front)
	}
	return p.env.back.pair(ctx, p.front)
}

// Env holds the peers of one run: the harness's backend listener, the
// haproxy and socat processes and the relay (in process, spawned or
// external).
type Env struct {
	opt        *Options
	back       *backend
	procs      []*exec.Cmd
	tmp        string
	Relay      *relay.Server // in-process relay, or nil
	child      *child        // spawned relay, or nil
	RelayPID   int
	relayURL   []string // host:port of the relay's listeners
	rr         atomic.Uint64
	nonce      atomic.Uint64
	runID      string
	dir        string // results folder of the run, or ""
	notes      []string
	mu         sync.Mutex
	cache      map[string]*Peer // started reference peers (nil: skipped)
	fleet      *fleetEnv        // --fleet: two relays on one Redis, or nil
	certs      *certs.Store     // tls, wss transports: the run's certificate, or nil
	tlsCert    string           // its PEM files, for a spawned relay
	tlsKey     string
	backTLS    *backend // tls, wss transports: the backend behind haproxy tls, or nil
	haproxyPEM string   // tls, wss transports: the run's certificate and key for haproxy tls
}

// newEnv starts the backend listener, the relay and the reference peers.
func newEnv(opt *Options) (*Env, error) {
	e := &Env{opt: opt, runID: fmt.Sprintf("%x", time.Now().UnixNano())}
	var err error
	if e.back, err = newBackend(); err != nil {
		return nil, err
	}
	e.tmp, err = os.MkdirTemp("", "meetpoint-bench-")
	if err != nil {
		e.Close()
		return nil, err
	}
	if wantsTLS(opt) {
		if err := e.startTLS(); err != nil {
			e.Close()
			return nil, err
		}
	}
	if err := e.startRelay(); err != nil {
		e.Close()
		return nil, err
	}
	if opt.Fleet != "" {
		if err := e.startFleet(); err != nil {
			e.Close()
			return nil, err
		}
	}
	return e, nil
}

// relayConfig is the relay configuration used by the in-process and
// spawned relays: defaults, dummy authentication, no per-address limits.
func relayConfig(listen []string) relay.Config {
	cfg := relay.DefaultConfig()
	cfg.Listen = listen
	cfg.Auth = auth.Dummy{}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Limits.MaxConnsPerIP = 0
	cfg.Limits.ConnRatePerIP = 0
	cfg.AloneTimeout = 30 * time.Second
	cfg.InactiveTimeout = 30 * time.Second
	return cfg
}

// inProcessConfig is relayConfig for a relay in this process: with the
// run's certificate when a TLS transport is measured.
func (e *Env) inProcessConfig(listen []string) relay.Config {
	cfg := relayConfig(listen)
	if e.certs != nil {
		cfg.TLS = e.certs.TLSConfig()
	}
	return cfg
}

// relayListen is where the harness's relays listen: several loopback
// addresses so that many connections do not share one 4-tuple space.
func relayListen(n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("127.0.0.%d:0", i))
	}
	return out
}

func (e *Env) startRelay() error {
	switch {
	case e.opt.RelayURL != "":
		for _, u := range strings.Split(e.opt.RelayURL, ",") {
			pu, err := url.Parse(u)
			if err != nil || pu.Host == "" {
				return fmt.Errorf("relay-url %q: want tcp://host:port or ws://host:port/", u)
			}
			e.relayURL = append(e.relayURL, pu.Host)
		}
		e.RelayPID = e.opt.RelayPID
		e.note("meetpoint: external relay %s (pid %d)", e.opt.RelayURL, e.opt.RelayPID)
	case e.opt.SpawnRelay:
		c, err := spawnRelay(e.opt, 4, e.tlsCert, e.tlsKey)
		if err != nil {
			return err
		}
		e.child, e.RelayPID, e.relayURL = c, c.cmd.Process.Pid, c.addrs
		e.note("meetpoint: relay spawned as a separate process (pid %d)", e.RelayPID)
	default:
		srv, err := relay.NewServer(e.inProcessConfig(relayListen(4)))
		if err != nil {
			return err
		}
		if err := srv.Start(); err != nil {
			return err
		}
		e.Relay, e.RelayPID = srv, os.Getpid()
		for _, a := range srv.Addrs() {
			e.relayURL = append(e.relayURL, a.String())
		}
		e.note("meetpoint: relay in process (figures include the harness's own client work)")
	}
	return nil
}

func (e *Env) note(f string, args ...any) { e.notes = append(e.notes, fmt.Sprintf(f, args...)) }

// Peers returns the peers to compare, in table order. Missing reference
// programs are skipped with a note (once).
func (e *Env) Peers(transports ...string) []*Peer {
	var out []*Peer
	want := func(n string) bool {
		if len(e.opt.Peers) == 0 {
			return true
		}
		for _, p := range e.opt.Peers {
			if p == n {
				return true
			}
		}
		return false
	}
	if want("direct") {
		out = append(out, &Peer{Name: "direct", Transport: "tcp", env: e, front: e.back.addr})
	}
	if want("haproxy") {
		if p := e.haproxy(); p != nil {
			out = append(out, p)
		}
		if e.backTLS != nil && slices.ContainsFunc(transports, isTLS) {
			if p := e.haproxyTLS(); p != nil {
				out = append(out, p)
			}
		}
	}
	if want("socat") {
		if p := e.socat(); p != nil {
			out = append(out, p)
		}
	}
	if want("meetpoint") {
		for _, t := range transports {
			if isTLS(t) && e.Relay == nil && e.child == nil {
				e.skip("meetpoint "+t, "the harness gives TLS only to the relays it starts (not --relay-url)")
				continue
			}
			out = append(out, &Peer{Name: "meetpoint", Transport: t, PID: e.RelayPID, env: e})
		}
	}
	if e.fleet != nil && want("fleet") {
		for _, t := range transports {
			out = append(out, &Peer{Name: "fleet-same", Transport: t, PID: os.Getpid(), env: e},
				&Peer{Name: "fleet-cross", Transport: t, PID: os.Getpid(), env: e})
		}
	}
	return out
}

// haproxy starts haproxy once per Env (tcp mode, splice) in front of the
// backend listener.
func (e *Env) haproxy() *Peer {
	return e.startHAProxy("haproxy", func(front string) (string, string) {
		return fmt.Sprintf(`global
    maxconn 7900
    nbthread %d
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind %s
    maxconn 7900
    default_backend be
backend be
    server s1 %s maxconn 7900
`, runtime.NumCPU(), front, e.back.addr), fmt.Sprintf("tcp mode, option splice-auto, nbthread %d, front %s → backend %s", runtime.NumCPU(), front, e.back.addr)
	})
}

// startHAProxy starts haproxy once per Env under name, with the
// configuration config returns for the front address (and a description
// for the notes).
func (e *Env) startHAProxy(name string, config func(front string) (cfg, what string)) *Peer {
	if p, ok := e.peerCache(name); ok {
		return p
	}
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		e.skip(name, "not installed (make bench-deps)")
		return nil
	}
	port, err := freePort("127.0.0.1")
	if err != nil {
		e.skip(name, err.Error())
		return nil
	}
	front := fmt.Sprintf("127.0.0.1:%d", port)
	cfg, what := config(front)
	path := filepath.Join(e.tmp, name+".cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		e.skip(name, err.Error())
		return nil
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stderr = &tailWriter{max: 4096}
	if err := pinCommand(cmd, e.opt.PeerCPUs); err != nil {
		e.skip(name, err.Error())
		return nil
	}
	if err := cmd.Start(); err != nil {
		e.skip(name, err.Error())
		return nil
	}
	e.procs = append(e.procs, cmd)
	if err := waitListening(front, 5*time.Second); err != nil {
		e.skip(name, fmt.Sprintf("did not start: %v %s", err, cmd.Stderr))
		return nil
	}
	p := &Peer{Name: name, Transport: "tcp", PID: cmd.Process.Pid, env: e, front: front}
	e.setPeer(name, p)
	e.note("%s: %s, %s", name, version(bin, "-v"), what)
	return p
}

// socat starts socat once per Env (fork per connection, nodelay).
func (e *Env) socat() *Peer {
	if p, ok := e.peerCache("socat"); ok {
		return p
	}
	bin, err := exec.LookPath("socat")
	if err != nil {
		e.skip("socat", "not installed (make bench-deps)")
		return nil
	}
	port, err := freePort("127.0.0.1")
	if err != nil {
		e.skip("socat", err.Error())
		return nil
	}
	front := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr,backlog=4096,nodelay", port),
		"TCP:"+e.back.addr+",nodelay")
	cmd.Stderr = &tailWriter{max: 4096}
	if err := pinCommand(cmd, e.opt.PeerCPUs); err != nil {
		e.skip("socat", err.Error())
		return nil
	}
	if err := cmd.Start(); err != nil {
		e.skip("socat", err.Error())
		return nil
	}
	e.procs = append(e.procs, cmd)
	if err := waitListening(front, 5*time.Second); err != nil {
		e.skip("socat", fmt.Sprintf("did not start: %v", err))
		return nil
	}
	p := &Peer{Name: "socat", Transport: "tcp", PID: cmd.Process.Pid, env: e, front: front}
	e.setPeer("socat", p)
	e.note("socat: %s, fork per connection, nodelay, front %s → backend %s", version(bin, "-V"), front, e.back.addr)
	return p
}

func (e *Env) peerCache(name string) (*Peer, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.cache[name]
	return p, ok
}

func (e *Env) setPeer(name string, p *Peer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cache == nil {
		e.cache = map[string]*Peer{}
	}
	e.cache[name] = p
}

// skip records once that a peer is left out, and prints it.
func (e *Env) skip(name, why string) {
	e.setPeer(name, nil)
	msg := fmt.Sprintf("%s: skipped: %s", name, why)
	e.notes = append(e.notes, msg)
	if e.opt.Stderr != nil {
		fmt.Fprintf(e.opt.Stderr, "%snote: %s\n", lineStart(e.opt.Stderr), msg)
	}
}

// version returns the first line of "bin flag".
func version(bin, flag string) string {
	out, _ := exec.Command(bin, flag).CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "socat by") {
			return l
		}
	}
	return filepath.Base(bin)
}

// Close stops everything the Env started.
func (e *Env) Close() {
	for _, c := range e.procs {
		if c.Process != nil {
			c.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(2 * time.Second):
				c.Process.Kill()
				<-done
			}
		}
	}
	if e.Relay != nil {
		e.Relay.Close()
	}
	if e.fleet != nil {
		e.fleet.close()
	}
	if e.child != nil {
		e.child.close()
	}
	if e.back != nil {
		e.back.ln.Close()
	}
	if e.certs != nil {
		e.certs.Close()
	}
	if e.backTLS != nil {
		e.backTLS.ln.Close()
	}
	if e.tmp != "" {
		os.RemoveAll(e.tmp)
	}
}

// relayHost returns the next relay listener, round robin.
func (e *Env) relayHost() string {
	return e.relayURL[int(e.rr.Add(1))%len(e.relayURL)]
}

// meetpointPair dials both ends of one tunnel concurrently (same token and
// a fresh nonce) and waits for both to be paired.
func (e *Env) meetpointPair(ctx context.Context, transport string) (End, End, error) {
	host := e.relayHost()
	nonce := e.nextNonce()
	ta, tb := transport, transport
	if transport == "mixed" {
		ta, tb = "tcp", "ws"
	}
	return dialPair(ctx, host, ta, tb, nonce)
}

// nextNonce is a fresh nonce for one tunnel of this run.
func (e *Env) nextNonce() string { return fmt.Sprintf("%s-%d", e.runID, e.nonce.Add(1)) }

// relayURLFor builds the client URL for a transport.
func relayURLFor(host, transport string) string {
	switch transport {
	case "ws", "wsbin":
		return "ws://" + host + "/"
	case "wss":
		return "wss://" + host + "/"
	case "tls":
		return "tls://" + host
	}
	return "tcp://" + host
}

// sourceSeq spreads client connections to a loopback relay over the source
// addresses 127.0.0.1-127.0.0.8, so that many tunnels do not exhaust one
// address's ports.
var sourceSeq atomic.Uint32

// sourceFor picks the next source address for a connection to host, or nil
// when host is not IPv4 loopback.
func sourceFor(host string) net.IP {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		return nil
	}
	if ip := net.ParseIP(h); ip == nil || ip.To4() == nil || !ip.IsLoopback() {
		return nil
	}
	return net.IPv4(127, 0, 0, byte(1+sourceSeq.Add(1)%8))
}

// dialPair dials two clients that meet on nonce.
func dialPair(ctx context.Context, host, ta, tb, nonce string) (End, End, error) {
	return dialPairOn(ctx, host, host, ta, tb, nonce)
}

// dialPairOn dials a (transport ta) on hostA and b on hostB, meeting on
// nonce: b first, so that with a fleet b's node owns the pair.
func dialPairOn(ctx context.Context, hostA, hostB, ta, tb, nonce string) (End, End, error) {
	host := hostB
	type res struct {
		t   *client.Tunnel
		err error
	}
	ch := make(chan res, 1)
	go func() {
		t, err := client.Dial(ctx, client.Options{URL: relayURLFor(host, tb), Token: "bench", Nonce: nonce, Name: "b", Timeout: 20 * time.Second,
			LocalIP: sourceFor(host), TLSConfig: clientTLS.Load(), Binary: tb == "wsbin"})
		ch <- res{t, err}
	}()
	a, errA := client.Dial(ctx, client.Options{URL: relayURLFor(hostA, ta), Token: "bench", Nonce: nonce, Name: "a", Timeout: 20 * time.Second,
		LocalIP: sourceFor(hostA), TLSConfig: clientTLS.Load(), Binary: ta == "wsbin"})
	r := <-ch
	if errA != nil || r.err != nil {
		if a != nil {
			a.Close()
		}
		if r.t != nil {
			r.t.Close()
		}
		return nil, nil, errors.Join(errA, r.err)
	}
	return a, r.t, nil
}

// backend is the harness's listener behind direct, haproxy and socat: a
// dialer sends an 8-byte id first and gets back the accepted connection
// that carried it.
type backend struct {
	ln      net.Listener
	addr    string
	tls     *tls.Config // the client side when the backend serves TLS (haproxy tls), else nil
	mu      sync.Mutex
	pending map[uint64]chan net.Conn
	next    atomic.Uint64
}

func newBackend() (*backend, error) {
	ln, err := listenNoKeepAlive()
	if err != nil {
		return nil, err
	}
	b := &backend{ln: ln, addr: ln.Addr().String(), pending: map[uint64]chan net.Conn{}}
	go b.serve()
	return b, nil
}

func (b *backend) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like
			continue
		}
		go b.handshake(c)
	}
}

func (b *backend) handshake(c net.Conn) {
	var id [8]byte
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, id[:]); err != nil {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	b.mu.Lock()
	ch := b.pending[binary.BigEndian.Uint64(id[:])]
	delete(b.pending, binary.BigEndian.Uint64(id[:]))
	b.mu.Unlock()
	if ch == nil {
		c.Close()
		return
	}
	ch <- c
}

// listenNoKeepAlive listens on a loopback port for a backend; its sockets
// get no TCP keep-alive (Go's default sets four options per accepted
// socket, harness CPU that a loopback connection has no use for).
func listenNoKeepAlive() (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
}

// pair dials front and waits for the backend to accept the connection.
func (b *backend) pair(ctx context.Context, front string) (End, End, error) {
	return b.pairVia(ctx, front, func(ctx context.Context) (net.Conn, error) {
		if b.tls != nil {
			return (&tls.Dialer{Config: b.tls}).DialContext(ctx, "tcp", front)
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", front)
	})
}

// pairVia is pair with the connection to front made by dial.
func (b *backend) pairVia(ctx context.Context, front string, dial func(context.Context) (net.Conn, error)) (End, End, error) {
	id := b.next.Add(1)
	ch := make(chan net.Conn, 1)
	b.mu.Lock()
	b.pending[id] = ch
	b.mu.Unlock()
	cancel := func() {
		b.mu.Lock()
		delete(b.pending, id)
		b.mu.Unlock()
		select {
		case c := <-ch:
			c.Close()
		default:
		}
	}
	a, err := dial(ctx)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], id)
	if _, err := a.Write(buf[:]); err != nil {
		a.Close()
		cancel()
		return nil, nil, err
	}
	t := time.NewTimer(20 * time.Second)
	defer t.Stop()
	select {
	case c := <-ch:
		return a, c, nil
	case <-ctx.Done():
		a.Close()
		cancel()
		return nil, nil, ctx.Err()
	case <-t.C:
		a.Close()
		cancel()
		return nil, nil, errors.New("backend never saw the connection")
	}
}

// tailWriter keeps the last bytes written (a child's stderr).
type tailWriter struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if len(w.buf) > w.max {
		w.buf = w.buf[len(w.buf)-w.max:]
	}
	return len(p), nil
}

func (w *tailWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.buf)
}
