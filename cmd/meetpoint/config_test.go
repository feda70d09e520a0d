package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// printConfig runs serve --print-config with args and decodes the output.
func printConfig(t *testing.T, args ...string) (map[string]any, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"serve"}, append(args, "--print-config")...), nil, &out, &errb)
	if code != 0 {
		t.Fatalf("serve %v --print-config: exit %d: %s", args, code, errb.String())
	}
	var m map[string]any
	if _, err := toml.Decode(out.String(), &m); err != nil {
		t.Fatalf("print-config output is not TOML: %v\n%s", err, out.String())
	}
	return m, out.String()
}

func TestNymeaConfigFixture(t *testing.T) {
	fs, _ := serveFlags()
	ss, warn, err := readNymeaConfig("testdata/nymea-remoteproxy.conf", fs)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, s := range ss {
		got[s.flag] = s.values
	}
	want := map[string][]string{
		"name":             {"remoteproxy.example.com"},
		"monitor":          {"/tmp/nymea-remoteproxy-monitor.sock"},
		"inactive-timeout": {"5s"},
		"alone-timeout":    {"12s"},
		"auth-timeout":     {"8s"},
		"rpc-timeout":      {"10s"},
		"tls-cert":         {"/etc/letsencrypt/live/remoteproxy.example.com/cert.pem"},
		"tls-key":          {"/etc/letsencrypt/live/remoteproxy.example.com/privkey.pem"},
		"listen":           {"0.0.0.0:443", "0.0.0.0:80", "0.0.0.0:2212", "0.0.0.0:2213"},
	}
	if fs.Lookup("tls-chain") != nil {
		want["tls-chain"] = []string{"/etc/letsencrypt/live/remoteproxy.example.com/chain.pem"}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("settings:\n got %v\nwant %v", got, want)
	}
	joined := strings.Join(warn, "\n")
	for _, w := range []string{"[AWS]", "[UnixSocketServer]", "logFile"} {
		if !strings.Contains(joined, w) {
			t.Errorf("no warning about %s in %q", w, joined)
		}
	}

	// Through serve: the effective configuration carries it all.
	m, _ := printConfig(t, "--nymea-config", "testdata/nymea-remoteproxy.conf")
	if m["name"] != "remoteproxy.example.com" || m["inactive-timeout"] != "5s" || m["alone-timeout"] != "12s" ||
		m["monitor"] != "/tmp/nymea-remoteproxy-monitor.sock" ||
		m["tls-cert"] != "/etc/letsencrypt/live/remoteproxy.example.com/cert.pem" {
		t.Fatalf("effective configuration: %v", m)
	}
	if l, _ := m["listen"].([]any); len(l) != 4 || l[0] != "0.0.0.0:443" {
		t.Fatalf("listen: %v", m["listen"])
	}

	// nymea 1.13's shipped file: TLS off, the TunnelProxy ports only.
	m, _ = printConfig(t, "--nymea-config", "testdata/nymea-remoteproxy-1.13.conf")
	if l, _ := m["listen"].([]any); len(l) != 2 || l[0] != "127.0.0.1:2212" || l[1] != "127.0.0.1:2213" {
		t.Fatalf("1.13 listen: %v", m["listen"])
	}
	if m["tls-cert"] != "" || m["name"] != "nymea-remoteproxy" || m["inactive-timeout"] != "8s" {
		t.Fatalf("1.13: %v", m)
	}
}

func TestNymeaConfigDefaultsAndQuirks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "n.conf")
	os.WriteFile(path, []byte("\ufeff# comment\n[ProxyServer]\nname = \"quoted name\"\n\n[SSL]\nenabled=false\n"), 0o644)
	fs, _ := serveFlags()
	ss, _, err := readNymeaConfig(path, fs)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, s := range ss {
		got[s.flag] = s.values
	}
	// No server section: nymea 1.x's legacy defaults.
	if !reflect.DeepEqual(got["listen"], []string{"127.0.0.1:1212", "127.0.0.1:1213"}) || got["name"][0] != "quoted name" {
		t.Fatalf("settings %v", got)
	}
	if _, ok := got["tls-cert"]; ok {
		t.Fatal("TLS taken over although disabled")
	}
}

