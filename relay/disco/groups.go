// Package disco serves a groups API compatible with Disco's
// (mosaicnetworks/disco, the discovery server for Babble groups) on the
// relay's port: applications advertise groups of peers, find them, update
// and delete them. Unlike Disco it has realms (registered applications
// whose groups only their key reaches), owner secrets (only a group's
// creator or its application updates or deletes it), per-group TTLs, and
// persistence across restarts (bbolt under the data directory). Errors get
// real status codes with a JSON body. docs/discovery.md lists the routes
// and every difference from Disco.
package disco

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay"
)

// Peer is one peer of a group, as Disco spells it.
type Peer struct {
	NetAddr   string
	PubKeyHex string
	Moniker   string
}

// Group is a Babble group, with Disco's JSON keys; TTL (seconds) is
// meetpoint's: how long the group lives without an update (0: the
// default).
type Group struct {
	ID           string
	Name         string
	AppID        string
	PubKey       string
	LastUpdated  int64
	Peers        []Peer
	GenesisPeers []Peer
	TTL          int64 `json:",omitempty"`
}

// Config is the groups API's part of a relay's configuration.
type Config struct {
	// DataDir keeps the groups (DataDir/groups.db); "" keeps them in
	// memory only (lost on restart).
	DataDir string
	// TTL is a group's life without an update (default 5 minutes); a
	// group may ask for its own, up to MaxTTL (default 24 hours).
	TTL, MaxTTL time.Duration
	// Apps are the registered applications: app id → key. A registered
	// app's groups are created, listed, read, updated and deleted only with
	// its key (Authorization: Bearer KEY).
	Apps map[string]string
	// AppsOnly refuses groups of unregistered applications (otherwise they
	// are open, as in Disco).
	AppsOnly bool
	// Bounds: request body bytes (default 64 KiB), groups per application
	// (default 1000), peers per group (each list; default 256).
	MaxBody    int64
	MaxGroups  int
	MaxPeers   int
	SweepEvery time.Duration // expiry sweep period (default 1 s)
	// Redis, when set (a fleet), keeps the groups instead of DataDir, with
	// Redis's own expiry, so every node serves the same set; Prefix starts
	// its keys (default "meetpoint:").
	Redis       redis.UniversalClient
	Prefix      string
	sweepBatch  int
	nowForTests func() time.Time
}

// SecretHeader carries a group's owner secret: returned when the group is
// created, required (or the app key) to replace, update or delete it.
const SecretHeader = "X-Group-Secret"

// Service is the groups API on one relay.
type Service struct {
	cfg Config
	st  store
	log *slog.Logger

	set      *metrics.Set
	rejected map[string]*metrics.Counter
	stop     chan struct{}
	done     sync.WaitGroup
}

// record is a stored group.
type record struct {
	Group   Group
	Expires int64  // unix ms
	Secret  string // SHA-256 of the owner secret, hex
	raw     string // as stored in Redis: what a compare-and-set compares
}

// rejection reasons (meetpoint_groups_rejected_total{reason}).
var rejections = []string{"bad_request", "unauthorized", "forbidden", "not_found", "conflict", "too_large", "limit", "unavailable"}

