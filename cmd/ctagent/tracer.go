package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
	"github.com/ctagent/ctagent/pkg/tracer/ebpftracer"
)

// newResolver builds the network namespace resolver from the flags.
func newResolver(cfg *config, pods netns.PodSource, log *zap.Logger) *netns.Resolver {
	opts := cfg.netns
	opts.Logger, opts.Pods = log.Named("netns"), pods
	return netns.NewResolver(opts)
}

// followNamespaces makes t observe the namespaces r lists (those keep
// accepts, if not nil) until ctx ends: it refreshes r every interval and
// tells t to Watch the new ones and Unwatch those that left. The daemon
// does not need it: there the exporter follows the resolver.
func followNamespaces(ctx context.Context, r *netns.Resolver, t tracer.Tracer, keep func(netns.Namespace) bool, interval time.Duration, log *zap.Logger) {
	watched := map[uint32]bool{}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if err := r.Refresh(); err != nil {
			log.Debug("Refreshing network namespaces", zap.Error(err))
		}
		now := map[uint32]bool{}
		for _, ns := range r.Namespaces() {
			if keep != nil && !keep(ns) {
				continue
			}
			now[ns.Inode] = true
			if !watched[ns.Inode] {
				if err := t.Watch(ns); err != nil {
					log.Debug("Watching a network namespace", zap.Uint32("netns", ns.Inode), zap.Error(err))
					delete(now, ns.Inode) // again at the next round
				}
			}
		}
		for inode := range watched {
			if !now[inode] {
				t.Unwatch(inode)
			}
		}
		watched = now
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// tracerOptions are the flags' tracer.Options with a logger. Only run
// pins (--bpf.pin-path): check and events open a tracer for a moment, and
// must neither adopt nor replace the pins of a daemon.
func tracerOptions(cfg *config, log *zap.Logger) tracer.Options {
	opts := cfg.tracer
	opts.Logger = log.Named("tracer")
	if cfg.command != "run" {
		opts.PinPath = ""
	}
	return opts
}

// runUninstall removes the pins under --bpf.pin-path.
func runUninstall(cfg *config, stdout io.Writer) error {
	path := cfg.tracer.PinPath
	if path == "" {
		return usageErrorf("uninstall: --bpf.pin-path is empty")
	}
	removed, err := ebpftracer.RemovePins(path)
	if err != nil {
		return err
	}
	if !removed {
		_, err = fmt.Fprintf(stdout, "nothing pinned under %s\n", path)
		return err
	}
	_, err = fmt.Fprintf(stdout, "removed %s: the eBPF programs are detached once no ctagent holds them\n", path)
	return err
}

// closeTracer closes t and logs a failure.
func closeTracer(t tracer.Tracer, log *zap.Logger) {
	if err := t.Close(); err != nil {
		log.Warn("Closing the tracer", zap.Error(err))
	}
}
