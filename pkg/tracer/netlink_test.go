package tracer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
)

// --- lifetime buckets -------------------------------------------------------

// cLifetimeBucket is lifetime_bucket of bpf/conntrack.bpf.c: the same
// steps, its unrolled shifts (16, 8, 4, 2, 1) written as a loop.
func cLifetimeBucket(ns uint64) int {
	ms := (ns + 999999) / 1000000
	b := uint64(0)
	if ms <= 1 {
		return 0
	}
	ms--
	for _, s := range []uint64{16, 8, 4, 2, 1} {
		if ms>>s != 0 {
			ms >>= s
			b += s
		}
	}
	b += ms
	if b >= NumLifetimeBuckets {
		b = NumLifetimeBuckets - 1
	}
	return int(b)
}

func TestNetlinkLifetimeBucket(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		d    time.Duration
		want int
	}{
		{-time.Second, 0}, {0, 0}, {ms / 2, 0}, {ms, 0}, {ms + 1, 1}, {ms + ms/2, 1}, {2 * ms, 1}, {2*ms + 1, 2}, {3 * ms, 2},
		{4 * ms, 2}, {5 * ms, 3}, {1024 * ms, 10}, {1025 * ms, 11}, {time.Duration(1<<26) * ms, 26},
		{time.Duration(1<<26+1) * ms, 27}, {time.Duration(1<<27) * ms, 27}, {1 << 62, 27},
	} {
		if got := lifetimeBucket(c.d); got != c.want {
			t.Errorf("lifetimeBucket(%v) = %d, want %d", c.d, got, c.want)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		ns := r.Uint64N(1 << uint(r.IntN(63)+1))
		d := time.Duration(ns)
		got := lifetimeBucket(d)
		if want := cLifetimeBucket(ns); got != want {
			t.Fatalf("lifetimeBucket(%d ns) = %d, C rule says %d", ns, got, want)
		}
		// Bucket i holds exactly the lifetimes in (2^(i-1), 2^i] ms.
		bound := func(i int) uint64 { return uint64(1) << uint(i) * uint64(time.Millisecond) }
		if got < NumLifetimeBuckets-1 && ns > bound(got) {
			t.Fatalf("%v in bucket %d above its bound %v s", d, got, LifetimeBucketBound(got))
		}
		if got > 0 && ns <= bound(got-1) {
			t.Fatalf("%v in bucket %d, fits bucket %d", d, got, got-1)
		}
	}
}

// --- a ctnetlink encoder for decoder tests -----------------------------------

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

