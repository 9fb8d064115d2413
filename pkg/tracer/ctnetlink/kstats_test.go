package ctnetlink

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
)

// TestKernelStatsReaderWraps: a CPU counter that wraps at 2^32 keeps the
// total going up; a CPU seen for the first time adds its whole value.
func TestKernelStatsReaderWraps(t *testing.T) {
	r := NewKernelStatsReader()
	got := r.accumulate(7, []CPUStats{{CPU: 0, Found: 1<<32 - 10}, {CPU: 1, Found: 5}})
	if got[0] != 1<<32-5 {
		t.Fatalf("first read: found %d, want %d", got[0], uint64(1<<32-5))
	}
	got = r.accumulate(7, []CPUStats{{CPU: 0, Found: 20}, {CPU: 1, Found: 6}, {CPU: 2, InsertFailed: 3}})
	if want := uint64(1<<32 - 5 + 30 + 1); got[0] != want {
		t.Errorf("after a wrap: found %d, want %d", got[0], want)
	}
	if got[3] != 3 {
		t.Errorf("new CPU: insert_failed %d, want 3", got[3])
	}
	r.Forget(7)
	if got = r.accumulate(7, []CPUStats{{CPU: 0, Found: 2}}); got[0] != 2 {
		t.Errorf("after Forget: found %d, want 2", got[0])
	}
}

// TestKernelStatsReaderMatchesKernel: on a real namespace the reader gives
// the same numbers as a plain read.
func TestKernelStatsReaderMatchesKernel(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	n := labnet.New(t)
	n.EnableConntrack()
	n.SendRawTCP(netip.MustParseAddrPort("127.0.0.1:1000"), netip.MustParseAddrPort("127.0.0.1:2000"), 0x01) // a lone FIN: invalid
	r := NewKernelStatsReader()
	for range 2 {
		got, err := r.Read(tracertest.Namespace(n))
		if err != nil {
			t.Fatal(err)
		}
		want, err := ReadKernelStats(tracertest.Namespace(n))
		if err != nil {
			t.Fatal(err)
		}
		if got.ReadAt.IsZero() || want.ReadAt.IsZero() {
			t.Errorf("no read time: reader %v, plain read %v", got.ReadAt, want.ReadAt)
		}
		got.ReadAt, want.ReadAt = time.Time{}, time.Time{} // two reads, two times
		if got != want || got.Invalid == 0 {
			t.Errorf("reader %+v, plain read %+v (want equal, with the invalid FIN counted)", got, want)
		}
	}
}
