package relay

import (
	"bytes"
	"net/http"
	"net/http/pprof"
	"strconv"

	"github.com/meetpoint/meetpoint/handshake"
)

const notRelayBody = "meetpoint relay: connect with a WebSocket or a raw TCP JSON-RPC client\n"

// Content types of the operational endpoints.
const (
	metricsContentType = "text/plain; version=0.0.4; charset=utf-8"
	textContentType    = "text/plain; charset=utf-8"
)

// httpResponse is the whole HTTP/1.1 response (Connection: close) to a plain
// HTTP request that arrived on the relay port (any request that is not a
// WebSocket upgrade):
//
//	GET /metrics  200, Prometheus text (WritePrometheus)
//	GET /healthz  200 "ok": the process is alive and serving
//	GET /readyz   200 "ready", or 503 "draining" once Shutdown has begun
//	anything else 404 (405 for another method on the paths above)
//
// HEAD is answered like GET without the body. pprof is never served here:
// it lives on the admin listener only (AdminHandler).
func (s *Server) httpResponse(head []byte) []byte {
	method, target, ok := handshake.RequestLine(head)
	if !ok {
		return httpPlain(400, "Bad Request", textContentType, []byte("bad request\n"), true)
	}
	path, _, _ := bytes.Cut(target, []byte("?"))
	status, ctype, body := 404, textContentType, []byte(notRelayBody)
	switch string(path) {
	case "/metrics":
		var buf bytes.Buffer
		s.WritePrometheus(&buf)
		status, ctype, body = 200, metricsContentType, buf.Bytes()
	case "/healthz":
		status, body = 200, []byte("ok\n")
	case "/readyz":
		status, body = s.readyz()
	default:
		return httpPlain(status, http.StatusText(status), ctype, body, string(method) != "HEAD")
	}
	switch string(method) {
	case "GET":
		return httpPlain(status, http.StatusText(status), ctype, body, true)
	case "HEAD":
		return httpPlain(status, http.StatusText(status), ctype, body, false)
	default:
		return httpPlain(405, "Method Not Allowed", textContentType, []byte("method not allowed\n"), true)
	}
}

// readyz is the /readyz answer: 200 "ready" while the server accepts new
// clients, 503 with the reason otherwise.
func (s *Server) readyz() (int, []byte) {
	s.mu.Lock()
	closed, draining, listening := s.closed, s.draining.Load(), len(s.listeners) > 0
	s.mu.Unlock()
	switch {
	case draining:
		return 503, []byte("draining\n")
	case closed:
		return 503, []byte("closed\n")
	case !listening:
		return 503, []byte("starting\n")
	}
	return 200, []byte("ready\n")
}

// httpPlain formats a complete Connection: close response.
func httpPlain(status int, text, ctype string, body []byte, withBody bool) []byte {
	out := make([]byte, 0, 160+len(body))
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, ' ')
	out = append(out, text...)
	out = append(out, "\r\nContent-Type: "...)
	out = append(out, ctype...)
	out = append(out, "\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(body)), 10)
	out = append(out, "\r\n\r\n"...)
	if withBody {
		out = append(out, body...)
	}
	return out
}

// AdminHandler serves the operational endpoints for a separate admin
// listener (meetpoint serve --admin-listen): /metrics, /healthz and /readyz
// as on the relay port, plus the runtime profiler under /debug/pprof/. The
// profiler is only reachable through this handler, never on the relay port,
// so the admin address should stay on loopback or a management network.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
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
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if getOrHead(w, r) {
			writeText(w, r, 200, []byte("ok\n"))
		}
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if getOrHead(w, r) {
			status, body := s.readyz()
			writeText(w, r, status, body)
		}
	})
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
