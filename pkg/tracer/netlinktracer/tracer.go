// Package netlinktracer is the netlink backend of pkg/tracer (registered
// as "netlink" when imported): one ctnetlink event socket (groups NEW and DESTROY)
// per network namespace, counters aggregated in Go.
//
// Namespaces: Open listens in those of Options.Namespaces (nil: the
// current namespace), Watch adds one, Unwatch closes one: the owner of the
// namespace set (the exporter, following pkg/netns) says which, so this
// package keeps no namespace list of its own. Namespace.Inode labels events
// and counters, Path opens the namespace ("" = the current one, whatever
// Inode says; a Path whose inode differs from a non-zero Inode is refused).
// A listener holds its namespace alive until Unwatch. Open fails only if
// none of its namespaces could be opened.
//
// Counters per Key{NetNS, Family, Protocol}: Created from NEW, Destroyed
// from DESTROY, lifetimes from a CTA_ID -> time-of-NEW map per namespace.
// Failures per Key{NetNS: inode} (Family, Protocol 0), appearing with the
// first failure: kernel stat insert_failed -> ReasonConfirmDrop, drop ->
// ReasonTableFull, clash_resolve -> ReasonClashResolved, as deltas since the
// listener started, refreshed by Counters and at Unwatch, or with
// Options.KernelStatsInterval by background reads (which KernelStats
// serves too) and at Unwatch.
//
// What it cannot see, compared with the eBPF backends:
//   - Insert failures arrive only as the kernel's per-namespace statistics
//     (insert_failed, drop, clash_resolve), polled as deltas; they are
//     counted under Key{NetNS: inode} with Family and Protocol 0 because
//     the kernel does not split them. ctnetlink -EEXIST/-ENOSPC are not
//     counted by the kernel at all and are invisible here.
//   - The kernel sends DESTROY only for entries that carry the event
//     extension, which (with the default net.netfilter.nf_conntrack_events=2)
//     it adds only while a listener exists: entries created before the
//     listener started produce no DESTROY event. With nf_conntrack_events=1
//     they do, and count as DestroyedNoStart.
//   - Lifetimes are measured between the receipt of NEW and DESTROY in user
//     space, or, when NEW was not seen, taken from the kernel's CTA_TIMESTAMP
//     (only present with net.netfilter.nf_conntrack_timestamp=1).
//   - A socket overrun (ENOBUFS) loses events; it is counted as
//     LostNetlinkNoBufs and followed by a table dump that prunes the
//     lifetime map. DESTROY can also be missing with no overrun (an event
//     mask without destroy, nft "ct event set new"): a dump also runs when
//     the map has doubled since the last one.

package netlinktracer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer"
	"github.com/ctagent/ctagent/pkg/tracer/ctnetlink"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

const (
	defaultNetlinkBufferSize = 8 << 20
	defaultEventBuffer       = 4096

	// warnEvery rate-limits the warnings of one listener.
	warnEvery = 10 * time.Second
	// resyncEvery is the least time between two resync dumps of one
	// namespace: the dump runs on the listener's goroutine, and on a big
	// table back-to-back dumps would cause the next overrun.
	resyncEvery = 5 * time.Second
	// suspectGrace is how long an entry missing from a resync dump keeps
	// its first-seen time: DESTROY events queued before the dump may still
	// be in the socket buffer.
	suspectGrace = 10 * time.Second
)

// cpusFresh is how long a read of a namespace's per-CPU counters serves
// KernelStats (see there): shorter than any scrape interval.
const cpusFresh = time.Second

// startParallel is how many listeners Open starts, and how many
// namespaces' statistics Counters reads, at a time.
const startParallel = 8

// minResyncSize is the least size of a listener's first-seen map that
// makes it resync (see nlListener.resyncAt). A variable for tests.
var minResyncSize = 4096

// netlinkHooks are what the netlink backend "attaches" to.
var netlinkHooks = []string{"ctnetlink/NEW", "ctnetlink/DESTROY"}

