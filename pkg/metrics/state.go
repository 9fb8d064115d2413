package metrics

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// famProto is a family and protocol, family<<8 | protocol.
type famProto uint16

func keyOf(k tracer.Key) famProto { return famProto(k.Family)<<8 | famProto(k.Protocol) }

func (k famProto) family() uint8   { return uint8(k >> 8) }
func (k famProto) protocol() uint8 { return uint8(k) }

// nsCounters are one namespace's counters.
type nsCounters struct {
	byKey map[famProto]tracer.Values
	// activity is the sum of every counter: counters only grow, so it
	// changes exactly when one of them does.
	activity uint64
}

// groupCounters splits the tracer's counters by namespace.
func groupCounters(c tracer.Counters) map[uint32]*nsCounters {
	out := map[uint32]*nsCounters{}
	for k, v := range c {
		n := out[k.NetNS]
		if n == nil {
			n = &nsCounters{byKey: map[famProto]tracer.Values{}}
			out[k.NetNS] = n
		}
		fp := keyOf(k)
		old := n.byKey[fp]
		old.Add(v)
		n.byKey[fp] = old
		n.activity += v.Created + v.Destroyed
		for _, f := range v.Failed {
			n.activity += f
		}
	}
	return out
}

// baseline is the state of a namespace's table at its last dump: the
// entries it held, and the counters read right before.
type baseline struct {
	dumped  map[famProto]uint64
	created map[famProto]uint64
	destroy map[famProto]uint64
}

func newBaseline(dumped map[famProto]uint64, c *nsCounters) *baseline {
	b := &baseline{dumped: dumped, created: map[famProto]uint64{}, destroy: map[famProto]uint64{}}
	if c != nil {
		for k, v := range c.byKey {
			b.created[k] = v.Created
			b.destroy[k] = v.Destroyed
		}
	}
	return b
}

// unchanged reports whether c counts the entries created and destroyed
// that the baseline was taken with: no event since the dump.
func (b *baseline) unchanged(c *nsCounters) bool {
	var cr, de uint64
	if c != nil {
		for k, v := range c.byKey {
			if v.Created != b.created[k] || v.Destroyed != b.destroy[k] {
				return false
			}
			cr, de = cr+v.Created, de+v.Destroyed
		}
	}
	var bc, bd uint64
	for k := range b.created {
		bc, bd = bc+b.created[k], bd+b.destroy[k]
	}
	return cr == bc && de == bd
}

// total is the entries the dump found.
func (b *baseline) total() uint64 {
	var t uint64
	for _, n := range b.dumped {
		t += n
	}
	return t
}

// entries returns the entries per family and protocol now that the counters
// are c: dumped + created since − destroyed since. Values can be negative
// when events raced the dump; callers clamp what they export.
func (b *baseline) entries(c *nsCounters) map[famProto]int64 {
	out := make(map[famProto]int64, len(b.dumped))
	for k, n := range b.dumped {
		out[k] = int64(n)
	}
	if c != nil {
		for k, v := range c.byKey {
			if v.Created|v.Destroyed != 0 {
				out[k] += int64(v.Created) - int64(b.created[k]) - (int64(v.Destroyed) - int64(b.destroy[k]))
			}
		}
	}
	return out
}

// tableEntries returns the entries of a dumped namespace now that its
// counters are c (see baseline.entries), with 0 for every family and
// protocol a dump ever found; nil if it was never dumped. e.mu is held, to
// read or write.
func (st *nsState) tableEntries(c *nsCounters) map[famProto]int64 {
	if st.base == nil {
		return nil
	}
	out := st.base.entries(c)
	for k := range st.dumpedKeys {
		if _, ok := out[k]; !ok {
			out[k] = 0
		}
	}
	return out
}

func sumEntries(m map[famProto]int64) int64 {
	var t int64
	for _, v := range m {
		t += v
	}
	return t
}

// dumpSummary is what one table dump found.
type dumpSummary struct {
	byKey     map[famProto]uint64
	total     uint64
	tcpStates map[uint8]uint64
	assured   uint64
	unreplied uint64
}

func newDumpSummary() *dumpSummary {
	return &dumpSummary{byKey: map[famProto]uint64{}, tcpStates: map[uint8]uint64{}}
}

