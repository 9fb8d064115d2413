package ctnetlink

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/tracer"
)

func nlAttr(typ uint16, payload []byte) []byte {
	b := make([]byte, nlaHdrLen, align4(nlaHdrLen+len(payload)))
	binary.NativeEndian.PutUint16(b[0:2], uint16(nlaHdrLen+len(payload)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	b = append(b, payload...)
	return b[:cap(b)][:align4(len(b))]
}

func nlNest(typ uint16, children ...[]byte) []byte {
	return nlAttr(typ|unix.NLA_F_NESTED, slices.Concat(children...))
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func encodeTuple(typ uint16, family, proto uint8, tp tracer.Tuple) []byte {
	src, dst := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if family == unix.AF_INET6 {
		src, dst = ctaIPv6Src, ctaIPv6Dst
	}
	l4 := [][]byte{nlAttr(ctaProtoNum, []byte{proto})}
	switch proto {
	case unix.IPPROTO_ICMP:
		l4 = append(l4, nlAttr(ctaProtoICMPID, be16(tp.SrcPort)), nlAttr(ctaProtoICMPType, []byte{tp.ICMPType()}), nlAttr(ctaProtoICMPCode, []byte{tp.ICMPCode()}))
	case unix.IPPROTO_ICMPV6:
		l4 = append(l4, nlAttr(ctaProtoICMPv6ID, be16(tp.SrcPort)), nlAttr(ctaProtoICMPv6Type, []byte{tp.ICMPType()}), nlAttr(ctaProtoICMPv6Code, []byte{tp.ICMPCode()}))
	default:
		l4 = append(l4, nlAttr(ctaProtoSrcPort, be16(tp.SrcPort)), nlAttr(ctaProtoDstPort, be16(tp.DstPort)))
	}
	return nlNest(typ,
		nlNest(ctaTupleIP, nlAttr(src, tp.Src.AsSlice()), nlAttr(dst, tp.Dst.AsSlice())),
		nlNest(ctaTupleProto, l4...))
}

// encodeCT builds a whole netlink message as ctnetlink sends it.
func encodeCT(msgType uint8, flags uint16, e tracer.Entry, extra ...[]byte) []byte {
	attrs := slices.Concat(
		encodeTuple(ctaTupleOrig, e.Family, e.Protocol, e.Original),
		encodeTuple(ctaTupleReply, e.Family, e.Protocol, e.Reply),
		nlAttr(ctaStatus, be32(e.Status)),
		nlAttr(ctaTimeout, be32(uint32(e.Timeout/time.Second))),
		nlAttr(ctaMark, be32(e.Mark)),
		nlAttr(ctaID, be32(e.ID)),
		nlAttr(ctaZone, be16(e.Zone)),
	)
	if e.Protocol == unix.IPPROTO_TCP {
		attrs = append(attrs, nlNest(ctaProtoinfo, nlNest(ctaProtoinfoTCP, nlAttr(ctaProtoinfoTCPState, []byte{e.TCPState})))...)
	}
	for _, x := range extra {
		attrs = append(attrs, x...)
	}
	return encodeMsg(nfnlSubsysCTNetlink<<8|uint16(msgType), flags, e.Family, 0, attrs)
}

func encodeMsg(typ, flags uint16, family uint8, resID uint16, attrs []byte) []byte {
	b := make([]byte, nlmsgHdrLen+nfgenLen)
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)+len(attrs)))
	binary.NativeEndian.PutUint16(b[4:6], typ)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	b[nlmsgHdrLen] = family
	binary.BigEndian.PutUint16(b[nlmsgHdrLen+2:], resID)
	return append(b, attrs...)
}

func sampleEntries() []tracer.Entry {
	a4, b4 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.7")
	a6, b6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::ff")
	return []tracer.Entry{
		{ID: 1, Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, Original: tracer.Tuple{Src: a4, Dst: b4, SrcPort: 40000, DstPort: 80},
			Reply: tracer.Tuple{Src: b4, Dst: a4, SrcPort: 8080, DstPort: 40000}, Status: 0x18e, TCPState: 3, Mark: 7, Zone: 3, Timeout: 431999 * time.Second},
		{ID: 0xfffffffe, Family: unix.AF_INET6, Protocol: unix.IPPROTO_UDP, Original: tracer.Tuple{Src: a6, Dst: b6, SrcPort: 53, DstPort: 5353},
			Reply: tracer.Tuple{Src: b6, Dst: a6, SrcPort: 5353, DstPort: 53}, Status: 0x8, Timeout: 30 * time.Second},
		{ID: 3, Family: unix.AF_INET, Protocol: unix.IPPROTO_ICMP, Original: tracer.Tuple{Src: a4, Dst: b4, SrcPort: 4242, DstPort: 8 << 8},
			Reply: tracer.Tuple{Src: b4, Dst: a4, SrcPort: 4242, DstPort: 0}},
		{ID: 4, Family: unix.AF_INET6, Protocol: unix.IPPROTO_ICMPV6, Original: tracer.Tuple{Src: a6, Dst: b6, SrcPort: 9, DstPort: 128 << 8},
			Reply: tracer.Tuple{Src: b6, Dst: a6, SrcPort: 9, DstPort: 129 << 8}, Zone: 65535},
	}
}

