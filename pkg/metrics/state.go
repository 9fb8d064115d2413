package metrics

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

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

// nsState is what the exporter keeps of one namespace.
type nsState struct {
	inode    uint32
	listed   bool      // in the namespace source's last list
	path     string    // from that list
	lastSeen time.Time // last listed, or last counter change
	activity uint64    // nsCounters.activity at the last look
	base     *baseline // nil until the first dump
	rec      *reconInfo
	dumping  bool     // a dump is running
	gonePath string   // a path that no longer opens the namespace: no dumps through it
	folded   bool     // in the overflow series at the last scrape
	id       Identity // last identity the source knew
	// dumpedKeys are the families and protocols dumps ever found: their
	// entry series stay, at 0, when the entries are gone.
	dumpedKeys map[famProto]bool
	// statsBusy is set while a kernel statistics read runs, so a hung read
	// does not pile up goroutines scrape after scrape.
	statsBusy atomic.Bool
}

// pathGone reports whether the namespace's path was found not to open it
// any more.
func (st *nsState) pathGone() bool { return st.gonePath != "" && st.path == st.gonePath }

// observe updates the namespace bookkeeping with a namespace list and, if
// haveCounters, the counters; then drops namespaces that left the source
// and whose counters have not changed for staleAfter. e.mu is held.
func (e *Exporter) observe(now time.Time, list []tracer.Namespace, byNS map[uint32]*nsCounters, haveCounters bool) {
	for _, st := range e.ns {
		st.listed = false
	}
	for _, n := range list {
		st := e.ns[n.Inode]
		if st == nil {
			st = &nsState{inode: n.Inode}
			e.ns[n.Inode] = st
			delete(e.tombs, n.Inode)
			if c := byNS[n.Inode]; c != nil {
				st.activity = c.activity
			}
		}
		st.listed, st.path, st.lastSeen = true, n.Path, now
	}
	if haveCounters {
		for inode, c := range byNS {
			st := e.ns[inode]
			if st == nil {
				if a, ok := e.tombs[inode]; ok && a == c.activity {
					continue // gone, and nothing new happened there
				}
				delete(e.tombs, inode)
				e.ns[inode] = &nsState{inode: inode, lastSeen: now, activity: c.activity}
				continue
			}
			if c.activity != st.activity {
				st.activity, st.lastSeen = c.activity, now
			}
		}
		for inode := range e.tombs {
			if byNS[inode] == nil {
				delete(e.tombs, inode)
			}
		}
	}
	for inode, st := range e.ns {
		if !st.listed && now.Sub(st.lastSeen) > e.staleAfter {
			delete(e.ns, inode)
			e.tombs[inode] = st.activity
			e.forget = append(e.forget, inode)
		}
	}
}

// baselinePass dumps the listed namespaces (only those never dumped if
// onlyNew) and makes each dump the namespace's new baseline. It returns how
// many it tried, how many failed, and their errors.
func (e *Exporter) baselinePass(ctx context.Context, onlyNew bool) (n, failed int, err error) {
	e.passMu.Lock()
	defer e.passMu.Unlock()
	var todo []tracer.Namespace
	e.mu.Lock()
	for _, st := range e.ns {
		if st.listed && !st.dumping && !st.pathGone() && (!onlyNew || st.base == nil) {
			st.dumping = true
			todo = append(todo, tracer.Namespace{Inode: st.inode, Path: st.path})
		}
	}
	e.mu.Unlock()
	if len(todo) == 0 {
		return 0, 0, nil
	}
	// One counter snapshot per group of namespaces dumped in parallel:
	// reading the counters can cost work per namespace (the netlink
	// backend refreshes every namespace's statistics), so one read per dump
	// would make a pass quadratic.
	const group = 8
	var errs []error
	for i := 0; i < len(todo); i += group {
		chunk := todo[i:min(i+group, len(todo))]
		if ctx.Err() != nil {
			for _, ns := range todo[i:] {
				e.clearDumping(ns.Inode)
			}
			break
		}
		n += len(chunk)
		for _, err := range e.baselineGroup(ctx, chunk) {
			switch {
			case errors.Is(err, errGone):
				e.log.Debug("table not dumped", zap.Error(err))
			case err != nil:
				e.reconErrs.Add(1)
				errs = append(errs, err)
			}
		}
	}
	return n, len(errs), errors.Join(errs...)
}

// baselineGroup dumps namespaces in parallel and makes each dump the
// namespace's baseline, together with a snapshot of the counters that
// matches it: read right before the dumps where the counters are kernel
// maps updated as entries change, read e.settle after the dumps where the
// tracer counts events in user space, a little behind the kernel (netlink).
// Entries that change while the dumps run can be counted twice or missed;
// the next dump corrects that. A partial dump (entries that could not be
// decoded) is used, and reported.
func (e *Exporter) baselineGroup(ctx context.Context, nss []tracer.Namespace) []error {
	defer func() {
		for _, ns := range nss {
			e.clearDumping(ns.Inode)
		}
	}()
	errs := make([]error, len(nss))
	fail := func(err error) []error {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = fmt.Errorf("netns %d: %w", nss[i].Inode, err)
			}
		}
		return errs
	}
	var (
		c    tracer.Counters
		cerr error
	)
	if e.settle == 0 {
		if c, cerr = e.tr.Counters(); cerr != nil {
			return fail(fmt.Errorf("reading counters: %w", cerr))
		}
	}
	sums := make([]*dumpSummary, len(nss))
	var wg sync.WaitGroup
	for i, ns := range nss {
		wg.Go(func() {
			sums[i], errs[i] = e.dumpOne(ns)
		})
	}
	wg.Wait()
	if e.settle > 0 {
		select {
		case <-time.After(e.settle):
		case <-ctx.Done():
			return fail(ctx.Err())
		}
		if c, cerr = e.tr.Counters(); cerr != nil {
			return fail(fmt.Errorf("reading counters: %w", cerr))
		}
	}
	byNS := groupCounters(c)
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, ns := range nss {
		st := e.ns[ns.Inode]
		if st != nil && errors.Is(errs[i], errGone) {
			st.gonePath = ns.Path
		}
		if sums[i] == nil || st == nil {
			continue // failed, or expired meanwhile
		}
		sum, snap := sums[i], byNS[ns.Inode]
		rec := &reconInfo{at: now, tcpStates: sum.tcpStates, assured: sum.assured, unreplied: sum.unreplied}
		if st.base != nil {
			delta := int64(sum.total) - sumEntries(st.base.entries(snap))
			rec.corrections = st.rec.corrections + uint64(abs(delta))
			rec.lastCorrection = delta
		}
		st.base = newBaseline(sum.byKey, snap)
		st.rec = rec
		if st.dumpedKeys == nil {
			st.dumpedKeys = map[famProto]bool{}
		}
		for k := range sum.byKey {
			st.dumpedKeys[k] = true
		}
	}
	return errs
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
