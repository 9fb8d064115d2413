package api

import (
	"cmp"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/eventjson"
	"github.com/ctagent/ctagent/pkg/metrics"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// The endpoints, all under PathPrefix.
const (
	PathPrefix     = "/api/"
	NamespacesPath = "/api/v1/namespaces"
	EntriesPath    = "/api/v1/entries"
)

// Source is what the API serves: the daemon's exporter, namespace source
// and tracer.
type Source struct {
	// Stats gives the per-namespace numbers (a *metrics.Exporter).
	Stats interface {
		Snapshot() ([]metrics.NamespaceStats, uint64)
	}
	// Namespaces lists the namespaces to dump and their owners (a
	// *netns.Resolver).
	Namespaces metrics.Namespaces
	// Table dumps a namespace's table (the tracer).
	Table tracer.Table
	// Events streams the tracer's events to clients; nil: no event stream.
	Events *EventHub
}

// Handler serves the API. The daemon mounts it before its tracer runs:
// until SetSource, every endpoint answers 503.
type Handler struct {
	log *zap.Logger
	mu  sync.Mutex
	src *Source
}

// NewHandler returns a Handler without a source; log may be nil.
func NewHandler(log *zap.Logger) *Handler {
	if log == nil {
		log = zap.NewNop()
	}
	return &Handler{log: log}
}

// SetSource makes the handler serve src.
func (h *Handler) SetSource(src Source) {
	h.mu.Lock()
	h.src = &src
	h.mu.Unlock()
}

func (h *Handler) source(w http.ResponseWriter, r *http.Request) *Source {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		httpError(w, http.StatusMethodNotAllowed, errors.New("only GET"))
		return nil
	}
	h.mu.Lock()
	src := h.src
	h.mu.Unlock()
	if src == nil {
		httpError(w, http.StatusServiceUnavailable, errors.New("not ready: the tracer is not attached yet"))
	}
	return src
}

// httpError answers {"error": "..."}.
func httpError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{err.Error()})
}

// NamespacesResponse is the answer of GET /api/v1/namespaces.
type NamespacesResponse struct {
	// Limit is net.netfilter.nf_conntrack_max, the most entries of each
	// namespace's table; 0 if unknown.
	Limit      uint64      `json:"limit"`
	Namespaces []Namespace `json:"namespaces"`
}

// Namespace is one namespace's table health.
type Namespace struct {
	eventjson.Owner // netns .. comm
	// Listed: the namespace exists now (it is kept a while after it went,
	// with its counters).
	Listed bool `json:"listed"`
	// Entries is null until the daemon dumped the namespace's table.
	Entries           *int64            `json:"entries"`
	EntriesByProtocol []ProtocolEntries `json:"entries_by_protocol,omitempty"`
	Created           uint64            `json:"created_total"`
	Destroyed         uint64            `json:"destroyed_total"`
	Failed            uint64            `json:"failed_total"`
	Limit             uint64            `json:"limit"`
	// Drops are the kernel's drop and early_drop counters of the
	// namespace (conntrack -S): packets dropped because the table was full
	// or an entry could not be made, and entries evicted to make room;
	// null when unreadable.
	Drops *uint64 `json:"drops_total"`
	// FillRatio is Entries / Limit; null when either is unknown.
	FillRatio *float64 `json:"fill_ratio"`
}

// ProtocolEntries are the entries of one family and protocol.
type ProtocolEntries struct {
	Family   string `json:"family"`
	Protocol string `json:"protocol"`
	Entries  int64  `json:"entries"`
}

// namespaceOf is s as the API shows it, with the table limit.
func namespaceOf(s metrics.NamespaceStats, limit uint64) Namespace {
	n := Namespace{Owner: eventjson.NewOwner(s.Inode, s.Identity), Listed: s.Listed, Created: s.Created, Destroyed: s.Destroyed, Failed: s.Failed, Limit: limit}
	if s.Entries != nil {
		total := s.EntriesTotal
		n.Entries = &total
		for _, e := range s.Entries {
			n.EntriesByProtocol = append(n.EntriesByProtocol, ProtocolEntries(e))
		}
		if limit > 0 {
			ratio := float64(total) / float64(limit)
			n.FillRatio = &ratio
		}
	}
	return n
}

