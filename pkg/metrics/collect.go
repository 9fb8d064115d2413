package metrics

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// sample is the data behind one netns label value: a namespace, or the
// overflow of several.
type sample struct {
	inode uint32
	netns string
	// st is nil for the overflow, and for a namespace Run does not track
	// yet (its counters only).
	st     *nsState
	listed bool   // the namespace source lists it now
	path   string // where the source's list opens it
	// placed and folded are Run's placement (nsState.placed, .folded).
	placed, folded bool
	entries        map[famProto]int64         // nil: unknown (not dumped, not listed, or counters unreadable)
	values         map[famProto]tracer.Values // counters
	rec            *reconInfo                 // nil: not dumped, or not listed
	kstats         *tracer.KernelStats        // nil: not read
	id             netns.Identity
	ids            []string // identity label values
}

func newSample(inode uint32) *sample {
	return &sample{inode: inode, netns: strconv.FormatUint(uint64(inode), 10)}
}

// merge adds s into the overflow sample o.
func (o *sample) merge(s *sample) {
	if s.entries != nil {
		if o.entries == nil {
			o.entries = map[famProto]int64{}
		}
		for k, v := range s.entries {
			o.entries[k] += v
		}
	}
	for k, v := range s.values {
		if o.values == nil {
			o.values = map[famProto]tracer.Values{}
		}
		sum := o.values[k]
		sum.Add(v)
		o.values[k] = sum
	}
	if s.listed {
		o.listed = true
		if s.rec != nil {
			if o.rec == nil {
				o.rec = s.rec.clone()
			} else {
				o.rec.merge(s.rec)
			}
		}
	}
	if s.kstats != nil {
		if o.kstats == nil {
			o.kstats = &tracer.KernelStats{}
		}
		addKernelStats(o.kstats, s.kstats)
	}
}

func addKernelStats(a, b *tracer.KernelStats) {
	a.Found += b.Found
	a.Invalid += b.Invalid
	a.Insert += b.Insert
	a.InsertFailed += b.InsertFailed
	a.Drop += b.Drop
	a.EarlyDrop += b.EarlyDrop
	a.Error += b.Error
	a.SearchRestart += b.SearchRestart
	a.ClashResolve += b.ClashResolve
	a.ChainTooLong += b.ChainTooLong
	a.Entries += b.Entries
	a.MaxEntries = max(a.MaxEntries, b.MaxEntries)
}

