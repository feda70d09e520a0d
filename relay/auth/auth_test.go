package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// authenticate runs a.Authenticate and returns the result, failing unless
// done was called exactly once before Authenticate returned.
func authenticate(t *testing.T, a relay.Authenticator, token string) relay.AuthResult {
	t.Helper()
	var (
		res   relay.AuthResult
		calls int
	)
	a.Authenticate(context.Background(), relay.AuthRequest{Token: token, UUID: "u", Name: "n"}, func(r relay.AuthResult) {
		res = r
		calls++
	})
	if calls != 1 {
		t.Fatalf("done called %d times, want 1", calls)
	}
	return res
}

func expect(t *testing.T, a relay.Authenticator, token string, want relay.AuthResult) {
	t.Helper()
	if got := authenticate(t, a, token); got != want {
		t.Errorf("token %q: got %v, want %v", token, got, want)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestDummy(t *testing.T) {
	for _, tok := range []string{"", "anything", "\x00"} {
		expect(t, Dummy{}, tok, relay.AuthNoError)
	}
}

func TestFileAuth(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, path, "  alpha  \n# beta\n\n   \n  #gamma\nbeta2\r\ndelta\nalpha\n")
	a, err := NewFileAuth(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := a.Len(); n != 3 {
		t.Errorf("Len = %d, want 3", n)
	}
	for _, tok := range []string{"alpha", "beta2", "delta"} {
		expect(t, a, tok, relay.AuthNoError)
	}
	for _, tok := range []string{"", "beta", "# beta", "gamma", "#gamma", "alph", "alphaa", "ALPHA", "beta2\r", " alpha"} {
		expect(t, a, tok, relay.AuthFailed)
	}
}

func TestFileAuthEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, path, "# nobody\n")
	a, err := NewFileAuth(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := a.Len(); n != 0 {
		t.Errorf("Len = %d, want 0", n)
	}
	expect(t, a, "", relay.AuthFailed)
	expect(t, a, "# nobody", relay.AuthFailed)
}

func TestFileAuthMissing(t *testing.T) {
	if _, err := NewFileAuth(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Fatal("NewFileAuth of a missing file succeeded")
	}
}

func TestFileAuthReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, path, "old1\nold2\n")
	a, err := NewFileAuth(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "old2\nnew1\n")
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	expect(t, a, "old1", relay.AuthFailed)
	expect(t, a, "old2", relay.AuthNoError)
	expect(t, a, "new1", relay.AuthNoError)
	if n := a.Len(); n != 2 {
		t.Errorf("Len = %d, want 2", n)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err == nil {
		t.Fatal("Reload of a missing file succeeded")
	}
	expect(t, a, "old2", relay.AuthNoError)
	expect(t, a, "new1", relay.AuthNoError)
	if n := a.Len(); n != 2 {
		t.Errorf("Len = %d after failed reload, want 2", n)
	}
}

func TestFileAuthConcurrentReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, path, "stay\n")
	a, err := NewFileAuth(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				expect(t, a, "stay", relay.AuthNoError)
				expect(t, a, "never", relay.AuthFailed)
			}
		})
	}
	for range 50 {
		if err := a.Reload(); err != nil {
			t.Error(err)
		}
	}
	wg.Wait()
}

// Tests of HMACAuth run at t0 on an injected clock.
var t0 = time.Unix(1_700_000_000, 0)

var testKey = []byte("0123456789abcdef0123456789abcdef") // 32 bytes

func writeKey(t *testing.T, key []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key")
	writeFile(t, path, "\n "+hex.EncodeToString(key)+"\n")
	return path
}

// newHMAC returns an HMACAuth with testKey whose clock reads *now.
func newHMAC(t *testing.T, now *time.Time) *HMACAuth {
	t.Helper()
	a, err := NewHMACAuth(writeKey(t, testKey))
	if err != nil {
		t.Fatal(err)
	}
	a.now = func() time.Time { return *now }
	return a
}

