// Package routes reverse-proxies HTTP requests on the relay's port to
// local services (meetpoint serve --route /prefix/=http://127.0.0.1:5984/),
// so that the relay is the one port a device exposes in front of its
// database or web UI. The access rules (relay.Config.Access, action http)
// apply to every request before it gets here; the client's identity goes
// upstream in a header only when IdentityHeader is set, and that header
// is always removed from what the client sent.
package routes

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"

	"github.com/meetpoint/meetpoint/relay"
)

// Route sends requests under Prefix to Target.
type Route struct {
	// Prefix is a path prefix ending in "/" (e.g. "/db/"); the request
	// path keeps it unless StripPrefix.
	Prefix string
	// Target is the upstream base URL, http:// or https://.
	Target *url.URL
	// StripPrefix removes Prefix from the path sent upstream (keeping the
	// leading "/").
	StripPrefix bool
}

// Parse reads a route flag: PREFIX=URL, with "strip:" before the URL to
// strip the prefix (e.g. "/db/=strip:http://127.0.0.1:5984/").
func Parse(spec string) (Route, error) {
	prefix, target, ok := strings.Cut(spec, "=")
	if !ok || !strings.HasPrefix(prefix, "/") || !strings.HasSuffix(prefix, "/") {
		return Route{}, fmt.Errorf("route %q: want /PREFIX/=http://HOST:PORT/ (the prefix starts and ends with /)", prefix)
	}
	if prefix == "/" {
		return Route{}, fmt.Errorf("route %q: a route for / would hide the relay's own page and endpoints: give a prefix (/app/=…)", prefix)
	}
	r := Route{Prefix: prefix}
	if t, ok := strings.CutPrefix(target, "strip:"); ok {
		r.StripPrefix, target = true, t
	}
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Route{}, fmt.Errorf("route %q: the target must be an http:// or https:// URL", prefix) // not the target: it may hold a password
	}
	r.Target = u
	return r, nil
}

// Config is the routes section.
type Config struct {
	Routes []Route
	// IdentityHeader, if set, carries the client's identity upstream
	// (relay.Identity.String(), e.g. "cert:CN=laptop (sha256:…)").
	IdentityHeader string
}

// Register serves cfg's routes on s's port. Call it before s.Start. A
// prefix another subsystem already serves is an error, not a panic.
func Register(s *relay.Server, cfg Config) (err error) {
	defer func() {
		if p := recover(); p != nil { // net/http's ServeMux panics on a conflicting pattern
			err = fmt.Errorf("route: %v", p)
		}
	}()
	seen := map[string]bool{}
	for _, rt := range cfg.Routes {
		if seen[rt.Prefix] {
			return fmt.Errorf("route %s: given twice", rt.Prefix)
		}
		seen[rt.Prefix] = true
		s.Handle(rt.Prefix, proxy(s, rt, cfg.IdentityHeader))
	}
	return nil
}

// upstream is the routes' transport to their services: net/http's
// default one's settings (its dial and TLS handshake timeouts, a variable
// for the tests).
var upstream = http.DefaultTransport.(*http.Transport).Clone()

func proxy(s *relay.Server, rt Route, idHeader string) http.Handler {
	target := rt.Target
	rp := &httputil.ReverseProxy{
		Transport: upstream,
		Rewrite: func(pr *httputil.ProxyRequest) {
			if rt.StripPrefix {
				pr.Out.URL.Path = "/" + strings.TrimPrefix(pr.In.URL.Path, rt.Prefix)
				pr.Out.URL.RawPath = ""
			}
			pr.SetURL(target) // joins target's path with the request's
			pr.SetXForwarded()
			if idHeader != "" {
				dropSpellings(pr.Out.Header, idHeader) // never the client's own copy
				pr.Out.Header.Set(idHeader, relay.IdentityOfRequest(pr.In).String())
			}
		},
		FlushInterval: -1, // stream: server-sent events, long polls, large downloads
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// The relay cut the client's body (its size, its pace): the
			// client's fault, not the service's, and no warning (any
			// client could write one a request).
			var tooBig *http.MaxBytesError
			switch berr := relay.RequestBodyError(r); {
			case errors.As(berr, &tooBig):
				http.Error(w, fmt.Sprintf("413: the request body is over %d bytes (--http-max-body)", tooBig.Limit), http.StatusRequestEntityTooLarge)
				return
			case berr != nil:
				http.Error(w, "408: "+berr.Error(), http.StatusRequestTimeout)
				return
			}
			s.Logger().Warn("route upstream failed", "prefix", rt.Prefix, "target", target.Redacted(), "err", err)
			status := http.StatusBadGateway // it refused, reset or answered nonsense
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
				status = http.StatusGatewayTimeout // it did not answer in time (a dial, a TLS handshake)
			}
			http.Error(w, fmt.Sprintf("%d: the service behind %s is not answering", status, rt.Prefix), status)
		},
	}
	return rp
}

// dropSpellings removes every header that names name, whatever its case
// and with '_' for '-': CGI, WSGI, PHP and Rack hand X_Id and X-Id to the
// program as the same variable (HTTP_X_ID), and net/http keeps them
// apart, so a client's X_Id would pass for the relay's X-Id.
func dropSpellings(h http.Header, name string) {
	for k := range h {
		if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), name) {
			delete(h, k)
		}
	}
}