func (s *dumpSummary) add(en tracer.Entry) {
	s.byKey[famProto(en.Family)<<8|famProto(en.Protocol)]++
	s.total++
	if en.Protocol == syscall.IPPROTO_TCP {
		s.tcpStates[en.TCPState]++
	}
	if en.Status&ipsAssured != 0 {
		s.assured++
	}
	if en.Status&ipsSeenReply == 0 {
		s.unreplied++
	}
}

// reconInfo is what the dumps of a namespace found.
type reconInfo struct {
	at             time.Time
	corrections    uint64
	lastCorrection int64
	tcpStates      map[uint8]uint64
	assured        uint64
	unreplied      uint64
}

// hasTCP reports whether the dump found a TCP entry (in any state).
func (r *reconInfo) hasTCP() bool {
	for _, n := range r.tcpStates {
		if n > 0 {
			return true
		}
	}
	return false
}

func (r *reconInfo) clone() *reconInfo {
	c := *r
	c.tcpStates = make(map[uint8]uint64, len(r.tcpStates))
	for k, v := range r.tcpStates {
		c.tcpStates[k] = v
	}
	return &c
}

// merge adds o into r, for the overflow series; at becomes the older.
func (r *reconInfo) merge(o *reconInfo) {
	if o.at.Before(r.at) {
		r.at = o.at
	}
	r.corrections += o.corrections
	r.lastCorrection += o.lastCorrection
	for k, v := range o.tcpStates {
		r.tcpStates[k] += v
	}
	r.assured += o.assured
	r.unreplied += o.unreplied
}

// nsState is what the exporter keeps of one namespace. Run's work writes
// it under e.mu; Collect reads it under e.mu.RLock, and writes only
// statsBusy.
type nsState struct {
	inode    uint32
	listed   bool      // in the namespace source's last list
	path     string    // from that list
	lastSeen time.Time // last listed, or last counter change
	activity uint64    // nsCounters.activity at the last look
	base     *baseline // nil until the first dump
	// rebase asks for a new dump soon, base still standing until then:
	// the last dump raced changes of the table (see racy), or the
	// namespace's path changed and the inode may name another namespace
	// now.
	rebase bool
	// racy counts the baseline passes in a row whose last dump raced
	// changes of the table: its baseline may be off by those changes.
	racy int
	// skips counts the reconciliations in a row that found nothing
	// changed and did not dump it (see baselinePassUntil).
	skips    int
	rec      *reconInfo
	dumping  bool   // a dump is running
	gonePath string // a path that no longer opens the namespace: no dumps through it
	// placed: Run decided whether the namespace has series of its own
	// under MaxNamespaces (see place); folded: it decided on the overflow.
	placed, folded bool
	id             netns.Identity // identity at the last refresh that listed it
	// dumpedKeys are the families and protocols dumps ever found: their
	// entry series stay, at 0, when the entries are gone.
	dumpedKeys map[famProto]bool
	// statsBusy is set while a kernel statistics read runs, so a hung read
	// does not pile up goroutines scrape after scrape. The one field a
	// scrape writes: a guard of its own reads, not bookkeeping.
	statsBusy atomic.Bool
}

// pathGone reports whether the namespace's path was found not to open it
// any more.
func (st *nsState) pathGone() bool { return st.gonePath != "" && st.path == st.gonePath }

// needsDump reports whether the namespace's entry gauges wait for a dump.
func (st *nsState) needsDump() bool {
	return st.listed && !st.dumping && !st.pathGone() && (st.base == nil || st.rebase)
}

// observe updates the namespace bookkeeping with a namespace list and, if
// haveCounters, the counters; then drops namespaces that left the source
// and whose counters have not changed for staleAfter. It returns the
// namespaces the source does not list whose counters are new or moved:
// namespaces to look for. e.mu is held.
func (e *Exporter) observe(now time.Time, list listing, byNS map[uint32]*nsCounters, haveCounters bool) (unlisted []uint32) {
	e.observeList(now, list)
	if haveCounters {
		unlisted = e.observeCounters(now, byNS)
	}
	for inode, st := range e.ns {
		if !st.listed && now.Sub(st.lastSeen) > e.staleAfter {
			delete(e.ns, inode)
			e.known.Delete(inode)
			e.tombs[inode] = st.activity
			e.forget = append(e.forget, inode)
		}
	}
	return unlisted
}

