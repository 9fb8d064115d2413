package ctnetlink

// Decoding of raw ctnetlink messages. Everything here works on untrusted
// bytes: every length is checked, nothing panics, and a message that cannot be
// decoded is rejected with an error (callers skip and count it).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/tracer"
)

// Netlink and ctnetlink constants (include/uapi/linux/netfilter/nfnetlink*.h).
const (
	nlmsgHdrLen = 16 // struct nlmsghdr
	nfgenLen    = 4  // struct nfgenmsg
	nlaHdrLen   = 4  // struct nlattr

	nlaTypeMask = 0x3fff // strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

	nfnlSubsysCTNetlink = 1

	ipctnlMsgCtNew         = 0
	ipctnlMsgCtGet         = 1
	ipctnlMsgCtDelete      = 2
	ipctnlMsgCtGetStatsCPU = 4
	ipctnlMsgCtGetStats    = 5

	// Multicast groups (enum nfnetlink_groups).
	GroupNew     = 1
	GroupDestroy = 3
)

// enum ctattr_type
const (
	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ctaProtoinfo  = 4
	ctaTimeout    = 7
	ctaMark       = 8
	ctaID         = 12
	ctaZone       = 18
	ctaTimestamp  = 20
)

// enum ctattr_tuple, ctattr_ip, ctattr_l4proto, ctattr_protoinfo(_tcp), ctattr_tstamp
const (
	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum        = 1
	ctaProtoSrcPort    = 2
	ctaProtoDstPort    = 3
	ctaProtoICMPID     = 4
	ctaProtoICMPType   = 5
	ctaProtoICMPCode   = 6
	ctaProtoICMPv6ID   = 7
	ctaProtoICMPv6Type = 8
	ctaProtoICMPv6Code = 9

	ctaProtoinfoTCP      = 1
	ctaProtoinfoTCPState = 1

	ctaTimestampStart = 1
	ctaTimestampStop  = 2
)

// enum ctattr_stats_cpu and ctattr_stats_global
const (
	ctaStatsFound         = 2
	ctaStatsInvalid       = 4
	ctaStatsInsert        = 8
	ctaStatsInsertFailed  = 9
	ctaStatsDrop          = 10
	ctaStatsEarlyDrop     = 11
	ctaStatsError         = 12
	ctaStatsSearchRestart = 13
	ctaStatsClashResolve  = 14
	ctaStatsChainTooLong  = 15

	ctaStatsGlobalEntries    = 1
	ctaStatsGlobalMaxEntries = 2
)

var (
	errShortMessage = errors.New("netlink message truncated")
	errBadAttribute = errors.New("malformed netlink attribute")
)

// Message is one netlink message: its header fields and its payload
// (everything after struct nlmsghdr).
type Message struct {
	Type, Flags uint16
	Seq, PID    uint32
	Data        []byte
}

// SplitMessages splits a datagram into netlink messages. It returns the
// messages before the first malformed header together with an error.
func SplitMessages(b []byte) ([]Message, error) {
	var msgs []Message
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return msgs, fmt.Errorf("%w: %d bytes left, header needs %d", errShortMessage, len(b), nlmsgHdrLen)
		}
		l := binary.NativeEndian.Uint32(b[0:4])
		if l < nlmsgHdrLen || uint64(l) > uint64(len(b)) {
			return msgs, fmt.Errorf("%w: length %d, %d bytes available", errShortMessage, l, len(b))
		}
		msgs = append(msgs, Message{
			Type:  binary.NativeEndian.Uint16(b[4:6]),
			Flags: binary.NativeEndian.Uint16(b[6:8]),
			Seq:   binary.NativeEndian.Uint32(b[8:12]),
			PID:   binary.NativeEndian.Uint32(b[12:16]),
			Data:  b[nlmsgHdrLen:l],
		})
		next := align4(int(l))
		if next >= len(b) {
			break
		}
		b = b[next:]
	}
	return msgs, nil
}

func align4(n int) int { return (n + 3) &^ 3 }

