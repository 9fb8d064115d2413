// Package metrics exports what a tracer.Tracer observes of the conntrack
// table as Prometheus metrics, per network namespace.
//
// The hot path never touches Go: entry counts come from the tracer's
// counters, read at scrape time, on top of a baseline table dump per
// namespace that a periodic reconciliation renews. Identity labels (pod,
// container, ...) are added at scrape time from a Namespaces source, and the
// number of namespaces with their own series can be capped.
//
// The metric reference, docs/metrics.md, is generated from the same metric
// table Collect uses: see Markdown.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// Namespaces is the source of network namespaces: which exist now, where to
// open them, and who owns them; a *netns.Resolver is one. Both methods are
// called at scrape time and must be cheap (cached); Run calls them too. A
// source that can rescan on demand implements Refresher too. Identity
// labels come from netns.Identity: netns_name from Name, container from
// ContainerID, and pod, pod_namespace, comm and pod_label_* from the fields
// of those names.
type Namespaces interface {
	// Namespaces lists the network namespaces that exist now. A Path of ""
	// means the exporter's own namespace.
	Namespaces() []netns.Namespace
	// Lookup returns the identity of a namespace, false if unknown.
	Lookup(inode uint32) (netns.Identity, bool)
}

// Refresher is a Namespaces that can look for new namespaces now. The
// exporter calls Refresh from Run, never from Collect, when a namespace may
// have appeared (see Exporter.Discover), so that the new namespace is
// listed and dumped before the next scrape instead of at the next rescan
// of the source.
type Refresher interface {
	// Refresh rescans; the next Namespaces call lists what it found. An
	// error is logged; whatever was found is still used.
	Refresh() error
}

// ownNamespace is the namespace source of an exporter without one: its own
// namespace, without identity.
type ownNamespace netns.Namespace

func (o ownNamespace) Namespaces() []netns.Namespace { return []netns.Namespace{netns.Namespace(o)} }

func (o ownNamespace) Lookup(uint32) (netns.Identity, bool) { return netns.Identity{}, false }

// Defaults of Options.
const (
	DefaultStaleAfter         = 5 * time.Minute
	DefaultReconcileInterval  = 60 * time.Second
	DefaultRescanInterval     = 10 * time.Second
	DefaultKernelStatsTimeout = 2 * time.Second
	DefaultCounterPoll        = time.Second
)

// Options configure New.
type Options struct {
	// Tracer provides counters, lost events and program statistics. Required.
	Tracer tracer.Tracer
	// Namespaces lists namespaces and their identities. nil: only the
	// exporter's own namespace, without identity.
	Namespaces Namespaces
	// Labels are the identity labels added to per-namespace series after
	// netns, a subset of IdentityLabels. They appear in IdentityLabels order.
	Labels []string
	// PodLabels are Kubernetes pod label keys (e.g. "app",
	// "app.kubernetes.io/name"). Each adds the label PodLabelName(key) to
	// per-namespace series, after Labels and in this order, valued from
	// netns.Identity.PodLabels at scrape time. Keys whose names collide are an
	// error; see PodLabelNames.
	PodLabels []string
	// MaxNamespaces caps the namespaces with series of their own; the rest
	// (those with the fewest entries, then the highest inode numbers) are
	// summed into netns="overflow". 0: no cap. Run decides which namespaces
	// keep their own series (see Exporter.Collect); scrapes show its last
	// decision.
	MaxNamespaces int
	// StaleAfter is how long the series of a namespace stay after it left the
	// namespace source and its counters stopped changing; Run drops them at
	// its first rescan after that. 0: 5m.
	StaleAfter time.Duration
	// ReconcileInterval is the period of the table dumps that correct the
	// entry gauges. 0: 60s; negative: never (only the first dump of each
	// namespace).
	ReconcileInterval time.Duration
	// RescanInterval is how often Run asks the namespace source for new
	// namespaces to dump and reads the counters to keep its bookkeeping:
	// namespaces tracked, stale ones expired, overflow placement, identities
	// kept for namespaces that leave the source. Scrapes only read that
	// bookkeeping, so it is at most this old at a scrape. 0: 10s. New
	// namespaces need not wait for it: see Exporter.Discover. It is also the
	// least time between two discoveries asked for the same unlisted
	// namespace.
	RescanInterval time.Duration
	// CounterPoll is how often Run reads the counters of a tracer that
	// counts every namespace (Info.CountsUnwatched: the eBPF backends) to
	// find namespaces the source does not list yet: a namespace born
	// after the last rescan is dumped within about this long of its first
	// entry, before any scrape. One read of the in-kernel counters map;
	// no work per event. 0: 1s; negative: never (the rescans find them).
	CounterPoll time.Duration
	// KernelStatsTimeout bounds the scrape-time read of one namespace's
	// kernel statistics. 0: 2s.
	KernelStatsTimeout time.Duration
	// DisableKernelStats skips the scrape-time kernel statistics
	// (ctagent_conntrack_kernel_*).
	DisableKernelStats bool
	// Logger; nil: no logging.
	Logger *zap.Logger
	// Version and Revision label ctagent_build_info.
	Version, Revision string
}

