package ctnetlink

import (
	"sync"

	"github.com/ctagent/ctagent/pkg/tracer"
)

// KernelStatsReader reads KernelStats of many namespaces and keeps the
// per-CPU counters monotonic. ctnetlink reports them as 32-bit numbers
// (CTA_STATS_*), so a plain sum over CPUs drops by 2^32 whenever one CPU's
// counter wraps, which Prometheus would take for a reset and turn into a
// spike of rate(). The reader adds each CPU's change modulo 2^32 instead.
// Safe for concurrent use.
type KernelStatsReader struct {
	mu sync.Mutex
	ns map[uint32]*CPUTotals
}

// CPUTotals turns a namespace's 32-bit per-CPU counters into 64-bit totals
// that only go up: each CPU's change since its last read, modulo 2^32, is
// added; a CPU seen for the first time adds its whole value.
type CPUTotals struct {
	// last holds each CPU's last read, by CPU number (a slice: a map per
	// namespace, two per namespace with the netlink backend, cost more
	// than the few CPUs they held).
	last  []cpuRead
	total [NumCPUStats]uint64
}

// cpuRead is one CPU's counters at the last read; seen is false for a CPU
// not read yet.
type cpuRead struct {
	values [NumCPUStats]uint32
	seen   bool
}

// Indexes of the per-CPU counters in CPUStats.values.
const (
	StatFound = iota
	StatInvalid
	StatInsert
	StatInsertFailed
	StatDrop
	StatEarlyDrop
	StatError
	StatSearchRestart
	StatClashResolve
	StatChainTooLong
	NumCPUStats
)

// add adds one read of every CPU's counters and returns the totals.
func (st *CPUTotals) Add(cpus []CPUStats) [NumCPUStats]uint64 {
	for _, c := range cpus {
		if int(c.CPU) >= len(st.last) {
			st.last = append(st.last, make([]cpuRead, int(c.CPU)+1-len(st.last))...)
		}
		now, prev := c.values(), &st.last[c.CPU]
		for i := range now {
			if prev.seen {
				st.total[i] += uint64(now[i] - prev.values[i]) // modulo 2^32
			} else {
				st.total[i] += uint64(now[i])
			}
		}
		*prev = cpuRead{values: now, seen: true}
	}
	return st.total
}

func (c *CPUStats) values() [NumCPUStats]uint32 {
	return [NumCPUStats]uint32{c.Found, c.Invalid, c.Insert, c.InsertFailed, c.Drop,
		c.EarlyDrop, c.Error, c.Restart, c.ClashResolve, c.ChainTooLong}
}

func setCounters(ks *tracer.KernelStats, v [NumCPUStats]uint64) {
	ks.Found, ks.Invalid, ks.Insert, ks.InsertFailed = v[StatFound], v[StatInvalid], v[StatInsert], v[StatInsertFailed]
	ks.Drop, ks.EarlyDrop, ks.Error = v[StatDrop], v[StatEarlyDrop], v[StatError]
	ks.SearchRestart, ks.ClashResolve, ks.ChainTooLong = v[StatSearchRestart], v[StatClashResolve], v[StatChainTooLong]
}

// NewKernelStatsReader returns a reader that remembers no namespace yet.
func NewKernelStatsReader() *KernelStatsReader {
	return &KernelStatsReader{ns: map[uint32]*CPUTotals{}}
}

// Read reads the statistics of ns, like ReadKernelStats, with counters that
// only go up: the first read of a namespace gives the kernel's sums, later
// ones add each CPU's change since the previous read.
func (r *KernelStatsReader) Read(ns tracer.Namespace) (tracer.KernelStats, error) {
	return readKernelStats(ns, func(cpus []CPUStats) [NumCPUStats]uint64 {
		return r.accumulate(ns.Inode, cpus)
	})
}

// accumulate adds the per-CPU counters of one read of namespace inode to
// its totals and returns them.
func (r *KernelStatsReader) accumulate(inode uint32, cpus []CPUStats) [NumCPUStats]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.ns[inode]
	if st == nil {
		st = &CPUTotals{}
		r.ns[inode] = st
	}
	return st.Add(cpus)
}

// Forget drops what the reader remembers of a namespace that is gone.
func (r *KernelStatsReader) Forget(inode uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.ns, inode)
}

// Totals returns the totals so far.
func (st *CPUTotals) Totals() [NumCPUStats]uint64 { return st.total }