// observeList updates the bookkeeping with the namespace source's list,
// unless a newer list was observed already (refresh takes its list before
// e.mu; another refresh may observe a fresher one meanwhile). e.mu is held.
func (e *Exporter) observeList(now time.Time, list listing) {
	if list.seq < e.appliedSeq {
		return
	}
	e.appliedSeq = list.seq
	in := make(map[uint32]tracer.Namespace, len(list.nss))
	for _, n := range list.nss {
		if _, dup := in[n.Inode]; !dup {
			in[n.Inode] = n
		}
	}
	for inode, st := range e.ns {
		if _, ok := in[inode]; !ok && st.listed {
			st.listed = false
			e.known.Delete(inode) // its next counters ask for discovery
			e.unwatch = append(e.unwatch, inode)
		}
	}
	for inode, n := range in {
		st := e.ns[inode]
		switch {
		case st == nil:
			st = &nsState{inode: inode}
			e.ns[inode] = st
			delete(e.tombs, inode)
		case !st.listed && st.base != nil:
			// Listed again after it left the source: most likely a new
			// namespace under a reused inode number (the kernel hands
			// freed ones out at once). Its table gauges wait for a dump
			// of its own.
			st.base, st.rec, st.dumpedKeys, st.rebase = nil, nil, nil, false
		case st.listed && st.path != n.Path && st.base != nil:
			// The process its path named is gone, and the namespace with
			// it if its inode is reused now: dump it again.
			st.rebase = true
		}
		st.listed, st.path, st.lastSeen = true, n.Path, now
		if v, ok := e.known.Load(inode); !ok || v.(int64) != knownListed {
			e.known.Store(inode, knownListed)
		}
	}
}

// observeCounters updates the bookkeeping with the tracer's counters and
// returns the inodes of unlisted namespaces whose counters are new or
// moved. e.mu is held.
func (e *Exporter) observeCounters(now time.Time, byNS map[uint32]*nsCounters) (unlisted []uint32) {
	for inode, c := range byNS {
		st := e.ns[inode]
		if st == nil {
			if a, ok := e.tombs[inode]; ok && a == c.activity {
				continue // gone, and nothing new happened there
			}
			delete(e.tombs, inode)
			e.ns[inode] = &nsState{inode: inode, lastSeen: now, activity: c.activity}
			unlisted = append(unlisted, inode)
			continue
		}
		if c.activity != st.activity {
			st.activity, st.lastSeen = c.activity, now
			if !st.listed {
				unlisted = append(unlisted, inode)
			}
		}
	}
	for inode := range e.tombs {
		if byNS[inode] == nil {
			delete(e.tombs, inode)
		}
	}
	return unlisted
}

// place decides, from the counters byNS, which namespaces keep series of
// their own under MaxNamespaces (the most entries, then the lowest inode
// numbers) and which are folded into the overflow, and counts each one
// newly folded in ctagent_namespaces_folded_total. Collect shows the last
// decision (see Exporter.Collect). skipNew leaves unplaced the namespaces
// that wait for their first dump: the baseline pass that follows places
// them with their entries, rather than fold them for having none yet.
// e.mu is held.
func (e *Exporter) place(byNS map[uint32]*nsCounters, skipNew bool) {
	if e.maxNS == 0 {
		return
	}
	type ranked struct {
		st   *nsState
		rank int64
	}
	rs := make([]ranked, 0, len(e.ns))
	for _, st := range e.ns {
		if skipNew && st.base == nil && st.needsDump() {
			st.placed = false
			continue
		}
		var rank int64
		if st.listed {
			rank = sumEntries(st.tableEntries(byNS[st.inode]))
		}
		rs = append(rs, ranked{st, rank})
	}
	slices.SortFunc(rs, func(a, b ranked) int {
		if c := cmp.Compare(b.rank, a.rank); c != 0 {
			return c
		}
		return cmp.Compare(a.st.inode, b.st.inode)
	})
	for i, r := range rs {
		fold := i >= e.maxNS
		if fold && !r.st.folded {
			e.foldedTotal.Add(1)
		}
		r.st.placed, r.st.folded = true, fold
	}
}

// dumpGroup is how many namespaces a baseline pass dumps between two
// counter snapshots, dumpParallel at a time.
const (
	dumpGroup    = 64
	dumpParallel = 8
)