// Collect sends every metric. It only reads: the tracer's counters, the
// namespace source's list and identities (cached reads), the kernel
// statistics of listed namespaces, and the exporter's state under
// e.mu.RLock. Everything that changes that state is Run's: the namespace
// bookkeeping (see refresh), overflow placement, the identities kept for
// namespaces that left the source, expiry, discovery and the table dumps.
// Scrapes change nothing but their own error counters and the statsBusy
// guard of each namespace, which keeps a hung kernel statistics read from
// starting another goroutine scrape after scrape.
//
// So a scrape shows Run's bookkeeping as of its last refresh (at most
// RescanInterval old), combined with what it reads itself:
//
//   - A namespace Run does not track yet has its counters (created,
//     destroyed, failures, lifetimes) at once, labelled with the identity
//     the source has for it if the source lists it; its kernel statistics
//     once Run tracks it, and its entry gauges once Run has dumped it. An
//     expired namespace whose counters did not change since stays gone.
//   - A namespace the source no longer lists loses its table gauges
//     (entries, by-state, reconciliation and kernel statistics) at once;
//     its counters keep the identity of Run's last refresh that listed it,
//     until Run expires them at its first rescan after StaleAfter.
//   - A namespace listed again after it left the source has no table
//     gauges from its old dumps: they wait for Run to dump it again.
//   - Under MaxNamespaces, the namespaces Run placed keep their place until
//     it places them again (each refresh, and each baseline pass); others
//     take the places left, by inode number, and the rest is folded into
//     the overflow. ctagent_namespaces_folded_total counts Run's decisions,
//     so one that a scrape folds for want of a place counts only once Run
//     folds it too.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	start := time.Now()
	m := emitter{ch: ch, e: e}

	c, cerr := e.tr.Counters()
	if cerr != nil {
		e.scrapeError(srcCounters, cerr)
	}
	byNS := groupCounters(c)
	paths := map[uint32]string{}
	for _, n := range e.src.Namespaces() {
		if _, dup := paths[n.Inode]; !dup {
			paths[n.Inode] = n.Path
		}
	}

	e.mu.RLock()
	samples := make([]*sample, 0, len(e.ns))
	for inode, st := range e.ns {
		s := newSample(inode)
		s.st, s.placed, s.folded, s.id = st, st.placed, st.folded, st.id
		s.path, s.listed = paths[inode]
		if n := byNS[inode]; n != nil {
			s.values = n.byKey
		}
		// Table gauges: of a namespace listed now, and by Run since its
		// last dump (one listed again after it left waits for a dump of
		// its own).
		if s.listed && st.listed {
			s.rec = st.rec
			if cerr == nil {
				s.entries = st.tableEntries(byNS[inode])
			}
		}
		samples = append(samples, s)
	}
	// Namespaces Run does not track yet: counters, or only listed.
	for inode, n := range byNS {
		_, listed := paths[inode]
		if e.ns[inode] != nil {
			continue
		}
		if a, ok := e.tombs[inode]; ok && a == n.activity && !listed {
			continue // expired, and nothing new happened there
		}
		s := newSample(inode)
		s.listed, s.values = listed, n.byKey
		samples = append(samples, s)
	}
	for inode := range paths {
		if e.ns[inode] == nil && byNS[inode] == nil {
			s := newSample(inode)
			s.listed = true
			samples = append(samples, s)
		}
	}
	reconDur, reconDone := e.reconDur, e.reconDone
	e.mu.RUnlock()
	kept, folded := e.split(samples)

	// Identities: only listed namespaces are looked up: the source knows
	// them, so a lookup reads its cache, where an unknown inode can make a
	// resolver rescan /proc in the scrape. One that left the source has
	// the identity Run kept for it.
	if e.hasIdentity() {
		for _, s := range kept {
			if s.listed {
				if id, ok := e.src.Lookup(s.inode); ok {
					s.id = id
				}
			}
		}
	}
	for _, s := range kept {
		s.ids = e.identityValues(&s.id)
	}

	var statsAge time.Duration
	haveStats := false
	if !e.noStats {
		e.readKernelStats(samples)
		now := time.Now()
		for _, s := range samples {
			if s.kstats != nil && !s.kstats.ReadAt.IsZero() {
				statsAge, haveStats = max(statsAge, now.Sub(s.kstats.ReadAt)), true
			}
		}
	}
	for _, s := range kept {
		m.sample(s)
	}
	if len(folded) > 0 {
		of := &sample{netns: overflowNetns, ids: e.identityValues(&netns.Identity{})}
		for _, s := range folded {
			of.merge(s)
		}
		m.sample(of)
	}

	e.collectGlobal(m, c, cerr == nil)
	m.val(mNamespaces, float64(len(samples)))
	m.val(mNamespacesFolded, float64(len(folded)))
	m.val(mNamespacesFoldedTotal, float64(e.foldedTotal.Load()))
	if reconDone {
		m.val(mReconcileDuration, reconDur.Seconds())
	}
	m.val(mReconcileErrors, float64(e.reconErrs.Load()))
	for i, src := range scrapeSources {
		m.val(mScrapeErrors, float64(e.scrapeErrs[i].Load()), src)
	}
	if haveStats {
		m.val(mKernelStatsAge, statsAge.Seconds())
	}
	m.val(mScrapeDuration, time.Since(start).Seconds())
}

