package labnet

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// Documentation addresses (RFC 5737) for the entries of ExpireByGC and
// ExpireByLookup: no packet ever uses them.
var (
	expireSrc = netip.MustParseAddr("192.0.2.1")
	expireDst = netip.MustParseAddr("192.0.2.2")
)

const expireFirstPort = 1000 // source port of the first entry; the k-th uses expireFirstPort+k

// expireFlow is the k-th UNREPLIED UDP entry 192.0.2.1:1000+k ->
// 192.0.2.2:53 with timeout seconds to live; timeout 0 makes a flow that
// only names the entry, for a GET.
func expireFlow(k int, timeout uint32) conntrack.Flow {
	return conntrack.NewFlow(unix.IPPROTO_UDP, 0, expireSrc, expireDst, uint16(expireFirstPort+k), 53, timeout, 0)
}

// insertExpiring inserts entries UDP entries over conn with a timeout of
// 1 s and returns when the last of them expires.
func (n *NS) insertExpiring(conn *conntrack.Conn, entries int) time.Time {
	n.t.Helper()
	for k := range entries {
		if err := conn.Create(expireFlow(k, 1)); err != nil {
			n.t.Fatalf("netns %q: ctnetlink NEW %d of %d: %v", n.Name, k+1, entries, err)
		}
	}
	return time.Now().Add(time.Second)
}

// ExpireByGC inserts entries UDP entries (192.0.2.1:1000+k ->
// 192.0.2.2:53) with a timeout of 1 s over ctnetlink in n, then touches
// them no more: it only polls n's nf_conntrack_count (ConntrackCount),
// which looks nothing up, every 20 ms until it is back to its value before
// the inserts. Nothing but the kernel's gc worker (gc_worker, which frees
// an expired entry through nf_ct_gc_expired) then frees them, so the
// returned time, from the expiry of the last entry to the count being
// back, is how long the gc worker took. t fails if that takes longer than
// within.
//
// The gc worker is one for all namespaces and picks its own interval: on
// Linux 5.17 and later it adapts the interval to the timeouts of the
// entries it sees, biased as if there were 100 entries at its maximum
// (GC_SCAN_INTERVAL_MAX, 60 s), so with few entries it is close to 60 s.
// Linux 5.15 and 5.16 scan the whole table every 120 s (GC_SCAN_INTERVAL,
// "netfilter: conntrack: collect all entries in one cycle"), and so does
// Debian 11's 5.10.262, which carries that change (its gc_worker
// reschedules itself 30000 jiffies, 120 s at HZ=250, later); 5.10 as
// released scanned 1/128 of the table at a time, the whole table within
// 16 s (GC_MAX_SCAN_JIFFIES).
// Nothing else may look n's entries up meanwhile: a ctnetlink dump
// (conntrack -L), GET or DELETE, or a packet that hashes to their bucket
// would free them itself.
func (n *NS) ExpireByGC(entries int, within time.Duration) time.Duration {
	n.t.Helper()
	if entries < 1 || expireFirstPort+entries > 65536 {
		n.t.Fatalf("labnet: ExpireByGC: %d entries, want 1..%d", entries, 65536-expireFirstPort)
	}
	base := n.ConntrackCount()
	conn, err := n.DialConntrack()
	if err != nil {
		n.t.Fatalf("labnet: ExpireByGC: %v", err)
	}
	expired := n.insertExpiring(conn, entries)
	// Close the socket now: nothing of ours talks to ctnetlink while the
	// gc worker works.
	if err := conn.Close(); err != nil {
		n.t.Fatalf("labnet: ExpireByGC: close ctnetlink socket: %v", err)
	}
	if c := n.ConntrackCount(); c != base+uint64(entries) {
		n.t.Fatalf("labnet: ExpireByGC: netns %q: count %d after inserting %d entries, was %d: is the namespace idle?", n.Name, c, entries, base)
	}
	var last uint64
	if !WaitFor(time.Until(expired)+within, func() bool {
		last = n.ConntrackCount()
		return last <= base
	}) {
		n.t.Fatalf("labnet: ExpireByGC: netns %q: %d of %d expired entries still counted %s after they expired",
			n.Name, last-base, entries, within)
	}
	if last < base {
		n.t.Fatalf("labnet: ExpireByGC: netns %q: count %d, below %d before the inserts: is the namespace idle?", n.Name, last, base)
	}
	return time.Since(expired)
}

// LookupExpiry is what ExpireByLookup measured.
type LookupExpiry struct {
	Entries int
	// ByLookup counts entries freed by the GETs: n's count fell across a
	// GET. A GET frees every expired entry it meets in its bucket, so one
	// GET may free another entry than its own.
	ByLookup int
	// ByGC counts entries freed between the GETs, by the gc worker.
	ByGC int
	// Left is how many entries were still counted after the last GET.
	Left int
}

// ExpireByLookup inserts entries UDP entries (192.0.2.1:1000+k ->
// 192.0.2.2:53) with a timeout of 1 s over ctnetlink in n, waits until
// 500 ms after the last has expired, then sends a ctnetlink GET for each,
// reading n's nf_conntrack_count before and after each. The GET's lookup
// (ctnetlink_get_conntrack -> nf_conntrack_find_get ->
// ____nf_conntrack_find) meets the expired entry, frees it through
// nf_ct_gc_expired, and answers ENOENT; a GET that finds an entry fails
// t. The gc worker may free some entries first (ByGC); on Linux 5.17 and
// later, with an interval near 60 s, that is rare.
func (n *NS) ExpireByLookup(entries int) LookupExpiry {
	n.t.Helper()
	if entries < 1 || expireFirstPort+entries > 65536 {
		n.t.Fatalf("labnet: ExpireByLookup: %d entries, want 1..%d", entries, 65536-expireFirstPort)
	}
	base := n.ConntrackCount()
	conn, err := n.DialConntrack()
	if err != nil {
		n.t.Fatalf("labnet: ExpireByLookup: %v", err)
	}
	defer conn.Close()
	expired := n.insertExpiring(conn, entries)
	time.Sleep(time.Until(expired) + 500*time.Millisecond)
	res := LookupExpiry{Entries: entries}
	prev := base + uint64(entries)
	for k := range entries {
		before := n.ConntrackCount()
		_, err := conn.Get(expireFlow(k, 0))
		after := n.ConntrackCount()
		switch {
		case err == nil:
			n.t.Fatalf("labnet: ExpireByLookup: netns %q: GET found entry %d at least 500 ms after its 1 s timeout", n.Name, k)
		case !errors.Is(err, unix.ENOENT):
			n.t.Fatalf("labnet: ExpireByLookup: netns %q: GET of entry %d: %v", n.Name, k, err)
		}
		if before > prev || after > before {
			n.t.Fatalf("labnet: ExpireByLookup: netns %q: count rose (%d, then %d, then %d): is the namespace idle?", n.Name, prev, before, after)
		}
		res.ByGC += int(prev - before)
		res.ByLookup += int(before - after)
		prev = after
	}
	if prev < base {
		n.t.Fatalf("labnet: ExpireByLookup: netns %q: count %d, below %d before the inserts: is the namespace idle?", n.Name, prev, base)
	}
	res.Left = int(prev - base)
	return res
}

// String summarizes r for a test log.
func (r LookupExpiry) String() string {
	return fmt.Sprintf("%d entries: %d freed by GET, %d by the gc worker, %d left", r.Entries, r.ByLookup, r.ByGC, r.Left)
}