// maxDumpTries bounds the dumps of one namespace in one baseline pass while
// its counters keep moving during the dump.
const maxDumpTries = 3

// maxRacyPasses bounds the passes, after the first, that dump a namespace
// again because its last dump raced changes of its table. Run spaces them
// out (see retryDelays); after them the reconciliation corrects it.
const maxRacyPasses = 4

// dumpTry is a namespace of a baseline pass and how often it was dumped.
type dumpTry struct {
	ns    tracer.Namespace
	tries int
}

// tryResult is what one dump of a baseline pass came to.
type tryResult struct {
	err   error // errGone, a failure, or a partial dump that was used
	retry bool  // the counters moved during the dump: dump again
}

// baselinePass dumps the listed namespaces (only those never dumped, or
// asked to be dumped again, if onlyNew) and makes each dump the
// namespace's new baseline. It returns how many it tried, how many failed,
// and their errors.
//
// The tracer is told to count the namespace (Tracer.Watch) before the
// dump, since a backend may count a namespace only once told (the netlink
// backend): entries made between a dump
// and the start of counting would be in neither. A dump is used only if the
// namespace's counters did not move while it ran; else it is repeated, up
// to maxDumpTries times, and the last one is used (it may be off by the
// entries that changed meanwhile; the next dump corrects that, and exports
// the correction).
func (e *Exporter) baselinePass(ctx context.Context, onlyNew bool) (n, failed int, err error) {
	n, failed, _, err = e.baselinePassUntil(ctx, onlyNew, time.Time{}, false)
	return n, failed, err
}

// reconcileMaxSkips is how many reconciliations in a row may skip an
// unchanged namespace (see baselinePassUntil).
const reconcileMaxSkips = 9

// baselinePassUntil is baselinePass that starts no group of dumps after
// until (zero: no limit) once one group is done; left is how many
// namespaces it did not dump, for a later pass (their baseline is still
// missing, so an onlyNew pass takes them).
//
// With skipUnchanged (the reconciliation), a namespace is not dumped when
// nothing says its table changed: its counters are those of its last
// dump, and the kernel's entry count (a cheap request, where a dump walks
// the whole conntrack hash table, ~10 ms with 262,144 buckets) is the
// entries of that dump; but at most reconcileMaxSkips times in a row, as
// entries change state (TCP state, assured, replied) without an event.
// At 1,000 idle namespaces this is the difference between 17 % and under
// 1 % of a core.
func (e *Exporter) baselinePassUntil(ctx context.Context, onlyNew bool, until time.Time, skipUnchanged bool) (n, failed, left int, err error) {
	e.passMu.Lock()
	defer e.passMu.Unlock()
	var now map[uint32]*nsCounters
	if skipUnchanged {
		if c, err := e.tr.Counters(); err == nil {
			now = groupCounters(c)
		}
	}
	var todo, check []tracer.Namespace
	e.mu.Lock()
	for _, st := range e.ns {
		if st.listed && !st.dumping && !st.pathGone() && (!onlyNew || st.base == nil || st.rebase) {
			st.dumping = true
			ns := tracer.Namespace{Inode: st.inode, Path: st.path}
			if now != nil && st.base != nil && !st.rebase && st.skips < reconcileMaxSkips && st.base.unchanged(now[st.inode]) {
				check = append(check, ns)
			} else {
				todo = append(todo, ns)
			}
		}
	}
	e.mu.Unlock()
	todo = append(todo, e.changed(check)...)
	if len(todo) == 0 {
		return 0, 0, 0, nil
	}
	defer func() {
		for _, ns := range todo {
			e.clearDumping(ns.Inode)
		}
	}()
	var errs []error
	report := func(ns tracer.Namespace, err error) {
		n++
		switch {
		case errors.Is(err, errGone):
			e.markGone(ns)
			e.log.Debug("table not dumped", zap.Error(err))
		case err != nil:
			e.reconErrs.Add(1)
			errs = append(errs, err)
		}
	}

	queue := make([]dumpTry, 0, len(todo))
	for _, ns := range todo {
		if err := e.tr.Watch(ns); err != nil {
			report(ns, goneOr(ns, fmt.Errorf("netns %d (%s): %w", ns.Inode, ns.Path, err)))
			continue
		}
		queue = append(queue, dumpTry{ns: ns})
	}

	// Namespaces are dumped in groups (dumpParallel at a time within
	// one), with one counter snapshot between groups: after one group's
	// dumps, before the next one's. Reading the counters can cost work per
	// namespace (the netlink backend refreshes every namespace's
	// statistics), and each group waits e.settle, so small groups make a
	// pass over many namespaces slow (groups of 8: 17 s to ready at 1,000
	// namespaces); a namespace whose table changes during its group's
	// dumps is dumped again, so groups must stay small enough to give
	// busy namespaces a fair window.
	var before tracer.Counters
	for first := true; len(queue) > 0 && ctx.Err() == nil; first = false {
		if !first && !until.IsZero() && time.Now().After(until) {
			left = len(queue)
			break
		}
		chunk := queue[:min(dumpGroup, len(queue))]
		queue = queue[len(chunk):]
		if before == nil {
			c, err := e.tr.Counters()
			if err != nil {
				for _, t := range chunk {
					report(t.ns, fmt.Errorf("netns %d: reading counters: %w", t.ns.Inode, err))
				}
				continue
			}
			before = c
		}
		var res []tryResult
		before, res = e.baselineGroup(ctx, chunk, before)
		for i, r := range res {
			if r.retry {
				chunk[i].tries++
				queue = append(queue, chunk[i])
				continue
			}
			report(chunk[i].ns, r.err)
		}
	}
	// The namespaces are placed again with the entries the dumps found,
	// from the counters read after the last group.
	if before != nil {
		e.mu.Lock()
		e.place(groupCounters(before), false)
		e.mu.Unlock()
	}
	return n, len(errs), left, errors.Join(errs...)
}

