package ebpftracer

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer"

	"github.com/ti-mo/conntrack"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
)

// observer is one tracer watching the exactness workload.
type observer struct {
	name   string // e.g. "kprobe chosen" or "fentry destroy=nf_ct_delete"
	chosen bool   // opened as the daemon opens it (self-test on, events on)
	tr     tracer.Tracer
	events *tracertest.EventLog // chosen observers only
}

// TestVMExactness proves, on the running kernel, what the hooks see. For
// each eBPF backend in turn (its own subtest: a kretprobe and an fexit on
// one function at once missed calls on 6.1, which the self-test caught, so
// the backends are not mixed), the tracer the daemon would open (self-test
// on, events on) and one tracer per destroy candidate that attaches here
// (self-test off) watch one workload at the same time. Every removal path
// gets a namespace of its own: single ctnetlink deletes, a flush, expiry
// through a lookup, expiry through the gc worker, early drop, and a
// ctnetlink DELETE racing a TCP RST; a UDP insert clash gets one too.
//
// Per namespace, the kernel's ground truth is that every entry created and
// gone was destroyed exactly once: destroyed = created - nf_conntrack_count,
// with created (exact: confirm and ctnetlink insert hooks, proven by the
// self-test) checked against what the workload made. The chosen tracer
// must meet it everywhere, counters and events; the other candidates are
// reported (one VMTEST-DESTROY line each), which is how the ranking in
// hooks.go is chosen per kernel.
func TestVMExactness(t *testing.T) {
	labnet.RequireVM(t, "ip", "nft", "conntrack")
	for _, b := range []tracer.Backend{tracer.BackendFentry, tracer.BackendKprobe} {
		t.Run(string(b), func(t *testing.T) {
			exactness(t, b)
		})
	}
}

