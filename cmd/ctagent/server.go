package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"go.uber.org/zap"
)

// readiness is what /readyz reports: ready once every stage of the start-up
// is done.
type readiness struct {
	mu     sync.Mutex
	reason string // why not ready; "" when ready
	checks []func() error
}

func newReadiness(reason string) *readiness { return &readiness{reason: reason} }

// notReady records why the daemon is not ready yet.
func (r *readiness) notReady(reason string) {
	r.mu.Lock()
	r.reason = reason
	r.mu.Unlock()
}

// ready marks the start-up as done; checks must keep passing.
func (r *readiness) ready(checks ...func() error) {
	r.mu.Lock()
	r.reason = ""
	r.checks = checks
	r.mu.Unlock()
}

func (r *readiness) err() error {
	r.mu.Lock()
	reason, checks := r.reason, r.checks
	r.mu.Unlock()
	if reason != "" {
		return errors.New(reason)
	}
	for _, c := range checks {
		if err := c(); err != nil {
			return err
		}
	}
	return nil
}

// newHandler serves the landing page, the metrics, /healthz and /readyz.
func newHandler(cfg *config, reg *prometheus.Registry, ready *readiness, log *zap.Logger) (http.Handler, error) {
	mux := http.NewServeMux()
	mux.Handle(cfg.telemetryPath, promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            zap.NewStdLog(log.Named("promhttp")),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
		EnableOpenMetrics:   true,
	})))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready.err(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if cfg.telemetryPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "ctagent",
			Description: "Linux conntrack table per network namespace",
			Version:     fmt.Sprintf("%s (revision %s)", Version, Revision),
			Links: []web.LandingLinks{
				{Address: cfg.telemetryPath, Text: "Metrics"},
				{Address: "/healthz", Text: "Health", Description: "200 while the process serves"},
				{Address: "/readyz", Text: "Readiness", Description: "200 once the tracer is attached and the baseline is loaded"},
			},
		})
		if err != nil {
			return nil, err
		}
		mux.Handle("/", landing)
	}
	return mux, nil
}

// webServer is the HTTP server with exporter-toolkit's TLS and basic auth.
type webServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// startWebServer listens on cfg.listenAddress and serves h in the
// background. Listening happens here, so a busy port fails the start.
func startWebServer(cfg *config, h http.Handler, log *zap.Logger) (*webServer, error) {
	ln, err := net.Listen("tcp", cfg.listenAddress)
	if err != nil {
		return nil, err
	}
	s := &webServer{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          zap.NewStdLog(log.Named("http")),
		},
		ln:   ln,
		done: make(chan error, 1),
	}
	systemdSocket := false
	flags := &web.FlagConfig{
		WebListenAddresses: &[]string{cfg.listenAddress},
		WebSystemdSocket:   &systemdSocket,
		WebConfigFile:      &cfg.webConfigFile,
	}
	log.Info("HTTP server listening", zap.String("address", ln.Addr().String()),
		zap.String("telemetry_path", cfg.telemetryPath), zap.Bool("web_config", cfg.webConfigFile != ""))
	slogger := newSlogLogger(log.Named("web"))
	go func() {
		err := web.Serve(ln, s.srv, flags, slogger)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// Done delivers the error that stopped the server, nil after Shutdown.
func (s *webServer) Done() <-chan error { return s.done }

// Shutdown stops accepting, lets running requests finish until ctx ends,
// then closes the rest.
func (s *webServer) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	s.ln.Close() // in case Serve failed before it took the listener over
	return err
}
