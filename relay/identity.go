package relay

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
)

// Identity is who a connection is, from the strongest source present: a
// TLS client certificate, else the authenticator's subject for its token
// (an HMAC token's id), else anonymous.
type Identity struct {
	// Kind is IdentityCert, IdentityToken or IdentityAnonymous.
	Kind string
	// Subject is the certificate's subject (RFC 2253 form) or the token's
	// subject.
	Subject string
	// Fingerprint is the client certificate's SHA-256, hex ("" without).
	Fingerprint string
	// Cert is the verified client certificate (nil without); access rules
	// check it against their CAs.
	Cert *x509.Certificate
	// Intermediates are the certificates the client sent after Cert (nil
	// without): access rules build Cert's chain to their CAs with them,
	// as the TLS layer does (--tls-client-ca).
	Intermediates []*x509.Certificate
	// TokenSubject is the authenticator's subject for the token, also when
	// a certificate decides Kind ("" when none or before authentication).
	TokenSubject string
}

// Kinds of Identity.
const (
	IdentityCert      = "cert"
	IdentityToken     = "token"
	IdentityAnonymous = "anonymous"
)

// identityKinds are the kinds, in the order of stats.identities.
var identityKinds = [3]string{IdentityCert, IdentityToken, IdentityAnonymous}

func identityKindIndex(kind string) int {
	for i, k := range identityKinds {
		if k == kind {
			return i
		}
	}
	return 2
}

// String is the identity as logs and monitors show it: "cert:SUBJECT
// (sha256:abcd1234…)", "token:SUBJECT" or "anonymous".
func (id Identity) String() string {
	switch id.Kind {
	case IdentityCert:
		return fmt.Sprintf("cert:%s (sha256:%.16s…)", id.Subject, id.Fingerprint)
	case IdentityToken:
		return "token:" + id.Subject
	}
	return IdentityAnonymous
}

// IdentityOf is the identity of a client presenting cert (nil: none) and a
// token whose authenticator subject is tokenSubject ("" : none).
func IdentityOf(cert *x509.Certificate, tokenSubject string) Identity {
	switch {
	case cert != nil:
		sum := sha256.Sum256(cert.Raw)
		return Identity{Kind: IdentityCert, Subject: cert.Subject.String(), Fingerprint: hex.EncodeToString(sum[:]),
			Cert: cert, TokenSubject: tokenSubject}
	case tokenSubject != "":
		return Identity{Kind: IdentityToken, Subject: tokenSubject, TokenSubject: tokenSubject}
	}
	return Identity{Kind: IdentityAnonymous}
}

// IdentityOfRequest is the identity of an HTTP request on the relay port:
// its TLS client certificate, else anonymous.
func IdentityOfRequest(r *http.Request) Identity {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		id := IdentityOf(r.TLS.PeerCertificates[0], "")
		id.Intermediates = r.TLS.PeerCertificates[1:]
		return id
	}
	return IdentityOf(nil, "")
}

// Subjecter is implemented by authenticators whose tokens name a subject
// (HMAC tokens: their id). Subject is called only for a token the
// authenticator has just accepted.
type Subjecter interface {
	Subject(token string) string
}

// Actions an Access policy decides on, with what the target is.
const (
	ActionPair       = "pair"                 // legacy pairing; target: the nonce ("" without)
	ActionTPRegister = "tunnelproxy-register" // TunnelProxy.RegisterServer; target: the server uuid
	ActionTPReach    = "tunnelproxy-reach"    // TunnelProxy.RegisterClient; target: the server uuid
	ActionHTTP       = "http"                 // an HTTP request on the relay port; target: the path
	ActionEvents     = "events"               // Events.Subscribe; target: each channel
)

// Access decides what an identity may do (package relay/access implements
// it from a rules file). Allow must be safe for concurrent use and must
// not block: it runs on event-loop goroutines. rule names the rule that
// decided (for counters and logs; "default" when none matched).
type Access interface {
	Allow(id *Identity, action, target string) (ok bool, rule string)
}

// Granted is Allow for what is denied by default (events channels):
// without an Access policy nothing is granted.
func (s *Server) Granted(id Identity, action, target string) bool {
	return s.cfg.Access != nil && s.Allow(id, action, target)
}

// Allow asks the configured Access policy whether id may do action on
// target, counting the decision by rule (meetpoint_access_total) and
// logging refusals. Without a policy everything is allowed.
func (s *Server) Allow(id Identity, action, target string) bool {
	if s.cfg.Access == nil {
		return true
	}
	ok, rule := s.cfg.Access.Allow(&id, action, target)
	result := "allow"
	if !ok {
		result = "deny"
		s.log.Debug("access denied", "identity", id.String(), "action", action, "target", logTarget(action, target), "rule", rule) // counted; Debug: scanners must not flood the log
	}
	// Bounded: rules × actions × 2, from the operator's rules file.
	s.stats.set.GetOrCreateCounter(fmt.Sprintf(`meetpoint_access_total{rule=%q,action=%q,result=%q}`, rule, action, result)).Inc()
	return ok
}

// identity is c's identity once authenticated (or for a TunnelProxy
// registration: its certificate, else anonymous).
func (c *conn) identity() Identity {
	sub := ""
	if a := c.view(); a.authed {
		sub = c.s.tokenSubject(&c.subject, a.key.Token)
	}
	peers := c.clientCerts()
	if len(peers) == 0 {
		return IdentityOf(nil, sub)
	}
	id := IdentityOf(peers[0], sub)
	id.Intermediates = peers[1:]
	return id
}

// tokenSubject is who an accepted token names: what the authenticator
// said (set, through AuthRequest.SetSubject), else its Subjecter's answer.
func (s *Server) tokenSubject(set *atomic.Pointer[string], token string) string {
	if p := set.Load(); p != nil {
		return *p
	}
	if sj, ok := s.cfg.Auth.(Subjecter); ok {
		return sj.Subject(token)
	}
	return ""
}

// Identity is the connection's identity (see Identity).
func (c Conn) Identity() Identity { return c.c.identity() }

// logTarget is target as a log may show it: an HTTP path's segment after
// "app" is an application key (the groups API's /app/KEY/…, WAMP's
// /app/KEY), never logged.
func logTarget(action, target string) string {
	if action != ActionHTTP {
		return target
	}
	segs := strings.Split(target, "/")
	for i := 1; i < len(segs); i++ {
		if segs[i-1] == "app" && segs[i] != "" {
			segs[i] = "(key)"
		}
	}
	return strings.Join(segs, "/")
}
