package labnet

import (
	"testing"
	"time"
)

// TestEarlyDrop: in a namespace filled to nf_conntrack_max with entries
// that are not ASSURED, new flows make the kernel evict entries (the
// early_drop statistic) rather than drop packets, and early_drop is
// exactly the number of entries that left.
func TestEarlyDrop(t *testing.T) {
	Require(t, "ip", "nft", "conntrack")
	n := New(t)
	n.EnableConntrack()
	fill := int(n.ConntrackBuckets()) // a refused packet has a chance of about exp(-16)
	const packets = 200
	start := time.Now()
	r := n.EarlyDrop(fill, packets)
	drops, _ := r.Delta("drop")
	t.Logf("fill %d (nf_conntrack_buckets), %d packets in %s: early_drop %d, evicted per count %d (count %d -> %d), refused %d, drop %d",
		r.Fill, r.Packets, time.Since(start).Round(time.Millisecond), r.EarlyDropped(), r.Evicted(), r.CountBefore, r.CountAfter, r.Refused, drops)
	if r.EarlyDropped() == 0 {
		t.Errorf("no early drop for %d new flows in a full namespace", packets)
	}
	if int64(r.EarlyDropped()) != r.Evicted() {
		t.Errorf("early_drop counted %d, but the count implies %d entries left", r.EarlyDropped(), r.Evicted())
	}
	if uint64(r.Refused) != drops {
		t.Errorf("%d sends refused, but the kernel counted %d drops", r.Refused, drops)
	}
	if r.CountAfter > r.CountBefore {
		t.Errorf("count %d after the packets, above nf_conntrack_max %d", r.CountAfter, r.CountBefore)
	}
}
