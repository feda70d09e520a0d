package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/logging"
	pturn "github.com/pion/turn/v5"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/turn"
)

// The turn scenario puts meetpoint's TURN beside coturn's turnserver in
// one run, each a separate process on loopback with the same TURN REST
// secret, measured by the same pion/turn clients: allocations per second
// (allocate, then close, from concurrent clients), and relayed datagrams
// per second with loss, at offered rates and flat out, through one
// allocation to a plain UDP peer. "direct" is the same sender to the same
// peer without TURN: the machine's limit for this client.

const turnSecret = "meetpoint-bench-turn-secret-0123"

// turnServer is one TURN server under test.
type turnServer struct {
	name string
	addr string // UDP
	pid  int
	stop func()
}

// startMeetpointTURN runs meetpoint's TURN in a child process.
func (e *Env) startMeetpointTURN() (*turnServer, error) {
	args := []string{"turn", "--ports", "42000-42999"}
	if e.opt.CPUProfile && e.dir != "" { // the whole scenario's profile of meetpoint's TURN
		args = append(args, "--cpuprofile", filepath.Join(e.dir, "cpu-turn-meetpoint.pprof"))
	}
	c, addr, err := startServingChild(e.opt, args...)
	if err != nil {
		return nil, fmt.Errorf("meetpoint turn: %w", err)
	}
	return &turnServer{name: "meetpoint", addr: addr, pid: c.cmd.Process.Pid, stop: c.close}, nil
}

// startCoturn runs turnserver with the same secret, or says why not.
func (e *Env) startCoturn() (*turnServer, error) {
	bin, err := exec.LookPath("turnserver")
	if err != nil {
		return nil, errors.New("no turnserver (apt-get install coturn)")
	}
	port, err := freeUDPPort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1",
		"--listening-port", strconv.Itoa(port), "--min-port", "43000", "--max-port", "43999",
		"--use-auth-secret", "--static-auth-secret", turnSecret, "--realm", "meetpoint",
		"--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers", "--no-tcp-relay",
		"--no-tcp", "--no-rfc5780", // UDP only: no second (TCP, alt) port that another test may hold
		"--log-file", "stdout", "--no-stdout-log", "--simple-log", "--pidfile", e.tmp+"/coturn.pid")
	stderr := &tailWriter{max: 4096}
	cmd.Stdout, cmd.Stderr = io.Discard, stderr
	if err := pinCommand(cmd, e.opt.PeerCPUs); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ts := &turnServer{name: "coturn", addr: fmt.Sprintf("127.0.0.1:%d", port), pid: cmd.Process.Pid,
		stop: func() { cmd.Process.Kill(); cmd.Wait() }}
	// Ready once it answers a STUN binding.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := turnClient(ts.addr, "probe"); err == nil {
			_, err = c.SendBindingRequest()
			c.Close()
			if err == nil {
				return ts, nil
			}
		}
		if time.Now().After(deadline) {
			ts.stop()
			return nil, fmt.Errorf("turnserver did not answer on %s: %s", ts.addr, strings.TrimSpace(stderr.String()))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func freeUDPPort() (int, error) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port, nil
}

// turnClient is a pion TURN client of server with REST credentials for
// user; Close closes its socket too.
type turnConn struct {
	*pturn.Client
	conn net.PacketConn
}

func (c *turnConn) Close() { c.Client.Close(); c.conn.Close() }

