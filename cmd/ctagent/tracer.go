package main

import (
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// newResolver builds the network namespace resolver from the flags.
func newResolver(cfg *config, pods netns.PodSource, log *zap.Logger) *netns.Resolver {
	opts := cfg.netns
	opts.Logger, opts.Pods = log.Named("netns"), pods
	return netns.NewResolver(opts)
}

// tracerNamespaces adapts the resolver to tracer.Options.Namespaces. The
// tracer calls it at start and every rescan interval, so it refreshes the
// resolver first: a namespace made a moment ago is listened to at the next
// rescan, not one resolver period later. keep, if not nil, filters.
func tracerNamespaces(r *netns.Resolver, procRoot string, log *zap.Logger, keep func(netns.Namespace) bool) func() ([]tracer.Namespace, error) {
	return func() ([]tracer.Namespace, error) {
		if err := r.Refresh(); err != nil {
			log.Debug("Refreshing network namespaces for the tracer", zap.Error(err))
		}
		nss := r.Namespaces()
		out := nss
		if keep != nil {
			out = slices.DeleteFunc(slices.Clone(nss), func(ns netns.Namespace) bool { return !keep(ns) })
		}
		if len(out) == 0 && len(nss) == 0 {
			return nil, fmt.Errorf("no network namespace found under %s", procRoot)
		}
		return out, nil
	}
}

// tracerOptions are the flags' tracer.Options with a logger.
func tracerOptions(cfg *config, log *zap.Logger) tracer.Options {
	opts := cfg.tracer
	opts.Logger = log.Named("tracer")
	return opts
}

// closeTracer closes t and logs a failure.
func closeTracer(t tracer.Tracer, log *zap.Logger) {
	if err := t.Close(); err != nil {
		log.Warn("Closing the tracer", zap.Error(err))
	}
}
