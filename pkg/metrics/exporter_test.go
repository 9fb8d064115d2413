package metrics

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

var update = flag.Bool("update", false, "rewrite docs/metrics.md")

// TestMetricsDocUpToDate fails when docs/metrics.md is not what Markdown
// renders; -update rewrites it.
func TestMetricsDocUpToDate(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "metrics.md")
	want := Markdown()
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (generate it: go test ./pkg/metrics -run TestMetricsDocUpToDate -update)", err)
	}
	if string(got) != want {
		t.Fatalf("%s is stale: go test ./pkg/metrics -run TestMetricsDocUpToDate -update", path)
	}
}

// fakeTracer serves fixed counters; only for the pure parts of the
// exporter. The end-to-end test uses the real tracer.
type fakeTracer struct {
	mu       sync.Mutex
	counters tracer.Counters
	err      error
	info     tracer.Info
	lost     map[tracer.LostReason]uint64
	progs    []tracer.ProgramStats
	// forgotten lists the namespaces passed to Forget, unwatched those
	// passed to Unwatch.
	forgotten, unwatched []uint32
}

func (f *fakeTracer) Info() tracer.Info           { return f.info }
func (f *fakeTracer) Events() <-chan tracer.Event { return nil }
func (f *fakeTracer) Close() error                { return nil }

// Forget records which namespaces the exporter let go and drops their
// counters, as the real tracers do.
func (f *fakeTracer) Forget(inode uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forgotten = append(f.forgotten, inode)
	maps.DeleteFunc(f.counters, func(k tracer.Key, _ tracer.Values) bool { return k.NetNS == inode })
	return nil
}

// SetEvents does nothing: the fake has no event stream.
func (f *fakeTracer) SetEvents(bool) error { return nil }

// Watch counts every namespace, like the eBPF backends.
func (f *fakeTracer) Watch(tracer.Namespace) error { return nil }

// Unwatch records which namespaces the exporter stopped observing.
func (f *fakeTracer) Unwatch(inode uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unwatched = append(f.unwatched, inode)
}

// DumpTable and KernelStats are not used: the fixture replaces
// Exporter.dump and Exporter.readStats.
func (f *fakeTracer) DumpTable(tracer.Namespace, func(tracer.Entry)) error {
	return errors.New("fakeTracer has no table")
}

// KernelStats: see DumpTable.
func (f *fakeTracer) KernelStats(tracer.Namespace) (tracer.KernelStats, error) {
	return tracer.KernelStats{}, errors.New("fakeTracer has no table")
}

func (f *fakeTracer) Programs() ([]tracer.ProgramStats, error) {
	return f.progs, nil
}

func (f *fakeTracer) Lost() (map[tracer.LostReason]uint64, error) { return f.lost, nil }

func (f *fakeTracer) Counters() (tracer.Counters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	c := make(tracer.Counters, len(f.counters))
	for k, v := range f.counters {
		c[k] = v
	}
	return c, nil
}

// set replaces the counters of k.
func (f *fakeTracer) set(k tracer.Key, created, destroyed uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.counters == nil {
		f.counters = tracer.Counters{}
	}
	v := f.counters[k]
	v.Created, v.Destroyed = created, destroyed
	f.counters[k] = v
}

// fakeNS is a namespace source with a settable list.
type fakeNS struct {
	mu      sync.Mutex
	list    []netns.Namespace
	ids     map[uint32]netns.Identity
	lookups int
}

func (f *fakeNS) Namespaces() []netns.Namespace {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]netns.Namespace(nil), f.list...)
}

func (f *fakeNS) Lookup(inode uint32) (netns.Identity, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	id, ok := f.ids[inode]
	return id, ok
}

func (f *fakeNS) setList(inodes ...uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = nil
	for _, i := range inodes {
		f.list = append(f.list, tracer.Namespace{Inode: i, Path: ""})
	}
}

// fakeTables are conntrack tables to dump, by namespace.
type fakeTables struct {
	mu sync.Mutex
	t  map[uint32][]tracer.Entry
}

func (f *fakeTables) dump(ns tracer.Namespace, fn func(tracer.Entry)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	entries, ok := f.t[ns.Inode]
	if !ok {
		return errors.New("no such namespace")
	}
	for _, e := range entries {
		fn(e)
	}
	return nil
}

func (f *fakeTables) set(inode uint32, entries ...tracer.Entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.t == nil {
		f.t = map[uint32][]tracer.Entry{}
	}
	f.t[inode] = entries
}

func tcpEntry(state uint8, status uint32) tracer.Entry {
	return tracer.Entry{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, TCPState: state, Status: status}
}

func udpEntry(family uint8, status uint32) tracer.Entry {
	return tracer.Entry{Family: family, Protocol: unix.IPPROTO_UDP, Status: status}
}

func key(ns uint32, family, proto uint8) tracer.Key {
	return tracer.Key{NetNS: ns, Family: family, Protocol: proto}
}

// clock is an injectable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type fixture struct {
	tr     *fakeTracer
	ns     *fakeNS
	tables *fakeTables
	clock  *clock
	e      *Exporter
	reg    *prometheus.Registry
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	f := &fixture{
		tr:     &fakeTracer{info: tracer.Info{Backend: tracer.BackendNetlink, Kernel: "6.18.0"}},
		ns:     &fakeNS{ids: map[uint32]netns.Identity{}},
		tables: &fakeTables{},
		clock:  &clock{t: time.Unix(1_700_000_000, 0)},
	}
	opts.Tracer, opts.Namespaces = f.tr, f.ns
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.now = f.clock.now
	e.dump = f.tables.dump
	e.readStats = func(ns tracer.Namespace) (tracer.KernelStats, error) {
		return tracer.KernelStats{Entries: uint64(ns.Inode), Found: 1}, nil
	}
	e.procRoot = t.TempDir() // no sysctls
	f.e = e
	f.reg = prometheus.NewPedanticRegistry()
	f.reg.MustRegister(e)
	return f
}

// refresh does the namespace bookkeeping the way Run does at each rescan:
// scrapes only read it.
func (f *fixture) refresh() { f.e.refresh() }

// scrape gathers and indexes the metrics: family name → label signature →
// value (counter, gauge, or histogram sample count).
func (f *fixture) scrape(t *testing.T) map[string]map[string]float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return index(mfs)
}

func index(mfs []*dto.MetricFamily) map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	for _, mf := range mfs {
		series := map[string]float64{}
		for _, m := range mf.Metric {
			var v float64
			switch {
			case m.Counter != nil:
				v = m.Counter.GetValue()
			case m.Gauge != nil:
				v = m.Gauge.GetValue()
			case m.Histogram != nil:
				v = float64(m.Histogram.GetSampleCount())
			}
			series[sig(m.Label)] = v
		}
		out[mf.GetName()] = series
	}
	return out
}