// sign builds ID.EXPIRY.MAC without MintHMAC's checks.
func sign(key []byte, id, expiry string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + expiry))
	return id + "." + expiry + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func mint(t *testing.T, id string, ttl time.Duration) string {
	t.Helper()
	tok, err := MintHMAC(testKey, id, ttl, t0)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestMintHMACFormat(t *testing.T) {
	tok := mint(t, "dev_1-A", time.Minute)
	want := sign(testKey, "dev_1-A", strconv.FormatInt(t0.Unix()+60, 10))
	if tok != want {
		t.Fatalf("MintHMAC = %q, want %q", tok, want)
	}
	// Expiry is rounded down to the second.
	tok, err := MintHMAC(testKey, "x", 1500*time.Millisecond, t0.Add(700*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if want := sign(testKey, "x", strconv.FormatInt(t0.Unix()+2, 10)); tok != want {
		t.Fatalf("MintHMAC = %q, want %q", tok, want)
	}
}

func TestMintHMACErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		key  []byte
		id   string
		ttl  time.Duration
	}{
		{"short key", testKey[:31], "a", time.Minute},
		{"nil key", nil, "a", time.Minute},
		{"empty id", testKey, "", time.Minute},
		{"long id", testKey, strings.Repeat("a", 65), time.Minute},
		{"dot in id", testKey, "a.b", time.Minute},
		{"space in id", testKey, "a b", time.Minute},
		{"zero ttl", testKey, "a", 0},
		{"negative ttl", testKey, "a", -time.Second},
		{"ttl too long", testKey, "a", MaxHMACTTL + time.Nanosecond},
	} {
		if tok, err := MintHMAC(c.key, c.id, c.ttl, t0); err == nil {
			t.Errorf("%s: MintHMAC = %q, want an error", c.name, tok)
		}
	}
	if _, err := MintHMAC(testKey, strings.Repeat("a", 64), MaxHMACTTL, t0); err != nil {
		t.Errorf("64-byte id, MaxHMACTTL: %v", err)
	}
}

func TestHMACAuthValid(t *testing.T) {
	now := t0
	a := newHMAC(t, &now)
	tok := mint(t, "client-7", time.Minute)
	expect(t, a, tok, relay.AuthNoError)
	now = t0.Add(59*time.Second + 999*time.Millisecond)
	expect(t, a, tok, relay.AuthNoError)

	now = t0
	expect(t, a, mint(t, "c", MaxHMACTTL), relay.AuthNoError)
	expect(t, a, mint(t, "c", time.Second), relay.AuthNoError)
}

func TestHMACAuthExpired(t *testing.T) {
	now := t0
	a := newHMAC(t, &now)
	tok := mint(t, "c", time.Minute)
	for _, d := range []time.Duration{time.Minute, time.Minute + 500*time.Millisecond, time.Hour} {
		now = t0.Add(d)
		expect(t, a, tok, relay.AuthFailed)
	}
}

func TestHMACAuthTooFar(t *testing.T) {
	now := t0
	a := newHMAC(t, &now)
	far := strconv.FormatInt(t0.Add(MaxHMACTTL).Unix()+1, 10)
	tok := sign(testKey, "c", far)
	expect(t, a, tok, relay.AuthFailed)
	expect(t, a, sign(testKey, "c", "9223372036854775807"), relay.AuthFailed)
	now = t0.Add(time.Second) // the same token is within reach a second later
	expect(t, a, tok, relay.AuthNoError)

	now = t0
	a.MaxTTL = time.Minute
	tok = mint(t, "c", 2*time.Minute)
	expect(t, a, tok, relay.AuthFailed)
	now = t0.Add(time.Minute)
	expect(t, a, tok, relay.AuthNoError)
}

func TestHMACAuthTampered(t *testing.T) {
	now := t0
	a := newHMAC(t, &now)
	tok := mint(t, "alice", time.Minute)
	id, rest, _ := strings.Cut(tok, ".")
	expiry, mac, _ := strings.Cut(rest, ".")
	exp, _ := strconv.ParseInt(expiry, 10, 64)

	flip := []byte(mac)
	if flip[0] == 'A' {
		flip[0] = 'B'
	} else {
		flip[0] = 'A'
	}
	otherKey := []byte(strings.Repeat("k", 32))
	for name, bad := range map[string]string{
		"mac":          id + "." + expiry + "." + string(flip),
		"mac cut":      id + "." + expiry + "." + mac[:len(mac)-1],
		"mac padded":   tok + "=",
		"mac extended": tok + "A",
		"mac std b64":  id + "." + expiry + "." + base64.RawStdEncoding.EncodeToString(mustDecode(t, mac)),
		"mac hex":      id + "." + expiry + "." + hex.EncodeToString(mustDecode(t, mac)),
		"id":           "alicf." + expiry + "." + mac,
		"id case":      "Alice." + expiry + "." + mac,
		"expiry":       id + "." + strconv.FormatInt(exp+1, 10) + "." + mac,
		"expiry zero":  id + ".0" + expiry + "." + mac,
		"other key":    sign(otherKey, id, expiry),
	} {
		if got := authenticate(t, a, bad); got != relay.AuthFailed {
			t.Errorf("%s: %q got %v, want relay.AuthFailed", name, bad, got)
		}
	}
	expect(t, a, tok, relay.AuthNoError)
}

func mustDecode(t *testing.T, mac string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(mac)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHMACAuthMalformed(t *testing.T) {
	now := t0
	a := newHMAC(t, &now)
	exp := strconv.FormatInt(t0.Unix()+60, 10)
	good := mint(t, "c", time.Minute)
	for _, bad := range []string{
		"", ".", "..", "...",
		"c", "c." + exp, "c." + exp + ".",
		"." + exp + "." + strings.Split(good, ".")[2],
		"c.." + strings.Split(good, ".")[2],
		"c.1.2." + strings.Split(good, ".")[2],
		good + ".",
		" " + good,
		good + " ",
		// Correctly signed, but the id or expiry breaks the syntax.
		sign(testKey, "", exp),
		sign(testKey, "a b", exp),
		sign(testKey, "é", exp),
		sign(testKey, strings.Repeat("a", 65), exp),
		sign(testKey, "c", "+"+exp),
		sign(testKey, "c", " "+exp),
		sign(testKey, "c", exp+".5"),
		sign(testKey, "c", "1e10"),
		sign(testKey, "c", "0x"+strconv.FormatInt(t0.Unix()+60, 16)),
		sign(testKey, "c", "-1"),
		sign(testKey, "c", "99999999999999999999"),
	} {
		expect(t, a, bad, relay.AuthFailed)
	}
	// The same syntax checks pass for a well-formed signed token.
	expect(t, a, sign(testKey, strings.Repeat("a", 64), exp), relay.AuthNoError)
	expect(t, a, sign(testKey, "c", "0"+exp), relay.AuthNoError) // leading zero: signed as is
}

func TestLoadHMACKey(t *testing.T) {
	dir := t.TempDir()
	long := []byte(strings.Repeat("z", 64))
	if key, err := LoadHMACKey(writeKey(t, long)); err != nil || string(key) != string(long) {
		t.Fatalf("64-byte key: %q, %v", key, err)
	}
	for name, content := range map[string]string{
		"short":       hex.EncodeToString(testKey[:31]),
		"empty":       "",
		"not hex":     "this is a secret passphrase that is long enough!",
		"odd hex":     hex.EncodeToString(testKey) + "a",
		"raw":         string(testKey),
		"inner space": hex.EncodeToString(testKey[:16]) + " " + hex.EncodeToString(testKey[16:]),
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		writeFile(t, path, content)
		_, err := LoadHMACKey(path)
		if err == nil {
			t.Errorf("%s key accepted", name)
			continue
		}
		msg := strings.ReplaceAll(err.Error(), path, "")
		if content != "" && strings.Contains(msg, content[len(content)-3:]) {
			t.Errorf("%s key: error %q shows key material", name, err)
		}
		if _, err := NewHMACAuth(path); err == nil {
			t.Errorf("%s key: NewHMACAuth succeeded", name)
		}
	}
	if _, err := LoadHMACKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing key file accepted")
	}
}

func TestHMACAuthReload(t *testing.T) {
	now := t0
	path := writeKey(t, testKey)
	a, err := NewHMACAuth(path)
	if err != nil {
		t.Fatal(err)
	}
	a.now = func() time.Time { return now }
	oldTok := mint(t, "c", time.Minute)
	newKey := []byte(strings.Repeat("n", 40))
	newTok, err := MintHMAC(newKey, "c", time.Minute, t0)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, a, oldTok, relay.AuthNoError)
	expect(t, a, newTok, relay.AuthFailed)

	writeFile(t, path, hex.EncodeToString(newKey))
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	expect(t, a, oldTok, relay.AuthFailed)
	expect(t, a, newTok, relay.AuthNoError)

	writeFile(t, path, "short")
	if err := a.Reload(); err == nil {
		t.Fatal("Reload of a bad key succeeded")
	}
	expect(t, a, newTok, relay.AuthNoError)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err == nil {
		t.Fatal("Reload of a missing key succeeded")
	}
	expect(t, a, newTok, relay.AuthNoError)
}