// exactness runs the workload under backend b's observers.
func exactness(t *testing.T, b tracer.Backend) {
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	var obs []*observer
	tr, err := tracer.Open(t.Context(), tracer.Options{Backend: b, Logger: log, RingBufferSize: 16 << 20, EventBuffer: 1 << 18})
	if err != nil {
		skipIfNoFentry(t, b, err)
		t.Fatalf("open %s: %v", b, err)
	}
	t.Cleanup(func() { tr.Close() })
	chosen := &observer{name: string(b) + " chosen", chosen: true, tr: tr, events: tracertest.CollectEvents(tr)}
	for _, h := range tr.Info().HookStatus {
		if h.Active {
			chosen.name += fmt.Sprintf(" %s=%s", h.Group, h.Hook)
			if h.Group != "alloc" && h.State != tracer.HookPassed {
				t.Errorf("%s: hook %s of %s is %s after the self-test: %s", b, h.Hook, h.Group, h.State, h.Detail)
			}
		}
	}
	obs = append(obs, chosen)
	for _, c := range destroyCandidates(b) {
		tr, err := tracer.Open(t.Context(), tracer.Options{
			Backend: b, Logger: log, SkipSelfTest: true, DisableEvents: true,
			OnlyHooks: map[string]string{"destroy": c},
		})
		if err != nil {
			fmt.Printf("VMTEST-DESTROY %s %s %s: not attached: %v\n", tracer.KernelRelease(), b, c, firstLine(err))
			continue
		}
		t.Cleanup(func() { tr.Close() })
		o := &observer{name: fmt.Sprintf("%s destroy=%s", b, c), tr: tr}
		for _, h := range tr.Info().HookStatus {
			if h.Group == "destroy" && h.Active {
				o.name = fmt.Sprintf("%s destroy=%s", b, h.Hook)
			}
		}
		obs = append(obs, o)
	}

	// Start every tracer from zero: nothing but the workload below counts
	// (as the daemon forgets a namespace once it is gone).
	for _, o := range obs {
		c, err := o.tr.Counters()
		if err != nil {
			t.Fatal(err)
		}
		for k := range c {
			if err := o.tr.Forget(k.NetNS); err != nil {
				t.Fatal(err)
			}
		}
	}

	// t.Cleanup runs last in, first out: the namespaces below are deleted
	// before the tracers close. Detaching while the kernel's netns cleanup
	// worker still frees their entries crashed the guest under TCG twice:
	// an int3 oops at nf_ct_destroy+0x5 on 6.12, a call to NULL from
	// nf_ct_iterate_cleanup (calling the hooked nf_ct_destroy) on 6.1. So
	// the tracers close only once the chosen one saw every entry go.
	var nsInodes []uint32
	t.Cleanup(func() { awaitEntriesGone(t, chosen.tr, nsInodes) })

	const k = 20
	type scenario struct {
		name    string
		ns      *labnet.NS
		created uint64 // entries the workload made, per the kernel
		note    string
	}
	var scs []*scenario

	// Single deletes and a flush, over ctnetlink.
	del, flush := labnet.New(t), labnet.New(t)
	for _, n := range []*labnet.NS{del, flush} {
		c, err := n.DialConntrack()
		if err != nil {
			t.Fatal(err)
		}
		for i := range k {
			f := conntrack.NewFlow(unix.IPPROTO_UDP, 0, netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2"), uint16(4000+i), 53, 120, 0)
			if err := c.Create(f); err != nil {
				t.Fatal(err)
			}
			if n == del {
				if err := c.Delete(f); err != nil {
					t.Fatal(err)
				}
			}
		}
		c.Close()
	}
	flush.CTFlush()
	scs = append(scs, &scenario{name: "single delete", ns: del, created: k}, &scenario{name: "flush", ns: flush, created: k})

	// Expiry through a lookup (nf_conntrack_find_get -> nf_ct_gc_expired).
	lookup := labnet.New(t)
	le := lookup.ExpireByLookup(k)
	scs = append(scs, &scenario{name: "expiry by lookup", ns: lookup, created: k, note: le.String()})

	// A ctnetlink DELETE racing a RST: both call nf_ct_delete.
	race := labnet.New(t)
	rr := race.DeleteRace(200)
	if rr.Both == 0 {
		t.Errorf("DeleteRace: the race never happened in %d iterations: %+v", rr.Iterations, rr)
	}
	scs = append(scs, &scenario{name: "delete race", ns: race, note: fmt.Sprintf("both called nf_ct_delete in %d of %d", rr.Both, rr.Iterations)})

	// The UDP insert clash: losers are neither created nor destroyed.
	clash := labnet.New(t)
	clash.EnableConntrack()
	cr := clash.UDPClash(300)
	scs = append(scs, &scenario{name: "udp clash", ns: clash, created: cr.Entries,
		note: fmt.Sprintf("kernel clashes %d (clash_resolve + insert_failed)", cr.Clashes())})

	// Expiry through the gc worker (up to 120 s on 5.10).
	gc := labnet.New(t)
	took := gc.ExpireByGC(k, 150*time.Second)
	scs = append(scs, &scenario{name: "expiry by gc", ns: gc, created: k, note: fmt.Sprintf("gc took %s", took.Round(time.Second))})

	// Early drop at a full table (nf_conntrack_max is global: last).
	early := labnet.New(t)
	early.EnableConntrack()
	er := early.EarlyDrop(int(early.ConntrackBuckets()/2), 50)
	if er.EarlyDropped() == 0 {
		t.Errorf("EarlyDrop: the kernel early-dropped nothing: %+v", er)
	}
	scs = append(scs, &scenario{name: "early drop", ns: early, created: uint64(er.Fill + er.Packets - er.Refused),
		note: fmt.Sprintf("kernel early_drop %d", er.EarlyDropped())})
	for _, sc := range scs {
		nsInodes = append(nsInodes, sc.ns.Inode)
	}

	// Verdicts.
	sums := make([]map[uint32]tracer.Values, len(obs))
	for i, o := range obs {
		sums[i] = perNamespace(t, o.tr)
	}
	for i, o := range obs {
		var parts []string
		exact := true
		for _, sc := range scs {
			v := sums[i][sc.ns.Inode]
			live := sc.ns.ConntrackCount()
			want := v.Created - min(v.Created, live)
			ok := v.Destroyed == want && (sc.created == 0 || v.Created == sc.created)
			if sc.name == "udp clash" {
				got := v.Failed[tracer.ReasonClashResolved] + v.Failed[tracer.ReasonConfirmDrop]
				ok = ok && got == cr.Clashes()
				parts = append(parts, fmt.Sprintf("%s created %d/%d clashes %d/%d", sc.name, v.Created, sc.created, got, cr.Clashes()))
			} else {
				parts = append(parts, fmt.Sprintf("%s %d/%d", sc.name, v.Destroyed, want))
			}
			if !ok {
				exact = false
				if o.chosen {
					t.Errorf("%s, %s (%s): created %d (workload %d), destroyed %d, still live %d: want destroyed = created - live",
						o.name, sc.name, sc.note, v.Created, sc.created, v.Destroyed, live)
				}
			}
			// A candidate may miss paths (it is then not chosen), but none
			// may count one removal twice: without the claims of the
			// nf_ct_delete candidate, the DELETE/RST race made it count
			// 203 and 213 of 201 on 6.1.
			if v.Destroyed > want {
				t.Errorf("%s, %s (%s): %d destroyed counted, only %d entries are gone", o.name, sc.name, sc.note, v.Destroyed, want)
			}
			if o.chosen {
				if n := len(o.events.Matching(sc.ns.Inode, func(ev tracer.Event) bool { return ev.Type == tracer.EventDestroyed })); uint64(n) != v.Destroyed {
					t.Errorf("%s, %s: %d destroyed events, %d counted", o.name, sc.name, n, v.Destroyed)
				}
			}
		}
		verdict := "exact"
		if !exact {
			verdict = "MISSES"
		}
		fmt.Printf("VMTEST-DESTROY %s %s: %s: %s\n", tracer.KernelRelease(), o.name, verdict, strings.Join(parts, ", "))
		// Every entry/return pair was taken: nothing stays in flight once
		// the workload is over (attach order and the LRU keep it so).
		if bt, ok := o.tr.(*bpfTracer); ok {
			var left int
			if !labnet.WaitFor(5*time.Second, func() bool {
				left = 0
				var key uint64
				it := bt.coll.Maps["inflights"].Iterate()
				var st []byte
				for it.Next(&key, &st) {
					left++
				}
				return left == 0
			}) {
				t.Errorf("%s: %d in-flight stacks left after the workload", o.name, left)
			}
		}
		lost, err := o.tr.Lost()
		if err != nil {
			t.Error(err)
		}
		for r, n := range lost {
			if n != 0 && o.chosen {
				t.Errorf("%s: lost[%s] = %d", o.name, r, n)
			}
		}
	}
	for _, sc := range scs {
		t.Logf("%s: %s", sc.name, sc.note)
	}
}

// perNamespace sums a tracer's counters per namespace, waiting until two
// reads a moment apart agree (events of the last step may still be on
// their way through a softirq).
// awaitEntriesGone waits (up to a minute) until tr counted as many entries
// destroyed as created in each of the namespaces inodes, then a moment
// more for the cleanup worker to return from the hooked functions.
func awaitEntriesGone(t *testing.T, tr tracer.Tracer, inodes []uint32) {
	gone := func() bool {
		c, err := tr.Counters()
		if err != nil {
			return false
		}
		live := map[uint32]int64{}
		for k, v := range c {
			live[k.NetNS] += int64(v.Created) - int64(v.Destroyed)
		}
		for _, ino := range inodes {
			if live[ino] > 0 {
				return false
			}
		}
		return true
	}
	if !labnet.WaitFor(time.Minute, gone) {
		t.Logf("the deleted namespaces still had entries after a minute; closing the tracers anyway")
	}
	time.Sleep(2 * time.Second)
}

func perNamespace(t *testing.T, tr tracer.Tracer) map[uint32]tracer.Values {
	t.Helper()
	read := func() map[uint32]tracer.Values {
		c, err := tr.Counters()
		if err != nil {
			t.Fatal(err)
		}
		out := map[uint32]tracer.Values{}
		for k, v := range c {
			x := out[k.NetNS]
			x.Add(v)
			out[k.NetNS] = x
		}
		return out
	}
	prev := read()
	for range 20 {
		time.Sleep(100 * time.Millisecond)
		cur := read()
		if fmt.Sprint(cur) == fmt.Sprint(prev) {
			return cur
		}
		prev = cur
	}
	return prev
}

// destroyCandidates names every destroy candidate of backend b, as
// Options.OnlyHooks takes them (a candidate matches any of its names).
func destroyCandidates(b tracer.Backend) []string {
	var out []string
	for _, g := range hookGroups {
		if g.name != "destroy" {
			continue
		}
		for _, c := range g.candidates {
			if entry, exit := c.programs(b); entry.prog == "" && exit.prog == "" {
				continue
			}
			if c.clone != "" {
				out = append(out, c.clone)
			} else {
				out = append(out, c.symbols[0])
			}
		}
	}
	sort.Strings(out)
	return out
}

// hasModuleBTF says whether nf_conntrack has BTF of its own (or is built
// in), which fentry on its functions needs.
func hasModuleBTF() bool {
	if _, err := os.Stat("/sys/kernel/btf/nf_conntrack"); err == nil {
		return true
	}
	_, err := os.Stat("/sys/module/nf_conntrack/initstate") // only modules have it
	return err != nil
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// skipIfNoFentry skips a fentry subtest where the kernel cannot run fentry
// at all, after checking that it said why: nf_conntrack without module BTF
// (Debian 11's 5.10), or no BPF trampolines (arm64 before 6.4).
func skipIfNoFentry(t *testing.T, b tracer.Backend, err error) {
	t.Helper()
	if b != tracer.BackendFentry {
		return
	}
	switch {
	case !hasModuleBTF() && errors.Is(err, tracer.ErrNoBTF) && refusalReason(err) == "no_btf":
		t.Skipf("skipped: nf_conntrack has no module BTF on this kernel (Debian 11's 5.10), so fentry cannot attach: %v", err)
	case errors.Is(err, ErrFentryUnsupported) && refusalReason(err) == "not_supported":
		t.Skipf("skipped: this kernel cannot attach fentry programs: %v", err)
	}
}
