package api

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ctagent/ctagent/pkg/eventjson"
)

// FormatEntry is e as conntrack -L -o extended prints it, then the owner:
//
//	ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=40000 [ASSURED] mark=0 zone=0 netns=4026532571 netns_name=blue
//
// The owner fields are key=value tokens (netns, netns_name, host_netns,
// pod, container, comm), values quoted when they hold a space.
func FormatEntry(e eventjson.Entry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %d %-8s %d %d", e.Family, familyNumber(e.Family), e.Protocol, protocolNumberOr(e.Protocol), e.Timeout)
	if e.TCPState != "" {
		b.WriteString(" " + e.TCPState)
	}
	writeTuples(&b, e.Original, e.Reply, e.Status)
	fmt.Fprintf(&b, " mark=%d zone=%d", e.Mark, e.Zone)
	writeOwner(&b, e.Owner)
	return b.String()
}

// eventTags are the conntrack -E names of the event types.
var eventTags = map[string]string{"created": "[NEW]", "destroyed": "[DESTROY]", "failed": "[FAILED]"}

// FormatEvent is ev in the manner of conntrack -E, then how long a
// destroyed entry lived, why a failed one failed, and the owner as
// FormatEntry writes it:
//
//	    [NEW] tcp      6 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=40000 [ASSURED] netns=4026532571 netns_name=blue
//	[DESTROY] tcp      6 TIME_WAIT src=10.0.0.1 ... [ASSURED] lifetime=1.5s netns=4026532571 netns_name=blue
//	 [FAILED] icmpv6   58 src=::1 dst=::2 type=128 code=0 id=7 [UNREPLIED] reason=exists error=-17 netns=1
//
// There is no timeout (an event has none); mark and zone are shown when
// they are not 0.
func FormatEvent(ev eventjson.Event) string {
	var b strings.Builder
	tag, ok := eventTags[ev.Type]
	if !ok {
		tag = "[" + strings.ToUpper(ev.Type) + "]"
	}
	fmt.Fprintf(&b, "%9s %-8s %d", tag, ev.Protocol, protocolNumberOr(ev.Protocol))
	if ev.TCPState != "" {
		b.WriteString(" " + ev.TCPState)
	}
	writeTuples(&b, ev.Original, ev.Reply, ev.Status)
	if ev.Mark != 0 {
		fmt.Fprintf(&b, " mark=%d", ev.Mark)
	}
	if ev.Zone != 0 {
		fmt.Fprintf(&b, " zone=%d", ev.Zone)
	}
	if ev.Lifetime != nil {
		d := time.Duration(*ev.Lifetime * float64(time.Second))
		if d >= time.Millisecond {
			d = d.Round(time.Millisecond)
		}
		b.WriteString(" lifetime=" + d.String())
	}
	if ev.Reason != "" {
		fmt.Fprintf(&b, " reason=%s error=%d", ev.Reason, ev.Error)
	}
	writeOwner(&b, ev.Owner)
	return b.String()
}

// writeOwner writes o as key=value tokens (netns, netns_name, host_netns,
// pod, container, comm), empty ones left out, values quoted when they hold
// a space.
func writeOwner(b *strings.Builder, o eventjson.Owner) {
	fmt.Fprintf(b, " netns=%d", o.NetNS)
	kv := func(k, v string) {
		if v != "" {
			if strings.ContainsAny(v, " \t\"=") || !utf8.ValidString(v) {
				v = strconv.Quote(v)
			}
			b.WriteString(" " + k + "=" + v)
		}
	}
	kv("netns_name", o.NetNSName)
	if o.Host {
		kv("host_netns", "true")
	}
	pod := o.Pod
	if pod != "" && o.PodNamespace != "" {
		pod = o.PodNamespace + "/" + pod
	}
	kv("pod", pod)
	kv("container", shortID(o.Container))
	kv("comm", o.Comm)
}

// writeTuples writes both directions and the flags between and after
// them as conntrack does: [UNREPLIED] after the original direction of an
// entry that saw no reply, [ASSURED] at the end.
func writeTuples(b *strings.Builder, orig eventjson.Tuple, reply *eventjson.Tuple, status []string) {
	writeTuple(b, orig)
	if !slices.Contains(status, "SEEN_REPLY") {
		b.WriteString(" [UNREPLIED]")
	}
	if reply != nil {
		writeTuple(b, *reply)
	}
	if slices.Contains(status, "ASSURED") {
		b.WriteString(" [ASSURED]")
	}
}

func writeTuple(b *strings.Builder, t eventjson.Tuple) {
	fmt.Fprintf(b, " src=%s dst=%s", t.Src, t.Dst)
	if t.ICMPType != nil {
		fmt.Fprintf(b, " type=%d code=%d id=%d", *t.ICMPType, *t.ICMPCode, *t.ICMPID)
		return
	}
	if t.SrcPort|t.DstPort != 0 {
		fmt.Fprintf(b, " sport=%d dport=%d", t.SrcPort, t.DstPort)
	}
}

func familyNumber(f string) int {
	switch f {
	case "ipv4":
		return 2
	case "ipv6":
		return 10
	}
	n, _ := strconv.Atoi(strings.TrimPrefix(f, "other:"))
	return n
}

