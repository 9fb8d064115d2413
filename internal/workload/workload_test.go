package workload

import (
	"testing"

	"github.com/ctagent/ctagent/internal/labnet"
)

func TestPlan(t *testing.T) {
	ns, size := plan(21, 3, 4) // 10 entries: 4, 4, 2
	if len(ns) != 3 || ns[0] != 0 || ns[1] != 1 || ns[2] != 2 {
		t.Fatalf("namespaces %v, want [0 1 2]", ns)
	}
	if size[0] != 4 || size[1] != 4 || size[2] != 2 {
		t.Fatalf("sizes %v, want [4 4 2]", size)
	}
	if ns, _ := plan(1, 2, 4); len(ns) != 0 {
		t.Fatalf("one event: %d batches, want 0 (no whole entry)", len(ns))
	}
}

func TestResultEvents(t *testing.T) {
	r := Result{PerNS: []NSTruth{{Inode: 7, Created: 3, Destroyed: 2}, {Inode: 9, Created: 1, Destroyed: 1}}}
	if got := r.Events(); got != 7 {
		t.Errorf("Events() = %d, want 7", got)
	}
	if tr, ok := r.Truth(9); !ok || tr.Created != 1 {
		t.Errorf("Truth(9) = %+v, %v", tr, ok)
	}
	if _, ok := r.Truth(8); ok {
		t.Error("Truth(8): found a namespace the run did not write into")
	}
}

// TestRunCountsWhatTheKernelMade runs every mode in two namespaces and
// checks the ground truth against the kernel: every entry made is counted
// in its namespace, and none is left.
func TestRunCountsWhatTheKernelMade(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	targets, spaces := LabTargets(t, 2)
	for _, mode := range []Mode{ModeCtnetlink, ModeUDP, ModeTCP} {
		res, err := Run(t.Context(), targets, Spec{Mode: mode, Events: 202, Batch: 20, Rate: 0})
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if got := res.Events(); got != 202 {
			t.Errorf("%s: %d events, want 202", mode, got)
		}
		// 101 entries in batches of 20 taken in turn: 60 and 41.
		for i, want := range []uint64{60, 41} {
			tr := res.PerNS[i]
			if tr.Inode != targets[i].Inode || tr.Created != want || tr.Destroyed != want {
				t.Errorf("%s: netns %d: %+v, want %d created and destroyed", mode, i, tr, want)
			}
			if mode != ModeCtnetlink && tr.Sent != want {
				t.Errorf("%s: netns %d: sent %d, want %d", mode, i, tr.Sent, want)
			}
			if n := spaces[i].CTCount(); n != 0 {
				t.Errorf("%s: netns %d: %d entries left", mode, i, n)
			}
		}
	}
}
