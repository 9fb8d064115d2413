package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/api"
	"github.com/ctagent/ctagent/pkg/eventjson"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// runEvents streams the tracer's events as JSON lines (or as text lines,
// --output text) until ctx is done.
func runEvents(ctx context.Context, cfg *config, stdout io.Writer, log *zap.Logger) error {
	pods, stopPods, err := startPodSource(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer stopPods()
	r := newResolver(cfg, pods, log)
	if err := r.Refresh(); err != nil {
		log.Warn("Scanning network namespaces", zap.Error(err))
	}
	var keep func(netns.Namespace) bool
	if cfg.eventsNetns != "" {
		keep = func(ns netns.Namespace) bool { return matchNetns(r, ns.Inode, cfg.eventsNetns) }
		if !slices.ContainsFunc(r.Namespaces(), keep) {
			log.Warn("No such network namespace yet; waiting for it", zap.String("netns", cfg.eventsNetns))
		}
	}
	if len(r.Namespaces()) == 0 {
		return fmt.Errorf("no network namespace found under %s", cfg.netns.ProcRoot)
	}
	t, err := tracer.Open(ctx, tracerOptions(cfg, log))
	if err != nil {
		return err
	}
	defer closeTracer(t, log)
	t.Info().Log(log, cfg.tracer.Backend)
	fctx, stopFollowing := context.WithCancel(ctx)
	var following sync.WaitGroup
	following.Go(func() { followNamespaces(fctx, r, t, keep, cfg.metrics.RescanInterval, log) })
	defer following.Wait()
	defer stopFollowing()

	out := newEventWriter(stdout, cfg.eventsOutput)
	defer out.Flush()
	events := t.Events()
	for {
		select {
		case <-ctx.Done():
			log.Info("Stopped")
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			if keep != nil && !matchNetns(r, ev.NetNS, cfg.eventsNetns) {
				break
			}
			id, _ := r.Lookup(ev.NetNS)
			if err := out.Write(eventjson.New(ev, id)); err != nil {
				return err
			}
			if len(events) == 0 { // flush when idle, batch when busy
				if err := out.Flush(); err != nil {
					return err
				}
			}
		}
	}
}

// eventWriter writes events buffered; the caller flushes when idle.
type eventWriter interface {
	Write(eventjson.Event) error
	Flush() error
}

// newEventWriter returns the writer of the --output format.
func newEventWriter(w io.Writer, format string) eventWriter {
	if format == "text" {
		return &textEventWriter{bufio.NewWriterSize(w, 64<<10)}
	}
	return eventjson.NewWriter(w)
}

// textEventWriter writes api.FormatEvent lines.
type textEventWriter struct{ buf *bufio.Writer }

func (w *textEventWriter) Write(ev eventjson.Event) error {
	w.buf.WriteString(api.FormatEvent(ev))
	return w.buf.WriteByte('\n')
}

func (w *textEventWriter) Flush() error { return w.buf.Flush() }

// matchNetns reports whether the namespace inode is the one --events.netns
// names, by inode number or by name.
func matchNetns(r *netns.Resolver, inode uint32, want string) bool {
	if strconv.FormatUint(uint64(inode), 10) == want {
		return true
	}
	id, ok := r.Lookup(inode)
	return ok && id.Name == want
}
