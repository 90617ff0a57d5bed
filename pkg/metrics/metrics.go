// Package metrics serves a binary's Prometheus metrics at /metrics and its
// health at /healthz, on an address of its own (loopback by default) apart
// from the hub protocol, so that scraping needs no client certificate and
// is never reachable from other departments unless an operator says so.
package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every series: qz_….
const Namespace = "qz"

// NewRegistry returns a registry with the Go runtime and process
// collectors, to which a binary adds its own series.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Health is what /healthz answers: an error makes it 503. Details are
// shown either way.
type Health func(ctx context.Context) (details map[string]any, err error)

// Server is a running metrics endpoint.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds addr ("host:port"; port 0 picks one).
func Listen(addr string, reg *prometheus.Registry, health Health, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w (set metrics_listen to a free address, or \"off\")", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		details, err := health(ctx)
		if details == nil {
			details = map[string]any{}
		}
		details["status"] = "ok"
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			details["status"] = "failing"
			details["error"] = err.Error()
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(details)
	})
	s := &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops serving.
func (s *Server) Close() error { return s.srv.Close() }

// Off reports whether a configured address turns the endpoint off.
func Off(addr string) bool { return addr == "" || addr == "off" }

// CheckAddr validates a configured metrics address.
func CheckAddr(addr string) error {
	if Off(addr) {
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("metrics_listen %q: want HOST:PORT such as 127.0.0.1:9464, or off", addr)
	}
	return nil
}
