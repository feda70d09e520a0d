package wamp

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
)

// Across a fleet: a registration is claimed in Redis (key
// meetpoint:wamp:proc:LEN:REALM:PROC, procKey = the owning node, with a TTL the owner
// renews), so a procedure is registered once fleet-wide. A CALL for a
// procedure registered elsewhere is published on the owner's channel
// (meetpoint:wamp:node:NODE) and its answer on the caller's node's (a
// CANCEL, or the caller leaving, is sent after it, so that the callee's
// node ends the invocation then and not at its timeout); an
// EVENT is published on meetpoint:wamp:events for every node's
// subscribers. A node that dies leaves its claims to expire (procTTL);
// calls to it meanwhile time out. While Redis is unreachable the router
// works node-locally and re-claims its registrations when it returns.

const (
	procTTL      = 30 * time.Second
	renewEvery   = 10 * time.Second
	keyPrefix    = "meetpoint:wamp:proc:"
	nodeChannel  = "meetpoint:wamp:node:"
	eventChannel = "meetpoint:wamp:events"
)

// releaseScript deletes a claim only if this node holds it.
var releaseScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// renewScript extends this node's claim, or makes it again where it
// lapsed (after an outage); another node's claim is left alone.
var renewScript = redis.NewScript(`local v = redis.call("GET", KEYS[1])
if v == ARGV[1] or v == false then return redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2]) end
return 0`)

// fleetLink carries the router's registrations, calls and events through
// Redis.
type fleetLink struct {
	r      *Router
	rdb    redis.UniversalClient
	node   string
	ps     *redis.PubSub
	ctx    context.Context
	cancel context.CancelFunc
	done   sync.WaitGroup

	mu    sync.Mutex
	mine  map[string]bool     // claims this node holds, by key; guarded by mu
	locks map[string]*keyLock // a claim's or release's turn on its key; guarded by mu

	forwarded map[string]*metrics.Counter // meetpoint_signal_forwarded_total{result}
}

// wire is one message between nodes.
type wire struct {
	K         string          `json:"k"` // "call", "answer", "event"
	From      string          `json:"from,omitempty"`
	ID        uint64          `json:"id,omitempty"`
	Realm     string          `json:"realm,omitempty"`
	Proc      string          `json:"proc,omitempty"`
	Topic     string          `json:"topic,omitempty"`
	Pub       uint64          `json:"pub,omitempty"`
	TimeoutMs int64           `json:"timeout_ms,omitempty"`
	Err       string          `json:"err,omitempty"`
	Result    string          `json:"result,omitempty"` // an answer's: how the call ended at the callee's node (callResults)
	Mode      string          `json:"mode,omitempty"`   // a cancel's: skip, kill or killnowait ("": killnowait, its caller answered)
	Details   json.RawMessage `json:"details,omitempty"`
	Args      json.RawMessage `json:"args,omitempty"`
	Kwargs    json.RawMessage `json:"kwargs,omitempty"`
}

func newFleetLink(r *Router) (*fleetLink, error) {
	f := &fleetLink{r: r, rdb: r.cfg.Redis, node: r.cfg.NodeID, mine: map[string]bool{}, locks: map[string]*keyLock{},
		forwarded: map[string]*metrics.Counter{}}
	for _, res := range []string{"ok", "error", "no_procedure", "timeout", "canceled", "callee_lost"} {
		f.forwarded[res] = r.set.NewCounter(fmt.Sprintf(`meetpoint_signal_forwarded_total{result=%q}`, res))
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.ps = f.rdb.Subscribe(f.ctx, nodeChannel+f.node, eventChannel)
	ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
	defer cancel()
	if _, err := f.ps.Receive(ctx); err != nil {
		f.ps.Close()
		f.cancel()
		return nil, fmt.Errorf("signal: subscribing in the fleet's Redis: %v", err)
	}
	f.done.Add(2)
	go f.receive()
	go f.renew()
	return f, nil
}

func (f *fleetLink) close() {
	f.mu.Lock()
	keys := slices.Collect(maps.Keys(f.mine))
	f.mine = map[string]bool{}
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, k := range keys {
		releaseScript.Run(ctx, f.rdb, []string{k}, f.node)
	}
	f.cancel()
	f.ps.Close()
	f.done.Wait()
}

// procKey is a procedure's claim key, meetpoint:wamp:proc:LEN:REALM:PROC
// with LEN the realm's length in bytes: one key per (realm, procedure)
// pair whatever colons either holds (realm "a:b" with "c" and realm "a"
// with "b:c" are two keys).
func procKey(realm, proc string) string {
	return keyPrefix + strconv.Itoa(len(realm)) + ":" + realm + ":" + proc
}

func (f *fleetLink) op() (context.Context, context.CancelFunc) {
	return context.WithTimeout(f.ctx, 2*time.Second)
}

// keyLock orders the claims and releases of one key on this node.
type keyLock struct {
	mu sync.Mutex
	n  int // holders and waiters; guarded by fleetLink.mu
}

// lockKey waits for key's turn and returns what gives it up. A claim and
// a release of one procedure on this node never overlap: a release that
// ran between a new registration's SETNX (which finds this node's claim
// and keeps it) and its end would delete the claim the new registration
// stands on, and leave the procedure registered here with no claim, so
// that another node could register it too.
func (f *fleetLink) lockKey(key string) (unlock func()) {
	f.mu.Lock()
	l := f.locks[key]
	if l == nil {
		l = &keyLock{}
		f.locks[key] = l
	}
	l.n++
	f.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		f.mu.Lock()
		if l.n--; l.n == 0 {
			delete(f.locks, key)
		}
		f.mu.Unlock()
	}
}