// identityValues returns the values of the identity labels and then of the
// pod labels, in the order of the descriptors' label names. Invalid UTF-8
// (a comm or a netns name can be any bytes), which client_golang refuses
// with a panic that ends the scrape, becomes U+FFFD.
func (e *Exporter) identityValues(id *netns.Identity) []string {
	vs := make([]string, 0, len(e.idLabels)+len(e.podKeys))
	for _, l := range e.idLabels {
		vs = append(vs, strings.ToValidUTF8(identityLabel(id, l), "\uFFFD"))
	}
	for _, k := range e.podKeys {
		vs = append(vs, strings.ToValidUTF8(id.PodLabels[k], "\uFFFD"))
	}
	return vs
}

// split divides the samples into those with series of their own and those
// folded into the overflow, as Run last placed them (see place); samples
// it has not placed take the places left under MaxNamespaces, by inode
// number, and the rest is folded. It changes nothing: Collect calls it.
// kept comes back ordered by inode.
func (e *Exporter) split(samples []*sample) (kept, folded []*sample) {
	slices.SortFunc(samples, func(a, b *sample) int { return cmp.Compare(a.inode, b.inode) })
	if e.maxNS == 0 {
		return samples, nil
	}
	free := e.maxNS
	for _, s := range samples {
		if s.placed && !s.folded {
			free--
		}
	}
	for _, s := range samples {
		switch {
		case s.placed && s.folded:
			folded = append(folded, s)
		case s.placed:
			kept = append(kept, s)
		case free > 0:
			free--
			kept = append(kept, s)
		default:
			folded = append(folded, s)
		}
	}
	return kept, folded
}

// readKernelStats reads the kernel statistics of every listed namespace
// that Run tracks (its nsState holds the statsBusy guard), at most
// cap(e.statsSlots) at a time, each within e.statsTO.
func (e *Exporter) readKernelStats(samples []*sample) {
	var wg sync.WaitGroup
	for _, s := range samples {
		if s.listed && s.st != nil {
			wg.Go(func() { s.kstats = e.kernelStats(s) })
		}
	}
	wg.Wait()
}

var errStatsBusy = errors.New("the previous read has not returned yet")

func (e *Exporter) kernelStats(s *sample) *tracer.KernelStats {
	ns := tracer.Namespace{Inode: s.inode, Path: s.path}
	if !s.st.statsBusy.CompareAndSwap(false, true) {
		e.scrapeError(srcKernelStats, fmt.Errorf("netns %d: %w", ns.Inode, errStatsBusy))
		return nil
	}
	e.statsSlots <- struct{}{}
	defer func() { <-e.statsSlots }()
	type result struct {
		ks  tracer.KernelStats
		err error
	}
	res := make(chan result, 1)
	go func() {
		defer s.st.statsBusy.Store(false)
		var r result
		if r.err = checkPath(ns); r.err == nil {
			r.ks, r.err = e.readStats(ns)
		}
		r.err = goneOr(ns, r.err)
		res <- r
	}()
	t := time.NewTimer(e.statsTO)
	defer t.Stop()
	select {
	case r := <-res:
		if errors.Is(r.err, errGone) {
			e.log.Debug("kernel statistics not read", zap.Error(r.err))
			return nil
		}
		if r.err != nil {
			e.scrapeError(srcKernelStats, fmt.Errorf("netns %d (%s): %w", ns.Inode, ns.Path, r.err))
			return nil
		}
		return &r.ks
	case <-t.C:
		e.scrapeError(srcKernelStats, fmt.Errorf("netns %d (%s): timed out after %v", ns.Inode, ns.Path, e.statsTO))
		return nil
	}
}

// errGone is what reading a namespace through its path comes to when the
// path no longer opens it: its process exited, or its name was deleted,
// after the namespace source listed it. That is not an error: the source
// leaves the namespace out at its next scan.
var errGone = errors.New("gone: its path no longer opens it")

// goneOr returns errGone, with the namespace, if err is not nil and ns.Path
// no longer opens ns (checked again now: err may come from the moment it
// went), else err.
func goneOr(ns tracer.Namespace, err error) error {
	if err == nil || ns.Path == "" {
		return err
	}
	if cerr := checkPath(ns); errors.Is(cerr, fs.ErrNotExist) || errors.Is(cerr, syscall.ESRCH) {
		return fmt.Errorf("netns %d (%s): %w", ns.Inode, ns.Path, errGone)
	}
	return err
}

