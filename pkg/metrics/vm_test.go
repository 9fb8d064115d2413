package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer/ebpftracer"

	"go.uber.org/zap/zaptest"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// TestVMBackendsAgree runs one workload while an eBPF tracer and the netlink
// tracer watch the same namespaces, each behind its own exporter, and checks
// that both exporters report the same per-namespace values and that those
// are the conntrack CLI's. It attaches eBPF programs: kernel matrix only.
//
// The only insert failure it makes is one both backends see, a packet
// dropped at a full table; ctnetlink -EEXIST and -ENOSPC reach the eBPF
// backends only (pkg/tracer's TestVMBackends checks those).
func TestVMBackendsAgree(t *testing.T) {
	labnet.RequireVM(t, "ip", "nft", "conntrack", "ping")
	for _, b := range []tracer.Backend{tracer.BackendFentry, tracer.BackendKprobe} {
		t.Run(string(b), func(t *testing.T) { agreeScenario(t, b) })
	}
}

// agreeMetrics are the per-namespace families both backends can know,
// compared by family and protocol. Insert failures are compared by reason
// only: the netlink backend takes them from the kernel's per-namespace
// statistics, which do not say the family or protocol.
var agreeMetrics = []string{"ctagent_conntrack_entries", "ctagent_conntrack_created_total", "ctagent_conntrack_destroyed_total"}

// exported is one exporter under test.
type exported struct {
	name string
	tr   tracer.Tracer
	url  string
}

