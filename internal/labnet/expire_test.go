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

// TestExpireByLookup: a ctnetlink GET of an expired entry frees it. The gc
// worker may free them all first when it runs often (its interval shrinks
// when many entries expire, e.g. with other tests running): then the round
// proves nothing about the lookup, and is tried again, at most 3 times.
func TestExpireByLookup(t *testing.T) {
	Require(t, "ip")
	const entries = 100
	for round := 1; ; round++ {
		r := New(t).ExpireByLookup(entries)
		t.Logf("round %d: %v", round, r)
		if r.ByLookup+r.ByGC != entries || r.Left != 0 {
			t.Fatalf("not every entry freed: %v", r)
		}
		if r.ByLookup > 0 {
			return
		}
		if round == 3 {
			t.Fatalf("no entry freed by a GET in %d rounds: the gc worker freed every one first", round)
		}
	}
}
