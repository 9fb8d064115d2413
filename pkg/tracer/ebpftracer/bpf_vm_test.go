package ebpftracer

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
)

// These tests attach the eBPF programs, so they run only inside the kernel
// matrix (make vmtest sets CTAGENT_VMTEST=1): this host cannot attach.

// vmWait polls cond for up to 20 s; on time-out it fails the test, fatally
// or not.
func vmWait(t *testing.T, what string, cond func() bool, fatal bool) {
	t.Helper()
	if labnet.WaitFor(20*time.Second, cond) {
		return
	}
	if fatal {
		t.Fatalf("timed out waiting for %s", what)
	}
	t.Errorf("timed out waiting for %s", what)
}

// vmFlowString prints a conntrack entry compactly.
func vmFlowString(r labnet.Record) string {
	return fmt.Sprintf("proto %d %s:%d>%s:%d reply %s:%d>%s:%d", r.Protocol, r.Original.Src, r.Original.SrcPort, r.Original.Dst,
		r.Original.DstPort, r.Reply.Src, r.Reply.SrcPort, r.Reply.Dst, r.Reply.DstPort)
}

// vmMatches says whether ev is about the entry r.
func vmMatches(r labnet.Record, ev tracer.Event) bool {
	return ev.Protocol == r.Protocol && ev.Original == tracer.Tuple(r.Original) && ev.Reply == tracer.Tuple(r.Reply)
}

// TestVMBackends runs the scenario with each eBPF backend.
func TestVMBackends(t *testing.T) {
	labnet.RequireVM(t, "ip", "nft", "conntrack", "ping")
	var hooksLine []string
	for _, b := range []tracer.Backend{tracer.BackendFentry, tracer.BackendKprobe} {
		t.Run(string(b), func(t *testing.T) {
			hooksLine = append(hooksLine, string(b)+"=refused")
			hooks := vmScenario(t, b)
			hooksLine = hooksLine[:len(hooksLine)-1]
			hooksLine = append(hooksLine, fmt.Sprintf("%s=%d[%s]", b, len(hooks), strings.Join(hooks, ",")))
		})
	}
	fmt.Printf("VMTEST-HOOKS: %s\n", strings.Join(hooksLine, " "))
}

