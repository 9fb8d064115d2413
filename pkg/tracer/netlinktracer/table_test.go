package netlinktracer

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
	"github.com/ctagent/ctagent/pkg/tracer"
	"github.com/ctagent/ctagent/pkg/tracer/ctnetlink"
)

// TestNetlinkTableOverListener checks that the backend's table dumps and
// kernel statistics of a namespace it listens in go over the listener's
// request socket, and agree with a fresh socket's: they work with a path
// that no longer opens anything (a fresh socket could not be opened), and
// a namespace it does not listen in is read through its path as before.
func TestNetlinkTableOverListener(t *testing.T) {
	labnet.Require(t, "ip", "conntrack")
	watched, other := labnet.New(t), labnet.New(t)
	for i, n := range []*labnet.NS{watched, watched, watched, other} {
		src := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(5000+i))
		if err := n.CTInsert(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("192.0.2.2:53"))...); err != nil {
			t.Fatal(err)
		}
	}
	tr, err := tracer.Open(context.Background(), tracer.Options{
		Backend:    tracer.BackendNetlink,
		Logger:     zaptest.NewLogger(t),
		Namespaces: func() ([]tracer.Namespace, error) { return []tracer.Namespace{tracertest.Namespace(watched)}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })

	fresh, err := ctnetlink.ReadKernelStats(tracertest.Namespace(watched))
	if err != nil {
		t.Fatal(err)
	}
	gone := tracer.Namespace{Inode: watched.Inode, Path: "/nonexistent/ns/net"}
	count := func(ns tracer.Namespace) (int, error) {
		n := 0
		err := tr.DumpTable(ns, func(tracer.Entry) { n++ })
		return n, err
	}
	if n, err := count(gone); err != nil || n != 3 {
		t.Errorf("dump over the listener: %d entries, %v; want 3", n, err)
	}
	// As a scrape reads them: Counters first (the per-CPU read that
	// KernelStats uses again), then KernelStats; and once on its own.
	for _, withCounters := range []bool{true, false} {
		if withCounters {
			if _, err := tr.Counters(); err != nil {
				t.Fatal(err)
			}
		}
		ks, err := tr.KernelStats(gone)
		if err != nil {
			t.Fatalf("statistics over the listener: %v", err)
		}
		if ks.Entries != 3 || ks.MaxEntries != fresh.MaxEntries || ks.Insert < fresh.Insert {
			t.Errorf("statistics over the listener (after Counters: %v): %+v; a fresh socket's: %+v", withCounters, ks, fresh)
		}
	}

	if n, err := count(tracertest.Namespace(other)); err != nil || n != 1 {
		t.Errorf("dump of a namespace without a listener: %d entries, %v; want 1", n, err)
	}
	ks, err := tr.KernelStats(tracertest.Namespace(other))
	if err != nil || ks.Entries != 1 {
		t.Errorf("statistics of a namespace without a listener: %+v, %v", ks, err)
	}
	if _, err := tr.KernelStats(tracer.Namespace{Inode: other.Inode, Path: "/nonexistent/ns/net"}); err == nil {
		t.Errorf("netns %d has no listener, and its path opens nothing: no error", other.Inode)
	}
}

// TestNetlinkKernelStatsInBackground: with Options.KernelStatsInterval,
// KernelStats answers from the background reads over the listener's socket:
// a namespace's statistics are there as soon as its listener runs, and
// entries inserted later show in a later read, with a later ReadAt.
func TestNetlinkKernelStatsInBackground(t *testing.T) {
	labnet.Require(t, "ip", "conntrack")
	n := labnet.New(t)
	insert := func(port uint16) {
		t.Helper()
		src := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port)
		if err := n.CTInsert(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("192.0.2.2:53"))...); err != nil {
			t.Fatal(err)
		}
	}
	insert(5000)
	tr, err := tracer.Open(context.Background(), tracer.Options{
		Backend:             tracer.BackendNetlink,
		Logger:              zaptest.NewLogger(t),
		Namespaces:          func() ([]tracer.Namespace, error) { return []tracer.Namespace{tracertest.Namespace(n)}, nil },
		KernelStatsInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	// Through a path that opens nothing: only the listener can answer.
	gone := tracer.Namespace{Inode: n.Inode, Path: "/nonexistent/ns/net"}
	first, err := tr.KernelStats(gone)
	if err != nil || first.Entries != 1 || first.ReadAt.IsZero() {
		t.Fatalf("statistics read at the listener's start: %+v, %v; want 1 entry and a read time", first, err)
	}
	insert(5001)
	insert(5002)
	var last tracer.KernelStats
	if !labnet.WaitFor(10*time.Second, func() bool {
		last, err = tr.KernelStats(gone)
		return err == nil && last.Entries == 3
	}) {
		t.Fatalf("statistics never showed the 3 entries: %+v, %v", last, err)
	}
	if !last.ReadAt.After(first.ReadAt) || last.Insert < first.Insert+2 {
		t.Errorf("later read %+v, first %+v: want a later read time and 2 more inserts", last, first)
	}
	fresh, err := ctnetlink.ReadKernelStats(tracertest.Namespace(n))
	if err != nil {
		t.Fatal(err)
	}
	if last.MaxEntries != fresh.MaxEntries || last.Insert != fresh.Insert {
		t.Errorf("background read %+v, a fresh socket's %+v", last, fresh)
	}
}
