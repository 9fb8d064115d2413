package metrics

import (
	"context"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// ctagent_events_total is the sum of the tracer's counters over every
// namespace, and does not step back when the counters of an expired
// namespace are forgotten.
func TestEventsTotalFromCountersSurvivesForget(t *testing.T) {
	f := newFixture(t, Options{StaleAfter: time.Minute})
	f.ns.setList(1, 2)
	f.tables.set(1)
	f.tables.set(2)
	f.tr.counters = tracer.Counters{
		key(1, unix.AF_INET, unix.IPPROTO_TCP):  {Created: 5, Destroyed: 1},
		key(2, unix.AF_INET, unix.IPPROTO_UDP):  {Created: 7, Destroyed: 7},
		key(2, unix.AF_INET6, unix.IPPROTO_UDP): {Failed: [tracer.NumFailReasons]uint64{tracer.ReasonClashResolved: 2, tracer.ReasonExists: 1}},
	}
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := func(what string, created, destroyed, failed float64) {
		t.Helper()
		m := f.scrape(t)
		for typ, v := range map[string]float64{"created": created, "destroyed": destroyed, "failed": failed} {
			if got := m["ctagent_events_total"][canon("type="+typ)]; got != v {
				t.Errorf("%s: ctagent_events_total{type=%q} = %v, want %v", what, typ, got, v)
			}
		}
	}
	want("both namespaces", 12, 8, 3)

	// Namespace 2 leaves the source and expires: the tracer forgets its
	// counters, the total keeps them.
	f.ns.setList(1)
	f.e.refresh()
	f.clock.advance(2 * time.Minute)
	f.e.refresh()
	f.tr.mu.Lock()
	left, unwatched := len(f.tr.counters), slices.Clone(f.tr.unwatched)
	f.tr.mu.Unlock()
	if !slices.Equal(unwatched, []uint32{2}) {
		t.Errorf("tracer told to unwatch %v, want [2]: the namespace that left the source", unwatched)
	}
	if left != 1 {
		t.Fatalf("%d counter keys after namespace 2 expired, want 1 (namespace 2 forgotten)", left)
	}
	want("namespace 2 forgotten", 12, 8, 3)

	f.tr.set(key(1, unix.AF_INET, unix.IPPROTO_TCP), 6, 2)
	want("namespace 1 moved on", 13, 9, 3)
}

// pendingNS is a namespace source that lists what it found at its last
// Refresh, like a resolver; next is what a refresh finds.
type pendingNS struct {
	*fakeNS
	next      []netns.Namespace
	refreshes int
}

func (p *pendingNS) Refresh() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.list = slices.Clone(p.next)
	p.refreshes++
	return nil
}

// With a tracer that counts every namespace (eBPF), Run's poll of the
// counters finds a namespace the source does not list yet: it refreshes
// the source and dumps the namespace, with the rescan an hour away and no
// event stream. A tracer that counts only what it watches is not polled.
func TestDiscoveryFromCounterPoll(t *testing.T) {
	for _, countsAll := range []bool{true, false} {
		f := newFixture(t, Options{RescanInterval: time.Hour, ReconcileInterval: -1, CounterPoll: 10 * time.Millisecond})
		src := &pendingNS{fakeNS: f.ns}
		f.e.src = src
		f.tr.info.CountsUnwatched = countsAll
		f.ns.setList(1)
		src.next = slices.Clone(f.ns.list)
		f.tables.set(1)
		if err := f.e.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); f.e.Run(ctx) }()

		// Namespace 7 is born: entries in its table and its counters.
		f.tables.set(7, tcpEntry(3, ipsAssured), tcpEntry(3, ipsAssured))
		src.mu.Lock()
		src.next = append(src.next, netns.Namespace{Inode: 7})
		src.mu.Unlock()
		f.tr.set(key(7, unix.AF_INET, unix.IPPROTO_TCP), 2, 0)

		wait := 5 * time.Second
		if !countsAll {
			wait = 300 * time.Millisecond // 30 polls, had there been any
		}
		deadline := time.Now().Add(wait)
		for !f.e.hasBaseline(7) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
		<-done
		switch got := f.e.hasBaseline(7); {
		case countsAll && !got:
			t.Errorf("CountsUnwatched: namespace 7 not dumped within %v of its counters (%d source refreshes)", wait, src.refreshes)
		case !countsAll && got:
			t.Error("a tracer that counts only watched namespaces was polled for new ones")
		}
		if countsAll {
			m := f.scrape(t)
			expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=7,protocol=tcp", 2)
		}
	}
}