// Exporter is a prometheus.Collector of conntrack metrics. Register it on a
// dedicated registry; call Start, then Run in a goroutine.
type Exporter struct {
	tr          tracer.Tracer
	src         Namespaces
	idLabels    []string // identity label names
	podKeys     []string // Kubernetes pod label keys, after idLabels
	maxNS       int
	staleAfter  time.Duration
	reconcile   time.Duration
	rescan      time.Duration
	poll        time.Duration
	statsTO     time.Duration
	noStats     bool
	log         *zap.Logger
	version     string
	revision    string
	descs       []*prometheus.Desc
	layouts     []labelLayout // of descs (see series.go)
	nsLayout    labelLayout   // of the metrics labelled with the namespace only
	kick        chan struct{} // wakes Run for discovery: see discover
	wantRefresh atomic.Bool   // the next discovery refreshes the source first
	// known holds, for seek to read without e.mu, the namespaces that
	// need no discovery: knownListed for those the source lists, the time
	// (UnixNano) discovery was last asked for an unlisted one.
	known       sync.Map // uint32 → int64
	ready       atomic.Bool
	scrapeErrs  [numSources]atomic.Uint64
	reconErrs   atomic.Uint64
	foldedTotal atomic.Uint64
	passMu      sync.Mutex // one baseline pass at a time
	settle      time.Duration

	// Replaced by tests.
	now       func() time.Time
	dump      func(tracer.Namespace, func(tracer.Entry)) error
	readStats func(tracer.Namespace) (tracer.KernelStats, error)
	procRoot  string

	// mu guards the bookkeeping below and in each nsState. Run's work
	// takes it to write; Collect only reads, under RLock.
	mu    sync.RWMutex
	ns    map[uint32]*nsState
	tombs map[uint32]uint64 // dropped namespaces: counter activity when dropped
	// retired are the created, destroyed and failed counts of the
	// namespaces whose tracer counters were forgotten, so that
	// ctagent_events_total, their sum over every namespace, never steps
	// back.
	retired    [3]uint64
	forget     []uint32 // expired namespaces whose tracer counters refresh drops
	unwatch    []uint32 // namespaces that left the source, for Tracer.Unwatch
	reconDur   time.Duration
	reconDone  bool
	statsSlots chan struct{}
	listSeq    atomic.Uint64 // numbers the namespace lists refresh takes
	appliedSeq uint64        // the newest list observed; e.mu
}

