package metrics

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// The single source of truth for every metric the Exporter exports: Collect
// builds its descriptors from defs, and Markdown renders docs/metrics.md
// from the same table.

const (
	labelNetns = "netns"
	// overflowNetns is the netns label value of the series into which
	// namespaces beyond Options.MaxNamespaces are folded.
	overflowNetns = "overflow"
)

type metricKind uint8

const (
	kindCounter metricKind = iota
	kindGauge
	kindHistogram
)

func (k metricKind) String() string {
	switch k {
	case kindCounter:
		return "counter"
	case kindGauge:
		return "gauge"
	}
	return "histogram"
}

func (k metricKind) valueType() prometheus.ValueType {
	if k == kindCounter {
		return prometheus.CounterValue
	}
	return prometheus.GaugeValue
}

// metricDef describes one metric family.
type metricDef struct {
	name   string
	kind   metricKind
	help   string
	perNS  bool     // labelled netns and the configured identity labels first
	labels []string // further labels
	notes  string   // label values and cardinality, for the docs
	// daemon: exported by a collector of its own that the daemon runs
	// from its start, before a tracer does (see ModuleCollector), not by
	// the Exporter.
	daemon bool
}

// Indexes into defs. Kernel statistics follow from mKernelStat on.
const (
	mEntries = iota
	mEntriesByState
	mEntriesUnreplied
	mEntriesAssured
	mCreated
	mDestroyed
	mInsertFailed
	mLifetime
	mKernelEntries
	mReconcileCorrections
	mReconcileLastCorrection
	mReconcileLastTimestamp
	mLimit
	mBuckets
	mBuildInfo
	mTracerInfo
	mTracerRefused
	mTracerHooks
	mTracerHookActive
	mEvents
	mEventsLost
	mProgramRunCount
	mProgramRunSeconds
	mScrapeDuration
	mScrapeErrors
	mKernelStatsAge
	mReconcileDuration
	mReconcileErrors
	mNamespaces
	mNamespacesFolded
	mNamespacesFoldedTotal
	mConntrackModule
	mKernelStat // first of len(kernelStats)
)

const (
	notesFamProto = "family: ipv4, ipv6; protocol: tcp, udp, icmp, icmpv6, sctp, gre, dccp, udplite or other:N. " +
		"One series per family and protocol seen in the namespace; once there, it stays while the namespace does."
	notesDump = "As of the last table dump (see ctagent_reconcile_last_timestamp_seconds)."
	notesGone = "A namespace found gone when it is read (its process exited, or its name was deleted, since the last scan) is not an error."
)

// kernelStats are the kernel's per-namespace conntrack statistics, exported
// as ctagent_conntrack_kernel_stat_<name>_total.
var kernelStats = []struct {
	name, help string
	get        func(*tracer.KernelStats) uint64
}{
	{"found", "kept for older kernels; current ones leave it at 0.", func(s *tracer.KernelStats) uint64 { return s.Found }},
	{"invalid", "packets conntrack could not track.", func(s *tracer.KernelStats) uint64 { return s.Invalid }},
	{"insert", "kept for older kernels; current ones leave it at 0.", func(s *tracer.KernelStats) uint64 { return s.Insert }},
	{"insert_failed", "entries that could not be inserted at confirm; the packet was dropped.", func(s *tracer.KernelStats) uint64 { return s.InsertFailed }},
	{"drop", "packets dropped because the table was full and no entry could be evicted.", func(s *tracer.KernelStats) uint64 { return s.Drop }},
	{"early_drop", "entries evicted to make room in a full table.", func(s *tracer.KernelStats) uint64 { return s.EarlyDrop }},
	{"error", "packets a protocol tracker rejected as erroneous.", func(s *tracer.KernelStats) uint64 { return s.Error }},
	{"search_restart", "table lookups restarted because the chain changed under them.", func(s *tracer.KernelStats) uint64 { return s.SearchRestart }},
	{"clash_resolve", "insert clashes resolved by using the entry another CPU inserted first (0 on kernels without it).", func(s *tracer.KernelStats) uint64 { return s.ClashResolve }},
	{"chain_toolong", "inserts refused because a hash chain was too long (0 on kernels without it).", func(s *tracer.KernelStats) uint64 { return s.ChainTooLong }},
}