type netlinkTracer struct {
	*ctnetlink.Table
	opts   tracer.Options
	log    *zap.Logger
	events chan tracer.Event

	infoMu sync.Mutex
	info   tracer.Info

	mu        sync.Mutex // guards listeners and closed
	listeners map[uint32]*nlListener
	closed    bool // Close took the listeners: no new one may start

	cmu      sync.Mutex // guards counters
	counters map[tracer.Key]*tracer.Values

	lostChannelFull, lostNoBufs, lostDecode atomic.Uint64
	eventsOff                               atomic.Bool // see SetEvents

	stop      chan struct{} // closed by Close: listeners stop retrying
	statsDone chan struct{} // closed when refreshStatsLoop returns (nil: none runs)
	closeOnce sync.Once
	closeErr  error
}

func init() { tracer.Register(tracer.BackendNetlink, open) }

// counterLag is Info.CounterLag: events travel through sockets and the
// listener's goroutine before they are counted.
const counterLag = 50 * time.Millisecond

func open(ctx context.Context, opts tracer.Options) (tracer.Tracer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.NetlinkBufferSize <= 0 {
		opts.NetlinkBufferSize = defaultNetlinkBufferSize
	}
	if opts.EventBuffer <= 0 {
		opts.EventBuffer = defaultEventBuffer
	}
	t := &netlinkTracer{
		Table:     ctnetlink.NewTable(),
		opts:      opts,
		log:       opts.Logger.With(zap.String("backend", string(tracer.BackendNetlink))),
		events:    make(chan tracer.Event, opts.EventBuffer),
		info:      tracer.Info{Backend: tracer.BackendNetlink, Hooks: netlinkHooks, Kernel: tracer.KernelRelease(), CounterLag: counterLag},
		listeners: map[uint32]*nlListener{},
		counters:  map[tracer.Key]*tracer.Values{},
		stop:      make(chan struct{}),
	}
	t.eventsOff.Store(opts.DisableEvents)
	nss, err := t.namespaces()
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	// Listeners start startParallel at a time: each opens two sockets on
	// a thread that enters the namespace and reads its statistics, work
	// that waits on the kernel more than on a CPU.
	errs := make([]error, len(nss))
	sem := make(chan struct{}, startParallel)
	var wg sync.WaitGroup
	for i, ns := range nss {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := t.startListener(ns); err != nil {
				errs[i] = fmt.Errorf("netns %d: %w", ns.Inode, err)
			}
		})
	}
	wg.Wait()
	errs = slices.DeleteFunc(errs, func(err error) bool { return err == nil })
	if len(errs) > 0 && len(t.listeners) == 0 {
		return nil, errors.Join(errs...)
	}
	for _, err := range errs {
		if errors.Is(err, os.ErrNotExist) {
			// Listed, then gone before the socket opened: no warning.
			t.log.Debug("ctnetlink listener not started: namespace gone", zap.Error(err))
			continue
		}
		t.log.Warn("ctnetlink listener did not start", zap.Error(err))
	}
	t.log.Info("ctnetlink listening", zap.Int("namespaces", len(t.listeners)), zap.Int("buffer", opts.NetlinkBufferSize))
	if opts.KernelStatsInterval > 0 {
		t.statsDone = make(chan struct{})
		go t.refreshStatsLoop(opts.KernelStatsInterval)
	}
	return t, nil
}

// namespaces returns the namespaces to listen in.
func (t *netlinkTracer) namespaces() ([]tracer.Namespace, error) {
	if t.opts.Namespaces != nil {
		return t.opts.Namespaces()
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return nil, fmt.Errorf("stat /proc/self/ns/net: %w", err)
	}
	return []tracer.Namespace{{Inode: uint32(st.Ino)}}, nil
}

