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
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	bolt "go.etcd.io/bbolt"

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
	MaxBody     int64
	MaxGroups   int
	MaxPeers    int
	SweepEvery  time.Duration // expiry sweep period (default 1 s)
	sweepBatch  int
	nowForTests func() time.Time
}

// SecretHeader carries a group's owner secret: returned when the group is
// created, required (or the app key) to replace, update or delete it.
const SecretHeader = "X-Group-Secret"

// Service is the groups API on one relay.
type Service struct {
	cfg Config
	db  *bolt.DB // nil: memory only
	log *slog.Logger

	mu     sync.Mutex
	groups map[string]*record // by id
	perApp map[string]int     // groups per app id

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
}

var bucket = []byte("groups")

// rejection reasons (meetpoint_groups_rejected_total{reason}).
var rejections = []string{"bad_request", "unauthorized", "forbidden", "not_found", "conflict", "too_large", "limit"}

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
	s := &Service{cfg: cfg, log: srv.Logger(), groups: make(map[string]*record), perApp: make(map[string]int),
		set: metrics.NewSet(), rejected: make(map[string]*metrics.Counter), stop: make(chan struct{})}
	for _, r := range rejections {
		s.rejected[r] = s.set.NewCounter(fmt.Sprintf(`meetpoint_groups_rejected_total{reason=%q}`, r))
	}
	s.set.NewGauge(`meetpoint_groups`, func() float64 { s.mu.Lock(); defer s.mu.Unlock(); return float64(len(s.groups)) })
	if cfg.DataDir != "" {
		if err := s.open(); err != nil {
			return nil, err
		}
	}
	srv.Handle("POST /group", http.HandlerFunc(s.create))
	srv.Handle("GET /groups", http.HandlerFunc(s.list))
	srv.Handle("GET /groups/{id}", http.HandlerFunc(s.get))
	srv.Handle("PATCH /groups/{id}", http.HandlerFunc(s.update))
	srv.Handle("DELETE /groups/{id}", http.HandlerFunc(s.remove))
	srv.AddReporter(s)
	s.done.Add(1)
	go s.sweeper()
	return s, nil
}

// open loads the groups that have not expired from DataDir/groups.db.
func (s *Service) open() error {
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("groups: data dir: %v", err)
	}
	db, err := bolt.Open(filepath.Join(s.cfg.DataDir, "groups.db"), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return fmt.Errorf("groups: %s: %v (is another relay using this --data-dir?)", filepath.Join(s.cfg.DataDir, "groups.db"), err)
	}
	now := s.now().UnixMilli()
	var expired [][]byte
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var r record
			if json.Unmarshal(v, &r) != nil || r.Expires <= now {
				expired = append(expired, append([]byte(nil), k...))
				return nil
			}
			s.groups[r.Group.ID] = &r
			s.perApp[r.Group.AppID]++
			return nil
		})
	})
	if err == nil && len(expired) > 0 {
		err = db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucket)
			for _, k := range expired {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		db.Close()
		return fmt.Errorf("groups: %v", err)
	}
	s.db = db
	return nil
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
	if s.db != nil {
		return s.db.Close()
	}
	return nil
}

func (s *Service) now() time.Time { return s.cfg.nowForTests() }

// save writes r (nil: deletes id) to the store.
func (s *Service) save(id string, r *record) error {
	if s.db == nil {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if r == nil {
			return b.Delete([]byte(id))
		}
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), v)
	})
}

// sweeper deletes expired groups, a batch at a time (no global pause:
// the lock is released between batches).
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

