package metrics

import (
	"fmt"
	"strings"
	"time"
)

// Markdown returns the metrics reference, docs/metrics.md. It is rendered
// from the metric table that Collect builds its descriptors from, so the
// two cannot disagree; TestMetricsDocUpToDate fails when the file is stale
// and rewrites it with -update.
func Markdown() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# Metrics\n\n")
	w("<!-- Generated from pkg/metrics/defs.go by `go test ./pkg/metrics -run TestMetricsDocUpToDate -update`. Do not edit. -->\n\n")
	w("ctagent exports these metrics at `/metrics`. Counters end in `_total`; times are in seconds.\n\n")

	w("## Per-namespace labels\n\n")
	w("Metrics marked *per namespace* carry, first, these labels:\n\n")
	w("- `netns`: the inode number of the network namespace in decimal, as in `ls -Li /proc/PID/ns/net`; " +
		"or `overflow` for the namespaces folded together beyond the namespace limit.\n")
	w("- the identity labels chosen in the configuration (`--metrics.labels`), in this order, any of:\n")
	for _, l := range IdentityLabels {
		w("  - `%s`: %s\n", l, identityLabelDocs[l])
	}
	w("- then a `%s<key>` label for each Kubernetes pod label key chosen in the configuration "+
		"(`--kubernetes.pod-labels`), in the order given: the value of that label on the pod that owns the namespace. "+
		"The key is made a valid label name by replacing each character other than a letter, digit or underscore "+
		"with `_`: `app.kubernetes.io/name` becomes `%s`. Keys that become the same name are refused.\n",
		PodLabelPrefix, PodLabelName("app.kubernetes.io/name"))
	w("\n*identity* in the reference below stands for both. They are looked up at scrape time, not per event. " +
		"A namespace whose owner is unknown, and the `overflow` series, have them empty; so do the pod labels " +
		"of a namespace that belongs to no pod (or whose pod lacks the label, or was deleted), and all of them " +
		"where ctagent runs without Kubernetes.\n\n")

	w("## Cardinality\n\n")
	w("Each namespace has its own series. With the namespace limit set, only the namespaces with the most " +
		"entries (ties: lower inode first) keep theirs; the others are summed into `netns=\"overflow\"` and " +
		"counted in `ctagent_namespaces_folded`. Which ones keep theirs is decided at each namespace rescan " +
		"and after each table dump, not by scrapes; a namespace that appeared since takes a free place, if any. Summed counters of the overflow series can decrease when a " +
		"namespace moves in or out of it.\n\n")
	w("A namespace with one UDP entry has 17 series: the entry gauge of each family and protocol it has, " +
		"the assured and unreplied gauges, three `ctagent_reconcile_*` series, and the kernel's entry count and " +
		"ten statistics counters; the created and destroyed counters and the lifetime histogram (16 series) " +
		"once it has events of a family and protocol. The nine `ctagent_conntrack_entries_by_state` series appear " +
		"only once a dump found a TCP entry in the namespace (then all nine, zeros included): at 1,000 namespaces " +
		"without TCP they would be 9,000 zero series. The kernel statistics stay even when zero: they are " +
		"counters, and a counter that appears only at its first increase hides that increase from `rate()`.\n\n")
	w("Identity labels and pod labels add no series: a namespace has one value of each at a time, so it has " +
		"as many series with all of them as with none. They add churn when a value changes while the namespace " +
		"lives (its lowest-PID process changes, its pod is deleted, a pod label is edited with `kubectl label`): " +
		"its series end and new ones begin. And each adds its bytes to every per-namespace series. Choose pod " +
		"label keys with few, short values that pods keep for their life (`app`, `team`), not keys that repeat " +
		"what `pod` already says (`statefulset.kubernetes.io/pod-name`).\n\n")
	w("A namespace that left the namespace source (it no longer exists) loses its table gauges "+
		"(`ctagent_conntrack_entries*`, `ctagent_conntrack_kernel_*`, `ctagent_reconcile_*`) at once, and its counters "+
		"at the first namespace rescan after they have not changed for the stale period (default %s).\n\n", durationDoc(DefaultStaleAfter))

	w("## Entry counts\n\n")
	w("`ctagent_conntrack_entries` costs no work per event: each namespace's table is dumped once "+
		"(at start, or as soon as the namespace appears: its name's mount or, with eBPF, its first counters (read every second) announce it, "+
		"so its entries are there at the next scrape), and at scrape time the entries are that dump's count plus the "+
		"entries created minus the entries destroyed since, from the tracer's counters. A table dump every "+
		"reconciliation interval (default %v) sets a new baseline; the difference between the dump and the "+
		"prediction is exported as `ctagent_reconcile_last_correction` and accumulates in "+
		"`ctagent_reconcile_corrections_total`. The by-state, assured and unreplied gauges come from the last dump "+
		"only. `ctagent_conntrack_kernel_entries` is the kernel's own count, read at scrape time.\n\n",
		durationDoc(DefaultReconcileInterval))
	w("A table dump walks the kernel's whole conntrack hash table, which all namespaces share (about 10 ms with "+
		"262,144 buckets), whatever the namespace holds. So the reconciliation does not dump a namespace where nothing "+
		"changed: no entry created or destroyed since its last dump, and the kernel's entry count equal to that "+
		"dump's; but it dumps each namespace at least every %d reconciliations, since entries change TCP state, "+
		"and become assured or replied, without an event (`ctagent_reconcile_last_timestamp_seconds` says when). "+
		"At start, the namespaces not dumped within 2 s are dumped in the background after `/readyz` turns 200: "+
		"until then they have their counters and kernel statistics, and no entry gauges.\n\n", reconcileMaxSkips+1)

	w("## Reference\n\n")
	w("| Metric | Type | Labels | Help | Label values and cardinality |\n")
	w("| --- | --- | --- | --- | --- |\n")
	for _, d := range defs {
		var labels []string
		if d.perNS {
			labels = append(labels, "`netns`", "*identity*")
		}
		for _, l := range d.labels {
			labels = append(labels, "`"+l+"`")
		}
		scope := "Global"
		if d.perNS {
			scope = "Per namespace"
		}
		w("| `%s` | %s | %s | %s | %s %s |\n", d.name, d.kind, orDash(strings.Join(labels, ", ")),
			cell(d.help), scope+".", cell(d.notes))
	}
	return b.String()
}

var identityLabelDocs = map[string]string{
	LabelNetnsName:    "the namespace's name, e.g. under /var/run/netns.",
	LabelPod:          "the Kubernetes pod that owns the namespace.",
	LabelPodNamespace: "the Kubernetes namespace of that pod.",
	LabelContainer:    "the ID of a container in the namespace.",
	LabelComm:         "the command name of a process in the namespace.",
}

// durationDoc formats d without zero units: 60s, 5m.
func durationDoc(d time.Duration) string {
	switch {
	case d <= time.Minute && d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	case d < time.Hour && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
