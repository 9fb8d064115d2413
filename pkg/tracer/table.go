package tracer

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// SkippedError is returned by DumpTable when some messages of the dump could
// not be decoded. Every other entry was delivered: callers that can live
// with a partial dump check for it with errors.As.
type SkippedError struct {
	Skipped int   // messages skipped
	First   error // why the first one was skipped
}

func (e *SkippedError) Error() string {
	return fmt.Sprintf("conntrack dump: skipped %d undecodable messages, first: %v", e.Skipped, e.First)
}

func (e *SkippedError) Unwrap() error { return e.First }

// DumpTable calls fn for every entry (IPv4 and IPv6) of the conntrack table
// of ns. Namespace.Path "" is the current network namespace; otherwise the
// socket is opened in the namespace at Path (Inode, if set, must match)
// without moving the calling thread. Entries are streamed: fn runs while
// the dump is read, so it must not block for long. Messages that cannot be
// decoded are skipped and reported as *SkippedError at the end.
func DumpTable(ns Namespace, fn func(Entry)) error {
	s, err := dialNetfilter(ns)
	if err != nil {
		return err
	}
	defer s.close()
	skipped, first, err := s.dump(func(m *ctMessage) { fn(m.Entry) })
	if err != nil {
		return fmt.Errorf("conntrack dump: %w", err)
	}
	if skipped > 0 {
		return &SkippedError{Skipped: skipped, First: first}
	}
	return nil
}

// dump dumps both families of the table and calls fn for every decodable
// entry; it returns how many messages were skipped and why the first was.
func (s *nlSock) dump(fn func(*ctMessage)) (skipped int, first error, err error) {
	err = s.query(ipctnlMsgCtGet, unix.AF_UNSPEC, unix.NLM_F_DUMP, nil, func(msg nlMessage) error {
		if mt, ok := ctMsgType(msg.Type); !ok || mt != ipctnlMsgCtNew {
			return nil // dump entries are sent as IPCTNL_MSG_CT_NEW
		}
		m, err := decodeCT(msg.Data)
		if err != nil {
			if skipped == 0 {
				first = err
			}
			skipped++
			return nil
		}
		fn(&m)
		return nil
	})
	return skipped, first, err
}

// ReadKernelStats reads the kernel's conntrack statistics of ns: the
// per-CPU counters (IPCTNL_MSG_CT_GET_STATS_CPU) summed over CPUs and the
// entry count and limit (IPCTNL_MSG_CT_GET_STATS). Namespace is interpreted
// as in DumpTable.
func ReadKernelStats(ns Namespace) (KernelStats, error) {
	return readKernelStats(ns, sumCPUStats)
}

// sumCPUStats sums per-CPU counters.
func sumCPUStats(cpus []cpuStats) [numCPUStats]uint64 {
	var sum [numCPUStats]uint64
	for _, c := range cpus {
		for i, v := range c.values() {
			sum[i] += uint64(v)
		}
	}
	return sum
}

// readKernelStats reads the statistics of ns, turning the per-CPU counters
// into totals with total.
func readKernelStats(ns Namespace, total func([]cpuStats) [numCPUStats]uint64) (KernelStats, error) {
	s, err := dialNetfilter(ns)
	if err != nil {
		return KernelStats{}, err
	}
	defer s.close()
	cpus, err := s.statsCPU()
	if err != nil {
		return KernelStats{}, err
	}
	var ks KernelStats
	if ks.Entries, ks.MaxEntries, err = s.globalStats(); err != nil {
		return KernelStats{}, err
	}
	ks.setCounters(total(cpus))
	return ks, nil
}

// globalStats reads the entry count and the limit
// (IPCTNL_MSG_CT_GET_STATS).
func (s *nlSock) globalStats() (entries, limit uint64, err error) {
	var gerr error
	err = s.query(ipctnlMsgCtGetStats, unix.AF_UNSPEC, 0, nil, func(msg nlMessage) error {
		if mt, ok := ctMsgType(msg.Type); !ok || mt != ipctnlMsgCtGetStats {
			return nil
		}
		e, m, err := decodeStatsGlobal(msg.Data)
		if err != nil {
			gerr = err
			return nil
		}
		entries, limit = uint64(e), uint64(m)
		return nil
	})
	if err == nil {
		err = gerr
	}
	if err != nil {
		return 0, 0, fmt.Errorf("conntrack global stats: %w", err)
	}
	return entries, limit, nil
}

// statsCPU reads the per-CPU conntrack counters, one element per CPU.
func (s *nlSock) statsCPU() ([]cpuStats, error) {
	var (
		out  []cpuStats
		derr error
	)
	err := s.query(ipctnlMsgCtGetStatsCPU, unix.AF_UNSPEC, unix.NLM_F_DUMP, nil, func(msg nlMessage) error {
		if mt, ok := ctMsgType(msg.Type); !ok || mt != ipctnlMsgCtGetStatsCPU {
			return nil
		}
		c, err := decodeStatsCPU(msg.Data)
		if err != nil {
			derr = err
			return nil
		}
		out = append(out, c)
		return nil
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("conntrack per-CPU stats: %w", err)
	}
	return out, nil
}
