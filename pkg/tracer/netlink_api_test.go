package tracer

import (
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ctagent/ctagent/internal/labnet"
)

// TestNetlinkForget: after Forget, a namespace's counters are gone and the
// others' are untouched.
func TestNetlinkForget(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	a, b := labnet.New(t), labnet.New(t)
	list := []Namespace{{Inode: a.Inode, Path: a.Path}, {Inode: b.Inode, Path: b.Path}}
	tr, err := Open(t.Context(), Options{Backend: BackendNetlink, Logger: zaptest.NewLogger(t),
		Namespaces: func() ([]Namespace, error) { return list, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, n := range []*labnet.NS{a, b} {
		if err := n.CTInsert(labnet.InsertArgs("udp", netip.MustParseAddrPort("192.0.2.1:1000"), netip.MustParseAddrPort("192.0.2.2:53"))...); err != nil {
			t.Fatal(err)
		}
	}
	created := func(ns uint32) uint64 {
		c, err := tr.Counters()
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for k, v := range c {
			if k.NetNS == ns {
				n += v.Created
			}
		}
		return n
	}
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
	tr, err := Open(t.Context(), Options{Backend: BackendNetlink, Logger: zaptest.NewLogger(t),
		Namespaces: func() ([]Namespace, error) { return []Namespace{labNamespace(n)}, nil }})
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

// TestKernelStatsReaderWraps: a CPU counter that wraps at 2^32 keeps the
// total going up; a CPU seen for the first time adds its whole value.
func TestKernelStatsReaderWraps(t *testing.T) {
	r := NewKernelStatsReader()
	got := r.accumulate(7, []cpuStats{{CPU: 0, Found: 1<<32 - 10}, {CPU: 1, Found: 5}})
	if got[0] != 1<<32-5 {
		t.Fatalf("first read: found %d, want %d", got[0], uint64(1<<32-5))
	}
	got = r.accumulate(7, []cpuStats{{CPU: 0, Found: 20}, {CPU: 1, Found: 6}, {CPU: 2, InsertFailed: 3}})
	if want := uint64(1<<32 - 5 + 30 + 1); got[0] != want {
		t.Errorf("after a wrap: found %d, want %d", got[0], want)
	}
	if got[3] != 3 {
		t.Errorf("new CPU: insert_failed %d, want 3", got[3])
	}
	r.Forget(7)
	if got = r.accumulate(7, []cpuStats{{CPU: 0, Found: 2}}); got[0] != 2 {
		t.Errorf("after Forget: found %d, want 2", got[0])
	}
}

// TestKernelStatsReaderMatchesKernel: on a real namespace the reader gives
// the same numbers as a plain read.
func TestKernelStatsReaderMatchesKernel(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	n := labnet.New(t)
	n.EnableConntrack()
	n.SendRawTCP(netip.MustParseAddrPort("127.0.0.1:1000"), netip.MustParseAddrPort("127.0.0.1:2000"), 0x01) // a lone FIN: invalid
	r := NewKernelStatsReader()
	for range 2 {
		got, err := r.Read(labNamespace(n))
		if err != nil {
			t.Fatal(err)
		}
		want, err := ReadKernelStats(labNamespace(n))
		if err != nil {
			t.Fatal(err)
		}
		if got != want || got.Invalid == 0 {
			t.Errorf("reader %+v, plain read %+v (want equal, with the invalid FIN counted)", got, want)
		}
	}
}

// TestNetlinkWatch: Watch starts counting a namespace that no list named
// yet, at once and only once; a rescan whose list was taken before Watch
// leaves that listener alone, and one whose list omits the namespace
// afterwards closes it; after Close, Watch starts nothing.
func TestNetlinkWatch(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	a, b := labnet.New(t), labnet.New(t)
	before := openFDs(t)
	var tr Tracer
	// During a rescan, the list is taken and then Watch(b) runs: the
	// listener starts after the list that does not name b.
	watchDuringList := false
	tr, err := Open(t.Context(), Options{Backend: BackendNetlink, Logger: zaptest.NewLogger(t), RescanInterval: time.Hour,
		Namespaces: func() ([]Namespace, error) {
			if watchDuringList {
				if err := tr.(Watcher).Watch(labNamespace(b)); err != nil {
					t.Errorf("Watch during the rescan's list: %v", err)
				}
			}
			return []Namespace{labNamespace(a)}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	nt := tr.(*netlinkTracer)
	listening := func(n *labnet.NS) bool {
		nt.mu.Lock()
		defer nt.mu.Unlock()
		return nt.listeners[n.Inode] != nil
	}
	created := func(ns uint32) uint64 {
		c, err := tr.Counters()
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for k, v := range c {
			if k.NetNS == ns {
				n += v.Created
			}
		}
		return n
	}
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
		if err := tr.(Watcher).Watch(labNamespace(b)); err != nil {
			t.Fatalf("Watch: %v", err)
		}
	}
	insert(1000)
	if !labnet.WaitFor(10*time.Second, func() bool { return created(b.Inode) == 1 }) {
		t.Fatalf("created in the watched namespace: %d, want 1", created(b.Inode))
	}

	// b's listener predates this rescan's list, which omits b: closed.
	nt.rescan()
	if listening(b) {
		t.Fatal("a rescan whose list omits the namespace kept its listener")
	}
	// Started while the rescan took its list: kept, and counting.
	watchDuringList = true
	nt.rescan()
	watchDuringList = false
	if !listening(b) {
		t.Fatal("the rescan closed a listener started after its list was taken")
	}
	insert(1001)
	if !labnet.WaitFor(10*time.Second, func() bool { return created(b.Inode) == 2 }) {
		t.Fatalf("created in the watched namespace: %d, want 2", created(b.Inode))
	}

	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.(Watcher).Watch(labNamespace(b)); err == nil {
		t.Error("Watch after Close: no error")
	}
	checkNoFDLeak(t, before)
}
