// Package events pushes events to idle connections, across every relay of
// a fleet. A client subscribes on its connection:
//
//	{"id":1,"method":"Events.Subscribe","params":{"token":"T","channels":["device-7"]}}
//
// the relay's authenticator checks the token, the access rules (action
// events) decide which channels the identity may join, and the connection
// then only receives
//
//	{"id":N,"notification":"Events.Event","params":{"channel":"device-7","data":{...}}}
//
// for each event published on its channels. A subscriber costs what a
// connection waiting for its partner costs: no goroutine, a few KiB.
//
// Publishing: POST /v1/events/{channel} on any relay's port (bearer admin
// key; the body is the event's JSON data), or PUBLISH on Redis channel
// Prefix+channel. With Redis every relay subscribes once (PSUBSCRIBE
// Prefix*) and fans out to its own subscribers; without, events reach the
// subscribers of the relay they were posted to. Delivery is at most once,
// in order per publisher. A subscriber that does not read its events is
// disconnected once handshake.QueueMax of them wait (counted as dropped).
package events

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/meetpoint/meetpoint/handshake"
	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/reason"
	"github.com/meetpoint/meetpoint/relay/redisurl"
)

// Config is the events section.
type Config struct {
	// Redis, if set, carries events between relays: a URL of
	// redisurl.Parse (one server, redis+cluster://, redis+sentinel://).
	Redis string
	// Prefix is the Redis channel prefix (default "meetpoint:events:").
	Prefix string
	// AdminKey, if set, lets backends publish with POST /v1/events/{channel}
	// ("Authorization: Bearer AdminKey").
	AdminKey string
	// MaxEvent bounds an event's data (default 64 KiB).
	MaxEvent int
}

// readyMark begins the channels (after Prefix) of Ready's probes: the
// node's subscription takes them for Ready, never as events.
const readyMark = "\x00ready:"

// Service is the events subsystem of one relay.
type Service struct {
	srv    *relay.Server
	cfg    Config
	seed   maphash.Seed
	shards [64]shard
	rdb    redis.UniversalClient // one server, a Cluster or a Sentinel-managed primary (redisurl)
	dep    *relay.Dependency     // rdb's health: /readyz, metrics, one log line per outage
	stop   context.CancelFunc
	wg     sync.WaitGroup

	probeMu sync.Mutex
	probes  map[string]chan struct{} // Ready's probes in flight, by channel

	subscribers atomic.Int64
	set         *metrics.Set
	delivered   *metrics.Counter
	dropped     *metrics.Counter
	published   *metrics.Counter
	refused     *metrics.Counter
	notJSON     *metrics.Counter // published straight into Redis, not JSON
	tooLarge    *metrics.Counter // published straight into Redis, over MaxEvent
	badLogs     rate.Sometimes   // which of those are logged (one in a minute)
}

type shard struct {
	mu   sync.Mutex
	subs map[string]map[*relay.Subscriber]struct{} // channel → subscribers
}

