package labnet

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// EarlyDropResult is what EarlyDrop measured.
type EarlyDropResult struct {
	Fill    int // entries inserted over ctnetlink before the packets
	Packets int // new flows sent after the fill, one datagram each
	// Refused counts datagrams whose send failed with EPERM: early drop
	// found nothing to evict, and conntrack dropped the packet (table
	// full, the drop statistic).
	Refused int
	// Before and After are n's conntrack -S around the packets.
	Before, After map[string]uint64
	// CountBefore is n's nf_conntrack_count after the fill, which is also
	// the nf_conntrack_max the packets met; CountAfter is it after the
	// packets.
	CountBefore, CountAfter uint64
}

// Delta is the change of the statistic key (a conntrack -S name) over the
// packets; ok is false when the kernel does not report key.
func (r EarlyDropResult) Delta(key string) (d uint64, ok bool) {
	return statDelta(r.Before, r.After, key)
}

// EarlyDropped is the number of entries early drop evicted, per the
// kernel's early_drop statistic (early_drop adds every entry
// early_drop_list freed).
func (r EarlyDropResult) EarlyDropped() uint64 {
	d, _ := r.Delta("early_drop")
	return d
}

// Evicted is the number of entries that left n during the packets, as the
// entry count implies: every datagram that was not refused added one
// entry, so CountBefore + Packets - Refused - CountAfter entries went.
// With no entry expiring meanwhile, these are the early drops.
func (r EarlyDropResult) Evicted() int64 {
	return int64(r.CountBefore) + int64(r.Packets-r.Refused) - int64(r.CountAfter)
}

// EarlyDrop makes the kernel evict entries to make room for new ones:
// it inserts fill UNREPLIED UDP entries over ctnetlink in n (never
// ASSURED, so early drop may evict them), sets the global nf_conntrack_max
// to n's count (the kernel checks it against each namespace's own count;
// restored before EarlyDrop returns), and sends packets datagrams from n,
// each a new flow 127.0.0.1:30000+j -> 127.0.0.1:53. Each new entry finds
// the namespace full: __nf_conntrack_alloc calls early_drop, which looks
// for entries of n that are not ASSURED in the 8 hash buckets
// (NF_CT_EVICTION_RANGE) from the new tuple's bucket and frees every one
// it meets in the first bucket that has one. If none of the 8 has one, the
// packet is dropped (Refused).
//
// The hash table is shared by all namespaces and has
// nf_conntrack_buckets (ConntrackBuckets) buckets; each entry sits in 2
// (original and reply), so a packet finds nothing to evict with a
// probability of about exp(-16*fill/buckets): fill = buckets makes that
// about 1e-7. Keep it that small: after a refused packet the gc worker
// evicts entries that are not ASSURED (gc_worker_can_early_drop) in
// namespaces at 95% of nf_conntrack_max, without counting them as
// early_drop.
//
// n needs conntrack hooks (EnableConntrack). EarlyDrop sets n's
// nf_conntrack_udp_timeout to 3600 so that no entry expires meanwhile, and
// listens on 127.0.0.1:53 in n. The fill stays in n.
func (n *NS) EarlyDrop(fill, packets int) EarlyDropResult {
	n.t.Helper()
	if fill < 1 || packets < 1 || packets > 35000 {
		n.t.Fatalf("labnet: EarlyDrop: fill %d, packets %d; want fill > 0 and 1..35000 packets", fill, packets)
	}
	n.Sysctl("net.netfilter.nf_conntrack_udp_timeout", "3600")
	n.udpSink(clashPort)
	conn, err := n.DialConntrack()
	if err != nil {
		n.t.Fatalf("labnet: EarlyDrop: %v", err)
	}
	defer conn.Close()
	if err := fillUDP(conn, fill, 3600); err != nil {
		n.t.Fatalf("labnet: EarlyDrop: netns %q: %v", n.Name, err)
	}
	res := EarlyDropResult{Fill: fill, Packets: packets, CountBefore: n.ConntrackCount()}
	restore := SetConntrackMax(n.t, res.CountBefore)
	defer restore()
	res.Before = n.CTStats()
	err = n.Do(func() error {
		for j := range packets {
			fd, err := udpSocket(30000+j, clashPort)
			if err != nil {
				return err
			}
			_, err = unix.Write(fd, []byte("e"))
			unix.Close(fd)
			switch {
			case errors.Is(err, unix.EPERM):
				res.Refused++
			case err != nil:
				return fmt.Errorf("send from 127.0.0.1:%d: %w", 30000+j, err)
			}
		}
		return nil
	})
	if err != nil {
		n.t.Fatalf("labnet: EarlyDrop: netns %q: %v", n.Name, err)
	}
	res.After = n.CTStats()
	res.CountAfter = n.ConntrackCount()
	return res
}

// fillUDP inserts count UNREPLIED UDP entries over conn, with timeout
// seconds to live: k-th from 198.18.0.0+(k mod 65536), port 1000+k/65536,
// to 198.19.255.254:53 (the benchmarking range of RFC 2544, which no
// packet here uses).
func fillUDP(conn *conntrack.Conn, count int, timeout uint32) error {
	dst := netip.MustParseAddr("198.19.255.254")
	for k := range count {
		src := netip.AddrFrom4([4]byte{198, 18, byte(k >> 8), byte(k)})
		sport := uint16(1000 + k>>16)
		f := conntrack.NewFlow(unix.IPPROTO_UDP, 0, src, dst, sport, 53, timeout, 0)
		if err := conn.Create(f); err != nil {
			return fmt.Errorf("ctnetlink NEW %d of %d (%s:%d): %w", k+1, count, src, sport, err)
		}
	}
	return nil
}