func sig(lps []*dto.LabelPair) string {
	var parts []string
	for _, lp := range lps {
		parts = append(parts, lp.GetName()+"="+lp.GetValue())
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func TestIdentityLabelsValidated(t *testing.T) {
	tr := &fakeTracer{}
	for _, tc := range []struct {
		in   []string
		want []string
		err  string
	}{
		{in: nil, want: nil},
		{in: []string{"comm", "pod", "netns_name"}, want: []string{"netns_name", "pod", "comm"}},
		{in: []string{"pod_namespace", "container"}, want: []string{"pod_namespace", "container"}},
		{in: []string{"pod", "uid"}, err: `unknown identity label "uid"`},
		{in: []string{"netns"}, err: `unknown identity label "netns"`},
		{in: []string{"pod", "pod"}, err: `"pod" given twice`},
	} {
		e, err := New(Options{Tracer: tr, Labels: tc.in})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Labels %q: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Labels %q: %v", tc.in, err)
			continue
		}
		if fmt.Sprint(e.idLabels) != fmt.Sprint(tc.want) {
			t.Errorf("Labels %q: got %q, want %q", tc.in, e.idLabels, tc.want)
		}
	}
	if _, err := New(Options{}); err == nil {
		t.Error("New without Tracer: no error")
	}
	if _, err := New(Options{Tracer: tr, MaxNamespaces: -1}); err == nil {
		t.Error("New with MaxNamespaces -1: no error")
	}
}

func TestPodLabelName(t *testing.T) {
	for key, want := range map[string]string{
		"app":                                "pod_label_app",
		"app.kubernetes.io/name":             "pod_label_app_kubernetes_io_name",
		"example.com/Tier-1":                 "pod_label_example_com_Tier_1",
		"statefulset.kubernetes.io/pod-name": "pod_label_statefulset_kubernetes_io_pod_name",
		"under_score":                        "pod_label_under_score",
		"9lives":                             "pod_label_9lives",
		"é/x":                                "pod_label___x", // one underscore per character, not per byte
		"a\xffb":                             "pod_label_a_b",
	} {
		got := PodLabelName(key)
		if got != want {
			t.Errorf("PodLabelName(%q) = %q, want %q", key, got, want)
		}
		if !model.LegacyValidation.IsValidLabelName(got) {
			t.Errorf("PodLabelName(%q) = %q: not a valid Prometheus label name", key, got)
		}
	}
}

func TestPodLabelNames(t *testing.T) {
	for _, tc := range []struct {
		keys []string
		want []string
		err  string
	}{
		{keys: nil, want: []string{}},
		{keys: []string{"team", "app.kubernetes.io/name"}, want: []string{"pod_label_team", "pod_label_app_kubernetes_io_name"}},
		{keys: []string{"app.kubernetes.io/name", "app_kubernetes_io/name"},
			err: `pod label keys "app.kubernetes.io/name" and "app_kubernetes_io/name" both become the label pod_label_app_kubernetes_io_name`},
		{keys: []string{"a-b", "a.b"}, err: `"a-b" and "a.b" both become the label pod_label_a_b`},
		{keys: []string{"app", "app"}, err: `pod label key "app" given twice`},
		{keys: []string{"app", ""}, err: "empty pod label key"},
	} {
		got, err := PodLabelNames(tc.keys)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("PodLabelNames(%q): error %v, want %q", tc.keys, err, tc.err)
			}
			if _, err := New(Options{Tracer: &fakeTracer{}, PodLabels: tc.keys}); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("New with PodLabels %q: error %v, want %q", tc.keys, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("PodLabelNames(%q) = %q, %v; want %q", tc.keys, got, err, tc.want)
		}
	}
}

// Pod labels are identity labels of their own: pod_label_<key> on every
// per-namespace series, after the identity labels, valued at scrape time
// (no lookup per event), empty where the pod lacks the label or there is no
// pod, and following the pod when it changes or goes.
func TestPodLabels(t *testing.T) {
	f := newFixture(t, Options{MaxNamespaces: 3, Labels: []string{"pod"}, PodLabels: []string{"app.kubernetes.io/name", "team"}})
	const web, db, host, tiny = 1, 2, 3, 4
	f.ns.setList(web, db, host, tiny)
	for ns, n := range map[uint32]int{web: 3, db: 2, host: 1, tiny: 0} {
		es := make([]tracer.Entry, n)
		for i := range es {
			es[i] = tcpEntry(3, 0)
		}
		f.tables.set(ns, es...)
	}
	f.ns.ids[web] = netns.Identity{Pod: "web-0", PodLabels: map[string]string{"app.kubernetes.io/name": "web", "team": "blue", "other": "x"}}
	f.ns.ids[db] = netns.Identity{Pod: "db-0", PodLabels: map[string]string{"team": "red"}} // no app label
	f.ns.ids[host] = netns.Identity{Comm: "sshd"}                                           // no pod
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Start's bookkeeping keeps the identities of the listed namespaces
	// (one lookup each), for when they leave the source.
	if f.ns.lookups != 4 {
		t.Errorf("%d identity lookups at Start, want 4 (one per listed namespace)", f.ns.lookups)
	}
	lookups := f.ns.lookups
	// Counters of a namespace the source does not list: Run's poll asks
	// for discovery, without identity lookups.
	f.tr.set(key(99, unix.AF_INET, unix.IPPROTO_TCP), 100, 0)
	f.e.pollCounters()
	if n := f.ns.lookups - lookups; n != 0 {
		t.Errorf("%d identity lookups for the counter poll, want none (labels are added in Collect)", n)
	}

	m := f.scrape(t)
	const fp = ",family=ipv4,protocol=tcp"
	expect(t, m, "ctagent_conntrack_entries", "netns=1,pod=web-0,pod_label_app_kubernetes_io_name=web,pod_label_team=blue"+fp, 3)
	expect(t, m, "ctagent_conntrack_entries", "netns=2,pod=db-0,pod_label_app_kubernetes_io_name=,pod_label_team=red"+fp, 2)
	expect(t, m, "ctagent_conntrack_entries", "netns=3,pod=,pod_label_app_kubernetes_io_name=,pod_label_team="+fp, 1)
	expect(t, m, "ctagent_conntrack_entries_assured", "netns=1,pod=web-0,pod_label_app_kubernetes_io_name=web,pod_label_team=blue", 0)
	expect(t, m, "ctagent_conntrack_kernel_entries", "netns=overflow,pod=,pod_label_app_kubernetes_io_name=,pod_label_team=", tiny)
	if n := f.ns.lookups - lookups; n != 3 {
		t.Errorf("%d identity lookups in one scrape, want 3 (one per namespace with series of its own)", n)
	}
	for name, series := range m {
		for s := range series {
			if strings.Contains(s, "pod_label_other") {
				t.Errorf("%s{%s}: a label that is not in PodLabels", name, s)
			}
		}
	}

	// The pod is relabelled, then deleted: the next scrape follows.
	f.ns.mu.Lock()
	f.ns.ids[web] = netns.Identity{Pod: "web-0", PodLabels: map[string]string{"app.kubernetes.io/name": "web", "team": "green"}}
	f.ns.mu.Unlock()
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", "netns=1,pod=web-0,pod_label_app_kubernetes_io_name=web,pod_label_team=green"+fp, 3)
	absent(t, m, "ctagent_conntrack_entries", "netns=1,pod=web-0,pod_label_app_kubernetes_io_name=web,pod_label_team=blue"+fp)
	f.ns.mu.Lock()
	f.ns.ids[web] = netns.Identity{}
	f.ns.mu.Unlock()
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", "netns=1,pod=,pod_label_app_kubernetes_io_name=,pod_label_team="+fp, 3)
	for s := range m["ctagent_conntrack_entries"] {
		if strings.Contains(s, "web") {
			t.Errorf("ctagent_conntrack_entries{%s} after the pod was deleted", s)
		}
	}
}