func encodeTuple(typ uint16, family, proto uint8, tp Tuple) []byte {
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
func encodeCT(msgType uint8, flags uint16, e Entry, extra ...[]byte) []byte {
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

func sampleEntries() []Entry {
	a4, b4 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.7")
	a6, b6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::ff")
	return []Entry{
		{ID: 1, Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, Original: Tuple{a4, b4, 40000, 80},
			Reply: Tuple{b4, a4, 8080, 40000}, Status: 0x18e, TCPState: 3, Mark: 7, Zone: 3, Timeout: 431999 * time.Second},
		{ID: 0xfffffffe, Family: unix.AF_INET6, Protocol: unix.IPPROTO_UDP, Original: Tuple{a6, b6, 53, 5353},
			Reply: Tuple{b6, a6, 5353, 53}, Status: 0x8, Timeout: 30 * time.Second},
		{ID: 3, Family: unix.AF_INET, Protocol: unix.IPPROTO_ICMP, Original: Tuple{a4, b4, 4242, 8 << 8},
			Reply: Tuple{b4, a4, 4242, 0}},
		{ID: 4, Family: unix.AF_INET6, Protocol: unix.IPPROTO_ICMPV6, Original: Tuple{a6, b6, 9, 128 << 8},
			Reply: Tuple{b6, a6, 9, 129 << 8}, Zone: 65535},
	}
}

func TestNetlinkDecode(t *testing.T) {
	for _, e := range sampleEntries() {
		raw := encodeCT(ipctnlMsgCtNew, unix.NLM_F_CREATE|unix.NLM_F_EXCL, e,
			nlNest(ctaTimestamp, nlAttr(ctaTimestampStart, be64(100)), nlAttr(ctaTimestampStop, be64(350))))
		msgs, err := splitMessages(raw)
		if err != nil || len(msgs) != 1 {
			t.Fatalf("split: %v, %d messages", err, len(msgs))
		}
		ev, m, ok, err := decodeEventMessage(msgs[0])
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
		want := Event{Type: EventCreated, Cookie: uint64(e.ID), Family: e.Family, Protocol: e.Protocol, Original: e.Original,
			Reply: e.Reply, Zone: e.Zone, Mark: e.Mark, Status: e.Status, TCPState: e.TCPState}
		if ev != want {
			t.Errorf("event:\n got %+v\nwant %+v", ev, want)
		}
		// DELETE is a destroy event; NEW without CREATE is an update: ignored.
		msgs, _ = splitMessages(encodeCT(ipctnlMsgCtDelete, 0, e))
		if ev, _, ok, err := decodeEventMessage(msgs[0]); err != nil || !ok || ev.Type != EventDestroyed {
			t.Errorf("delete: %v %v %v", ev.Type, ok, err)
		}
		msgs, _ = splitMessages(encodeCT(ipctnlMsgCtNew, 0, e))
		if _, _, ok, err := decodeEventMessage(msgs[0]); err != nil || ok {
			t.Errorf("update: ok %v, %v", ok, err)
		}
		// Every truncation fails cleanly (or, cut at an attribute
		// boundary after the tuples, decodes).
		for i := range len(raw) {
			cut := append([]byte(nil), raw[:i]...)
			if len(cut) >= 4 {
				binary.NativeEndian.PutUint32(cut[0:4], uint32(len(cut)))
			}
			msgs, err := splitMessages(cut)
			if err != nil || len(msgs) == 0 {
				continue
			}
			_, _, _, _ = decodeEventMessage(msgs[0])
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
		"unknown family": encodeCT(ipctnlMsgCtNew, unix.NLM_F_CREATE, Entry{Family: 7, Protocol: 6, Original: e.Original, Reply: e.Reply}),
		"attribute overruns": func() []byte {
			b := encodeCT(ipctnlMsgCtNew, unix.NLM_F_CREATE, e)
			binary.NativeEndian.PutUint16(b[nlmsgHdrLen+nfgenLen:], 0xfff0)
			return b
		}(),
		"protocol mismatch": encodeMsg(nfnlSubsysCTNetlink<<8, unix.NLM_F_CREATE, unix.AF_INET, 0, slices.Concat(
			encodeTuple(ctaTupleOrig, e.Family, unix.IPPROTO_TCP, e.Original), encodeTuple(ctaTupleReply, e.Family, unix.IPPROTO_UDP, e.Reply))),
	}
	for name, raw := range bad {
		msgs, err := splitMessages(raw)
		if err != nil {
			t.Fatalf("%s: split: %v", name, err)
		}
		if _, _, ok, err := decodeEventMessage(msgs[0]); err == nil || ok {
			t.Errorf("%s: accepted (ok %v)", name, ok)
		}
	}
	if _, err := splitMessages([]byte{1, 2, 3}); err == nil {
		t.Error("split accepted 3 bytes")
	}
	hdr := make([]byte, 16)
	binary.NativeEndian.PutUint32(hdr, 200)
	if _, err := splitMessages(hdr); err == nil {
		t.Error("split accepted a length beyond the buffer")
	}

	// Statistics.
	cpu := encodeMsg(nfnlSubsysCTNetlink<<8|ipctnlMsgCtGetStatsCPU, 0, 0, 1, slices.Concat(
		nlAttr(ctaStatsFound, be32(5)), nlAttr(ctaStatsInsert, be32(7)), nlAttr(ctaStatsDrop, be32(9)),
		nlAttr(ctaStatsClashResolve, be32(11)), nlAttr(ctaStatsChainTooLong, be32(13)), nlAttr(99, be64(1))))
	msgs, _ := splitMessages(cpu)
	s, err := decodeStatsCPU(msgs[0].Data)
	if err != nil || s != (cpuStats{CPU: 1, Found: 5, Insert: 7, Drop: 9, ClashResolve: 11, ChainTooLong: 13}) {
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
		msgs, _ := splitMessages(b)
		for _, m := range msgs {
			ev, dm, ok, err := decodeEventMessage(m)
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

// expectConn is one connection as one namespace's conntrack sees it.
type expectConn struct {
	ns               *labnet.NS
	family, protocol uint8
	orig, reply      Tuple
	what             string
}

func (c expectConn) match(ev Event) bool {
	return ev.NetNS == c.ns.Inode && ev.Family == c.family && ev.Protocol == c.protocol && ev.Original == c.orig
}

func inverse(tp Tuple) Tuple { return Tuple{tp.Dst, tp.Src, tp.DstPort, tp.SrcPort} }

func familyOf(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// openFDs returns the process's file descriptors and what they point to.
func openFDs(t *testing.T) map[string]string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string, len(ents))
	for _, e := range ents {
		m[e.Name()], _ = os.Readlink("/proc/self/fd/" + e.Name())
	}
	return m
}

// checkNoFDLeak fails t if descriptors opened after before are still open
// (it waits up to 2 s for goroutines that close them).
func checkNoFDLeak(t *testing.T, before map[string]string) {
	t.Helper()
	var leaked []string
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		leaked = leaked[:0]
		for fd, target := range openFDs(t) {
			if before[fd] != target {
				leaked = append(leaked, fd+" -> "+target)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(leaked) > 0 {
		t.Errorf("file descriptors leaked: %v", leaked)
	}
}

// TestNetlinkTracer runs traffic and conntrack -I/-D in three new
// namespaces and the root one, and checks every event and counter against
// the connections made and the kernel's own statistics.
func TestNetlinkTracer(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	root := labnet.Root(t)
	a, b, c := labnet.New(t), labnet.New(t), labnet.New(t)
	ab, ac := labnet.Connect(t, a, b), labnet.Connect(t, a, c)
	for _, n := range []*labnet.NS{a, b, c} {
		n.EnableConntrack()
	}
	b.AddRedirect("tcp", 80, 8080) // DNAT: in b the reply comes from 8080
	b.ServeTCP(8080)
	c.ServeUDP(5353)

	nss := []Namespace{{Inode: root.Inode}, labNamespace(a), labNamespace(b), labNamespace(c)}
	mine := []*labnet.NS{a, b, c}
	before := map[uint32]map[string]uint64{}
	for _, n := range mine {
		before[n.Inode] = n.CTStats()
	}
	fds := openFDs(t)
	tr, err := Open(context.Background(), Options{
		Backend:        BackendNetlink,
		Logger:         zaptest.NewLogger(t),
		Namespaces:     func() ([]Namespace, error) { return nss, nil },
		RescanInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	info := tr.Info()
	if info.Backend != BackendNetlink || len(info.Hooks) != 2 || info.Kernel == "" {
		t.Errorf("info: %+v", info)
	}
	log := collectEvents(tr)

	// Traffic from a: TCP to b (DNAT there), UDP and ICMP to c, ICMPv6 to b.
	var want []expectConn
	conn := func(what string, proto uint8, local netip.AddrPort, dst netip.AddrPort, n1, n2 *labnet.NS, reply2 Tuple) {
		orig := Tuple{local.Addr(), dst.Addr(), local.Port(), dst.Port()}
		fam := familyOf(dst.Addr())
		want = append(want,
			expectConn{n1, fam, proto, orig, inverse(orig), what + " client"},
			expectConn{n2, fam, proto, orig, reply2, what + " server"})
	}
	for range 3 {
		for _, dst := range []netip.Addr{ab.B4, ab.B6} {
			l := a.TCPRoundTrip(netip.AddrPortFrom(dst, 80))
			conn("tcp", unix.IPPROTO_TCP, l, netip.AddrPortFrom(dst, 80), a, b, Tuple{dst, l.Addr(), 8080, l.Port()})
		}
		for _, dst := range []netip.Addr{ac.B4, ac.B6} {
			l := a.UDPRoundTrip(netip.AddrPortFrom(dst, 5353))
			orig := Tuple{l.Addr(), dst, l.Port(), 5353}
			conn("udp", unix.IPPROTO_UDP, l, netip.AddrPortFrom(dst, 5353), a, c, inverse(orig))
		}
	}
	for i, p := range []struct {
		dst      netip.Addr
		server   *labnet.NS
		proto    uint8
		req, rep uint16
	}{{ac.B4, c, unix.IPPROTO_ICMP, 8 << 8, 0}, {ab.B6, b, unix.IPPROTO_ICMPV6, 128 << 8, 129 << 8}} {
		id := uint16(4000 + i)
		a.Ping(p.dst, id)
		src := ac.A4
		if p.dst == ab.B6 {
			src = ab.A6
		}
		orig := Tuple{src, p.dst, id, p.req}
		reply := Tuple{p.dst, src, id, p.rep}
		want = append(want, expectConn{a, familyOf(p.dst), p.proto, orig, reply, "ping client"},
			expectConn{p.server, familyOf(p.dst), p.proto, orig, reply, "ping server"})
	}

	// conntrack -I in c, then -D of half of them; the same in the root
	// namespace with addresses no other test uses.
	type inserted struct {
		n       *labnet.NS
		proto   string
		src     netip.AddrPort
		dst     netip.AddrPort
		deleted bool
	}
	pid := uint16(os.Getpid())
	ins := []inserted{
		{c, "tcp", netip.MustParseAddrPort("192.0.2.10:1001"), netip.MustParseAddrPort("192.0.2.20:22"), true},
		{c, "udp", netip.MustParseAddrPort("[2001:db8::10]:1002"), netip.MustParseAddrPort("[2001:db8::20]:53"), false},
		{c, "icmp", netip.MustParseAddrPort("192.0.2.10:77"), netip.MustParseAddrPort("192.0.2.20:0"), true},
		{c, "tcp", netip.MustParseAddrPort("[2001:db8::10]:1003"), netip.MustParseAddrPort("[2001:db8::20]:443"), false},
		{root, "udp", netip.AddrPortFrom(netip.MustParseAddr("198.51.100.201"), 10000+pid%20000), netip.MustParseAddrPort("203.0.113.201:9"), true},
		{root, "tcp", netip.AddrPortFrom(netip.MustParseAddr("2001:db8:c7::1"), 10000+pid%20000), netip.MustParseAddrPort("[2001:db8:c7::2]:9"), true},
	}
	protoNum := map[string]uint8{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "icmp": unix.IPPROTO_ICMP}
	for _, e := range ins {
		if err := e.n.CTInsert(labnet.InsertArgs(e.proto, e.src, e.dst, "-m", "42")...); err != nil {
			t.Fatal(err)
		}
		if e.n == root {
			t.Cleanup(func() { _ = root.CTDelete(labnet.InsertArgs(e.proto, e.src, e.dst)[:6]...) })
		}
		orig := Tuple{e.src.Addr(), e.dst.Addr(), e.src.Port(), e.dst.Port()}
		reply := inverse(orig)
		if e.proto == "icmp" {
			orig.DstPort, reply = 8<<8, Tuple{orig.Dst, orig.Src, orig.SrcPort, 0}
		}
		want = append(want, expectConn{e.n, familyOf(e.src.Addr()), protoNum[e.proto], orig, reply, "inserted " + e.proto})
	}
	for _, e := range ins {
		if e.deleted {
			if err := e.n.CTDelete(labnet.InsertArgs(e.proto, e.src, e.dst)[:6]...); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Every connection created exactly once, in its namespace.
	created := func(evs []Event, c expectConn) []Event {
		var out []Event
		for _, ev := range evs {
			if ev.Type == EventCreated && c.match(ev) {
				out = append(out, ev)
			}
		}
		return out
	}
	if !log.waitFor(5*time.Second, func(evs []Event) bool {
		for _, c := range want {
			if len(created(evs, c)) == 0 {
				return false
			}
		}
		return true
	}) {
		t.Error("timed out waiting for NEW events")
	}

	// Ground truth before the flush: the live table (conntrack -L) plus
	// the entries deleted with conntrack -D.
	truth := map[Key]uint64{}
	for _, n := range mine {
		for _, r := range n.CTList() {
			truth[Key{n.Inode, r.Family, r.Protocol}]++
			var match []Event
			for _, ev := range log.snapshot() {
				if ev.Type == EventCreated && ev.NetNS == n.Inode && ev.Original == Tuple(r.Original) {
					match = append(match, ev)
				}
			}
			if len(match) != 1 || match[0].Reply != Tuple(r.Reply) || match[0].Cookie != uint64(r.ID) {
				t.Errorf("netns %d: conntrack -L %+v: created events %+v", n.Inode, r, match)
			}
		}
	}
	for _, e := range ins {
		if e.deleted && e.n != root {
			truth[Key{e.n.Inode, familyOf(e.src.Addr()), protoNum[e.proto]}]++
		}
	}

	// Then destroy everything in a, b, c (the root entries are gone).
	for _, n := range mine {
		n.CTFlush()
	}
	destroyed := func(evs []Event, cookie uint64, ns uint32) []Event {
		var out []Event
		for _, ev := range evs {
			if ev.Type == EventDestroyed && ev.Cookie == cookie && ev.NetNS == ns {
				out = append(out, ev)
			}
		}
		return out
	}
	if !log.waitFor(5*time.Second, func(evs []Event) bool {
		for _, c := range want {
			for _, ev := range created(evs, c) {
				if len(destroyed(evs, ev.Cookie, ev.NetNS)) == 0 {
					return false
				}
			}
		}
		return true
	}) {
		t.Error("timed out waiting for DESTROY events")
	}
	time.Sleep(100 * time.Millisecond) // let stray duplicates show up
	evs := log.snapshot()
	for _, c := range want {
		cr := created(evs, c)
		if len(cr) != 1 {
			t.Errorf("%s in netns %d %v: %d created events, want 1", c.what, c.ns.Inode, c.orig, len(cr))
			continue
		}
		ev := cr[0]
		if ev.Reply != c.reply {
			t.Errorf("%s: reply tuple %v, want %v", c.what, ev.Reply, c.reply)
		}
		if ev.Cookie == 0 || ev.Time.IsZero() {
			t.Errorf("%s: cookie %d time %v", c.what, ev.Cookie, ev.Time)
		}
		if strings.HasPrefix(c.what, "inserted") && ev.Mark != 42 {
			t.Errorf("%s: mark %d, want 42", c.what, ev.Mark)
		}
		if c.what == "inserted tcp" && ev.TCPState != 3 {
			t.Errorf("%s: TCP state %d, want 3 (ESTABLISHED)", c.what, ev.TCPState)
		}
		if c.what == "tcp client" && ev.TCPState != 1 {
			t.Errorf("%s: TCP state %d, want 1 (SYN_SENT)", c.what, ev.TCPState)
		}
		ds := destroyed(evs, ev.Cookie, ev.NetNS)
		if len(ds) != 1 {
			t.Errorf("%s %v: %d destroyed events, want 1", c.what, c.orig, len(ds))
			continue
		}
		d := ds[0]
		if !d.LifetimeKnown || d.Lifetime < 0 || d.Original != ev.Original || d.Reply != ev.Reply || d.Time.Before(ev.Time) {
			t.Errorf("%s: destroy %+v after create %+v", c.what, d, ev)
		}
	}

	// No other entries appeared in our namespaces.
	perNS := map[uint32]int{}
	for _, ev := range evs {
		if ev.NetNS != root.Inode && ev.Type == EventCreated {
			perNS[ev.NetNS]++
		}
	}
	wantPerNS := map[uint32]int{}
	for _, c := range want {
		if c.ns != root {
			wantPerNS[c.ns.Inode]++
		}
	}
	for _, n := range mine {
		t.Logf("netns %d: %d created events, %d connections made", n.Inode, perNS[n.Inode], wantPerNS[n.Inode])
		if perNS[n.Inode] != wantPerNS[n.Inode] {
			t.Errorf("netns %d: %d created events, want %d", n.Inode, perNS[n.Inode], wantPerNS[n.Inode])
		}
	}

	// Counters against events and the kernel's statistics.
	cnt, err := tr.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range mine {
		after := n.CTStats()
		var sum, truthSum Values
		for k, v := range cnt {
			if k.NetNS != n.Inode {
				continue
			}
			sum.Add(v)
			if k.Family != 0 && (v.Created != truth[k] || v.Destroyed != truth[k]) {
				t.Errorf("%+v: created %d destroyed %d, ground truth %d", k, v.Created, v.Destroyed, truth[k])
			}
		}
		for k, x := range truth {
			if k.NetNS == n.Inode {
				truthSum.Created += x
				if _, ok := cnt[k]; !ok {
					t.Errorf("%+v: no counters, ground truth %d", k, x)
				}
			}
		}
		var buckets uint64
		for _, x := range sum.LifetimeBuckets {
			buckets += x
		}
		t.Logf("netns %d: counters created %d destroyed %d (no start %d); ground truth %d; entries now %d; kernel stat insert +%d (ctnetlink inserts only)",
			n.Inode, sum.Created, sum.Destroyed, sum.DestroyedNoStart, truthSum.Created, n.CTCount(), after["insert"]-before[n.Inode]["insert"])
		if sum.Created != truthSum.Created || sum.Destroyed != truthSum.Created || n.CTCount() != 0 {
			t.Errorf("netns %d: created %d destroyed %d, ground truth %d, %d entries left",
				n.Inode, sum.Created, sum.Destroyed, truthSum.Created, n.CTCount())
		}
		if sum.DestroyedNoStart != 0 || buckets != sum.Destroyed || sum.LifetimeSum <= 0 {
			t.Errorf("netns %d: no start %d, histogram %d, lifetime sum %v", n.Inode, sum.DestroyedNoStart, buckets, sum.LifetimeSum)
		}
		for r, x := range sum.Failed {
			kernel := map[FailReason]uint64{
				ReasonConfirmDrop:   after["insert_failed"] - before[n.Inode]["insert_failed"],
				ReasonTableFull:     after["drop"] - before[n.Inode]["drop"],
				ReasonClashResolved: after["clash_resolve"] - before[n.Inode]["clash_resolve"],
			}[FailReason(r)]
			if x != kernel {
				t.Errorf("netns %d: failed %s %d, kernel %d", n.Inode, FailReason(r), x, kernel)
			}
		}
	}
	lost, _ := tr.Lost()
	for r, n := range lost {
		if n != 0 {
			t.Errorf("lost %s: %d", r, n)
		}
	}

	if err := tr.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	select {
	case <-log.done:
	case <-time.After(time.Second):
		t.Error("events channel not closed by Close")
	}
	checkNoFDLeak(t, fds)
}

// TestNetlinkRescan: a namespace added after Open is picked up within one
// rescan interval, and a removed one is closed.
func TestNetlinkRescan(t *testing.T) {
	labnet.Require(t, "ip", "conntrack")
	first := labnet.New(t)
	var mu sync.Mutex
	list := []Namespace{labNamespace(first)}
	const interval = 300 * time.Millisecond
	tr, err := Open(context.Background(), Options{
		Backend: BackendNetlink,
		Logger:  zaptest.NewLogger(t),
		Namespaces: func() ([]Namespace, error) {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(list), nil
		},
		RescanInterval: interval,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	nt := tr.(*netlinkTracer)
	listening := func(ino uint32) bool {
		nt.mu.Lock()
		defer nt.mu.Unlock()
		return nt.listeners[ino] != nil
	}
	log := collectEvents(tr)

	second := labnet.New(t)
	mu.Lock()
	list = append(list, labNamespace(second))
	mu.Unlock()
	added := time.Now()
	for !listening(second.Inode) {
		if time.Since(added) > interval+200*time.Millisecond {
			t.Fatalf("netns %d not picked up %v after it was listed (rescan interval %v)", second.Inode, time.Since(added), interval)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("new namespace listened to %v after it was listed (interval %v)", time.Since(added), interval)
	src, dst := netip.MustParseAddrPort("192.0.2.1:5000"), netip.MustParseAddrPort("192.0.2.2:53")
	for _, n := range []*labnet.NS{first, second} {
		if err := n.CTInsert(labnet.InsertArgs("udp", src, dst)...); err != nil {
			t.Fatal(err)
		}
	}
	if !log.waitFor(3*time.Second, func(evs []Event) bool {
		got := map[uint32]bool{}
		for _, ev := range evs {
			got[ev.NetNS] = true
		}
		return got[first.Inode] && got[second.Inode]
	}) {
		t.Fatalf("no event from both namespaces: %+v", log.snapshot())
	}

	mu.Lock()
	list = list[1:]
	mu.Unlock()
	removed := time.Now()
	for listening(first.Inode) {
		if time.Since(removed) > interval+200*time.Millisecond {
			t.Fatalf("netns %d still listened %v after it was removed", first.Inode, time.Since(removed))
		}
		time.Sleep(5 * time.Millisecond)
	}
	n := len(log.snapshot())
	first.CTFlush()
	second.CTFlush()
	if !log.waitFor(3*time.Second, func(evs []Event) bool { return len(evs) > n }) {
		t.Fatal("no destroy event from the remaining namespace")
	}
	time.Sleep(100 * time.Millisecond)
	for _, ev := range log.snapshot()[n:] {
		if ev.NetNS != second.Inode || ev.Type != EventDestroyed || !ev.LifetimeKnown {
			t.Errorf("after removal: %+v", ev)
		}
	}
	cnt, _ := tr.Counters()
	if v := cnt[Key{first.Inode, unix.AF_INET, unix.IPPROTO_UDP}]; v.Created != 1 || v.Destroyed != 0 {
		t.Errorf("removed namespace counters: %+v", v)
	}
}

// TestNetlinkTableFull provokes -EEXIST and a full table in a namespace and
// compares the failure counters with the kernel's statistics. It lowers the
// global nf_conntrack_max for a few milliseconds and restores it.
func TestNetlinkTableFull(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	n := labnet.New(t)
	n.EnableConntrack()
	tr, err := Open(context.Background(), Options{
		Backend:       BackendNetlink,
		Logger:        zaptest.NewLogger(t),
		Namespaces:    func() ([]Namespace, error) { return []Namespace{labNamespace(n)}, nil },
		DisableEvents: true, // counters must still be kept
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	before := n.CTStats()

	// -EEXIST: the second insert fails; the kernel counts nothing for it
	// and the netlink backend cannot see it.
	args := labnet.InsertArgs("tcp", netip.MustParseAddrPort("192.0.2.1:1000"), netip.MustParseAddrPort("192.0.2.2:80"), "-u", "ASSURED")
	if err := n.CTInsert(args...); err != nil {
		t.Fatal(err)
	}
	if err := n.CTInsert(args...); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second insert: %v, want 'exists'", err)
	}

	// Fill the table with ASSURED entries (not early-droppable), lower the
	// limit to the count and send one packet: it is dropped.
	const fill = 127
	var lines []string
	for i := range fill {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 77, byte(i >> 8), byte(i)}), 2000)
		lines = append(lines, "-I "+strings.Join(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("10.78.0.1:53"), "-u", "ASSURED"), " "))
	}
	n.CTLoad(lines)
	count := n.CTCount()
	if count != fill+1 {
		t.Fatalf("%d entries, want %d", count, fill+1)
	}
	restore := labnet.SetConntrackMax(t, count)
	var sendErr error
	err = n.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sendErr = unix.Sendto(fd, []byte("x"), 0, &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}})
		return nil
	})
	restore()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("send into a full table: %v", sendErr)

	after := n.CTStats()
	ks, err := ReadKernelStats(labNamespace(n))
	if err != nil {
		t.Fatal(err)
	}
	cnt, err := tr.Counters()
	if err != nil {
		t.Fatal(err)
	}
	v := cnt[Key{NetNS: n.Inode}]
	drop := after["drop"] - before["drop"]
	t.Logf("kernel: drop +%d insert_failed +%d; counters: table_full %d confirm_drop %d", drop,
		after["insert_failed"]-before["insert_failed"], v.Failed[ReasonTableFull], v.Failed[ReasonConfirmDrop])
	if drop != 1 || ks.Drop != after["drop"] {
		t.Errorf("kernel drop: +%d (want 1), ReadKernelStats %d, conntrack -S %d", drop, ks.Drop, after["drop"])
	}
	if v.Failed[ReasonTableFull] != drop || v.Failed[ReasonConfirmDrop] != after["insert_failed"]-before["insert_failed"] {
		t.Errorf("failed counters %v, kernel drop +%d", v.Failed, drop)
	}
	var created uint64
	for k, v := range cnt {
		if k.NetNS == n.Inode {
			created += v.Created
		}
	}
	if created != fill+1 || created != after["insert"]-before["insert"] {
		t.Errorf("created %d, want %d (kernel inserts +%d)", created, fill+1, after["insert"]-before["insert"])
	}
	select {
	case ev := <-tr.Events():
		t.Errorf("event delivered with DisableEvents: %+v", ev)
	default:
	}
}

// TestNetlinkNoBufs overruns the event socket (tiny buffer, reader held up)
// and checks the loss is counted and the listener keeps working.
func TestNetlinkNoBufs(t *testing.T) {
	labnet.Require(t, "ip", "conntrack")
	n := labnet.New(t)
	tr, err := Open(context.Background(), Options{
		Backend:           BackendNetlink,
		Logger:            zaptest.NewLogger(t),
		Namespaces:        func() ([]Namespace, error) { return []Namespace{labNamespace(n)}, nil },
		NetlinkBufferSize: 1, // the kernel's minimum
		EventBuffer:       8,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	nt := tr.(*netlinkTracer)

	var lines []string
	for i := range 200 {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 66, byte(i >> 8), byte(i)}), 3000)
		lines = append(lines, "-I "+strings.Join(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("10.67.0.1:53")), " "))
	}
	nt.cmu.Lock() // the listener blocks in account() after its first event
	n.CTLoad(lines)
	nt.cmu.Unlock()

	deadline := time.Now().Add(3 * time.Second)
	var lost map[LostReason]uint64
	for time.Now().Before(deadline) {
		lost, _ = tr.Lost()
		if lost[LostNetlinkNoBufs] > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cnt, _ := tr.Counters()
	created := cnt[Key{n.Inode, unix.AF_INET, unix.IPPROTO_UDP}].Created
	t.Logf("200 inserts with the reader held: %d NEW received, lost %v", created, lost)
	if lost[LostNetlinkNoBufs] == 0 {
		t.Fatalf("lost %v, want an ENOBUFS loss", lost)
	}
	if created >= 200 {
		t.Errorf("created %d with an overrun", created)
	}

	// Nobody reads Events (capacity 8): the rest is counted as channel_full,
	// and the counters still see every received event.
	// One conntrack process per entry: slow enough for the tiny buffer.
	for i := range 12 {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 69, 0, byte(i)}), 3000)
		if err := n.CTInsert(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("10.67.0.1:53"))...); err != nil {
			t.Fatal(err)
		}
	}
	var received uint64
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		cnt, _ = tr.Counters()
		received = cnt[Key{n.Inode, unix.AF_INET, unix.IPPROTO_UDP}].Created
		if lost, _ = tr.Lost(); lost[LostChannelFull] > 0 && received == uint64(len(tr.Events()))+lost[LostChannelFull] {
			break
		}
	}
	t.Logf("12 more inserts, Events not read: counters created %d in all, lost %v", received, lost)
	if lost[LostChannelFull] == 0 || uint64(len(tr.Events())) != 8 || received != uint64(len(tr.Events()))+lost[LostChannelFull] {
		t.Errorf("channel: %d queued + %d lost, counters %d", len(tr.Events()), lost[LostChannelFull], received)
	}

	// Still listening: the next entry arrives with its lifetime.
	for len(tr.Events()) > 0 {
		<-tr.Events()
	}
	args := labnet.InsertArgs("tcp", netip.MustParseAddrPort("10.68.0.1:1"), netip.MustParseAddrPort("10.68.0.2:2"))
	if err := n.CTInsert(args...); err != nil {
		t.Fatal(err)
	}
	if err := n.CTDelete(args[:6]...); err != nil {
		t.Fatal(err)
	}
	var got []Event
	timeout := time.After(3 * time.Second)
	for len(got) < 2 {
		select {
		case ev := <-tr.Events():
			if ev.Protocol == unix.IPPROTO_TCP {
				got = append(got, ev)
			}
		case <-timeout:
			t.Fatalf("after the overrun: %d TCP events", len(got))
		}
	}
	if got[0].Type != EventCreated || got[1].Type != EventDestroyed || !got[1].LifetimeKnown {
		t.Errorf("after the overrun: %+v", got)
	}
}

// TestNetlinkDestroyedNoStart: with nf_conntrack_events=1 an entry created
// before Open produces a DESTROY without a NEW: DestroyedNoStart, unless
// the kernel's timestamps (nf_conntrack_timestamp=1) give its lifetime.
func TestNetlinkDestroyedNoStart(t *testing.T) {
	labnet.Require(t, "ip", "conntrack", "sysctl")
	plain, stamped := labnet.New(t), labnet.New(t)
	args := labnet.InsertArgs("udp", netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("192.0.2.2:2"))
	for _, n := range []*labnet.NS{plain, stamped} {
		n.MustExec("sysctl", "-qw", "net.netfilter.nf_conntrack_events=1")
		if n == stamped {
			n.MustExec("sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1")
		}
		if err := n.CTInsert(args...); err != nil {
			t.Fatal(err)
		}
	}
	inserted := time.Now()
	tr, err := Open(context.Background(), Options{
		Backend:    BackendNetlink,
		Logger:     zaptest.NewLogger(t),
		Namespaces: func() ([]Namespace, error) { return []Namespace{labNamespace(plain), labNamespace(stamped)}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	log := collectEvents(tr)
	time.Sleep(50 * time.Millisecond)
	for _, n := range []*labnet.NS{plain, stamped} {
		if err := n.CTDelete(args[:6]...); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(inserted)
	if !log.waitFor(3*time.Second, func(evs []Event) bool { return len(evs) == 2 }) {
		t.Fatalf("events: %+v", log.snapshot())
	}
	cnt, _ := tr.Counters()
	for _, ev := range log.snapshot() {
		v := cnt[Key{ev.NetNS, unix.AF_INET, unix.IPPROTO_UDP}]
		switch ev.NetNS {
		case plain.Inode:
			if ev.Type != EventDestroyed || ev.LifetimeKnown || v.Destroyed != 1 || v.DestroyedNoStart != 1 || v.Created != 0 {
				t.Errorf("without timestamps: %+v, counters %+v", ev, v)
			}
		case stamped.Inode:
			t.Logf("kernel timestamps: lifetime %v (wall time insert to delete about %v)", ev.Lifetime, elapsed)
			if ev.Type != EventDestroyed || !ev.LifetimeKnown || ev.Lifetime < 40*time.Millisecond || ev.Lifetime > elapsed+time.Second ||
				v.DestroyedNoStart != 0 || v.LifetimeSum != ev.Lifetime || v.LifetimeBuckets[lifetimeBucket(ev.Lifetime)] != 1 {
				t.Errorf("with timestamps: %+v, counters %+v", ev, v)
			}
		}
	}
}

// TestNetlinkOpenErrors: a namespace that cannot be opened is refused
// when it is the only one; a bad namespace list fails Open.
func TestNetlinkOpenErrors(t *testing.T) {
	labnet.Require(t, "ip")
	_, err := Open(context.Background(), Options{Backend: BackendNetlink,
		Namespaces: func() ([]Namespace, error) { return []Namespace{{Inode: 1, Path: "/nonexistent/ns"}}, nil }})
	if err == nil {
		t.Error("open with only a missing namespace succeeded")
	}
	n := labnet.New(t)
	_, err = Open(context.Background(), Options{Backend: BackendNetlink,
		Namespaces: func() ([]Namespace, error) { return []Namespace{{Inode: n.Inode + 1, Path: n.Path}}, nil }})
	if err == nil || !strings.Contains(err.Error(), "inode") {
		t.Errorf("open with a wrong inode: %v", err)
	}
	_, err = Open(context.Background(), Options{Backend: BackendNetlink,
		Namespaces: func() ([]Namespace, error) { return nil, errors.New("boom") }})
	if err == nil {
		t.Error("open with a failing namespace list succeeded")
	}
	// Default: the current namespace only.
	tr, err := Open(context.Background(), Options{Backend: BackendNetlink})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	nt := tr.(*netlinkTracer)
	if l := len(nt.listeners); l != 1 || nt.listeners[labnet.Root(t).Inode] == nil {
		t.Errorf("default namespaces: %v", fmt.Sprint(nt.listeners))
	}
}