// baselineGroup dumps namespaces in parallel and makes each dump the
// namespace's baseline, together with a snapshot of the counters that
// matches it: for each namespace, before (read before the dumps) and the
// counters read after them (e.settle later where the tracer counts events
// in user space, a little behind the kernel: netlink) must agree on its
// created and destroyed entries, or it is dumped again, up to
// maxDumpTries. The last try is used anyway, with the snapshot read before
// the dump where the counters are kernel maps updated as entries change
// and the one read after it otherwise (both as before this check). A
// partial dump (entries that could not be decoded) is used, and reported.
// It returns the counters read after the dumps (nil if that failed), and
// a result per namespace.
func (e *Exporter) baselineGroup(ctx context.Context, tries []dumpTry, before tracer.Counters) (tracer.Counters, []tryResult) {
	res := make([]tryResult, len(tries))
	fail := func(err error) (tracer.Counters, []tryResult) {
		for i, t := range tries {
			res[i] = tryResult{err: fmt.Errorf("netns %d: %w", t.ns.Inode, err)}
		}
		return nil, res
	}
	sums := make([]*dumpSummary, len(tries))
	var g errgroup.Group
	g.SetLimit(dumpParallel)
	for i, t := range tries {
		g.Go(func() error {
			sums[i], res[i].err = e.dumpOne(t.ns)
			return nil // per namespace, in res
		})
	}
	_ = g.Wait()
	if e.settle > 0 {
		select {
		case <-time.After(e.settle):
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
	after, err := e.tr.Counters()
	if err != nil {
		return fail(fmt.Errorf("reading counters: %w", err))
	}
	was, now := groupCounters(before), groupCounters(after)
	at := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, t := range tries {
		st := e.ns[t.ns.Inode]
		if sums[i] == nil || st == nil {
			continue // failed, or expired meanwhile
		}
		if !sameEntries(was[t.ns.Inode], now[t.ns.Inode]) && t.tries+1 < maxDumpTries {
			res[i] = tryResult{retry: true}
			continue
		}
		// A dump that raced is used, as the best there is, and done again
		// in a later pass: a namespace that just appeared gets its entries
		// in a burst.
		if sameEntries(was[t.ns.Inode], now[t.ns.Inode]) {
			st.racy = 0
		} else {
			st.racy++
			e.log.Debug("table changed during every dump; using the last and dumping again later",
				zap.Uint32("netns", t.ns.Inode), zap.Int("dumps", t.tries+1), zap.Int("passes", st.racy))
		}
		snap := was[t.ns.Inode]
		if e.settle > 0 {
			snap = now[t.ns.Inode]
		}
		sum := sums[i]
		rec := &reconInfo{at: at, tcpStates: sum.tcpStates, assured: sum.assured, unreplied: sum.unreplied}
		if st.base != nil {
			delta := int64(sum.total) - sumEntries(st.base.entries(snap))
			rec.corrections = st.rec.corrections + uint64(abs(delta))
			rec.lastCorrection = delta
		}
		st.base, st.rebase = newBaseline(sum.byKey, snap), st.racy > 0 && st.racy <= maxRacyPasses
		st.skips = 0
		st.rec = rec
		if st.dumpedKeys == nil {
			st.dumpedKeys = map[famProto]bool{}
		}
		for k := range sum.byKey {
			st.dumpedKeys[k] = true
		}
	}
	return after, res
}

// changed returns the namespaces of check whose kernel entry count is not
// the entries of their last dump (or cannot be read), reading
// dumpParallel at a time, and counts a skip for the others, which it
// takes out of the pass.
func (e *Exporter) changed(check []tracer.Namespace) []tracer.Namespace {
	same := make([]bool, len(check))
	var wg sync.WaitGroup
	sem := make(chan struct{}, dumpParallel)
	for i, ns := range check {
		var (
			want     uint64
			dumpedAt time.Time
		)
		e.mu.Lock()
		st := e.ns[ns.Inode]
		if st != nil && st.base != nil {
			want = st.base.total()
		}
		if st != nil && st.rec != nil {
			dumpedAt = st.rec.at
		}
		e.mu.Unlock()
		if st == nil || st.base == nil {
			continue // expired meanwhile: dumped, and found gone
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if checkPath(ns) != nil {
				return
			}
			// A count read in the background
			// (tracer.Options.KernelStatsInterval) before the dump
			// proves nothing about the table since.
			ks, err := e.readStats(ns)
			same[i] = err == nil && ks.Entries == want && (ks.ReadAt.IsZero() || !ks.ReadAt.Before(dumpedAt))
		})
	}
	wg.Wait()
	var out []tracer.Namespace
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, ns := range check {
		if !same[i] {
			out = append(out, ns)
			continue
		}
		if st := e.ns[ns.Inode]; st != nil {
			st.skips++
			st.dumping = false
		}
	}
	return out
}

// sameEntries reports whether two counter snapshots of a namespace count
// the same entries created and destroyed. Both only grow, so equal sums
// mean that no entry came or went between them.
func sameEntries(a, b *nsCounters) bool {
	var ca, da, cb, db uint64
	if a != nil {
		for _, v := range a.byKey {
			ca, da = ca+v.Created, da+v.Destroyed
		}
	}
	if b != nil {
		for _, v := range b.byKey {
			cb, db = cb+v.Created, db+v.Destroyed
		}
	}
	return ca == cb && da == db
}

// rebasePending reports whether a listed namespace waits for another dump.
func (e *Exporter) rebasePending() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	for _, st := range e.ns {
		if st.listed && st.rebase && !st.pathGone() {
			return true
		}
	}
	return false
}