// nlListener listens in one namespace.
type nlListener struct {
	t  *netlinkTracer
	ns tracer.Namespace

	ev      *ctnetlink.Conn // event socket, read by run only
	started time.Time       // when it started listening
	closing atomic.Bool
	done    chan struct{}

	qmu       sync.Mutex      // guards q, qClosed, stats and baselined
	q         *ctnetlink.Conn // request socket: statistics, resync dumps
	qClosed   bool
	stats     ctnetlink.CPUTotals // the kernel's counters since the first read
	baselined bool                // the first read is the baseline of the failure deltas
	// lastCPUs is the last read of the per-CPU counters, at lastCPUsAt:
	// KernelStats uses it instead of reading them again within
	// cpusFresh (a scrape reads Counters, then KernelStats).
	lastCPUs   []ctnetlink.CPUStats
	lastCPUsAt time.Time
	// kstats is the last background read of the kernel statistics
	// (Options.KernelStatsInterval), nil before the first.
	kstats atomic.Pointer[tracer.KernelStats]

	// tracked is len(firstSeen), for tests.
	tracked atomic.Int64

	// Owned by run.
	firstSeen map[uint32]time.Time // CTA_ID -> receipt of NEW
	// resyncAt is the size of firstSeen that calls for a resync: twice
	// the entries the last resync found alive, at least minResyncSize.
	// DESTROY events can be missing without any overrun (a conntrack
	// template whose event mask lacks destroy, e.g. nft "ct event set
	// new"), and firstSeen must not grow without bound.
	resyncAt      int
	suspects      map[uint32]struct{} // missing from the last resync dump
	suspectsAt    time.Time
	lastResync    time.Time
	resyncPending bool
	lastWarn      time.Time
	suppressed    int
}

func (t *netlinkTracer) startListener(ns tracer.Namespace) error {
	ev, err := ctnetlink.Dial(ns)
	if err != nil {
		return err
	}
	got, err := ev.SetReadBuffer(t.opts.NetlinkBufferSize)
	if err != nil {
		ev.Close()
		return err
	}
	if got < t.opts.NetlinkBufferSize {
		t.log.Info("netlink receive buffer smaller than asked", zap.Uint32("netns", ns.Inode),
			zap.Int("asked", t.opts.NetlinkBufferSize), zap.Int("got", got))
	}
	if err := ev.JoinGroups(ctnetlink.GroupNew, ctnetlink.GroupDestroy); err != nil {
		ev.Close()
		return err
	}
	q, err := ctnetlink.Dial(ns)
	if err != nil {
		ev.Close()
		return err
	}
	l := &nlListener{
		t:         t,
		ns:        ns,
		ev:        ev,
		started:   time.Now(),
		q:         q,
		done:      make(chan struct{}),
		firstSeen: map[uint32]time.Time{},
		resyncAt:  minResyncSize,
	}
	// Baseline for the failure deltas, taken after joining the groups;
	// with background reads, the first of them.
	refresh := l.refreshFailed
	if t.opts.KernelStatsInterval > 0 {
		refresh = l.refreshStats
	}
	if err := refresh(); err != nil {
		t.log.Warn("conntrack stats baseline", zap.Uint32("netns", ns.Inode), zap.Error(err))
	}
	t.mu.Lock()
	if old := t.listeners[ns.Inode]; old != nil || t.closed {
		t.mu.Unlock()
		ev.Close()
		q.Close()
		if t.closed {
			return errTracerClosed
		}
		return fmt.Errorf("netns %d: %w", ns.Inode, errListening)
	}
	t.listeners[ns.Inode] = l
	t.mu.Unlock()
	go l.run()
	return nil
}

var (
	errListening    = errors.New("already listening")
	errTracerClosed = errors.New("tracer closed")
)

// Watch starts a listener in ns now unless one runs there already; once
// it returns nil, every entry created in ns is counted. It runs until
// Unwatch or Close.
func (t *netlinkTracer) Watch(ns tracer.Namespace) error {
	t.mu.Lock()
	_, ok := t.listeners[ns.Inode]
	closed := t.closed
	t.mu.Unlock()
	switch {
	case closed:
		return errTracerClosed
	case ok:
		return nil
	}
	err := t.startListener(ns)
	if errors.Is(err, errListening) {
		return nil // started by another Watch meanwhile
	}
	if err != nil {
		return fmt.Errorf("netns %d: starting ctnetlink listener: %w", ns.Inode, err)
	}
	t.log.Debug("ctnetlink listener started", zap.Uint32("netns", ns.Inode), zap.String("path", ns.Path))
	return nil
}

