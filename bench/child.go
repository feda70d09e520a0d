package bench

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/certs"
)

// Child processes: the harness re-executes itself ("meetpoint bench _child
// ROLE ...") to run a relay whose memory is measured alone, and client
// workers that spread tunnels over several processes (each process may hold
// at most ~19.9k descriptors). They talk over stdin/stdout, one line per
// message.

// ChildEnv is set in a child's environment; a test binary's TestMain uses it
// to tell that it was started as a child.
const ChildEnv = "MEETPOINT_BENCH_CHILD"

// defaultChildCommand re-executes the running binary as "bench _child ...".
func defaultChildCommand(args []string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return exec.Command(exe, append([]string{"bench", "_child"}, args...)...), nil
}

// child is a running child process.
type child struct {
	cmd      *exec.Cmd
	in       io.WriteCloser
	lines    chan string
	stderr   *tailWriter
	addrs    []string
	progress atomic.Int64 // last "progress N" from an idle worker
	errs     atomic.Int64
	mu       sync.Mutex
	closed   bool
	late     int // answers still due to calls that timed out (mu)
}

func startChild(opt *Options, args ...string) (*child, error) {
	mk := opt.ChildCommand
	if mk == nil {
		mk = defaultChildCommand
	}
	cmd, err := mk(args)
	if err != nil {
		return nil, err
	}
	if role := args[0]; role == "relay" || role == "turn" { // forwarders; workers stay on the harness's CPUs
		if err := pinCommand(cmd, opt.PeerCPUs); err != nil {
			return nil, err
		}
	}
	cmd.Env = append(os.Environ(), ChildEnv+"=1")
	c := &child{cmd: cmd, lines: make(chan string, 64), stderr: &tailWriter{max: 4096}}
	cmd.Stderr = c.stderr
	if c.in, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l := sc.Text()
			if rest, ok := strings.CutPrefix(l, "progress "); ok {
				f := strings.Fields(rest)
				if len(f) == 2 {
					n, _ := strconv.ParseInt(f[0], 10, 64)
					e, _ := strconv.ParseInt(f[1], 10, 64)
					c.progress.Store(n)
					c.errs.Store(e)
				}
				continue
			}
			c.lines <- l
		}
	}()
	return c, nil
}

// expect waits for a line starting with prefix and returns the rest.
func (c *child) expect(prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				return "", fmt.Errorf("child exited: %s", strings.TrimSpace(c.stderr.String()))
			}
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return strings.TrimSpace(rest), nil
			}
			if rest, ok := strings.CutPrefix(l, "error "); ok {
				return "", errors.New(rest)
			}
		case <-t.C:
			return "", noAnswer{prefix, timeout}
		}
	}
}

// noAnswer is expect's error when no line came in time.
type noAnswer struct {
	prefix  string
	timeout time.Duration
}

func (e noAnswer) Error() string { return fmt.Sprintf("child: no %q within %v", e.prefix, e.timeout) }

// call sends a command and waits for the answer starting with prefix.
// Every command is answered with one line, matched to it by order only:
// the answers still due to calls that timed out come first, and are
// skipped, not taken for this one's.
func (c *child) call(cmd, prefix string, timeout time.Duration) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := fmt.Fprintln(c.in, cmd); err != nil {
		return "", err
	}
	deadline := time.Now().Add(timeout)
	t := time.NewTimer(timeout)
	defer t.Stop()
	for c.late > 0 {
		select {
		case _, ok := <-c.lines:
			if !ok {
				return "", fmt.Errorf("child exited: %s", strings.TrimSpace(c.stderr.String()))
			}
			c.late--
		case <-t.C:
			c.late++
			return "", noAnswer{prefix, timeout}
		}
	}
	s, err := c.expect(prefix, time.Until(deadline))
	if errors.As(err, new(noAnswer)) {
		c.late++
	}
	return s, err
}

// close ends the child (stdin EOF, then a kill after 10 s).
func (c *child) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	c.in.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// startServingChild starts a child that serves (a relay, TURN) and waits
// for the "addrs" line it prints once it listens.
func startServingChild(opt *Options, args ...string) (*child, string, error) {
	c, err := startChild(opt, args...)
	if err != nil {
		return nil, "", err
	}
	addrs, err := c.expect("addrs ", 20*time.Second)
	if err != nil {
		c.close()
		return nil, "", err
	}
	return c, addrs, nil
}

// spawnRelay starts a relay child listening on nAddrs loopback addresses;
// with a certificate and key (PEM files) it serves TLS beside plaintext.
func spawnRelay(opt *Options, nAddrs int, tlsCert, tlsKey string) (*child, error) {
	args := []string{"relay", "--listen", strings.Join(relayListen(nAddrs), ",")}
	if tlsCert != "" {
		args = append(args, "--tls-cert", tlsCert, "--tls-key", tlsKey)
	}
	c, addrs, err := startServingChild(opt, args...)
	if err != nil {
		return nil, fmt.Errorf("spawn relay: %w", err)
	}
	c.addrs = strings.Split(addrs, ",")
	return c, nil
}

// relayStats asks a relay child for goroutines, RSS and active tunnels.
func (c *child) relayStats() (goroutines int, tunnels int64, err error) {
	s, err := c.call("stats", "stats ", 10*time.Second)
	if err != nil {
		return 0, 0, err
	}
	_, err = fmt.Sscan(s, &goroutines, &tunnels)
	return
}

