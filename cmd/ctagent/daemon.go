package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/api"
	"github.com/ctagent/ctagent/pkg/metrics"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/netns/kube"
	"github.com/ctagent/ctagent/pkg/server"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// shutdownTimeout bounds the whole shutdown; systemd and the kubelet wait
// longer before SIGKILL.
const shutdownTimeout = 5 * time.Second

// runDaemon serves metrics until ctx is done. The HTTP server starts first,
// so /healthz answers and /readyz explains the wait while the tracer
// attaches and the baseline loads.
func runDaemon(ctx context.Context, cfg *config, log *zap.Logger) error {
	log.Info("Starting ctagent", zap.String("version", Version), zap.String("revision", Revision))

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		metrics.NewModuleCollector(conntrackLoaded),
	)
	srv := server.New(server.Config{
		Web: cfg.web, Registry: reg, MetricsPath: cfg.telemetryPath, Logger: log,
		Version:   fmt.Sprintf("%s (revision %s)", Version, Revision),
		Readiness: "200 once the tracer is attached and the baseline is loaded (the namespaces left after a 2 s budget of table dumps are dumped in the background)",
	})
	// The API is mounted now (the server takes handlers before Start) and
	// answers 503 until the exporter and the tracer run.
	apiH := api.NewHandler(log.Named("api"))
	for _, r := range apiH.Routes() {
		link := server.Link{Text: r.Path, Description: r.Description}
		if strings.Contains(r.Path, "{") {
			link = server.Link{} // a pattern ({netns}), no page to link to
		}
		srv.Handle(r.Path, r.Handler, link)
	}
	if err := srv.Start(); err != nil {
		return err
	}

	// Everything below stops when run does; bg waits for it.
	ctx, cancel := context.WithCancel(ctx)
	var bg sync.WaitGroup
	var t tracer.Tracer
	defer func() {
		cancel()
		shutdown(srv, t, &bg, log)
	}()

	srv.NotReady("waiting for the Kubernetes pod list")
	pods, stopPods, err := startPodSource(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer stopPods()

	srv.NotReady("scanning network namespaces")
	resolver := newResolver(cfg, pods, log)
	if err := resolver.Refresh(); err != nil {
		log.Warn("Scanning network namespaces", zap.Error(err))
	}
	log.Info("Network namespaces found", zap.Int("count", len(resolver.Namespaces())))

	// No tracer attaches without nf_conntrack: load it or wait for it.
	if err := awaitConntrack(ctx, cfg.loadModules, srv, log); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting
		}
		return err
	}

	srv.NotReady("tracer not attached yet")
	opts := tracerOptions(cfg, log)
	// In-kernel aggregation only: the metrics come from the counters, so no
	// event has to reach Go until a client of /api/v1/events listens.
	opts.DisableEvents = true
	// The exporter tells the tracer which namespaces to observe (Watch,
	// Unwatch), following the resolver.
	t, err = tracer.Open(ctx, opts)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	info := t.Info()
	info.Log(log, cfg.tracer.Backend)
	// Attached and self-tested: what only that needed goes (caps.go).
	tr := t
	dropAttachCaps(info.Backend, dropCapsAfterAttach, func() error {
		if _, err := tr.Counters(); err != nil {
			return err
		}
		if _, err := tr.Lost(); err != nil {
			return err
		}
		_, err := tr.Programs()
		return err
	}, log)
	bg.Go(func() { resolver.Run(ctx, cfg.metrics.RescanInterval) })

	mopts := cfg.metrics
	mopts.Tracer, mopts.Namespaces, mopts.Logger = t, resolver, log.Named("metrics")
	mopts.Version, mopts.Revision = Version, Revision
	exp, err := metrics.New(mopts)
	if err != nil {
		return err
	}
	reg.MustRegister(exp)
	// The event stream stays off until an API client listens.
	hub, err := api.NewEventHub(t, log.Named("api"))
	if err != nil {
		return err
	}
	bg.Go(func() { hub.Run(ctx) })
	apiH.SetSource(api.Source{Stats: exp, Namespaces: resolver, Table: t, Events: hub})
	// A named namespace (ip netns add, a CNI plugin) is found when its
	// mount appears, not at the next rescan: the netlink backend listens
	// in it and the exporter dumps it right away, before it has any event
	// to show. The watcher's first call covers what changed before it
	// started; Run serves the calls made before it runs.
	bg.Go(func() {
		if err := resolver.WatchNamed(ctx, exp.Discover); err != nil {
			log.Warn("Not watching the mount table for named network namespaces; they are found at the rescan",
				zap.Duration("rescan", cfg.metrics.RescanInterval), zap.Error(err))
		}
	})

	srv.NotReady("loading the metrics baseline (a table dump of every namespace)")
	start := time.Now()
	if err := exp.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		// Not fatal: Run retries, and /readyz says why it waits.
		log.Warn("Metrics baseline not loaded; retrying in the background", zap.Error(err))
	} else {
		log.Info("Metrics baseline loaded", zap.Duration("took", time.Since(start)))
	}
	bg.Go(func() { exp.Run(ctx) })
	srv.Ready(func() error {
		if !exp.Ready() {
			return errors.New("metrics baseline not loaded yet: no namespace could be dumped")
		}
		return nil
	})
	log.Info("Ready", zap.String("address", srv.Addr()))

	select {
	case <-ctx.Done():
		return nil
	case err := <-srv.Done():
		if err == nil {
			err = errors.New("HTTP server stopped")
		}
		return err
	}
}

// shutdown stops the HTTP server, closes the tracer (every BPF link and
// netlink socket) and waits for the background goroutines, within
// shutdownTimeout in all.
func shutdown(srv *server.Server, t tracer.Tracer, bg *sync.WaitGroup, log *zap.Logger) {
	deadline := time.Now().Add(shutdownTimeout)
	log.Info("Stopping")
	// Leave a second of the budget for the tracer and the goroutines.
	hctx, cancel := context.WithDeadline(context.Background(), deadline.Add(-time.Second))
	if err := srv.Shutdown(hctx); err != nil {
		log.Warn("HTTP server shutdown", zap.Error(err))
	}
	cancel()
	if t != nil {
		closeTracer(t, log)
	}
	done := make(chan struct{})
	go func() { bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Until(deadline)):
		log.Warn("Background tasks did not stop in time")
	}
	log.Info("Stopped")
}

// startPodSource starts naming pods when ctagent runs in a Kubernetes
// cluster (or --kubernetes.kubeconfig is set, or a test set cfg.kube.Client);
// outside one the source is nil.
func startPodSource(ctx context.Context, cfg *config, log *zap.Logger) (netns.PodSource, func(), error) {
	kc := cfg.kube
	kc.PodLabels, kc.Logger = cfg.metrics.PodLabels, log
	return kube.Start(ctx, kc)
}
