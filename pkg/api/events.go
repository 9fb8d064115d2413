package api

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/eventjson"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// EventsPath streams the tracer's events while a client listens.
const EventsPath = "/api/v1/events"

// subscriberBuffer is how many events a client may fall behind before the
// hub drops its events (counted, and said at the end of its stream); the
// tracer and the other clients never wait for a slow one.
const subscriberBuffer = 4096

// EventHub fans a tracer's event stream out to the clients of
// /api/v1/events and keeps the stream on only while one listens: with
// nobody listening the eBPF programs write no record (Tracer.SetEvents),
// so the daemon does no work per event.
type EventHub struct {
	tr  tracer.Tracer
	log *zap.Logger

	mu   sync.Mutex
	subs map[*subscription]struct{}
	done chan struct{} // closed when Run returns: the streams end
}

type subscription struct {
	ch      chan tracer.Event
	dropped uint64 // guarded by EventHub.mu
}

// NewEventHub returns a hub for tr, whose stream it turns off now. Run
// delivers the events.
func NewEventHub(tr tracer.Tracer, log *zap.Logger) (*EventHub, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := tr.SetEvents(false); err != nil {
		return nil, fmt.Errorf("event stream off: %w", err)
	}
	return &EventHub{tr: tr, log: log, subs: map[*subscription]struct{}{}, done: make(chan struct{})}, nil
}

// Run hands every event of the tracer to the clients until its channel
// closes (Tracer.Close) or ctx ends; then every client's stream ends, so
// that a daemon that stops does not wait for its listeners.
func (h *EventHub) Run(ctx context.Context) {
	defer close(h.done)
	events := h.tr.Events()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			h.mu.Lock()
			for s := range h.subs {
				select {
				case s.ch <- ev:
				default:
					s.dropped++
				}
			}
			h.mu.Unlock()
		}
	}
}

// subscribe adds a client; the first one turns the stream on.
func (h *EventHub) subscribe() (*subscription, error) {
	s := &subscription{ch: make(chan tracer.Event, subscriberBuffer)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		if err := h.tr.SetEvents(true); err != nil {
			return nil, err
		}
		h.log.Debug("event stream on: a client listens")
	}
	h.subs[s] = struct{}{}
	return s, nil
}

// unsubscribe removes a client and returns how many events it missed; the
// last one turns the stream off.
func (h *EventHub) unsubscribe(s *subscription) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
	if len(h.subs) == 0 {
		if err := h.tr.SetEvents(false); err != nil {
			h.log.Warn("Turning the event stream off", zap.Error(err))
		}
		h.log.Debug("event stream off: no client listens")
	}
	return s.dropped
}

// listening reports how many clients listen, for tests.
func (h *EventHub) listening() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// EventFilter selects events: the namespace and protocol parts of Filter,
// and event types.
type EventFilter struct {
	Filter
	Types []string // created, destroyed, failed; empty: all
}

// EventTypes are the event types a filter may select.
var EventTypes = []string{"created", "destroyed", "failed"}

// ParseEventFilter reads netns, pod, proto and type from q and checks them.
func ParseEventFilter(q url.Values) (EventFilter, error) {
	f, err := ParseFilter(url.Values{"netns": q["netns"], "pod": q["pod"], "proto": q["proto"]})
	ef := EventFilter{Filter: f}
	if err != nil {
		return ef, err
	}
	for _, v := range q["type"] {
		for _, t := range strings.Split(v, ",") {
			if t = strings.ToLower(strings.TrimSpace(t)); t != "" {
				ef.Types = append(ef.Types, t)
			}
		}
	}
	return ef, ef.Check()
}

// Check reports a protocol or event type that no event can have.
func (f EventFilter) Check() error {
	if err := f.Filter.Check(); err != nil {
		return err
	}
	for _, t := range f.Types {
		if !slices.Contains(EventTypes, t) {
			return fmt.Errorf("type: unknown event type %q (want created, destroyed or failed)", t)
		}
	}
	return nil
}

// Values are the query parameters of f.
func (f EventFilter) Values() url.Values {
	q := f.Filter.Values()
	if len(f.Types) > 0 {
		q.Set("type", strings.Join(f.Types, ","))
	}
	return q
}

// MatchEvent reports whether ev (of a namespace with identity id) passes f.
func (f EventFilter) MatchEvent(ev tracer.Event, id netns.Identity) bool {
	if len(f.Types) > 0 && !slices.Contains(f.Types, ev.Type.String()) {
		return false
	}
	return f.MatchNamespace(ev.NetNS, id) &&
		f.MatchEntry(tracer.Entry{Family: ev.Family, Protocol: ev.Protocol, Status: ev.Status, TCPState: ev.TCPState})
}

// ServeEvents serves GET /api/v1/events: the matching events as JSON lines
// with their namespace's owner, from the moment the client connects until
// it goes away. The tracer's stream is on only while some client listens.
// Events a client was too slow for are dropped for it alone, and the
// stream ends with a line {"dropped": N} when there were any.
func (h *Handler) ServeEvents(w http.ResponseWriter, r *http.Request) {
	src := h.source(w, r)
	if src == nil {
		return
	}
	if src.Events == nil {
		httpError(w, http.StatusServiceUnavailable, fmt.Errorf("this daemon serves no event stream"))
		return
	}
	f, err := ParseEventFilter(r.URL.Query())
	if err != nil {
		httpError(w, http.StatusBadRequest, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	sub, err := src.Events.subscribe()
	if err != nil {
		httpError(w, http.StatusInternalServerError, fmt.Errorf("turning the event stream on: %w", err))
		return
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush() // the headers: the client knows it listens
	out := eventjson.NewWriter(w)
	defer func() {
		if n := src.Events.unsubscribe(sub); n > 0 {
			fmt.Fprintf(w, "{\"dropped\":%d}\n", n)
			_ = rc.Flush()
		}
	}()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-src.Events.done:
			return
		case ev := <-sub.ch:
			id, _ := src.Namespaces.Lookup(ev.NetNS)
			if !f.MatchEvent(ev, id) {
				continue
			}
			if err := out.Write(eventjson.New(ev, id)); err != nil {
				return
			}
			if len(sub.ch) == 0 { // flush when idle, batch when busy
				if out.Flush() != nil || rc.Flush() != nil {
					return
				}
			}
		}
	}
}