// ChildMain runs a child role; args are what follows "bench _child".
func ChildMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "bench _child: role required")
		return 2
	}
	var err error
	switch args[0] {
	case "relay":
		err = childRelay(args[1:])
	case "idle":
		err = childIdle(args[1:])
	case "turn":
		err = childTURN(args[1:])
	default:
		err = fmt.Errorf("unknown role %q", args[0])
	}
	if err != nil {
		fmt.Printf("error %v\n", err)
		fmt.Fprintln(os.Stderr, "bench _child:", err)
		return 1
	}
	return 0
}

// childRelay runs a relay and answers stats, gc and profile commands until
// stdin closes.
func childRelay(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "comma-separated addresses")
	tlsCert := fs.String("tls-cert", "", "serve TLS beside plaintext with this certificate (PEM file)")
	tlsKey := fs.String("tls-key", "", "and this key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := relayConfig(strings.Split(*listen, ","))
	if *tlsCert != "" {
		st, err := certs.New(certs.Config{Cert: *tlsCert, Key: *tlsKey}, nil)
		if err != nil {
			return err
		}
		defer st.Close()
		cfg.TLS = st.TLSConfig()
	}
	srv, err := relay.NewServer(cfg)
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	defer srv.Close()
	var as []string
	for _, a := range srv.Addrs() {
		as = append(as, a.String())
	}
	fmt.Printf("addrs %s\n", strings.Join(as, ","))
	var prof *os.File
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "stats":
			fmt.Printf("stats %d %d\n", runtime.NumGoroutine(), srv.Stats().TunnelsActive)
		case "gc":
			runtime.GC()
			debug.FreeOSMemory()
			fmt.Println("ok")
		case "profile-start":
			if len(f) < 2 || prof != nil {
				fmt.Println("error profile-start PATH (once)")
				continue
			}
			p, err := os.Create(f[1])
			if err == nil {
				err = pprof.StartCPUProfile(p)
			}
			if err != nil {
				fmt.Printf("error %v\n", err)
				continue
			}
			prof = p
			fmt.Println("ok")
		case "heap":
			if len(f) < 2 {
				fmt.Println("error heap PATH")
				continue
			}
			runtime.GC()
			p, err := os.Create(f[1])
			if err == nil {
				err = pprof.WriteHeapProfile(p)
				p.Close()
			}
			if err != nil {
				fmt.Printf("error %v\n", err)
				continue
			}
			fmt.Println("ok")
		case "profile-stop":
			if prof != nil {
				pprof.StopCPUProfile()
				prof.Close()
				prof = nil
			}
			fmt.Println("ok")
		default:
			fmt.Printf("error unknown command %q\n", f[0])
		}
	}
	if prof != nil {
		pprof.StopCPUProfile()
		prof.Close()
	}
	return nil
}

// childIdle opens n tunnels to the relays in --hosts (both ends in this
// process), reports progress, then holds them and answers verify commands
// until stdin closes.
func childIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	hosts := fs.String("hosts", "", "comma-separated relay host:port")
	n := fs.Int("n", 1000, "tunnels")
	conc := fs.Int("conc", 64, "concurrent dialers")
	transport := fs.String("transport", "tcp", "tcp, ws or mixed")
	nonce := fs.String("nonce", "idle", "nonce prefix")
	if err := fs.Parse(args); err != nil {
		return err
	}
	hs := strings.Split(*hosts, ",")
	type pair struct{ a, b End }
	pairs := make([]pair, *n)
	var next, done, errs atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				fmt.Printf("progress %d %d\n", done.Load(), errs.Load())
			}
		}
	}()
	ta, tb := *transport, *transport
	if ta == "mixed" {
		ta, tb = "tcp", "ws"
	}
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(*n) {
					return
				}
				for try := 0; ; try++ {
					a, b, err := dialPair(context.Background(), hs[int(i)%len(hs)], ta, tb, fmt.Sprintf("%s-%d-%d", *nonce, i, try))
					if err == nil {
						pairs[i] = pair{a, b}
						done.Add(1)
						break
					}
					errs.Add(1)
					if try == 4 {
						fmt.Fprintf(os.Stderr, "tunnel %d: %v\n", i, err)
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	fmt.Printf("progress %d %d\n", done.Load(), errs.Load())
	fmt.Printf("ready %d %d\n", done.Load(), errs.Load())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "verify" {
			k, _ := strconv.Atoi(f[1])
			ok, fail := 0, 0
			step := max(1, len(pairs)/max(k, 1))
			for i := 0; i < len(pairs) && ok+fail < k; i += step {
				p := pairs[i]
				if p.a == nil {
					continue
				}
				if verifyPair(p.a, p.b) == nil {
					ok++
				} else {
					fail++
				}
			}
			fmt.Printf("verified %d %d\n", ok, fail)
		}
	}
	return nil
}

// verifyPair sends 16 bytes each way and checks they arrive.
func verifyPair(a, b End) error {
	dl := time.Now().Add(5 * time.Second)
	a.SetDeadline(dl)
	b.SetDeadline(dl)
	defer a.SetDeadline(time.Time{})
	defer b.SetDeadline(time.Time{})
	msg := []byte("meetpoint-verify")
	for _, d := range [][2]End{{a, b}, {b, a}} {
		if _, err := d[0].Write(msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(d[1], got); err != nil {
			return err
		}
		if string(got) != string(msg) {
			return fmt.Errorf("verify: got %q", got)
		}
	}
	return nil
}