// Unwatch closes the listener of a namespace that left the namespace
// source, after a last read of its statistics: its socket would keep the
// namespace alive. Its counters stay until Forget.
func (t *netlinkTracer) Unwatch(inode uint32) {
	t.mu.Lock()
	l := t.listeners[inode]
	delete(t.listeners, inode)
	t.mu.Unlock()
	if l == nil {
		return
	}
	if err := l.refreshFailed(); err != nil {
		t.log.Debug("final conntrack stats", zap.Uint32("netns", inode), zap.Error(err))
	}
	if err := l.close(); err != nil {
		t.log.Debug("close ctnetlink listener", zap.Uint32("netns", inode), zap.Error(err))
	}
	t.log.Debug("ctnetlink listener closed", zap.Uint32("netns", inode))
}

// close stops the listener and waits for its goroutine.
func (l *nlListener) close() error {
	l.closing.Store(true)
	err := l.ev.Close()
	// Closing q without qmu unblocks a request in flight.
	err = errors.Join(err, l.q.Close())
	<-l.done
	l.qmu.Lock()
	l.qClosed = true
	l.qmu.Unlock()
	return err
}

// refreshFailed reads the per-CPU statistics and adds what changed since
// the last read to the namespace's failure counters (CPUTotals handles the
// 32-bit wrap); the first successful read is only the baseline.
func (l *nlListener) refreshFailed() error { return l.refreshFailedWait(true) }

// refreshFailedWait is refreshFailed; without wait it gives up at once when
// a table dump holds the query socket (it can for seconds), so that a
// scrape never waits: the kernel's counters are cumulative, and the next
// refresh adds what this one skipped.
func (l *nlListener) refreshFailedWait(wait bool) error {
	if wait {
		l.qmu.Lock()
	} else if !l.qmu.TryLock() {
		return nil
	}
	defer l.qmu.Unlock()
	if l.qClosed || l.closing.Load() {
		return nil
	}
	cpus, err := l.q.StatsCPU()
	if err != nil {
		return err
	}
	l.addFailedLocked(cpus)
	l.lastCPUs, l.lastCPUsAt = cpus, time.Now()
	return nil
}

// addFailedLocked adds one read of the per-CPU statistics to the
// namespace's failure counters (the first read is the baseline); l.qmu held.
func (l *nlListener) addFailedLocked(cpus []ctnetlink.CPUStats) {
	before := l.stats.Totals()
	after := l.stats.Add(cpus)
	if !l.baselined {
		l.baselined = true
		return
	}
	insertFailed := after[ctnetlink.StatInsertFailed] - before[ctnetlink.StatInsertFailed]
	drop := after[ctnetlink.StatDrop] - before[ctnetlink.StatDrop]
	clash := after[ctnetlink.StatClashResolve] - before[ctnetlink.StatClashResolve]
	if insertFailed|drop|clash == 0 {
		return
	}
	l.t.cmu.Lock()
	v := l.t.valuesLocked(tracer.Key{NetNS: l.ns.Inode})
	v.Failed[tracer.ReasonConfirmDrop] += insertFailed
	v.Failed[tracer.ReasonTableFull] += drop
	v.Failed[tracer.ReasonClashResolved] += clash
	l.t.cmu.Unlock()
}

// refreshStats reads the kernel statistics (per-CPU counters and entry
// count) over the request socket, waiting for a dump that holds it, and
// keeps them for KernelStats; the per-CPU counters refresh the failure
// counters too, as in refreshFailed.
func (l *nlListener) refreshStats() error {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	if l.qClosed || l.closing.Load() {
		return nil
	}
	ks, cpus, err := l.t.Table.KernelStatsOn(l.q, l.ns.Inode, nil)
	if err != nil {
		return err
	}
	l.addFailedLocked(cpus)
	l.lastCPUs, l.lastCPUsAt = cpus, ks.ReadAt
	l.kstats.Store(&ks)
	return nil
}

