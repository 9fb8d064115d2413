// Package tracer observes nf_conntrack: it attaches CO-RE eBPF programs
// (fentry, else kprobe) or, where they cannot attach, listens to ctnetlink in
// every network namespace. Every backend delivers the same Event and Counters
// types, so nothing above this package cares which one runs.
package tracer

import (
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/netns"
)

// Backend names the mechanism that observes the conntrack table.
type Backend string

// Backends, in the order BackendAuto tries them.
const (
	BackendAuto    Backend = "auto"
	BackendFentry  Backend = "fentry"
	BackendKprobe  Backend = "kprobe"
	BackendNetlink Backend = "netlink"
)

// ParseBackend accepts the names of --tracer.backend.
func ParseBackend(s string) (Backend, error) {
	switch b := Backend(s); b {
	case BackendAuto, BackendFentry, BackendKprobe, BackendNetlink:
		return b, nil
	}
	return "", fmt.Errorf("unknown tracer backend %q (want auto, fentry, kprobe or netlink)", s)
}

// EventType says what happened to an entry.
type EventType uint8

// Event types; the values match enum ct_event_type in bpf/conntrack.h
// (ebpftracer's TestEnumsMatchC checks it).
const (
	EventCreated   EventType = 1 // confirmed into the hash table
	EventDestroyed EventType = 2 // a confirmed entry was removed
	EventFailed    EventType = 3 // an entry could not be created or inserted
)