// New checks opts and returns an Exporter.
func New(opts Options) (*Exporter, error) {
	if opts.Tracer == nil {
		return nil, errors.New("metrics: Options.Tracer is nil")
	}
	labels, err := identityLabels(opts.Labels)
	if err != nil {
		return nil, err
	}
	podNames, err := PodLabelNames(opts.PodLabels)
	if err != nil {
		return nil, fmt.Errorf("metrics: Options.PodLabels: %w", err)
	}
	if opts.MaxNamespaces < 0 {
		return nil, fmt.Errorf("metrics: MaxNamespaces %d is negative", opts.MaxNamespaces)
	}
	if opts.StaleAfter < 0 || opts.RescanInterval < 0 || opts.KernelStatsTimeout < 0 {
		return nil, errors.New("metrics: StaleAfter, RescanInterval and KernelStatsTimeout must not be negative")
	}
	e := &Exporter{
		tr:         opts.Tracer,
		src:        opts.Namespaces,
		idLabels:   labels,
		podKeys:    slices.Clone(opts.PodLabels),
		maxNS:      opts.MaxNamespaces,
		staleAfter: cmpOr(opts.StaleAfter, DefaultStaleAfter),
		reconcile:  cmpOr(opts.ReconcileInterval, DefaultReconcileInterval),
		rescan:     cmpOr(opts.RescanInterval, DefaultRescanInterval),
		poll:       cmpOr(opts.CounterPoll, DefaultCounterPoll),
		statsTO:    cmpOr(opts.KernelStatsTimeout, DefaultKernelStatsTimeout),
		noStats:    opts.DisableKernelStats,
		log:        opts.Logger,
		version:    opts.Version,
		revision:   opts.Revision,
		kick:       make(chan struct{}, 1),
		now:        time.Now,
		dump:       opts.Tracer.DumpTable,
		readStats:  opts.Tracer.KernelStats,
		procRoot:   "/proc",
		ns:         map[uint32]*nsState{},
		tombs:      map[uint32]uint64{},
		statsSlots: make(chan struct{}, 8),
	}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	// Counters trail the table a dump reads: read them that much after a
	// dump.
	e.settle = opts.Tracer.Info().CounterLag
	if e.src == nil {
		self, err := selfNamespace()
		if err != nil {
			return nil, fmt.Errorf("metrics: no Namespaces and own namespace unknown: %w", err)
		}
		e.src = ownNamespace(self)
	}
	e.descs = make([]*prometheus.Desc, len(defs))
	e.layouts = make([]labelLayout, len(defs))
	nsNames := append(append([]string{labelNetns}, labels...), podNames...)
	e.nsLayout = newLabelLayout(nsNames)
	for i, d := range defs {
		var vl []string
		if d.perNS {
			vl = slices.Clone(nsNames)
		}
		vl = append(vl, d.labels...)
		e.descs[i] = prometheus.NewDesc(d.name, d.help, vl, nil)
		e.layouts[i] = newLabelLayout(vl)
	}
	return e, nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// identityLabels validates Options.Labels and returns them in
// IdentityLabels order.
func identityLabels(in []string) ([]string, error) {
	seen := map[string]bool{}
	for _, l := range in {
		if !slices.Contains(IdentityLabels, l) {
			return nil, fmt.Errorf("metrics: unknown identity label %q (want one of %v)", l, IdentityLabels)
		}
		if seen[l] {
			return nil, fmt.Errorf("metrics: identity label %q given twice", l)
		}
		seen[l] = true
	}
	var out []string
	for _, l := range IdentityLabels {
		if seen[l] {
			out = append(out, l)
		}
	}
	return out, nil
}

func selfNamespace() (tracer.Namespace, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return tracer.Namespace{}, err
	}
	return tracer.Namespace{Inode: uint32(st.Ino)}, nil
}

// knownListed is the value of Exporter.known for a listed namespace.
const knownListed int64 = 0

// Discover asks Run to look for new namespaces now: refresh the namespace
// source (if it is a Refresher), have the tracer count the namespaces it
// lists (Tracer.Watch), and dump the new ones' tables, so their entry
// gauges are there at the next scrape. It returns at once; requests made
// while a discovery runs are served by one more. cmd/ctagent calls it when
// the mount table shows a named namespace come or go; the exporter calls it
// itself for counters of namespaces the source does not list (Run's
// counter poll and rescans).
func (e *Exporter) Discover() {
	e.wantRefresh.Store(true)
	e.wake()
}

// wake makes Run run a discovery, without blocking.
func (e *Exporter) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// seek asks for discovery of a namespace that the source does not list,
// at most once per rescan interval for each: one that stays unlisted (its
// path cannot be found, or it is gone with events still queued) waits for
// the rescans. Lock-free: it runs outside e.mu.
func (e *Exporter) seek(inode uint32) {
	now := time.Now().UnixNano()
	if v, ok := e.known.Load(inode); ok {
		at := v.(int64)
		if at == knownListed || now-at < int64(e.rescan) {
			return
		}
	}
	e.known.Store(inode, now)
	e.Discover()
}

// listing is a list of the namespace source, numbered in the order the
// lists were taken.
type listing struct {
	nss []tracer.Namespace
	seq uint64
}

// listNamespaces takes the namespace source's list, for refresh. Collect
// reads the source's list without numbering it: it observes nothing.
func (e *Exporter) listNamespaces() listing {
	nss := e.src.Namespaces()
	return listing{nss: nss, seq: e.listSeq.Add(1)}
}

// Ready reports whether the entry gauges can be trusted: Start dumped the
// listed namespaces (or a later pass of Run dumped one after Start failed).
// Namespaces that appear later are dumped by Run; until then they have
// counters but no entry gauges.
func (e *Exporter) Ready() bool { return e.ready.Load() }