// refreshStatsLoop reads the kernel statistics of every listener every
// interval, startParallel at a time, until Close. A pass takes about two
// requests per namespace (~0.1 s for 1,000 namespaces on two vCPUs), so
// what Counters and KernelStats answer is at most interval plus one pass
// old.
func (t *netlinkTracer) refreshStatsLoop(interval time.Duration) {
	defer close(t.statsDone)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		t.eachListener(func(l *nlListener) {
			if err := l.refreshStats(); err != nil {
				t.log.Debug("conntrack stats", zap.Uint32("netns", l.ns.Inode), zap.Error(err))
			}
		})
	}
}

// eachListener calls fn for every running listener, startParallel at a
// time: each call is a request or two that waits on the kernel's reply more
// than on a CPU.
func (t *netlinkTracer) eachListener(fn func(*nlListener)) {
	t.mu.Lock()
	ls := make([]*nlListener, 0, len(t.listeners))
	for _, l := range t.listeners {
		ls = append(ls, l)
	}
	t.mu.Unlock()
	var g errgroup.Group
	g.SetLimit(startParallel)
	for _, l := range ls {
		g.Go(func() error {
			fn(l)
			return nil
		})
	}
	_ = g.Wait() // fn returns nothing
}

// listener returns the listener of namespace inode, nil if none runs.
func (t *netlinkTracer) listener(inode uint32) *nlListener {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.listeners[inode]
}

// KernelStats returns the last background read of ns's statistics
// (Options.KernelStatsInterval) if there is one. Else it reads them over
// its listener's request socket
// when one listens there and no dump holds the socket: no socket to open
// and no thread to move into the namespace, per namespace per scrape. The
// per-CPU counters that Counters read less than cpusFresh ago are used
// again (a scrape calls Counters, then KernelStats: one request fewer per
// namespace); a new read of them refreshes the failure counters too.
// Without a listener it opens a socket, like the other backends
// (ctnetlink.Table.KernelStats).
func (t *netlinkTracer) KernelStats(ns tracer.Namespace) (tracer.KernelStats, error) {
	l := t.listener(ns.Inode)
	if l != nil {
		if ks := l.kstats.Load(); ks != nil {
			return *ks, nil
		}
	}
	if l != nil && l.qmu.TryLock() {
		if !l.qClosed && !l.closing.Load() {
			var fresh []ctnetlink.CPUStats
			if time.Since(l.lastCPUsAt) < cpusFresh {
				fresh = l.lastCPUs
			}
			ks, cpus, err := t.Table.KernelStatsOn(l.q, ns.Inode, fresh)
			if err == nil && fresh == nil {
				l.addFailedLocked(cpus)
				l.lastCPUs, l.lastCPUsAt = cpus, time.Now()
			}
			l.qmu.Unlock()
			return ks, err
		}
		l.qmu.Unlock()
	}
	return t.Table.KernelStats(ns)
}

// DumpTable dumps ns's table over its listener's request socket when one
// listens there (waiting for a resync dump or a statistics read on it to
// end), else over a new socket (ctnetlink.DumpTable).
func (t *netlinkTracer) DumpTable(ns tracer.Namespace, fn func(tracer.Entry)) error {
	if l := t.listener(ns.Inode); l != nil {
		l.qmu.Lock()
		if !l.qClosed && !l.closing.Load() {
			err := ctnetlink.DumpTableOn(l.q, fn)
			l.qmu.Unlock()
			return err
		}
		l.qmu.Unlock()
	}
	return ctnetlink.DumpTable(ns, fn)
}

// valuesLocked returns the counters of k, creating them; t.cmu held.
func (t *netlinkTracer) valuesLocked(k tracer.Key) *tracer.Values {
	v := t.counters[k]
	if v == nil {
		v = &tracer.Values{}
		t.counters[k] = v
	}
	return v
}