// vmScenario creates three namespaces plus the root one, runs real traffic
// (TCP v4/v6, UDP, ICMP, DNAT) and ctnetlink inserts/deletes, and checks the
// events and counters against the kernel's own view.
func vmScenario(t *testing.T, b tracer.Backend) []string {
	tr, err := tracer.Open(t.Context(), tracer.Options{Backend: b, Logger: zaptest.NewLogger(t), BPFStats: true})
	if err != nil {
		skipIfNoFentry(t, b, err)
		t.Fatalf("open %s: %v", b, err)
	}
	t.Cleanup(func() { tr.Close() })
	info := tr.Info()
	if info.Backend != b || len(info.Hooks) == 0 {
		t.Fatalf("info = %+v", info)
	}
	t.Logf("%s on %s: hooks %v", b, info.Kernel, info.Hooks)
	col := tracertest.CollectEvents(tr)

	// root <- a, root <- b, b <- c; every link has its own subnets, so the
	// root namespace's entries of an earlier run (TIME_WAIT) never match.
	root, nsA, nsB, nsC := labnet.Root(t), labnet.New(t), labnet.New(t), labnet.New(t)
	for _, n := range []*labnet.NS{root, nsA, nsB, nsC} {
		n.EnableConntrack()
	}
	la, lb, lc := labnet.Connect(t, nsA, root), labnet.Connect(t, nsB, root), labnet.Connect(t, nsC, nsB)
	nsC.MustExec("ip", "route", "add", "default", "via", lc.B4.String())
	root.AddRedirect("tcp", 8081, 8080) // DNAT: reply != original
	root.ServeTCP(8080)
	nsB.ServeUDP(5353)

	for i := 0; i < 3; i++ {
		nsA.TCPRoundTrip(netip.AddrPortFrom(la.B4, 8080))
	}
	nsA.TCPRoundTrip(netip.AddrPortFrom(la.B4, 8081))
	for i := 0; i < 2; i++ {
		nsB.TCPRoundTrip(netip.AddrPortFrom(lb.B6, 8080))
		nsC.UDPRoundTrip(netip.AddrPortFrom(lc.B4, 5353))
	}
	nsA.Ping(la.B4, 7)
	nsB.Ping(lb.B6, 8)

	// ctnetlink: an entry inserted, then one whose reply tuple clashes with
	// it (ctnetlink looks up the original tuple only, so the clash is found
	// by nf_conntrack_hash_check_insert: -EEXIST), then the first deleted.
	first := labnet.InsertArgs("tcp", netip.MustParseAddrPort("192.0.2.1:1000"), netip.MustParseAddrPort("192.0.2.2:2000"),
		"--state", "ESTABLISHED", "-u", "ASSURED")
	if err := nsC.CTInsert(first...); err != nil {
		t.Fatal(err)
	}
	clash := labnet.InsertArgs("tcp", netip.MustParseAddrPort("192.0.2.5:3000"), netip.MustParseAddrPort("192.0.2.6:4000"),
		"--reply-src", "192.0.2.2", "--reply-dst", "192.0.2.1", "--reply-port-src", "2000", "--reply-port-dst", "1000",
		"--state", "ESTABLISHED", "-u", "ASSURED")
	if err := nsC.CTInsert(clash...); err == nil {
		t.Fatal("insert with a clashing reply tuple succeeded")
	}
	if err := nsC.CTDelete("-p", "tcp", "-s", "192.0.2.1", "-d", "192.0.2.2"); err != nil {
		t.Fatal(err)
	}

	// Ground truth: the live entries per namespace (root: ours only).
	truth := map[*labnet.NS][]labnet.Record{nsA: nsA.CTList(), nsB: nsB.CTList(), nsC: nsC.CTList()}
	for _, r := range root.CTList() {
		if r.Original.Src == la.A4 || r.Original.Src == lb.A6 {
			truth[root] = append(truth[root], r)
		}
	}
	// a: 4 tcp + icmp; b: 2 tcp6 + icmpv6 + 2 udp; c: 2 udp; root: a's and b's 8.
	want := map[*labnet.NS]int{nsA: 5, nsB: 5, nsC: 2, root: 8}
	for n, w := range want {
		if got := len(truth[n]); got != w {
			t.Errorf("conntrack -L in %q: %d entries, want %d", n.Name, got, w)
		}
	}

	// Every live entry appears exactly once as created, in its namespace.
	createdFor := func(n *labnet.NS, r labnet.Record) []tracer.Event {
		return col.Matching(n.Inode, func(ev tracer.Event) bool { return ev.Type == tracer.EventCreated && vmMatches(r, ev) })
	}
	vmWait(t, "a created event for every live entry", func() bool {
		for n, recs := range truth {
			for _, r := range recs {
				if len(createdFor(n, r)) == 0 {
					return false
				}
			}
		}
		return true
	}, false)
	for n, recs := range truth {
		for _, r := range recs {
			if got := createdFor(n, r); len(got) != 1 {
				t.Errorf("netns %q: %d created events for %s, want 1", n.Name, len(got), vmFlowString(r))
			}
		}
	}
	// The DNAT flow shows the translation in its reply tuple.
	dnat := col.Matching(root.Inode, func(ev tracer.Event) bool {
		return ev.Type == tracer.EventCreated && ev.Original.Src == la.A4 && ev.Original.DstPort == 8081
	})
	if len(dnat) != 1 || dnat[0].Reply.SrcPort != 8080 {
		t.Errorf("DNAT flow: %+v", dnat)
	}

	// The ctnetlink entries: one created, one -EEXIST, one destroyed.
	ctnl := func(typ tracer.EventType) []tracer.Event {
		return col.Matching(nsC.Inode, func(ev tracer.Event) bool {
			return ev.Type == typ && netip.MustParsePrefix("192.0.2.0/24").Contains(ev.Original.Src)
		})
	}
	vmWait(t, "ctnetlink events", func() bool { return len(ctnl(tracer.EventDestroyed)) >= 1 }, true)
	if c, f, d := ctnl(tracer.EventCreated), ctnl(tracer.EventFailed), ctnl(tracer.EventDestroyed); len(c) != 1 || len(f) != 1 || len(d) != 1 {
		t.Errorf("ctnetlink entries: %d created, %d failed, %d destroyed; want 1 each", len(c), len(f), len(d))
	} else if f[0].Reason != tracer.ReasonExists || f[0].Error != -int32(unix.EEXIST) {
		t.Errorf("ctnetlink failure: reason %s error %d, want exists/-EEXIST", f[0].Reason, f[0].Error)
	}

	// Flush: every entry is destroyed exactly once, with a lifetime.
	destroyedFor := func(n *labnet.NS, r labnet.Record) []tracer.Event {
		return col.Matching(n.Inode, func(ev tracer.Event) bool { return ev.Type == tracer.EventDestroyed && vmMatches(r, ev) })
	}
	for _, n := range []*labnet.NS{nsA, nsB, nsC} {
		n.CTFlush()
	}
	vmWait(t, "a destroyed event for every flushed entry", func() bool {
		for _, n := range []*labnet.NS{nsA, nsB, nsC} {
			for _, r := range truth[n] {
				if len(destroyedFor(n, r)) == 0 {
					return false
				}
			}
		}
		return true
	}, false)
	for _, n := range []*labnet.NS{nsA, nsB, nsC} {
		for _, r := range truth[n] {
			got := destroyedFor(n, r)
			if len(got) != 1 || !got[0].LifetimeKnown || got[0].Lifetime < 0 {
				t.Errorf("netns %q: destroyed events for %s: %+v", n.Name, vmFlowString(r), got)
			}
		}
	}

	// Counters equal the ground truth per namespace.
	perNS := perNamespace(t, tr)
	counters, err := tr.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*labnet.NS{nsA, nsB, nsC} {
		w := uint64(want[n])
		if n == nsC {
			w++ // the ctnetlink entry
		}
		v := perNS[n.Inode]
		if v.Created != w || v.Destroyed != w || v.DestroyedNoStart != 0 {
			t.Errorf("%q counters: created %d destroyed %d no-start %d, want %d/%d/0", n.Name, v.Created, v.Destroyed, v.DestroyedNoStart, w, w)
		}
		var inHist uint64
		for _, c := range v.LifetimeBuckets {
			inHist += c
		}
		if inHist != v.Destroyed {
			t.Errorf("%q: %d lifetimes in the histogram, %d destroyed", n.Name, inHist, v.Destroyed)
		}
		if got, kernel := v.Failed[tracer.ReasonConfirmDrop], n.ProcStats()["insert_failed"]; got != kernel {
			t.Errorf("%q: confirm_drop %d, kernel insert_failed %d", n.Name, got, kernel)
		}
	}
	if v := perNS[nsC.Inode]; v.Failed[tracer.ReasonExists] != 1 {
		t.Errorf("%q: failed[exists] = %d, want 1", nsC.Name, v.Failed[tracer.ReasonExists])
	}
	if v := counters[tracer.Key{NetNS: nsB.Inode, Family: unix.AF_INET6, Protocol: unix.IPPROTO_TCP}]; v.Created != 2 {
		t.Errorf("%q tcp6 created = %d, want 2", nsB.Name, v.Created)
	}

	full, drops := vmTableFull(t, tr)

	// One line per backend for the record: events seen vs ground truth.
	var live, flushed, createdSeen, destroyedSeen int
	for n, recs := range truth {
		for _, r := range recs {
			live++
			createdSeen += min(1, len(createdFor(n, r)))
			if n != root {
				flushed++
				destroyedSeen += min(1, len(destroyedFor(n, r)))
			}
		}
	}
	fmt.Printf("VMTEST-RESULT %s %s: created events for %d/%d live entries (4 namespaces), destroyed events for %d/%d flushed, "+
		"ctnetlink exists failures %d/1, table_full %d = kernel drop %d + 1 ctnetlink\n",
		info.Kernel, b, createdSeen, live, destroyedSeen, flushed, perNS[nsC.Inode].Failed[tracer.ReasonExists], full, drops)

	lost, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	for r, n := range lost {
		if n != 0 {
			t.Errorf("lost[%s] = %d", r, n)
		}
	}
	// Forget drops a namespace's keys from the kernel map, and only its.
	if err := tr.Forget(nsA.Inode); err != nil {
		t.Fatal(err)
	}
	after, err := tr.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for k := range after {
		if k.NetNS == nsA.Inode {
			t.Errorf("counters of forgotten netns %d still there: %+v", nsA.Inode, k)
		}
	}
	if v := after[tracer.Key{NetNS: nsB.Inode, Family: unix.AF_INET6, Protocol: unix.IPPROTO_TCP}]; v.Created != 2 {
		t.Errorf("after Forget of another namespace, %q tcp6 created = %d, want 2", nsB.Name, v.Created)
	}

	// Every attached program ran, and the kernel accounted for it.
	progs, err := tr.Programs()
	if err != nil {
		t.Fatal(err)
	}
	if len(progs) != len(info.Hooks) {
		t.Errorf("%d programs for %d hooks", len(progs), len(info.Hooks))
	}
	for _, p := range progs {
		if p.RunCount == 0 || p.RunTime <= 0 {
			t.Errorf("program %s (%s): run count %d, run time %v", p.Name, p.Hook, p.RunCount, p.RunTime)
		}
	}
	if err := tr.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	<-col.Done
	return info.Hooks
}

