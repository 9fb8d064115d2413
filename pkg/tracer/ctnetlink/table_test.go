package ctnetlink

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// tcpStateNames are the TCP_CONNTRACK_* names conntrack -L prints.
var tcpStateNames = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

const (
	ipsSeenReply = 1 << 1
	ipsAssured   = 1 << 2
)

// compareDump checks DumpTable(n) against conntrack -L in n: same count,
// and for every entry the same tuples, id, mark, zone, state and flags.
func compareDump(t *testing.T, n *labnet.NS) int {
	t.Helper()
	var got []tracer.Entry
	if err := DumpTable(tracertest.Namespace(n), func(e tracer.Entry) { got = append(got, e) }); err != nil {
		t.Fatalf("netns %d: DumpTable: %v", n.Inode, err)
	}
	cli := n.CTList()
	if len(got) != len(cli) {
		t.Errorf("netns %d: DumpTable %d entries, conntrack -L %d", n.Inode, len(got), len(cli))
	}
	byID := map[uint32]tracer.Entry{}
	for _, e := range got {
		if _, dup := byID[e.ID]; dup {
			t.Errorf("netns %d: id %d dumped twice", n.Inode, e.ID)
		}
		byID[e.ID] = e
	}
	for _, r := range cli {
		e, ok := byID[r.ID]
		if !ok {
			t.Errorf("netns %d: conntrack -L %+v not dumped", n.Inode, r)
			continue
		}
		if e.Family != r.Family || e.Protocol != r.Protocol || e.Original != tracer.Tuple(r.Original) || e.Reply != tracer.Tuple(r.Reply) ||
			e.Mark != r.Mark || e.Zone != r.Zone {
			t.Errorf("netns %d: dumped %+v, conntrack -L %+v", n.Inode, e, r)
		}
		if e.Original.Src.Is4In6() || (e.Family == unix.AF_INET) != e.Original.Src.Is4() {
			t.Errorf("netns %d: address form %v in family %d", n.Inode, e.Original.Src, e.Family)
		}
		if r.Protocol == unix.IPPROTO_TCP && (int(e.TCPState) >= len(tcpStateNames) || tcpStateNames[e.TCPState] != r.State) {
			t.Errorf("netns %d: TCP state %d, conntrack -L %q", n.Inode, e.TCPState, r.State)
		}
		if (e.Status&ipsAssured != 0) != slices.Contains(r.Flags, "ASSURED") ||
			(e.Status&ipsSeenReply == 0) != slices.Contains(r.Flags, "UNREPLIED") {
			t.Errorf("netns %d: status %#x, flags %v", n.Inode, e.Status, r.Flags)
		}
		if d := e.Timeout - r.Timeout; d < -3*time.Second || d > 3*time.Second || e.Timeout <= 0 {
			t.Errorf("netns %d: timeout %v, conntrack -L %v", n.Inode, e.Timeout, r.Timeout)
		}
	}
	return len(got)
}

// TestTableDump compares DumpTable with conntrack -L in namespaces with
// real traffic (TCP, UDP, ICMP over IPv4 and IPv6, DNAT), entries with
// marks and zones, and a table large enough for a multi-part dump.
func TestTableDump(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	a, b, big := labnet.New(t), labnet.New(t), labnet.New(t)
	ab := labnet.Connect(t, a, b)
	a.EnableConntrack()
	b.EnableConntrack()
	b.AddRedirect("tcp", 80, 8080)
	b.ServeTCP(8080)
	b.ServeUDP(5353)
	for _, dst := range []netip.Addr{ab.B4, ab.B6} {
		a.TCPRoundTrip(netip.AddrPortFrom(dst, 80))
		a.UDPRoundTrip(netip.AddrPortFrom(dst, 5353))
		a.Ping(dst, 999)
	}
	// An open connection stays ESTABLISHED.
	b.ServeTCP(9000)
	for _, dst := range []netip.Addr{ab.B4, ab.B6} {
		a.DialTCP(netip.AddrPortFrom(dst, 9000))
	}
	for i, args := range [][]string{
		labnet.InsertArgs("tcp", netip.MustParseAddrPort("192.0.2.1:1000"), netip.MustParseAddrPort("192.0.2.2:22"), "-m", "7", "-w", "5", "-u", "ASSURED"),
		labnet.InsertArgs("udp", netip.MustParseAddrPort("[2001:db8::1]:1000"), netip.MustParseAddrPort("[2001:db8::2]:53"), "-m", "4294967295", "-w", "65535"),
		labnet.InsertArgs("icmpv6", netip.MustParseAddrPort("[2001:db8::1]:7"), netip.MustParseAddrPort("[2001:db8::2]:0"), "-u", "SEEN_REPLY"),
	} {
		if err := b.CTInsert(args...); err != nil {
			t.Fatalf("insert %d: %v", i, err)
		}
	}
	const bigN = 3000
	var lines []string
	for i := range bigN {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 88, byte(i >> 8), byte(i)}), uint16(1000+i%7))
		proto := []string{"tcp", "udp"}[i%2]
		lines = append(lines, "-I "+strings.Join(labnet.InsertArgs(proto, src, netip.MustParseAddrPort("10.89.0.1:443")), " "))
	}
	big.CTLoad(lines)

	for _, n := range []*labnet.NS{a, b} {
		t.Logf("netns %d: %d entries, DumpTable = conntrack -L", n.Inode, compareDump(t, n))
	}
	if got := compareDump(t, big); got != bigN {
		t.Errorf("big table: %d entries, want %d", got, bigN)
	}

	// The current namespace (Path ""): our own entry is there once.
	root := labnet.Root(t)
	src := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.202"), uint16(10000+os.Getpid()%20000))
	args := labnet.InsertArgs("udp", src, netip.MustParseAddrPort("203.0.113.202:9"), "-m", "9")
	if err := root.CTInsert(args...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = root.CTDelete(args[:6]...) })
	for _, ns := range []tracer.Namespace{{}, {Inode: root.Inode, Path: "/proc/self/ns/net"}} {
		var found []tracer.Entry
		err := DumpTable(ns, func(e tracer.Entry) {
			if e.Original.Src == src.Addr() && e.Original.SrcPort == src.Port() {
				found = append(found, e)
			}
		})
		if err != nil || len(found) != 1 || found[0].Mark != 9 || found[0].Protocol != unix.IPPROTO_UDP {
			t.Errorf("current namespace %+v: %v, %+v", ns, err, found)
		}
	}
	if err := DumpTable(tracer.Namespace{Inode: a.Inode + 1, Path: a.Path}, func(tracer.Entry) {}); err == nil {
		t.Error("DumpTable accepted a namespace whose inode does not match")
	}
	var se *tracer.SkippedError
	if err := DumpTable(tracer.Namespace{Path: "/nonexistent"}, func(tracer.Entry) {}); err == nil || errors.As(err, &se) {
		t.Errorf("missing namespace: %v", err)
	}
}

