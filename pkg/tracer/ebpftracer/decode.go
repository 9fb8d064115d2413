package ebpftracer

import (
	"fmt"
	"net"
	"net/netip"
	"time"
	"unsafe"

	"github.com/ctagent/ctagent/pkg/tracer"

	"golang.org/x/sys/unix"
)

// Conversions from the C enums of bpf/conntrack.h, as bpf2go generates
// them, to the root package's types (which cannot use the generated ones:
// the root must not link cilium/ebpf). TestEnumsMatchC checks them against
// the BTF of the embedded object: every C value is here, with the root
// constant of the same number and name.
var (
	// eventTypes is indexed by enum ct_event_type; 0 is no event type.
	eventTypes = [...]tracer.EventType{
		conntrackCtEventTypeCT_EVENT_CREATED:   tracer.EventCreated,
		conntrackCtEventTypeCT_EVENT_DESTROYED: tracer.EventDestroyed,
		conntrackCtEventTypeCT_EVENT_FAILED:    tracer.EventFailed,
	}
	// failReasons is indexed by enum ct_fail_reason, like the failed
	// counters of struct ct_counter_value.
	failReasons = [conntrackCtFailReasonCT_FAIL_MAX]tracer.FailReason{
		conntrackCtFailReasonCT_FAIL_NONE:           tracer.ReasonNone,
		conntrackCtFailReasonCT_FAIL_CLASH_RESOLVED: tracer.ReasonClashResolved,
		conntrackCtFailReasonCT_FAIL_CONFIRM_DROP:   tracer.ReasonConfirmDrop,
		conntrackCtFailReasonCT_FAIL_TABLE_FULL:     tracer.ReasonTableFull,
		conntrackCtFailReasonCT_FAIL_EXISTS:         tracer.ReasonExists,
		conntrackCtFailReasonCT_FAIL_NO_SPACE:       tracer.ReasonNoSpace,
		conntrackCtFailReasonCT_FAIL_OTHER:          tracer.ReasonOther,
	}
	// lostReasons is indexed by enum ct_lost_reason, the keys of the lost
	// map.
	lostReasons = [conntrackCtLostReasonCT_LOST_MAX]tracer.LostReason{
		conntrackCtLostReasonCT_LOST_RINGBUF_FULL:  tracer.LostRingbufFull,
		conntrackCtLostReasonCT_LOST_PERF_FULL:     tracer.LostPerfFull,
		conntrackCtLostReasonCT_LOST_COUNTERS_FULL: tracer.LostCountersFull,
		conntrackCtLostReasonCT_LOST_INFLIGHT_MISS: tracer.LostInflightMiss,
	}
)

// The root package's array sizes are the C ones: these assignments compile
// only while the array types are identical.
var (
	_ [tracer.NumFailReasons]uint64     = conntrackCtCounterValue{}.Failed
	_ [tracer.NumLifetimeBuckets]uint64 = conntrackCtCounterValue{}.LifetimeBuckets
)

// eventSize is sizeof(struct ct_event).
const eventSize = int(unsafe.Sizeof(conntrackCtEvent{}))

// decodeEvent converts one raw struct ct_event, as the BPF programs write it
// to the ring or perf buffer, into a tracer.Event; boot converts
// CLOCK_MONOTONIC to wall-clock time. A short record, or an event type or
// fail reason that enum ct_event_type or ct_fail_reason lacks, is an error.
//
// The record is read in place as the bpf2go-generated conntrackCtEvent
// rather than through encoding/binary: binary.Decode walks the struct by
// reflection on every record, which costs 20 times the whole decode here
// (BenchmarkDecode), on the path of every conntrack event. The cast is sound:
// the length is checked first; the struct holds no pointers and no implicit
// padding, so any bytes are a valid value; its layout is the C one
// (generated from BTF with structs.HostLayout, and TestEventLayout checks
// it); the generated files build only for little-endian hosts, the byte
// order the kernel writes; and Go allows unaligned pointers to pointer-free
// types (amd64 and arm64 load them). Nothing of raw is kept: the readers
// reuse it.
func decodeEvent(raw []byte, boot time.Duration) (tracer.Event, error) {
	if len(raw) < eventSize {
		return tracer.Event{}, fmt.Errorf("event record of %d bytes, want %d", len(raw), eventSize)
	}
	e := (*conntrackCtEvent)(unsafe.Pointer(unsafe.SliceData(raw)))
	if int(e.Type) >= len(eventTypes) || eventTypes[e.Type] == 0 {
		return tracer.Event{}, fmt.Errorf("unknown event type %d", e.Type)
	}
	if int(e.Reason) >= len(failReasons) {
		return tracer.Event{}, fmt.Errorf("unknown fail reason %d", e.Reason)
	}
	ev := tracer.Event{
		Type:          eventTypes[e.Type],
		Time:          time.Unix(0, int64(e.TimestampNs)+int64(boot)),
		Cookie:        e.Cookie,
		NetNS:         e.Netns,
		Family:        e.Family,
		Protocol:      e.Protocol,
		Original:      tupleFrom(&e.Original, e.Family),
		Reply:         tupleFrom(&e.Reply, e.Family),
		Zone:          e.Zone,
		Mark:          e.Mark,
		Status:        e.Status,
		TCPState:      e.TcpState,
		LifetimeKnown: conntrackCtEventFlag(e.Flags)&conntrackCtEventFlagCT_FLAG_LIFETIME_KNOWN != 0,
		Reason:        failReasons[e.Reason],
		Error:         e.Error,
	}
	if ev.LifetimeKnown {
		ev.Lifetime = time.Duration(e.LifetimeNs)
	}
	return ev, nil
}

func tupleFrom(t *conntrackCtTuple, family uint8) tracer.Tuple {
	return tracer.Tuple{
		Src:     addrFrom(&t.SrcAddr, family),
		Dst:     addrFrom(&t.DstAddr, family),
		SrcPort: t.SrcPort,
		DstPort: t.DstPort,
	}
}

// addrFrom reads an address in network byte order, IPv4 in the first bytes
// (struct ct_tuple). An unknown family gives the zero Addr.
func addrFrom(b *[net.IPv6len]byte, family uint8) netip.Addr {
	switch family {
	case unix.AF_INET:
		return netip.AddrFrom4([net.IPv4len]byte(b[:net.IPv4len]))
	case unix.AF_INET6:
		return netip.AddrFrom16(*b)
	}
	return netip.Addr{}
}