func (l *nlListener) run() {
	defer close(l.done)
	for {
		b, err := l.ev.Receive()
		if err != nil {
			if l.closing.Load() {
				return
			}
			switch {
			case errors.Is(err, unix.ENOBUFS):
				l.t.lostNoBufs.Add(1)
				l.warn("ctnetlink socket overrun (ENOBUFS): events lost, resyncing; raise the netlink buffer size",
					zap.Int("buffer", l.t.opts.NetlinkBufferSize))
				l.resyncPending = true
				l.maybeResync()
			case errors.Is(err, ctnetlink.ErrTruncated):
				l.t.lostDecode.Add(1)
			default:
				l.warn("ctnetlink receive failed, retrying", zap.Error(err))
				select {
				case <-l.t.stop:
					return
				case <-time.After(time.Second):
				}
			}
			continue
		}
		now := time.Now()
		msgs, perr := ctnetlink.SplitMessages(b)
		for _, msg := range msgs {
			l.handle(msg, now)
		}
		if perr != nil {
			l.t.lostDecode.Add(1)
		}
		l.maybeResync()
		if l.suspects != nil && now.Sub(l.suspectsAt) > suspectGrace {
			for id := range l.suspects {
				delete(l.firstSeen, id)
			}
			l.suspects = nil
		}
		l.tracked.Store(int64(len(l.firstSeen)))
	}
}

// handle accounts one message and sends its event.
func (l *nlListener) handle(msg ctnetlink.Message, now time.Time) {
	ev, m, ok, err := ctnetlink.DecodeEvent(msg)
	if err != nil {
		l.t.lostDecode.Add(1)
		return
	}
	if !ok {
		return
	}
	ev.Time = now.Round(0) // wall clock only, like the eBPF backends
	ev.NetNS = l.ns.Inode
	switch ev.Type {
	case tracer.EventCreated:
		if m.HasID {
			l.firstSeen[m.ID] = now
			if len(l.firstSeen) >= l.resyncAt {
				l.resyncPending = true
			}
		}
	case tracer.EventDestroyed:
		if seen, ok := l.firstSeen[m.ID]; ok && m.HasID {
			ev.Lifetime, ev.LifetimeKnown = now.Sub(seen), true
			delete(l.firstSeen, m.ID)
		} else if m.Start != 0 && m.Stop >= m.Start {
			ev.Lifetime, ev.LifetimeKnown = time.Duration(m.Stop-m.Start), true
		}
		delete(l.suspects, m.ID)
	}
	l.t.account(&ev)
	if l.t.eventsOff.Load() {
		return
	}
	select {
	case l.t.events <- ev:
	default:
		l.t.lostChannelFull.Add(1)
	}
}

// account adds an event to the counters of its key.
func (t *netlinkTracer) account(ev *tracer.Event) {
	t.cmu.Lock()
	defer t.cmu.Unlock()
	v := t.valuesLocked(tracer.Key{NetNS: ev.NetNS, Family: ev.Family, Protocol: ev.Protocol})
	switch ev.Type {
	case tracer.EventCreated:
		v.Created++
	case tracer.EventDestroyed:
		v.Destroyed++
		if !ev.LifetimeKnown {
			v.DestroyedNoStart++
			return
		}
		v.LifetimeSum += ev.Lifetime
		v.LifetimeBuckets[tracer.LifetimeBucket(ev.Lifetime)]++
	}
}

// warn logs at warn level, at most once per warnEvery per listener; the
// next message says how many were suppressed. Called from run only.
func (l *nlListener) warn(msg string, fields ...zap.Field) {
	now := time.Now()
	if !l.lastWarn.IsZero() && now.Sub(l.lastWarn) < warnEvery {
		l.suppressed++
		return
	}
	fields = append(fields, zap.Uint32("netns", l.ns.Inode), zap.Int("suppressed", l.suppressed))
	l.t.log.Warn(msg, fields...)
	l.lastWarn, l.suppressed = now, 0
}

// maybeResync runs a pending resync unless the last one was less than
// resyncEvery ago.
func (l *nlListener) maybeResync() {
	if !l.resyncPending || time.Since(l.lastResync) < resyncEvery {
		return
	}
	l.resyncPending = false
	l.lastResync = time.Now()
	l.resync()
}

