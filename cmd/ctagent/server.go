package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/logging"
)

// readiness is what /readyz reports: not ready, with the reason, until the
// start-up is done; then whatever the check says.
type readiness struct {
	mu    sync.Mutex
	check func() error
}

func newReadiness(reason string) *readiness {
	r := &readiness{}
	r.notReady(reason)
	return r
}

// notReady records why the daemon is not ready yet.
func (r *readiness) notReady(reason string) { r.ready(func() error { return errors.New(reason) }) }

// ready marks the start-up as done; check must keep passing.
func (r *readiness) ready(check func() error) {
	r.mu.Lock()
	r.check = check
	r.mu.Unlock()
}

func (r *readiness) err() error {
	r.mu.Lock()
	check := r.check
	r.mu.Unlock()
	return check()
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
			return nil, fmt.Errorf("landing page: %w", err)
		}
		mux.Handle("/", landing)
	}
	return mux, nil
}

// webServer is the HTTP server with exporter-toolkit's TLS and basic auth.
type webServer struct {
	srv  *http.Server
	lns  []net.Listener
	done chan error
}

// startWebServer listens on every --web.listen-address (or takes systemd's
// sockets) and serves h in the background. It listens itself rather than
// through web.ListenAndServe, which listens in the serving goroutine: so a
// busy port fails the start at once, and the log names the bound addresses
// (port 0 in tests).
func startWebServer(cfg *config, h http.Handler, log *zap.Logger) (*webServer, error) {
	s := &webServer{
		srv:  &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: zap.NewStdLog(log.Named("http"))},
		done: make(chan error, 1),
	}
	var err error
	if *cfg.web.WebSystemdSocket {
		if s.lns, err = activation.Listeners(); err == nil && len(s.lns) == 0 {
			err = errors.New("no socket passed by systemd")
		}
	} else {
		for _, addr := range *cfg.web.WebListenAddresses {
			var ln net.Listener
			if ln, err = net.Listen("tcp", addr); err != nil {
				break
			}
			s.lns = append(s.lns, ln)
		}
	}
	if err != nil {
		s.closeListeners()
		return nil, fmt.Errorf("listen: %w", err)
	}
	for _, ln := range s.lns {
		log.Info("HTTP server listening", zap.String("address", ln.Addr().String()),
			zap.String("telemetry_path", cfg.telemetryPath), zap.Bool("web_config", *cfg.web.WebConfigFile != ""))
	}
	go func() {
		err := web.ServeMultiple(s.lns, s.srv, cfg.web, logging.Slog(log.Named("web")))
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// addr is the first address the server listens on.
func (s *webServer) addr() string { return s.lns[0].Addr().String() }

// Done delivers the error that stopped the server, nil after Shutdown.
func (s *webServer) Done() <-chan error { return s.done }

// Shutdown stops accepting, lets running requests finish until ctx ends,
// then closes the rest.
func (s *webServer) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	s.closeListeners() // in case Serve failed before it took them over
	return err
}

func (s *webServer) closeListeners() {
	for _, ln := range s.lns {
		ln.Close()
	}
}