// New serves the groups API on srv: POST /group, GET /groups,
// GET/PATCH/DELETE /groups/{id}. Call it before srv.Start; Close it after.
func New(srv *relay.Server, cfg Config) (*Service, error) {
	if cfg.TTL <= 0 {
		cfg.TTL = 5 * time.Minute
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = 24 * time.Hour
	}
	if cfg.MaxTTL < cfg.TTL {
		return nil, fmt.Errorf("group-max-ttl %v is below group-ttl %v", cfg.MaxTTL, cfg.TTL)
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 64 << 10
	}
	if cfg.MaxGroups <= 0 {
		cfg.MaxGroups = 1000
	}
	if cfg.MaxPeers <= 0 {
		cfg.MaxPeers = 256
	}
	if cfg.SweepEvery <= 0 {
		cfg.SweepEvery = time.Second
	}
	if cfg.sweepBatch <= 0 {
		cfg.sweepBatch = 256
	}
	if cfg.nowForTests == nil {
		cfg.nowForTests = time.Now
	}
	s := &Service{cfg: cfg, log: srv.Logger(), set: metrics.NewSet(), rejected: make(map[string]*metrics.Counter), stop: make(chan struct{})}
	for _, r := range rejections {
		s.rejected[r] = s.set.NewCounter(fmt.Sprintf(`meetpoint_groups_rejected_total{reason=%q}`, r))
	}
	if cfg.Redis != nil {
		if cfg.Prefix == "" {
			cfg.Prefix = "meetpoint:"
		}
		s.st = &redisStore{rdb: cfg.Redis, prefix: cfg.Prefix}
	} else {
		st, err := openLocal(cfg.DataDir, s.now(), cfg.sweepBatch, s.log)
		if err != nil {
			return nil, err
		}
		s.st = st
	}
	s.set.NewGauge(`meetpoint_groups`, func() float64 { return float64(s.st.count()) })
	srv.Handle("POST /group", http.HandlerFunc(s.create))
	srv.Handle("GET /groups", http.HandlerFunc(s.list))
	srv.Handle("GET /groups/{id}", http.HandlerFunc(s.get))
	srv.Handle("PATCH /groups/{id}", http.HandlerFunc(s.update))
	srv.Handle("DELETE /groups/{id}", http.HandlerFunc(s.remove))
	srv.AddMetrics(s.set, groupDocs)
	s.done.Add(1)
	go s.sweeper()
	return s, nil
}

// Close stops the sweeper and closes the store.
func (s *Service) Close() error {
	select {
	case <-s.stop:
		return nil
	default:
	}
	close(s.stop)
	s.done.Wait()
	return s.st.close()
}

func (s *Service) now() time.Time { return s.cfg.nowForTests() }

// sweeper has the store delete expired groups.
func (s *Service) sweeper() {
	defer s.done.Done()
	t := time.NewTicker(s.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.sweep()
		}
	}
}

func (s *Service) sweep() { s.st.sweep(s.now()) }