// defs is the metric table, indexed by the m* constants.
var defs = buildDefs()

func buildDefs() []metricDef {
	d := make([]metricDef, mKernelStat, mKernelStat+len(kernelStats))
	d[mEntries] = metricDef{
		name: "ctagent_conntrack_entries", kind: kindGauge, perNS: true, labels: []string{"family", "protocol"},
		help: "Conntrack entries in the table, by family and protocol: the last table dump plus entries created minus entries destroyed since.",
		notes: notesFamProto + " Only for namespaces the namespace source lists and that were dumped at least once; " +
			"a namespace leaves the source when it is gone, and its entries series leave with it.",
	}
	d[mEntriesByState] = metricDef{
		name: "ctagent_conntrack_entries_by_state", kind: kindGauge, perNS: true, labels: []string{"state"},
		help:  "TCP conntrack entries by TCP conntrack state, as of the last table dump.",
		notes: "state: syn_sent, syn_recv, established, fin_wait, close_wait, last_ack, time_wait, close, syn_sent2 (all nine, zeros included, once the namespace's last dump found a TCP entry; none for a namespace without TCP entries, where they would be nine zero series each), none or other:N (only when seen). " + notesDump,
	}
	d[mEntriesUnreplied] = metricDef{
		name: "ctagent_conntrack_entries_unreplied", kind: kindGauge, perNS: true,
		help:  "Conntrack entries that have not seen a reply (IPS_SEEN_REPLY unset), as of the last table dump.",
		notes: notesDump,
	}
	d[mEntriesAssured] = metricDef{
		name: "ctagent_conntrack_entries_assured", kind: kindGauge, perNS: true,
		help:  "Conntrack entries marked assured (IPS_ASSURED: not evicted early when the table is full), as of the last table dump.",
		notes: notesDump,
	}
	d[mCreated] = metricDef{
		name: "ctagent_conntrack_created_total", kind: kindCounter, perNS: true, labels: []string{"family", "protocol"},
		help:  "Conntrack entries confirmed into the table since the tracer started.",
		notes: notesFamProto + " Also for namespaces that cannot be dumped.",
	}
	d[mDestroyed] = metricDef{
		name: "ctagent_conntrack_destroyed_total", kind: kindCounter, perNS: true, labels: []string{"family", "protocol"},
		help:  "Confirmed conntrack entries removed from the table since the tracer started.",
		notes: notesFamProto + " Also for namespaces that cannot be dumped.",
	}
	d[mInsertFailed] = metricDef{
		name: "ctagent_conntrack_insert_failed_total", kind: kindCounter, perNS: true, labels: []string{"family", "protocol", "reason"},
		help: "Conntrack entries that could not be created or inserted, by reason.",
		notes: "reason: clash_resolved, confirm_drop, table_full, exists, no_space, other (see the tracer's FailReason). " +
			"family and protocol as above, or unspec where the tracer cannot tell (the netlink backend takes failures from the kernel's per-namespace statistics). " +
			"A series appears with its first failure.",
	}
	d[mLifetime] = metricDef{
		name: "ctagent_conntrack_lifetime_seconds", kind: kindHistogram, perNS: true, labels: []string{"family", "protocol"},
		help: "Lifetime of destroyed conntrack entries whose creation the tracer saw, from confirmation to removal.",
		notes: notesFamProto + " Buckets: 0.001 s doubling up to " +
			strconv.FormatFloat(tracer.LifetimeBucketBound(tracer.NumLifetimeBuckets-2), 'f', -1, 64) + " s, then +Inf.",
	}
	d[mKernelEntries] = metricDef{
		name: "ctagent_conntrack_kernel_entries", kind: kindGauge, perNS: true,
		help:  "Conntrack entries in the table as the kernel counts them (nf_conntrack_count), read at scrape time or, netlink backend, in the background (ctagent_conntrack_kernel_stats_age_seconds).",
		notes: "Only for namespaces the namespace source lists.",
	}
	d[mReconcileCorrections] = metricDef{
		name: "ctagent_reconcile_corrections_total", kind: kindCounter, perNS: true,
		help:  "Sum of the absolute corrections of ctagent_conntrack_entries made by table dumps: entries the event counters had missed or counted twice.",
		notes: "Only for namespaces that were dumped at least once.",
	}
	d[mReconcileLastCorrection] = metricDef{
		name: "ctagent_reconcile_last_correction", kind: kindGauge, perNS: true,
		help:  "Signed correction of ctagent_conntrack_entries made by the last table dump: dumped minus predicted entries.",
		notes: "Only for namespaces that were dumped at least once.",
	}
	d[mReconcileLastTimestamp] = metricDef{
		name: "ctagent_reconcile_last_timestamp_seconds", kind: kindGauge, perNS: true,
		help:  "Unix time of the last table dump of the namespace, the one the by-state, assured and unreplied gauges come from.",
		notes: "Only for namespaces that were dumped at least once. For netns=\"overflow\", the oldest.",
	}
	d[mLimit] = metricDef{
		name: "ctagent_conntrack_limit", kind: kindGauge,
		help:  "Maximum number of conntrack entries (net.netfilter.nf_conntrack_max).",
		notes: "One series; none if the sysctl does not exist.",
	}
	d[mBuckets] = metricDef{
		name: "ctagent_conntrack_buckets", kind: kindGauge,
		help:  "Size of the conntrack hash table (net.netfilter.nf_conntrack_buckets).",
		notes: "One series; none if the sysctl does not exist.",
	}
	d[mBuildInfo] = metricDef{
		name: "ctagent_build_info", kind: kindGauge, labels: []string{"version", "revision", "goversion"},
		help:  "Always 1; the labels say which ctagent build runs.",
		notes: "One series.",
	}
	d[mTracerInfo] = metricDef{
		name: "ctagent_tracer_info", kind: kindGauge, labels: []string{"backend", "ring_buffer", "kernel"},
		help:  "Always 1; the labels say which tracer backend runs, whether it uses a BPF ring buffer, and the kernel release.",
		notes: "One series. backend: fentry, kprobe or netlink; ring_buffer: true or false (false for netlink).",
	}
	d[mTracerRefused] = metricDef{
		name: "ctagent_tracer_backend_refused", kind: kindGauge, labels: []string{"backend", "reason"},
		help:  "Always 1; a tracer backend that was tried before the running one, and why it was refused: no_btf, permission_denied, not_supported, symbol_not_found, verifier_rejected, self_test_failed (it attached, but no candidate hook saw every event of a kind), unavailable or error (the full error is logged at start).",
		notes: "At most one series per backend; reason is at most 64 characters.",
	}
	d[mTracerHooks] = metricDef{
		name: "ctagent_tracer_hooks", kind: kindGauge, labels: []string{"hook"},
		help:  "Always 1; a kernel hook the tracer attached to.",
		notes: "One series per attached hook, e.g. fexit/__nf_conntrack_confirm.",
	}
	d[mTracerHookActive] = metricDef{
		name: "ctagent_tracer_hook_active", kind: kindGauge, labels: []string{"group", "hook", "self_test"},
		help: "1 for the candidate hook that serves each group of events (confirm: created, clash_resolved, confirm_drop; ctnetlink_insert: created, exists, no_space, other; " +
			"destroy: destroyed; alloc: table_full), 0 for the other candidates of the group on this kernel. self_test says what the start-up self-test found: " +
			"passed, missed (it saw fewer or more events than the kernel made, so the next candidate was tried), not_tested (the self-test cannot make these events, or could not run), " +
			"attach_failed, unavailable (this kernel has no such function) or standby (loaded, a better candidate passed). eBPF backends only.",
		notes: "At most about 10 series: one per candidate hook. Alert on an active hook that is not_tested outside group alloc: it is attached but unproven.",
	}
	d[mEvents] = metricDef{
		name: "ctagent_events_total", kind: kindCounter, labels: []string{"type"},
		help:  "Conntrack events the tracer counted, by type, over every namespace (forgotten ones included).",
		notes: "type: created, destroyed, failed. The sums of the tracer's counters (in the kernel for eBPF): no event reaches user space to be counted. Missing from a scrape whose counters read failed (see ctagent_scrape_errors_total).",
	}
	d[mEventsLost] = metricDef{
		name: "ctagent_events_lost_total", kind: kindCounter, labels: []string{"reason"},
		help:  "Tracer events or counter updates lost, by reason.",
		notes: "reason: ringbuf_full, perf_full, counters_full, inflight_miss, perf_lost, decode_error, channel_full, netlink_enobufs; as the tracer reports them.",
	}
	d[mProgramRunCount] = metricDef{
		name: "ctagent_bpf_program_run_count_total", kind: kindCounter, labels: []string{"program", "hook"},
		help:  "Runs of an attached eBPF program (0 with --tracer.bpf-stats=false, or on kernels before 5.8).",
		notes: "One series per attached program; none for the netlink backend.",
	}
	d[mProgramRunSeconds] = metricDef{
		name: "ctagent_bpf_program_run_seconds_total", kind: kindCounter, labels: []string{"program", "hook"},
		help:  "Time spent running an attached eBPF program (0 with --tracer.bpf-stats=false, or on kernels before 5.8).",
		notes: "One series per attached program; none for the netlink backend.",
	}
	d[mScrapeDuration] = metricDef{
		name: "ctagent_scrape_duration_seconds", kind: kindGauge,
		help:  "Time this scrape took to collect the metrics before this one.",
		notes: "One series.",
	}
	d[mScrapeErrors] = metricDef{
		name: "ctagent_scrape_errors_total", kind: kindCounter, labels: []string{"source"},
		help:  "Errors reading a source of metrics at scrape time; the metrics of that source are missing from that scrape.",
		notes: "source: " + strings.Join(scrapeSources[:], ", ") + ". " + notesGone,
	}
	d[mKernelStatsAge] = metricDef{
		name: "ctagent_conntrack_kernel_stats_age_seconds", kind: kindGauge,
		help:  "Age of the oldest kernel statistics (ctagent_conntrack_kernel_entries, ctagent_conntrack_kernel_stat_*) in this scrape: about 0 when read by the scrape, up to --tracer.netlink-stats-interval plus one pass when the netlink backend reads them in the background.",
		notes: "One series, present when a namespace's kernel statistics were read.",
	}
	d[mReconcileDuration] = metricDef{
		name: "ctagent_reconcile_duration_seconds", kind: kindGauge,
		help:  "Time the last reconciliation pass (a table dump of every namespace) took.",
		notes: "One series, present after the first pass.",
	}
	d[mReconcileErrors] = metricDef{
		name: "ctagent_reconcile_errors_total", kind: kindCounter,
		help:  "Table dumps that failed; the namespace keeps its previous baseline.",
		notes: "One series. " + notesGone,
	}
	d[mNamespaces] = metricDef{
		name: "ctagent_namespaces", kind: kindGauge,
		help:  "Network namespaces tracked: listed by the namespace source, or with counter changes within the stale period.",
		notes: "One series.",
	}
	d[mNamespacesFolded] = metricDef{
		name: "ctagent_namespaces_folded", kind: kindGauge,
		help:  "Network namespaces beyond the namespace limit, folded into netns=\"overflow\" in this scrape.",
		notes: "One series.",
	}
	d[mNamespacesFoldedTotal] = metricDef{
		name: "ctagent_namespaces_folded_total", kind: kindCounter,
		help:  "Times a network namespace was folded into netns=\"overflow\" after having its own series or none yet.",
		notes: "One series.",
	}
	d[mConntrackModule] = metricDef{
		name: "ctagent_conntrack_module_loaded", kind: kindGauge, daemon: true,
		help: "1 when the kernel's conntrack (nf_conntrack) is loaded or built in; 0 while ctagent waits for it: " +
			"it attaches as soon as the module is loaded, by itself where it may (--conntrack.load-modules) or by " +
			"whatever loads it later (a firewall, kube-proxy, Docker). /readyz says 503 meanwhile.",
		notes: "One series, from the start on, also while no tracer runs; read at scrape time (/sys/module/nf_conntrack).",
	}
	for _, s := range kernelStats {
		d = append(d, metricDef{
			name: "ctagent_conntrack_kernel_stat_" + s.name + "_total", kind: kindCounter, perNS: true,
			help:  "Kernel conntrack statistic " + s.name + " (conntrack -S, summed over CPUs, read at scrape time or, netlink backend, in the background): " + s.help,
			notes: "Only for namespaces the namespace source lists. The kernel keeps these as 32-bit counters per CPU; ctagent adds each CPU's change, so the sum does not step back when one wraps.",
		})
	}
	return d
}

