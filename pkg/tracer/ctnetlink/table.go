package ctnetlink

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/tracer"
)

// DumpTable calls fn for every entry (IPv4 and IPv6) of the conntrack table
// of ns. Namespace.Path "" is the current network namespace; otherwise the
// socket is opened in the namespace at Path (Inode, if set, must match)
// without moving the calling thread. Entries are streamed: fn runs while
// the dump is read, so it must not block for long. Messages that cannot be
// decoded are skipped and reported as *SkippedError at the end.
func DumpTable(ns tracer.Namespace, fn func(tracer.Entry)) error {
	s, err := Dial(ns)
	if err != nil {
		return err
	}
	defer s.Close()
	return DumpTableOn(s, fn)
}

// DumpTableOn is DumpTable over s, an open socket in the namespace (e.g. a
// listener's request socket), with no socket to open and no thread to
// move into the namespace. No other request may run on s meanwhile.
func DumpTableOn(s *Conn, fn func(tracer.Entry)) error {
	skipped, first, err := s.Dump(func(m *CTMessage) { fn(m.Entry) })
	if err != nil {
		return fmt.Errorf("conntrack dump: %w", err)
	}
	if skipped > 0 {
		return &tracer.SkippedError{Skipped: skipped, First: first}
	}
	return nil
}

// dump dumps both families of the table and calls fn for every decodable
// entry; it returns how many messages were skipped and why the first was.
func (s *Conn) Dump(fn func(*CTMessage)) (skipped int, first error, err error) {
	err = s.query(ipctnlMsgCtGet, unix.AF_UNSPEC, unix.NLM_F_DUMP, nil, func(msg Message) error {
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
func ReadKernelStats(ns tracer.Namespace) (tracer.KernelStats, error) {
	return readKernelStats(ns, sumCPUStats)
}

// sumCPUStats sums per-CPU counters.
func sumCPUStats(cpus []CPUStats) [NumCPUStats]uint64 {
	var sum [NumCPUStats]uint64
	for _, c := range cpus {
		for i, v := range c.values() {
			sum[i] += uint64(v)
		}
	}
	return sum
}

// readKernelStats reads the statistics of ns, turning the per-CPU counters
// into totals with total.
func readKernelStats(ns tracer.Namespace, total func([]CPUStats) [NumCPUStats]uint64) (tracer.KernelStats, error) {
	s, err := Dial(ns)
	if err != nil {
		return tracer.KernelStats{}, err
	}
	defer s.Close()
	cpus, err := s.StatsCPU()
	if err != nil {
		return tracer.KernelStats{}, err
	}
	ks := tracer.KernelStats{ReadAt: time.Now()}
	if ks.Entries, ks.MaxEntries, err = s.globalStats(); err != nil {
		return tracer.KernelStats{}, err
	}
	setCounters(&ks, total(cpus))
	return ks, nil
}

// globalStats reads the entry count and the limit
// (IPCTNL_MSG_CT_GET_STATS).
func (s *Conn) globalStats() (entries, limit uint64, err error) {
	var gerr error
	err = s.query(ipctnlMsgCtGetStats, unix.AF_UNSPEC, 0, nil, func(msg Message) error {
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
func (s *Conn) StatsCPU() ([]CPUStats, error) {
	var (
		out  []CPUStats
		derr error
	)
	err := s.query(ipctnlMsgCtGetStatsCPU, unix.AF_UNSPEC, unix.NLM_F_DUMP, nil, func(msg Message) error {
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

// Table is the tracer.Table of every backend: table dumps and kernel
// statistics over ctnetlink, with per-CPU counters kept monotonic per
// namespace. Backends embed it and call ForgetStats from Forget.
type Table struct {
	stats *KernelStatsReader
}

// NewTable returns a Table that remembers no namespace yet.
func NewTable() *Table { return &Table{stats: NewKernelStatsReader()} }

// DumpTable calls DumpTable.
func (t *Table) DumpTable(ns tracer.Namespace, fn func(tracer.Entry)) error {
	return DumpTable(ns, fn)
}

// KernelStats reads ns's statistics through the table's KernelStatsReader.
func (t *Table) KernelStats(ns tracer.Namespace) (tracer.KernelStats, error) {
	return t.stats.Read(ns)
}

// KernelStatsOn reads the statistics of namespace inode over s, an open
// socket in it, like KernelStats, and also returns the per-CPU counters
// (the netlink backend derives its failure counters from them). Given
// cpus, a read of the per-CPU counters just made on s, it reads only the
// entry count and the limit. No other request may run on s meanwhile.
func (t *Table) KernelStatsOn(s *Conn, inode uint32, cpus []CPUStats) (tracer.KernelStats, []CPUStats, error) {
	var err error
	if cpus == nil {
		if cpus, err = s.StatsCPU(); err != nil {
			return tracer.KernelStats{}, nil, err
		}
	}
	ks := tracer.KernelStats{ReadAt: time.Now()}
	if ks.Entries, ks.MaxEntries, err = s.globalStats(); err != nil {
		return tracer.KernelStats{}, nil, err
	}
	setCounters(&ks, t.stats.accumulate(inode, cpus))
	return ks, cpus, nil
}

// ForgetStats drops the kernel statistics totals of a namespace that is gone.
func (t *Table) ForgetStats(inode uint32) { t.stats.Forget(inode) }