func agreeScenario(t *testing.T, backend tracer.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// a is the client of b (DNAT) and c; c also gets ctnetlink inserts and
	// deletes; d is filled up to a small table limit.
	a, b, c, d := labnet.New(t), labnet.New(t), labnet.New(t), labnet.New(t)
	labs := []*labnet.NS{a, b, c, d}
	ab, ac := labnet.Connect(t, a, b), labnet.Connect(t, a, c)
	for _, n := range labs {
		n.EnableConntrack()
		// Nothing expires during the test: every entry is seen by the
		// conntrack -L listings the ground truth is made of.
		for _, s := range []string{"udp_timeout", "udp_timeout_stream", "icmp_timeout", "icmpv6_timeout", "tcp_timeout_time_wait", "tcp_timeout_close"} {
			n.Sysctl("net.netfilter.nf_conntrack_"+s, "600")
		}
	}
	b.AddRedirect("tcp", 80, 8080)
	b.ServeTCP(8080)
	b.ServeUDP(5353)
	c.ServeTCP(9000)

	// a has entries from before the tracers: in both baselines, never
	// destroyed.
	var lines []string
	for i, proto := range []string{"tcp", "udp", "icmp", "icmpv6"} {
		src, dst := netip.AddrPortFrom(ab.A4, uint16(2000+i)), netip.AddrPortFrom(netip.MustParseAddr("198.51.100.9"), 53)
		if proto == "udp" || proto == "icmpv6" {
			src, dst = netip.AddrPortFrom(ab.A6, uint16(2000+i)), netip.AddrPortFrom(netip.MustParseAddr("2001:db8:9::9"), 53)
		}
		lines = append(lines, "-I "+strings.Join(labnet.InsertArgs(proto, src, dst, "-u", "SEEN_REPLY,ASSURED"), " "))
	}
	a.CTLoad(lines)
	truth := newCLITruth(labs)

	src := &labSource{nss: labs}
	ebpf, err := tracer.Open(ctx, tracer.Options{Backend: backend, DisableEvents: true, Namespaces: src.tracerList, Logger: zaptest.NewLogger(t)})
	if err != nil {
		skipWithoutModuleBTF(t, backend, err)
		t.Fatalf("open %s: %v", backend, err)
	}
	t.Cleanup(func() { ebpf.Close() })
	sides := []*exported{{name: string(backend), tr: ebpf}, {name: "netlink", tr: openNetlink(t, ctx, src)}}
	for _, s := range sides {
		e, url := serveExporter(t, Options{
			Tracer:            s.tr,
			Namespaces:        src,
			Labels:            []string{LabelNetnsName},
			ReconcileInterval: -1, // entries from the counters alone
			RescanInterval:    200 * time.Millisecond,
			Logger:            zaptest.NewLogger(t),
		})
		if err := e.Start(ctx); err != nil {
			t.Fatalf("%s exporter: Start: %v", s.name, err)
		}
		wg.Go(func() { e.Run(ctx) })
		s.url = url
	}

	// The workload: TCP v4/v6 (DNAT in b), UDP, ICMP, an open connection
	// and an unreplied datagram.
	clientMix(a, ab, 80, 8080, 5353, 201)
	a.DialTCP(netip.AddrPortFrom(ac.B4, 9000))
	a.DialTCP(netip.AddrPortFrom(ac.B6, 9000))
	a.UDPSend(netip.AddrPortFrom(ac.B4, 9999))
	a.Ping(ac.B6, 203)

	// ctnetlink: four inserts in c, two of them deleted.
	inserts := [][]string{
		labnet.InsertArgs("tcp", netip.MustParseAddrPort("192.0.2.10:1001"), netip.MustParseAddrPort("192.0.2.20:22")),
		labnet.InsertArgs("udp", netip.MustParseAddrPort("[2001:db8::10]:1002"), netip.MustParseAddrPort("[2001:db8::20]:53")),
		labnet.InsertArgs("icmp", netip.MustParseAddrPort("192.0.2.10:77"), netip.MustParseAddrPort("192.0.2.20:0")),
		labnet.InsertArgs("icmpv6", netip.MustParseAddrPort("[2001:db8::10]:78"), netip.MustParseAddrPort("[2001:db8::20]:0")),
	}
	for _, args := range inserts {
		if err := c.CTInsert(args...); err != nil {
			t.Fatal(err)
		}
	}
	truth.snapshot(c)
	for _, args := range [][]string{inserts[0], inserts[2]} {
		if err := c.CTDelete(args[:6]...); err != nil {
			t.Fatal(err)
		}
	}

	// A flush: every entry of b goes.
	truth.snapshot(b)
	b.CTFlush()

	// A full table: d holds as many ASSURED entries (which early drop does
	// not evict) as the global limit allows, and one packet is dropped:
	// table_full for both backends, kernel stat drop.
	const limit = 8
	for i := range limit {
		src := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(1000+i))
		if err := d.CTInsert(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("198.51.100.2:53"), "-u", "ASSURED")...); err != nil {
			t.Fatal(err)
		}
	}
	restore := labnet.SetConntrackMax(t, limit)
	_, _ = d.Exec("ping", "-c", "1", "-W", "1", "127.0.0.1") // dropped: no room for its entry
	restore()

	// Both exporters against each other and against the CLI.
	var last [2]map[string]map[string]float64
	eventually(t, 30*time.Second, "both backends agree with conntrack", func() error {
		for i, s := range sides {
			last[i] = scrapeHTTP(t, s.url)
		}
		var errs []error
		for _, n := range labs {
			truth.snapshot(n)
			want := map[string]map[string]float64{
				"ctagent_conntrack_entries":         truth.entries(n),
				"ctagent_conntrack_created_total":   truth.created(n),
				"ctagent_conntrack_destroyed_total": truth.destroyed(n),
			}
			for _, name := range agreeMetrics {
				e, nl := series(last[0], name, n.Inode), series(last[1], name, n.Inode)
				if !sameMap(e, nl) || !sameMap(e, want[name]) {
					errs = append(errs, fmt.Errorf("netns %s: %s: %s %v, netlink %v, conntrack CLI %v", n.Name, name, sides[0].name, e, nl, want[name]))
				}
			}
			stats := n.CTStats()
			wantFailed := nonZero(map[string]float64{
				"table_full":     float64(stats["drop"]),
				"confirm_drop":   float64(stats["insert_failed"]),
				"clash_resolved": float64(stats["clash_resolve"]),
			})
			if e, nl := failedByReason(last[0], n.Inode), failedByReason(last[1], n.Inode); !sameMap(e, nl) || !sameMap(e, wantFailed) {
				errs = append(errs, fmt.Errorf("netns %s: insert failures by reason: %s %v, netlink %v, conntrack -S %v", n.Name, sides[0].name, e, nl, wantFailed))
			}
			kern := series(last[0], "ctagent_conntrack_kernel_entries", n.Inode)[""]
			if kn := series(last[1], "ctagent_conntrack_kernel_entries", n.Inode)[""]; kern != kn || kern != float64(n.CTCount()) {
				errs = append(errs, fmt.Errorf("netns %s: kernel entries: %s %v, netlink %v, conntrack -C %d", n.Name, sides[0].name, kern, kn, n.CTCount()))
			}
			for i, s := range sides {
				if err := checkKernelStats(last[i], n, stats); err != nil {
					errs = append(errs, fmt.Errorf("netns %s: %s: %w", n.Name, s.name, err))
				}
			}
			if e, nl := kernelStatSeries(last[0], n.Inode), kernelStatSeries(last[1], n.Inode); !sameMap(e, nl) {
				errs = append(errs, fmt.Errorf("netns %s: kernel statistics: %s %v, netlink %v", n.Name, sides[0].name, e, nl))
			}
		}
		return errors.Join(errs...)
	})

	// The record: totals over the namespaces, per backend and from the CLI.
	var got [2][4]float64
	var want [4]float64
	var statSeries [2]int
	for _, n := range labs {
		for i := range sides {
			for j, name := range agreeMetrics {
				got[i][j] += sum(series(last[i], name, n.Inode))
			}
			got[i][3] += sum(failedByReason(last[i], n.Inode))
			statSeries[i] += len(kernelStatSeries(last[i], n.Inode))
		}
		want[0] += sum(truth.entries(n))
		want[1] += sum(truth.created(n))
		want[2] += sum(truth.destroyed(n))
		want[3] += float64(n.CTStats()["drop"])
	}
	for i, s := range sides {
		lost, err := s.tr.Lost()
		if err != nil {
			t.Fatal(err)
		}
		for r, x := range lost {
			if x != 0 {
				t.Errorf("%s: lost[%s] = %d", s.name, r, x)
			}
		}
		t.Logf("%s: entries %v, created %v, destroyed %v, insert failures %v, kernel stat series %d", s.name, got[i][0], got[i][1], got[i][2], got[i][3], statSeries[i])
	}
	fmt.Printf("VMTEST-AGREE %s %s vs netlink: %d namespaces, entries %v=%v, created %v=%v, destroyed %v=%v, "+
		"insert failures %v=%v, kernel stat series %d=%d; conntrack CLI: entries %v, created %v, destroyed %v, drop %v\n",
		ebpf.Info().Kernel, backend, len(labs), got[0][0], got[1][0], got[0][1], got[1][1], got[0][2], got[1][2],
		got[0][3], got[1][3], statSeries[0], statSeries[1], want[0], want[1], want[2], want[3])
}