// New serves the events API on srv; call before srv.Start, and Close
// after the relay closes.
func New(srv *relay.Server, cfg Config) (*Service, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "meetpoint:events:"
	}
	if cfg.MaxEvent <= 0 {
		cfg.MaxEvent = 64 << 10
	}
	s := &Service{srv: srv, cfg: cfg, seed: maphash.MakeSeed(), set: metrics.NewSet(), probes: map[string]chan struct{}{}}
	for i := range s.shards {
		s.shards[i].subs = map[string]map[*relay.Subscriber]struct{}{}
	}
	s.set.NewGauge(`meetpoint_events_subscribers`, func() float64 { return float64(s.subscribers.Load()) })
	s.delivered = s.set.NewCounter(`meetpoint_events_delivered_total`)
	s.dropped = s.set.NewCounter(`meetpoint_events_dropped_total`)
	s.published = s.set.NewCounter(`meetpoint_events_published_total`)
	s.refused = s.set.NewCounter(`meetpoint_events_subscriptions_refused_total`)
	s.notJSON = s.set.NewCounter(`meetpoint_events_invalid_total{reason="not_json"}`)
	s.tooLarge = s.set.NewCounter(`meetpoint_events_invalid_total{reason="too_large"}`)
	s.badLogs = rate.Sometimes{First: 1, Interval: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	if cfg.Redis != "" {
		rdb, err := redisurl.Parse("events redis URL", cfg.Redis)
		if err != nil {
			cancel()
			return nil, err
		}
		s.rdb = rdb
		s.dep = srv.AddDependency("events_redis", "the events' Redis ("+redisurl.Describe(cfg.Redis)+")",
			func(ctx context.Context) error { return s.rdb.Ping(ctx).Err() })
		s.wg.Add(1)
		go s.listen(ctx)
	}
	srv.HandleMethod("Events.Subscribe", s.subscribe)
	srv.HandleURLSubscribe(func(c relay.Conn, token string, channels []string) { s.start(c, -1, token, channels) })
	if cfg.AdminKey != "" {
		srv.Handle("POST /v1/events/{channel}", relay.RequireBearer(cfg.AdminKey, http.HandlerFunc(s.publishHTTP)))
	}
	srv.AddMetrics(s.set, eventDocs)
	srv.OnDrain(s.closeAll)
	return s, nil
}

// Close stops listening to Redis and closes every subscriber.
func (s *Service) Close() error {
	s.stop()
	if s.rdb != nil {
		s.rdb.Close()
	}
	s.wg.Wait()
	s.closeAll()
	return nil
}

func (s *Service) shard(channel string) *shard {
	return &s.shards[maphash.String(s.seed, channel)%uint64(len(s.shards))]
}

// subscribe answers Events.Subscribe.
func (s *Service) subscribe(c relay.Conn, req *handshake.Request) {
	token, _ := req.Param("token")
	list, _ := req.Param("channels")
	s.start(c, req.ID, token, strings.Split(list, ","))
}

// start authenticates a subscription (id -1: the token came in the
// WebSocket URL, which gets no JSON-RPC reply) and then subscribes.
func (s *Service) start(c relay.Conn, id int, token string, channels []string) {
	for _, ch := range channels {
		if ch == "" || len(channels) > 64 {
			s.refused.Inc()
			c.Refuse(reason.RPC, ws.StatusPolicyViolation, "channels: 1 to 64 non-empty names")
			return
		}
	}
	c.Authenticate(id, token, func(c relay.Conn, r relay.AuthResult) {
		if r != relay.AuthNoError {
			s.refused.Inc()
			if c.FromURL() { // it got its 401 already
				return
			}
			c.Reply(handshake.AppendSuccess(nil, id, handshake.Str("authenticationError", r.String())))
			c.Refuse(reason.AuthFailed, ws.StatusPolicyViolation, "Authentication failed")
			return
		}
		who := c.Identity()
		for _, ch := range channels {
			// Deny by default: the channel named after the token's own
			// subject, or one an access rule grants.
			if ch != who.TokenSubject && !s.srv.Granted(who, relay.ActionEvents, ch) {
				s.refused.Inc()
				if !c.FromURL() {
					c.Reply(handshake.AppendSuccess(nil, id, handshake.Str("authenticationError", relay.AuthFailed.String())))
				}
				c.Refuse(reason.AccessDenied, ws.StatusPolicyViolation, "Channel not allowed: "+ch)
				return
			}
		}
		if !c.FromURL() {
			js, _ := json.Marshal(channels)
			c.Reply(handshake.AppendSuccess(nil, id, handshake.Str("authenticationError", relay.AuthNoError.String()),
				handshake.Raw("channels", js)))
		}
		var sub *relay.Subscriber
		sub = c.Subscribe(func() { s.remove(sub, channels) })
		s.subscribers.Add(1)
		for _, ch := range channels {
			sh := s.shard(ch)
			sh.mu.Lock()
			m := sh.subs[ch]
			if m == nil {
				m = map[*relay.Subscriber]struct{}{}
				sh.subs[ch] = m
			}
			m[sub] = struct{}{}
			sh.mu.Unlock()
		}
	})
}