// vmTableFull fills a namespace up to a small nf_conntrack_max with ASSURED
// entries (which early drop will not evict), then asks for more: over
// ctnetlink and with a packet. The table-full failures must equal the
// kernel's own drop counter of that namespace (which counts the packet path
// only: nf_conntrack_in counts drop when resolve_normal_ct fails) plus the
// refused ctnetlink insert.
func vmTableFull(t *testing.T, tr tracer.Tracer) (full, drops uint64) {
	n := labnet.New(t)
	n.EnableConntrack()
	const limit = 8
	restore := labnet.SetConntrackMax(t, limit)
	defer restore()
	for i := 0; i < limit; i++ {
		src := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(1000+i))
		if err := n.CTInsert(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("198.51.100.2:53"), "-u", "ASSURED")...); err != nil {
			t.Fatal(err)
		}
	}
	extra := labnet.InsertArgs("udp", netip.MustParseAddrPort("198.51.100.1:999"), netip.MustParseAddrPort("198.51.100.2:53"), "-u", "ASSURED")
	if err := n.CTInsert(extra...); err == nil {
		t.Fatal("insert into a full table succeeded")
	}
	n.Exec("ping", "-c", "1", "-W", "1", "127.0.0.1") // dropped: no room for its entry
	drops = n.ProcStats()["drop"]
	if drops < 1 {
		t.Fatalf("kernel drop counter in %q = %d, want >= 1", n.Name, drops)
	}
	want := drops + 1 // the refused ctnetlink insert
	vmWait(t, "table_full counters", func() bool {
		counters, err := tr.Counters()
		if err != nil {
			t.Fatal(err)
		}
		full = 0
		for k, v := range counters {
			if k.NetNS == n.Inode {
				full += v.Failed[tracer.ReasonTableFull]
			}
		}
		return full >= want
	}, false)
	if full != want {
		t.Errorf("table_full failures %d, want kernel drop counter %d + 1 ctnetlink", full, drops)
	}
	return full, drops
}