// cliTruth is the ground truth from conntrack -L: every entry a listing of
// a namespace showed. Created after the tracers started: seen, and not
// listed before they started; destroyed: of those, no longer listed.
type cliTruth struct {
	before map[*labnet.NS]map[entryKey]bool
	seen   map[*labnet.NS]map[entryKey]labnet.Record
	live   map[*labnet.NS]map[entryKey]labnet.Record
}

// entryKey identifies an entry across listings.
type entryKey struct {
	id       uint32
	original labnet.Tuple
}

// newCLITruth lists labs as they are before the tracers start.
func newCLITruth(labs []*labnet.NS) *cliTruth {
	tr := &cliTruth{before: map[*labnet.NS]map[entryKey]bool{}, seen: map[*labnet.NS]map[entryKey]labnet.Record{},
		live: map[*labnet.NS]map[entryKey]labnet.Record{}}
	for _, n := range labs {
		tr.before[n] = map[entryKey]bool{}
		for _, r := range n.CTList() {
			tr.before[n][entryKey{r.ID, r.Original}] = true
		}
		tr.seen[n] = map[entryKey]labnet.Record{}
	}
	return tr
}

// snapshot lists n: call it before entries are deleted, and at the end.
func (tr *cliTruth) snapshot(n *labnet.NS) {
	live := map[entryKey]labnet.Record{}
	for _, r := range n.CTList() {
		k := entryKey{r.ID, r.Original}
		live[k] = r
		tr.seen[n][k] = r
	}
	tr.live[n] = live
}