// walkAttrs calls fn for every attribute in b with its type (flags
// stripped) and payload. It stops at the first error.
func walkAttrs(b []byte, fn func(typ uint16, data []byte) error) error {
	for len(b) > 0 {
		if len(b) < nlaHdrLen {
			return fmt.Errorf("%w: %d trailing bytes", errBadAttribute, len(b))
		}
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < nlaHdrLen || l > len(b) {
			return fmt.Errorf("%w: length %d, %d bytes available", errBadAttribute, l, len(b))
		}
		if err := fn(binary.NativeEndian.Uint16(b[2:4])&nlaTypeMask, b[nlaHdrLen:l]); err != nil {
			return err
		}
		next := align4(l)
		if next >= len(b) {
			return nil
		}
		b = b[next:]
	}
	return nil
}

func attrU8(typ uint16, b []byte) (uint8, error) {
	if len(b) != 1 {
		return 0, fmt.Errorf("%w: attribute %d: %d bytes, want 1", errBadAttribute, typ, len(b))
	}
	return b[0], nil
}

func attrBE16(typ uint16, b []byte) (uint16, error) {
	if len(b) != 2 {
		return 0, fmt.Errorf("%w: attribute %d: %d bytes, want 2", errBadAttribute, typ, len(b))
	}
	return binary.BigEndian.Uint16(b), nil
}

func attrBE32(typ uint16, b []byte) (uint32, error) {
	if len(b) != 4 {
		return 0, fmt.Errorf("%w: attribute %d: %d bytes, want 4", errBadAttribute, typ, len(b))
	}
	return binary.BigEndian.Uint32(b), nil
}