// A namespace whose path no longer opens it (its process exited, or its
// name was deleted, after the source listed it) is gone, which is not an
// error: no scrape or reconciliation error, no warning, and no dump retried
// through that path.
func TestGoneNamespaceIsNoError(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	f := newFixture(t, Options{Logger: zap.New(core)})
	dir := t.TempDir()
	file := func(name string) (string, uint32) {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return path, uint32(st.Ino)
	}
	live, liveIno := file("live")          // opens its namespace
	reused, _ := file("reused")            // opens another one now
	vanishing, vanIno := file("vanishing") // goes while it is dumped
	exited := filepath.Join(dir, "exited") // gone before
	f.ns.list = []netns.Namespace{{Inode: liveIno, Path: live}, {Inode: 7, Path: exited}, {Inode: 8, Path: reused}, {Inode: vanIno, Path: vanishing}}
	for _, ns := range f.ns.list {
		f.tables.set(ns.Inode, udpEntry(unix.AF_INET, 0))
	}
	var mu sync.Mutex // dumps run in parallel
	dumps := map[uint32]int{}
	f.e.dump = func(ns tracer.Namespace, fn func(tracer.Entry)) error {
		mu.Lock()
		dumps[ns.Inode]++
		mu.Unlock()
		if ns.Inode == vanIno {
			if err := os.Remove(vanishing); err != nil {
				t.Error(err)
			}
			return errors.New("open network namespace: no such file or directory")
		}
		return f.tables.dump(ns, fn)
	}

	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		m := f.scrape(t)
		expect(t, m, "ctagent_conntrack_entries", fmt.Sprintf("family=ipv4,netns=%d,protocol=udp", liveIno), 1)
		expect(t, m, "ctagent_conntrack_kernel_entries", fmt.Sprintf("netns=%d", liveIno), float64(liveIno))
		for _, ns := range []uint32{7, 8, vanIno} {
			absent(t, m, "ctagent_conntrack_kernel_entries", fmt.Sprintf("netns=%d", ns))
		}
		expect(t, m, "ctagent_reconcile_errors_total", "", 0)
		expect(t, m, "ctagent_scrape_errors_total", "source=kernel_stats", 0)
		f.e.baselineNew(context.Background()) // what Run's rescan runs
	}
	mu.Lock()
	defer mu.Unlock()
	if want := map[uint32]int{liveIno: 1, vanIno: 1}; !maps.Equal(dumps, want) {
		t.Errorf("dumps by namespace %v, want %v: none through a path that was found gone", dumps, want)
	}
	for _, e := range logs.All() {
		t.Errorf("logged %s %q %v", e.Level, e.Message, e.ContextMap())
	}
	if !f.e.Ready() {
		t.Error("not ready")
	}
}

func TestLifetimeMetricCumulative(t *testing.T) {
	var v tracer.Values
	v.LifetimeBuckets[0] = 2                           // <= 1ms
	v.LifetimeBuckets[3] = 5                           // <= 8ms
	v.LifetimeBuckets[tracer.NumLifetimeBuckets-2] = 1 // <= last bound
	v.LifetimeBuckets[tracer.NumLifetimeBuckets-1] = 4 // +Inf
	v.LifetimeSum = 1500 * time.Millisecond
	v.Created, v.Destroyed = 12, 12

	var out dto.Metric
	if err := newLifetimeMetric(nil, nil, &v).Write(&out); err != nil {
		t.Fatal(err)
	}
	h := out.GetHistogram()
	count, sum := h.GetSampleCount(), h.GetSampleSum()
	buckets := map[float64]uint64{}
	for _, b := range h.GetBucket() {
		buckets[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	if count != 12 {
		t.Errorf("count %d, want 12", count)
	}
	if sum != 1.5 {
		t.Errorf("sum %v, want 1.5", sum)
	}
	if len(buckets) != tracer.NumLifetimeBuckets-1 {
		t.Fatalf("%d buckets, want %d (the +Inf one is implicit)", len(buckets), tracer.NumLifetimeBuckets-1)
	}
	want := map[float64]uint64{0.001: 2, 0.002: 2, 0.004: 2, 0.008: 7, 0.016: 7}
	for b, n := range want {
		if buckets[b] != n {
			t.Errorf("bucket le=%v: %d, want %d", b, buckets[b], n)
		}
	}
	last := tracer.LifetimeBucketBound(tracer.NumLifetimeBuckets - 2)
	if buckets[last] != 8 {
		t.Errorf("bucket le=%v: %d, want 8", last, buckets[last])
	}

	// Through the registry: the exported histogram ends in +Inf = count.
	f := newFixture(t, Options{})
	f.ns.setList(7)
	f.tr.counters = tracer.Counters{key(7, unix.AF_INET, unix.IPPROTO_TCP): v}
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ctagent_conntrack_lifetime_seconds" {
			continue
		}
		h := mf.Metric[0].Histogram
		if h.GetSampleCount() != 12 || h.GetSampleSum() != 1.5 {
			t.Errorf("histogram count %d sum %v", h.GetSampleCount(), h.GetSampleSum())
		}
		bs := h.GetBucket()
		if len(bs) != tracer.NumLifetimeBuckets-1 || bs[0].GetUpperBound() != 0.001 || bs[0].GetCumulativeCount() != 2 {
			t.Errorf("buckets %v", bs)
		}
		if got := bs[len(bs)-1].GetCumulativeCount(); got != 8 {
			t.Errorf("last finite bucket %d, want 8", got)
		}
		return
	}
	t.Fatal("no ctagent_conntrack_lifetime_seconds")
}

// A namespace whose last dump found no TCP entry has no by-state series
// (nine zeros each would be most of the series at 1,000 namespaces); once
// a dump finds one, all nine named states are there, zeros included.
func TestEntriesByStateOnlyWithTCP(t *testing.T) {
	f := newFixture(t, Options{})
	const ns = 4026531998
	f.ns.setList(ns)
	f.tables.set(ns, udpEntry(unix.AF_INET, 0))
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	l := "netns=4026531998"
	m := f.scrape(t)
	if got := m["ctagent_conntrack_entries_by_state"]; len(got) != 0 {
		t.Errorf("by-state series without a TCP entry: %v", got)
	}
	expect(t, m, "ctagent_conntrack_entries_unreplied", l, 1)
	expect(t, m, "ctagent_conntrack_entries", l+",family=ipv4,protocol=udp", 1)

	f.tables.set(ns, udpEntry(unix.AF_INET, 0), tcpEntry(3, ipsAssured|ipsSeenReply))
	if _, failed, err := f.e.baselinePass(context.Background(), false); failed != 0 {
		t.Fatal(err)
	}
	m = f.scrape(t)
	if got := len(m["ctagent_conntrack_entries_by_state"]); got != 9 {
		t.Errorf("%d by-state series with a TCP entry, want the nine named states", got)
	}
	expect(t, m, "ctagent_conntrack_entries_by_state", l+",state=established", 1)
	expect(t, m, "ctagent_conntrack_entries_by_state", l+",state=time_wait", 0)
}

