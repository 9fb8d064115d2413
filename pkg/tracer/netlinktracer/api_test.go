package netlinktracer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer"

	"go.uber.org/zap/zaptest"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
)

// TestNetlinkForget: after Forget, a namespace's counters are gone and the
// others' are untouched.
func TestNetlinkForget(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	a, b := labnet.New(t), labnet.New(t)
	list := []tracer.Namespace{{Inode: a.Inode, Path: a.Path}, {Inode: b.Inode, Path: b.Path}}
	tr, err := tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendNetlink, Logger: zaptest.NewLogger(t),
		Namespaces: func() ([]tracer.Namespace, error) { return list, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, n := range []*labnet.NS{a, b} {
		if err := n.CTInsert(labnet.InsertArgs("udp", netip.MustParseAddrPort("192.0.2.1:1000"), netip.MustParseAddrPort("192.0.2.2:53"))...); err != nil {
			t.Fatal(err)
		}
	}
	created := func(ns uint32) uint64 { return tracertest.CreatedIn(t, tr, ns) }
	if !labnet.WaitFor(10*time.Second, func() bool { return created(a.Inode) == 1 && created(b.Inode) == 1 }) {
		t.Fatalf("created: a %d, b %d; want 1 each", created(a.Inode), created(b.Inode))
	}
	if err := tr.Forget(a.Inode); err != nil {
		t.Fatal(err)
	}
	if got := created(a.Inode); got != 0 {
		t.Errorf("forgotten namespace still counts %d created", got)
	}
	if got := created(b.Inode); got != 1 {
		t.Errorf("other namespace counts %d created, want 1", got)
	}
}

// TestNetlinkCountersDoNotWaitForDumps: a table dump holding a namespace's
// query socket does not hold up Counters (the scrape path).
func TestNetlinkCountersDoNotWaitForDumps(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	n := labnet.New(t)
	tr, err := tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendNetlink, Logger: zaptest.NewLogger(t),
		Namespaces: func() ([]tracer.Namespace, error) { return []tracer.Namespace{tracertest.Namespace(n)}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	nt := tr.(*netlinkTracer)
	nt.mu.Lock()
	l := nt.listeners[n.Inode]
	nt.mu.Unlock()
	if l == nil {
		t.Fatal("no listener for the namespace")
	}
	l.qmu.Lock() // as a long dump would
	done := make(chan error, 1)
	go func() { _, err := tr.Counters(); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(2 * time.Second):
		t.Error("Counters waited for the query socket")
	}
	l.qmu.Unlock()
}

// TestNetlinkWatch: Watch starts counting a namespace that Open did not
// name, at once and only once; Unwatch closes its listener and keeps its
// counters; after Close, Watch starts nothing.
func TestNetlinkWatch(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	a, b := labnet.New(t), labnet.New(t)
	before := openFDs(t)
	tr, err := tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendNetlink, Logger: zaptest.NewLogger(t),
		Namespaces: func() ([]tracer.Namespace, error) { return []tracer.Namespace{tracertest.Namespace(a)}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	nt := tr.(*netlinkTracer)
	listening := func(n *labnet.NS) bool {
		nt.mu.Lock()
		defer nt.mu.Unlock()
		return nt.listeners[n.Inode] != nil
	}
	created := func(ns uint32) uint64 { return tracertest.CreatedIn(t, tr, ns) }
	insert := func(port uint16) {
		t.Helper()
		if err := b.CTInsert(labnet.InsertArgs("udp", netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port), netip.MustParseAddrPort("192.0.2.2:53"))...); err != nil {
			t.Fatal(err)
		}
	}

	if listening(b) {
		t.Fatal("listening in a namespace no list named")
	}
	for range 2 { // the second is a no-op
		if err := tr.Watch(tracertest.Namespace(b)); err != nil {
			t.Fatalf("Watch: %v", err)
		}
	}
	insert(1000)
	if !labnet.WaitFor(10*time.Second, func() bool { return created(b.Inode) == 1 }) {
		t.Fatalf("created in the watched namespace: %d, want 1", created(b.Inode))
	}

	// Unwatched: closed, its counters kept.
	tr.Unwatch(b.Inode)
	if listening(b) {
		t.Fatal("Unwatch kept the listener")
	}
	if got := created(b.Inode); got != 1 {
		t.Fatalf("created after Unwatch: %d, want 1 (kept until Forget)", got)
	}
	// Watched again: counting again.
	if err := tr.Watch(tracertest.Namespace(b)); err != nil {
		t.Fatal(err)
	}
	insert(1001)
	if !labnet.WaitFor(10*time.Second, func() bool { return created(b.Inode) == 2 }) {
		t.Fatalf("created in the watched namespace: %d, want 2", created(b.Inode))
	}

	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Watch(tracertest.Namespace(b)); err == nil {
		t.Error("Watch after Close: no error")
	}
	checkNoFDLeak(t, before)
}

// TestNetlinkSetEvents: SetEvents turns the event channel on and off; the
// listeners count either way.
func TestNetlinkSetEvents(t *testing.T) {
	labnet.Require(t, "ip", "conntrack")
	n := labnet.New(t)
	tr, err := tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendNetlink, DisableEvents: true, Logger: zaptest.NewLogger(t),
		Namespaces: func() ([]tracer.Namespace, error) { return []tracer.Namespace{tracertest.Namespace(n)}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tracertest.CheckEventSwitch(t, tr, n)
}