// checkPath verifies that ns.Path still opens namespace ns.Inode: paths like
// /proc/PID/ns/net name another namespace once PID exits and is reused.
func checkPath(ns tracer.Namespace) error {
	if ns.Path == "" {
		return nil
	}
	var st syscall.Stat_t
	if err := syscall.Stat(ns.Path, &st); err != nil {
		return err
	}
	if uint32(st.Ino) != ns.Inode {
		return fmt.Errorf("%s is now namespace %d: %w", ns.Path, st.Ino, os.ErrNotExist)
	}
	return nil
}

func (e *Exporter) scrapeError(src string, err error) {
	e.scrapeErrs[sourceIndex(src)].Add(1)
	e.log.Debug("scrape error", zap.String("source", src), zap.Error(err))
}

// collectGlobal sends the metrics that are not per namespace; c are the
// tracer's counters, if haveCounters.
func (e *Exporter) collectGlobal(m emitter, c tracer.Counters, haveCounters bool) {
	for _, s := range []struct {
		file string
		i    int
	}{{"nf_conntrack_max", mLimit}, {"nf_conntrack_buckets", mBuckets}} {
		v, ok, err := e.readSysctl(s.file)
		if err != nil {
			e.scrapeError(srcSysctl, err)
		}
		if ok {
			m.val(s.i, v)
		}
	}

	m.val(mBuildInfo, 1, e.version, e.revision, runtime.Version())

	info := e.tr.Info()
	m.val(mTracerInfo, 1, string(info.Backend), strconv.FormatBool(info.RingBuffer), info.Kernel)
	for _, b := range slices.Sorted(maps.Keys(info.Refused)) {
		reason := info.RefusedReason[b]
		if reason == "" {
			reason = shortReason(info.Refused[b])
		}
		m.val(mTracerRefused, 1, string(b), reason)
	}
	for _, h := range slices.Compact(slices.Sorted(slices.Values(info.Hooks))) {
		m.val(mTracerHooks, 1, h)
	}
	for _, h := range info.HookStatus {
		v := 0.0
		if h.Active {
			v = 1
		}
		m.val(mTracerHookActive, v, h.Group, h.Hook, string(h.State))
	}

	if haveCounters {
		// The sums of the in-kernel counters (eBPF) or of the listeners'
		// (netlink): no event has to reach Go to be counted.
		e.mu.Lock()
		sums := e.retired
		e.mu.Unlock()
		for _, v := range c {
			sums[0] += v.Created
			sums[1] += v.Destroyed
			for _, f := range v.Failed {
				sums[2] += f
			}
		}
		for i, t := range []tracer.EventType{tracer.EventCreated, tracer.EventDestroyed, tracer.EventFailed} {
			m.val(mEvents, float64(sums[i]), t.String())
		}
	}

	if lost, err := e.tr.Lost(); err != nil {
		e.scrapeError(srcLost, err)
	} else {
		for _, r := range slices.Sorted(maps.Keys(lost)) {
			m.val(mEventsLost, float64(lost[r]), string(r))
		}
	}

	if progs, err := e.tr.Programs(); err != nil {
		e.scrapeError(srcPrograms, err)
	} else {
		seen := map[[2]string]bool{}
		for _, p := range progs {
			if k := [2]string{p.Name, p.Hook}; !seen[k] {
				seen[k] = true
				m.val(mProgramRunCount, float64(p.RunCount), p.Name, p.Hook)
				m.val(mProgramRunSeconds, p.RunTime.Seconds(), p.Name, p.Hook)
			}
		}
	}
}

// readSysctl reads a net.netfilter sysctl; a missing file is no value and no
// error.
func (e *Exporter) readSysctl(name string) (float64, bool, error) {
	b, err := os.ReadFile(filepath.Join(e.procRoot, "sys/net/netfilter", name))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("sysctl %s: %w", name, err)
	}
	return float64(v), true, nil
}