func TestTOMLConfigAndFlagOverride(t *testing.T) {
	m, _ := printConfig(t, "--config", "testdata/meetpoint.toml", "--name", "from-flag", "--alone-timeout", "3s")
	for k, want := range map[string]any{
		"name":             "from-flag", // flag beats file
		"alone-timeout":    "3s",        // flag beats file
		"inactive-timeout": "6s",        // file beats default
		"max-buffer":       int64(131072),
		"log-format":       "json",
		"log-level":        "warn",
		"drain-timeout":    "45s",
		"auth-timeout":     "8s", // default
	} {
		if m[k] != want {
			t.Errorf("%s = %#v, want %#v", k, m[k], want)
		}
	}
	if l, _ := m["limit-exempt"].([]any); len(l) != 2 || l[0] != "10.0.0.0/8" {
		t.Errorf("limit-exempt (from a [limit] table) = %v", m["limit-exempt"])
	}
	if _, ok := m["config"]; ok {
		t.Error("print-config lists config")
	}

	// The file beats the nymea file; flags beat both.
	m, _ = printConfig(t, "--nymea-config", "testdata/nymea-remoteproxy.conf", "--config", "testdata/meetpoint.toml",
		"--listen", "127.0.0.1:7777")
	if m["name"] != "relay-eu-1" || m["inactive-timeout"] != "6s" || m["alone-timeout"] != "20s" || m["rpc-timeout"] != "10s" {
		t.Fatalf("layered: %v", m)
	}
	if l, _ := m["listen"].([]any); len(l) != 1 || l[0] != "127.0.0.1:7777" {
		t.Fatalf("listen: %v", m["listen"])
	}

	// What --print-config prints, --config reads back to the same thing.
	_, text := printConfig(t, "--config", "testdata/meetpoint.toml", "--name", "round-trip", "--tunnel-rate", "1000")
	path := filepath.Join(t.TempDir(), "printed.toml")
	os.WriteFile(path, []byte(text), 0o644)
	_, again := printConfig(t, "--config", path)
	if again != text {
		t.Fatalf("round trip differs:\n%s\n---\n%s", text, again)
	}

	// The parsed relay.Config reflects the file.
	cfg, code := parseServe([]string{"--config", "testdata/meetpoint.toml"}, io.Discard, io.Discard, io.Discard)
	if code != -1 || cfg.Name != "relay-eu-1" || cfg.InactiveTimeout != 6*time.Second || cfg.MaxBuffer != 131072 ||
		len(cfg.Limits.Exempt) != 2 {
		t.Fatalf("cfg %+v code %d", cfg, code)
	}
}

func TestBadConfigExit2(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	for _, tc := range []struct {
		args []string
		want []string // all in the one error line
	}{
		{[]string{"--config", write("a.toml", "inactive-timeout = \"soon\"\n")}, []string{"a.toml", "inactive-timeout", `"soon"`, "duration"}},
		{[]string{"--config", write("b.toml", "inactive-timeout = 8\n")}, []string{"inactive-timeout", "duration"}},
		{[]string{"--config", write("c.toml", "no-such-key = 1\n")}, []string{"no-such-key", "unknown setting"}},
		{[]string{"--config", write("d.toml", "name = [\"a\", \"b\"]\n")}, []string{"name", "one value"}},
		{[]string{"--config", write("e.toml", "name = \"x\"\nname = \"y\"\n")}, []string{"e.toml", "line 2"}},
		{[]string{"--config", write("f.toml", "max-buffer = 10\n")}, []string{"max-buffer", "4096"}},
		{[]string{"--config", write("g.toml", "max-buffer = \"big\"\n")}, []string{"max-buffer", "integer"}},
		{[]string{"--config", write("h.toml", "config = \"x.toml\"\n")}, []string{"config", "unknown setting"}},
		{[]string{"--config", write("i.toml", "log-format = \"xml\"\n")}, []string{"log-format", "xml"}},
		{[]string{"--config", write("j.toml", "drain-timeout = \"0s\"\n")}, []string{"drain-timeout"}},
		{[]string{"--config", filepath.Join(dir, "missing.toml")}, []string{"config", "missing.toml"}},
		{[]string{"--nymea-config", write("k.conf", "[ProxyServer]\ninactiveTimeout=abc\n")}, []string{"[ProxyServer] inactiveTimeout", "milliseconds"}},
		{[]string{"--nymea-config", write("l.conf", "[TcpServer]\nport=99999\n")}, []string{"[TcpServer] port", "99999"}},
		{[]string{"--nymea-config", write("m.conf", "[SSL]\nenabled=maybe\n")}, []string{"[SSL] enabled"}},
		{[]string{"--nymea-config", write("n.conf", "[SSL]\nenabled=true\ncertificate=\n")}, []string{"[SSL] certificate"}},
		{[]string{"--nymea-config", write("o.conf", "[ProxyServer\n")}, []string{"o.conf:1"}},
		{[]string{"--nymea-config", filepath.Join(dir, "missing.conf")}, []string{"nymea-config", "missing.conf"}},
		{[]string{"--log-format", "xml"}, []string{"log-format"}},
		{[]string{"--admin-listen", "nope"}, []string{"admin-listen"}},
	} {
		var out, errb bytes.Buffer
		code := run(append([]string{"serve"}, tc.args...), nil, &out, &errb)
		line := errb.String()
		if code != 2 || strings.Count(line, "\n") != 1 || !strings.HasPrefix(line, "meetpoint serve: ") {
			t.Errorf("%v: exit %d, stderr %q", tc.args, code, line)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(line, w) {
				t.Errorf("%v: %q lacks %q", tc.args, line, w)
			}
		}
	}
}

