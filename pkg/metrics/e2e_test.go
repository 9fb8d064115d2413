package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// labSource is the namespace source of the end-to-end tests: the lab's
// namespaces, named after them; Remove takes one out as if it were gone.
type labSource struct {
	mu  sync.Mutex
	nss []*labnet.NS
}

func (s *labSource) Namespaces() []netns.Namespace {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netns.Namespace
	for _, n := range s.nss {
		out = append(out, netns.Namespace{Inode: n.Inode, Path: n.Path})
	}
	return out
}

func (s *labSource) Lookup(inode uint32) (netns.Identity, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.nss {
		if n.Inode == inode {
			return netns.Identity{Name: n.Name}, true
		}
	}
	return netns.Identity{}, false
}

func (s *labSource) tracerList() ([]netns.Namespace, error) { return s.Namespaces(), nil }

func (s *labSource) remove(n *labnet.NS) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.nss {
		if x == n {
			s.nss = append(s.nss[:i], s.nss[i+1:]...)
			return
		}
	}
}

// openNetlink opens the real netlink tracer on src's namespaces.
func openNetlink(t *testing.T, ctx context.Context, src *labSource) tracer.Tracer {
	t.Helper()
	tr, err := tracer.Open(ctx, tracer.Options{
		DisableEvents: true, // as the daemon runs
		Backend:       tracer.BackendNetlink,
		Namespaces:    src.tracerList,
		Logger:        zaptest.NewLogger(t),
	})
	if err != nil {
		if strings.Contains(err.Error(), "not implemented") {
			t.Skipf("skipped: the netlink tracer backend is not there yet: %v", err)
		}
		t.Fatalf("tracer.Open: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// scrapeHTTP gets url and parses the text exposition format.
func scrapeHTTP(t *testing.T, url string) map[string]map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	mfs := make([]*dto.MetricFamily, 0, len(byName))
	for _, mf := range byName {
		mfs = append(mfs, mf)
	}
	return index(mfs)
}

// series returns the series of name whose labels include netns=inode, by
// their other labels except netns_name (e.g. "family=ipv4,protocol=tcp"),
// leaving out zeros.
func series(m map[string]map[string]float64, name string, inode uint32) map[string]float64 {
	out := map[string]float64{}
	want := "netns=" + strconv.FormatUint(uint64(inode), 10)
	for s, v := range m[name] {
		var rest []string
		match := false
		for _, kv := range strings.Split(s, ",") {
			switch {
			case kv == want:
				match = true
			case strings.HasPrefix(kv, "netns_name="):
			default:
				rest = append(rest, kv)
			}
		}
		if match && v != 0 {
			out[strings.Join(rest, ",")] = v
		}
	}
	return out
}

// truthEntries is conntrack -L in n by family and protocol, as the labels
// of ctagent_conntrack_entries.
func truthEntries(n *labnet.NS) map[string]float64 {
	out := map[string]float64{}
	for _, r := range n.CTList() {
		out[recordLabels(r)]++
	}
	return out
}

// recordLabels is the family and protocol labels of r, "family=ipv4,protocol=tcp".
func recordLabels(r labnet.Record) string {
	return "family=" + tracer.FamilyName(r.Family) + ",protocol=" + tracer.ProtocolName(r.Protocol)
}

// clientMix makes traffic from a to the far end of l, which serves TCP and
// UDP echo: 3 TCP connections over IPv4 to port tcp4, 2 over IPv6 to tcp6,
// 2 UDP round trips over IPv4 and 1 over IPv6 to udp, and a ping over each
// with ids id and id+1.
func clientMix(a *labnet.NS, l *labnet.Link, tcp4, tcp6, udp, id uint16) {
	for range 3 {
		a.TCPRoundTrip(netip.AddrPortFrom(l.B4, tcp4))
	}
	for range 2 {
		a.TCPRoundTrip(netip.AddrPortFrom(l.B6, tcp6))
		a.UDPRoundTrip(netip.AddrPortFrom(l.B4, udp))
	}
	a.UDPRoundTrip(netip.AddrPortFrom(l.B6, udp))
	a.Ping(l.B4, id)
	a.Ping(l.B6, id+1)
}

// serveExporter makes an exporter with opts behind its own registry and an
// httptest server (closed in t.Cleanup); it returns the exporter and the
// URL of its metrics. The caller starts and runs it.
func serveExporter(t *testing.T, opts Options) (*Exporter, string) {
	t.Helper()
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(e)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	return e, srv.URL + "/metrics"
}

// checkKernelStats compares the ctagent_conntrack_kernel_stat_* series of
// n in m with conntrack -S (stats), for the statistics conntrack prints.
func checkKernelStats(m map[string]map[string]float64, n *labnet.NS, stats map[string]uint64) error {
	l := canon(fmt.Sprintf("netns=%d,netns_name=%s", n.Inode, n.Name))
	for _, ks := range kernelStats {
		want, ok := stats[ks.name]
		if !ok {
			continue // this conntrack does not print it
		}
		v, found := m["ctagent_conntrack_kernel_stat_"+ks.name+"_total"][l]
		if !found || v != float64(want) {
			return fmt.Errorf("%s: exported %v (present %v), conntrack -S %d", ks.name, v, found, want)
		}
	}
	return nil
}

func sameMap(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// eventually retries check until it returns nil, and fails the test with
// its last error after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	var err error
	if !labnet.WaitFor(timeout, func() bool { err = check(); return err == nil }) {
		t.Fatalf("%s: after %v: %v", what, timeout, err)
	}
}

// TestEndToEndNetlink runs the exporter on the real netlink tracer in four
// lab namespaces with real traffic, scrapes it over HTTP, and checks it
// against the conntrack CLI in each namespace.
func TestEndToEndNetlink(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// a is the client of b, c and d.
	a, b, c, d := labnet.New(t), labnet.New(t), labnet.New(t), labnet.New(t)
	ab, ac, ad := labnet.Connect(t, a, b), labnet.Connect(t, a, c), labnet.Connect(t, a, d)
	for _, n := range []*labnet.NS{a, b, c, d} {
		n.EnableConntrack()
	}

	// d holds entries from before the tracer and the exporter.
	const preexisting = 24
	var lines []string
	for i := range preexisting / 4 {
		p := uint16(1000 + i)
		lines = append(lines,
			"-I "+strings.Join(labnet.InsertArgs("tcp", netip.AddrPortFrom(ad.A4, p), netip.AddrPortFrom(ad.B4, 80), "-u", "SEEN_REPLY,ASSURED"), " "),
			"-I "+strings.Join(labnet.InsertArgs("udp", netip.AddrPortFrom(ad.A4, p), netip.AddrPortFrom(ad.B4, 53)), " "),
			"-I "+strings.Join(labnet.InsertArgs("udp", netip.AddrPortFrom(ad.A6, p), netip.AddrPortFrom(ad.B6, 53), "-u", "SEEN_REPLY"), " "),
			"-I "+strings.Join(labnet.InsertArgs("icmpv6", netip.AddrPortFrom(ad.A6, p), netip.AddrPortFrom(ad.B6, 0)), " "),
		)
	}
	d.CTLoad(lines)
	if n := d.CTCount(); n != preexisting {
		t.Fatalf("d: conntrack -C = %d after loading %d entries", n, preexisting)
	}

	src := &labSource{nss: []*labnet.NS{a, b, c, d}}
	tr := openNetlink(t, ctx, src)

	// Traffic with the tracer running, before the exporter starts.
	b.ServeTCP(8080)
	b.ServeUDP(5353)
	c.ServeTCP(8080)
	clientMix(a, ab, 8080, 8080, 5353, 101)

	e, url := serveExporter(t, Options{
		Tracer:            tr,
		Namespaces:        src,
		Labels:            []string{LabelNetnsName},
		StaleAfter:        2 * time.Second,
		ReconcileInterval: time.Hour, // the test reconciles by hand
		RescanInterval:    200 * time.Millisecond,
		Logger:            zaptest.NewLogger(t),
		Version:           "test",
	})

	if err := e.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if !e.Ready() {
		t.Fatal("not ready after Start")
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { e.Run(ctx) })

	// The first scrape already has d's entries from before the exporter.
	m := scrapeHTTP(t, url)
	if got := series(m, "ctagent_conntrack_entries", d.Inode); !sameMap(got, truthEntries(d)) {
		t.Errorf("first scrape, d: entries %v, conntrack -L %v", got, truthEntries(d))
	}
	var total float64
	for _, v := range series(m, "ctagent_conntrack_entries", d.Inode) {
		total += v
	}
	if total != preexisting {
		t.Errorf("first scrape, d: %v entries, want %d", total, preexisting)
	}

	// Traffic after Start: the entries must follow from the counters alone.
	c.ServeUDP(5353)
	c1 := a.DialTCP(netip.AddrPortFrom(ac.B4, 8080))
	a.DialTCP(netip.AddrPortFrom(ac.B6, 8080))
	a.UDPRoundTrip(netip.AddrPortFrom(ac.B6, 5353))
	a.Ping(ac.B4, 103)
	a.Ping(ad.B4, 104)
	a.Ping(ad.B6, 105)
	a.TCPRoundTrip(netip.AddrPortFrom(ab.B4, 8080))
	for _, n := range []*labnet.NS{b, c, d} {
		if err := n.CTInsert(labnet.InsertArgs("tcp", netip.MustParseAddrPort("192.0.2.7:4242"), netip.MustParseAddrPort("198.51.100.7:443"))...); err != nil {
			t.Fatal(err)
		}
	}

	labs := map[string]*labnet.NS{"a": a, "b": b, "c": c, "d": d}
	checkAll := func(stage string) {
		t.Helper()
		for name, n := range labs {
			eventually(t, 5*time.Second, stage+": "+name+" entries", func() error {
				m := scrapeHTTP(t, url)
				got, want := series(m, "ctagent_conntrack_entries", n.Inode), truthEntries(n)
				if !sameMap(got, want) {
					return fmt.Errorf("ctagent_conntrack_entries %v, conntrack -L %v (created %v, destroyed %v)", got, want,
						series(m, "ctagent_conntrack_created_total", n.Inode), series(m, "ctagent_conntrack_destroyed_total", n.Inode))
				}
				kern := series(m, "ctagent_conntrack_kernel_entries", n.Inode)[""]
				if cnt := n.CTCount(); kern != float64(cnt) {
					return fmt.Errorf("ctagent_conntrack_kernel_entries %v, conntrack -C %d", kern, cnt)
				}
				return nil
			})
		}
	}
	checkAll("after traffic")

	// Created: one entry per flow in each namespace it crossed, plus the
	// ctnetlink inserts; nothing for d's entries from before the tracer.
	wantCreated := map[*labnet.NS]map[string]float64{
		a: {"family=ipv4,protocol=tcp": 5, "family=ipv6,protocol=tcp": 3, "family=ipv4,protocol=udp": 2, "family=ipv6,protocol=udp": 2,
			"family=ipv4,protocol=icmp": 3, "family=ipv6,protocol=icmpv6": 2},
		b: {"family=ipv4,protocol=tcp": 5, "family=ipv6,protocol=tcp": 2, "family=ipv4,protocol=udp": 2, "family=ipv6,protocol=udp": 1,
			"family=ipv4,protocol=icmp": 1, "family=ipv6,protocol=icmpv6": 1},
		c: {"family=ipv4,protocol=tcp": 2, "family=ipv6,protocol=tcp": 1, "family=ipv6,protocol=udp": 1, "family=ipv4,protocol=icmp": 1},
		d: {"family=ipv4,protocol=tcp": 1, "family=ipv4,protocol=icmp": 1, "family=ipv6,protocol=icmpv6": 1},
	}
	for n, want := range wantCreated {
		eventually(t, 5*time.Second, n.Name+" created", func() error {
			got := series(scrapeHTTP(t, url), "ctagent_conntrack_created_total", n.Inode)
			if !sameMap(got, want) {
				return fmt.Errorf("ctagent_conntrack_created_total %v, want %v", got, want)
			}
			return nil
		})
	}

	// Kernel statistics: conntrack -S summed over CPUs, now that traffic
	// has stopped.
	for name, n := range labs {
		eventually(t, 5*time.Second, name+" kernel stats", func() error {
			return checkKernelStats(scrapeHTTP(t, url), n, n.CTStats())
		})
	}

	// The by-state, assured and unreplied gauges are those of the dump at
	// Start: for d, its preexisting entries.
	m = scrapeHTTP(t, url)
	dl := fmt.Sprintf("netns=%d,netns_name=%s", d.Inode, d.Name)
	expect(t, m, "ctagent_conntrack_entries_by_state", dl+",state=established", preexisting/4)
	expect(t, m, "ctagent_conntrack_entries_assured", dl, preexisting/4)
	expect(t, m, "ctagent_conntrack_entries_unreplied", dl, 2*preexisting/4)
	expect(t, m, "ctagent_namespaces", "", 4)

	// Deleting entries: the counters follow.
	c1.Close()
	b.MustExec("conntrack", "-D", "-f", "ipv4", "-p", "udp")
	b.MustExec("conntrack", "-D", "-f", "ipv6", "-p", "udp")
	c.MustExec("conntrack", "-D", "-f", "ipv6", "-p", "tcp")
	checkAll("after deletions")
	eventually(t, 5*time.Second, "b destroyed", func() error {
		got := series(scrapeHTTP(t, url), "ctagent_conntrack_destroyed_total", b.Inode)
		if got["family=ipv4,protocol=udp"] != 2 || got["family=ipv6,protocol=udp"] != 1 {
			return fmt.Errorf("ctagent_conntrack_destroyed_total %v, want 2 ipv4/udp and 1 ipv6/udp", got)
		}
		return nil
	})
	if got := a.CTList(); len(got) == 0 {
		t.Fatal("a: empty table") // sanity: the lab made traffic
	}

	// Entries from before the tracer may go without a DESTROY event (the
	// kernel sends those only for entries created while a listener was
	// there): a reconciliation dump puts the gauge right and says by how
	// much.
	m = scrapeHTTP(t, url)
	before := 0.0
	for _, v := range series(m, "ctagent_conntrack_entries", d.Inode) {
		before += v
	}
	d.MustExec("conntrack", "-D", "-f", "ipv6", "-p", "icmpv6")
	if _, failed, err := e.baselinePass(ctx, false); failed > 0 {
		t.Fatalf("reconciliation: %v", err)
	}
	m = scrapeHTTP(t, url)
	if got, want := series(m, "ctagent_conntrack_entries", d.Inode), truthEntries(d); !sameMap(got, want) {
		t.Errorf("d after reconciliation: entries %v, conntrack -L %v", got, want)
	}
	corr := m["ctagent_reconcile_corrections_total"][canon(dl)]
	last := m["ctagent_reconcile_last_correction"][canon(dl)]
	t.Logf("d: %v entries before deleting 6 from before the tracer; reconciliation corrected %v", before, last)
	if last > 0 || last < -6 || corr != -last {
		t.Errorf("d: corrections_total %v, last_correction %v: want corrections = -last, 0..6", corr, last)
	}
	for name, n := range map[string]*labnet.NS{"a": a, "b": b, "c": c} {
		l := canon(fmt.Sprintf("netns=%d,netns_name=%s", n.Inode, n.Name))
		if v := m["ctagent_reconcile_last_correction"][l]; v != 0 {
			t.Errorf("%s: reconciliation corrected %v entries, the counters should have been exact", name, v)
		}
	}

	// A second exporter on the same tracer, capped at one namespace: the
	// three others are summed into netns="overflow".
	t.Run("overflow", func(t *testing.T) {
		e2, url2 := serveExporter(t, Options{Tracer: tr, Namespaces: src, MaxNamespaces: 1, Labels: []string{LabelNetnsName}})
		if err := e2.Start(ctx); err != nil {
			t.Fatal(err)
		}
		m := scrapeHTTP(t, url2)
		expect(t, m, "ctagent_namespaces_folded", "", 3)
		var kept *labnet.NS
		var foldedSum float64
		for _, n := range []*labnet.NS{a, b, c, d} {
			if len(series(m, "ctagent_conntrack_kernel_entries", n.Inode)) > 0 {
				if kept != nil {
					t.Fatalf("two namespaces kept: %s and %s", kept.Name, n.Name)
				}
				kept = n
				continue
			}
			foldedSum += float64(n.CTCount())
		}
		if kept == nil {
			t.Fatal("no namespace kept")
		}
		expect(t, m, "ctagent_conntrack_kernel_entries", "netns=overflow,netns_name=", foldedSum)
		var overflow float64
		for s, v := range m["ctagent_conntrack_entries"] {
			if strings.Contains(s, "netns=overflow") {
				overflow += v
			}
		}
		if overflow != foldedSum {
			t.Errorf("overflow entries %v, conntrack -C summed over the folded namespaces %v", overflow, foldedSum)
		}
		netnsValues := map[string]bool{}
		for s := range m["ctagent_conntrack_created_total"] {
			for _, kv := range strings.Split(s, ",") {
				if v, ok := strings.CutPrefix(kv, "netns="); ok {
					netnsValues[v] = true
				}
			}
		}
		if len(netnsValues) != 2 || !netnsValues["overflow"] {
			t.Errorf("netns values %v, want the kept namespace and overflow", netnsValues)
		}
	})

	// d goes away: its table gauges at once, its counters after StaleAfter
	// without change.
	removed := time.Now()
	src.remove(d)
	d.Delete()
	m = scrapeHTTP(t, url)
	if got := series(m, "ctagent_conntrack_kernel_entries", d.Inode); len(got) > 0 {
		t.Errorf("d removed: kernel entries still exported: %v", got)
	}
	if _, ok := m["ctagent_conntrack_entries"][canon(dl+",family=ipv4,protocol=tcp")]; ok {
		t.Error("d removed: entries still exported")
	}
	if time.Since(removed) < time.Second {
		if _, ok := m["ctagent_conntrack_created_total"][canon(dl+",family=ipv4,protocol=icmp")]; !ok {
			t.Error("d removed: counters gone before StaleAfter")
		}
	}
	eventually(t, 5*time.Second, "d's series expire", func() error {
		if hasNetns(scrapeHTTP(t, url), strconv.FormatUint(uint64(d.Inode), 10)) {
			return errors.New("d's series are still there")
		}
		return nil
	})
	// d was last seen at the last rescan (every 200 ms) before.
	if d := time.Since(removed); d < 2*time.Second-250*time.Millisecond {
		t.Errorf("d's series expired %v after it went, before StaleAfter", d)
	}
	m = scrapeHTTP(t, url)
	expect(t, m, "ctagent_namespaces", "", 3)
	expect(t, m, "ctagent_scrape_errors_total", "source=kernel_stats", 0)
	expect(t, m, "ctagent_tracer_info", "backend=netlink,kernel="+kernelRelease(t)+",ring_buffer=false", 1)
	if m["ctagent_events_total"]["type=created"] == 0 {
		t.Error("no created events counted")
	}
}

func kernelRelease(t *testing.T) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}