// entries counts n's entries in the last listing by family and protocol.
func (tr *cliTruth) entries(n *labnet.NS) map[string]float64 {
	return countBy(tr.live[n], func(entryKey) bool { return true })
}

// created counts the entries created since the tracers started.
func (tr *cliTruth) created(n *labnet.NS) map[string]float64 {
	return countBy(tr.seen[n], func(k entryKey) bool { return !tr.before[n][k] })
}

// destroyed counts the entries created since the tracers started and gone.
func (tr *cliTruth) destroyed(n *labnet.NS) map[string]float64 {
	return countBy(tr.seen[n], func(k entryKey) bool {
		_, live := tr.live[n][k]
		return !tr.before[n][k] && !live
	})
}

func countBy(recs map[entryKey]labnet.Record, keep func(entryKey) bool) map[string]float64 {
	out := map[string]float64{}
	for k, r := range recs {
		if keep(k) {
			out[recordLabels(r)]++
		}
	}
	return out
}

// failedByReason sums ctagent_conntrack_insert_failed_total of netns inode
// over family and protocol, by reason.
func failedByReason(m map[string]map[string]float64, inode uint32) map[string]float64 {
	out := map[string]float64{}
	for labels, v := range series(m, "ctagent_conntrack_insert_failed_total", inode) {
		for _, kv := range strings.Split(labels, ",") {
			if r, ok := strings.CutPrefix(kv, "reason="); ok {
				out[r] += v
			}
		}
	}
	return out
}

// kernelStatSeries are the ctagent_conntrack_kernel_stat_* values of netns
// inode, by statistic, zeros included.
func kernelStatSeries(m map[string]map[string]float64, inode uint32) map[string]float64 {
	out := map[string]float64{}
	want := fmt.Sprintf("netns=%d", inode)
	for _, ks := range kernelStats {
		for labels, v := range m["ctagent_conntrack_kernel_stat_"+ks.name+"_total"] {
			if slices.Contains(strings.Split(labels, ","), want) {
				out[ks.name] = v
			}
		}
	}
	return out
}

func nonZero(m map[string]float64) map[string]float64 {
	for k, v := range m {
		if v == 0 {
			delete(m, k)
		}
	}
	return m
}

func sum(m map[string]float64) (s float64) {
	for _, v := range m {
		s += v
	}
	return s
}

// TestVMNewNamespaceAtOnce: with an eBPF backend, namespaces made after the
// exporter started have their entries right at the first scrape after the
// entries were made, with the namespace rescan an hour away and no
// reconciliation: the exporter's poll of the in-kernel counters (every
// second; the event stream is off, as in the daemon) finds them, refreshes
// a real resolver and dumps them. No scrape runs before that one; the test waits
// (without scraping) until the exporter has dumped them and no dump is
// pending, then compares one scrape with conntrack -L and -C.
func TestVMNewNamespaceAtOnce(t *testing.T) {
	labnet.RequireVM(t, "ip", "nft", "conntrack")
	for _, b := range []tracer.Backend{tracer.BackendFentry, tracer.BackendKprobe} {
		t.Run(string(b), func(t *testing.T) { newNamespaceScenario(t, b) })
	}
}