func TestParseAuth(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	writeFile(t, tokens, "t\n")
	key := writeKey(t, testKey)

	a, err := ParseAuth("dummy")
	if _, ok := a.(Dummy); err != nil || !ok {
		t.Errorf("dummy: %T, %v", a, err)
	}
	a, err = ParseAuth("file:" + tokens)
	if _, ok := a.(*FileAuth); err != nil || !ok {
		t.Errorf("file: %T, %v", a, err)
	}
	if _, ok := a.(relay.Reloader); !ok {
		t.Error("FileAuth is not a Reloader")
	}
	a, err = ParseAuth("hmac:" + key)
	if _, ok := a.(*HMACAuth); err != nil || !ok {
		t.Errorf("hmac: %T, %v", a, err)
	}
	if _, ok := a.(relay.Reloader); !ok {
		t.Error("HMACAuth is not a Reloader")
	}

	for _, spec := range []string{
		"", "Dummy", "dummy:", "dummy:x", "file", "file:", "hmac:", ":x", "ldap:x",
		"file:" + filepath.Join(dir, "missing"),
		"hmac:" + tokens, // not a key
	} {
		a, err := ParseAuth(spec)
		if err == nil {
			t.Errorf("ParseAuth(%q) = %T, want an error", spec, a)
			continue
		}
		if !strings.Contains(err.Error(), strconv.Quote(spec)) {
			t.Errorf("ParseAuth(%q): error %q does not name the spec", spec, err)
		}
	}
}