// shortReason keeps the last part of an error chain ("a: b: c" → "c"), at
// most 64 bytes, for a label value.
func shortReason(msg string) string {
	msg, _, _ = strings.Cut(msg, "\n")
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	msg = strings.TrimSpace(msg)
	for len(msg) > 64 {
		_, size := utf8.DecodeLastRuneInString(msg)
		msg = msg[:len(msg)-size]
	}
	if msg == "" {
		return "unknown"
	}
	return msg
}

// emitter sends const metrics of defs.
type emitter struct {
	ch chan<- prometheus.Metric
	e  *Exporter
}

func (m emitter) val(i int, v float64, lv ...string) {
	m.ch <- prometheus.MustNewConstMetric(m.e.descs[i], defs[i].kind.valueType(), v, lv...)
}

// series sends a counter or gauge sample of defs[i] with label pairs made
// by nsLabels.ordered.
func (m emitter) series(i int, v float64, labels []*dto.LabelPair) {
	m.ch <- &seriesMetric{desc: m.e.descs[i], labels: labels, value: v, counter: defs[i].kind == kindCounter}
}

// sample sends the per-namespace metrics of s, which share their label
// pairs (see series.go).
func (m emitter) sample(s *sample) {
	nl := newNSLabels(m.e.nsLayout, append([]string{s.netns}, s.ids...))
	// nsVal sends a sample of defs[i] labelled with the namespace, then
	// extra.
	nsVal := func(i int, v float64, extra ...string) {
		m.series(i, v, nl.ordered(m.e.layouts[i], extra))
	}

	for _, k := range slices.Sorted(maps.Keys(s.entries)) {
		nsVal(mEntries, float64(max(s.entries[k], 0)), tracer.FamilyName(k.family()), tracer.ProtocolName(k.protocol()))
	}
	for _, k := range slices.Sorted(maps.Keys(s.values)) {
		v := s.values[k]
		fam, proto := tracer.FamilyName(k.family()), tracer.ProtocolName(k.protocol())
		for r, n := range v.Failed {
			if r != int(tracer.ReasonNone) && n > 0 {
				nsVal(mInsertFailed, float64(n), fam, proto, tracer.FailReason(r).String())
			}
		}
		if v.Created|v.Destroyed == 0 {
			continue // failure counters only (netlink keeps them without family and protocol)
		}
		nsVal(mCreated, float64(v.Created), fam, proto)
		nsVal(mDestroyed, float64(v.Destroyed), fam, proto)
		m.ch <- newLifetimeMetric(m.e.descs[mLifetime], nl.ordered(m.e.layouts[mLifetime], []string{fam, proto}), &v)
	}

	if s.listed && s.rec != nil {
		r := s.rec
		// The nine named states, zeros included, only where the dump
		// found a TCP entry: for the many namespaces without TCP they
		// would be nine zero series each (docs/metrics.md).
		if r.hasTCP() {
			for st := uint8(tcpStateNone + 1); st <= tcpStateSynSent2; st++ {
				nsVal(mEntriesByState, float64(r.tcpStates[st]), tcpStateName(st))
			}
		}
		for _, st := range slices.Sorted(maps.Keys(r.tcpStates)) {
			if (st == tcpStateNone || st > tcpStateSynSent2) && r.tcpStates[st] > 0 {
				nsVal(mEntriesByState, float64(r.tcpStates[st]), tcpStateName(st))
			}
		}
		nsVal(mEntriesUnreplied, float64(r.unreplied))
		nsVal(mEntriesAssured, float64(r.assured))
		nsVal(mReconcileCorrections, float64(r.corrections))
		nsVal(mReconcileLastCorrection, float64(r.lastCorrection))
		nsVal(mReconcileLastTimestamp, float64(r.at.UnixNano())/1e9)
	}

	if ks := s.kstats; ks != nil {
		nsVal(mKernelEntries, float64(ks.Entries))
		for i, st := range kernelStats {
			nsVal(mKernelStat+i, float64(st.get(ks)))
		}
	}
}