func TestNetlinkDecode(t *testing.T) {
	for _, e := range sampleEntries() {
		raw := encodeCT(ipctnlMsgCtNew, unix.NLM_F_CREATE|unix.NLM_F_EXCL, e,
			nlNest(ctaTimestamp, nlAttr(ctaTimestampStart, be64(100)), nlAttr(ctaTimestampStop, be64(350))))
		msgs, err := SplitMessages(raw)
		if err != nil || len(msgs) != 1 {
			t.Fatalf("split: %v, %d messages", err, len(msgs))
		}
		ev, m, ok, err := DecodeEvent(msgs[0])
		if err != nil || !ok {
			t.Fatalf("decode %+v: ok %v, %v", e, ok, err)
		}
		if m.Entry != e {
			t.Errorf("entry:\n got %+v\nwant %+v", m.Entry, e)
		}
		if m.Start != 100 || m.Stop != 350 {
			t.Errorf("timestamps %d %d", m.Start, m.Stop)
		}
		if ev.Original.Src.Is4In6() || (e.Family == unix.AF_INET) != ev.Original.Src.Is4() {
			t.Errorf("address form: %v", ev.Original.Src)
		}
		want := tracer.Event{Type: tracer.EventCreated, Cookie: uint64(e.ID), Family: e.Family, Protocol: e.Protocol, Original: e.Original,
			Reply: e.Reply, Zone: e.Zone, Mark: e.Mark, Status: e.Status, TCPState: e.TCPState}
		if ev != want {
			t.Errorf("event:\n got %+v\nwant %+v", ev, want)
		}
		// DELETE is a destroy event; NEW without CREATE is an update: ignored.
		msgs, _ = SplitMessages(encodeCT(ipctnlMsgCtDelete, 0, e))
		if ev, _, ok, err := DecodeEvent(msgs[0]); err != nil || !ok || ev.Type != tracer.EventDestroyed {
			t.Errorf("delete: %v %v %v", ev.Type, ok, err)
		}
		msgs, _ = SplitMessages(encodeCT(ipctnlMsgCtNew, 0, e))
		if _, _, ok, err := DecodeEvent(msgs[0]); err != nil || ok {
			t.Errorf("update: ok %v, %v", ok, err)
		}
		// Every truncation fails cleanly (or, cut at an attribute
		// boundary after the tuples, decodes).
		for i := range len(raw) {
			cut := append([]byte(nil), raw[:i]...)
			if len(cut) >= 4 {
				binary.NativeEndian.PutUint32(cut[0:4], uint32(len(cut)))
			}
			msgs, err := SplitMessages(cut)
			if err != nil || len(msgs) == 0 {
				continue
			}
			_, _, _, _ = DecodeEvent(msgs[0])
		}
	}

	e := sampleEntries()[0]
	bad := map[string][]byte{
		"no tuples": encodeMsg(nfnlSubsysCTNetlink<<8, unix.NLM_F_CREATE, unix.AF_INET, 0, nlAttr(ctaID, be32(1))),
		"short id": encodeMsg(nfnlSubsysCTNetlink<<8, unix.NLM_F_CREATE, unix.AF_INET, 0, slices.Concat(
			encodeTuple(ctaTupleOrig, e.Family, e.Protocol, e.Original), encodeTuple(ctaTupleReply, e.Family, e.Protocol, e.Reply),
			nlAttr(ctaID, []byte{1, 2}))),
		"v6 address in v4 message": encodeMsg(nfnlSubsysCTNetlink<<8, unix.NLM_F_CREATE, unix.AF_INET, 0, slices.Concat(
			encodeTuple(ctaTupleOrig, unix.AF_INET6, e.Protocol, sampleEntries()[1].Original), encodeTuple(ctaTupleReply, e.Family, e.Protocol, e.Reply))),
		"unknown family": encodeCT(ipctnlMsgCtNew, unix.NLM_F_CREATE, tracer.Entry{Family: 7, Protocol: 6, Original: e.Original, Reply: e.Reply}),
		"attribute overruns": func() []byte {
			b := encodeCT(ipctnlMsgCtNew, unix.NLM_F_CREATE, e)
			binary.NativeEndian.PutUint16(b[nlmsgHdrLen+nfgenLen:], 0xfff0)
			return b
		}(),
		"protocol mismatch": encodeMsg(nfnlSubsysCTNetlink<<8, unix.NLM_F_CREATE, unix.AF_INET, 0, slices.Concat(
			encodeTuple(ctaTupleOrig, e.Family, unix.IPPROTO_TCP, e.Original), encodeTuple(ctaTupleReply, e.Family, unix.IPPROTO_UDP, e.Reply))),
	}
	for name, raw := range bad {
		msgs, err := SplitMessages(raw)
		if err != nil {
			t.Fatalf("%s: split: %v", name, err)
		}
		if _, _, ok, err := DecodeEvent(msgs[0]); err == nil || ok {
			t.Errorf("%s: accepted (ok %v)", name, ok)
		}
	}
	if _, err := SplitMessages([]byte{1, 2, 3}); err == nil {
		t.Error("split accepted 3 bytes")
	}
	hdr := make([]byte, 16)
	binary.NativeEndian.PutUint32(hdr, 200)
	if _, err := SplitMessages(hdr); err == nil {
		t.Error("split accepted a length beyond the buffer")
	}

	// Statistics.
	cpu := encodeMsg(nfnlSubsysCTNetlink<<8|ipctnlMsgCtGetStatsCPU, 0, 0, 1, slices.Concat(
		nlAttr(ctaStatsFound, be32(5)), nlAttr(ctaStatsInsert, be32(7)), nlAttr(ctaStatsDrop, be32(9)),
		nlAttr(ctaStatsClashResolve, be32(11)), nlAttr(ctaStatsChainTooLong, be32(13)), nlAttr(99, be64(1))))
	msgs, _ := SplitMessages(cpu)
	s, err := decodeStatsCPU(msgs[0].Data)
	if err != nil || s != (CPUStats{CPU: 1, Found: 5, Insert: 7, Drop: 9, ClashResolve: 11, ChainTooLong: 13}) {
		t.Errorf("stats cpu: %+v, %v", s, err)
	}
	if _, err := decodeStatsCPU(encodeMsg(0, 0, 0, 0, nlAttr(ctaStatsDrop, be16(1)))[nlmsgHdrLen:]); err == nil {
		t.Error("stats cpu accepted a 2-byte counter")
	}
	g := encodeMsg(0, 0, 0, 0, slices.Concat(nlAttr(ctaStatsGlobalEntries, be32(3)), nlAttr(ctaStatsGlobalMaxEntries, be32(262144))))
	if n, m, err := decodeStatsGlobal(g[nlmsgHdrLen:]); n != 3 || m != 262144 || err != nil {
		t.Errorf("global stats %d %d %v", n, m, err)
	}
}

