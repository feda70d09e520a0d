package access

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meetpoint/meetpoint/relay"
	"github.com/meetpoint/meetpoint/relay/internal/testutil"
)

// pki makes a CA, a certificate it signed and a self-signed one (a
// friend's device), and writes the CA to dir/ca.pem.
func pki(t *testing.T, dir string) (home, friend *x509.Certificate) {
	t.Helper()
	ca := testutil.Cert(t, "home CA", nil, true)
	testutil.WriteCert(t, ca, filepath.Join(dir, "ca.pem"), "")
	return testutil.Cert(t, "laptop", &ca, false).Leaf, testutil.Cert(t, "friend-phone", nil, false).Leaf
}

// The worked example of docs/security.md.
const example = `
[[rule]]
name = "own devices"
ca = "CA"
allow = ["*"]

[[rule]]
name = "friend"
fingerprint = ["FP"]
deny = ["http:/shared/private/*"]
allow = ["tunnelproxy-reach:6ba7b810-9dad-11d1-80b4-00c04fd430c8", "http:/shared/*"]

[[rule]]
name = "guests"
token-subject = ["guest-*"]
allow = ["pair:guest-*"]

[[rule]]
name = "the page"
anonymous = true
allow = ["http:/", "http:/page/*", "http:/meetpoint.js", "http:/status.json"]
`

// WorkedExample is the example with the home CA's file and the friend's
// fingerprint filled in (exported to the end-to-end tests, which run the
// same rules over each protocol).
func WorkedExample(caFile, friendFingerprint string) string {
	return strings.NewReplacer("CA", caFile, "FP", friendFingerprint).Replace(example)
}

func TestDecide(t *testing.T) {
	dir := t.TempDir()
	home, friend := pki(t, dir)
	fid := relay.IdentityOf(friend, "")
	rules, err := Parse([]byte(WorkedExample(filepath.Join(dir, "ca.pem"), fid.Fingerprint)), "example.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := &Policy{}
	p.rules.Store(&rules)
	homeID, guest, anon := relay.IdentityOf(home, ""), relay.IdentityOf(nil, "guest-42"), relay.IdentityOf(nil, "")
	other := relay.IdentityOf(nil, "bob")
	// The friend's certificate is self-signed: not the home CA's.
	homeWithGuestToken := relay.IdentityOf(home, "guest-1")
	const server = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
	for _, c := range []struct {
		name           string
		id             relay.Identity
		action, target string
		ok             bool
		rule           string
	}{
		{"own device pairs anywhere", homeID, relay.ActionPair, "", true, "own devices"},
		{"own device registers a server", homeID, relay.ActionTPRegister, server, true, "own devices"},
		{"own device reads a private path", homeID, relay.ActionHTTP, "/shared/private/x", true, "own devices"},
		{"own device with a guest token is still an own device", homeWithGuestToken, relay.ActionHTTP, "/db/", true, "own devices"},
		{"friend reaches the shared server", fid, relay.ActionTPReach, server, true, "friend"},
		{"friend reaches another server", fid, relay.ActionTPReach, "7a7a7a7a-0000-4000-8000-000000000001", false, "default"},
		{"friend registers a server", fid, relay.ActionTPRegister, server, false, "default"},
		{"friend reads the shared prefix", fid, relay.ActionHTTP, "/shared/photos/1.jpg", true, "friend"},
		{"friend is denied the private part first", fid, relay.ActionHTTP, "/shared/private/diary", false, "friend"},
		{"friend outside the prefix", fid, relay.ActionHTTP, "/db/", false, "default"},
		{"friend may not pair", fid, relay.ActionPair, "", false, "default"},
		{"guest pairs on a guest nonce", guest, relay.ActionPair, "guest-room", true, "guests"},
		{"guest on another nonce", guest, relay.ActionPair, "family", false, "default"},
		{"guest without a nonce", guest, relay.ActionPair, "", false, "default"},
		{"another token subject", other, relay.ActionPair, "guest-room", false, "default"},
		{"anonymous sees the page", anon, relay.ActionHTTP, "/", true, "the page"},
		{"anonymous loads the client", anon, relay.ActionHTTP, "/meetpoint.js", true, "the page"},
		{"anonymous may not scrape metrics", anon, relay.ActionHTTP, "/metrics", false, "default"},
		{"anonymous may not pair", anon, relay.ActionPair, "guest-room", false, "default"},
	} {
		ok, rule := p.Allow(&c.id, c.action, c.target)
		if ok != c.ok || rule != c.rule {
			t.Errorf("%s: %v by %q, want %v by %q", c.name, ok, rule, c.ok, c.rule)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		p, s string
		ok   bool
	}{
		{"*", "", true}, {"*", "/a/b", true}, {"/shared/*", "/shared/", true}, {"/shared/*", "/shared", false},
		{"/a/*/c", "/a/b/x/c", true}, {"guest-?", "guest-1", true}, {"guest-?", "guest-12", false},
		{"abc", "abc", true}, {"abc", "abd", false}, {"a*b*c", "axxbyyc", true}, {"a*b*c", "axxbyy", false},
		{"", "", true}, {"", "x", false}, {"**", "x", true},
	} {
		if got := Match(c.p, c.s); got != c.ok {
			t.Errorf("Match(%q, %q) = %v", c.p, c.s, got)
		}
	}
}

// TestParseErrors: every mistake is named with its line.
func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"[[rule]]\nname = \"x\"\nany = true\nallow = [\"pear:*\"]\n", `x.toml:4: rule "x": allow: "pear:*": unknown action "pear"`},
		{"[[rule]]\nname = \"a\"\nany = true\nallow = [\"*\"]\n\n[[rule]]\nname = \"b\"\nfingerprint = [\"zz\"]\nallow = [\"*\"]\n", `x.toml:8: rule "b": fingerprint "zz"`},
		{"[[rule]]\nname = \"n\"\nallow = [\"*\"]\n", `x.toml:2: rule "n": says nobody it is for`},
		{"[[rule]]\nname = \"n\"\nany = true\n", `rule "n": allows and denies nothing`},
		{"[[rule]]\nname = \"n\"\nany = true\nallow = [\"*\"]\ncolour = \"red\"\n", `x.toml:5: unknown key "colour"`},
		{"[[rule]]\nname = \"n\"\nany = true\nallow = [\"*\"\n", `x.toml:`},
		{"", `no [[rule]]`},
		{"[[rule]]\nname = \"n\"\nca = \"/nonexistent/ca.pem\"\nallow = [\"*\"]\n", `x.toml:3: rule "n": ca: open /nonexistent/ca.pem`},
		{"[[rule]]\nname = \"q\\\"uote\"\nany = true\nallow = [\"*\"]\n", `no quotes`},
		{"[[rule]]\nname = \"kitchen\"\nsubject = [\"CN=kitchen-*\"]\nallow = [\"*\"]\n", `x.toml:3: rule "kitchen": subject needs ca`},
	} {
		_, err := Parse([]byte(c.src), "x.toml")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q): %v, want …%s…", c.src, err, c.want)
		}
	}
}