// TestPrintConfigMigrationWarnings: --nymea-config with --print-config says
// what the migration dropped or defaulted, in the output (as comments, so
// it still reads back) and on stderr.
func TestPrintConfigMigrationWarnings(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "--nymea-config", "testdata/nymea-remoteproxy.conf", "--print-config"}, nil, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, w := range []string{"[AWS] ignored", `auth is "dummy": every token is accepted`, `set auth = "webhook:URL"`, "logFile"} {
		if !strings.Contains(out.String(), "# WARNING: ") || !strings.Contains(out.String(), w) {
			t.Errorf("print-config output lacks a warning about %q", w)
		}
		if !strings.Contains(errb.String(), w) {
			t.Errorf("stderr lacks a warning about %q", w)
		}
	}
	// No [SSL]: plaintext, said so.
	path := filepath.Join(t.TempDir(), "n.conf")
	os.WriteFile(path, []byte("[ProxyServer]\nname=x\n"), 0o644)
	_, text := printConfig(t, "--nymea-config", path)
	if !strings.Contains(text, "# WARNING: no [SSL] section") {
		t.Errorf("no warning about plaintext:\n%s", text)
	}
	// An explicit authenticator: no dummy warning.
	_, text = printConfig(t, "--nymea-config", path, "--auth", "file:/dev/null")
	if strings.Contains(text, `auth is "dummy"`) {
		t.Errorf("dummy warning although auth is set:\n%s", text)
	}
	// Without a migration, no warnings.
	if _, text = printConfig(t); strings.Contains(text, "WARNING") {
		t.Errorf("warnings without --nymea-config:\n%s", text)
	}
}

// TestPrintConfigShowsEffectiveDefaults: limit-exempt shows the loopback
// default that applies, not an empty list, and reads back to it; "none"
// is shown as set.
func TestPrintConfigShowsEffectiveDefaults(t *testing.T) {
	m, text := printConfig(t)
	if got, _ := m["limit-exempt"].([]any); len(got) != 2 || got[0] != "127.0.0.0/8" || got[1] != "::1/128" {
		t.Fatalf("limit-exempt = %v", m["limit-exempt"])
	}
	path := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(path, []byte(text), 0o644)
	if m2, _ := printConfig(t, "--config", path); !reflect.DeepEqual(m2["limit-exempt"], m["limit-exempt"]) {
		t.Fatalf("read back: %v", m2["limit-exempt"])
	}
	if m, _ = printConfig(t, "--limit-exempt", "none"); !reflect.DeepEqual(m["limit-exempt"], []any{"none"}) {
		t.Fatalf("limit-exempt none: %v", m["limit-exempt"])
	}
}