// TestKernelStats compares ReadKernelStats with conntrack -S (summed over
// CPUs), conntrack -C and /proc/net/stat/nf_conntrack in the same
// namespace.
func TestKernelStats(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	a, b := labnet.New(t), labnet.New(t)
	ab := labnet.Connect(t, a, b)
	a.EnableConntrack()
	b.EnableConntrack()
	b.ServeTCP(8080)
	for range 3 {
		a.TCPRoundTrip(netip.AddrPortFrom(ab.B4, 8080))
		a.TCPRoundTrip(netip.AddrPortFrom(ab.B6, 8080))
	}
	for i := range 2 { // lone FINs: "invalid" in a (output) and b (input)
		a.SendRawTCP(netip.AddrPortFrom(ab.A4, uint16(50000+i)), netip.AddrPortFrom(ab.B4, 8080), 0x01)
	}
	args := labnet.InsertArgs("udp", netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("192.0.2.2:2"))
	for range 2 { // the second fails with EEXIST
		_ = a.CTInsert(args...)
	}
	maxText, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		t.Fatal(err)
	}
	max, _ := strconv.ParseUint(strings.TrimSpace(string(maxText)), 10, 64)

	for _, n := range []*labnet.NS{a, b} {
		ks, err := ReadKernelStats(tracertest.Namespace(n))
		if err != nil {
			t.Fatal(err)
		}
		cli, count, proc := n.CTStats(), n.CTCount(), n.ProcStats()
		t.Logf("netns %d: %+v", n.Inode, ks)
		for _, c := range []struct {
			name      string
			got       uint64
			cli, proc string
		}{
			{"found", ks.Found, "found", "found"},
			{"invalid", ks.Invalid, "invalid", "invalid"},
			{"insert", ks.Insert, "insert", "insert"},
			{"insert_failed", ks.InsertFailed, "insert_failed", "insert_failed"},
			{"drop", ks.Drop, "drop", "drop"},
			{"early_drop", ks.EarlyDrop, "early_drop", "early_drop"},
			{"error", ks.Error, "error", "icmp_error"},
			{"search_restart", ks.SearchRestart, "search_restart", "search_restart"},
			{"clash_resolve", ks.ClashResolve, "clash_resolve", "clashres"},
			{"chaintoolong", ks.ChainTooLong, "chaintoolong", "chainlength"},
			{"entries", ks.Entries, "", "entries"},
		} {
			if c.cli != "" && c.got != cli[c.cli] {
				t.Errorf("netns %d: %s = %d, conntrack -S %d", n.Inode, c.name, c.got, cli[c.cli])
			}
			if c.got != proc[c.proc] {
				t.Errorf("netns %d: %s = %d, /proc/net/stat/nf_conntrack %d", n.Inode, c.name, c.got, proc[c.proc])
			}
		}
		if ks.Entries != count || ks.MaxEntries != max {
			t.Errorf("netns %d: entries %d max %d; conntrack -C %d, nf_conntrack_max %d", n.Inode, ks.Entries, ks.MaxEntries, count, max)
		}
	}
	if ks, _ := ReadKernelStats(tracertest.Namespace(a)); ks.Entries != 7 || ks.Invalid < 2 || ks.Insert != 1 {
		t.Errorf("netns %d: %+v, want 7 entries, 1 insert, 2 invalid or more", a.Inode, ks)
	}
	if ks, err := ReadKernelStats(tracer.Namespace{}); err != nil || ks.MaxEntries != max {
		t.Errorf("current namespace: %+v, %v", ks, err)
	}
	if _, err := ReadKernelStats(tracer.Namespace{Path: "/nonexistent"}); err == nil {
		t.Error("missing namespace: no error")
	}
}
