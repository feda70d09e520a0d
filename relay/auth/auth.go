// Package auth holds meetpoint's authenticators: what decides whether a
// client's token is valid. The engine (package relay) sees only the
// relay.Authenticator interface; cmd/meetpoint builds one from --auth.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meetpoint/meetpoint/relay"
)

var (
	_ relay.Stateless = Dummy{}
	_ relay.Stateless = (*FileAuth)(nil)
	_ relay.Stateless = (*HMACAuth)(nil)
	_ relay.Reloader  = (*FileAuth)(nil)
	_ relay.Reloader  = (*HMACAuth)(nil)
)

// ParseAuth builds an Authenticator from a command-line spec:
//
//	dummy          accept every token (Dummy)
//	file:PATH      tokens listed in PATH (FileAuth)
//	hmac:KEYFILE   HMAC tokens signed with the key in KEYFILE (HMACAuth)
//	webhook:URL    ask an HTTP service (Webhook)
//	onetime        one-time tokens from an in-process store (OneTime, MemStore)
//	redis://…      one-time tokens from Redis (OneTime, RedisStore; rediss:// for TLS,
//	               redis+cluster://…, redis+sentinel://… as --fleet)
func ParseAuth(spec string) (relay.Authenticator, error) {
	if strings.HasPrefix(spec, "redis://") || strings.HasPrefix(spec, "rediss://") || strings.HasPrefix(spec, "redis+") || strings.HasPrefix(spec, "rediss+") {
		store, maxAge, err := ParseRedisAuth(spec)
		if err != nil {
			return nil, err // the caller names the setting
		}
		return NewOneTime(store, maxAge), nil
	}
	if spec == "onetime" {
		return NewOneTime(NewMemStore(), 0), nil
	}
	kind, path, _ := strings.Cut(spec, ":")
	var (
		a   relay.Authenticator
		err error
	)
	switch {
	case spec == "dummy":
		return Dummy{}, nil
	case kind == "file" && path != "":
		a, err = NewFileAuth(path)
	case kind == "hmac" && path != "":
		a, err = NewHMACAuth(path)
	case kind == "webhook" && path != "":
		a, err = NewWebhook(path)
	default:
		return nil, fmt.Errorf("%q: want \"dummy\", \"file:PATH\", \"hmac:KEYFILE\", \"webhook:URL\", \"onetime\" or \"redis://HOST:PORT/DB\"", shownSpec(spec))
	}
	if err != nil {
		return nil, fmt.Errorf("%q: %w", shownSpec(spec), err)
	}
	return a, nil
}

// shownSpec is spec as ParseAuth's errors quote it: whole, unless it may
// hold a URL's credentials (a user:password@, a key in a query or
// fragment), then only its kind, what comes before the first ':'.
func shownSpec(spec string) string {
	if !strings.ContainsAny(spec, "@?#") {
		return spec
	}
	kind, _, _ := strings.Cut(spec, ":")
	return kind + ":…"
}

// Dummy accepts every token. It is for tests and trusted networks only.
type Dummy struct{}

// Stateless implements relay.Stateless: Dummy keeps no state at all.
func (Dummy) Stateless() {}

// Authenticate calls done(relay.AuthNoError) before returning.
func (Dummy) Authenticate(_ context.Context, _ relay.AuthRequest, done func(relay.AuthResult)) {
	done(relay.AuthNoError)
}

// FileAuth accepts the tokens listed in a file, one per line. Surrounding
// whitespace is trimmed; blank lines and lines whose first non-blank
// character is '#' are ignored (so a token cannot start with '#'). An empty
// file is valid and rejects every token.
//
// Only SHA-256 digests of the tokens are kept in memory. Authenticate may run
// concurrently with Reload.
type FileAuth struct {
	path   string
	tokens atomic.Pointer[tokenSet]
}

// tokenSet maps the SHA-256 digest of each token to itself. It is never
// modified once built.
type tokenSet map[[sha256.Size]byte][sha256.Size]byte