// A reconciliation skips a namespace where nothing changed (no event since
// its dump, and the kernel's entry count is the dump's), at most
// reconcileMaxSkips times in a row, and dumps it as soon as either moves.
func TestReconcileSkipsUnchanged(t *testing.T) {
	f := newFixture(t, Options{})
	const ns = 4026531997
	f.ns.setList(ns)
	udp4 := key(ns, unix.AF_INET, unix.IPPROTO_UDP)
	f.tables.set(ns, udpEntry(unix.AF_INET, 0), udpEntry(unix.AF_INET, 0))
	kernelEntries := uint64(2)
	f.e.readStats = func(tracer.Namespace) (tracer.KernelStats, error) {
		return tracer.KernelStats{Entries: kernelEntries}, nil
	}
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	reconcile := func() int {
		t.Helper()
		f.clock.advance(time.Minute)
		n, failed, _, err := f.e.baselinePassUntil(context.Background(), false, time.Time{}, true)
		if failed != 0 {
			t.Fatal(err)
		}
		return n
	}
	l := "netns=4026531997"
	// A change the events did not show (the table lost an entry, and so
	// did the kernel's count): dumped.
	f.tables.set(ns, udpEntry(unix.AF_INET, 0))
	kernelEntries = 1
	if n := reconcile(); n != 1 {
		t.Fatalf("count changed: %d namespaces dumped, want 1", n)
	}
	m := f.scrape(t)
	expect(t, m, "ctagent_reconcile_last_correction", l, -1)
	expect(t, m, "ctagent_reconcile_last_timestamp_seconds", l, 1_700_000_060)
	// Nothing changed: skipped reconcileMaxSkips times, then dumped.
	for i := range reconcileMaxSkips {
		if n := reconcile(); n != 0 {
			t.Fatalf("unchanged, reconciliation %d: %d namespaces dumped, want 0", i+1, n)
		}
	}
	m = f.scrape(t)
	expect(t, m, "ctagent_reconcile_last_timestamp_seconds", l, 1_700_000_060)
	if n := reconcile(); n != 1 {
		t.Fatalf("after %d skips: %d namespaces dumped, want 1", reconcileMaxSkips, n)
	}
	// An event: dumped.
	if n := reconcile(); n != 0 {
		t.Fatalf("unchanged: %d namespaces dumped, want 0", n)
	}
	f.tr.set(udp4, 1, 0)
	f.tables.set(ns, udpEntry(unix.AF_INET, 0), udpEntry(unix.AF_INET, 0))
	kernelEntries = 2
	if n := reconcile(); n != 1 {
		t.Fatalf("after an event: %d namespaces dumped, want 1", n)
	}
	expect(t, f.scrape(t), "ctagent_conntrack_entries", l+",family=ipv4,protocol=udp", 2)
}

func TestEntriesFromBaselineAndCounters(t *testing.T) {
	f := newFixture(t, Options{Labels: []string{"netns_name"}})
	const ns = 4026531999
	f.ns.setList(ns)
	f.ns.ids[ns] = netns.Identity{Name: "blue"}
	tcp4, udp6 := key(ns, unix.AF_INET, unix.IPPROTO_TCP), key(ns, unix.AF_INET6, unix.IPPROTO_UDP)
	f.tr.set(tcp4, 100, 90) // before the exporter: must not count
	f.tables.set(ns,
		tcpEntry(3, ipsAssured|ipsSeenReply), tcpEntry(3, ipsAssured|ipsSeenReply), tcpEntry(1, 0),
		udpEntry(unix.AF_INET6, ipsSeenReply))

	if f.e.Ready() {
		t.Fatal("ready before Start")
	}
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !f.e.Ready() {
		t.Fatal("not ready after Start")
	}
	l := "netns=4026531999,netns_name=blue"
	m := f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", l+",family=ipv4,protocol=tcp", 3)
	expect(t, m, "ctagent_conntrack_entries", l+",family=ipv6,protocol=udp", 1)
	expect(t, m, "ctagent_conntrack_entries_by_state", l+",state=established", 2)
	expect(t, m, "ctagent_conntrack_entries_by_state", l+",state=syn_sent", 1)
	expect(t, m, "ctagent_conntrack_entries_by_state", l+",state=time_wait", 0)
	expect(t, m, "ctagent_conntrack_entries_assured", l, 2)
	expect(t, m, "ctagent_conntrack_entries_unreplied", l, 1)
	expect(t, m, "ctagent_conntrack_created_total", l+",family=ipv4,protocol=tcp", 100)
	expect(t, m, "ctagent_reconcile_last_correction", l, 0)
	expect(t, m, "ctagent_reconcile_last_timestamp_seconds", l, 1_700_000_000)
	expect(t, m, "ctagent_conntrack_kernel_entries", l, ns)

	// Events: 5 TCP created, 1 destroyed; 2 UDPv6 created.
	f.tr.set(tcp4, 105, 91)
	f.tr.set(udp6, 2, 0)
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", l+",family=ipv4,protocol=tcp", 7)
	expect(t, m, "ctagent_conntrack_entries", l+",family=ipv6,protocol=udp", 3)

	// The table says otherwise (events were missed): reconciliation
	// corrects by -4 and the new baseline holds.
	f.tables.set(ns, tcpEntry(3, ipsAssured|ipsSeenReply), tcpEntry(3, ipsAssured|ipsSeenReply), tcpEntry(7, ipsSeenReply),
		udpEntry(unix.AF_INET6, ipsSeenReply), udpEntry(unix.AF_INET6, 0), udpEntry(unix.AF_INET6, 0))
	f.clock.advance(time.Minute)
	if _, failed, err := f.e.baselinePass(context.Background(), false); failed != 0 {
		t.Fatal(err)
	}
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", l+",family=ipv4,protocol=tcp", 3)
	expect(t, m, "ctagent_conntrack_entries", l+",family=ipv6,protocol=udp", 3)
	expect(t, m, "ctagent_reconcile_last_correction", l, -4)
	expect(t, m, "ctagent_reconcile_corrections_total", l, 4)
	expect(t, m, "ctagent_reconcile_last_timestamp_seconds", l, 1_700_000_060)
	expect(t, m, "ctagent_conntrack_entries_by_state", l+",state=time_wait", 1)
	expect(t, m, "ctagent_conntrack_entries_by_state", l+",state=syn_sent", 0)
	expect(t, m, "ctagent_conntrack_entries_unreplied", l, 2)

	f.tr.set(tcp4, 106, 95) // one more, four fewer: clamped at 0
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", l+",family=ipv4,protocol=tcp", 0)

	// A counter read error: the entry gauges go, the scrape error counts.
	f.tr.err = errors.New("map gone")
	m = f.scrape(t)
	if _, ok := m["ctagent_conntrack_entries"]; ok {
		t.Error("entries exported without counters")
	}
	expect(t, m, "ctagent_scrape_errors_total", "source=counters", 1)
	expect(t, m, "ctagent_conntrack_entries_assured", l, 2) // from the dump: still there
}

func TestStartFailsWhenNothingCanBeDumped(t *testing.T) {
	f := newFixture(t, Options{})
	f.ns.setList(1, 2) // no tables: every dump fails
	err := f.e.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no namespace could be dumped") {
		t.Fatalf("Start: %v", err)
	}
	if f.e.Ready() {
		t.Error("ready although nothing was dumped")
	}
	m := f.scrape(t)
	expect(t, m, "ctagent_reconcile_errors_total", "", 2)
	if _, ok := m["ctagent_conntrack_entries"]; ok {
		t.Error("entries exported without a baseline")
	}
	// One table appears: a pass of Run dumps it and the exporter is ready.
	f.tables.set(1)
	f.e.baselineNew(context.Background())
	if !f.e.Ready() {
		t.Error("not ready after a successful dump")
	}
}

