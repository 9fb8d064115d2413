package tracer

import (
	"math/bits"
	"time"
)

// LifetimeBucket returns the histogram bucket of a lifetime, the same rule
// as lifetime_bucket in bpf/conntrack.bpf.c: whole milliseconds ms (rounded
// up, so that d <= 2^i ms exactly when ms <= 2^i); bucket i holds
// ms <= 2^i, i.e. i = ceil(log2(ms)) and 0 for ms <= 1;
// the last bucket, NumLifetimeBuckets-1, holds everything longer. Negative
// durations go to bucket 0. Every backend that counts in Go uses this.
func LifetimeBucket(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	ms := uint64((d + time.Millisecond - 1) / time.Millisecond)
	if ms <= 1 {
		return 0
	}
	b := bits.Len64(ms - 1) // ceil(log2(ms))
	if b >= NumLifetimeBuckets {
		b = NumLifetimeBuckets - 1
	}
	return b
}
