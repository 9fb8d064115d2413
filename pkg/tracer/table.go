package tracer

import "errors"

// DumpTable calls fn for every entry (IPv4 and IPv6) of the conntrack table
// of ns.
func DumpTable(ns Namespace, fn func(Entry)) error {
	return errors.New("DumpTable: not implemented yet")
}

// ReadKernelStats reads the kernel's conntrack statistics of ns.
func ReadKernelStats(ns Namespace) (KernelStats, error) {
	return KernelStats{}, errors.New("ReadKernelStats: not implemented yet")
}