// remove forgets a subscriber that ended.
func (s *Service) remove(sub *relay.Subscriber, channels []string) {
	s.subscribers.Add(-1)
	for _, ch := range channels {
		sh := s.shard(ch)
		sh.mu.Lock()
		if m := sh.subs[ch]; m != nil {
			delete(m, sub)
			if len(m) == 0 {
				delete(sh.subs, ch)
			}
		}
		sh.mu.Unlock()
	}
}

// Deliver sends data (JSON) as an event on channel to this relay's
// subscribers and returns how many it reached.
func (s *Service) Deliver(channel string, data []byte) int {
	data = oneLine(data)
	sh := s.shard(channel)
	sh.mu.Lock()
	subs := make([]*relay.Subscriber, 0, len(sh.subs[channel]))
	for sub := range sh.subs[channel] {
		subs = append(subs, sub)
	}
	sh.mu.Unlock()
	n := 0
	for _, sub := range subs {
		if sub.Notify("Events.Event", handshake.Str("channel", channel), handshake.Raw("data", data)) {
			n++
		} else {
			s.dropped.Inc() // ended, or too slow and now disconnected
		}
	}
	s.delivered.Add(n)
	return n
}

// oneLine is data (JSON) without the line breaks it may hold between its
// tokens (pretty-printed): a raw-TCP subscriber reads one event per line.
func oneLine(data []byte) []byte {
	if !bytes.ContainsAny(data, "\r\n") {
		return data
	}
	var b bytes.Buffer
	if json.Compact(&b, data) != nil {
		return data
	}
	return b.Bytes()
}

// Publish sends an event to every relay's subscribers of channel: through
// Redis when configured, else to this relay's.
func (s *Service) Publish(ctx context.Context, channel string, data []byte) error {
	if !json.Valid(data) {
		return errors.New("event data must be JSON")
	}
	if s.rdb != nil {
		err := s.rdb.Publish(ctx, s.cfg.Prefix+channel, data).Err()
		if ctx.Err() == nil {
			s.dep.Report(err)
		}
		if err == nil { // a publish the broker did not take is not counted
			s.published.Inc()
		}
		return err
	}
	s.published.Inc()
	s.Deliver(channel, data)
	return nil
}

// listen is the node's one Redis subscription; it re-subscribes after an
// outage by itself (go-redis). On a Redis Cluster it is on one node,
// which receives every node's PUBLISH (the cluster broadcasts them).
func (s *Service) listen(ctx context.Context) {
	defer s.wg.Done()
	ps := s.rdb.PSubscribe(ctx, s.cfg.Prefix+"*")
	defer ps.Close()
	ch := ps.Channel(redis.WithChannelSize(4096))
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			channel := strings.TrimPrefix(m.Channel, s.cfg.Prefix)
			switch {
			case strings.HasPrefix(channel, readyMark): // a node's Ready, never an event
				s.probed(channel)
			case len(m.Payload) > s.cfg.MaxEvent: // the HTTP API's bound holds for PUBLISH too: every subscriber would queue it
				s.invalid(s.tooLarge, channel, "larger than the events' bound (MaxEvent)", len(m.Payload))
			case !json.Valid([]byte(m.Payload)):
				s.invalid(s.notJSON, channel, "not JSON", len(m.Payload))
			default:
				s.Deliver(channel, []byte(m.Payload))
			}
		}
	}
}

// invalid counts an event published straight into Redis that is not
// delivered, and logs one now and then (a backend's bug is otherwise
// silent).
func (s *Service) invalid(c *metrics.Counter, channel, why string, size int) {
	c.Inc()
	s.badLogs.Do(func() {
		s.srv.Logger().Warn("events: an event published in Redis is dropped: "+why+" (meetpoint_events_invalid_total)",
			"channel", channel, "bytes", size, "max", s.cfg.MaxEvent)
	})
}

