// Package ops is the operator's side of a relay: the HTTP endpoints on the
// relay's port (/metrics, /healthz, /readyz; the page at / is package
// relay/web's), the
// same plus the runtime profiler for a separate admin listener, and the
// monitor unix socket (nymea 1.8 and 1.13 dialects, meetpoint monitor).
package ops

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"

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
//	GET /readyz   200 "ready", or 503 with why ("draining" once Shutdown has begun),
//	              then a line per subsystem part ("fleet: ready"); with ?strict=1
//	              a part that is not ready makes it 503 too
//	a path served with other methods: 405 with Allow (a JSON error under the APIs)
//	an unknown path under the JSON APIs (/v1/…, /group, /groups…): 404, JSON
//	anything else 404 with a line saying what the port is for
//
// HEAD is answered like GET without the body; other methods get 405. The
// profiler is never served here: it lives on the admin listener only
// (AdminHandler).
func Register(s *relay.Server) {
	s.Handle("/metrics", metricsHandler(s))
	s.Handle("/healthz", healthz())
	s.Handle("/readyz", readyz(s))
	s.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if allow := s.MethodsAt(r.URL.Path); len(allow) > 0 { // served, not with this method
			w.Header().Set("Allow", strings.Join(allow, ", "))
			msg := fmt.Sprintf("%s %s: method not allowed (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", "))
			if relay.APIPath(r.URL.Path) {
				relay.WriteJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": msg})
			} else {
				writeText(w, r, http.StatusMethodNotAllowed, []byte(msg+"\n"))
			}
			return
		}
		if relay.APIPath(r.URL.Path) {
			relay.WriteJSON(w, http.StatusNotFound, map[string]string{
				"error": fmt.Sprintf("%s %s: not served by this relay (see its --help for the APIs and the flags that turn them on)", r.Method, r.URL.Path)})
			return
		}
		writeText(w, r, 404, []byte(notRelayBody))
	}))
}

// notRelayBody answers paths nobody serves on the relay port.
const notRelayBody = "meetpoint relay: connect with a WebSocket or a raw TCP JSON-RPC client\n"

// AdminHandler serves /metrics, /healthz and /readyz as on the relay port,
// plus the runtime profiler under /debug/pprof/, for a separate admin
// listener (meetpoint serve --admin-listen): keep that address on loopback
// or a management network. /debug/pprof/cmdline answers cmdline, NUL
// separated as net/http/pprof's does, not os.Args: the caller gives the
// command line with the credentials its arguments carry hidden (a
// password in a Redis or webhook URL is used, never shown).
func AdminHandler(s *relay.Server, cmdline []string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metricsHandler(s))
	mux.Handle("/healthz", healthz())
	mux.Handle("/readyz", readyz(s))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", func(w http.ResponseWriter, r *http.Request) {
		writeText(w, r, 200, []byte(strings.Join(cmdline, "\x00")))
	})
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
		w.Header().Set("X-Content-Type-Options", "nosniff")
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
		body := state + "\n"
		names, good, details := s.ReadinessParts()
		for i := range names {
			body += names[i] + ": " + details[i] + "\n"
			if !good[i] && r.URL.Query().Get("strict") == "1" {
				ok = false
			}
		}
		status := 200
		if !ok {
			status = 503
		}
		writeText(w, r, status, []byte(body))
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
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
