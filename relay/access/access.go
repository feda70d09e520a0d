// Package access decides what each identity may do on a relay, from an
// ordered rules file (meetpoint serve --access FILE, TOML, reloaded on
// SIGHUP):
//
//	[[rule]]
//	name = "own devices"               # for logs and meetpoint_access_total
//	ca = "/etc/meetpoint/home-ca.pem"  # whom: client certificates signed by this CA
//	allow = ["*"]                      # what: every action, any target
//
//	[[rule]]
//	name = "friend"
//	fingerprint = ["3f2a…"]            # whom: this client certificate (SHA-256, hex)
//	allow = ["tunnelproxy-reach:6ba7b810-9dad-11d1-80b4-00c04fd430c8", "http:/shared/*"]
//	deny = ["http:/shared/private/*"]
//
// Whom (all given must hold; a list given empty holds for nobody): ca (a PEM file or a list), fingerprint,
// subject (patterns on the certificate subject, e.g. "CN=kitchen-*";
// only with ca: the patterns apply to certificates that CA signed),
// token-subject (patterns on the token's subject: an HMAC token's id),
// anonymous = true, any = true. What: entries "ACTION:PATTERN", "ACTION"
// (any target) or "*" (everything), ACTION one of pair (target: the
// nonce), tunnelproxy-register and tunnelproxy-reach (the server uuid,
// lower case, no braces), http (the request path), events (a channel). Patterns: * is any run
// of characters (slashes included), ? any one, the rest literal.
//
// The first rule that is for the identity and names the action and target
// decides — its deny entries before its allow entries; when no rule does,
// the answer is no (rule "default").
package access

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"github.com/meetpoint/meetpoint/relay"
)

// Actions rules may name.
var actions = map[string]bool{relay.ActionPair: true, relay.ActionTPRegister: true, relay.ActionTPReach: true, relay.ActionHTTP: true,
	relay.ActionEvents: true}

// Policy is a loaded rules file; it implements relay.Access and
// relay.Reloader. Safe for concurrent use.
type Policy struct {
	path  string
	rules atomic.Pointer[[]rule]
}

// rule is a compiled [[rule]]. A condition's list given empty (ca = [],
// fingerprint = [], …) is non-nil and holds for nobody; nil is not given.
type rule struct {
	name         string
	cas          []*x509.CertPool
	fingerprints map[string]bool
	subjects     []string
	tokenSubs    []string
	anonymous    bool
	any          bool
	allow, deny  []entry
}

// entry is one "ACTION:PATTERN" (action "*": every action).
type entry struct{ action, pattern string }

// Load reads the rules file at path.
func Load(path string) (*Policy, error) {
	p := &Policy{path: path}
	if err := p.Reload(); err != nil {
		return nil, err
	}
	return p, nil
}

// Reload re-reads the rules file; on error the rules in force stay.
func (p *Policy) Reload() error {
	commit, err := p.PrepareReload()
	if err == nil {
		commit()
	}
	return err
}

// PrepareReload implements relay.StagedReloader: it reads and checks the
// rules file, and commit puts its rules in force.
func (p *Policy) PrepareReload() (commit func(), err error) {
	data, err := os.ReadFile(p.path)
	if err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	rules, err := Parse(data, p.path)
	if err != nil {
		return nil, err
	}
	return func() { p.rules.Store(&rules) }, nil
}

// Rules is the number of rules in force.
func (p *Policy) Rules() int { return len(*p.rules.Load()) }

// fileRule is a rule as written.
type fileRule struct {
	Name         string
	CA           any `toml:"ca"`
	Fingerprint  []string
	Subject      []string
	TokenSubject []string `toml:"token-subject"`
	Anonymous    bool
	Any          bool
	Allow, Deny  []string
}

var ruleHeader = regexp.MustCompile(`(?m)^\s*\[\[\s*rule\s*\]\]`)

