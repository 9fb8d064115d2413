package metrics

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/netns"
)

// Snapshot has the numbers a scrape exports: entries from the dump plus
// the counters since, the counter totals, the identity, the limit; the
// largest table first.
func TestSnapshot(t *testing.T) {
	f := newFixture(t, Options{Labels: IdentityLabels})
	dir := filepath.Join(f.e.procRoot, "sys/net/netfilter")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nf_conntrack_max"), []byte("1000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.ns.setList(10, 20)
	f.ns.ids[10] = netns.Identity{Name: "small"}
	f.ns.ids[20] = netns.Identity{Name: "big", Pod: "web-0"}
	f.tables.set(10, tcpEntry(3, 0))
	f.tables.set(20, tcpEntry(3, 0), udpEntry(unix.AF_INET, 0))
	if err := f.e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.tr.set(key(20, unix.AF_INET, unix.IPPROTO_UDP), 5, 1) // +4 entries since the dump
	f.tr.set(key(30, unix.AF_INET, unix.IPPROTO_TCP), 2, 0) // counters only: not tracked yet

	stats, limit := f.e.Snapshot()
	if limit != 1000 {
		t.Errorf("limit %d", limit)
	}
	if len(stats) != 3 {
		t.Fatalf("%+v", stats)
	}
	big, small, other := stats[0], stats[1], stats[2]
	if big.Inode != 20 || big.EntriesTotal != 6 || big.Identity.Pod != "web-0" || big.Created != 5 || big.Destroyed != 1 || !big.Listed {
		t.Errorf("big: %+v", big)
	}
	if len(big.Entries) != 2 || big.Entries[0] != (FamilyProtocolEntries{"ipv4", "tcp", 1}) || big.Entries[1] != (FamilyProtocolEntries{"ipv4", "udp", 5}) {
		t.Errorf("big entries: %+v", big.Entries)
	}
	if small.Inode != 10 || small.EntriesTotal != 1 || small.Identity.Name != "small" {
		t.Errorf("small: %+v", small)
	}
	if other.Inode != 30 || other.Entries != nil || other.Listed || other.Created != 2 {
		t.Errorf("counters only: %+v", other)
	}
}