// TestVMPerfBuffer: with the perf event array instead of the ring buffer,
// entries created and deleted over ctnetlink arrive as events.
func TestVMPerfBuffer(t *testing.T) {
	labnet.RequireVM(t, "ip", "nft", "conntrack")
	tr, err := tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendAuto, ForcePerfBuffer: true, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if info := tr.Info(); info.RingBuffer || info.Backend == tracer.BackendNetlink {
		t.Fatalf("info = %+v, want an eBPF backend on the perf buffer", info)
	}
	log := tracertest.CollectEvents(tr)
	n := labnet.New(t)
	const entries = 20
	for i := range entries {
		src := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(2000+i))
		if err := n.CTInsert(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("192.0.2.2:53"))...); err != nil {
			t.Fatal(err)
		}
	}
	n.CTFlush()
	count := func(typ tracer.EventType) int {
		return len(log.Matching(n.Inode, func(ev tracer.Event) bool { return ev.Type == typ }))
	}
	log.WaitFor(20*time.Second, func([]tracer.Event) bool { return count(tracer.EventDestroyed) >= entries })
	if c, d := count(tracer.EventCreated), count(tracer.EventDestroyed); c != entries || d != entries {
		t.Errorf("perf buffer: %d created, %d destroyed events; want %d each", c, d, entries)
	}
	lost, _ := tr.Lost()
	if lost[tracer.LostPerfFull] != 0 || lost[tracer.LostPerfSamples] != 0 {
		t.Errorf("lost: %v", lost)
	}
}