// FuzzNetlinkDecode feeds arbitrary datagrams to the raw-message decoder:
// it must never panic, and whatever it accepts must be well-formed.
func FuzzNetlinkDecode(f *testing.F) {
	for _, e := range sampleEntries() {
		f.Add(encodeCT(ipctnlMsgCtNew, unix.NLM_F_CREATE|unix.NLM_F_EXCL, e))
		f.Add(encodeCT(ipctnlMsgCtDelete, 0, e, nlNest(ctaTimestamp, nlAttr(ctaTimestampStart, be64(1)))))
	}
	f.Add(slices.Concat(encodeCT(ipctnlMsgCtNew, unix.NLM_F_CREATE, sampleEntries()[0]), encodeCT(ipctnlMsgCtDelete, 0, sampleEntries()[1])))
	f.Add(encodeMsg(nfnlSubsysCTNetlink<<8|ipctnlMsgCtGetStatsCPU, 0, 0, 1, nlAttr(ctaStatsDrop, be32(9))))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, _ := SplitMessages(b)
		for _, m := range msgs {
			ev, dm, ok, err := DecodeEvent(m)
			if err == nil && ok {
				if ev.Family != unix.AF_INET && ev.Family != unix.AF_INET6 {
					t.Fatalf("accepted family %d", ev.Family)
				}
				is4 := ev.Family == unix.AF_INET
				for _, a := range []netip.Addr{ev.Original.Src, ev.Original.Dst, ev.Reply.Src, ev.Reply.Dst} {
					if !a.IsValid() || a.Is4() != is4 {
						t.Fatalf("accepted address %v in family %d", a, ev.Family)
					}
				}
				if ev.Cookie != uint64(dm.ID) {
					t.Fatalf("cookie %d, id %d", ev.Cookie, dm.ID)
				}
			}
			_, _ = decodeStatsCPU(m.Data)
			_, _, _ = decodeStatsGlobal(m.Data)
		}
	})
}

// --- integration: real namespaces, real traffic -------------------------------
