// Package disco serves a groups API compatible with Disco's
// (mosaicnetworks/disco, the discovery server for Babble groups) on the
// relay's port: applications advertise groups of peers, find them, update
// and delete them. By default an unregistered application's groups behave
// as Disco's clients need (anyone updates, replaces or deletes them);
// beyond Disco it has realms (registered applications whose groups only
// their key reaches, as a bearer token or in an /app/KEY/ URL that
// unmodified clients can be given), optional owner secrets (only a
// group's creator or its application updates or deletes it), per-group
// TTLs, persistence across restarts (bbolt under the data directory), and
// bounds on everything an anonymous client can make grow: groups per
// application and in all, their bytes, creations per address, and the
// size of a listing (paged). Errors get real status codes. docs/discovery.md
// lists the routes and every difference from Disco.
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
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/limits"
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
	// OwnerSecrets guards an unregistered application's groups with owner
	// secrets: replacing, updating or deleting one needs the secret its
	// creation returned. Off (the default), anyone may, as in Disco — what
	// Disco's and Babble's clients need. A registered application's groups
	// always need its key.
	OwnerSecrets bool
	// Bounds: request body bytes (default 64 KiB), groups per application
	// (default 1000), peers per group (each list; default 256).
	MaxBody   int64
	MaxGroups int
	MaxPeers  int
	// MaxTotal and MaxBytes bound all the groups together, in number
	// (default 10000) and in stored bytes (default 32 MiB): a group of an
	// unregistered application over them is refused (503). A registered
	// application's groups are bounded by MaxGroups only.
	MaxTotal int
	MaxBytes int64
	// CreateRate bounds new groups per minute from one client address
	// (IPv6 by prefix; addresses exempt from the relay's per-address limits
	// are exempt), in bursts of as many (default 30; refreshing an existing
	// group is not a creation).
	CreateRate float64
	// PageSize is a listing's default number of groups (default 100; a
	// request may ask for up to MaxPageSize, 1000); PageBytes bounds a
	// page's bytes (default 1 MiB; a page holds at least one group).
	PageSize   int
	PageBytes  int
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

// MaxPageSize is the most groups one listing answers.
const MaxPageSize = 1000

// Service is the groups API on one relay.
type Service struct {
	cfg   Config
	st    store
	log   *slog.Logger
	srv   *relay.Server
	rates *limits.Rates // creations per client address

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
	size    int64  // bytes of its stored JSON
}

// bounds are what a put may not exceed: groups of the app, groups in
// all and their stored bytes (0: unbounded).
type bounds struct {
	perApp, total int
	bytes         int64
}

// rejection reasons (meetpoint_groups_rejected_total{reason}).
var rejections = []string{"bad_request", "unauthorized", "forbidden", "not_found", "conflict", "too_large", "limit", "full", "rate", "unavailable"}