// TestVMEventSwitch: opened with DisableEvents (as the daemon runs), the
// programs write no record while the stream is off and count every entry;
// SetEvents turns the records on and off at run time (the events_off
// variable), on the ring buffer and on the perf buffer.
func TestVMEventSwitch(t *testing.T) {
	labnet.RequireVM(t, "ip", "conntrack")
	for _, perf := range []bool{false, true} {
		name := map[bool]string{false: "ringbuf", true: "perf"}[perf]
		t.Run(name, func(t *testing.T) {
			tr, err := tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendAuto, DisableEvents: true, ForcePerfBuffer: perf, Logger: zaptest.NewLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			if info := tr.Info(); info.Backend == tracer.BackendNetlink || info.RingBuffer == perf {
				t.Fatalf("info = %+v, want an eBPF backend on the %s", info, name)
			}
			tracertest.CheckEventSwitch(t, tr, labnet.New(t))
			if lost, _ := tr.Lost(); lost[tracer.LostRingbufFull]+lost[tracer.LostPerfFull]+lost[tracer.LostPerfSamples] != 0 {
				t.Errorf("lost: %v", lost)
			}
		})
	}
}

// TestVMOverloadCounted: a flood that overruns a one-page ring buffer (or
// perf buffer) loses events, every one of them counted by reason, while the
// in-kernel counters stay exact: a flush of 5,000 entries destroys them in
// one tight kernel loop, far faster than user space reads.
func TestVMOverloadCounted(t *testing.T) {
	labnet.RequireVM(t, "ip", "conntrack")
	const entries = 5000
	for _, perf := range []bool{false, true} {
		name := map[bool]string{false: "ringbuf", true: "perf"}[perf]
		t.Run(name, func(t *testing.T) {
			page := os.Getpagesize()
			tr, err := tracer.Open(t.Context(), tracer.Options{Backend: tracer.BackendAuto, ForcePerfBuffer: perf,
				RingBufferSize: page, PerfBufferSize: page, Logger: zaptest.NewLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			if info := tr.Info(); info.Backend == tracer.BackendNetlink || info.RingBuffer == perf {
				t.Fatalf("info = %+v, want an eBPF backend on the %s", info, name)
			}
			log := tracertest.CollectEvents(tr)
			n := labnet.New(t)
			kernelFull := map[bool]tracer.LostReason{false: tracer.LostRingbufFull, true: tracer.LostPerfFull}[perf]
			// Every event lost on the way is counted under one of these.
			lostNow := func() uint64 {
				l, err := tr.Lost()
				if err != nil {
					t.Fatal(err)
				}
				return l[kernelFull] + l[tracer.LostChannelFull] + l[tracer.LostDecodeError]
			}
			received := func(typ tracer.EventType) uint64 {
				return uint64(len(log.Matching(n.Inode, func(ev tracer.Event) bool { return ev.Type == typ })))
			}
			counted := func() (created, destroyed uint64) {
				c, err := tr.Counters()
				if err != nil {
					t.Fatal(err)
				}
				for k, v := range c {
					if k.NetNS == n.Inode {
						created += v.Created
						destroyed += v.Destroyed
					}
				}
				return created, destroyed
			}
			lines := make([]string, entries)
			for i := range lines {
				lines[i] = fmt.Sprintf("-I -s 192.0.2.%d -d 198.51.100.1 -p udp --sport %d --dport 53 -t 600", 1+i/50000, 1000+i%50000)
			}
			lost0 := lostNow()
			n.CTLoad(lines)
			// The inserts: every created event is received or counted lost.
			if !labnet.WaitFor(60*time.Second, func() bool {
				c, _ := counted()
				return c == entries && received(tracer.EventCreated)+lostNow()-lost0 == entries
			}) {
				c, _ := counted()
				t.Fatalf("inserts: counted %d created, want %d; received %d + lost %d", c, entries, received(tracer.EventCreated), lostNow()-lost0)
			}
			lost1 := lostNow()
			n.CTFlush()
			var got, lost uint64
			if !labnet.WaitFor(60*time.Second, func() bool {
				_, d := counted()
				got, lost = received(tracer.EventDestroyed), lostNow()-lost1
				return d == entries && got+lost == entries
			}) {
				_, d := counted()
				t.Fatalf("flush: counted %d destroyed, want %d; received %d + lost %d != %d", d, entries, got, lost, entries)
			}
			l, _ := tr.Lost()
			fmt.Printf("VMTEST-OVERLOAD %s %s: flush of %d entries: counters exact (%d destroyed); events received %d, lost %d (%s %d, channel_full %d, perf_lost %d)\n",
				tr.Info().Kernel, name, entries, entries, got, lost, kernelFull, l[kernelFull], l[tracer.LostChannelFull], l[tracer.LostPerfSamples])
			if lost == 0 {
				t.Errorf("a flush of %d entries into a %d-byte buffer lost nothing: the test did not overload it", entries, page)
			}
		})
	}
}
