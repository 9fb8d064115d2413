// Package server is ctagent's HTTP side: one http.Server on every listen
// address (or on the sockets systemd passed), with exporter-toolkit's TLS
// and basic auth, that serves the metrics, /healthz, /readyz with the
// reason the daemon is not ready yet, a landing page that links them, and
// any other handler mounted with Handle (such as an API for live events).
//
// It knows nothing of the tracer or the exporter: the daemon says with
// NotReady and Ready how far its start has come.
package server

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

// The health endpoints, which no other handler may take.
const (
	HealthPath = "/healthz" // 200 while the process serves
	ReadyPath  = "/readyz"  // 200 once the daemon is ready
)

// Config configures New.
type Config struct {
	// Web is exporter-toolkit's configuration (its kingpinflag flags): the
	// listen addresses, systemd socket activation, and the web config file
	// (TLS, basic auth).
	Web *web.FlagConfig
	// Registry (required) is served at MetricsPath, with the handler's own metrics
	// (promhttp_metric_handler_*) registered in it.
	Registry    *prometheus.Registry
	MetricsPath string
	// Version is shown on the landing page, and Readiness there as what
	// ReadyPath's 200 means.
	Version, Readiness string
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
}

// Link is the landing page's entry for a handler; no entry if Text is "".
type Link struct {
	Text, Description string
}

// Server serves ctagent's HTTP endpoints. Mount handlers with Handle, then
// call Start once; Shutdown stops it.
type Server struct {
	cfg   Config
	log   *zap.Logger
	mux   *http.ServeMux
	links []web.LandingLinks
	root  bool // a handler took "/": no landing page

	mu    sync.Mutex
	check func() error // what /readyz reports

	srv  *http.Server
	lns  []net.Listener
	done chan error
}

// New returns a server, not started, that serves the metrics and the
// health endpoints, and is not ready ("starting").
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), done: make(chan error, 1)}
	s.NotReady("starting")
	reg := cfg.Registry
	s.Handle(cfg.MetricsPath, promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            zap.NewStdLog(s.log.Named("promhttp")),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
		EnableOpenMetrics:   true,
	})), Link{Text: "Metrics"})
	s.mux.HandleFunc(HealthPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc(ReadyPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.readyErr(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return s
}

// Handle serves h at pattern (as http.ServeMux does, which panics if the
// pattern is taken) and lists it on the landing page. Call it before Start.
func (s *Server) Handle(pattern string, h http.Handler, link Link) {
	s.mux.Handle(pattern, h)
	s.root = s.root || pattern == "/"
	if link.Text != "" {
		s.links = append(s.links, web.LandingLinks{Address: pattern, Text: link.Text, Description: link.Description})
	}
}

// NotReady makes /readyz answer 503 with reason: what the start waits for.
func (s *Server) NotReady(reason string) { s.Ready(func() error { return errors.New(reason) }) }

// Ready marks the start as done: /readyz answers 200 while check passes,
// else 503 with its error.
func (s *Server) Ready(check func() error) {
	s.mu.Lock()
	s.check = check
	s.mu.Unlock()
}

func (s *Server) readyErr() error {
	s.mu.Lock()
	check := s.check
	s.mu.Unlock()
	return check()
}

// handler adds the landing page at / (unless a handler took it) to the
// mounted handlers.
func (s *Server) handler() (http.Handler, error) {
	if s.root {
		return s.mux, nil
	}
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "ctagent",
		Description: "Linux conntrack table per network namespace",
		Version:     s.cfg.Version,
		Links: append(s.links,
			web.LandingLinks{Address: HealthPath, Text: "Health", Description: "200 while the process serves"},
			web.LandingLinks{Address: ReadyPath, Text: "Readiness", Description: s.cfg.Readiness}),
	})
	if err != nil {
		return nil, fmt.Errorf("landing page: %w", err)
	}
	s.mux.Handle("/", landing)
	return s.mux, nil
}

// Start listens on every listen address (or takes systemd's sockets) and
// serves in the background. It listens itself rather than through
// web.ListenAndServe, which listens in the serving goroutine: so a busy
// port fails the start at once, and the log names the bound addresses
// (port 0 in tests).
func (s *Server) Start() error {
	h, err := s.handler()
	if err != nil {
		return err
	}
	s.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: zap.NewStdLog(s.log.Named("http"))}
	wc := s.cfg.Web
	if *wc.WebSystemdSocket {
		if s.lns, err = activation.Listeners(); err == nil && len(s.lns) == 0 {
			err = errors.New("no socket passed by systemd")
		}
	} else {
		for _, addr := range *wc.WebListenAddresses {
			var ln net.Listener
			if ln, err = net.Listen("tcp", addr); err != nil {
				break
			}
			s.lns = append(s.lns, ln)
		}
	}
	if err != nil {
		s.closeListeners()
		return fmt.Errorf("listen: %w", err)
	}
	for _, ln := range s.lns {
		s.log.Info("HTTP server listening", zap.String("address", ln.Addr().String()),
			zap.String("telemetry_path", s.cfg.MetricsPath), zap.Bool("web_config", *wc.WebConfigFile != ""))
	}
	go func() {
		err := web.ServeMultiple(s.lns, s.srv, wc, logging.Slog(s.log.Named("web")))
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return nil
}

// Addr is the first address the server listens on.
func (s *Server) Addr() string { return s.lns[0].Addr().String() }

// Done delivers the error that stopped the server, nil after Shutdown.
func (s *Server) Done() <-chan error { return s.done }

// Shutdown stops accepting, lets running requests finish until ctx ends,
// then closes the rest.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.srv == nil {
		return nil // not started
	}
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	s.closeListeners() // in case Serve failed before it took them over
	return err
}

func (s *Server) closeListeners() {
	for _, ln := range s.lns {
		ln.Close()
	}
}