func newNamespaceScenario(t *testing.T, backend tracer.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	r := netns.NewResolver(netns.Options{Logger: zaptest.NewLogger(t)})
	if err := r.Refresh(); err != nil {
		t.Logf("resolver: %v", err)
	}
	refreshes := 0
	var rmu sync.Mutex
	src := &countingResolver{Resolver: r, refreshes: func() { rmu.Lock(); refreshes++; rmu.Unlock() }}
	tr, err := tracer.Open(ctx, tracer.Options{Backend: backend, DisableEvents: true, Logger: zaptest.NewLogger(t)})
	if err != nil {
		skipWithoutModuleBTF(t, backend, err)
		t.Fatalf("open %s: %v", backend, err)
	}
	t.Cleanup(func() { tr.Close() })
	e, url := serveExporter(t, Options{Tracer: tr, Namespaces: src, Labels: []string{LabelNetnsName},
		ReconcileInterval: -1, RescanInterval: time.Hour, Logger: zaptest.NewLogger(t)})
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { e.Run(ctx) })

	// A name and nothing else: a burst of 50 ctnetlink inserts, which the
	// first dump races.
	start := time.Now()
	bare := labnet.New(t)
	lines := make([]string, 50)
	for i := range lines {
		lines[i] = fmt.Sprintf("-I -s 192.0.2.1 -d 192.0.2.2 -p tcp --sport %d --dport 443 --state ESTABLISHED -t 600", 10000+i)
	}
	bare.CTLoad(lines)
	// A client and a server with real traffic (TCP, UDP, ICMP, v4 and v6).
	client, server := labnet.New(t), labnet.New(t)
	link := labnet.Connect(t, client, server)
	for _, n := range []*labnet.NS{client, server} {
		n.EnableConntrack()
		// Nothing expires between the scrape and the listings it is
		// compared with.
		for _, s := range []string{"udp_timeout", "udp_timeout_stream", "icmp_timeout", "icmpv6_timeout", "tcp_timeout_time_wait", "tcp_timeout_close"} {
			n.Sysctl("net.netfilter.nf_conntrack_"+s, "600")
		}
	}
	server.ServeTCP(8080)
	server.ServeUDP(5353)
	clientMix(client, link, 8080, 8080, 5353, 401)
	made := time.Since(start)

	labs := []*labnet.NS{bare, client, server}
	eventually(t, 60*time.Second, "the new namespaces dumped, no dump pending", func() error {
		for _, n := range labs {
			if !e.settled(n.Inode) {
				return fmt.Errorf("netns %s (%d) not dumped yet", n.Name, n.Inode)
			}
		}
		return nil
	})
	settled := time.Since(start)

	m := scrapeHTTP(t, url) // the first scrape
	var got, kernel float64
	for _, n := range labs {
		want := truthEntries(n)
		if g := series(m, "ctagent_conntrack_entries", n.Inode); !sameMap(g, want) {
			t.Errorf("netns %s: first scrape: entries %v, conntrack -L %v", n.Name, g, want)
		}
		got += sumSeries(m, "ctagent_conntrack_entries", n.Inode)
		kernel += float64(n.CTCount())
	}
	if got != kernel {
		t.Errorf("first scrape: %v entries in the new namespaces, conntrack -C %v", got, kernel)
	}
	rmu.Lock()
	defer rmu.Unlock()
	fmt.Printf("VMTEST-NEWNS %s %s: %d namespaces made after start in %v, dumped and settled %v after the first; first scrape: entries %v, conntrack -C %v; %d resolver refreshes\n",
		tr.Info().Kernel, backend, len(labs), made.Round(time.Millisecond), settled.Round(time.Millisecond), got, kernel, refreshes)
}

// skipWithoutModuleBTF skips a fentry subtest where the kernel cannot run
// fentry at all, after checking that the tracer said why: nf_conntrack
// without module BTF (Debian 11's 5.10), or no BPF trampolines (arm64
// before 6.4).
func skipWithoutModuleBTF(t *testing.T, backend tracer.Backend, err error) {
	t.Helper()
	if backend != tracer.BackendFentry {
		return
	}
	if _, serr := os.Stat("/sys/kernel/btf/nf_conntrack"); errors.Is(serr, os.ErrNotExist) && errors.Is(err, tracer.ErrNoBTF) {
		t.Skipf("skipped: fentry cannot attach without BTF for the nf_conntrack module (no /sys/kernel/btf/nf_conntrack): %v", err)
	}
	if errors.Is(err, ebpftracer.ErrFentryUnsupported) {
		t.Skipf("skipped: this kernel cannot attach fentry programs: %v", err)
	}
}

// countingResolver is a resolver that reports each Refresh.
type countingResolver struct {
	*netns.Resolver
	refreshes func()
}

func (c *countingResolver) Refresh() error {
	c.refreshes()
	return c.Resolver.Refresh()
}
