package main

// The size cells: payloads of 1 B to 16 MiB, text and binary, each way,
// through every kind of nymea client, checked by length and SHA-256.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// payload is n bytes made from seed exactly as meetpoint-nymea-probe
// makes them (probe.cpp): a 64-bit LCG, its top byte each step; text maps
// it to [A-Za-z0-9-_] (no byte a CLI would escape, no newline).
func payload(n int, text bool, seed uint64) []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	b := make([]byte, n)
	x := seed
	for i := range b {
		x = x*6364136223846793005 + 1442695040888963407
		r := byte(x >> 56)
		if text {
			r = alphabet[r&63]
		}
		b[i] = r
	}
	return b
}

func sumOf(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// sink counts and hashes a stream (a process's stdout, or what a service
// receives). With line set, the stream is cut into lines and only what
// line returns of each is taken (a CLI printing what it got).
type sink struct {
	line func(l []byte) ([]byte, bool)

	mu   sync.Mutex
	n    int64
	h    hash.Hash
	part []byte // an unfinished line
}

func newSink() *sink { return &sink{h: sha256.New()} }

func (k *sink) write(b []byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.line == nil {
		k.n += int64(len(b))
		k.h.Write(b)
		return
	}
	k.part = append(k.part, b...)
	for {
		i := bytes.IndexByte(k.part, '\n')
		if i < 0 {
			return
		}
		if d, ok := k.line(k.part[:i]); ok {
			k.n += int64(len(d))
			k.h.Write(d)
		}
		k.part = k.part[i+1:]
	}
}

// wait polls until n bytes came or d passed; it returns the count and the
// hash of what came.
func (k *sink) wait(d time.Duration, n int) (int64, string) {
	deadline := time.Now().Add(d)
	for {
		k.mu.Lock()
		got := k.n
		sum := ""
		if got >= int64(n) || time.Now().After(deadline) {
			sum = hex.EncodeToString(k.h.Sum(nil))
		}
		k.mu.Unlock()
		if sum != "" {
			return got, sum
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// check compares what k got with want.
func (k *sink) check(who string, d time.Duration, want []byte) error {
	n, sum := k.wait(d, len(want))
	if n != int64(len(want)) || sum != sumOf(want) {
		return fmt.Errorf("%s got %d of %d bytes (sha256 %.12s…, want %.12s…)", who, n, len(want), sum, sumOf(want))
	}
	return nil
}

// linePrefix takes the rest of lines that start with prefix (and end with
// suffix, which is cut off).
func linePrefix(prefix, suffix string) func([]byte) ([]byte, bool) {
	return func(l []byte) ([]byte, bool) {
		d, ok := bytes.CutPrefix(l, []byte(prefix))
		if !ok {
			return nil, false
		}
		return bytes.CutSuffix(d, []byte(suffix))
	}
}

// probeGot waits for the probe's "GOT <n> <sha256>" line and checks it.
func probeGot(p *proc, who string, d time.Duration, want []byte) error {
	var line string
	deadline := time.Now().Add(d)
	for line == "" && time.Now().Before(deadline) {
		for _, l := range strings.Split(string(p.stdout()), "\n") {
			if strings.HasPrefix(l, "GOT ") {
				line = l
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	f := strings.Fields(line)
	if len(f) != 3 {
		return fmt.Errorf("%s got less than %d bytes", who, len(want))
	}
	if n, _ := strconv.Atoi(f[1]); n != len(want) || f[2] != sumOf(want) {
		return fmt.Errorf("%s got %s bytes (sha256 %.12s…, want %d, %.12s…)", who, f[1], f[2], len(want), sumOf(want))
	}
	return nil
}

// holdOff is how long a sender in the size cells waits once the tunnel is
// up: nymea's client libraries stall when the relay's last JSON-RPC
// message (TunnelEstablished, the RegisterClient reply) and the partner's
// first bytes arrive in one read. That race is measured by
// legacy/stall/tcp; the size cells measure sizes.
const holdOff = 300 * time.Millisecond

// sendArgs are the probe's flags to send n bytes of seed (holdOff after
// the tunnel is up) and to expect n.
func sendArgs(n int, text bool, seed uint64, wait time.Duration) []string {
	pattern := "binary"
	if text {
		pattern = "text"
	}
	return []string{"--send-size", strconv.Itoa(n), "--pattern", pattern, "--seed", strconv.FormatUint(seed, 10),
		"--expect", strconv.Itoa(n), "--timeout", strconv.Itoa(int((wait + 5*time.Second).Milliseconds())),
		"--send-delay", strconv.Itoa(int(holdOff.Milliseconds()))}
}

// feedWhen gives p (started with an open stdin) b once ready has p's
// peer say the tunnel is up, or d has passed.
func feedWhen(p, peer *proc, ready string, d time.Duration, b []byte) {
	go func() {
		peer.has(d, ready)
		p.feed(b)
	}()
}

// firstErr is the first non-nil error.
func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// sizeRun is one kind's cell body: n bytes each way (one way for the
// CLIs, which cannot send a payload), seeds 1 and 2.
type sizeRun func(c *cctx, tr string, n int, text bool, wait time.Duration) error

// A sizeKind is one kind of nymea client in the size cells.
type sizeKind struct {
	id, desc string
	mpClient bool     // runs meetpoint's own client
	textOnly bool     // a CLI that prints what it gets: text can be checked
	more     []string // transports with a 1 MiB cell besides tcp
	huge     []bool   // the encodings (text: true) with a 16 MiB cell
	run      sizeRun
}

var sizes = []struct {
	label string
	n     int
}{{"1B", 1}, {"64KiB-1", 64<<10 - 1}, {"64KiB+1", 64<<10 + 1}, {"1MiB", 1 << 20}, {"16MiB", 16 << 20}}

func sizeKinds() []sizeKind {
	const settle = 300 * time.Millisecond
	return []sizeKind{
		{id: "legacy/lib-lib", desc: "two nymea 1.8.4 legacy library clients",
			more: []string{"ws", "wss", "ssl"}, huge: []bool{true},
			run: func(c *cctx, tr string, n int, text bool, wait time.Duration) error {
				tok := c.token("sz")
				a := c.probeAt("1.8.4", c.t.legacy[tr], tr, append([]string{"--role", "legacy", "--uuid", newUUID(), "--token", tok}, sendArgs(n, text, 1, wait)...)...)
				time.Sleep(settle)
				b := c.probeAt("1.8.4", c.t.legacy[tr], tr, append([]string{"--role", "legacy", "--uuid", newUUID(), "--token", tok}, sendArgs(n, text, 2, wait)...)...)
				return firstErr(probeGot(a, "the first client", wait, payload(n, text, 2)), probeGot(b, "the second client", wait, payload(n, text, 1)))
			}},
		{id: "legacy/lib-meetpoint", desc: "nymea 1.8.4 legacy library client ↔ `meetpoint client`", mpClient: true,
			more: []string{"ws", "ssl"}, huge: []bool{false},
			run: func(c *cctx, tr string, n int, text bool, wait time.Duration) error {
				tok := c.token("sz")
				a := c.probeAt("1.8.4", c.t.legacy[tr], tr, append([]string{"--role", "legacy", "--uuid", newUUID(), "--token", tok}, sendArgs(n, text, 1, wait)...)...)
				time.Sleep(settle)
				k := newSink()
				m := c.mpClientSink("mp", []byte{}, k, "--url", c.t.legacy[tr], "--token", tok)
				feedWhen(m, a, "READY", wait, payload(n, text, 2))
				return firstErr(probeGot(a, "the library client", wait, payload(n, text, 2)), k.check("meetpoint client", wait, payload(n, text, 1)))
			}},
		{id: "legacy/cli", desc: "`meetpoint client` → nymea 1.8.4 nymea-remoteproxy-client (one way: the CLI sends only its pings)", mpClient: true,
			textOnly: true, more: []string{"ws"}, huge: []bool{true},
			run: func(c *cctx, tr string, n int, text bool, wait time.Duration) error {
				tok := c.token("sz")
				k := newSink()
				k.line = linePrefix("ProxyClient: <-- ", "")
				cli := c.nymeaClientSink(tr, tok, "cli", k)
				time.Sleep(settle)
				m := c.mpClient("mp", []byte{}, "--url", c.t.legacy[tr], "--token", tok)
				feedWhen(m, cli, "Remote connection established", wait, payload(n, text, 1))
				return k.check("nymea-remoteproxy-client", wait, payload(n, text, 1))
			}},
		{id: "tp/lib-lib", desc: "nymea 1.13.0 TunnelProxySocketServer (over tcp or ssl) ↔ TunnelProxyRemoteConnection",
			more: []string{"ssl", "ws"}, huge: []bool{false},
			run: func(c *cctx, tr string, n int, text bool, wait time.Duration) error {
				su := newUUID()
				s := c.probe("1.13.0", rawOf(tr), append([]string{"--role", "server", "--uuid", su}, sendArgs(n, text, 1, wait)...)...)
				if !s.has(wait, "READY") {
					return fmt.Errorf("library server did not register")
				}
				cl := c.probe("1.13.0", tr, append([]string{"--role", "client", "--uuid", newUUID(), "--server-uuid", su}, sendArgs(n, text, 2, wait)...)...)
				return firstErr(probeGot(cl, "the library client", wait, payload(n, text, 1)), probeGot(s, "the library server", wait, payload(n, text, 2)))
			}},
		{id: "tp/lib-server-meetpoint", desc: "nymea 1.13.0 TunnelProxySocketServer ↔ `meetpoint client --server-uuid`", mpClient: true,
			more: []string{"ssl"}, huge: []bool{false},
			run: func(c *cctx, tr string, n int, text bool, wait time.Duration) error {
				su := newUUID()
				s := c.probe("1.13.0", tr, append([]string{"--role", "server", "--uuid", su}, sendArgs(n, text, 1, wait)...)...)
				if !s.has(wait, "READY") {
					return fmt.Errorf("library server did not register")
				}
				k := newSink()
				c.mpClientSink("mp", payload(n, text, 2), k, "--url", c.t.tp[tr], "--server-uuid", su)
				return firstErr(k.check("meetpoint client", wait, payload(n, text, 1)), probeGot(s, "the library server", wait, payload(n, text, 2)))
			}},
		{id: "tp/meetpoint-server-lib", desc: "`meetpoint client --serve` ↔ nymea 1.13.0 TunnelProxyRemoteConnection", mpClient: true,
			more: []string{"ssl", "ws"}, huge: []bool{false},
			run: func(c *cctx, tr string, n int, text bool, wait time.Duration) error {
				su := newUUID()
				k := newSink()
				svc := c.serviceSink(payload(n, text, 1), holdOff, k)
				if _, err := c.serveMP(rawOf(tr), su, svc); err != nil {
					return err
				}
				cl := c.probe("1.13.0", tr, append([]string{"--role", "client", "--uuid", newUUID(), "--server-uuid", su}, sendArgs(n, text, 2, wait)...)...)
				return firstErr(probeGot(cl, "the library client", wait, payload(n, text, 1)), k.check("the service behind meetpoint client --serve", wait, payload(n, text, 2)))
			}},
		{id: "tp/tunnelclient-echo", desc: "`meetpoint client` → nymea 1.13.0 tunnelclient server (`-r`, echo) → back", mpClient: true,
			more: []string{"ssl"}, huge: []bool{true},
			run: func(c *cctx, tr string, n int, text bool, wait time.Duration) error {
				su := newUUID()
				s := c.tunnelClient("srv", tr, "-s", "-r", "--uuid", su)
				if !s.has(wait, "running and listening") {
					return fmt.Errorf("tunnelclient server did not register")
				}
				k := newSink()
				c.mpClientSink("mp", payload(n, text, 1), k, "--url", c.t.tp[tr], "--server-uuid", su)
				return k.check("meetpoint client (the echo)", wait, payload(n, text, 1))
			}},
		{id: "tp/tunnelclient-client", desc: "`meetpoint client --serve` → nymea 1.13.0 tunnelclient client (one way: it sends only random text)", mpClient: true,
			textOnly: true, more: []string{"ssl"}, huge: []bool{true},
			run: func(c *cctx, tr string, n int, text bool, wait time.Duration) error {
				su := newUUID()
				svc := c.serviceSink(payload(n, text, 1), holdOff, nil)
				if _, err := c.serveMP(tr, su, svc); err != nil {
					return err
				}
				k := newSink()
				k.line = linePrefix(`Data received "`, `"`)
				c.tunnelClientSink("cli", tr, k, "-c", "--uuid", newUUID(), "--server-uuid", su)
				return k.check("tunnelclient", wait, payload(n, text, 1))
			}},
	}
}

// sizeCells are the size cells of every kind: every size on tcp, 1 MiB on
// the kind's other transports, text and binary (text only for the CLIs
// and over WebSocket, where nymea's libraries send text messages only),
// 16 MiB only for the encodings a kind lists.
func sizeCells() []cell {
	var cells []cell
	for _, k := range sizeKinds() {
		encs, way := []bool{true, false}, " each way"
		if k.textOnly {
			encs, way = encs[:1], ""
		}
		for _, tr := range append([]string{"tcp"}, k.more...) {
			for _, sz := range sizes {
				if tr != "tcp" && sz.n != 1<<20 {
					continue
				}
				for _, text := range encs {
					if sz.n == 16<<20 && !slices.Contains(k.huge, text) ||
						!text && (tr == "ws" || tr == "wss") {
						continue
					}
					enc := "binary"
					if text {
						enc = "text"
					}
					wait := 10*time.Second + time.Duration(sz.n>>20)*1500*time.Millisecond
					run := k.run
					cells = append(cells, cell{
						id:       fmt.Sprintf("size/%s/%s/%s/%s", k.id, tr, sz.label, enc),
						desc:     fmt.Sprintf("%s: %s %s%s over %s", k.desc, sz.label, enc, way, tr),
						mpClient: k.mpClient,
						alone:    sz.n == 16<<20,
						run: func(c *cctx) error {
							return run(c, tr, sz.n, text, wait)
						},
					})
				}
			}
		}
	}
	return cells
}
