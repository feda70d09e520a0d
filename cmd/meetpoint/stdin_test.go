package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/auth"
	"github.com/meetpoint/meetpoint/relay/certs"
)

// stdinSecrets is a configuration with key material inline, as a parent
// process would write it into meetpoint's stdin.
func stdinSecrets(t *testing.T) (conf string, key []byte, fingerprint [32]byte) {
	t.Helper()
	cert, err := certs.SelfSignedCert([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	key = make([]byte, 32)
	_, _ = rand.Read(key)
	conf = fmt.Sprintf("name = \"from-stdin\"\nauth = \"hmac\"\nhmac-key = %q\ntls-only = true\ntls-cert-pem = '''\n%s'''\ntls-key-pem = '''\n%s'''\n",
		hex.EncodeToString(key), certPEM, keyPEM)
	return conf, key, sha256.Sum256(cert.Certificate[0])
}

// TestConfigOnStdin: `--config -` reads every setting, key material
// included, from stdin; the relay serves TLS with that certificate and
// accepts HMAC tokens of that key, keeps doing so after SIGHUP (stdin is
// not read twice), and --print-config prints none of the secrets.
func TestConfigOnStdin(t *testing.T) {
	conf, key, fp := stdinSecrets(t)
	ts := startServeWith(t, &stdinConfig{r: strings.NewReader(conf)}, "--config", "-")
	pinned := &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 || sha256.Sum256(raw[0]) != fp {
			return errors.New("not the certificate from stdin")
		}
		return nil
	}}
	url := "tls://" + ts.addr()
	pairOnce := func(what string) {
		t.Helper()
		tok, err := auth.MintHMAC(key, "dev-1", time.Minute, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a, b, err := client.DialPair(ctx, client.Options{URL: url, Token: tok, TLSConfig: pinned, Name: "a"}, client.Options{URL: url, Token: tok, TLSConfig: pinned, Name: "b"})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer a.Close()
		defer b.Close()
		if a.PeerName() != "b" {
			t.Fatalf("%s: no peer name", what)
		}
	}
	pairOnce("with the configuration from stdin")
	info, err := client.Hello(context.Background(), client.Options{URL: url, TLSConfig: pinned})
	if err != nil || info["name"] != "from-stdin" {
		t.Fatalf("Hello: %v %v", info, err)
	}
	if _, err := client.Hello(context.Background(), client.Options{URL: "tcp://" + ts.addr(), Timeout: 2 * time.Second}); err == nil {
		t.Fatal("plaintext served although tls-only came from stdin")
	}
	ts.sigs <- syscall.SIGHUP
	time.Sleep(200 * time.Millisecond)
	pairOnce("after SIGHUP")

	var out, errb bytes.Buffer
	if code := run([]string{"serve", "--config", "-", "--print-config"}, strings.NewReader(conf), &out, &errb); code != 0 {
		t.Fatalf("print-config: %d %s", code, errb.String())
	}
	for _, secret := range []string{hex.EncodeToString(key), "PRIVATE KEY", "BEGIN CERTIFICATE"} {
		if strings.Contains(out.String(), secret) {
			t.Errorf("print-config printed %q", secret)
		}
	}
	for _, k := range []string{`hmac-key = "(redacted)"`, `tls-key-pem = "(redacted)"`, `name = "from-stdin"`} {
		if !strings.Contains(out.String(), k) {
			t.Errorf("print-config lacks %s", k)
		}
	}
}

// TestKeyMaterialNotOnTheCommandLine: the inline secrets are refused as
// flags (argv is public), and an inline HMAC key needs auth = "hmac".
func TestKeyMaterialNotOnTheCommandLine(t *testing.T) {
	for _, c := range []struct {
		args  []string
		stdin string
		want  string
	}{
		{[]string{"--tls-key-pem", "x"}, "", "configuration file only"},
		{[]string{"--hmac-key", "00"}, "", "configuration file only"},
		{[]string{"--config", "-"}, `hmac-key = "` + strings.Repeat("ab", 32) + `"`, `needs auth = "hmac"`},
		{[]string{"--config", "-"}, `auth = "hmac"`, "needs hmac-key"},
		{[]string{"--config", "-"}, `auth = "hmac"` + "\n" + `hmac-key = "zz"`, "not hex-encoded"},
		{[]string{"--config", "-"}, `tls-cert-pem = "x"`, "tls-cert-pem/tls-key-pem: both"},
		{[]string{"--config", "-"}, "name = \n", "line 1"},
	} {
		var errb bytes.Buffer
		code := run(append([]string{"serve"}, c.args...), strings.NewReader(c.stdin), &bytes.Buffer{}, &errb)
		if code != 2 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("serve %v (stdin %q): exit %d %q, want 2 and %q", c.args, c.stdin, code, errb.String(), c.want)
		}
		if strings.Contains(errb.String(), strings.Repeat("ab", 32)) {
			t.Errorf("the key appears in the error: %q", errb.String())
		}
	}
}