// TestSubjectOnlyFromCA: a subject rule matches certificates its CA
// signed; a self-signed certificate admitted by fingerprint (here also
// listed by a fingerprint rule below it) cannot claim the subject.
func TestSubjectOnlyFromCA(t *testing.T) {
	dir := t.TempDir()
	ca := testutil.Cert(t, "home CA", nil, true)
	testutil.WriteCert(t, ca, filepath.Join(dir, "ca.pem"), "")
	kitchen := testutil.Cert(t, "kitchen-1", &ca, false).Leaf
	evil := testutil.Cert(t, "kitchen-evil", nil, false).Leaf
	evilID := relay.IdentityOf(evil, "")
	rules, err := Parse([]byte(`
[[rule]]
name = "kitchens"
ca = "`+filepath.Join(dir, "ca.pem")+`"
subject = ["CN=kitchen-*"]
allow = ["pair:kitchen"]

[[rule]]
name = "friend"
fingerprint = ["`+evilID.Fingerprint+`"]
allow = ["http:/shared/*"]
`), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := &Policy{}
	p.rules.Store(&rules)
	for _, c := range []struct {
		cert *x509.Certificate
		want bool
	}{{kitchen, true}, {evil, false}} {
		id := relay.IdentityOf(c.cert, "")
		if ok, rule := p.Allow(&id, relay.ActionPair, "kitchen"); ok != c.want {
			t.Errorf("%s pairing on kitchen: %v (rule %s), want %v", id.Subject, ok, rule, c.want)
		}
	}
}

// TestReloadKeepsRulesOnError: a broken file on reload leaves the rules in
// force; a good one replaces them.
func TestReloadKeepsRulesOnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.toml")
	os.WriteFile(path, []byte("[[rule]]\nname = \"all\"\nany = true\nallow = [\"*\"]\n"), 0o600)
	p, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	anon := relay.IdentityOf(nil, "")
	os.WriteFile(path, []byte("[[rule]]\nname = \"broken\"\n"), 0o600)
	if err := p.Reload(); err == nil {
		t.Fatal("a broken file reloaded")
	}
	if ok, _ := p.Allow(&anon, relay.ActionPair, ""); !ok {
		t.Fatal("the old rules were dropped")
	}
	os.WriteFile(path, []byte("[[rule]]\nname = \"none\"\nany = true\ndeny = [\"*\"]\n"), 0o600)
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if ok, rule := p.Allow(&anon, relay.ActionPair, ""); ok || rule != "none" {
		t.Fatalf("after reload: %v %q", ok, rule)
	}
}

