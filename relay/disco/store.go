package disco

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// store keeps the groups. Writes are compare-and-set against the record
// the handler read, so two requests racing on one group cannot both win.
type store interface {
	// get is id's live record; nil if there is none (or it expired).
	get(id string) (*record, error)
	// put stores rec in place of old (nil: id must be absent), refusing
	// with errChanged if the stored record is no longer old, with errLimit
	// if a new group would exceed b.perApp for its app, and with errFull
	// if a new group would exceed b.total or the stored bytes would grow
	// over b.bytes (0: unbounded). It sets rec.size.
	put(rec, old *record, b bounds, now time.Time) error
	// del deletes old's group if it is still old.
	del(old *record) error
	// ids are the ids of app's live groups, or of every app's when app
	// is "" (in no order).
	ids(app string, now time.Time) ([]string, error)
	// getMany is the records of ids, in their order (nil where there is
	// none).
	getMany(ids []string) ([]*record, error)
	// count is how many groups are stored, and their bytes.
	count() (groups int, bytes int64)
	// sweep removes expired groups (a store without native expiry).
	sweep(now time.Time)
	close() error
}

var (
	errChanged = errors.New("the group changed meanwhile")
	errLimit   = errors.New("the application has the most groups allowed")
	errFull    = errors.New("the relay holds the most groups it keeps")
)

// localStore is one relay's: a map, persisted in bbolt under DataDir
// when one is set.
type localStore struct {
	db    *bolt.DB // nil: memory only
	log   *slog.Logger
	batch int

	mu     sync.Mutex
	groups map[string]*record // by id; guarded by mu
	perApp map[string]int     // groups per app id; guarded by mu
	bytes  int64              // the groups' stored bytes; guarded by mu
}

var bucket = []byte("groups")

// openLocal loads the groups that have not expired from dir/groups.db
// ("" : memory only).
func openLocal(dir string, now time.Time, batch int, log *slog.Logger) (*localStore, error) {
	s := &localStore{log: log, batch: batch, groups: map[string]*record{}, perApp: map[string]int{}}
	if dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("groups: data dir: %v", err)
	}
	path := filepath.Join(dir, "groups.db")
	db, err := s.load(path, now.UnixMilli())
	if errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrChecksum) || errors.Is(err, berrors.ErrVersionMismatch) || errors.Is(err, errDamaged) {
		// A file bbolt cannot read (damaged storage, a partial copy): the
		// groups are soft state, minutes of TTL, so it is set aside and the
		// relay starts without them, as a kept certificate that cannot be
		// used is replaced, instead of refusing to start (serve's exit 2,
		// which systemd is told never to restart).
		aside := path + ".corrupt"
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("groups: %v; setting it aside: %v", err, rerr)
		}
		log.Warn("groups: the kept groups cannot be read: the file is set aside and the relay starts without them",
			"err", err.Error(), "file", path, "set_aside", aside)
		db, err = s.load(path, now.UnixMilli())
	}
	if err != nil {
		return nil, fmt.Errorf("groups: %w", err)
	}
	s.db = db
	return s, nil
}

// load opens path and reads its groups into s, deleting those expired by
// ms. A panic of bbolt's is returned as errDamaged: a damaged page its
// checksums (the meta pages' only) do not cover, a zeroed freelist page
// while opening or a damaged leaf or branch page while reading.
// Unrecovered, it would end the process at every start, and systemd would
// restart it in a loop. On any error the database is closed (one whose
// Open panicked leaks the descriptor and mapping bbolt made, once per
// start) and s is left empty.
func (s *localStore) load(path string, ms int64) (db *bolt.DB, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s: %w: %v", path, errDamaged, p)
		}
		if err != nil {
			if db != nil {
				db.Close()
			}
			db = nil
			s.groups, s.perApp, s.bytes = map[string]*record{}, map[string]int{}, 0
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%s: %w: %w (is another relay using this --data-dir?)", path, ErrDataDirBusy, err)
	} else if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		var expired [][]byte
		err = b.ForEach(func(k, v []byte) error {
			var r record
			if json.Unmarshal(v, &r) != nil || r.Expires <= ms {
				expired = append(expired, append([]byte(nil), k...))
				return nil
			}
			r.size = int64(len(v))
			s.groups[r.Group.ID] = &r
			s.perApp[r.Group.AppID]++
			s.bytes += r.size
			return nil
		})
		for _, k := range expired {
			if err == nil {
				err = b.Delete(k)
			}
		}
		return err
	})
	if err != nil {
		err = fmt.Errorf("%s: %w", path, err)
	}
	return db, err
}