func (s *Service) sweep() {
	now := s.now().UnixMilli()
	s.mu.Lock()
	ids := make([]string, 0, len(s.groups))
	for id := range s.groups {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for len(ids) > 0 {
		batch := ids[:min(len(ids), s.cfg.sweepBatch)]
		ids = ids[len(batch):]
		var gone []string
		s.mu.Lock()
		for _, id := range batch {
			if r := s.groups[id]; r != nil && r.Expires <= now {
				delete(s.groups, id)
				s.perApp[r.Group.AppID]--
				if s.perApp[r.Group.AppID] <= 0 {
					delete(s.perApp, r.Group.AppID)
				}
				gone = append(gone, id)
			}
		}
		s.mu.Unlock()
		for _, id := range gone {
			if err := s.save(id, nil); err != nil {
				s.log.Warn("groups: deleting an expired group", "id", id, "err", err)
			}
		}
	}
}

// fail answers an error with its status and a JSON body, counted.
func (s *Service) fail(w http.ResponseWriter, status int, why, text string) {
	s.rejected[why].Inc()
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="meetpoint groups"`)
	}
	relay.WriteJSON(w, status, map[string]string{"error": text})
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
	s.mu.Lock()
	old := s.groups[g.ID]
	var secret string
	switch {
	case old != nil && !s.owner(r, old, keyed):
		s.mu.Unlock()
		s.fail(w, http.StatusConflict, "conflict", "group "+g.ID+" exists: its owner secret ("+SecretHeader+") or its application's key replaces it")
		return
	case old != nil && old.Group.AppID != g.AppID:
		s.mu.Unlock()
		s.fail(w, http.StatusConflict, "conflict", "group "+g.ID+" belongs to another application")
		return
	case old == nil && s.perApp[g.AppID] >= s.cfg.MaxGroups:
		s.mu.Unlock()
		s.fail(w, http.StatusTooManyRequests, "limit", fmt.Sprintf("application %s has %d groups, the most allowed", g.AppID, s.cfg.MaxGroups))
		return
	}
	rec := &record{Group: g, Expires: now.Add(s.ttlOf(&g)).UnixMilli()}
	if old != nil {
		rec.Secret = old.Secret
	} else {
		secret = newSecret()
		rec.Secret = secretHash(secret)
		s.perApp[g.AppID]++
	}
	s.groups[g.ID] = rec
	err := s.save(g.ID, rec)
	s.mu.Unlock()
	if err != nil {
		relay.WriteJSON(w, http.StatusInternalServerError, map[string]string{"error": "storing the group: " + err.Error()})
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
	now := s.now().UnixMilli()
	out := map[string]Group{}
	s.mu.Lock()
	for id, rec := range s.groups {
		if rec.Expires <= now {
			continue
		}
		_, registered := s.cfg.Apps[rec.Group.AppID]
		if (app != "" && rec.Group.AppID == app) || (app == "" && !registered) {
			out[id] = rec.Group
		}
	}
	s.mu.Unlock()
	relay.WriteJSON(w, http.StatusOK, out)
}

// lookup finds the group of the request's {id}, with its realm checked.
func (s *Service) lookup(w http.ResponseWriter, r *http.Request) (rec *record, keyed, ok bool) {
	id := r.PathValue("id")
	s.mu.Lock()
	rec = s.groups[id]
	s.mu.Unlock()
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
	s.mu.Lock()
	if s.groups[g.ID] != rec { // changed or deleted meanwhile
		s.mu.Unlock()
		s.fail(w, http.StatusConflict, "conflict", "group "+g.ID+" changed meanwhile: read it again")
		return
	}
	s.groups[g.ID] = nrec
	err := s.save(g.ID, nrec)
	s.mu.Unlock()
	if err != nil {
		relay.WriteJSON(w, http.StatusInternalServerError, map[string]string{"error": "storing the group: " + err.Error()})
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
	id := rec.Group.ID
	s.mu.Lock()
	if s.groups[id] == rec {
		delete(s.groups, id)
		s.perApp[rec.Group.AppID]--
	}
	err := s.save(id, nil)
	s.mu.Unlock()
	if err != nil {
		relay.WriteJSON(w, http.StatusInternalServerError, map[string]string{"error": "deleting the group: " + err.Error()})
		return
	}
	relay.WriteJSON(w, http.StatusOK, id)
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

// Report implements relay.Reporter.
func (s *Service) Report(*relay.Snapshot) {}

// Traffic implements relay.Reporter.
func (s *Service) Traffic() uint64 { return 0 }

// WriteMetrics implements relay.Reporter.
func (s *Service) WriteMetrics(w io.Writer) { s.set.WritePrometheus(w) }

// MetricDocs implements relay.MetricDocumenter.
func (s *Service) MetricDocs() map[string]relay.MetricDoc {
	return map[string]relay.MetricDoc{
		"meetpoint_groups":                {Type: "gauge", Help: "Groups advertised on this relay (the groups API)."},
		"meetpoint_groups_rejected_total": {Type: "counter", Help: "Groups API requests refused, by reason."},
	}
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