// errStore is claim's error where the store answered SETNX (the
// procedure is claimed) but not who holds the claim: the REGISTER is
// refused, as a claim not known to be this node's is not taken as its.
var errStore = errors.New("the fleet's store did not say which node holds the procedure; try again")

// claim registers proc fleet-wide for this node; an error names the node
// that has it, or is errStore. With Redis unreachable the claim is
// node-local until the renewer makes it.
func (f *fleetLink) claim(realm, proc string) error {
	key := procKey(realm, proc)
	defer f.lockKey(key)()
	ctx, cancel := f.op()
	defer cancel()
	for try := 0; ; try++ {
		ok, err := f.rdb.SetNX(ctx, key, f.node, procTTL).Result()
		if err != nil {
			f.r.log.Warn("signal: fleet store unreachable; registration is local until it returns", "err", err)
			break
		}
		if ok {
			break
		}
		owner, gerr := f.rdb.Get(ctx, key).Result()
		if gerr == nil && owner == f.node {
			break
		}
		if gerr == nil {
			return fmt.Errorf("procedure %s is registered on node %s", proc, owner)
		}
		if errors.Is(gerr, redis.Nil) && try == 0 { // the claim lapsed since the SETNX
			continue
		}
		f.r.log.Warn("signal: fleet store failed reading a claim; registration refused", "err", gerr)
		return errStore
	}
	f.mu.Lock()
	f.mine[key] = true
	f.mu.Unlock()
	return nil
}

// release gives up this node's claim of proc, unless a registration made
// here since holds proc again (it keeps the claim).
func (f *fleetLink) release(realm, proc string) {
	key := procKey(realm, proc)
	defer f.lockKey(key)()
	if f.r.registered(realm, proc) {
		return
	}
	f.mu.Lock()
	delete(f.mine, key)
	f.mu.Unlock()
	ctx, cancel := f.op()
	defer cancel()
	releaseScript.Run(ctx, f.rdb, []string{key}, f.node)
}

// renew keeps this node's claims alive.
func (f *fleetLink) renew() {
	defer f.done.Done()
	t := time.NewTicker(renewEvery)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		}
		f.mu.Lock()
		keys := slices.Collect(maps.Keys(f.mine))
		f.mu.Unlock()
		for _, k := range keys {
			ctx, cancel := f.op()
			renewScript.Run(ctx, f.rdb, []string{k}, f.node, procTTL.Milliseconds())
			cancel()
		}
	}
}

// forward sends a CALL to the node that registered proc; false if no
// other node has it (the caller then gets no_such_procedure).
func (f *fleetLink) forward(s *session, req uint64, realm, proc string, timeout time.Duration, args, kwargs json.RawMessage) bool {
	ctx, cancel := f.op()
	defer cancel()
	owner, err := f.rdb.Get(ctx, procKey(realm, proc)).Result()
	if err != nil || owner == f.node {
		return false
	}
	r := f.r
	c := &call{inv: r.newID(), caller: s, req: req, to: owner}
	r.mu.Lock()
	if s.calling == nil { // the session ended meanwhile
		r.mu.Unlock()
		return true
	}
	r.outbound[c.inv] = c
	s.calling[c] = true
	c.timer = time.AfterFunc(timeout, func() { f.settleOutbound(c.inv, routerError("timeout"), "timeout") })
	r.mu.Unlock()
	b := marshal(wire{K: "call", From: f.node, ID: c.inv, Realm: realm, Proc: proc,
		TimeoutMs: timeout.Milliseconds(), Args: args, Kwargs: kwargs})
	if n, err := f.rdb.Publish(ctx, nodeChannel+owner, b).Result(); err != nil || n == 0 {
		f.settleOutbound(c.inv, routerError("no_procedure"), "no_procedure") // its node is gone
	}
	return true
}