// fail answers an error with its status and a JSON body, counted.
func (s *Service) fail(w http.ResponseWriter, status int, why, text string) {
	s.rejected[why].Inc()
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="meetpoint groups"`)
	}
	relay.WriteJSON(w, status, map[string]string{"error": text})
}

// unavailable answers 503: the store failed (the fleet's Redis).
func (s *Service) unavailable(w http.ResponseWriter, err error) {
	s.log.Warn("groups: store", "err", err)
	s.fail(w, http.StatusServiceUnavailable, "unavailable", "the groups store is unavailable; try again")
}

// appAccess checks the request against app's realm: ok, or the answer
// already written. keyed reports that the app's key was presented.
func (s *Service) appAccess(w http.ResponseWriter, r *http.Request, app string) (keyed, ok bool) {
	key, registered := s.cfg.Apps[app]
	if !registered {
		if s.cfg.AppsOnly {
			s.fail(w, http.StatusForbidden, "forbidden", "application "+app+" is not registered on this relay")
			return false, false
		}
		return false, true
	}
	got := strings.TrimSpace(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
	if subtle.ConstantTimeCompare([]byte(got), []byte(key)) != 1 {
		s.fail(w, http.StatusUnauthorized, "unauthorized", "application "+app+" is registered: its key is required (Authorization: Bearer KEY)")
		return false, false
	}
	return true, true
}

// readGroup decodes a request body into a group, within the bounds.
func (s *Service) readGroup(w http.ResponseWriter, r *http.Request) (Group, bool) {
	var g Group
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		s.fail(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body over %d bytes", s.cfg.MaxBody))
		return g, false
	case err != nil:
		s.fail(w, http.StatusBadRequest, "bad_request", "reading the body: "+err.Error())
		return g, false
	}
	if err := json.Unmarshal(body, &g); err != nil {
		s.fail(w, http.StatusBadRequest, "bad_request", "bad JSON: "+err.Error())
		return g, false
	}
	switch {
	case g.AppID == "":
		s.fail(w, http.StatusBadRequest, "bad_request", "AppID is required")
		return g, false
	case len(g.Peers) > s.cfg.MaxPeers || len(g.GenesisPeers) > s.cfg.MaxPeers:
		s.fail(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("at most %d peers per list", s.cfg.MaxPeers))
		return g, false
	case g.TTL < 0 || time.Duration(g.TTL)*time.Second > s.cfg.MaxTTL:
		s.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("TTL must be between 0 and %d seconds", int64(s.cfg.MaxTTL/time.Second)))
		return g, false
	}
	return g, true
}

// ttlOf is the group's life.
func (s *Service) ttlOf(g *Group) time.Duration {
	if g.TTL > 0 {
		return time.Duration(g.TTL) * time.Second
	}
	return s.cfg.TTL
}

func secretHash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// owner reports whether the request may change rec: the app's key, or the
// group's owner secret.
func (s *Service) owner(r *http.Request, rec *record, keyed bool) bool {
	if keyed {
		return true
	}
	got := r.Header.Get(SecretHeader)
	return got != "" && subtle.ConstantTimeCompare([]byte(secretHash(got)), []byte(rec.Secret)) == 1
}

// create is POST /group: 201 with the id as a JSON string (and the owner
// secret in X-Group-Secret for a new group); an existing id is replaced by
// its owner only.
func (s *Service) create(w http.ResponseWriter, r *http.Request) {
	g, ok := s.readGroup(w, r)
	if !ok {
		return
	}
	keyed, ok := s.appAccess(w, r, g.AppID)
	if !ok {
		return
	}
	if g.ID == "" {
		g.ID = newID()
	}
	now := s.now()
	g.LastUpdated = now.Unix()
	old, err := s.st.get(g.ID)
	if err != nil {
		s.unavailable(w, err)
		return
	}
	live := old != nil && old.Expires > now.UnixMilli() // an expired one is replaced as if absent
	switch {
	case live && !s.owner(r, old, keyed):
		s.fail(w, http.StatusConflict, "conflict", "group "+g.ID+" exists: its owner secret ("+SecretHeader+") or its application's key replaces it")
		return
	case live && old.Group.AppID != g.AppID:
		s.fail(w, http.StatusConflict, "conflict", "group "+g.ID+" belongs to another application")
		return
	}
	rec := &record{Group: g, Expires: now.Add(s.ttlOf(&g)).UnixMilli()}
	var secret string
	if live {
		rec.Secret = old.Secret
	} else {
		secret = newSecret()
		rec.Secret = secretHash(secret)
	}
	switch err := s.st.put(rec, old, s.cfg.MaxGroups, now); {
	case err == errLimit:
		s.fail(w, http.StatusTooManyRequests, "limit", fmt.Sprintf("application %s has %d groups, the most allowed", g.AppID, s.cfg.MaxGroups))
		return
	case err == errChanged:
		s.fail(w, http.StatusConflict, "conflict", "group "+g.ID+" changed meanwhile: try again")
		return
	case err != nil:
		s.unavailable(w, err)
		return
	}
	if secret != "" {
		w.Header().Set(SecretHeader, secret)
	}
	relay.WriteJSON(w, http.StatusCreated, g.ID)
}

// list is GET /groups[?app-id=A]: an object id → group. Without app-id,
// the groups of unregistered applications (a registered one's need its
// app-id and key).
func (s *Service) list(w http.ResponseWriter, r *http.Request) {
	app := r.URL.Query().Get("app-id")
	if app != "" {
		if _, ok := s.appAccess(w, r, app); !ok {
			return
		}
	}
	recs, err := s.st.list(app, s.now())
	if err != nil {
		s.unavailable(w, err)
		return
	}
	out := map[string]Group{}
	for _, rec := range recs {
		if _, registered := s.cfg.Apps[rec.Group.AppID]; app != "" || !registered {
			out[rec.Group.ID] = rec.Group
		}
	}
	relay.WriteJSON(w, http.StatusOK, out)
}

// lookup finds the group of the request's {id}, with its realm checked.
func (s *Service) lookup(w http.ResponseWriter, r *http.Request) (rec *record, keyed, ok bool) {
	id := r.PathValue("id")
	rec, err := s.st.get(id)
	if err != nil {
		s.unavailable(w, err)
		return nil, false, false
	}
	if rec == nil || rec.Expires <= s.now().UnixMilli() {
		s.fail(w, http.StatusNotFound, "not_found", "no group "+id)
		return nil, false, false
	}
	keyed, ok = s.appAccess(w, r, rec.Group.AppID)
	return rec, keyed, ok
}

// get is GET /groups/{id}.
func (s *Service) get(w http.ResponseWriter, r *http.Request) {
	if rec, _, ok := s.lookup(w, r); ok {
		relay.WriteJSON(w, http.StatusOK, rec.Group)
	}
}

// update is PATCH /groups/{id}: the body replaces the group (its id and
// app stay) and refreshes its TTL, as Disco's heartbeat does. 200 with the
// group.
func (s *Service) update(w http.ResponseWriter, r *http.Request) {
	rec, keyed, ok := s.lookup(w, r)
	if !ok {
		return
	}
	g, ok := s.readGroup(w, r)
	if !ok {
		return
	}
	if !s.owner(r, rec, keyed) {
		s.fail(w, http.StatusForbidden, "forbidden", "updating a group needs its owner secret ("+SecretHeader+") or its application's key")
		return
	}
	if g.AppID != rec.Group.AppID || (g.ID != "" && g.ID != rec.Group.ID) {
		s.fail(w, http.StatusBadRequest, "bad_request", "a group's ID and AppID cannot change")
		return
	}
	now := s.now()
	g.ID, g.LastUpdated = rec.Group.ID, now.Unix()
	nrec := &record{Group: g, Expires: now.Add(s.ttlOf(&g)).UnixMilli(), Secret: rec.Secret}
	switch err := s.st.put(nrec, rec, s.cfg.MaxGroups, now); {
	case err == errChanged:
		s.fail(w, http.StatusConflict, "conflict", "group "+g.ID+" changed meanwhile: read it again")
		return
	case err != nil:
		s.unavailable(w, err)
		return
	}
	relay.WriteJSON(w, http.StatusOK, g)
}

// remove is DELETE /groups/{id}: 200 with the id.
func (s *Service) remove(w http.ResponseWriter, r *http.Request) {
	rec, keyed, ok := s.lookup(w, r)
	if !ok {
		return
	}
	if !s.owner(r, rec, keyed) {
		s.fail(w, http.StatusForbidden, "forbidden", "deleting a group needs its owner secret ("+SecretHeader+") or its application's key")
		return
	}
	switch err := s.st.del(rec); {
	case err == errChanged:
		s.fail(w, http.StatusConflict, "conflict", "group "+rec.Group.ID+" changed meanwhile: read it again")
		return
	case err != nil:
		s.unavailable(w, err)
		return
	}
	relay.WriteJSON(w, http.StatusOK, rec.Group.ID)
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func newSecret() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// groupDocs documents the groups API's metric families.
var groupDocs = map[string]relay.MetricDoc{
	"meetpoint_groups":                {Type: "gauge", Help: "Groups advertised on this relay (the groups API)."},
	"meetpoint_groups_rejected_total": {Type: "counter", Help: "Groups API requests refused, by reason."},
}

// LoadApps reads an apps file: one "APP_ID KEY" per line; blank lines and
// lines starting with # are skipped.
func LoadApps(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	apps := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 || len(f[1]) < 16 {
			return nil, fmt.Errorf("%s:%d: want \"APP_ID KEY\" with a key of at least 16 characters", path, i+1)
		}
		if _, dup := apps[f[0]]; dup {
			return nil, fmt.Errorf("%s:%d: application %s listed twice", path, i+1, f[0])
		}
		apps[f[0]] = f[1]
	}
	return apps, nil
}
