package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"syscall"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/api"
	"github.com/ctagent/ctagent/pkg/eventjson"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// runEvents streams the events as JSON lines (or as text lines, --output
// text) until ctx is done: those of the daemon at --server, which turns its
// event stream on while we listen and applies the filters (--netns, --pod,
// --proto, --type), or, only when no daemon answers there, those of a
// tracer of our own, filtered here.
func runEvents(ctx context.Context, cfg *config, stdout io.Writer, log *zap.Logger) error {
	c, err := newClient(cfg.client)
	if err != nil {
		return err
	}
	out := newEventWriter(stdout, cfg.eventsOutput)
	defer out.Flush()
	err = c.Events(ctx, cfg.eventsFilter, func(line []byte) error {
		var ev struct {
			eventjson.Event
			Dropped *uint64 `json:"dropped"`
		}
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("%s: %w", api.EventsPath, err)
		}
		if ev.Dropped != nil {
			log.Warn("The daemon dropped events this client was too slow for", zap.Uint64("dropped", *ev.Dropped))
			return nil
		}
		if err := out.Write(ev.Event); err != nil {
			return err
		}
		return out.Flush()
	})
	switch {
	case ctx.Err() != nil:
		return nil
	case errors.Is(err, syscall.ECONNREFUSED):
		log.Info("No ctagent daemon answers; tracing by itself", zap.String("server", cfg.client.server))
		return traceEvents(ctx, cfg, out, log)
	case err == nil, errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("the daemon at %s ended the event stream (it stopped?)", cfg.client.server)
	}
	return err
}

// traceEvents streams the events of a tracer of our own until ctx is done.
func traceEvents(ctx context.Context, cfg *config, out eventWriter, log *zap.Logger) error {
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
			if !cfg.eventsFilter.MatchEvent(ev, id) {
				break
			}
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