// ErrDataDirBusy is New's error when another process holds groups.db's
// lock for longer than New waits (2 s): a relay still shutting down, or a
// second relay on the same --data-dir. Unlike a bad configuration, it may
// clear by itself.
var ErrDataDirBusy = errors.New("locked by another process")

// errDamaged is a groups.db on which bbolt panicked (load).
var errDamaged = errors.New("damaged file (bbolt panicked reading it)")

func (s *localStore) close() error {
	if s.db != nil {
		return s.db.Close()
	}
	return nil
}

// save writes r (its JSON, v) to bbolt.
func (s *localStore) save(id string, v []byte) error {
	if s.db == nil {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(id), v) })
}

// forget deletes ids from bbolt, in one transaction (one sync to disk).
func (s *localStore) forget(ids ...string) error {
	if s.db == nil || len(ids) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		for _, id := range ids {
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
}

// forgetExpired deletes ids from bbolt, in one transaction, those whose
// stored record expired by ms only: the sweep deletes outside the lock,
// and a group re-created meanwhile (a late heartbeat) may have reached the
// disk first. A record that is not JSON is deleted, as openLocal does.
func (s *localStore) forgetExpired(ms int64, ids []string) error {
	if s.db == nil || len(ids) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		for _, id := range ids {
			var r struct{ Expires int64 }
			if v := b.Get([]byte(id)); v == nil || (json.Unmarshal(v, &r) == nil && r.Expires > ms) {
				continue
			}
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *localStore) get(id string) (*record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.groups[id], nil // expiry is the caller's check (sweeps lag)
}

func (s *localStore) put(rec, old *record, b bounds, _ time.Time) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	rec.size = int64(len(v))
	id := rec.Group.ID
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.groups[id] != old {
		return errChanged
	}
	var was int64
	if old != nil {
		was = old.size
	}
	// An expired group not swept yet may be replaced by another
	// application's: the group then moves between the apps' counts.
	joins := old == nil || old.Group.AppID != rec.Group.AppID
	switch {
	case joins && b.perApp > 0 && s.perApp[rec.Group.AppID] >= b.perApp:
		return errLimit
	case old == nil && b.total > 0 && len(s.groups) >= b.total,
		b.bytes > 0 && rec.size > was && s.bytes-was+rec.size > b.bytes:
		return errFull
	}
	if err := s.save(id, v); err != nil { // first: a refused write changes nothing
		return err
	}
	if joins {
		if old != nil {
			s.leave(old.Group.AppID)
		}
		s.perApp[rec.Group.AppID]++
	}
	s.groups[id] = rec
	s.bytes += rec.size - was
	return nil
}

func (s *localStore) del(old *record) error {
	id := old.Group.ID
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.groups[id] != old {
		return errChanged
	}
	if err := s.forget(id); err != nil { // first: a refused delete changes nothing
		return err
	}
	s.drop(id, old)
	return nil
}

// drop forgets id (under mu).
func (s *localStore) drop(id string, r *record) {
	delete(s.groups, id)
	s.bytes -= r.size
	s.leave(r.Group.AppID)
}

// leave counts one group fewer for app (under mu); an app with none is
// forgotten.
func (s *localStore) leave(app string) {
	if s.perApp[app]--; s.perApp[app] <= 0 {
		delete(s.perApp, app)
	}
}

func (s *localStore) ids(app string, now time.Time) ([]string, error) {
	ms := now.UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for id, r := range s.groups {
		if r.Expires > ms && (app == "" || r.Group.AppID == app) {
			out = append(out, id)
		}
	}
	return out, nil
}

func (s *localStore) getMany(ids []string) ([]*record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*record, len(ids))
	for i, id := range ids {
		out[i] = s.groups[id]
	}
	return out, nil
}

func (s *localStore) count() (int, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.groups), s.bytes
}

// sweep deletes expired groups a batch at a time (no global pause: the
// lock is released between batches).
func (s *localStore) sweep(now time.Time) {
	ms := now.UnixMilli()
	s.mu.Lock()
	ids := make([]string, 0, len(s.groups))
	for id := range s.groups {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for len(ids) > 0 {
		batch := ids[:min(len(ids), s.batch)]
		ids = ids[len(batch):]
		var gone []string
		s.mu.Lock()
		for _, id := range batch {
			if r := s.groups[id]; r != nil && r.Expires <= ms {
				s.drop(id, r)
				gone = append(gone, id)
			}
		}
		s.mu.Unlock()
		if err := s.forgetExpired(ms, gone); err != nil {
			s.log.Warn("groups: deleting expired groups", "groups", len(gone), "err", err)
		}
	}
}
