package main

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

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

// tracerOptions are the flags' tracer.Options with a logger.
func tracerOptions(cfg *config, log *zap.Logger) tracer.Options {
	opts := cfg.tracer
	opts.Logger = log.Named("tracer")
	return opts
}

// logBackend logs, once, which backend runs, what it attached and why the
// backends before it were refused.
func logBackend(log *zap.Logger, requested tracer.Backend, info tracer.Info) {
	fields := []zap.Field{
		zap.String("backend", string(info.Backend)),
		zap.String("requested", string(requested)),
		zap.Strings("hooks", info.Hooks),
		zap.String("kernel", info.Kernel),
	}
	if info.Backend != tracer.BackendNetlink {
		fields = append(fields, zap.Bool("ring_buffer", info.RingBuffer))
	}
	for _, b := range refusedOrder(info.Refused) {
		fields = append(fields, zap.String("refused_"+string(b), info.Refused[b]))
	}
	msg := "Tracer attached"
	if len(info.Refused) > 0 {
		msg = "Tracer attached on a fallback backend"
	}
	log.Info(msg, fields...)
}

// refusedOrder lists the refused backends in the order auto tries them,
// then any other by name.
func refusedOrder(refused map[tracer.Backend]string) []tracer.Backend {
	rank := func(b tracer.Backend) int {
		i := slices.Index([]tracer.Backend{tracer.BackendFentry, tracer.BackendKprobe, tracer.BackendNetlink}, b)
		return cmp.Or(i+1, 4)
	}
	return slices.SortedFunc(maps.Keys(refused), func(a, b tracer.Backend) int {
		return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(a, b))
	})
}

// kernelBTF is where the running kernel exposes its BTF.
const kernelBTF = "/sys/kernel/btf/vmlinux"

// btfSource describes the BTF the eBPF backends will use, for logs and check.
func btfSource(cfg *config) (string, error) {
	path := cfg.tracer.BTFPath
	if path == "" {
		path = kernelBTF
	}
	st, err := os.Stat(path)
	if err != nil {
		return path, err
	}
	return fmt.Sprintf("%s (%d bytes)", path, st.Size()), nil
}

// closeTracer closes t and logs a failure.
func closeTracer(t tracer.Tracer, log *zap.Logger) {
	if err := t.Close(); err != nil {
		log.Warn("Closing the tracer", zap.Error(err))
	}
}