// TestWebhookSecretsNeverShown: credentials in a webhook's URL (its
// user:password@, a key in its query) are sent but never shown: not in
// String (the form in log lines and dependency names), not in the outage
// warning, whose error net/http writes with the whole URL.
func TestWebhookSecretsNeverShown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	w, err := NewWebhook("http://hookuser:PASSW0RD@" + dead + "/check?key=QUERYKEY")
	if err != nil {
		t.Fatal(err)
	}
	if s := w.String(); strings.Contains(s, "PASSW0RD") || strings.Contains(s, "QUERYKEY") || strings.Contains(s, "hookuser") {
		t.Fatalf("String shows a secret: %s", s)
	}
	logs := &testutil.Tail{}
	cfg := relay.LoopbackConfig(Dummy{})
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := relay.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	w.Watch(srv.AddDependency("auth_webhook", "the authentication webhook ("+w.String()+")", w.Probe))
	res := make(chan relay.AuthResult, 1)
	w.Authenticate(context.Background(), relay.AuthRequest{Token: "client-token"}, func(r relay.AuthResult) { res <- r })
	if r := <-res; r != relay.AuthProxyError {
		t.Fatalf("an unreachable webhook answered %v", r)
	}
	testutil.WaitFor(t, func() bool { return strings.Contains(logs.String(), "unreachable") }, "the outage logged")
	if out := logs.String(); strings.Contains(out, "PASSW0RD") || strings.Contains(out, "QUERYKEY") {
		t.Fatalf("a webhook secret is in the log:\n%s", out)
	}
	if _, err := NewWebhook("ftp://hookuser:PASSW0RD@host/"); err == nil || strings.Contains(err.Error(), "PASSW0RD") {
		t.Fatalf("a refused URL: %v", err)
	}
}