func turnClient(server, user string) (*turnConn, error) {
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u, p := turn.Credentials([]byte(turnSecret), user, time.Hour, time.Now())
	lf := logging.NewDefaultLoggerFactory()
	lf.Writer = io.Discard
	c, err := pturn.NewClient(&pturn.ClientConfig{STUNServerAddr: server, TURNServerAddr: server, Conn: conn,
		Username: u, Password: p, Realm: "meetpoint", LoggerFactory: lf, RTO: 500 * time.Millisecond})
	if err == nil {
		err = c.Listen()
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &turnConn{Client: c, conn: conn}, nil
}

// allocRate allocates and closes n allocations from conc clients at a
// time; it returns allocations per second and failures.
func allocRate(ctx context.Context, server string, n, conc int) (float64, int64) {
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); ctx.Err() == nil && i <= int64(n); i = next.Add(1) {
				c, err := turnClient(server, fmt.Sprintf("bench%d", i%8)) // 8 users: under the per-user quota
				if err != nil {
					failed.Add(1)
					continue
				}
				rc, err := c.Allocate()
				if err != nil {
					failed.Add(1)
				} else {
					rc.Close()
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	return float64(int64(n)-failed.Load()) / time.Since(start).Seconds(), failed.Load()
}

// relayRate sends datagrams of size bytes at pps per second (0: flat out)
// for d through an allocation on server (server "": straight to the peer)
// and returns what the peer received per second and the loss.
func relayRate(ctx context.Context, server string, size, pps int, d time.Duration) (recvPPS, loss float64, err error) {
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer peer.Close()
	if uc, ok := peer.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(4 << 20)
	}
	var send net.PacketConn
	if server == "" {
		if send, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			return 0, 0, err
		}
		defer send.Close()
	} else {
		c, err := turnClient(server, "relay")
		if err != nil {
			return 0, 0, err
		}
		defer c.Close()
		rc, err := c.Allocate()
		if err != nil {
			return 0, 0, fmt.Errorf("allocate on %s: %v", server, err)
		}
		defer rc.Close()
		send = rc
		// The permission (and channel) first: one datagram until it arrives.
		buf := make([]byte, 64)
		for i := 0; ; i++ {
			_, _ = rc.WriteTo([]byte("hello"), peer.LocalAddr())
			_ = peer.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, _, err := peer.ReadFrom(buf); err == nil {
				break
			}
			if i == 25 {
				return 0, 0, errors.New("no datagram through the allocation")
			}
		}
	}
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			_ = peer.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, _, err := peer.ReadFrom(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	msg := make([]byte, size)
	var sent int64
	start := time.Now()
	for time.Since(start) < d && ctx.Err() == nil {
		if pps > 0 { // pace in 1 ms steps
			due := int64(time.Since(start).Seconds() * float64(pps))
			for sent < due {
				_, _ = send.WriteTo(msg, peer.LocalAddr())
				sent++
			}
			time.Sleep(time.Millisecond)
			continue
		}
		_, _ = send.WriteTo(msg, peer.LocalAddr())
		sent++
	}
	el := time.Since(start)
	<-done
	if sent == 0 {
		return 0, 0, errors.New("nothing sent")
	}
	return float64(got.Load()) / el.Seconds(), 100 * float64(sent-got.Load()) / float64(sent), nil
}

func runTURN(ctx context.Context, e *Env) (*Table, error) {
	d := max(e.opt.Duration, 300*time.Millisecond)
	allocN, rates := 400, []int{10000, 40000, 0}
	if d < time.Second { // tiny (tests): no flat-out row, which would take both cores from the rest of the suite
		allocN, rates = 40, []int{10000, 40000}
	}
	t := &Table{Scenario: "turn",
		Title:  fmt.Sprintf("turn: meetpoint's TURN beside coturn (pion clients, 200 B datagrams, %v per row)", d),
		Params: []string{"offered"},
		Columns: []Column{{"allocs", "allocations/s", "%.0f"}, {"pps", "relayed datagrams/s", "%.0f"},
			{"loss", "loss %", "%.2f"}, {"rss", "server RSS MiB", "%.1f"}},
		Notes: []string{"Each server is its own process on loopback with the same TURN REST secret; allocations/s: 400 (tiny: 40) allocate+close " +
			"from 8 concurrent clients; relayed: one allocation, the client's datagrams to a plain UDP peer (send indications or " +
			"ChannelData, as pion's client chooses). The sender is one pion client, on the same 2 cores: the rows compare servers, " +
			"the direct row is this client's ceiling."},
	}
	servers := []*turnServer{{name: "direct"}}
	if m, err := e.startMeetpointTURN(); err != nil {
		return nil, err
	} else {
		defer m.stop()
		servers = append(servers, m)
	}
	if c, err := e.startCoturn(); err != nil {
		e.note("coturn: skipped: %v", err)
	} else {
		defer c.stop()
		out, _ := exec.Command("turnserver", "--version").CombinedOutput()
		version, _, _ := strings.Cut(string(out), "\n")
		e.note("coturn: turnserver %s", version)
		servers = append(servers, c)
	}
	for _, s := range servers {
		var allocs float64
		if s.addr != "" {
			var failed int64
			allocs, failed = allocRate(ctx, s.addr, allocN, 8)
			if failed > 0 {
				e.note("%s: %d of %d allocations failed", s.name, failed, allocN)
			}
		}
		for _, pps := range rates {
			got, loss, err := relayRate(ctx, s.addr, 200, pps, d)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", s.name, err)
			}
			offered := "flat out"
			if pps > 0 {
				offered = fmt.Sprintf("%d/s", pps)
			}
			vals := map[string]float64{"pps": got, "loss": loss}
			if pps == 10000 && s.addr != "" {
				vals["allocs"] = allocs
			}
			if s.pid != 0 {
				if rss := rssBytes(s.pid); rss > 0 {
					vals["rss"] = float64(rss) / (1 << 20)
				}
			}
			t.add(s.name, map[string]string{"offered": offered}, vals)
		}
	}
	return t, nil
}

// childTURN runs meetpoint's TURN (beside a relay, as serve --turn does)
// until stdin closes.
func childTURN(args []string) error {
	fs := flag.NewFlagSet("turn", flag.ContinueOnError)
	ports := fs.String("ports", "42000-42999", "relay port range")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile here until stdin closes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	lo, hi, err := turn.ParsePorts(*ports)
	if err != nil {
		return err
	}
	srv, err := relay.NewServer(relayConfig([]string{"127.0.0.1:0"}))
	if err != nil {
		return err
	}
	// The peers are plain sockets on loopback, which the peer policy
	// refuses by default: allowed here, as coturn's --allow-loopback-peers.
	ts, err := turn.New(srv, turn.Config{Secret: []byte(turnSecret), PortMin: lo, PortMax: hi, MaxPerUser: 1000,
		AllowPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	defer srv.Close()
	if err := ts.Start(); err != nil {
		return err
	}
	defer ts.Close()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Printf("addrs %s\n", ts.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}
