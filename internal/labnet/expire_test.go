package labnet

import (
	"testing"
	"time"
)

// TestExpireByGC: entries with a 1 s timeout that nothing looks up are
// freed by the kernel's gc worker, within its longest interval.
func TestExpireByGC(t *testing.T) {
	Require(t, "ip")
	n := New(t)
	const entries = 100
	// 120 s: the gc worker's longest interval in the kernel matrix (Linux
	// 5.15 and 5.16, and Debian's 5.10, see ExpireByGC; 60 s since 5.17),
	// and 30 s more for a scan that spans several 10 ms slices on a busy
	// machine or under emulation.
	const within = 150 * time.Second
	took := n.ExpireByGC(entries, within)
	t.Logf("the gc worker freed %d expired entries %s after the last expired", entries, took.Round(10*time.Millisecond))
	if n.ConntrackCount() != 0 {
		t.Errorf("count %d after the gc worker freed every entry", n.ConntrackCount())
	}
}

// TestExpireByLookup: a ctnetlink GET of an expired entry frees it.
func TestExpireByLookup(t *testing.T) {
	Require(t, "ip")
	n := New(t)
	const entries = 100
	r := n.ExpireByLookup(entries)
	t.Log(r)
	if r.ByLookup == 0 {
		t.Errorf("no entry freed by a GET: %v", r)
	}
	if r.ByLookup+r.ByGC != entries || r.Left != 0 {
		t.Errorf("not every entry freed: %v", r)
	}
}