// TestRedisPasswordNeverInParseErrors: a Redis password holding a
// character a URL gives a meaning to ('/', '#', '?', '%', as base64 and
// generated passwords do) makes --auth redis://… unparsable, and
// url.Parse's own message quotes the piece it choked on — the password's
// beginning (invalid port ":S3CR" after host), or its bad escape. The
// error refusing the URL says what is wrong without quoting any of it.
func TestRedisPasswordNeverInParseErrors(t *testing.T) {
	for _, spec := range []string{
		"redis://:S3CR/ET@127.0.0.1:6379/0",
		"redis://:S3CR#ET@127.0.0.1:6379/0",
		"redis://:S3CR?ET@127.0.0.1:6379/0",
		"rediss://user:S3CR/ET@127.0.0.1:6379/0",
		"redis+cluster://:S3CR/ET@127.0.0.1:6379",
		"redis://:%zzS3CRET@127.0.0.1:6379/0",
	} {
		_, err := ParseAuth(spec)
		if err == nil {
			t.Errorf("%s: accepted", spec)
			continue
		}
		if strings.Contains(err.Error(), "S3CR") || strings.Contains(err.Error(), "%zz") {
			t.Errorf("the error refusing a Redis URL quotes its password: %v", err)
		}
		if !strings.Contains(err.Error(), "not a URL") {
			t.Errorf("%s: %v, want it to say the URL does not parse", spec, err)
		}
	}
}

// TestParseAuthNeverShowsURLSecrets: ParseAuth's errors quote the spec,
// and a spec may be a URL with credentials (a webhook's user:password@ or
// key in its query, a Redis password): a webhook URL NewWebhook refuses,
// or a Redis URL with a typo in its scheme, was quoted whole, password
// and all, into the error meetpoint serve prints and its journal keeps.
// The error still names what it refused, without the secret.
func TestParseAuthNeverShowsURLSecrets(t *testing.T) {
	for _, c := range []struct{ spec, names string }{
		{"webhook:ftp://hookuser:PASSW0RD@auth.example/check", "webhook:"},
		{"webhook:https://hookuser:PASSW0RD@/check", "webhook:"},
		{"webhook:ftp://auth.example/check?key=PASSW0RD", "webhook:"},
		{"webhok:https://hookuser:PASSW0RD@auth.example/check", "webhok:"},
		{"redis:/:PASSW0RD@127.0.0.1:6379/0", "redis:"},
		{"REDIS://:PASSW0RD@127.0.0.1:6379/0", "REDIS:"},
	} {
		a, err := ParseAuth(c.spec)
		if err == nil {
			t.Errorf("ParseAuth(%q) = %T, want an error", c.spec, a)
			continue
		}
		if strings.Contains(err.Error(), "PASSW0RD") {
			t.Errorf("the error refusing an --auth spec shows its secret: %v", err)
		}
		if !strings.Contains(err.Error(), c.names) {
			t.Errorf("%v: does not name the spec refused (%s…)", err, c.names)
		}
	}
}
