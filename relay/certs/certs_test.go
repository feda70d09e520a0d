package certs

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestSelfSignedKeptInDataDir: with DataDir the generated certificate is
// written there (key private to the owner) and reused by the next start,
// so a client that pinned its fingerprint still connects; without DataDir
// each start generates a new one; a damaged file is replaced, not fatal,
// with a warning (pinned clients need the new fingerprint), and the new
// key is private to the owner even where the old file was not.
func TestSelfSignedKeptInDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	start := func(d string) string {
		t.Helper()
		st, err := New(Config{SelfSigned: true, DataDir: d}, quiet())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		return st.Fingerprint()
	}
	first := start(dir)
	if again := start(dir); again != first {
		t.Fatalf("restart with the same data dir: fingerprint %s, was %s", again, first)
	}
	fi, err := os.Stat(filepath.Join(dir, "selfsigned-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("key file mode %v: readable by others", fi.Mode().Perm())
	}
	if a, b := start(""), start(""); a == b || a == first {
		t.Fatalf("without a data dir the certificate should be new each start: %s %s %s", a, b, first)
	}
	if err := os.WriteFile(filepath.Join(dir, "selfsigned-cert.pem"), []byte("damaged"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "selfsigned-key.pem")
	if err := os.Chmod(keyPath, 0o644); err != nil { // a careless restore
		t.Fatal(err)
	}
	logs := &testutil.Tail{}
	st, err := New(Config{SelfSigned: true, DataDir: dir}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	replaced := st.Fingerprint()
	st.Close()
	if replaced == first {
		t.Fatal("a damaged certificate file was not replaced")
	}
	if !strings.Contains(logs.String(), "level=WARN msg=\"the kept self-signed certificate cannot be used") {
		t.Fatalf("the kept certificate replaced without a warning:\n%s", logs.String())
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the new key's file: %v %v, want mode 0600", fi.Mode().Perm(), err)
	}
	if again := start(dir); again != replaced {
		t.Fatalf("the replacement is not kept: %s then %s", replaced, again)
	}
}