// NewFileAuth reads the token file at path.
func NewFileAuth(path string) (*FileAuth, error) {
	a := &FileAuth{path: path}
	if err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload re-reads the token file. On error the previous tokens stay in use.
func (a *FileAuth) Reload() error {
	commit, err := a.PrepareReload()
	if err == nil {
		commit()
	}
	return err
}

// PrepareReload implements relay.StagedReloader: it reads the token file,
// and commit puts its tokens in force.
func (a *FileAuth) PrepareReload() (commit func(), err error) {
	data, err := os.ReadFile(a.path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	set := tokenSet{}
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		h := sha256.Sum256([]byte(line))
		set[h] = h
	}
	return func() { a.tokens.Store(&set) }, nil
}

// Len returns the number of distinct tokens loaded.
func (a *FileAuth) Len() int { return len(*a.tokens.Load()) }

// Stateless implements relay.Stateless: Authenticate reads a token set
// that Reload replaces whole (an atomic pointer) and never changes.
func (a *FileAuth) Stateless() {}

// Authenticate calls done before returning: relay.AuthNoError if req.Token is in
// the file, relay.AuthFailed otherwise.
func (a *FileAuth) Authenticate(_ context.Context, req relay.AuthRequest, done func(relay.AuthResult)) {
	if a.valid(req.Token) {
		done(relay.AuthNoError)
	} else {
		done(relay.AuthFailed)
	}
}

// valid looks the token up by its digest, so the time taken depends on the
// digest and not on the token's bytes, then confirms in constant time.
func (a *FileAuth) valid(token string) bool {
	h := sha256.Sum256([]byte(token))
	want, ok := (*a.tokens.Load())[h]
	return ok && subtle.ConstantTimeCompare(want[:], h[:]) == 1
}

// MaxHMACTTL is the longest lifetime of an HMAC token, and the default of
// HMACAuth.MaxTTL.
const MaxHMACTTL = 5 * time.Minute

// MinHMACKeyLen is the least number of key bytes LoadHMACKey and MintHMAC
// accept.
const MinHMACKeyLen = 32

// HMACAuth accepts short-lived tokens signed with a shared key, keeping no
// per-token state. A token is
//
//	ID.EXPIRY.MAC
//
// where ID matches [A-Za-z0-9_-]{1,64}, EXPIRY is the expiry time in decimal
// Unix seconds and MAC is the unpadded base64url encoding (RFC 4648 §5) of
// HMAC-SHA256(key, "ID.EXPIRY"), computed over the exact ID and EXPIRY text
// of the token. A token is valid iff it is well-formed, its MAC matches and
// now < EXPIRY <= now + MaxTTL: a token that claims to live longer than
// MaxTTL is rejected even if correctly signed. MintHMAC makes tokens.
//
// The key file holds the key hex-encoded (for example the output of
// "openssl rand -hex 32"); surrounding whitespace is ignored and at least
// MinHMACKeyLen bytes of key are required. Authenticate may run concurrently
// with Reload.
type HMACAuth struct {
	// MaxTTL bounds how far in the future a token's expiry may be. Zero
	// means MaxHMACTTL. Set it before the first Authenticate.
	MaxTTL time.Duration

	path string
	key  atomic.Pointer[[]byte]
	now  func() time.Time // time.Now; replaced by tests
}

// NewHMACAuth reads the key file at keyPath.
func NewHMACAuth(keyPath string) (*HMACAuth, error) {
	a := &HMACAuth{path: keyPath, now: time.Now}
	if err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Subject implements relay.Subjecter: an HMAC token's subject is its id
// (the part before the first dot; the signature covers it).
func (a *HMACAuth) Subject(token string) string {
	id, _, _ := strings.Cut(token, ".")
	return id
}

// NewHMACAuthKey uses key (hex-encoded, as in a key file) given inline,
// e.g. from a configuration read on stdin; Reload keeps it.
func NewHMACAuthKey(hexKey string) (*HMACAuth, error) {
	key, err := ParseHMACKey(hexKey, "(inline)")
	if err != nil {
		return nil, err
	}
	a := &HMACAuth{now: time.Now}
	a.key.Store(&key)
	return a, nil
}

// Reload re-reads the key file (an inline key stays). On error the
// previous key stays in use.
func (a *HMACAuth) Reload() error {
	commit, err := a.PrepareReload()
	if err == nil {
		commit()
	}
	return err
}

// PrepareReload implements relay.StagedReloader: it reads the key file
// (an inline key stays), and commit puts the key in force.
func (a *HMACAuth) PrepareReload() (commit func(), err error) {
	if a.path == "" {
		return func() {}, nil
	}
	key, err := LoadHMACKey(a.path)
	if err != nil {
		return nil, err
	}
	return func() { a.key.Store(&key) }, nil
}

// LoadHMACKey reads a hex-encoded key of at least MinHMACKeyLen bytes from
// path, ignoring surrounding whitespace.
func LoadHMACKey(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("hmac key: %w", err)
	}
	return ParseHMACKey(string(data), path)
}

// ParseHMACKey decodes a hex-encoded key of at least MinHMACKeyLen bytes
// (surrounding whitespace ignored); where names it in errors, which never
// quote key material.
func ParseHMACKey(text, where string) ([]byte, error) {
	// hex errors quote the offending byte, which is key material: not wrapped.
	key, err := hex.DecodeString(strings.TrimSpace(text))
	if err != nil {
		return nil, fmt.Errorf("hmac key %s: not hex-encoded", where)
	}
	if len(key) < MinHMACKeyLen {
		return nil, fmt.Errorf("hmac key %s: %d bytes, want at least %d", where, len(key), MinHMACKeyLen)
	}
	return key, nil
}

// MinTokenTTL is the shortest lifetime MintHMAC and Mint accept: a
// token's expiry is in whole seconds, rounded down, so a shorter one
// could be expired when it is handed out.
const MinTokenTTL = time.Second

// MintHMAC returns a token for id, signed with key, that expires ttl after
// now, rounded down to the second (see HMACAuth for the format). ttl must be
// at least MinTokenTTL and at most MaxHMACTTL.
func MintHMAC(key []byte, id string, ttl time.Duration, now time.Time) (string, error) {
	if len(key) < MinHMACKeyLen {
		return "", fmt.Errorf("hmac key: %d bytes, want at least %d", len(key), MinHMACKeyLen)
	}
	if !validHMACID(id) {
		return "", fmt.Errorf("hmac token id %q: want 1 to 64 of [A-Za-z0-9_-]", id)
	}
	if ttl < MinTokenTTL || ttl > MaxHMACTTL {
		return "", fmt.Errorf("hmac token ttl %v: want at least %v and at most %v", ttl, MinTokenTTL, MaxHMACTTL)
	}
	payload := id + "." + strconv.FormatInt(now.Add(ttl).Unix(), 10)
	return payload + "." + hmacSign(key, payload), nil
}

// Stateless implements relay.Stateless: Authenticate reads a key that
// Reload replaces whole (an atomic pointer) and the clock.
func (a *HMACAuth) Stateless() {}

// Authenticate calls done before returning: relay.AuthNoError if req.Token is a
// valid token, relay.AuthFailed otherwise.
func (a *HMACAuth) Authenticate(_ context.Context, req relay.AuthRequest, done func(relay.AuthResult)) {
	if a.valid(req.Token, a.now()) {
		done(relay.AuthNoError)
	} else {
		done(relay.AuthFailed)
	}
}

// valid reports whether token is valid at now.
func (a *HMACAuth) valid(token string, now time.Time) bool {
	id, rest, ok1 := strings.Cut(token, ".")
	expiry, mac, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || !validHMACID(id) || !isDigits(expiry) {
		return false
	}
	if !hmac.Equal([]byte(mac), []byte(hmacSign(*a.key.Load(), id+"."+expiry))) {
		return false
	}
	exp, err := strconv.ParseInt(expiry, 10, 64)
	if err != nil {
		return false
	}
	maxTTL := a.MaxTTL
	if maxTTL <= 0 {
		maxTTL = MaxHMACTTL
	}
	return now.Unix() < exp && exp <= now.Add(maxTTL).Unix()
}

// hmacSign returns base64url(HMAC-SHA256(key, payload)) without padding.
func hmacSign(key []byte, payload string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// validHMACID reports whether id matches [A-Za-z0-9_-]{1,64}.
func validHMACID(id string) bool {
	if len(id) < 1 || len(id) > 64 {
		return false
	}
	for _, c := range []byte(id) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}

// isDigits reports whether s is 1 to 19 ASCII digits (any int64 second).
func isDigits(s string) bool {
	if len(s) < 1 || len(s) > 19 {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