// settleOutbound ends a forwarded call with a, for its caller here.
func (f *fleetLink) settleOutbound(id uint64, a *answer, result string) {
	r := f.r
	r.mu.Lock()
	c := r.outbound[id]
	if c == nil {
		r.mu.Unlock()
		return
	}
	delete(r.outbound, id)
	delete(c.caller.calling, c)
	c.timer.Stop()
	c.caller.send(a.message(c.req))
	r.mu.Unlock()
	if ctr := f.forwarded[result]; ctr != nil {
		ctr.Inc()
	}
}

// abandon tells an outbound call's node that its caller no longer waits
// (a CANCEL in mode, or the caller left: killnowait), so that the
// invocation there ends now and not at its timeout: a caller's calls in
// flight are bounded at the callee's node as they are here. In kill mode
// the caller still waits: the callee's node answers once its callee has.
func (f *fleetLink) abandon(c *call, mode string) {
	b := marshal(wire{K: "cancel", From: f.node, ID: c.inv, Mode: mode})
	ctx, cancel := f.op()
	defer cancel()
	f.rdb.Publish(ctx, nodeChannel+c.to, b)
}

// answer sends a call's end to the caller's node, with how it ended
// (result), which that node counts it by.
func (f *fleetLink) answer(node string, id uint64, result string, a *answer) {
	b := marshal(wire{K: "answer", ID: id, Result: result, Err: a.err, Details: a.details, Args: a.args, Kwargs: a.kwargs})
	ctx, cancel := f.op()
	defer cancel()
	f.rdb.Publish(ctx, nodeChannel+node, b)
}

// publish carries an EVENT to the other nodes' subscribers.
func (f *fleetLink) publish(realm, topic string, pub uint64, args, kwargs json.RawMessage) {
	b := marshal(wire{K: "event", From: f.node, Realm: realm, Topic: topic, Pub: pub, Args: args, Kwargs: kwargs})
	ctx, cancel := f.op()
	defer cancel()
	f.rdb.Publish(ctx, eventChannel, b)
}

// receive handles what other nodes send this one.
func (f *fleetLink) receive() {
	defer f.done.Done()
	r := f.r
	for m := range f.ps.Channel() {
		var w wire
		if json.Unmarshal([]byte(m.Payload), &w) != nil {
			continue
		}
		switch w.K {
		case "call":
			timeout := r.callTimeout(w.TimeoutMs)
			r.mu.Lock()
			var reg *registration
			if rm := r.realms[w.Realm]; rm != nil && rm.procs[w.Proc] != nil && rm.procs[w.Proc].ready {
				reg = rm.procs[w.Proc]
			}
			if reg != nil {
				r.invoke(reg, &call{from: w.From, req: w.ID}, timeout, w.Args, w.Kwargs)
			}
			r.mu.Unlock()
			if reg == nil {
				f.answer(w.From, w.ID, "no_procedure", routerError("no_procedure"))
			}
		case "cancel":
			r.mu.Lock()
			inv, ok := r.remote[remoteCall{w.From, w.ID}]
			r.mu.Unlock()
			if ok {
				mode := cmp.Or(w.Mode, "killnowait")
				r.cancelInvocation(inv, mode, mode != "kill")
			}
		case "answer":
			result := w.Result
			if f.forwarded[result] == nil { // a node that does not say
				result = "ok"
				if w.Err != "" {
					result = "error"
					if w.Err == errNoSuchProcedure {
						result = "no_procedure"
					}
				}
			}
			f.settleOutbound(w.ID, &answer{err: w.Err, details: w.Details, args: w.Args, kwargs: w.Kwargs}, result)
		case "event":
			if w.From != f.node {
				r.deliver(w.Realm, w.Topic, w.Pub, nil, w.Args, w.Kwargs)
			}
		}
	}
}