func attrBE64(typ uint16, b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("%w: attribute %d: %d bytes, want 8", errBadAttribute, typ, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// CTMessage is a decoded conntrack message (an event or a dump entry).
type CTMessage struct {
	tracer.Entry
	HasID bool
	// Kernel timestamps (CTA_TIMESTAMP), present when
	// net.netfilter.nf_conntrack_timestamp is on; 0 otherwise.
	Start, Stop uint64 // ns, CLOCK_REALTIME
}

// ctTuple is a decoded CTA_TUPLE_*.
type ctTuple struct {
	tracer.Tuple
	Protocol         uint8
	hasIP, hasProtoN bool
}

// decodeCT decodes the payload of an IPCTNL_MSG_CT_NEW/DELETE message
// (struct nfgenmsg, then attributes). Both tuples with addresses of the
// message's family and a protocol number are required.
func decodeCT(data []byte) (CTMessage, error) {
	var m CTMessage
	if len(data) < nfgenLen {
		return m, fmt.Errorf("%w: no nfgenmsg", errShortMessage)
	}
	family := data[0]
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return m, fmt.Errorf("conntrack message: unknown family %d", family)
	}
	m.Family = family
	var orig, reply ctTuple
	var hasOrig, hasReply bool
	err := walkAttrs(data[nfgenLen:], func(typ uint16, b []byte) error {
		var err error
		switch typ {
		case ctaTupleOrig:
			orig, err = decodeTuple(b, family)
			hasOrig = true
		case ctaTupleReply:
			reply, err = decodeTuple(b, family)
			hasReply = true
		case ctaStatus:
			m.Status, err = attrBE32(typ, b)
		case ctaProtoinfo:
			err = walkAttrs(b, func(typ uint16, b []byte) error {
				if typ != ctaProtoinfoTCP {
					return nil
				}
				return walkAttrs(b, func(typ uint16, b []byte) error {
					var err error
					if typ == ctaProtoinfoTCPState {
						m.TCPState, err = attrU8(typ, b)
					}
					return err
				})
			})
		case ctaTimeout:
			var s uint32
			s, err = attrBE32(typ, b)
			m.Timeout = time.Duration(s) * time.Second
		case ctaMark:
			m.Mark, err = attrBE32(typ, b)
		case ctaID:
			m.ID, err = attrBE32(typ, b)
			m.HasID = err == nil
		case ctaZone:
			m.Zone, err = attrBE16(typ, b)
		case ctaTimestamp:
			err = walkAttrs(b, func(typ uint16, b []byte) error {
				var err error
				switch typ {
				case ctaTimestampStart:
					m.Start, err = attrBE64(typ, b)
				case ctaTimestampStop:
					m.Stop, err = attrBE64(typ, b)
				}
				return err
			})
		}
		return err
	})
	if err != nil {
		return m, err
	}
	if !hasOrig || !hasReply {
		return m, fmt.Errorf("conntrack message: missing tuple (original %t, reply %t)", hasOrig, hasReply)
	}
	if orig.Protocol != reply.Protocol {
		return m, fmt.Errorf("conntrack message: protocol %d in original, %d in reply", orig.Protocol, reply.Protocol)
	}
	m.Protocol = orig.Protocol
	m.Original = orig.Tuple
	m.Reply = reply.Tuple
	return m, nil
}

// decodeTuple decodes a CTA_TUPLE_* nest. ICMP and ICMPv6 put the echo id
// in SrcPort and type<<8|code in DstPort.
func decodeTuple(b []byte, family uint8) (ctTuple, error) {
	var t ctTuple
	alen := 4
	srcType, dstType := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if family == unix.AF_INET6 {
		alen = 16
		srcType, dstType = ctaIPv6Src, ctaIPv6Dst
	}
	addr := func(typ uint16, b []byte) (netip.Addr, error) {
		if len(b) != alen {
			return netip.Addr{}, fmt.Errorf("%w: address attribute %d: %d bytes, want %d", errBadAttribute, typ, len(b), alen)
		}
		if alen == 4 {
			return netip.AddrFrom4([4]byte(b)), nil
		}
		return netip.AddrFrom16([16]byte(b)), nil
	}
	var icmpType, icmpCode uint8
	err := walkAttrs(b, func(typ uint16, b []byte) error {
		switch typ {
		case ctaTupleIP:
			var hasSrc, hasDst bool
			err := walkAttrs(b, func(typ uint16, b []byte) error {
				var err error
				switch typ {
				case srcType:
					t.Src, err = addr(typ, b)
					hasSrc = true
				case dstType:
					t.Dst, err = addr(typ, b)
					hasDst = true
				case ctaIPv4Src, ctaIPv4Dst, ctaIPv6Src, ctaIPv6Dst:
					err = fmt.Errorf("%w: address attribute %d in a family %d tuple", errBadAttribute, typ, family)
				}
				return err
			})
			if err != nil {
				return err
			}
			if !hasSrc || !hasDst {
				return fmt.Errorf("%w: tuple without source or destination address", errBadAttribute)
			}
			t.hasIP = true
		case ctaTupleProto:
			return walkAttrs(b, func(typ uint16, b []byte) error {
				var err error
				switch typ {
				case ctaProtoNum:
					t.Protocol, err = attrU8(typ, b)
					t.hasProtoN = err == nil
				case ctaProtoSrcPort, ctaProtoICMPID, ctaProtoICMPv6ID:
					t.SrcPort, err = attrBE16(typ, b)
				case ctaProtoDstPort:
					t.DstPort, err = attrBE16(typ, b)
				case ctaProtoICMPType, ctaProtoICMPv6Type:
					icmpType, err = attrU8(typ, b)
				case ctaProtoICMPCode, ctaProtoICMPv6Code:
					icmpCode, err = attrU8(typ, b)
				}
				return err
			})
		}
		return nil
	})
	if err != nil {
		return t, err
	}
	if !t.hasIP || !t.hasProtoN {
		return t, fmt.Errorf("%w: tuple without addresses or protocol", errBadAttribute)
	}
	if t.Protocol == unix.IPPROTO_ICMP || t.Protocol == unix.IPPROTO_ICMPV6 {
		t.DstPort = uint16(icmpType)<<8 | uint16(icmpCode)
	}
	return t, nil
}

// CPUStats are the counters of one CPU from IPCTNL_MSG_CT_GET_STATS_CPU.
type CPUStats struct {
	CPU                                                                   uint16
	Found, Invalid, Insert, InsertFailed, Drop, EarlyDrop, Error, Restart uint32
	ClashResolve, ChainTooLong                                            uint32
}

// decodeStatsCPU decodes one reply message of IPCTNL_MSG_CT_GET_STATS_CPU;
// the CPU number is nfgenmsg.res_id.
func decodeStatsCPU(data []byte) (CPUStats, error) {
	var s CPUStats
	if len(data) < nfgenLen {
		return s, fmt.Errorf("%w: no nfgenmsg", errShortMessage)
	}
	s.CPU = binary.BigEndian.Uint16(data[2:4])
	err := walkAttrs(data[nfgenLen:], func(typ uint16, b []byte) error {
		var p *uint32
		switch typ {
		case ctaStatsFound:
			p = &s.Found
		case ctaStatsInvalid:
			p = &s.Invalid
		case ctaStatsInsert:
			p = &s.Insert
		case ctaStatsInsertFailed:
			p = &s.InsertFailed
		case ctaStatsDrop:
			p = &s.Drop
		case ctaStatsEarlyDrop:
			p = &s.EarlyDrop
		case ctaStatsError:
			p = &s.Error
		case ctaStatsSearchRestart:
			p = &s.Restart
		case ctaStatsClashResolve:
			p = &s.ClashResolve
		case ctaStatsChainTooLong:
			p = &s.ChainTooLong
		default:
			return nil
		}
		v, err := attrBE32(typ, b)
		*p = v
		return err
	})
	return s, err
}

// decodeStatsGlobal decodes the reply of IPCTNL_MSG_CT_GET_STATS.
func decodeStatsGlobal(data []byte) (entries, max uint32, err error) {
	if len(data) < nfgenLen {
		return 0, 0, fmt.Errorf("%w: no nfgenmsg", errShortMessage)
	}
	err = walkAttrs(data[nfgenLen:], func(typ uint16, b []byte) error {
		var err error
		switch typ {
		case ctaStatsGlobalEntries:
			entries, err = attrBE32(typ, b)
		case ctaStatsGlobalMaxEntries:
			max, err = attrBE32(typ, b)
		}
		return err
	})
	return entries, max, err
}

// eventFromCT converts a decoded NEW or DELETE message to an Event
// (without Time, NetNS and lifetime, which the listener fills in).
func eventFromCT(typ tracer.EventType, m *CTMessage) tracer.Event {
	return tracer.Event{
		Type:     typ,
		Cookie:   uint64(m.ID),
		Family:   m.Family,
		Protocol: m.Protocol,
		Original: m.Original,
		Reply:    m.Reply,
		Zone:     m.Zone,
		Mark:     m.Mark,
		Status:   m.Status,
		TCPState: m.TCPState,
	}
}

// ctMsgType returns the ctnetlink message number of a netlink message type,
// and whether the message belongs to the ctnetlink subsystem at all.
func ctMsgType(t uint16) (uint8, bool) {
	return uint8(t), t>>8 == nfnlSubsysCTNetlink
}

// DecodeEvent decodes one netlink message received on a ctnetlink
// event socket: ok is false (and err nil) for messages that are not NEW or
// DESTROY events.
func DecodeEvent(msg Message) (ev tracer.Event, m CTMessage, ok bool, err error) {
	mt, isCT := ctMsgType(msg.Type)
	if !isCT {
		return ev, m, false, nil
	}
	var typ tracer.EventType
	switch mt {
	case ipctnlMsgCtNew:
		if msg.Flags&(unix.NLM_F_CREATE|unix.NLM_F_EXCL) == 0 {
			return ev, m, false, nil // an update, not a new entry
		}
		typ = tracer.EventCreated
	case ipctnlMsgCtDelete:
		typ = tracer.EventDestroyed
	default:
		return ev, m, false, nil
	}
	m, err = decodeCT(msg.Data)
	if err != nil {
		return ev, m, false, err
	}
	return eventFromCT(typ, &m), m, true, nil
}