// TestConfigSyntaxErrorsDoNotQuoteKeyMaterial: an inline key written
// without its quotes is a TOML syntax error, and the TOML parser's message
// quotes what it read of the value ("Invalid integer \"0047123\"",
// "… is out of range for int64"). docs/operations.md promises that errors
// never quote key material: the error names the line and the setting, not
// its value. The same mistake in an ordinary setting keeps the parser's
// message.
func TestConfigSyntaxErrorsDoNotQuoteKeyMaterial(t *testing.T) {
	for _, conf := range []string{
		"auth = \"hmac\"\nhmac-key = 004712345abcdef\n",
		"auth = \"hmac\"\nhmac-key = 12345678901234567890123456789\n",
		"[tls]\nkey-pem = 0098765abc\n",
		"tls-cert-pem = 8675309123456789012345678901\n",
	} {
		var errb bytes.Buffer
		code := run([]string{"serve", "--config", "-"}, strings.NewReader(conf), &bytes.Buffer{}, &errb)
		if code != 2 || !strings.Contains(errb.String(), "line ") {
			t.Errorf("stdin %q: exit %d %q, want 2 and the line", conf, code, errb.String())
		}
		for _, part := range []string{"0047", "123456789", "98765", "86753"} {
			if strings.Contains(errb.String(), part) {
				t.Errorf("stdin %q: the error quotes the key: %q", conf, errb.String())
				break
			}
		}
	}
	var errb bytes.Buffer
	if code := run([]string{"serve", "--config", "-"}, strings.NewReader("max-buffer = 0047\n"), &bytes.Buffer{}, &errb); code != 2 ||
		!strings.Contains(errb.String(), `"0047"`) {
		t.Errorf("an ordinary setting: exit %d %q, want the parser's message", code, errb.String())
	}
}

// TestInlineKeyWithoutCertificateRefused: tls-key-pem without
// tls-cert-pem is half of the TLS material, refused like tls-cert-pem
// alone ("both or neither"), not dropped: serve went on and served
// plaintext, tokens in the clear, to an operator who had handed it a key.
func TestInlineKeyWithoutCertificateRefused(t *testing.T) {
	conf, _, _ := stdinSecrets(t)
	_, keyPEM, _ := strings.Cut(conf, "tls-key-pem = ")
	var errb bytes.Buffer
	_, code := parseServeOptions([]string{"--config", "-"}, &stdinConfig{r: strings.NewReader("tls-key-pem = " + keyPEM)},
		io.Discard, io.Discard, &errb)
	if code != 2 || !strings.Contains(errb.String(), "tls-cert-pem/tls-key-pem: both") {
		t.Fatalf("tls-key-pem alone: exit %d %q, want 2 and both or neither", code, errb.String())
	}
	if strings.Contains(errb.String(), "PRIVATE KEY") {
		t.Fatalf("the error quotes the key: %q", errb.String())
	}
}