func (t EventType) String() string {
	switch t {
	case EventCreated:
		return "created"
	case EventDestroyed:
		return "destroyed"
	case EventFailed:
		return "failed"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// FailReason says why an insert failed; the values match enum ct_fail_reason
// (ebpftracer's TestEnumsMatchC checks it).
type FailReason uint8

// Failure reasons.
const (
	ReasonNone          FailReason = 0
	ReasonClashResolved FailReason = 1 // packet path: another CPU won; the packet continued with the winner
	ReasonConfirmDrop   FailReason = 2 // packet path: NF_DROP at confirm (kernel stat insert_failed)
	ReasonTableFull     FailReason = 3 // table full and early drop freed nothing (kernel stat drop)
	ReasonExists        FailReason = 4 // ctnetlink: -EEXIST
	ReasonNoSpace       FailReason = 5 // ctnetlink: -ENOSPC
	ReasonOther         FailReason = 6 // ctnetlink: another error
	NumFailReasons                 = 7
)

var failReasonNames = [NumFailReasons]string{"none", "clash_resolved", "confirm_drop", "table_full", "exists", "no_space", "other"}

func (r FailReason) String() string {
	if int(r) < len(failReasonNames) {
		return failReasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Tuple is one direction of a connection. For ICMP and ICMPv6, SrcPort is
// the echo id and DstPort is type<<8 | code.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
}

// ICMPType returns the ICMP type of an ICMP tuple.
func (t Tuple) ICMPType() uint8 { return uint8(t.DstPort >> 8) }

// ICMPCode returns the ICMP code of an ICMP tuple.
func (t Tuple) ICMPCode() uint8 { return uint8(t.DstPort) }

// Event is one change of the conntrack table.
type Event struct {
	Type          EventType
	Time          time.Time // wall clock
	Cookie        uint64    // identifies the entry while it lives; 0 when unknown
	NetNS         uint32    // inode number of the entry's network namespace
	Family        uint8     // unix.AF_INET or unix.AF_INET6
	Protocol      uint8     // unix.IPPROTO_*
	Original      Tuple
	Reply         Tuple
	Zone          uint16
	Mark          uint32
	Status        uint32 // IPS_* bits
	TCPState      uint8  // TCP_CONNTRACK_*, TCP only
	Lifetime      time.Duration
	LifetimeKnown bool       // destroyed, and its creation was seen
	Reason        FailReason // failed only
	Error         int32      // failed: the kernel's return value
}

// Key identifies one set of counters.
type Key struct {
	NetNS    uint32
	Family   uint8
	Protocol uint8
}

// NumLifetimeBuckets is the number of lifetime histogram buckets.
const NumLifetimeBuckets = 28

// LifetimeBucketBound is the upper bound of lifetime bucket i, in seconds:
// 2^i ms. The last bucket has no bound (+Inf).
func LifetimeBucketBound(i int) float64 {
	return float64(uint64(1)<<uint(i)) / 1000
}

// Values are the counters of one Key since the tracer started.
type Values struct {
	Created          uint64
	Destroyed        uint64
	DestroyedNoStart uint64 // destroyed, creation not seen: not in the histogram
	Failed           [NumFailReasons]uint64
	LifetimeSum      time.Duration
	LifetimeBuckets  [NumLifetimeBuckets]uint64 // not cumulative
}

// Add adds o to v.
func (v *Values) Add(o Values) {
	v.Created += o.Created
	v.Destroyed += o.Destroyed
	v.DestroyedNoStart += o.DestroyedNoStart
	for i := range v.Failed {
		v.Failed[i] += o.Failed[i]
	}
	v.LifetimeSum += o.LifetimeSum
	for i := range v.LifetimeBuckets {
		v.LifetimeBuckets[i] += o.LifetimeBuckets[i]
	}
}

// Counters is a snapshot of every Key's counters.
type Counters map[Key]Values

// LostReason names why events or counter updates were lost.
type LostReason string

// Reasons for lost events. The kernel's (the first four) are enum
// ct_lost_reason, named in lower case without the CT_LOST_ prefix
// (ebpftracer's TestEnumsMatchC checks it).
const (
	LostRingbufFull   LostReason = "ringbuf_full"    // kernel: ring buffer had no room
	LostPerfFull      LostReason = "perf_full"       // kernel: perf buffer had no room
	LostCountersFull  LostReason = "counters_full"   // kernel: counters map had no room for a key
	LostInflightMiss  LostReason = "inflight_miss"   // kernel: return probe without its entry probe
	LostPerfSamples   LostReason = "perf_lost"       // user space: perf reader reported lost samples
	LostDecodeError   LostReason = "decode_error"    // user space: a record could not be decoded
	LostChannelFull   LostReason = "channel_full"    // user space: the Events channel was full
	LostNetlinkNoBufs LostReason = "netlink_enobufs" // netlink: socket overrun (followed by a resync)
)

// Namespace is a network namespace and a path that opens it (Path "" is
// the current one). pkg/netns owns the namespace set; the tracer uses its
// type, so no layer converts namespaces field by field.
type Namespace = netns.Namespace

// HookState says what became of a candidate hook.
type HookState string

// Hook states, in Info.HookStatus.
const (
	HookPassed       HookState = "passed"        // attached, and the self-test saw every event
	HookNotTested    HookState = "not_tested"    // attached; the self-test cannot provoke its events
	HookMissed       HookState = "missed"        // attached, but the self-test found events it did not see
	HookAttachFailed HookState = "attach_failed" // the kernel has it, attach failed
	HookUnavailable  HookState = "unavailable"   // this kernel has no such function (or no BTF for it)
	HookStandby      HookState = "standby"       // loaded, not needed: a better candidate passed
)

// HookStatus is one candidate hook of an eBPF backend and what became of it.
type HookStatus struct {
	Group  string    // "confirm", "ctnetlink_insert", "destroy" or "alloc"
	Serves []string  // the counters the group feeds
	Hook   string    // e.g. "kprobe/nf_ct_delete.part.0" (entry program; "+exit" pairs named once)
	Active bool      // it feeds the counters now
	State  HookState // what the start-up proof found
	Detail string    // why, in words: the missed events, the attach error
}

// Info describes what a Tracer runs.
type Info struct {
	Backend Backend
	Hooks   []string // attached kernel symbols, e.g. "fexit/__nf_conntrack_confirm"
	// HookStatus lists every candidate hook of an eBPF backend, in order
	// of preference per group, with the one that serves it (Active) and
	// what the start-up self-test found. nil for the netlink backend.
	HookStatus []HookStatus
	Refused    map[Backend]string // backends tried before this one, and why they failed
	// RefusedReason classifies each refusal in a short, stable word, for a
	// metric label: no_btf, permission_denied, not_supported,
	// symbol_not_found, verifier_rejected, self_test_failed, unavailable or
	// error.
	RefusedReason map[Backend]string
	RingBuffer    bool   // eBPF: ring buffer (true) or perf event array
	Kernel        string // uname -r
	// CountsUnwatched says that the backend counts every namespace, also
	// those it was not told to Watch (the eBPF backends): its counters can
	// reveal namespaces the caller does not know yet.
	CountsUnwatched bool
	// CounterLag is how long after an entry is in the table its creation
	// is in Counters at the latest, in the usual case: an entry is hashed
	// before the eBPF exit program that counts it runs (microseconds, or
	// milliseconds when a CPU is preempted in between: seen under qemu),
	// and netlink events travel through sockets and goroutines. A caller
	// that compares a table dump with the counters reads them that much
	// after the dump.
	CounterLag time.Duration
	// PinDir is where the eBPF backends' links, programs and maps are
	// pinned (Options.PinPath and a version), "" when they are not.
	PinDir string
	// Adopted says that the eBPF programs were adopted from PinDir, where
	// an earlier ctagent left them counting, instead of attached anew:
	// the counters continue.
	Adopted bool
}

// Tracer observes the conntrack table.
type Tracer interface {
	// Info says which backend runs and what it attached.
	Info() Info
	// Events is the event stream; closed by Close. Events that do not fit
	// are counted as LostChannelFull, never blocking the reader. While the
	// stream is off (Options.DisableEvents, SetEvents) nothing is sent on
	// it.
	Events() <-chan Event
	// SetEvents turns the event stream on or off at any time. Off, no
	// event reaches user space (the eBPF programs write no record; the
	// netlink backend sends none on the channel); the counters count
	// either way. A daemon keeps it off while no client listens.
	SetEvents(on bool) error
	// Counters reads the counters (in-kernel maps for eBPF).
	Counters() (Counters, error)
	// Lost returns every lost-event counter by reason.
	Lost() (map[LostReason]uint64, error)
	// Programs returns run statistics of the attached eBPF programs (run
	// count and time need kernel BPF stats enabled, see
	// Options.BPFStats); nil for the netlink backend.
	Programs() ([]ProgramStats, error)
	// Watch makes the tracer count ns from now on, if it does not yet:
	// once it returns nil, every entry created in ns is in Counters (after
	// Info.CounterLag). A caller that dumps a namespace's table as the
	// baseline of its entry count calls it before the dump. The eBPF
	// backends count every namespace and return nil at once; the netlink
	// backend starts a listener in ns.
	Watch(ns Namespace) error
	// Unwatch stops observing a namespace that left the namespace source
	// (the netlink backend closes its listener, whose socket would keep the
	// namespace alive); its counters stay until Forget. The eBPF backends
	// do nothing.
	Unwatch(netns uint32)
	// Forget drops what the tracer keeps of a network namespace that is
	// gone (counters, listener, kernel statistics totals), so that nothing
	// grows with namespace churn. Counting starts from zero if the
	// namespace shows up again.
	Forget(netns uint32) error
	Table
	// Close detaches everything; safe to call more than once.
	Close() error
}

// Table reads what the kernel itself knows of a namespace's conntrack
// table, the same way for every backend (ctnetlink).
type Table interface {
	// DumpTable calls fn for every entry of the table of ns, streaming.
	// When some messages could not be decoded, every other entry is
	// still delivered and the error is a *SkippedError.
	DumpTable(ns Namespace, fn func(Entry)) error
	// KernelStats reads the kernel's statistics of ns. The per-CPU
	// counters only go up across calls, even when the kernel's 32-bit
	// counters wrap (see ctnetlink.KernelStatsReader).
	KernelStats(ns Namespace) (KernelStats, error)
}

// SkippedError is returned by Table.DumpTable when some messages of the
// dump could not be decoded. Every other entry was delivered: callers that
// can live with a partial dump check for it with errors.As.
type SkippedError struct {
	Skipped int   // messages skipped
	First   error // why the first one was skipped
}

func (e *SkippedError) Error() string {
	return fmt.Sprintf("conntrack dump: skipped %d undecodable messages, first: %v", e.Skipped, e.First)
}

// Unwrap returns the reason of the first skipped message.
func (e *SkippedError) Unwrap() error { return e.First }

// Options configure Open.
type Options struct {
	Backend         Backend
	BTFPath         string // a vmlinux BTF file instead of /sys/kernel/btf/vmlinux
	RingBufferSize  int    // bytes, a power of two multiple of the page size; 0: 4 MiB
	PerfBufferSize  int    // bytes per CPU; 0: 256 KiB
	ForcePerfBuffer bool   // use the perf event array even where ring buffers exist
	DisableEvents   bool   // start with the event stream off (counters only); SetEvents turns it on
	EventBuffer     int    // capacity of the Events channel; 0: 4096
	// BPFStats turns on the kernel's run time and run count accounting of
	// BPF programs (Programs) while the tracer is open; it costs a clock
	// read per program run. Ignored by the netlink backend.
	BPFStats bool
	Logger   *zap.Logger
	// LifetimeEntries sizes the map of creation times (one LRU for the live
	// entries of all namespaces, preallocated); an entry evicted from it is
	// counted as destroyed without a known lifetime. 0: twice
	// nf_conntrack_max, within 65,536..1,048,576.
	LifetimeEntries int
	// MaxNamespaces sizes the in-kernel counters map (about 8 keys per
	// namespace); 0: room for 2,048 namespaces.
	MaxNamespaces int
	// SkipSelfTest attaches the first candidate hook of every group without
	// proving at start that it sees every event. For tests of the proof
	// itself; a daemon should never skip it.
	SkipSelfTest bool
	// OnlyHooks restricts hook groups to one candidate each, by group name
	// ("destroy") and kernel symbol ("nf_ct_delete") or clone prefix
	// ("nf_ct_delete.part."). For tests that prove each candidate.
	OnlyHooks map[string]string
	// PinPath is a directory on bpffs (e.g. /sys/fs/bpf/ctagent) where the
	// eBPF backends pin their links, programs and maps, so that the
	// programs keep counting while ctagent is down and the next Open of
	// the same version adopts them (the counters continue); "" disables
	// pinning. Close keeps the pins; RemovePins in package ebpftracer
	// removes them.
	PinPath string

	// Netlink backend: the namespaces to listen in from the start, called
	// once by Open (nil: only the current namespace). Those that come
	// later are added with Watch and removed with Unwatch by the owner of
	// the namespace set (the exporter, following pkg/netns).
	Namespaces        func() ([]Namespace, error)
	NetlinkBufferSize int // socket receive buffer, bytes; 0: 8 MiB
	// KernelStatsInterval, if positive, makes the netlink backend read the
	// kernel statistics of every namespace (the per-CPU counters and the
	// entry count) in the background, every KernelStatsInterval, a few
	// namespaces at a time, and those of a namespace at once when its
	// listener starts: Counters (the failure counters) and KernelStats
	// answer from the last read, which is at most KernelStatsInterval plus
	// one pass over the namespaces old (KernelStats.ReadAt). 0: they read
	// the kernel at each call. Ignored by the eBPF backends.
	KernelStatsInterval time.Duration
}

// ProgramStats are the kernel's run statistics of one attached program.
type ProgramStats struct {
	Name     string        // program name, e.g. "fexit_confirm"
	Hook     string        // e.g. "fexit/__nf_conntrack_confirm"
	RunCount uint64        // 0 unless BPF stats are enabled
	RunTime  time.Duration // total time spent in the program
}

// Entry is one conntrack entry from a table dump.
type Entry struct {
	ID       uint32 // CTA_ID
	Family   uint8
	Protocol uint8
	Original Tuple
	Reply    Tuple
	Status   uint32 // IPS_* bits (IPS_ASSURED, IPS_SEEN_REPLY, ...)
	TCPState uint8  // TCP_CONNTRACK_*, TCP only
	Mark     uint32
	Zone     uint16
	Timeout  time.Duration // time left
}

// KernelStats are the kernel's own conntrack statistics of one network
// namespace (ctnetlink IPCTNL_MSG_CT_GET_STATS_CPU summed over CPUs, and
// IPCTNL_MSG_CT_GET_STATS for the entry count), available even where
// /proc/net/stat/nf_conntrack is not.
type KernelStats struct {
	Found, Invalid, Insert, InsertFailed, Drop, EarlyDrop, Error, SearchRestart uint64
	ClashResolve, ChainTooLong                                                  uint64 // 0 on kernels without them
	Entries                                                                     uint64 // current number of entries
	MaxEntries                                                                  uint64 // nf_conntrack_max as the kernel reports it; 0 if not reported
	// ReadAt is when the kernel was read: a backend that reads the
	// statistics in the background (Options.KernelStatsInterval) answers
	// with its last read.
	ReadAt time.Time
}