// Sources of ctagent_scrape_errors_total.
const (
	srcCounters    = "counters"
	srcLost        = "lost"
	srcPrograms    = "programs"
	srcKernelStats = "kernel_stats"
	srcSysctl      = "sysctl"
	numSources     = 5
)

var scrapeSources = [numSources]string{srcCounters, srcLost, srcPrograms, srcKernelStats, srcSysctl}

func sourceIndex(s string) int {
	for i, n := range scrapeSources {
		if n == s {
			return i
		}
	}
	panic("unknown scrape error source " + s)
}

// Identity labels: values come from Namespaces.Lookup.
const (
	LabelNetnsName    = "netns_name"
	LabelPod          = "pod"
	LabelPodNamespace = "pod_namespace"
	LabelContainer    = "container"
	LabelComm         = "comm"
)

// IdentityLabels are the label names Options.Labels accepts, in the order
// they appear on series.
var IdentityLabels = []string{LabelNetnsName, LabelPod, LabelPodNamespace, LabelContainer, LabelComm}

// PodLabelPrefix starts the metric label name of each pod label key in
// Options.PodLabels.
const PodLabelPrefix = "pod_label_"

// PodLabelName returns the metric label name of a Kubernetes pod label key:
// PodLabelPrefix, then the key with every character other than an ASCII
// letter, digit or underscore replaced by an underscore, as
// kube-state-metrics does: "app.kubernetes.io/name" becomes
// "pod_label_app_kubernetes_io_name". The result is always a valid
// Prometheus label name.
func PodLabelName(key string) string {
	var b strings.Builder
	b.Grow(len(PodLabelPrefix) + len(key))
	b.WriteString(PodLabelPrefix)
	for _, r := range key {
		if r == '_' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// PodLabelNames returns PodLabelName of each key, in order. An empty key,
// and two keys with the same name ("app.kubernetes.io/name" and
// "app_kubernetes_io/name", or one key twice), are an error: one label
// cannot carry two values.
func PodLabelNames(keys []string) ([]string, error) {
	names := make([]string, len(keys))
	byName := make(map[string]string, len(keys))
	for i, k := range keys {
		if k == "" {
			return nil, errors.New("empty pod label key")
		}
		n := PodLabelName(k)
		if other, ok := byName[n]; ok {
			if other == k {
				return nil, fmt.Errorf("pod label key %q given twice", k)
			}
			return nil, fmt.Errorf("pod label keys %q and %q both become the label %s", other, k, n)
		}
		byName[n] = k
		names[i] = n
	}
	return names, nil
}

func identityLabel(id *netns.Identity, name string) string {
	switch name {
	case LabelNetnsName:
		return id.Name
	case LabelPod:
		return id.Pod
	case LabelPodNamespace:
		return id.PodNamespace
	case LabelContainer:
		return id.ContainerID
	case LabelComm:
		return id.Comm
	}
	return ""
}

// TCP conntrack states (enum tcp_conntrack). The named states from syn_sent
// to syn_sent2 are always exported; none and unknown ones when seen.
const (
	tcpStateNone     = 0
	tcpStateSynSent2 = 9
)

var tcpStateNames = [...]string{"none", "syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack", "time_wait", "close", "syn_sent2"}

func tcpStateName(s uint8) string {
	if int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return "other:" + strconv.Itoa(int(s))
}

// Conntrack status bits (enum ip_conntrack_status).
const (
	ipsSeenReply = 1 << 1
	ipsAssured   = 1 << 2
)