// markGone records that ns.Path no longer opens ns: no dumps through it.
func (e *Exporter) markGone(ns tracer.Namespace) {
	e.mu.Lock()
	if st := e.ns[ns.Inode]; st != nil {
		st.gonePath = ns.Path
	}
	e.mu.Unlock()
}

func (e *Exporter) clearDumping(inode uint32) {
	e.mu.Lock()
	if st := e.ns[inode]; st != nil {
		st.dumping = false
	}
	e.mu.Unlock()
}

// dumpOne dumps the table of ns. A partial dump comes with its error.
func (e *Exporter) dumpOne(ns tracer.Namespace) (*dumpSummary, error) {
	if err := checkPath(ns); err != nil {
		if err := goneOr(ns, err); errors.Is(err, errGone) {
			return nil, err
		}
		return nil, fmt.Errorf("netns %d: %w", ns.Inode, err)
	}
	sum := newDumpSummary()
	err := e.dump(ns, sum.add)
	if err := goneOr(ns, err); errors.Is(err, errGone) {
		return nil, err
	}
	if err != nil {
		err = fmt.Errorf("netns %d (%s): dumping table: %w", ns.Inode, ns.Path, err)
		if skipped := (*tracer.SkippedError)(nil); !errors.As(err, &skipped) {
			return nil, err
		}
	}
	return sum, err
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