// Start dumps the conntrack table of every listed namespace once, so the
// entry gauges are right before any event, and makes Ready true. It fails
// when namespaces were listed and none could be dumped (Ready stays false
// until a later pass of Run dumps one), or when ctx ends.
//
// Each dump walks the kernel's whole conntrack hash table (one for all
// namespaces; ctnetlink_dump_table skips the other namespaces' entries),
// about 10 ms with the default 262,144 buckets: 1,000 namespaces take
// seconds of kernel time. So Start dumps for at most startBudget (at
// least one group of dumpGroup namespaces) and leaves the rest to Run,
// which it wakes: those namespaces have their counters at once and their
// entry gauges once dumped, like a namespace that appears later.
func (e *Exporter) Start(ctx context.Context) error {
	e.refresh()
	n, failed, left, err := e.baselinePassUntil(ctx, false, time.Now().Add(startBudget), false)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if n > 0 && failed == n {
		return fmt.Errorf("metrics: no namespace could be dumped: %w", err)
	}
	if left > 0 {
		e.log.Info("Baseline continues in the background", zap.Int("dumped", n), zap.Int("left", left))
		e.wake()
	}
	e.ready.Store(true)
	return nil
}

// startBudget bounds the table dumps Start waits for (see Start).
const startBudget = 2 * time.Second

// retryDelays space out the passes that dump again a namespace whose last
// dump raced changes of its table (at most maxRacyPasses of them).
var retryDelays = []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}

// Run keeps the exporter up to date until ctx ends: it keeps the namespace
// bookkeeping (see refresh) every RescanInterval and at each discovery,
// dumps new namespaces as Discover or the rescan finds them, dumps again
// the namespaces whose last dump raced changes of their table, and
// reconciles every namespace's entries with a table dump every
// ReconcileInterval. Everything that changes the exporter's state runs
// here (and in Start); Collect only reads it.
func (e *Exporter) Run(ctx context.Context) {
	rescan := time.NewTicker(e.rescan)
	defer rescan.Stop()
	var reconcile <-chan time.Time
	if e.reconcile > 0 {
		t := time.NewTicker(e.reconcile)
		defer t.Stop()
		reconcile = t.C
	}
	var poll <-chan time.Time
	if e.poll > 0 && e.tr.Info().CountsUnwatched {
		t := time.NewTicker(e.poll)
		defer t.Stop()
		poll = t.C
	}
	var (
		retry   <-chan time.Time
		retries int
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-rescan.C:
			e.refresh()
			e.baselineNew(ctx)
		case <-poll:
			e.pollCounters()
		case <-e.kick:
			e.discover(ctx)
		case <-retry:
			retry = nil
			e.baselineNew(ctx)
		case <-reconcile:
			e.refresh()
			start := time.Now()
			n, failed, _, err := e.baselinePassUntil(ctx, false, time.Time{}, true)
			d := time.Since(start)
			e.mu.Lock()
			e.reconDur, e.reconDone = d, true
			e.mu.Unlock()
			if failed > 0 {
				e.log.Warn("reconciliation: table dumps failed", zap.Int("namespaces", n), zap.Int("failed", failed), zap.Error(err))
			} else {
				e.log.Debug("reconciliation done", zap.Int("namespaces", n), zap.Duration("took", d))
			}
		}
		switch {
		case !e.rebasePending():
			retry, retries = nil, 0
		case retry == nil:
			retry = time.After(retryDelays[min(retries, len(retryDelays)-1)])
			retries++
		}
	}
}

// discover refreshes the namespace source if Discover asked for it, keeps
// the bookkeeping with its list (refresh), and dumps the namespaces that
// wait for a dump; baselinePass has the tracer count them first.
func (e *Exporter) discover(ctx context.Context) {
	if e.wantRefresh.Swap(false) {
		if r, ok := e.src.(Refresher); ok {
			if err := r.Refresh(); err != nil {
				e.log.Debug("refreshing the namespace source", zap.Error(err))
			}
		}
	}
	e.refresh()
	e.baselineNew(ctx)
}

func (e *Exporter) baselineNew(ctx context.Context) {
	n, failed, err := e.baselinePass(ctx, true)
	if n > failed {
		e.ready.Store(true)
	}
	if failed > 0 {
		e.log.Warn("table dumps of new namespaces failed", zap.Int("namespaces", n), zap.Int("failed", failed), zap.Error(err))
	}
}

