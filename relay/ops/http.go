// Package ops is the operator's side of a relay: the HTTP endpoints on the
// relay's port (/metrics, /healthz, /readyz and a status page at /), the
// same plus the runtime profiler for a separate admin listener, and the
// monitor unix socket (nymea 1.8 and 1.13 dialects, meetpoint monitor).
package ops

import (
	"bytes"
	"html/template"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/meetpoint/meetpoint/relay"
)

// Content types of the operational endpoints.
const (
	metricsContentType = "text/plain; version=0.0.4; charset=utf-8"
	textContentType    = "text/plain; charset=utf-8"
)

// Register serves the operational endpoints on the relay's port:
//
//	GET /metrics  Prometheus text (relay.Server.WritePrometheus)
//	GET /healthz  200 "ok": the process is alive and serving
//	GET /readyz   200 "ready", or 503 with why ("draining" once Shutdown has begun)
//	GET /         a small status page (what the relay is, its counters)
//	anything else 404 with a line saying what the port is for
//
// HEAD is answered like GET without the body; other methods get 405. The
// profiler is never served here: it lives on the admin listener only
// (AdminHandler).
func Register(s *relay.Server) {
	start := time.Now()
	s.Handle("/metrics", metricsHandler(s))
	s.Handle("/healthz", healthz())
	s.Handle("/readyz", readyz(s))
	s.Handle("/{$}", statusPage(s, start))
	s.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeText(w, r, 404, []byte(notRelayBody))
	}))
}

// notRelayBody answers paths nobody serves on the relay port.
const notRelayBody = "meetpoint relay: connect with a WebSocket or a raw TCP JSON-RPC client\n"

// AdminHandler serves /metrics, /healthz and /readyz as on the relay port,
// plus the runtime profiler under /debug/pprof/, for a separate admin
// listener (meetpoint serve --admin-listen): keep that address on loopback
// or a management network.
func AdminHandler(s *relay.Server) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metricsHandler(s))
	mux.Handle("/healthz", healthz())
	mux.Handle("/readyz", readyz(s))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeText(w, r, 404, []byte("not found: try /metrics, /healthz, /readyz or /debug/pprof/\n"))
	})
	return mux
}

func metricsHandler(s *relay.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !getOrHead(w, r) {
			return
		}
		var buf bytes.Buffer
		s.WritePrometheus(&buf)
		w.Header().Set("Content-Type", metricsContentType)
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
		if r.Method != http.MethodHead {
			_, _ = w.Write(buf.Bytes())
		}
	})
}

func healthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if getOrHead(w, r) {
			writeText(w, r, 200, []byte("ok\n"))
		}
	})
}

func readyz(s *relay.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !getOrHead(w, r) {
			return
		}
		ok, state := s.Readiness()
		status := 200
		if !ok {
			status = 503
		}
		writeText(w, r, status, []byte(state+"\n"))
	})
}

var statusTmpl = template.Must(template.New("status").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Name}} — meetpoint relay</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em}
td{padding:.1em 1em .1em 0}code{background:#f4f4f4;padding:.1em .3em}</style></head>
<body><h1>{{.Name}}</h1>
<p>A <a href="https://github.com/meetpoint/meetpoint">meetpoint</a> rendezvous relay: two clients that
present the same token meet here and exchange bytes (WebSocket, raw TCP JSON-RPC, TLS; nymea-remoteproxy compatible).</p>
<table id="status">
<tr><td>status</td><td id="ready">{{.State}}</td></tr>
<tr><td>tunnels</td><td id="tunnels">{{.Stats.TunnelsActive}}</td></tr>
<tr><td>connections</td><td id="connections">{{.Conns}}</td></tr>
<tr><td>tunnels since start</td><td>{{.Stats.TunnelsTotal}}</td></tr>
<tr><td>uptime</td><td id="uptime">{{.Uptime}}</td></tr>
<tr><td>version</td><td>{{.Version}}</td></tr>
</table>
<p>Operators: <a href="/metrics">/metrics</a>, <a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>.</p>
</body></html>
`))

func statusPage(s *relay.Server, start time.Time) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !getOrHead(w, r) {
			return
		}
		st := s.Stats()
		_, state := s.Readiness()
		var buf bytes.Buffer
		_ = statusTmpl.Execute(&buf, map[string]any{
			"Name": s.Name(), "State": state, "Stats": st, "Version": relay.Version,
			"Conns":  st.ConnectionsTCP + st.ConnectionsWS,
			"Uptime": time.Since(start).Round(time.Second).String(),
		})
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
		if r.Method != http.MethodHead {
			_, _ = w.Write(buf.Bytes())
		}
	})
}

func getOrHead(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	writeText(w, r, 405, []byte("method not allowed\n"))
	return false
}

func writeText(w http.ResponseWriter, r *http.Request, status int, body []byte) {
	w.Header().Set("Content-Type", textContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
