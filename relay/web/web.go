// Package web is the browser's side of a relay, on the relay's port:
//
//	GET /                the page: what this relay is, its status, and a
//	                     "try it" panel that pairs two browser tabs with a
//	                     token and exchanges messages and dropped files
//	GET /status.json     the status the page refreshes: name, version,
//	                     state, tunnels, connections, uptime, alone timeout
//	GET /meetpoint.js    the JavaScript client (package client/js)
//	GET /meetpoint.d.ts  its TypeScript declarations
//	GET /page/…          the page's script and style sheet
//
// Everything is embedded in the binary: nothing is built at run time. The
// page uses nothing but /meetpoint.js and /status.json, over HTTP or
// HTTPS (it connects ws:// or wss:// to the origin it was loaded from).
package web

import (
	"bytes"
	"embed"
	"encoding/json"
	"html/template"
	"io/fs"
	"net/http"
	"strconv"
	"time"

	meetpointjs "github.com/meetpoint/meetpoint/client/js"
	"github.com/meetpoint/meetpoint/relay"
)

//go:embed page
var pageFS embed.FS

var indexTmpl = template.Must(template.ParseFS(pageFS, "page/index.html"))

// pagePolicy is the page's Content-Security-Policy: its own script and
// style only (no inline script, no eval), connections to its own origin
// (/status.json, the WebSocket: CSP 3's 'self' covers ws:// and wss:// of
// the page's host; blob: for the received files), and no framing by any
// site (the page has a token field and a Pair button).
const pagePolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Status is what /status.json answers (and the page shows).
type Status struct {
	Name         string `json:"name"`
	Version      string `json:"version"`
	State        string `json:"state"` // "ready", "draining", "starting", "closed"
	Tunnels      uint64 `json:"tunnels"`
	Connections  uint64 `json:"connections"`
	TunnelsTotal uint64 `json:"tunnels_total"`
	UptimeS      int64  `json:"uptime_s"`
	AloneTimeout int64  `json:"alone_timeout_s"` // how long a client waits for its partner
}

// Register serves the page, the status and the JavaScript client on s's
// port. Call it before s.Start.
func Register(s *relay.Server) {
	start := time.Now()
	status := func() Status {
		st := s.Stats()
		_, state := s.Readiness()
		return Status{
			Name: s.Name(), Version: relay.Version, State: state,
			Tunnels: st.TunnelsActive, Connections: st.ConnectionsTCP + st.ConnectionsWS,
			TunnelsTotal: st.TunnelsTotal,
			UptimeS:      int64(time.Since(start).Seconds()),
			AloneTimeout: int64(s.AloneTimeout().Seconds()),
		}
	}
	s.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		st := status()
		if err := indexTmpl.Execute(&buf, map[string]any{"S": st, "Uptime": (time.Duration(st.UptimeS) * time.Second).String()}); err != nil {
			http.Error(w, "page: "+err.Error(), 500)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", pagePolicy)
		h.Set("X-Frame-Options", "DENY") // frame-ancestors for browsers without CSP 2
		serve(w, r, "text/html; charset=utf-8", "no-store", buf.Bytes())
	}))
	s.Handle("GET /status.json", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := json.Marshal(status())
		serve(w, r, "application/json", "no-store", append(b, '\n'))
	}))
	// Any page may import the client (module scripts are fetched with CORS).
	s.Handle("GET /meetpoint.js", anyOrigin(static("text/javascript; charset=utf-8", meetpointjs.Module)))
	s.Handle("GET /meetpoint.d.ts", anyOrigin(static("application/typescript; charset=utf-8", meetpointjs.Types)))
	sub, _ := fs.Sub(pageFS, "page")
	for _, f := range []struct{ name, typ string }{{"app.js", "text/javascript; charset=utf-8"}, {"style.css", "text/css; charset=utf-8"}} {
		b, err := fs.ReadFile(sub, f.name)
		if err != nil {
			panic("web: page file missing: " + f.name) // embedded: a build defect, not input
		}
		s.Handle("GET /page/"+f.name, static(f.typ, b))
	}
}

// anyOrigin lets pages of any origin read what h serves.
func anyOrigin(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		h.ServeHTTP(w, r)
	})
}

// static serves an embedded file: it changes only with the binary, so it
// may be cached briefly and revalidated.
func static(typ string, b []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, typ, "public, max-age=300", b)
	})
}

// serve writes b with its headers; HEAD gets the headers only (net/http
// routes HEAD to GET patterns).
func serve(w http.ResponseWriter, r *http.Request, typ, cache string, b []byte) {
	h := w.Header()
	h.Set("Content-Type", typ)
	h.Set("Cache-Control", cache)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}
