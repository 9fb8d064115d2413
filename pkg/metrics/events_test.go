package metrics

import (
	"context"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