// identify sets n's owner fields from id.
// readDrops sets Drops from the kernel's statistics of ns; it stays nil
// when they cannot be read.
func (n *Namespace) readDrops(t tracer.Table, ns tracer.Namespace) {
	if st, err := t.KernelStats(ns); err == nil {
		d := st.Drop + st.EarlyDrop
		n.Drops = &d
	}
}

// ServeNamespaces serves GET /api/v1/namespaces.
func (h *Handler) ServeNamespaces(w http.ResponseWriter, r *http.Request) {
	src := h.source(w, r)
	if src == nil {
		return
	}
	stats, limit := src.Stats.Snapshot()
	listed := map[uint32]tracer.Namespace{}
	for _, n := range src.Namespaces.Namespaces() {
		listed[n.Inode] = n
	}
	resp := NamespacesResponse{Limit: limit, Namespaces: make([]Namespace, 0, len(stats))}
	for _, s := range stats {
		n := namespaceOf(s, limit)
		if ns, ok := listed[s.Inode]; ok && s.Listed {
			n.readDrops(src.Table, ns)
		}
		resp.Namespaces = append(resp.Namespaces, n)
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(resp); err != nil {
		h.log.Debug("writing /api/v1/namespaces", zap.Error(err))
	}
}

// ServeEntries serves GET /api/v1/entries: the matching entries as JSON
// lines, one namespace's table dump after the other (by inode), each
// entry written as the dump delivers it. When the client goes away the
// rest of the running dump is read and dropped (a ctnetlink dump cannot be
// cut short) and no other namespace is dumped.
func (h *Handler) ServeEntries(w http.ResponseWriter, r *http.Request) {
	src := h.source(w, r)
	if src == nil {
		return
	}
	f, err := ParseFilter(r.URL.Query())
	if err != nil {
		httpError(w, http.StatusBadRequest, err)
		return
	}
	nss := src.Namespaces.Namespaces()
	slices.SortFunc(nss, func(a, b tracer.Namespace) int { return cmp.Compare(a.Inode, b.Inode) })
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	ctx, rc := r.Context(), http.NewResponseController(w)
	out := eventjson.NewWriter(w)
	var werr error
	for i, ns := range nss {
		if i > 0 && nss[i-1].Inode == ns.Inode {
			continue // listed under two paths
		}
		id, _ := src.Namespaces.Lookup(ns.Inode)
		if !f.MatchNamespace(ns.Inode, id) {
			continue
		}
		err := src.Table.DumpTable(ns, func(e tracer.Entry) {
			if werr != nil || ctx.Err() != nil || !f.MatchEntry(e) {
				return
			}
			werr = out.WriteEntry(eventjson.NewEntry(ns.Inode, e, id))
		})
		if err != nil {
			// A namespace that went while listed, or a partial dump:
			// the stream goes on with the others.
			h.log.Debug("dumping a namespace for /api/v1/entries", zap.Uint32("netns", ns.Inode), zap.Error(err))
		}
		if werr == nil {
			if werr = out.Flush(); werr == nil {
				werr = rc.Flush()
			}
		}
		if werr != nil || ctx.Err() != nil {
			h.log.Debug("/api/v1/entries: client gone", zap.Error(cmpErr(werr, ctx.Err())))
			return
		}
	}
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// Routes are the handler's endpoints with a description each, for a
// server to mount.
func (h *Handler) Routes() []Route {
	return []Route{
		{NamespacesPath, http.HandlerFunc(h.ServeNamespaces), "API: per-namespace table health (JSON)"},
		{EntriesPath, http.HandlerFunc(h.ServeEntries), "API: conntrack entries with their owner (JSON lines)"},
		{EventsPath, http.HandlerFunc(h.ServeEvents), "API: live conntrack events with their owner (JSON lines)"},
		{NamespaceTopPath, http.HandlerFunc(h.ServeNamespaceTop), "API: what fills one namespace's table: top destinations and states (JSON)"},
	}
}

// Route is one endpoint.
type Route struct {
	Path        string
	Handler     http.Handler
	Description string
}