func protocolNumberOr(p string) int {
	n, _ := protocolNumber(strings.TrimPrefix(p, "other:"))
	return int(n)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// TopSorts are the columns WriteTop sorts by.
var TopSorts = []string{"entries", "created", "destroyed", "failed", "drops"}

// WriteTop writes the namespaces as a table that fits 80 columns, sorted by
// the column by (one of TopSorts, descending; then by inode).
func WriteTop(w io.Writer, r *NamespacesResponse, by string) error {
	nss := slices.Clone(r.Namespaces)
	key := func(n Namespace) uint64 {
		switch by {
		case "created":
			return n.Created
		case "destroyed":
			return n.Destroyed
		case "failed":
			return n.Failed
		case "drops":
			if n.Drops == nil {
				return 0
			}
			return *n.Drops
		}
		if n.Entries == nil {
			return 0
		}
		return uint64(max(*n.Entries, 0))
	}
	slices.SortStableFunc(nss, func(a, b Namespace) int {
		return cmp.Or(cmp.Compare(key(b), key(a)), cmp.Compare(a.NetNS, b.NetNS))
	})
	var b strings.Builder
	limit := "?"
	if r.Limit > 0 {
		limit = strconv.FormatUint(r.Limit, 10)
	}
	fmt.Fprintf(&b, "%d network namespaces, table limit %s entries each, sorted by %s\n", len(nss), limit, by)
	const row = "%-10s %-20s %7s %5s %8s %8s %9s %6s\n"
	fmt.Fprintf(&b, row, "NETNS", "OWNER", "ENTRIES", "FILL", "LIMIT", "CREATED", "DESTROYED", "FAILED")
	for _, n := range nss {
		entries, fill := "-", "-"
		if n.Entries != nil {
			entries = count(uint64(max(*n.Entries, 0)), 7)
		}
		if n.FillRatio != nil {
			fill = strconv.FormatFloat(*n.FillRatio*100, 'f', 1, 64) + "%"
			if *n.FillRatio >= 0.9995 {
				fill = strconv.FormatFloat(*n.FillRatio*100, 'f', 0, 64) + "%"
			}
		}
		fmt.Fprintf(&b, row, strconv.FormatUint(uint64(n.NetNS), 10), clip(Owner(n), 20), entries, fill,
			count(n.Limit, 8), count(n.Created, 8), count(n.Destroyed, 9), count(n.Failed, 6))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Owner names who owns a namespace in one word: pod_namespace/pod, the
// netns name, "host", or the command of its process.
func Owner(n Namespace) string {
	switch {
	case n.Pod != "" && n.PodNamespace != "":
		return n.PodNamespace + "/" + n.Pod
	case n.Pod != "":
		return n.Pod
	case n.NetNSName != "":
		return n.NetNSName
	case n.Host:
		return "host"
	case n.Comm != "":
		return n.Comm
	case !n.Listed:
		return "(gone)"
	}
	return "-"
}

// clip shortens s to width runes, ending in "…" when cut.
func clip(s string, width int) string {
	s = strings.ToValidUTF8(s, "?")
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return string(r[:width-1]) + "…"
}

// count prints n in at most width characters: 1234567, else 1.2M, 34G.
func count(n uint64, width int) string { return Count(float64(n), width) }

// Count prints v in at most width characters where it can: 1234567, 1.5
// (one decimal for a fraction, e.g. a rate), else 1.2k, 3M, 34G.
func Count(v float64, width int) string {
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if v != float64(int64(v)) {
		s = strconv.FormatFloat(v, 'f', 1, 64)
	}
	if len(s) <= width {
		return s
	}
	for _, u := range []string{"k", "M", "G", "T", "P", "E"} {
		v /= 1000
		if s = strconv.FormatFloat(v, 'f', 1, 64) + u; len(s) <= width {
			return s
		}
		if s = strconv.FormatFloat(v, 'f', 0, 64) + u; len(s) <= width {
			return s
		}
	}
	return s
}

// FormatNamespaceTop is what fills one namespace's table as lines of at
// most 80 columns: a title, the top destinations, and the states.
func FormatNamespaceTop(r *NamespaceTopResponse) []string {
	share := func(n int64) string {
		if r.Dumped <= 0 {
			return "-"
		}
		return strconv.FormatFloat(float64(n)*100/float64(r.Dumped), 'f', 1, 64) + "%"
	}
	title := fmt.Sprintf("netns %d %s: %d entries", r.NetNS, clip(Owner(r.Namespace), 30), r.Dumped)
	if r.FillRatio != nil && r.Limit > 0 {
		title += fmt.Sprintf(" (%.1f%% of %d)", *r.FillRatio*100, r.Limit)
	}
	lines := []string{clip(title, 80)}
	const dest = "%-39s %-8s %5s %9s %6s"
	lines = append(lines, fmt.Sprintf(dest, "DESTINATION", "PROTO", "PORT", "ENTRIES", "SHARE"))
	for _, d := range r.Destinations {
		port := "-"
		if d.DstPort != 0 {
			port = strconv.Itoa(int(d.DstPort))
		}
		lines = append(lines, fmt.Sprintf(dest, clip(d.Dst, 39), clip(d.Protocol, 8), port, count(uint64(d.Entries), 9), share(d.Entries)))
	}
	if r.OtherDestinations > 0 || r.OtherEntries > 0 {
		more := fmt.Sprintf("(%d more destinations: %d entries)", r.OtherDestinations, r.OtherEntries)
		if r.Truncated {
			more = fmt.Sprintf("(other destinations: %d entries; too many distinct ones to count each)", r.OtherEntries)
		}
		lines = append(lines, more)
	}
	const state = "%-8s %-13s %9s %6s"
	lines = append(lines, "", fmt.Sprintf(state, "PROTO", "STATE", "ENTRIES", "SHARE"))
	for _, s := range r.States {
		lines = append(lines, fmt.Sprintf(state, clip(s.Protocol, 8), clip(s.State, 13), count(uint64(s.Entries), 9), share(s.Entries)))
	}
	return lines
}

// WriteNamespaceTop writes FormatNamespaceTop's lines.
func WriteNamespaceTop(w io.Writer, r *NamespaceTopResponse) error {
	_, err := io.WriteString(w, strings.Join(FormatNamespaceTop(r), "\n")+"\n")
	return err
}