// resync dumps the table after an overrun, or when firstSeen reaches
// resyncAt. Entries whose NEW was seen but
// which are no longer in the table lost their DESTROY (or it is still
// queued): they become suspects and are forgotten after suspectGrace.
// The socket itself stays open: after ENOBUFS it keeps delivering.
func (l *nlListener) resync() {
	present := make(map[uint32]struct{}, len(l.firstSeen))
	l.qmu.Lock()
	var err error
	if l.qClosed {
		err = os.ErrClosed
	} else {
		_, _, err = l.q.Dump(func(m *ctnetlink.CTMessage) {
			if _, ok := l.firstSeen[m.ID]; ok {
				present[m.ID] = struct{}{}
			}
		})
	}
	l.qmu.Unlock()
	if err != nil {
		if !l.closing.Load() {
			l.warn("ctnetlink resync dump failed", zap.Error(err))
		}
		return
	}
	for id := range l.suspects { // missing twice: forget now
		if _, ok := present[id]; !ok {
			delete(l.firstSeen, id)
		}
	}
	l.resyncAt = max(2*len(present), minResyncSize)
	l.suspects = map[uint32]struct{}{}
	l.suspectsAt = time.Now()
	for id := range l.firstSeen {
		if _, ok := present[id]; !ok {
			l.suspects[id] = struct{}{}
		}
	}
}

func (t *netlinkTracer) Info() tracer.Info {
	t.infoMu.Lock()
	defer t.infoMu.Unlock()
	info := t.info
	info.Hooks = slices.Clone(info.Hooks)
	return info
}

func (t *netlinkTracer) Events() <-chan tracer.Event { return t.events }

// SetEvents turns sending events on the channel on or off; the listeners
// count either way.
func (t *netlinkTracer) SetEvents(on bool) error {
	t.eventsOff.Store(!on)
	return nil
}

// Counters returns the counters. The failure counters (Key{NetNS: inode},
// Family and Protocol 0) are refreshed from the kernel's statistics of
// every namespace first, unless they are read in the background
// (Options.KernelStatsInterval).
func (t *netlinkTracer) Counters() (tracer.Counters, error) {
	if t.opts.KernelStatsInterval <= 0 {
		t.eachListener(func(l *nlListener) {
			if err := l.refreshFailedWait(false); err != nil {
				t.log.Debug("conntrack stats", zap.Uint32("netns", l.ns.Inode), zap.Error(err))
			}
		})
	}
	t.cmu.Lock()
	defer t.cmu.Unlock()
	out := make(tracer.Counters, len(t.counters))
	for k, v := range t.counters {
		out[k] = *v
	}
	return out, nil
}

func (t *netlinkTracer) Lost() (map[tracer.LostReason]uint64, error) {
	return map[tracer.LostReason]uint64{
		tracer.LostChannelFull:   t.lostChannelFull.Load(),
		tracer.LostNetlinkNoBufs: t.lostNoBufs.Load(),
		tracer.LostDecodeError:   t.lostDecode.Load(),
	}, nil
}

func (t *netlinkTracer) Programs() ([]tracer.ProgramStats, error) { return nil, nil }

// Forget drops the counters and kernel statistics totals of a namespace,
// and closes its listener if one still runs.
func (t *netlinkTracer) Forget(netns uint32) error {
	t.Unwatch(netns)
	t.ForgetStats(netns)
	t.cmu.Lock()
	defer t.cmu.Unlock()
	for k := range t.counters {
		if k.NetNS == netns {
			delete(t.counters, k)
		}
	}
	return nil
}

// Close closes every socket, waits for every goroutine and closes the
// Events channel. Counters and Lost keep answering afterwards.
func (t *netlinkTracer) Close() error {
	t.closeOnce.Do(func() {
		close(t.stop)
		if t.statsDone != nil {
			<-t.statsDone
		}
		t.mu.Lock()
		ls := t.listeners
		t.listeners = map[uint32]*nlListener{}
		t.closed = true
		t.mu.Unlock()
		var errs []error
		for _, l := range ls {
			if err := l.close(); err != nil {
				errs = append(errs, err)
			}
		}
		close(t.events)
		t.closeErr = errors.Join(errs...)
		t.log.Debug("ctnetlink tracer closed")
	})
	return t.closeErr
}
