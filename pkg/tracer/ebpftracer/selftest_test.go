package ebpftracer

import (
	"fmt"
	"os"
	"testing"

	"github.com/ctagent/ctagent/pkg/tracer"

	"go.uber.org/zap/zaptest"

	"github.com/ctagent/ctagent/internal/labnet"
)

// TestSelfTestWorkload runs the start-up self-test's workload on this host,
// with the netlink backend listening in its namespace as an independent
// observer: every step makes exactly the entries and removals it claims,
// so a hook that misses some of them in the VM matrix is the hook's fault.
// ctnetlink reports no -EEXIST failure, so that step must show 0 here.
func TestSelfTestWorkload(t *testing.T) {
	labnet.Require(t)
	ns, err := newThrowawayNetns(selfTestUDPFlows)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	path := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns.handle))
	tr, err := tracer.Open(t.Context(), tracer.Options{
		Backend: tracer.BackendNetlink, Logger: zaptest.NewLogger(t),
		Namespaces: func() ([]tracer.Namespace, error) { return []tracer.Namespace{{Inode: ns.inode, Path: path}}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	res, err := runSelfTest(t.Context(), ns, tr.Counters)
	if err != nil {
		t.Fatal(err)
	}
	steps := map[string]bool{}
	for _, c := range res.checks {
		t.Logf("%s (%s)", c, c.group)
		steps[c.what] = true
		switch {
		case c.what == "ctnetlink -EEXIST":
			if c.want != 1 || c.got != 0 {
				t.Errorf("%s: netlink backend saw %d of %d, want 0 of 1 (it cannot see -EEXIST)", c.what, c.got, c.want)
			}
		case !c.ok():
			t.Errorf("step %s", c)
		}
	}
	for _, want := range []string{"ctnetlink insert", "packet path inserts", "ctnetlink inserts", "ctnetlink -EEXIST", "single delete", "expiry", "flush"} {
		if !steps[want] {
			t.Errorf("step %q did not run", want)
		}
	}
	for _, g := range []string{"confirm", "destroy"} {
		if state, detail := res.verdict(g); state != tracer.HookPassed {
			t.Errorf("group %s: %s (%s)", g, state, detail)
		}
	}
	if state, _ := res.verdict("alloc"); state != tracer.HookNotTested {
		t.Errorf("alloc: %s, want not_tested", state)
	}
}
