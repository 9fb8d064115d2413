package netlinktracer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer"
	"github.com/ctagent/ctagent/pkg/tracer/ctnetlink"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/internal/tracertest"
)

// --- lifetime buckets -------------------------------------------------------

// expectConn is one connection as one namespace's conntrack sees it.
type expectConn struct {
	ns               *labnet.NS
	family, protocol uint8
	orig, reply      tracer.Tuple
	what             string
}

func (c expectConn) match(ev tracer.Event) bool {
	return ev.NetNS == c.ns.Inode && ev.Family == c.family && ev.Protocol == c.protocol && ev.Original == c.orig
}

func inverse(tp tracer.Tuple) tracer.Tuple {
	return tracer.Tuple{Src: tp.Dst, Dst: tp.Src, SrcPort: tp.DstPort, DstPort: tp.SrcPort}
}

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

	nss := []tracer.Namespace{{Inode: root.Inode}, tracertest.Namespace(a), tracertest.Namespace(b), tracertest.Namespace(c)}
	mine := []*labnet.NS{a, b, c}
	before := map[uint32]map[string]uint64{}
	for _, n := range mine {
		before[n.Inode] = n.CTStats()
	}
	fds := openFDs(t)
	tr, err := tracer.Open(context.Background(), tracer.Options{
		Backend:    tracer.BackendNetlink,
		Logger:     zaptest.NewLogger(t),
		Namespaces: func() ([]tracer.Namespace, error) { return nss, nil },
	})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	info := tr.Info()
	if info.Backend != tracer.BackendNetlink || len(info.Hooks) != 2 || info.Kernel == "" {
		t.Errorf("info: %+v", info)
	}
	log := tracertest.CollectEvents(tr)

	// Traffic from a: TCP to b (DNAT there), UDP and ICMP to c, ICMPv6 to b.
	var want []expectConn
	conn := func(what string, proto uint8, local netip.AddrPort, dst netip.AddrPort, n1, n2 *labnet.NS, reply2 tracer.Tuple) {
		orig := tracer.Tuple{Src: local.Addr(), Dst: dst.Addr(), SrcPort: local.Port(), DstPort: dst.Port()}
		fam := familyOf(dst.Addr())
		want = append(want,
			expectConn{n1, fam, proto, orig, inverse(orig), what + " client"},
			expectConn{n2, fam, proto, orig, reply2, what + " server"})
	}
	for range 3 {
		for _, dst := range []netip.Addr{ab.B4, ab.B6} {
			l := a.TCPRoundTrip(netip.AddrPortFrom(dst, 80))
			conn("tcp", unix.IPPROTO_TCP, l, netip.AddrPortFrom(dst, 80), a, b, tracer.Tuple{Src: dst, Dst: l.Addr(), SrcPort: 8080, DstPort: l.Port()})
		}
		for _, dst := range []netip.Addr{ac.B4, ac.B6} {
			l := a.UDPRoundTrip(netip.AddrPortFrom(dst, 5353))
			orig := tracer.Tuple{Src: l.Addr(), Dst: dst, SrcPort: l.Port(), DstPort: 5353}
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
		orig := tracer.Tuple{Src: src, Dst: p.dst, SrcPort: id, DstPort: p.req}
		reply := tracer.Tuple{Src: p.dst, Dst: src, SrcPort: id, DstPort: p.rep}
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
		orig := tracer.Tuple{Src: e.src.Addr(), Dst: e.dst.Addr(), SrcPort: e.src.Port(), DstPort: e.dst.Port()}
		reply := inverse(orig)
		if e.proto == "icmp" {
			orig.DstPort, reply = 8<<8, tracer.Tuple{Src: orig.Dst, Dst: orig.Src, SrcPort: orig.SrcPort, DstPort: 0}
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
	created := func(evs []tracer.Event, c expectConn) []tracer.Event {
		var out []tracer.Event
		for _, ev := range evs {
			if ev.Type == tracer.EventCreated && c.match(ev) {
				out = append(out, ev)
			}
		}
		return out
	}
	if !log.WaitFor(5*time.Second, func(evs []tracer.Event) bool {
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
	truth := map[tracer.Key]uint64{}
	for _, n := range mine {
		for _, r := range n.CTList() {
			truth[tracer.Key{NetNS: n.Inode, Family: r.Family, Protocol: r.Protocol}]++
			var match []tracer.Event
			for _, ev := range log.Snapshot() {
				if ev.Type == tracer.EventCreated && ev.NetNS == n.Inode && ev.Original == tracer.Tuple(r.Original) {
					match = append(match, ev)
				}
			}
			if len(match) != 1 || match[0].Reply != tracer.Tuple(r.Reply) || match[0].Cookie != uint64(r.ID) {
				t.Errorf("netns %d: conntrack -L %+v: created events %+v", n.Inode, r, match)
			}
		}
	}
	for _, e := range ins {
		if e.deleted && e.n != root {
			truth[tracer.Key{NetNS: e.n.Inode, Family: familyOf(e.src.Addr()), Protocol: protoNum[e.proto]}]++
		}
	}

	// Then destroy everything in a, b, c (the root entries are gone).
	for _, n := range mine {
		n.CTFlush()
	}
	destroyed := func(evs []tracer.Event, cookie uint64, ns uint32) []tracer.Event {
		var out []tracer.Event
		for _, ev := range evs {
			if ev.Type == tracer.EventDestroyed && ev.Cookie == cookie && ev.NetNS == ns {
				out = append(out, ev)
			}
		}
		return out
	}
	if !log.WaitFor(5*time.Second, func(evs []tracer.Event) bool {
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
	evs := log.Snapshot()
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
		if ev.NetNS != root.Inode && ev.Type == tracer.EventCreated {
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
		var sum, truthSum tracer.Values
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
			kernel := map[tracer.FailReason]uint64{
				tracer.ReasonConfirmDrop:   after["insert_failed"] - before[n.Inode]["insert_failed"],
				tracer.ReasonTableFull:     after["drop"] - before[n.Inode]["drop"],
				tracer.ReasonClashResolved: after["clash_resolve"] - before[n.Inode]["clash_resolve"],
			}[tracer.FailReason(r)]
			if x != kernel {
				t.Errorf("netns %d: failed %s %d, kernel %d", n.Inode, tracer.FailReason(r), x, kernel)
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
	case <-log.Done:
	case <-time.After(time.Second):
		t.Error("events channel not closed by Close")
	}
	checkNoFDLeak(t, fds)
}

// TestNetlinkWatchUnwatch: a namespace watched after Open is listened to
// at once, and an unwatched one is closed: the tracer follows its owner's
// namespace set and keeps none of its own.
func TestNetlinkWatchUnwatch(t *testing.T) {
	labnet.Require(t, "ip", "conntrack")
	first := labnet.New(t)
	tr, err := tracer.Open(context.Background(), tracer.Options{
		Backend:    tracer.BackendNetlink,
		Logger:     zaptest.NewLogger(t),
		Namespaces: func() ([]tracer.Namespace, error) { return []tracer.Namespace{tracertest.Namespace(first)}, nil },
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
	log := tracertest.CollectEvents(tr)

	second := labnet.New(t)
	if listening(second.Inode) {
		t.Fatal("listening in a namespace nobody named")
	}
	if err := tr.Watch(tracertest.Namespace(second)); err != nil {
		t.Fatal(err)
	}
	if !listening(second.Inode) {
		t.Fatalf("netns %d not listened to after Watch returned", second.Inode)
	}
	src, dst := netip.MustParseAddrPort("192.0.2.1:5000"), netip.MustParseAddrPort("192.0.2.2:53")
	for _, n := range []*labnet.NS{first, second} {
		if err := n.CTInsert(labnet.InsertArgs("udp", src, dst)...); err != nil {
			t.Fatal(err)
		}
	}
	if !log.WaitFor(3*time.Second, func(evs []tracer.Event) bool {
		got := map[uint32]bool{}
		for _, ev := range evs {
			got[ev.NetNS] = true
		}
		return got[first.Inode] && got[second.Inode]
	}) {
		t.Fatalf("no event from both namespaces: %+v", log.Snapshot())
	}

	tr.Unwatch(first.Inode)
	if listening(first.Inode) {
		t.Fatalf("netns %d still listened to after Unwatch", first.Inode)
	}
	tr.Unwatch(first.Inode) // a second time: nothing
	n := len(log.Snapshot())
	first.CTFlush()
	second.CTFlush()
	if !log.WaitFor(3*time.Second, func(evs []tracer.Event) bool { return len(evs) > n }) {
		t.Fatal("no destroy event from the remaining namespace")
	}
	time.Sleep(100 * time.Millisecond)
	for _, ev := range log.Snapshot()[n:] {
		if ev.NetNS != second.Inode || ev.Type != tracer.EventDestroyed || !ev.LifetimeKnown {
			t.Errorf("after removal: %+v", ev)
		}
	}
	cnt, _ := tr.Counters()
	if v := cnt[tracer.Key{NetNS: first.Inode, Family: unix.AF_INET, Protocol: unix.IPPROTO_UDP}]; v.Created != 1 || v.Destroyed != 0 {
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
	tr, err := tracer.Open(context.Background(), tracer.Options{
		Backend:       tracer.BackendNetlink,
		Logger:        zaptest.NewLogger(t),
		Namespaces:    func() ([]tracer.Namespace, error) { return []tracer.Namespace{tracertest.Namespace(n)}, nil },
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
	ks, err := ctnetlink.ReadKernelStats(tracertest.Namespace(n))
	if err != nil {
		t.Fatal(err)
	}
	cnt, err := tr.Counters()
	if err != nil {
		t.Fatal(err)
	}
	v := cnt[tracer.Key{NetNS: n.Inode}]
	drop := after["drop"] - before["drop"]
	t.Logf("kernel: drop +%d insert_failed +%d; counters: table_full %d confirm_drop %d", drop,
		after["insert_failed"]-before["insert_failed"], v.Failed[tracer.ReasonTableFull], v.Failed[tracer.ReasonConfirmDrop])
	if drop != 1 || ks.Drop != after["drop"] {
		t.Errorf("kernel drop: +%d (want 1), ReadKernelStats %d, conntrack -S %d", drop, ks.Drop, after["drop"])
	}
	if v.Failed[tracer.ReasonTableFull] != drop || v.Failed[tracer.ReasonConfirmDrop] != after["insert_failed"]-before["insert_failed"] {
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
	tr, err := tracer.Open(context.Background(), tracer.Options{
		Backend:           tracer.BackendNetlink,
		Logger:            zaptest.NewLogger(t),
		Namespaces:        func() ([]tracer.Namespace, error) { return []tracer.Namespace{tracertest.Namespace(n)}, nil },
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
	var lost map[tracer.LostReason]uint64
	for time.Now().Before(deadline) {
		lost, _ = tr.Lost()
		if lost[tracer.LostNetlinkNoBufs] > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cnt, _ := tr.Counters()
	created := cnt[tracer.Key{NetNS: n.Inode, Family: unix.AF_INET, Protocol: unix.IPPROTO_UDP}].Created
	t.Logf("200 inserts with the reader held: %d NEW received, lost %v", created, lost)
	if lost[tracer.LostNetlinkNoBufs] == 0 {
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
		received = cnt[tracer.Key{NetNS: n.Inode, Family: unix.AF_INET, Protocol: unix.IPPROTO_UDP}].Created
		if lost, _ = tr.Lost(); lost[tracer.LostChannelFull] > 0 && received == uint64(len(tr.Events()))+lost[tracer.LostChannelFull] {
			break
		}
	}
	t.Logf("12 more inserts, Events not read: counters created %d in all, lost %v", received, lost)
	if lost[tracer.LostChannelFull] == 0 || uint64(len(tr.Events())) != 8 || received != uint64(len(tr.Events()))+lost[tracer.LostChannelFull] {
		t.Errorf("channel: %d queued + %d lost, counters %d", len(tr.Events()), lost[tracer.LostChannelFull], received)
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
	var got []tracer.Event
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
	if got[0].Type != tracer.EventCreated || got[1].Type != tracer.EventDestroyed || !got[1].LifetimeKnown {
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
	tr, err := tracer.Open(context.Background(), tracer.Options{
		Backend: tracer.BackendNetlink,
		Logger:  zaptest.NewLogger(t),
		Namespaces: func() ([]tracer.Namespace, error) {
			return []tracer.Namespace{tracertest.Namespace(plain), tracertest.Namespace(stamped)}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	log := tracertest.CollectEvents(tr)
	time.Sleep(50 * time.Millisecond)
	for _, n := range []*labnet.NS{plain, stamped} {
		if err := n.CTDelete(args[:6]...); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(inserted)
	if !log.WaitFor(3*time.Second, func(evs []tracer.Event) bool { return len(evs) == 2 }) {
		t.Fatalf("events: %+v", log.Snapshot())
	}
	cnt, _ := tr.Counters()
	for _, ev := range log.Snapshot() {
		v := cnt[tracer.Key{NetNS: ev.NetNS, Family: unix.AF_INET, Protocol: unix.IPPROTO_UDP}]
		switch ev.NetNS {
		case plain.Inode:
			if ev.Type != tracer.EventDestroyed || ev.LifetimeKnown || v.Destroyed != 1 || v.DestroyedNoStart != 1 || v.Created != 0 {
				t.Errorf("without timestamps: %+v, counters %+v", ev, v)
			}
		case stamped.Inode:
			t.Logf("kernel timestamps: lifetime %v (wall time insert to delete about %v)", ev.Lifetime, elapsed)
			if ev.Type != tracer.EventDestroyed || !ev.LifetimeKnown || ev.Lifetime < 40*time.Millisecond || ev.Lifetime > elapsed+time.Second ||
				v.DestroyedNoStart != 0 || v.LifetimeSum != ev.Lifetime || v.LifetimeBuckets[tracer.LifetimeBucket(ev.Lifetime)] != 1 {
				t.Errorf("with timestamps: %+v, counters %+v", ev, v)
			}
		}
	}
}

// TestNetlinkOpenErrors: a namespace that cannot be opened is refused
// when it is the only one; a bad namespace list fails Open.
func TestNetlinkOpenErrors(t *testing.T) {
	labnet.Require(t, "ip")
	_, err := tracer.Open(context.Background(), tracer.Options{Backend: tracer.BackendNetlink,
		Namespaces: func() ([]tracer.Namespace, error) {
			return []tracer.Namespace{{Inode: 1, Path: "/nonexistent/ns"}}, nil
		}})
	if err == nil {
		t.Error("open with only a missing namespace succeeded")
	}
	n := labnet.New(t)
	_, err = tracer.Open(context.Background(), tracer.Options{Backend: tracer.BackendNetlink,
		Namespaces: func() ([]tracer.Namespace, error) { return []tracer.Namespace{{Inode: n.Inode + 1, Path: n.Path}}, nil }})
	if err == nil || !strings.Contains(err.Error(), "inode") {
		t.Errorf("open with a wrong inode: %v", err)
	}
	_, err = tracer.Open(context.Background(), tracer.Options{Backend: tracer.BackendNetlink,
		Namespaces: func() ([]tracer.Namespace, error) { return nil, errors.New("boom") }})
	if err == nil {
		t.Error("open with a failing namespace list succeeded")
	}
	// Default: the current namespace only.
	tr, err := tracer.Open(context.Background(), tracer.Options{Backend: tracer.BackendNetlink})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	nt := tr.(*netlinkTracer)
	if l := len(nt.listeners); l != 1 || nt.listeners[labnet.Root(t).Inode] == nil {
		t.Errorf("default namespaces: %v", fmt.Sprint(nt.listeners))
	}
}