func TestNamespaceWithoutPathGetsCounters(t *testing.T) {
	f := newFixture(t, Options{})
	f.ns.setList(1)
	f.tables.set(1)
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Namespace 9 is not listed (no path to dump it) but has events.
	f.tr.set(key(9, unix.AF_INET6, unix.IPPROTO_ICMPV6), 4, 1)
	f.tr.set(key(9, unix.AF_INET, 200), 1, 0)
	m := f.scrape(t)
	expect(t, m, "ctagent_conntrack_created_total", "family=ipv6,netns=9,protocol=icmpv6", 4)
	expect(t, m, "ctagent_conntrack_destroyed_total", "family=ipv6,netns=9,protocol=icmpv6", 1)
	expect(t, m, "ctagent_conntrack_created_total", "family=ipv4,netns=9,protocol=other:200", 1)
	absent(t, m, "ctagent_conntrack_entries", "family=ipv6,netns=9,protocol=icmpv6")

	// Failures without family and protocol (netlink): only insert_failed.
	f.tr.mu.Lock()
	v := f.tr.counters[key(1, 0, 0)]
	v.Failed[tracer.ReasonConfirmDrop] = 2
	f.tr.counters[key(1, 0, 0)] = v
	f.tr.mu.Unlock()
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_insert_failed_total", "family=unspec,netns=1,protocol=unspec,reason=confirm_drop", 2)
	absent(t, m, "ctagent_conntrack_insert_failed_total", "family=unspec,netns=1,protocol=unspec,reason=table_full")
	absent(t, m, "ctagent_conntrack_created_total", "family=unspec,netns=1,protocol=unspec")
	absent(t, m, "ctagent_conntrack_lifetime_seconds", "family=unspec,netns=1,protocol=unspec")
	absent(t, m, "ctagent_conntrack_entries", "family=unspec,netns=1,protocol=unspec")
	absent(t, m, "ctagent_conntrack_kernel_entries", "netns=9")
	expect(t, m, "ctagent_conntrack_kernel_entries", "netns=1", 1)
	expect(t, m, "ctagent_namespaces", "", 2)
}

