package metrics

import (
	"cmp"
	"maps"
	"slices"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// NamespaceStats is the health of one namespace's conntrack table, as the
// metrics show it: see Exporter.Snapshot.
type NamespaceStats struct {
	Inode    uint32
	Identity netns.Identity
	// Listed: the namespace source lists it now. A namespace that left the
	// source keeps its counters, without entries, until it expires.
	Listed bool
	// Entries are the entries by family and protocol (ctagent_conntrack_entries:
	// the last dump plus the counters since); nil until Run dumped the
	// namespace, or while the counters cannot be read.
	Entries []FamilyProtocolEntries
	// EntriesTotal is the sum of Entries (negative values, of events that
	// raced a dump, count as 0).
	EntriesTotal int64
	// Created, Destroyed and Failed are the tracer's counters since it
	// started observing the namespace, summed over family and protocol
	// (and, for Failed, over the reasons).
	Created, Destroyed, Failed uint64
}

// FamilyProtocolEntries is the entry count of one family and protocol.
type FamilyProtocolEntries struct {
	Family, Protocol string // tracer.FamilyName, tracer.ProtocolName
	Entries          int64
}

// Snapshot returns the tracked namespaces and those with counters, the
// largest tables first (then by inode), with the same numbers a scrape
// would export, and the table limit (net.netfilter.nf_conntrack_max, which
// the kernel applies to each namespace's own count; 0 if unreadable). Like
// Collect it only reads: the counters, the source's list and identities,
// and Run's bookkeeping under a read lock; it ignores MaxNamespaces (no
// overflow) and reads no kernel statistics.
func (e *Exporter) Snapshot() (stats []NamespaceStats, limit uint64) {
	c, cerr := e.tr.Counters()
	byNS := groupCounters(c)
	listed := map[uint32]bool{}
	for _, n := range e.src.Namespaces() {
		listed[n.Inode] = true
	}

	e.mu.RLock()
	seen := map[uint32]bool{}
	for inode, st := range e.ns {
		s := NamespaceStats{Inode: inode, Listed: listed[inode] && st.listed, Identity: st.id}
		if s.Listed && cerr == nil {
			s.Entries, s.EntriesTotal = entryList(st.tableEntries(byNS[inode]))
		}
		stats = append(stats, s)
		seen[inode] = true
	}
	for inode := range byNS {
		if !seen[inode] {
			if a, ok := e.tombs[inode]; ok && a == byNS[inode].activity && !listed[inode] {
				continue // expired, and nothing new happened there
			}
			stats = append(stats, NamespaceStats{Inode: inode, Listed: listed[inode]})
			seen[inode] = true
		}
	}
	e.mu.RUnlock()
	for inode := range listed {
		if !seen[inode] {
			stats = append(stats, NamespaceStats{Inode: inode, Listed: true})
		}
	}

	for i := range stats {
		s := &stats[i]
		if s.Listed {
			if id, ok := e.src.Lookup(s.Inode); ok {
				s.Identity = id
			}
		}
		if n := byNS[s.Inode]; n != nil {
			for _, v := range n.byKey {
				s.Created += v.Created
				s.Destroyed += v.Destroyed
				for _, f := range v.Failed {
					s.Failed += f
				}
			}
		}
	}
	slices.SortFunc(stats, func(a, b NamespaceStats) int {
		return cmp.Or(cmp.Compare(b.EntriesTotal, a.EntriesTotal), cmp.Compare(a.Inode, b.Inode))
	})
	if v, ok, err := e.readSysctl("nf_conntrack_max"); err == nil && ok {
		limit = uint64(v)
	}
	return stats, limit
}

// entryList turns tableEntries' map into a sorted list and its total; nil
// for nil.
func entryList(m map[famProto]int64) ([]FamilyProtocolEntries, int64) {
	if m == nil {
		return nil, 0
	}
	out := make([]FamilyProtocolEntries, 0, len(m))
	var total int64
	for _, k := range slices.Sorted(maps.Keys(m)) {
		n := max(m[k], 0)
		out = append(out, FamilyProtocolEntries{Family: tracer.FamilyName(k.family()), Protocol: tracer.ProtocolName(k.protocol()), Entries: n})
		total += n
	}
	return out, total
}
