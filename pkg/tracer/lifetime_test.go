package tracer

import (
	"math/rand/v2"
	"testing"
	"time"
)

// cLifetimeBucket is lifetime_bucket of bpf/conntrack.bpf.c: the same
// steps, its unrolled shifts (16, 8, 4, 2, 1) written as a loop.
func cLifetimeBucket(ns uint64) int {
	ms := (ns + 999999) / 1000000
	b := uint64(0)
	if ms <= 1 {
		return 0
	}
	ms--
	for _, s := range []uint64{16, 8, 4, 2, 1} {
		if ms>>s != 0 {
			ms >>= s
			b += s
		}
	}
	b += ms
	if b >= NumLifetimeBuckets {
		b = NumLifetimeBuckets - 1
	}
	return int(b)
}

func TestNetlinkLifetimeBucket(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		d    time.Duration
		want int
	}{
		{-time.Second, 0}, {0, 0}, {ms / 2, 0}, {ms, 0}, {ms + 1, 1}, {ms + ms/2, 1}, {2 * ms, 1}, {2*ms + 1, 2}, {3 * ms, 2},
		{4 * ms, 2}, {5 * ms, 3}, {1024 * ms, 10}, {1025 * ms, 11}, {time.Duration(1<<26) * ms, 26},
		{time.Duration(1<<26+1) * ms, 27}, {time.Duration(1<<27) * ms, 27}, {1 << 62, 27},
	} {
		if got := LifetimeBucket(c.d); got != c.want {
			t.Errorf("LifetimeBucket(%v) = %d, want %d", c.d, got, c.want)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		ns := r.Uint64N(1 << uint(r.IntN(63)+1))
		d := time.Duration(ns)
		got := LifetimeBucket(d)
		if want := cLifetimeBucket(ns); got != want {
			t.Fatalf("LifetimeBucket(%d ns) = %d, C rule says %d", ns, got, want)
		}
		// Bucket i holds exactly the lifetimes in (2^(i-1), 2^i] ms.
		bound := func(i int) uint64 { return uint64(1) << uint(i) * uint64(time.Millisecond) }
		if got < NumLifetimeBuckets-1 && ns > bound(got) {
			t.Fatalf("%v in bucket %d above its bound %v s", d, got, LifetimeBucketBound(got))
		}
		if got > 0 && ns <= bound(got-1) {
			t.Fatalf("%v in bucket %d, fits bucket %d", d, got, got-1)
		}
	}
}

// --- a ctnetlink encoder for decoder tests -----------------------------------