func TestStaleNamespacesExpire(t *testing.T) {
	f := newFixture(t, Options{StaleAfter: time.Minute, Labels: []string{"netns_name"}})
	f.ns.setList(1, 2)
	f.ns.ids[2] = netns.Identity{Name: "two"}
	f.tables.set(1)
	f.tables.set(2)
	k2 := key(2, unix.AF_INET, unix.IPPROTO_UDP)
	f.tr.set(k2, 3, 0)
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	m := f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=2,netns_name=two,protocol=udp", 0)
	expect(t, m, "ctagent_namespaces", "", 2)

	// Namespace 2 is gone: its table gauges go at once, before Run
	// notices, its counters stay for StaleAfter after their last change.
	f.ns.setList(1)
	delete(f.ns.ids, 2) // the source forgets it: its series keep their labels
	f.tr.set(k2, 3, 3)  // its entries are destroyed with it
	lookups := f.ns.lookups
	m = f.scrape(t)
	if n := f.ns.lookups - lookups; n != 1 {
		t.Errorf("%d identity lookups in a scrape, want 1: namespace 1 (2 is no longer listed)", n)
	}
	absent(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=2,netns_name=two,protocol=udp")
	absent(t, m, "ctagent_conntrack_kernel_entries", "netns=2,netns_name=two")
	absent(t, m, "ctagent_reconcile_last_timestamp_seconds", "netns=2,netns_name=two")
	expect(t, m, "ctagent_conntrack_destroyed_total", "family=ipv4,netns=2,netns_name=two,protocol=udp", 3)
	f.refresh() // Run's rescan sees it gone, and its last change
	m = f.scrape(t)
	absent(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=2,netns_name=two,protocol=udp")
	expect(t, m, "ctagent_conntrack_destroyed_total", "family=ipv4,netns=2,netns_name=two,protocol=udp", 3)

	f.clock.advance(50 * time.Second)
	f.refresh()
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_destroyed_total", "family=ipv4,netns=2,netns_name=two,protocol=udp", 3)
	expect(t, m, "ctagent_namespaces", "", 2)

	f.clock.advance(20 * time.Second) // 70s since the last change
	m = f.scrape(t)
	if !hasNetns(m, "2") {
		t.Error("a scrape expired namespace 2: expiry is Run's")
	}
	f.refresh()
	m = f.scrape(t)
	if hasNetns(m, "2") {
		t.Error("namespace 2 still exported after StaleAfter and a rescan")
	}
	expect(t, m, "ctagent_namespaces", "", 1)

	// The tracer still reports its counters, unchanged: it stays gone.
	f.clock.advance(time.Hour)
	m = f.scrape(t)
	if hasNetns(m, "2") {
		t.Error("namespace 2 back without a counter change")
	}
	f.refresh()
	m = f.scrape(t)
	if hasNetns(m, "2") {
		t.Error("namespace 2 back without a counter change, after a rescan")
	}

	// A change (the inode was reused, or late events): it is back at the
	// next scrape, before Run tracks it again, its old identity forgotten.
	f.tr.set(k2, 4, 3)
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_created_total", "family=ipv4,netns=2,netns_name=,protocol=udp", 4)
	f.refresh()
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_created_total", "family=ipv4,netns=2,netns_name=,protocol=udp", 4)

	// Counter changes alone keep an unlisted namespace alive.
	for i := range 3 {
		f.clock.advance(50 * time.Second)
		f.tr.set(k2, uint64(5+i), 3)
		f.refresh()
		m = f.scrape(t)
		if _, ok := m["ctagent_conntrack_created_total"][canon("family=ipv4,netns=2,netns_name=,protocol=udp")]; !ok {
			t.Fatal("an active namespace expired")
		}
	}

	// Run's rescan expires namespaces without any scrape.
	f.clock.advance(2 * time.Minute)
	f.e.refresh()
	f.e.mu.Lock()
	_, tracked := f.e.ns[2]
	f.e.mu.Unlock()
	if tracked {
		t.Error("refresh did not expire namespace 2")
	}
	f.tr.mu.Lock()
	forgotten := slices.Clone(f.tr.forgotten)
	f.tr.mu.Unlock()
	if !slices.Contains(forgotten, 2) || slices.Contains(forgotten, 1) {
		t.Errorf("tracer told to forget %v, want namespace 2 (and never the listed 1)", forgotten)
	}
}

func TestOverflowFolding(t *testing.T) {
	f := newFixture(t, Options{MaxNamespaces: 2, Labels: []string{"pod"}})
	// Entries: ns 10: 1, ns 11: 3, ns 12: 3, ns 13: 0, ns 14: 5.
	sizes := map[uint32]int{10: 1, 11: 3, 12: 3, 13: 0, 14: 5}
	var inodes []uint32
	for ns, n := range sizes {
		inodes = append(inodes, ns)
		var es []tracer.Entry
		for range n {
			es = append(es, udpEntry(unix.AF_INET, 0))
		}
		f.tables.set(ns, es...)
		f.tr.set(key(ns, unix.AF_INET, unix.IPPROTO_UDP), 10, 0)
		f.ns.ids[ns] = netns.Identity{Pod: fmt.Sprintf("pod-%d", ns)}
	}
	f.ns.setList(inodes...)
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	m := f.scrape(t)
	// Kept: 14 (5 entries) and 11 (3, lower inode than 12).
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=14,pod=pod-14,protocol=udp", 5)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=11,pod=pod-11,protocol=udp", 3)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=overflow,pod=,protocol=udp", 4)
	expect(t, m, "ctagent_conntrack_created_total", "family=ipv4,netns=overflow,pod=,protocol=udp", 30)
	expect(t, m, "ctagent_conntrack_kernel_entries", "netns=overflow,pod=", 10+12+13)
	expect(t, m, "ctagent_conntrack_entries_unreplied", "netns=overflow,pod=", 4)
	expect(t, m, "ctagent_namespaces", "", 5)
	expect(t, m, "ctagent_namespaces_folded", "", 3)
	expect(t, m, "ctagent_namespaces_folded_total", "", 3)
	netns := map[string]bool{}
	for s := range m["ctagent_conntrack_created_total"] {
		for _, kv := range strings.Split(s, ",") {
			if v, ok := strings.CutPrefix(kv, "netns="); ok {
				netns[v] = true
			}
		}
	}
	if len(netns) != 3 {
		t.Errorf("netns values %v, want 2 namespaces and overflow", netns)
	}

	// Same scrape again: nothing newly folded.
	m = f.scrape(t)
	expect(t, m, "ctagent_namespaces_folded_total", "", 3)

	// Namespace 13 grows to 9 entries: its entries count in the overflow
	// at once, and it displaces 11 once Run places them again.
	f.tr.set(key(13, unix.AF_INET, unix.IPPROTO_UDP), 19, 0)
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=11,pod=pod-11,protocol=udp", 3)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=overflow,pod=,protocol=udp", 13)
	expect(t, m, "ctagent_namespaces_folded_total", "", 3)
	f.refresh()
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=13,pod=pod-13,protocol=udp", 9)
	absent(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=11,pod=pod-11,protocol=udp")
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=overflow,pod=,protocol=udp", 7)
	expect(t, m, "ctagent_namespaces_folded_total", "", 4)
}

func TestGlobalMetrics(t *testing.T) {
	f := newFixture(t, Options{Version: "1.2.3", Revision: "abc"})
	f.tr.info = tracer.Info{
		Backend: tracer.BackendKprobe, RingBuffer: true, Kernel: "6.18.0",
		Hooks: []string{"kprobe/__nf_conntrack_confirm", "kprobe/nf_ct_delete"},
		HookStatus: []tracer.HookStatus{
			{Group: "destroy", Hook: "kprobe/__nf_ct_delete_from_lists", State: tracer.HookMissed},
			{Group: "destroy", Hook: "kprobe/nf_ct_delete", Active: true, State: tracer.HookPassed},
		},
		Refused: map[tracer.Backend]string{tracer.BackendFentry: "fentry: loading fexit_confirm: attach: " + strings.Repeat("x", 100)},
	}
	f.tr.lost = map[tracer.LostReason]uint64{tracer.LostRingbufFull: 3}
	f.tr.progs = []tracer.ProgramStats{{Name: "kprobe_confirm", Hook: "kprobe/__nf_conntrack_confirm", RunCount: 10, RunTime: 2 * time.Millisecond}}
	root := t.TempDir()
	dir := filepath.Join(root, "sys/net/netfilter")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nf_conntrack_max"), []byte("262144\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.e.procRoot = root
	f.tr.counters = tracer.Counters{
		key(1, unix.AF_INET, unix.IPPROTO_TCP):  {Created: 2},
		key(2, unix.AF_INET6, unix.IPPROTO_UDP): {Failed: [tracer.NumFailReasons]uint64{tracer.ReasonTableFull: 1}},
	}

	m := f.scrape(t)
	expect(t, m, "ctagent_conntrack_limit", "", 262144)
	if _, ok := m["ctagent_conntrack_buckets"]; ok {
		t.Error("ctagent_conntrack_buckets without its sysctl")
	}
	expect(t, m, "ctagent_tracer_info", "backend=kprobe,kernel=6.18.0,ring_buffer=true", 1)
	expect(t, m, "ctagent_tracer_backend_refused", "backend=fentry,reason="+strings.Repeat("x", 64), 1)
	expect(t, m, "ctagent_tracer_hooks", "hook=kprobe/nf_ct_delete", 1)
	expect(t, m, "ctagent_tracer_hook_active", "group=destroy,hook=kprobe/nf_ct_delete,self_test=passed", 1)
	expect(t, m, "ctagent_tracer_hook_active", "group=destroy,hook=kprobe/__nf_ct_delete_from_lists,self_test=missed", 0)
	expect(t, m, "ctagent_events_total", "type=created", 2)
	expect(t, m, "ctagent_events_total", "type=destroyed", 0)
	expect(t, m, "ctagent_events_total", "type=failed", 1)
	expect(t, m, "ctagent_events_lost_total", "reason=ringbuf_full", 3)
	expect(t, m, "ctagent_bpf_program_run_count_total", "hook=kprobe/__nf_conntrack_confirm,program=kprobe_confirm", 10)
	expect(t, m, "ctagent_bpf_program_run_seconds_total", "hook=kprobe/__nf_conntrack_confirm,program=kprobe_confirm", 0.002)
	expect(t, m, "ctagent_scrape_errors_total", "source=sysctl", 0)
	if _, ok := m["ctagent_scrape_duration_seconds"][""]; !ok {
		t.Error("no ctagent_scrape_duration_seconds")
	}
	for s := range m["ctagent_build_info"] {
		if !strings.HasPrefix(s, "goversion=go") || !strings.HasSuffix(s, "revision=abc,version=1.2.3") {
			t.Errorf("ctagent_build_info{%s}", s)
		}
	}

	// Every family in the doc is what the registry knows, and back.
	for name := range m {
		if !strings.Contains(Markdown(), "`"+name+"`") {
			t.Errorf("%s is not in the docs", name)
		}
	}
}

func TestShortReason(t *testing.T) {
	for in, want := range map[string]string{
		"eBPF backend: not implemented yet":            "not implemented yet",
		"load: program x: operation not supported\nxx": "operation not supported",
		"":                      "unknown",
		"plain reason":          "plain reason",
		strings.Repeat("é", 40): strings.Repeat("é", 32),
	} {
		if got := shortReason(in); got != want {
			t.Errorf("shortReason(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestKernelStatsTimeout(t *testing.T) {
	f := newFixture(t, Options{KernelStatsTimeout: 50 * time.Millisecond})
	f.ns.setList(1)
	release := make(chan struct{})
	defer close(release)
	f.e.readStats = func(tracer.Namespace) (tracer.KernelStats, error) {
		<-release
		return tracer.KernelStats{}, nil
	}
	f.refresh() // kernel statistics are read for namespaces Run tracks
	start := time.Now()
	m := f.scrape(t)
	if d := time.Since(start); d > time.Second {
		t.Errorf("scrape took %v with a hung read", d)
	}
	expect(t, m, "ctagent_scrape_errors_total", "source=kernel_stats", 1)
	absent(t, m, "ctagent_conntrack_kernel_entries", "netns=1")
	// The hung read is still running: the next scrape does not start
	// another.
	m = f.scrape(t)
	expect(t, m, "ctagent_scrape_errors_total", "source=kernel_stats", 2)
}

func expect(t *testing.T, m map[string]map[string]float64, name, labels string, want float64) {
	t.Helper()
	labels = canon(labels)
	got, ok := m[name][labels]
	if !ok {
		t.Errorf("%s{%s}: missing; have %v", name, labels, keys(m[name]))
		return
	}
	if got != want {
		t.Errorf("%s{%s} = %v, want %v", name, labels, got, want)
	}
}

func absent(t *testing.T, m map[string]map[string]float64, name, labels string) {
	t.Helper()
	labels = canon(labels)
	if v, ok := m[name][labels]; ok {
		t.Errorf("%s{%s} = %v, want no series", name, labels, v)
	}
}

func keys(m map[string]float64) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// canon sorts the pairs of "a=1,b=2" as sig does.
func canon(labels string) string {
	if labels == "" {
		return ""
	}
	parts := strings.Split(labels, ",")
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// hasNetns reports whether any series has netns=v.
func hasNetns(m map[string]map[string]float64, v string) bool {
	for _, ss := range m {
		for s := range ss {
			for _, kv := range strings.Split(s, ",") {
				if kv == "netns="+v {
					return true
				}
			}
		}
	}
	return false
}

func TestRunDumpsNewNamespacesAndReconciles(t *testing.T) {
	f := newFixture(t, Options{RescanInterval: 20 * time.Millisecond, ReconcileInterval: 100 * time.Millisecond})
	f.ns.setList(1)
	f.tables.set(1, udpEntry(unix.AF_INET, 0))
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.e.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()

	// A namespace appears: Run dumps it without waiting for reconciliation.
	f.tables.set(2, udpEntry(unix.AF_INET6, 0), udpEntry(unix.AF_INET6, 0))
	f.ns.setList(1, 2)
	waitFor(t, func() bool {
		_, ok := f.scrape(t)["ctagent_conntrack_entries"][canon("family=ipv6,netns=2,protocol=udp")]
		return ok
	})
	m := f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv6,netns=2,protocol=udp", 2)

	// Namespace 1's table changes behind the counters' back: the periodic
	// reconciliation finds out.
	f.tables.set(1)
	waitFor(t, func() bool {
		return f.scrape(t)["ctagent_reconcile_corrections_total"]["netns=1"] == 1
	})
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=1,protocol=udp", 0)
	expect(t, m, "ctagent_reconcile_last_correction", "netns=1", -1)
	if _, ok := m["ctagent_reconcile_duration_seconds"][""]; !ok {
		t.Error("no ctagent_reconcile_duration_seconds after a reconciliation")
	}
}

func TestOwnNamespaceByDefault(t *testing.T) {
	self, err := selfNamespace()
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{Tracer: &fakeTracer{}})
	if err != nil {
		t.Fatal(err)
	}
	got := e.src.Namespaces()
	if len(got) != 1 || got[0].Inode != self.Inode || got[0].Path != "" {
		t.Errorf("default namespaces %+v, want the own one (%d)", got, self.Inode)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The bookkeeping of namespace lists: a list older than one observed
// already changes nothing; a namespace listed again after it left the
// source (an inode the kernel handed to a new namespace) has no table
// gauges until it is dumped again; one whose path changed is dumped again
// while its baseline stands.
func TestNamespaceListBookkeeping(t *testing.T) {
	f := newFixture(t, Options{})
	f.ns.setList(1, 2)
	f.tables.set(1, udpEntry(unix.AF_INET, 0))
	f.tables.set(2, udpEntry(unix.AF_INET, 0), udpEntry(unix.AF_INET, 0))
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	state := func(inode uint32) (listed, based, rebase bool) {
		f.e.mu.Lock()
		defer f.e.mu.Unlock()
		st := f.e.ns[inode]
		return st.listed, st.base != nil, st.rebase
	}
	observe := func(l listing) {
		f.e.mu.Lock()
		f.e.observeList(f.clock.now(), l)
		f.e.mu.Unlock()
	}
	older := f.e.listNamespaces() // taken before namespace 2 left
	f.ns.setList(1)
	observe(f.e.listNamespaces())
	if listed, _, _ := state(2); listed {
		t.Fatal("namespace 2 still listed")
	}
	observe(older)
	if listed, _, _ := state(2); listed {
		t.Error("an older list brought namespace 2 back")
	}

	// Inode 2 names a new namespace with one entry: no gauges from the old
	// baseline, then the new dump's.
	f.tables.set(2, udpEntry(unix.AF_INET6, 0))
	f.ns.setList(1, 2)
	observe(f.e.listNamespaces())
	if listed, based, _ := state(2); !listed || based {
		t.Errorf("namespace 2 listed again: listed %v, baseline kept %v; want listed, no baseline", listed, based)
	}
	absent(t, f.scrape(t), "ctagent_conntrack_entries", "family=ipv4,netns=2,protocol=udp")
	f.e.baselineNew(context.Background())
	m := f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv6,netns=2,protocol=udp", 1)
	absent(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=2,protocol=udp")

	// Namespace 1 is listed under another path: dumped again, its
	// baseline standing meanwhile.
	f.ns.mu.Lock()
	f.ns.list[0].Path = "/proc/4242/ns/net"
	f.ns.mu.Unlock()
	observe(f.e.listNamespaces())
	if _, based, rebase := state(1); !based || !rebase {
		t.Errorf("namespace 1 under a new path: baseline %v, dump asked %v; want both", based, rebase)
	}
	expect(t, f.scrape(t), "ctagent_conntrack_entries", "family=ipv4,netns=1,protocol=udp", 1)
}

// bookkeeping renders everything Run's work keeps, for comparison: the
// namespaces and their state, tombstones, the forget list, the fold
// counter, list numbering, the discovery map and requests, and what the
// tracer was told to forget.
func (f *fixture) bookkeeping() string {
	e := f.e
	var b strings.Builder
	e.mu.RLock()
	for _, inode := range slices.Sorted(maps.Keys(e.ns)) {
		st := e.ns[inode]
		fmt.Fprintf(&b, "ns %d: listed=%v path=%q lastSeen=%v activity=%d base=%p rebase=%v racy=%d rec=%p dumping=%v gonePath=%q placed=%v folded=%v id=%+v dumpedKeys=%v\n",
			inode, st.listed, st.path, st.lastSeen.UnixNano(), st.activity, st.base, st.rebase, st.racy, st.rec, st.dumping, st.gonePath,
			st.placed, st.folded, st.id, st.dumpedKeys)
	}
	fmt.Fprintf(&b, "tombs %v forget %v appliedSeq %d reconDone %v\n", e.tombs, e.forget, e.appliedSeq, e.reconDone)
	e.mu.RUnlock()
	fmt.Fprintf(&b, "foldedTotal %d listSeq %d kick %d wantRefresh %v\n", e.foldedTotal.Load(), e.listSeq.Load(), len(e.kick), e.wantRefresh.Load())
	var known []string
	e.known.Range(func(k, v any) bool {
		known = append(known, fmt.Sprintf("%d:%d", k, v))
		return true
	})
	slices.Sort(known)
	fmt.Fprintf(&b, "known %v\n", known)
	f.tr.mu.Lock()
	fmt.Fprintf(&b, "forgotten %v\n", f.tr.forgotten)
	f.tr.mu.Unlock()
	return b.String()
}

// Collect only reads: however many scrapes, with the clock past
// StaleAfter, namespaces come and gone and counters moved, the exporter's
// bookkeeping stays as Run left it, and nothing is asked of Run; scrapes
// show what they read (counters of a namespace Run does not track yet,
// table gauges gone with the namespace) on top of it. Only a refresh, as
// Run does, expires, tracks, places and asks for discovery.
func TestCollectOnlyReads(t *testing.T) {
	f := newFixture(t, Options{StaleAfter: time.Minute, MaxNamespaces: 2, Labels: []string{"netns_name"}})
	const big, mid, gone, small, fresh, unlisted = 1, 2, 3, 4, 5, 6
	f.ns.setList(big, mid, gone, small)
	for ns, n := range map[uint32]int{big: 3, mid: 2, gone: 1, small: 0} {
		es := make([]tracer.Entry, n)
		for i := range es {
			es[i] = udpEntry(unix.AF_INET, 0)
		}
		f.tables.set(ns, es...)
		f.ns.ids[ns] = netns.Identity{Name: fmt.Sprintf("ns%d", ns)}
		f.tr.set(key(ns, unix.AF_INET, unix.IPPROTO_UDP), 1, 0)
	}
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	m := f.scrape(t)
	expect(t, m, "ctagent_namespaces_folded", "", 2)
	expect(t, m, "ctagent_namespaces_folded_total", "", 2)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=overflow,netns_name=,protocol=udp", 1)

	// What a scrape used to book: gone leaves the source, fresh joins it,
	// unlisted has counters only, small grows past everyone, and the
	// clock passes StaleAfter.
	f.ns.setList(big, mid, small, fresh)
	f.ns.ids[fresh] = netns.Identity{Name: "fresh"}
	f.tables.set(fresh, udpEntry(unix.AF_INET, 0))
	f.tr.set(key(fresh, unix.AF_INET, unix.IPPROTO_UDP), 2, 0)
	f.tr.set(key(unlisted, unix.AF_INET6, unix.IPPROTO_UDP), 7, 0)
	f.tr.set(key(small, unix.AF_INET, unix.IPPROTO_UDP), 11, 0)
	f.clock.advance(2 * time.Minute)
	before := f.bookkeeping()
	lookups := f.ns.lookups
	for i := range 5 {
		m = f.scrape(t)
		if got := f.bookkeeping(); got != before {
			t.Fatalf("scrape %d changed the bookkeeping:\nbefore:\n%s\nafter:\n%s", i+1, before, got)
		}
		expect(t, m, "ctagent_namespaces_folded_total", "", 2)
	}
	if n := f.ns.lookups - lookups; n != 5*2 {
		t.Errorf("%d identity lookups in 5 scrapes, want 10 (big and mid, listed and kept)", n)
	}
	// Run's placement stands: big and mid keep their series, the rest is
	// folded, small with its 10 new entries too.
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=1,netns_name=ns1,protocol=udp", 3)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=2,netns_name=ns2,protocol=udp", 2)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=overflow,netns_name=,protocol=udp", 10) // small; gone left, fresh not dumped
	expect(t, m, "ctagent_conntrack_created_total", "family=ipv4,netns=overflow,netns_name=,protocol=udp", 1+11+2)
	expect(t, m, "ctagent_conntrack_created_total", "family=ipv6,netns=overflow,netns_name=,protocol=udp", 7)
	expect(t, m, "ctagent_conntrack_kernel_entries", "netns=overflow,netns_name=", small) // gone left, fresh not tracked
	expect(t, m, "ctagent_namespaces", "", 6)
	expect(t, m, "ctagent_namespaces_folded", "", 4)

	// Run's rescan: gone expires (the tracer forgets it), fresh and
	// unlisted are tracked, discovery is asked for unlisted, and small
	// displaces mid.
	f.refresh()
	f.e.baselineNew(context.Background()) // fresh is dumped
	f.e.mu.RLock()
	_, tracked := f.e.ns[gone]
	_, tomb := f.e.tombs[gone]
	nFresh, nUnlisted := f.e.ns[fresh], f.e.ns[unlisted]
	f.e.mu.RUnlock()
	if tracked || !tomb {
		t.Errorf("after a refresh: gone tracked %v, tombstone %v; want expired", tracked, tomb)
	}
	if nFresh == nil || nUnlisted == nil {
		t.Errorf("after a refresh: fresh tracked %v, unlisted tracked %v; want both", nFresh != nil, nUnlisted != nil)
	}
	if !slices.Contains(f.tr.forgotten, gone) {
		t.Errorf("tracer told to forget %v, want %d", f.tr.forgotten, gone)
	}
	if len(f.e.kick) != 1 {
		t.Error("no discovery asked for the unlisted namespace")
	}
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=4,netns_name=ns4,protocol=udp", 10)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=1,netns_name=ns1,protocol=udp", 3)
	absent(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=2,netns_name=ns2,protocol=udp")
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=overflow,netns_name=,protocol=udp", 2+1) // mid, fresh
	expect(t, m, "ctagent_namespaces", "", 5)
	expect(t, m, "ctagent_namespaces_folded", "", 3)
	expect(t, m, "ctagent_namespaces_folded_total", "", 2+3) // and now mid, unlisted, fresh
}

// Without a cap, a namespace the source lists before Run tracks it has
// its own series at once (counters, identity), its kernel statistics once
// Run tracks it; scrapes run concurrently with Run's work (for -race).
func TestCollectBeforeRefresh(t *testing.T) {
	f := newFixture(t, Options{Labels: []string{"netns_name"}, RescanInterval: time.Millisecond})
	f.ns.setList(1)
	f.tables.set(1)
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.ns.mu.Lock()
	f.ns.list = append(f.ns.list, netns.Namespace{Inode: 2})
	f.ns.ids[2] = netns.Identity{Name: "two"}
	f.ns.mu.Unlock()
	f.tables.set(2, udpEntry(unix.AF_INET, 0))
	f.tr.set(key(2, unix.AF_INET, unix.IPPROTO_UDP), 1, 0)
	m := f.scrape(t)
	expect(t, m, "ctagent_conntrack_created_total", "family=ipv4,netns=2,netns_name=two,protocol=udp", 1)
	absent(t, m, "ctagent_conntrack_kernel_entries", "netns=2,netns_name=two")
	absent(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=2,netns_name=two,protocol=udp")
	expect(t, m, "ctagent_namespaces", "", 2)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { f.e.Run(ctx) })
	for i := range 50 {
		if i%10 == 0 {
			f.e.Discover()
		}
		f.tr.set(key(1, unix.AF_INET, unix.IPPROTO_UDP), uint64(i), 0)
		f.scrape(t)
	}
	waitFor(t, func() bool { return f.e.hasBaseline(2) })
	cancel()
	wg.Wait()
	m = f.scrape(t)
	expect(t, m, "ctagent_conntrack_kernel_entries", "netns=2,netns_name=two", 2)
	expect(t, m, "ctagent_conntrack_entries", "family=ipv4,netns=2,netns_name=two,protocol=udp", 1)
}