// TestAnyWithOtherConditions: "all given must hold" holds for any = true
// too: a rule that says any = true and also names a certificate is for
// that certificate only. isFor returned true at any = true before looking
// at the rest, so such a rule granted its entries to every client,
// anonymous ones included.
func TestAnyWithOtherConditions(t *testing.T) {
	dir := t.TempDir()
	home, friend := pki(t, dir)
	fid := relay.IdentityOf(friend, "")
	rules, err := Parse([]byte(`
[[rule]]
name = "friend, whatever the token"
any = true
fingerprint = ["`+fid.Fingerprint+`"]
allow = ["http:/shared/*"]

[[rule]]
name = "operators"
any = true
token-subject = ["ops-*"]
allow = ["http:/metrics"]
`), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := &Policy{}
	p.rules.Store(&rules)
	for _, c := range []struct {
		name   string
		id     relay.Identity
		target string
		ok     bool
	}{
		{"the friend", fid, "/shared/x", true},
		{"the friend with a token", relay.IdentityOf(friend, "bob"), "/shared/x", true},
		{"anonymous on the friend's rule", relay.IdentityOf(nil, ""), "/shared/x", false},
		{"another certificate on the friend's rule", relay.IdentityOf(home, ""), "/shared/x", false},
		{"an operator", relay.IdentityOf(nil, "ops-1"), "/metrics", true},
		{"another token subject on the operators' rule", relay.IdentityOf(nil, "guest-1"), "/metrics", false},
		{"anonymous on the operators' rule", relay.IdentityOf(nil, ""), "/metrics", false},
	} {
		if ok, rule := p.Allow(&c.id, relay.ActionHTTP, c.target); ok != c.ok {
			t.Errorf("%s, %s: %v (rule %q), want %v", c.name, c.target, ok, rule, c.ok)
		}
	}
}

// TestMatchQuestionIsOneCharacter: ? is one character, as the rules
// promise, not one byte: "guest-?" takes guest-é, and "room-??" (two
// characters) does not take room-é, one character of two bytes, which it
// granted.
func TestMatchQuestionIsOneCharacter(t *testing.T) {
	for _, c := range []struct {
		p, s string
		ok   bool
	}{
		{"guest-?", "guest-é", true}, {"room-??", "room-é", false}, {"x?y", "x日y", true}, {"x??y", "x日y", false},
		{"*?", "é", true}, {"*??", "é", false}, {"a*?b", "a日b", true}, {"?", "\xff", true}, {"??", "日", false},
	} {
		if got := Match(c.p, c.s); got != c.ok {
			t.Errorf("Match(%q, %q) = %v", c.p, c.s, got)
		}
	}
}

// TestEmptyListIsForNobody: "all given must hold" holds for a list given
// empty too: a rule whose fingerprint or ca list an operator emptied (to
// revoke the last device it named) is for no certificate, as an empty
// subject or token-subject list already was. An empty fingerprint or ca
// list was read as not given, so the rule's other conditions alone
// decided: "ca + fingerprint = []" admitted every certificate the CA
// signed, "fingerprint = [] + token-subject" every token of the subject,
// certificate or none.
func TestEmptyListIsForNobody(t *testing.T) {
	dir := t.TempDir()
	home, friend := pki(t, dir)
	ca := filepath.Join(dir, "ca.pem")
	rules, err := Parse([]byte(`
[[rule]]
name = "listed home devices"
ca = "`+ca+`"
fingerprint = []
allow = ["http:/home/*"]

[[rule]]
name = "guests on listed CAs"
ca = []
token-subject = ["guest-*"]
allow = ["http:/guests/*"]

[[rule]]
name = "listed friends with a token"
fingerprint = []
token-subject = ["friend-*"]
allow = ["http:/friends/*"]
`), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := &Policy{}
	p.rules.Store(&rules)
	for _, c := range []struct {
		name   string
		id     relay.Identity
		target string
	}{
		{"a home certificate no fingerprint lists", relay.IdentityOf(home, ""), "/home/x"},
		{"a guest token without a certificate", relay.IdentityOf(nil, "guest-1"), "/guests/x"},
		{"a guest token with a self-signed certificate", relay.IdentityOf(friend, "guest-1"), "/guests/x"},
		{"a friend token without a certificate", relay.IdentityOf(nil, "friend-1"), "/friends/x"},
		{"a friend token with an unlisted certificate", relay.IdentityOf(friend, "friend-1"), "/friends/x"},
	} {
		if ok, rule := p.Allow(&c.id, relay.ActionHTTP, c.target); ok {
			t.Errorf("%s, %s: allowed by rule %q, an empty list in it is for nobody", c.name, c.target, rule)
		}
	}
}