// New serves the groups API on srv: POST /group, GET /groups,
// GET/PATCH/DELETE /groups/{id}, and the same under /app/{key}/ for a
// registered application's clients that cannot send its key in a header.
// Call it before srv.Start; Close it after.
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
	if cfg.MaxTotal <= 0 {
		cfg.MaxTotal = 10000
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 32 << 20
	}
	if cfg.CreateRate <= 0 {
		cfg.CreateRate = 30
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = 100
	}
	if cfg.PageSize > MaxPageSize {
		return nil, fmt.Errorf("groups: page size %d is over %d", cfg.PageSize, MaxPageSize)
	}
	if cfg.PageBytes <= 0 {
		cfg.PageBytes = 1 << 20
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
	s := &Service{cfg: cfg, log: srv.Logger(), srv: srv, set: metrics.NewSet(), rejected: make(map[string]*metrics.Counter), stop: make(chan struct{}),
		rates: limits.NewRates(cfg.CreateRate/60, int(math.Ceil(cfg.CreateRate)))}
	for _, r := range rejections {
		s.rejected[r] = s.set.NewCounter(fmt.Sprintf(`meetpoint_groups_rejected_total{reason=%q}`, r))
	}
	if cfg.Redis != nil {
		if cfg.Prefix == "" {
			cfg.Prefix = "meetpoint:"
		}
		s.st = &redisStore{rdb: cfg.Redis, prefix: cfg.Prefix, batch: cfg.sweepBatch}
	} else {
		st, err := openLocal(cfg.DataDir, s.now(), cfg.sweepBatch, s.log)
		if err != nil {
			return nil, err
		}
		s.st = st
	}
	s.set.NewGauge(`meetpoint_groups`, func() float64 { n, _ := s.st.count(); return float64(n) })
	s.set.NewGauge(`meetpoint_groups_bytes`, func() float64 { _, b := s.st.count(); return float64(b) })
	for _, p := range []string{"", "/app/{key}"} {
		srv.Handle("POST "+p+"/group", http.HandlerFunc(s.create))
		srv.Handle("GET "+p+"/groups", http.HandlerFunc(s.list))
		srv.Handle("GET "+p+"/groups/{id}", http.HandlerFunc(s.get))
		srv.Handle("PATCH "+p+"/groups/{id}", http.HandlerFunc(s.update))
		srv.Handle("DELETE "+p+"/groups/{id}", http.HandlerFunc(s.remove))
	}
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

// fail answers an error with its status and a JSON body, counted: an
// object {"error": text}, or text as a JSON string in the answer to GET
// /groups/{id} (oneGroup) — Disco's client decodes whatever that answers
// into a group, and only a body that is not an object makes it report the
// error instead of an empty group.
func (s *Service) fail(w http.ResponseWriter, status int, why, text string) {
	s.rejected[why].Inc()
	switch status {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="meetpoint groups"`)
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "60")
	}
	var body any = map[string]string{"error": text}
	if _, ok := w.(oneGroup); ok {
		body = text
	}
	relay.WriteJSON(w, status, body)
}

// oneGroup is the answer to GET /groups/{id}: its errors are JSON strings.
type oneGroup struct{ http.ResponseWriter }

// unavailable answers 503: the store failed (the fleet's Redis).
func (s *Service) unavailable(w http.ResponseWriter, err error) {
	s.log.Warn("groups: store", "err", err)
	s.fail(w, http.StatusServiceUnavailable, "unavailable", "the groups store is unavailable; try again")
}

// scope is the application an /app/{key}/ route confines the request to:
// the registered application whose key the path carries ("" on the
// plain routes). An unknown key is answered 401.
func (s *Service) scope(w http.ResponseWriter, r *http.Request) (app string, ok bool) {
	key := r.PathValue("key")
	if key == "" {
		return "", true
	}
	if app, ok = relay.MatchKey(s.cfg.Apps, key); !ok {
		relay.CountAuthFailure(r)
		s.fail(w, http.StatusUnauthorized, "unauthorized", "no application has the key in this URL")
	}
	return app, ok
}

// appAccess checks the request against app's realm: ok, or the answer
// already written. keyed reports that the app's key was presented (in
// the request's /app/{key}/ URL, scope, or as a bearer token).
func (s *Service) appAccess(w http.ResponseWriter, r *http.Request, app, scope string) (keyed, ok bool) {
	key, registered := s.cfg.Apps[app]
	switch {
	case scope != "":
		return scope == app, scope == app // the callers keep a scoped request to its app
	case !registered && s.cfg.AppsOnly:
		s.fail(w, http.StatusForbidden, "forbidden", "application "+app+" is not registered on this relay")
		return false, false
	case !registered:
		return false, true
	}
	got := relay.BearerToken(r)
	if subtle.ConstantTimeCompare([]byte(got), []byte(key)) != 1 {
		if r.Header.Get("Authorization") != "" {
			relay.CountAuthFailure(r)
		}
		s.fail(w, http.StatusUnauthorized, "unauthorized", "application "+app+" is registered: its key is required (Authorization: Bearer KEY, or the /app/KEY/ URL)")
		return false, false
	}
	return true, true
}

// readGroup decodes a request body into a group, within the bounds; with
// scope (a scoped request's application, or the group's that PATCH
// replaces) the group belongs to it: AppID defaults to it and may not
// differ.
func (s *Service) readGroup(w http.ResponseWriter, r *http.Request, scope string) (Group, bool) {
	var g Group
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		// The limit that refused it: the relay's --http-max-body may be the smaller.
		s.fail(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body over %d bytes", tooBig.Limit))
		return g, false
	case err != nil: // 408 for one too slow (--http-min-body-rate)
		s.fail(w, relay.BodyStatus(err), "bad_request", "reading the body: "+err.Error())
		return g, false
	}
	if err := json.Unmarshal(body, &g); err != nil {
		s.fail(w, http.StatusBadRequest, "bad_request", "bad JSON: "+err.Error())
		return g, false
	}
	if g.AppID == "" {
		g.AppID = scope
	}
	switch {
	case g.AppID == "":
		s.fail(w, http.StatusBadRequest, "bad_request", "AppID is required")
		return g, false
	case scope != "" && g.AppID != scope:
		s.fail(w, http.StatusForbidden, "forbidden", "this request is application "+scope+"'s: the group's AppID cannot be "+g.AppID)
		return g, false
	case len(g.Peers) > s.cfg.MaxPeers || len(g.GenesisPeers) > s.cfg.MaxPeers:
		s.fail(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("at most %d peers per list", s.cfg.MaxPeers))
		return g, false
	case g.ID != "" && !validID(g.ID):
		s.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("an ID is 1 to %d letters, digits, '-', '_', '.' or '~', and not only dots (or leave it out: the relay makes one)", maxIDLen))
		return g, false
	case len(g.AppID) > maxAppIDLen:
		s.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("an AppID is at most %d bytes", maxAppIDLen))
		return g, false
	case g.TTL < 0 || g.TTL > int64(s.cfg.MaxTTL/time.Second): // compared in seconds: TTL·10⁹ may overflow
		s.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("TTL must be between 0 and %d seconds", int64(s.cfg.MaxTTL/time.Second)))
		return g, false
	}
	return g, true
}

// maxIDLen and maxAppIDLen bound a group's ID and AppID. Disco's and
// Babble's IDs are the relay's own (UUIDs, 36 bytes) and their AppIDs
// names.
const (
	maxIDLen    = 128
	maxAppIDLen = 256
)

// validID reports whether id can be a group's ID: URL-unreserved bytes
// only, so that /groups/{id} reaches it as written, within maxIDLen (the
// disk store's key limit is far above), and not "." or "..", which a path
// cannot carry.
func validID(id string) bool {
	if len(id) == 0 || len(id) > maxIDLen || strings.Trim(id, ".") == "" {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
		default:
			return false
		}
	}
	return true
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

// mayChange reports whether the request may replace, update or delete
// rec: the app's key; anyone, for an unregistered app's group without
// OwnerSecrets (as in Disco); else the group's owner secret. A wrong
// secret counts toward the address's ban.
func (s *Service) mayChange(r *http.Request, rec *record, keyed bool) bool {
	if keyed || !s.cfg.OwnerSecrets {
		return true // a registered app's group was reached with its key (appAccess)
	}
	got := r.Header.Get(SecretHeader)
	if got == "" {
		return false
	}
	if subtle.ConstantTimeCompare([]byte(secretHash(got)), []byte(rec.Secret)) != 1 {
		relay.CountAuthFailure(r)
		return false
	}
	return true
}

// mayCreate spends one of the client address's creations.
func (s *Service) mayCreate(r *http.Request) bool {
	ip := relay.RequestAddr(r)
	if !ip.IsValid() {
		return true // not an IP client (tests' recorders)
	}
	key, exempt := s.srv.ClientKey(ip)
	return exempt || s.rates.Allow(key, time.Now())
}

// create is POST /group: 201 with the id as a JSON string (and the owner
// secret in X-Group-Secret for a new group); an existing id is replaced
// and refreshed (with OwnerSecrets, by its owner only), as Disco's
// clients re-POST a group to update it and as a heartbeat.
func (s *Service) create(w http.ResponseWriter, r *http.Request) {
	scope, ok := s.scope(w, r)
	if !ok {
		return
	}
	g, ok := s.readGroup(w, r, scope)
	if !ok {
		return
	}
	keyed, ok := s.appAccess(w, r, g.AppID, scope)
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
	case live && old.Group.AppID != g.AppID:
		s.fail(w, http.StatusConflict, "conflict", "group "+g.ID+" belongs to another application")
		return
	case live && !s.mayChange(r, old, keyed):
		s.fail(w, http.StatusConflict, "conflict", "group "+g.ID+" exists: its owner secret ("+SecretHeader+") or its application's key replaces it")
		return
	case !live && !s.mayCreate(r):
		s.fail(w, http.StatusTooManyRequests, "rate", fmt.Sprintf("this address created %g groups in the last minute, the most allowed", s.cfg.CreateRate))
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
	if !s.put(w, rec, old, keyed, now) {
		return
	}
	if secret != "" {
		w.Header().Set(SecretHeader, secret)
	}
	relay.WriteJSON(w, http.StatusCreated, g.ID)
}

// put stores rec in place of old within the bounds (a registered app's,
// reached with its key, only within its own), or answers why not.
func (s *Service) put(w http.ResponseWriter, rec, old *record, keyed bool, now time.Time) bool {
	b := bounds{perApp: s.cfg.MaxGroups, total: s.cfg.MaxTotal, bytes: s.cfg.MaxBytes}
	if keyed {
		b.total, b.bytes = 0, 0
	}
	id := rec.Group.ID
	switch err := s.st.put(rec, old, b, now); {
	case err == errLimit:
		s.fail(w, http.StatusTooManyRequests, "limit", fmt.Sprintf("application %s has %d groups, the most allowed", rec.Group.AppID, s.cfg.MaxGroups))
	case err == errFull:
		s.fail(w, http.StatusServiceUnavailable, "full", fmt.Sprintf("the relay holds the most groups it keeps (%d groups, %d bytes); try again when some expire", s.cfg.MaxTotal, s.cfg.MaxBytes))
	case err == errChanged:
		s.fail(w, http.StatusConflict, "conflict", "group "+id+" changed meanwhile: read it again")
	case err != nil:
		s.unavailable(w, err)
	default:
		return true
	}
	return false
}

// list is GET /groups[?app-id=A][&limit=N][&after=ID]: an object id →
// group, one page of them in id order — at most limit groups (default
// PageSize, up to MaxPageSize) and about PageBytes; a Link header (rel
// "next") names the next page. Without app-id, the groups of
// unregistered applications (a registered one's need its app-id and key,
// or its /app/{key}/ URL).
func (s *Service) list(w http.ResponseWriter, r *http.Request) {
	scope, ok := s.scope(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	app := q.Get("app-id")
	switch {
	case scope != "" && app != "" && app != scope:
		s.fail(w, http.StatusForbidden, "forbidden", "the key in this URL is application "+scope+"'s, not "+app+"'s")
		return
	case scope != "":
		app = scope
	case app != "":
		if _, ok := s.appAccess(w, r, app, ""); !ok {
			return
		}
	case s.cfg.AppsOnly: // the open listing is unregistered applications' groups
		s.fail(w, http.StatusForbidden, "forbidden", "this relay serves registered applications only: list one with ?app-id= and its key")
		return
	}
	limit := s.cfg.PageSize
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageSize {
			s.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("limit must be between 1 and %d", MaxPageSize))
			return
		}
		limit = n
	}
	now := s.now()
	ids, err := s.st.ids(app, now)
	if err != nil {
		s.unavailable(w, err)
		return
	}
	if app == "" && len(s.cfg.Apps) > 0 { // registered apps' groups are not listed: not read either
		if ids, err = s.openIDs(ids, now); err != nil {
			s.unavailable(w, err)
			return
		}
	}
	slices.Sort(ids)
	after := q.Get("after")
	i, found := slices.BinarySearch(ids, after)
	if found {
		i++
	}
	out, last, full := s.page(ids[i:], app == "", limit, now)
	if out == nil {
		s.unavailable(w, errors.New("reading a page of groups"))
		return
	}
	if full {
		q.Set("after", last)
		q.Set("limit", strconv.Itoa(limit))
		// The path as the URL carries it: a key in an /app/{key}/ path
		// may hold bytes that only escaped stay in the path.
		w.Header().Set("Link", "<"+r.URL.EscapedPath()+"?"+q.Encode()+`>; rel="next"`)
	}
	relay.WriteJSON(w, http.StatusOK, out)
}

// openIDs is ids without the registered applications' groups (asked of
// the store by application: ids only, no records).
func (s *Service) openIDs(ids []string, now time.Time) ([]string, error) {
	reg := map[string]bool{}
	for app := range s.cfg.Apps {
		of, err := s.st.ids(app, now)
		if err != nil {
			return nil, err
		}
		for _, id := range of {
			reg[id] = true
		}
	}
	return slices.DeleteFunc(ids, func(id string) bool { return reg[id] }), nil
}

// page reads the groups of ids (sorted) into one page: at most limit
// groups and PageBytes (at least one group); open leaves out registered
// applications' groups. full reports that more remain after last. A
// store failure returns a nil page.
//
// Records are read pageBatch at a time, and no more once the page is
// full, so one request reads at most PageBytes and a batch more.
func (s *Service) page(ids []string, open bool, limit int, now time.Time) (out map[string]Group, last string, full bool) {
	out = map[string]Group{}
	var bytes int64
	for len(ids) > 0 {
		if len(out) == limit {
			return out, last, true
		}
		chunk := ids[:min(len(ids), limit-len(out), pageBatch)]
		ids = ids[len(chunk):]
		recs, err := s.st.getMany(chunk)
		if err != nil {
			s.log.Warn("groups: store", "err", err)
			return nil, "", false
		}
		for _, rec := range recs {
			if rec == nil || rec.Expires <= now.UnixMilli() {
				continue
			}
			if _, registered := s.cfg.Apps[rec.Group.AppID]; open && registered {
				continue
			}
			if len(out) > 0 && bytes+rec.size > int64(s.cfg.PageBytes) {
				return out, last, true
			}
			out[rec.Group.ID] = rec.Group
			bytes += rec.size
			last = rec.Group.ID
		}
	}
	return out, last, false
}

// pageBatch is how many records a listing reads from the store at once.
const pageBatch = 16

// lookup finds the group of the request's {id}, with its realm checked.
func (s *Service) lookup(w http.ResponseWriter, r *http.Request) (rec *record, keyed, ok bool) {
	scope, ok := s.scope(w, r)
	if !ok {
		return nil, false, false
	}
	id := r.PathValue("id")
	rec, err := s.st.get(id)
	if err != nil {
		s.unavailable(w, err)
		return nil, false, false
	}
	if rec == nil || rec.Expires <= s.now().UnixMilli() || (scope != "" && rec.Group.AppID != scope) {
		s.fail(w, http.StatusNotFound, "not_found", "no group "+id)
		return nil, false, false
	}
	keyed, ok = s.appAccess(w, r, rec.Group.AppID, scope)
	return rec, keyed, ok
}

// get is GET /groups/{id}.
func (s *Service) get(w http.ResponseWriter, r *http.Request) {
	if rec, _, ok := s.lookup(oneGroup{w}, r); ok {
		relay.WriteJSON(w, http.StatusOK, rec.Group)
	}
}

// update is PATCH /groups/{id}: the body replaces the group (its id and
// app stay) and refreshes its TTL, as Disco's heartbeat does. 200 with the
// id as a JSON string, as Disco answers.
func (s *Service) update(w http.ResponseWriter, r *http.Request) {
	rec, keyed, ok := s.lookup(w, r)
	if !ok {
		return
	}
	g, ok := s.readGroup(w, r, rec.Group.AppID)
	if !ok {
		return
	}
	if !s.mayChange(r, rec, keyed) {
		s.fail(w, http.StatusForbidden, "forbidden", "updating a group needs its owner secret ("+SecretHeader+") or its application's key")
		return
	}
	if g.ID != "" && g.ID != rec.Group.ID {
		s.fail(w, http.StatusBadRequest, "bad_request", "a group's ID and AppID cannot change")
		return
	}
	now := s.now()
	g.ID, g.LastUpdated = rec.Group.ID, now.Unix()
	nrec := &record{Group: g, Expires: now.Add(s.ttlOf(&g)).UnixMilli(), Secret: rec.Secret}
	if s.put(w, nrec, rec, keyed, now) {
		relay.WriteJSON(w, http.StatusOK, g.ID)
	}
}

// remove is DELETE /groups/{id}: 200 with the id.
func (s *Service) remove(w http.ResponseWriter, r *http.Request) {
	rec, keyed, ok := s.lookup(w, r)
	if !ok {
		return
	}
	if !s.mayChange(r, rec, keyed) {
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
	"meetpoint_groups":                {Type: "gauge", Help: "Groups advertised on this relay (the groups API; the fleet's, with a fleet)."},
	"meetpoint_groups_bytes":          {Type: "gauge", Help: "Bytes of the stored groups (bounded by --groups-max-bytes)."},
	"meetpoint_groups_rejected_total": {Type: "counter", Help: "Groups API requests refused, by reason (full: the relay's bounds on all groups; rate: an address's creations per minute; limit: an application's groups)."},
}

// LoadApps reads an apps file: one "APP_ID KEY" per line, each app with
// a key of its own; blank lines and lines starting with # are skipped.
func LoadApps(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	apps := map[string]string{}
	keyOf := map[string]string{} // key → app: a URL or a TURN credential finds its app by key alone
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
		if other, dup := keyOf[f[1]]; dup {
			return nil, fmt.Errorf("%s:%d: application %s has the key of %s: each needs its own", path, i+1, f[0], other)
		}
		apps[f[0]], keyOf[f[1]] = f[1], f[0]
	}
	return apps, nil
}
