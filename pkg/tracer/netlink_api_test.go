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