// Parse reads rules from a file's contents; errors name the file and
// line (where names it).
func Parse(data []byte, where string) ([]rule, error) {
	var f struct{ Rule []fileRule }
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("access %s:%d: %s", where, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("access %s: %v", where, err)
	}
	// Lines of each [[rule]] header, to point errors at the rule (and the
	// key within it).
	var starts []int
	for _, m := range ruleHeader.FindAllIndex(data, -1) {
		starts = append(starts, 1+bytes.Count(data[:m[0]], []byte("\n")))
	}
	lineOf := func(i int, key string) int {
		if i >= len(starts) {
			return 0
		}
		lines := strings.Split(string(data), "\n")
		end := len(lines)
		if i+1 < len(starts) {
			end = starts[i+1] - 1
		}
		for n := starts[i]; n < end && n < len(lines); n++ {
			if k, _, ok := strings.Cut(strings.TrimSpace(lines[n]), "="); ok && strings.TrimSpace(k) == key {
				return n + 1
			}
		}
		return starts[i]
	}
	if un := md.Undecoded(); len(un) > 0 {
		k := un[0]
		line, what := 0, k.String()
		if len(k) >= 2 && k[0] == "rule" {
			what = k[len(k)-1]
			for i := range starts {
				if l := lineOf(i, what); l != starts[i] {
					line = l
					break
				}
			}
		}
		return nil, fmt.Errorf("access %s:%d: unknown key %q (rules take name, ca, fingerprint, subject, token-subject, anonymous, any, allow, deny)", where, line, what)
	}
	if len(f.Rule) == 0 {
		return nil, fmt.Errorf("access %s: no [[rule]]: a rules file denies everything it does not allow, so an empty one would refuse every client", where)
	}
	out := make([]rule, 0, len(f.Rule))
	for i, fr := range f.Rule {
		r, key, err := compile(fr, i)
		if err != nil {
			return nil, fmt.Errorf("access %s:%d: rule %q: %v", where, lineOf(i, key), r.name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// compile checks one rule; on error it says which key is wrong.
func compile(fr fileRule, i int) (rule, string, error) {
	r := rule{name: fr.Name, subjects: fr.Subject, tokenSubs: fr.TokenSubject, anonymous: fr.Anonymous, any: fr.Any}
	if r.name == "" {
		r.name = fmt.Sprintf("rule %d", i+1)
	}
	if strings.ContainsAny(r.name, "\"\\\n") {
		return r, "name", errors.New("name: no quotes, backslashes or line breaks (it is a metric label)")
	}
	var cas []string
	switch v := fr.CA.(type) {
	case nil:
	case string:
		cas = []string{v}
	case []any:
		r.cas = []*x509.CertPool{} // given, even empty: for no certificate
		for _, x := range v {
			s, ok := x.(string)
			if !ok {
				return r, "ca", errors.New("ca: a file name or a list of them")
			}
			cas = append(cas, s)
		}
	default:
		return r, "ca", errors.New("ca: a file name or a list of them")
	}
	for _, path := range cas {
		pemData, err := os.ReadFile(path)
		if err != nil {
			return r, "ca", fmt.Errorf("ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return r, "ca", fmt.Errorf("ca: no certificate in %s", path)
		}
		r.cas = append(r.cas, pool)
	}
	if fr.Fingerprint != nil {
		r.fingerprints = map[string]bool{} // given, even empty: for no certificate
	}
	for _, fp := range fr.Fingerprint {
		b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(fp), ":", ""))
		if err != nil || len(b) != 32 {
			return r, "fingerprint", fmt.Errorf("fingerprint %q: want a SHA-256 in hex (64 digits, colons allowed)", fp)
		}
		r.fingerprints[hex.EncodeToString(b)] = true
	}
	if r.subjects != nil && len(r.cas) == 0 {
		// Whoever makes a certificate chooses its subject: a self-signed
		// one admitted by fingerprint may say CN=kitchen-anything.
		return r, "subject", errors.New("subject needs ca: a subject is only what a CA vouches for (a self-signed certificate admitted by fingerprint can carry any subject); name the CA whose certificates the patterns are for")
	}
	if r.cas == nil && r.fingerprints == nil && r.subjects == nil && r.tokenSubs == nil && !r.anonymous && !r.any {
		return r, "name", errors.New("says nobody it is for: give ca, fingerprint, subject, token-subject, anonymous = true or any = true")
	}
	var err error
	if r.allow, err = entries(fr.Allow); err != nil {
		return r, "allow", fmt.Errorf("allow: %v", err)
	}
	if r.deny, err = entries(fr.Deny); err != nil {
		return r, "deny", fmt.Errorf("deny: %v", err)
	}
	if len(r.allow) == 0 && len(r.deny) == 0 {
		return r, "name", errors.New("allows and denies nothing: give allow or deny")
	}
	return r, "", nil
}

func entries(list []string) ([]entry, error) {
	var out []entry
	for _, s := range list {
		if s == "*" {
			out = append(out, entry{"*", "*"})
			continue
		}
		a, pat, ok := strings.Cut(s, ":")
		if !ok {
			pat = "*"
		}
		if !actions[a] {
			return nil, fmt.Errorf("%q: unknown action %q (pair, tunnelproxy-register, tunnelproxy-reach, http, events, or * for all)", s, a)
		}
		if a == relay.ActionTPRegister || a == relay.ActionTPReach {
			pat = strings.ToLower(strings.Trim(pat, "{}"))
		}
		out = append(out, entry{a, pat})
	}
	return out, nil
}

// Allow implements relay.Access.
func (p *Policy) Allow(id *relay.Identity, action, target string) (bool, string) {
	rules := *p.rules.Load()
	for i := range rules {
		r := &rules[i]
		if !r.isFor(id) {
			continue
		}
		for _, e := range r.deny {
			if e.covers(action, target) {
				return false, r.name
			}
		}
		for _, e := range r.allow {
			if e.covers(action, target) {
				return true, r.name
			}
		}
	}
	return false, "default"
}

// isFor reports whether every identity condition of r holds for id (any
// = true adds none: alone it is for everyone, beside others it does not
// widen them).
func (r *rule) isFor(id *relay.Identity) bool {
	if r.anonymous && id.Kind != relay.IdentityAnonymous {
		return false
	}
	if r.cas != nil && !signedBy(id.Cert, id.Intermediates, r.cas) {
		return false
	}
	if r.fingerprints != nil && !r.fingerprints[id.Fingerprint] {
		return false
	}
	if r.subjects != nil && (id.Cert == nil || !anyMatch(r.subjects, id.Subject)) {
		return false
	}
	if r.tokenSubs != nil && (id.TokenSubject == "" || !anyMatch(r.tokenSubs, id.TokenSubject)) {
		return false
	}
	return true
}

// maxIntermediates bounds the client's intermediates a chain is built
// through: real chains have one or two, and signedBy runs on event loops
// for each decision, where a client's dozens of look-alike intermediates
// would cost up to 100 signature checks per CA.
const maxIntermediates = 4

// signedBy reports whether cert chains to one of pools, through the
// intermediates the client sent (the first maxIntermediates).
func signedBy(cert *x509.Certificate, intermediates []*x509.Certificate, pools []*x509.CertPool) bool {
	if cert == nil {
		return false
	}
	var inter *x509.CertPool
	if len(intermediates) > 0 {
		inter = x509.NewCertPool()
		for _, c := range intermediates[:min(len(intermediates), maxIntermediates)] {
			inter.AddCert(c)
		}
	}
	for _, p := range pools {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: p, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
			return true
		}
	}
	return false
}

func (e entry) covers(action, target string) bool {
	return (e.action == "*" || e.action == action) && Match(e.pattern, target)
}

func anyMatch(patterns []string, s string) bool {
	for _, p := range patterns {
		if Match(p, s) {
			return true
		}
	}
	return false
}

// Match reports whether s matches pattern: * is any run of characters
// (slashes included), ? any one character (a UTF-8 sequence; a byte
// that is not valid UTF-8 counts as one), everything else itself.
// Cost: O(len(pattern)·len(s)) at worst, no allocation.
func Match(pattern, s string) bool {
	px, sx := 0, 0
	starP, starS := -1, 0
	for sx < len(s) {
		switch {
		case px < len(pattern) && pattern[px] == '?': // one character, not one byte
			_, n := utf8.DecodeRuneInString(s[sx:])
			px++
			sx += n
		case px < len(pattern) && pattern[px] != '*' && pattern[px] == s[sx]:
			px++
			sx++
		case px < len(pattern) && pattern[px] == '*':
			starP, starS = px, sx
			px++
		case starP >= 0:
			_, n := utf8.DecodeRuneInString(s[starS:]) // the star takes whole characters
			starS += n
			px, sx = starP+1, starS
		default:
			return false
		}
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}