// Ready waits until the node's Redis subscription is in place (tests and
// start-up checks); without Redis it returns at once.
func (s *Service) Ready(ctx context.Context) error {
	if s.rdb == nil {
		return nil
	}
	// go-redis subscribes (and, after an outage, again) by itself,
	// unannounced, and Redis counts every client's subscriptions alike
	// (another relay's too): publish a probe until this node's own
	// subscription brings it back.
	var b [8]byte
	_, _ = rand.Read(b[:])
	channel := readyMark + hex.EncodeToString(b[:])
	got := make(chan struct{}, 1)
	s.probeMu.Lock()
	s.probes[channel] = got
	s.probeMu.Unlock()
	defer func() {
		s.probeMu.Lock()
		delete(s.probes, channel)
		s.probeMu.Unlock()
	}()
	for {
		_ = s.rdb.Publish(ctx, s.cfg.Prefix+channel, "{}").Err() // Redis down: tried again
		select {
		case <-got:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// probed tells Ready that its probe on channel came back.
func (s *Service) probed(channel string) {
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if got := s.probes[channel]; got != nil {
		select {
		case got <- struct{}{}:
		default:
		}
	}
}

// publishHTTP is POST /v1/events/{channel} (behind the admin key).
func (s *Service) publishHTTP(w http.ResponseWriter, r *http.Request) {
	reply := func(status int, v any) { relay.WriteJSON(w, status, v) }
	channel := r.PathValue("channel")
	if channel == "" || strings.ContainsRune(channel, ',') {
		reply(http.StatusBadRequest, map[string]string{"error": "bad channel name"})
		return
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, int64(s.cfg.MaxEvent)+1))
	status := 0
	switch {
	case err != nil:
		status = relay.BodyStatus(err) // 413 over --http-max-body, 408 too slow
	case len(data) > s.cfg.MaxEvent:
		status = http.StatusRequestEntityTooLarge
	case !json.Valid(bytes.TrimSpace(data)):
		status = http.StatusBadRequest
	}
	if status != 0 {
		reply(status, map[string]string{"error": fmt.Sprintf("the body must be JSON of at most %d bytes", s.cfg.MaxEvent)})
		return
	}
	if err := s.Publish(r.Context(), channel, bytes.TrimSpace(data)); err != nil {
		reply(http.StatusServiceUnavailable, map[string]string{"error": "the broker is unavailable"})
		return
	}
	reply(http.StatusAccepted, map[string]string{"channel": channel})
}

// closeAll ends every subscription (drain: subscribers hold no session).
func (s *Service) closeAll() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		var subs []*relay.Subscriber
		for _, m := range sh.subs {
			for sub := range m {
				subs = append(subs, sub)
			}
		}
		sh.mu.Unlock()
		for _, sub := range subs {
			sub.Close(reason.Shutdown, ws.StatusGoingAway, "Server shutting down")
		}
	}
}

// eventDocs documents the events' metric families.
var eventDocs = map[string]relay.MetricDoc{
	"meetpoint_events_subscribers":                 {Type: "gauge", Help: "Connections subscribed to events on this relay."},
	"meetpoint_events_delivered_total":             {Type: "counter", Help: "Events handed to subscribers of this relay: written, or waiting in a subscriber's 64 KiB queue (lost if it is then disconnected for not reading)."},
	"meetpoint_events_dropped_total":               {Type: "counter", Help: "Events not delivered: the subscriber had ended or did not read (and was disconnected)."},
	"meetpoint_events_published_total":             {Type: "counter", Help: "Events published through this relay (HTTP)."},
	"meetpoint_events_subscriptions_refused_total": {Type: "counter", Help: "Events.Subscribe refused: bad token or a channel the access rules do not allow."},
	"meetpoint_events_invalid_total":               {Type: "counter", Help: "Events published straight into Redis and dropped, by reason: not_json, too_large (over the events' bound, 64 KiB by default)."},
}