// TestPasswordsInURLsNeverShown: a password in a Redis or webhook URL is
// not printed by --print-config (inline keys are redacted there too), nor
// quoted by the error that refuses an unparsable URL at start.
func TestPasswordsInURLsNeverShown(t *testing.T) {
	key := filepath.Join(t.TempDir(), "mesh.key")
	if err := os.WriteFile(key, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, out := printConfig(t, "--fleet", "redis://:S3CRET@127.0.0.1:6379/0", "--mesh-key-file", key,
		"--auth", "webhook:http://hookuser:PASSW0RD@127.0.0.1:1/check")
	if strings.Contains(out, "S3CRET") || strings.Contains(out, "PASSW0RD") || !strings.Contains(out, "redis://:xxxxx@127.0.0.1:6379/0") {
		t.Fatalf("--print-config shows a URL's password, or not the rest of it:\n%s", out)
	}
	for _, args := range [][]string{
		{"--fleet", "redis://:S3CRET@127.0.0.1:badport/0", "--mesh-key-file", key},
		{"--auth", "redis://:S3CRET@127.0.0.1:badport/0"},
	} {
		var stderr lockedBuffer
		if _, code := parseServeOptions(args, nil, io.Discard, io.Discard, &stderr); code != 2 {
			t.Fatalf("%v: exit %d, want 2", args, code)
		}
		if strings.Contains(stderr.String(), "S3CRET") || !strings.Contains(stderr.String(), "invalid port") {
			t.Errorf("%s: %s, want the error without the password", args[0], strings.TrimSpace(stderr.String()))
		}
	}
}

// TestQueryCredentialsNeverShown: a webhook's key in its query and a
// Redis password given as a query parameter (redis+sentinel://…?password=,
// as go-redis reads it) are credentials like user:password@
// (docs/security.md, "Secrets"): --print-config must not print them.
func TestQueryCredentialsNeverShown(t *testing.T) {
	_, out := printConfig(t, "--auth", "webhook:https://auth.example/check?key=QK3Y&code=QC0DE",
		"--events-redis", "redis+sentinel://127.0.0.1:26379?master_name=mymaster&password=QPASS&sentinel_password=QSPASS")
	for _, secret := range []string{"QK3Y", "QC0DE", "QPASS", "QSPASS"} {
		if strings.Contains(out, secret) {
			t.Errorf("--print-config shows %s", secret)
		}
	}
	for _, kept := range []string{"webhook:https://auth.example/check?", "redis+sentinel://127.0.0.1:26379?", "master_name=mymaster"} {
		if !strings.Contains(out, kept) {
			t.Errorf("--print-config leaves out %q", kept)
		}
	}
	if t.Failed() {
		t.Logf("%s", out)
	}
}

// TestNymeaTimeoutOverflowRefused: nymea's timeouts are milliseconds, and
// a value past what a time.Duration holds (2^63 ns, about 292 years: a
// "never" written as a big number) wrapped around in the conversion:
// aloneTimeout=18446744073709552 became an alone timeout of 384µs, every
// waiting client dropped at once, with no error. It must be refused as an
// invalid value, naming the key.
func TestNymeaTimeoutOverflowRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.conf")
	for _, v := range []string{"18446744073709552", "9223372036854776", "9223372036854775807"} {
		if err := os.WriteFile(path, []byte("[ProxyServer]\naloneTimeout="+v+"\n[SSL]\nenabled=false\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		fs, _ := serveFlags()
		ss, _, err := readNymeaConfig(path, fs)
		if err == nil || !strings.Contains(err.Error(), "[ProxyServer] aloneTimeout") {
			for _, s := range ss {
				if s.flag == "alone-timeout" {
					t.Errorf("aloneTimeout=%s: read as %v, want an error", v, s.values)
				}
			}
			if err != nil {
				t.Errorf("aloneTimeout=%s: %v, want an error naming the key", v, err)
			}
		}
	}
}

// TestServeRefusesNaNAndInfinity: the float settings are rates whose
// checks compare (r > 0, r < 0), and NaN fails every comparison:
// conn-rate-per-ip = nan (a TOML float) passed validation and turned the
// per-address connection rate limit off, groups-create-rate = nan let an
// address create groups without bound. A rate must be a finite number.
func TestServeRefusesNaNAndInfinity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.toml")
	if err := os.WriteFile(path, []byte("conn-rate-per-ip = nan\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--config", path},
		{"--conn-rate-per-ip", "NaN"},
		{"--conn-rate-per-ip", "+Inf"},
		{"--groups-create-rate", "NaN"},
		{"--groups-create-rate", "-Inf"},
	} {
		var errb bytes.Buffer
		_, code := parseServeOptions(args, nil, io.Discard, io.Discard, &errb)
		name := strings.TrimPrefix(args[0], "--")
		if name == "config" {
			name = "conn-rate-per-ip"
		}
		if code != 2 || !strings.Contains(errb.String(), name) {
			t.Errorf("%v: exit %d %q, want 2 naming %s", args, code, errb.String(), name)
		}
	}
}

// TestEmptyListInConfigReplacesDefault: a list in a configuration file
// replaces the flag's default, the empty list too. limit-exempt = []
// kept the default exemptions (127.0.0.0/8 and ::1): loopback clients,
// everyone behind a local reverse proxy, stayed outside every
// per-address limit although the file said none is exempt, and
// --print-config showed the default back.
func TestEmptyListInConfigReplacesDefault(t *testing.T) {
	path := filepath.Join(t.TempDir(), "e.toml")
	if err := os.WriteFile(path, []byte("limit-exempt = []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	o, code := parseServeOptions([]string{"--config", path}, nil, io.Discard, io.Discard, &errb)
	if code != -1 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if len(o.cfg.Limits.Exempt) != 0 {
		t.Errorf("limit-exempt = []: exempt %v, want none", o.cfg.Limits.Exempt)
	}
	if m, _ := printConfig(t, "--config", path); !reflect.DeepEqual(m["limit-exempt"], []any{}) {
		t.Errorf("limit-exempt = []: --print-config says %v", m["limit-exempt"])
	}
}

// TestTOMLSettingTwiceRefused: TOML refuses a key defined twice, but a
// table joins its keys with "-", so tls-only = true and [tls] only =
// false are two spellings of one setting that TOML takes as two keys.
// The later one won without a word (here: plaintext allowed by a file
// that says tls-only = true). One file must set a setting once.
func TestTOMLSettingTwiceRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "twice.toml")
	if err := os.WriteFile(path, []byte("tls-only = true\n\n[tls]\nonly = false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	_, code := parseServeOptions([]string{"--config", path}, nil, io.Discard, io.Discard, &errb)
	if code != 2 || !strings.Contains(errb.String(), "tls-only") || !strings.Contains(errb.String(), "twice") {
		t.Fatalf("exit %d %q, want 2 and tls-only set twice", code, errb.String())
	}
}

// TestPrintConfigKeepsSecretFilePaths: --print-config's output read back
// with --config gives the same configuration (docs/operations.md). The
// TURN secret and password are read from files, and the files' paths
// are no secret (as admin-key-file's and mesh-key-file's are not), but
// their names hold "secret" and "password": they were printed as
// "(redacted)", and the printed configuration failed to start ("open
// (redacted): no such file or directory").
func TestPrintConfigKeepsSecretFilePaths(t *testing.T) {
	dir := t.TempDir()
	secret, pass := filepath.Join(dir, "turn.secret"), filepath.Join(dir, "turn.pass")
	if err := os.WriteFile(secret, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pass, []byte("S3CRETpassw0rd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--turn", "--turn-secret-file", secret, "--turn-user", "u", "--turn-password-file", pass}
	m, out := printConfig(t, args...)
	if m["turn-secret-file"] != secret || m["turn-password-file"] != pass {
		t.Errorf("turn-secret-file %v, turn-password-file %v, want the paths", m["turn-secret-file"], m["turn-password-file"])
	}
	if strings.Contains(out, "S3CRET") || strings.Contains(out, strings.Repeat("ab", 32)) {
		t.Fatalf("--print-config shows what the files hold:\n%s", out)
	}
	path := filepath.Join(dir, "printed.toml")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	if _, code := parseServeOptions([]string{"--config", path}, nil, io.Discard, io.Discard, &errb); code != -1 {
		t.Errorf("the printed configuration read back: exit %d %q", code, errb.String())
	}
}