// refresh is the namespace bookkeeping, on Run's schedule (Start, every
// RescanInterval, each discovery and reconciliation), never in Collect: it
// takes the source's list and the counters, marks namespaces listed or
// not, tracks unlisted ones whose counters move, expires stale ones (and
// has the tracer forget them), places namespaces in or out of the overflow
// (those that wait for their first dump are placed by the pass that dumps
// them), keeps the identities of listed namespaces for when they leave the
// source, and asks for discovery of unlisted namespaces with new counters.
func (e *Exporter) refresh() {
	list := e.listNamespaces()
	c, err := e.tr.Counters()
	if err != nil {
		e.log.Debug("reading counters", zap.Error(err))
	}
	byNS := groupCounters(c)
	e.mu.Lock()
	unlisted := e.observe(e.now(), list, byNS, err == nil)
	var forget []uint32
	if err == nil {
		e.place(byNS, true)
		// Only with counters read: their counts go to e.retired first.
		forget, e.forget = e.forget, nil
	}
	var listed []uint32
	if e.hasIdentity() {
		for inode, st := range e.ns {
			if st.listed {
				listed = append(listed, inode)
			}
		}
	}
	e.mu.Unlock()
	e.keepIdentities(listed)
	for _, inode := range unlisted {
		e.seek(inode)
	}
	e.unwatchUnlisted()
	// The tracer's counters of expired namespaces go too, so that its maps
	// do not grow with namespace churn; their counts stay in
	// ctagent_events_total.
	e.retire(forget, byNS)
	for _, inode := range forget {
		if err := e.tr.Forget(inode); err != nil {
			e.log.Debug("forget namespace counters", zap.Uint32("netns", inode), zap.Error(err))
		}
	}
}

// unwatchUnlisted tells the tracer to stop observing the namespaces that
// left the source (and are still not listed): the netlink backend closes
// their listeners. Their counters stay until they expire.
func (e *Exporter) unwatchUnlisted() {
	e.mu.Lock()
	var gone []uint32
	for _, inode := range e.unwatch {
		if st := e.ns[inode]; st == nil || !st.listed {
			gone = append(gone, inode)
		}
	}
	e.unwatch = nil
	e.mu.Unlock()
	for _, inode := range gone {
		e.tr.Unwatch(inode)
	}
}

// pollCounters reads the counters and asks for discovery of the namespaces
// the source does not list whose counters are new or moved.
func (e *Exporter) pollCounters() {
	c, err := e.tr.Counters()
	if err != nil {
		e.log.Debug("reading counters", zap.Error(err))
		return
	}
	byNS := groupCounters(c)
	e.mu.Lock()
	unlisted := e.observeCounters(e.now(), byNS)
	e.mu.Unlock()
	for _, inode := range unlisted {
		e.seek(inode)
	}
}

// retire adds the counts of namespaces about to be forgotten to e.retired.
func (e *Exporter) retire(inodes []uint32, byNS map[uint32]*nsCounters) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, inode := range inodes {
		if n := byNS[inode]; n != nil {
			for _, v := range n.byKey {
				e.retired[0] += v.Created
				e.retired[1] += v.Destroyed
				for _, f := range v.Failed {
					e.retired[2] += f
				}
			}
		}
	}
}

// hasIdentity reports whether series carry identity or pod labels.
func (e *Exporter) hasIdentity() bool { return len(e.idLabels)+len(e.podKeys) > 0 }

// keepIdentities looks up the identities of listed namespaces, outside
// e.mu, and keeps them in their nsState: a namespace that leaves the
// source keeps the identity it had at the last refresh, so its counters
// keep their labels until they expire. A failed lookup keeps the previous
// one. Collect looks listed namespaces up itself (a cached read).
func (e *Exporter) keepIdentities(inodes []uint32) {
	if len(inodes) == 0 {
		return
	}
	ids := make([]netns.Identity, len(inodes))
	found := make([]bool, len(inodes))
	for i, inode := range inodes {
		ids[i], found[i] = e.src.Lookup(inode)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, inode := range inodes {
		if st := e.ns[inode]; st != nil && st.listed && found[i] {
			st.id = ids[i]
		}
	}
}

// Describe sends the descriptor of every metric the Exporter collects.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for i, d := range e.descs {
		if !defs[i].daemon {
			ch <- d
		}
	}
}
