package ebpftracer

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer"

	"golang.org/x/sys/unix"
)

// eventSize is sizeof(struct ct_event) in bpf/conntrack.h.
const eventSize = 120

// tupleSize is sizeof(struct ct_tuple).
const tupleSize = 36

// decodeEvent decodes one raw struct ct_event (little endian, as written by
// the BPF programs). boot converts CLOCK_MONOTONIC to wall-clock time.
func decodeEvent(raw []byte, boot time.Duration) (tracer.Event, error) {
	if len(raw) < eventSize {
		return tracer.Event{}, fmt.Errorf("event record of %d bytes, want %d", len(raw), eventSize)
	}
	le := binary.LittleEndian
	ev := tracer.Event{
		Time:     time.Unix(0, int64(le.Uint64(raw[0:]))+int64(boot)),
		Lifetime: time.Duration(le.Uint64(raw[8:])),
		Cookie:   le.Uint64(raw[16:]),
		NetNS:    le.Uint32(raw[24:]),
		Mark:     le.Uint32(raw[28:]),
		Status:   le.Uint32(raw[32:]),
		Error:    int32(le.Uint32(raw[36:])),
		Zone:     le.Uint16(raw[40:]),
		Type:     tracer.EventType(raw[42]),
		Reason:   tracer.FailReason(raw[43]),
		Family:   raw[44],
		Protocol: raw[45],
		TCPState: raw[46],
	}
	flags := raw[47]
	if ev.Type < tracer.EventCreated || ev.Type > tracer.EventFailed {
		return tracer.Event{}, fmt.Errorf("unknown event type %d", raw[42])
	}
	if int(ev.Reason) >= tracer.NumFailReasons {
		return tracer.Event{}, fmt.Errorf("unknown fail reason %d", raw[43])
	}
	ev.LifetimeKnown = flags&1 != 0
	if !ev.LifetimeKnown {
		ev.Lifetime = 0
	}
	ev.Original = decodeRawTuple(raw[48:48+tupleSize], ev.Family)
	ev.Reply = decodeRawTuple(raw[48+tupleSize:48+2*tupleSize], ev.Family)
	return ev, nil
}

func decodeRawTuple(raw []byte, family uint8) tracer.Tuple {
	t := tracer.Tuple{
		SrcPort: binary.LittleEndian.Uint16(raw[32:]),
		DstPort: binary.LittleEndian.Uint16(raw[34:]),
	}
	t.Src = addrFrom(raw[0:16], family)
	t.Dst = addrFrom(raw[16:32], family)
	return t
}

// addrFrom reads an address in network byte order: IPv4 in the first four
// bytes. An unknown family gives the zero Addr.
func addrFrom(b []byte, family uint8) netip.Addr {
	switch family {
	case unix.AF_INET:
		return netip.AddrFrom4([4]byte(b[:4]))
	case unix.AF_INET6:
		return netip.AddrFrom16([16]byte(b[:16]))
	}
	return netip.Addr{}
}
