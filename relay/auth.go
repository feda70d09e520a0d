package relay

import (
	"context"
	"crypto/x509"
	"net"

	"github.com/meetpoint/meetpoint/handshake"
)

// AuthResult is the outcome of an authentication, named as nymea's
// AuthenticationError enum so it goes on the wire unchanged.
type AuthResult int

// The AuthenticationError values, in nymea's order (handshake.AuthenticationError).
const (
	AuthNoError AuthResult = iota
	AuthUnknown
	AuthTimeout
	AuthAborted
	AuthFailed
	AuthProxyError
)

// String returns the wire name, e.g. "AuthenticationErrorNoError".
func (r AuthResult) String() string {
	if r < AuthNoError || r > AuthProxyError {
		r = AuthUnknown
	}
	return handshake.AuthenticationError(r).String()
}

// AuthResultNames lists every AuthenticationError value in order.
func AuthResultNames() []string {
	names := make([]string, AuthProxyError+1)
	for i := range names {
		names[i] = AuthResult(i).String()
	}
	return names
}

// AuthRequest is what an Authenticator sees of a client.
type AuthRequest struct {
	Token string   // the secret; never log it
	UUID  string   // client uuid as sent
	Name  string   // client name as sent
	Peer  net.Addr // remote address
	// ClientCert is the verified TLS client certificate, when the client
	// presented one (for per-identity rules).
	ClientCert *x509.Certificate
	// Nonce is the client's nonce ("" without).
	Nonce string
	// Whole is set when the token is not presented for one end of a
	// tunnel (an events subscription, TURN credentials): an authenticator
	// of single-use tokens spends it whole, leaving no partner's use.
	Whole bool
	// SetSubject, if the authenticator learns who the client is (a
	// webhook's identity, a one-time token's user), records it before
	// done(AuthNoError); it becomes the connection's token identity. Safe
	// from any goroutine; nil in requests the engine did not make.
	SetSubject func(subject string)
}

// Reloader is implemented by authenticators that read files; the server
// calls Reload on SIGHUP. On error the authenticator keeps its previous
// state.
type Reloader interface {
	Reload() error
}

// StagedReloader is a Reloader that can read its new state without
// putting it in force: commit does that and cannot fail. A reload of
// several parts (Server.PrepareReload, meetpoint's SIGHUP) reads every
// part first and commits them only if none failed, so that a reload is
// all or nothing.
type StagedReloader interface {
	Reloader
	PrepareReload() (commit func(), err error)
}

// Authenticator decides whether a token is valid (implementations: package
// relay/auth).
//
// Authenticate must not block the caller for long: an implementation that
// needs I/O starts it and calls done later, from any goroutine. done must be
// called at most once; calls after ctx is done are ignored by the relay, which
// has already answered AuthenticationErrorTimeout.
type Authenticator interface {
	Authenticate(ctx context.Context, req AuthRequest, done func(AuthResult))
}

// Stateless is implemented by an Authenticator that answers at once from
// data it never changes (relay/auth's Dummy, FileAuth and HMACAuth): its
// Authenticate holds no lock and changes no shared state before it calls
// done, on the caller's goroutine. A panic in it before done (a bug met
// on one client's token) then ends that connection alone, as
// internal_fault; a panic in any other authenticator, which may leave a
// lock of its own held, ends the relay (docs/architecture.md, "Fault
// barriers").
type Stateless interface {
	Authenticator
	// Stateless marks the promise above; it is never called.
	Stateless()
}
