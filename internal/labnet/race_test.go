package labnet

import (
	"testing"
)

// TestUDPClash: two threads sending on one connected UDP socket at once
// make the kernel count insert clashes (clash_resolve or insert_failed),
// and every iteration leaves exactly one entry, the winner's.
func TestUDPClash(t *testing.T) {
	Require(t, "ip", "nft", "conntrack")
	n := New(t)
	n.EnableConntrack()
	const iterations = 2000
	r := n.UDPClash(iterations)
	resolved, hasResolve := r.Delta("clash_resolve")
	failed, _ := r.Delta("insert_failed")
	t.Logf("%d iterations: clashes %d (clash_resolve %d, reported: %v; insert_failed %d), refused sends %d, entries %d",
		r.Iterations, r.Clashes(), resolved, hasResolve, failed, r.Refused, r.Entries)
	if r.Clashes() == 0 {
		t.Errorf("no clash in %d iterations: clash_resolve %d, insert_failed %d", iterations, resolved, failed)
	}
	if r.Entries != iterations {
		t.Errorf("%d entries after %d iterations, want one each", r.Entries, iterations)
	}
	if uint64(r.Refused) != failed {
		t.Errorf("%d sends refused with EPERM, but insert_failed counted %d", r.Refused, failed)
	}
}

// TestDeleteRace: a ctnetlink DELETE and a RST sent at once for one entry
// both find it, and so both call nf_ct_delete, in some iterations; every
// iteration is accounted for, and the table ends empty.
func TestDeleteRace(t *testing.T) {
	Require(t, "ip", "nft")
	n := New(t)
	const iterations = 2000
	r := n.DeleteRace(iterations)
	t.Logf("%d iterations: both found the entry in %d (%.1f%%), DELETE first in %d, RST first in %d",
		r.Iterations, r.Both, 100*float64(r.Both)/float64(r.Iterations), r.DeleteFirst, r.RSTFirst)
	if r.Both == 0 {
		t.Errorf("the race never happened in %d iterations", iterations)
	}
	if r.Both+r.DeleteFirst+r.RSTFirst != iterations {
		t.Errorf("%d+%d+%d iterations accounted for, want %d", r.Both, r.DeleteFirst, r.RSTFirst, iterations)
	}
	if r.Entries != 0 {
		t.Errorf("%d entries left, want 0", r.Entries)
	}
}

// TestStaircase: against a path that wins below a threshold delay, the
// staircase settles at the threshold, whether it is 2 µs or 100 µs away.
func TestStaircase(t *testing.T) {
	for _, threshold := range []int64{2_000, -2_000, 100_000} {
		var s staircase
		var sum, n int64
		for i := range 600 {
			if s.next(i) < threshold {
				s.up() // the first path won: delay the second more
			} else {
				s.down()
			}
			if i >= 400 {
				sum += s.center
				n++
			}
		}
		if mean := sum / n; mean < threshold-threshold/8-500 || mean > threshold+threshold/8+500 {
			t.Errorf("threshold %d ns: settled at %d ns", threshold, mean)
		}
	}
}
