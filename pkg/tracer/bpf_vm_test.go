package tracer

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// These tests attach the eBPF programs, so they run only inside the kernel
// matrix (make vmtest sets CTAGENT_VMTEST=1): this host cannot attach.

func requireVM(t *testing.T) {
	t.Helper()
	if os.Getenv("CTAGENT_VMTEST") == "" {
		t.Skip("skipped: attaches eBPF programs; runs in the qemu kernel matrix (make vmtest), this host cannot attach kprobes or fentry")
	}
	requireRoot(t)
}

// vmRun runs a command, optionally inside a named netns, and fails the test
// on error.
func vmRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := vmTry(ns, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func vmTry(ns string, args ...string) (string, error) {
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return buf.String(), err
}

// vmInNetns runs fn on a thread that is inside the named namespace. Sockets
// created in fn stay in that namespace.
func vmInNetns(t *testing.T, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatalf("enter netns %s: %v", name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(fmt.Sprintf("cannot return to the original netns: %v", err))
		}
	}()
	fn()
}

// vmInode returns the inode number of a named namespace (0: this process's).
func vmInode(t *testing.T, name string) uint32 {
	t.Helper()
	path := "/proc/self/ns/net"
	if name != "" {
		path = "/var/run/netns/" + name
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// vmNetns creates a named namespace with lo up and an nftables ct rule
// (conntrack hooks run only when something uses them).
func vmNetns(t *testing.T, name string) uint32 {
	t.Helper()
	vmRun(t, "", "ip", "netns", "add", name)
	t.Cleanup(func() { vmTry("", "ip", "netns", "del", name) })
	vmRun(t, name, "ip", "link", "set", "lo", "up")
	vmConntrackRule(t, name)
	return vmInode(t, name)
}

const vmNftCt = `table inet ctagent_test {
	chain pre { type filter hook prerouting priority 0; policy accept; ct state new counter; }
	chain out { type filter hook output priority 0; policy accept; ct state new counter; }
}
`

func vmConntrackRule(t *testing.T, ns string) {
	t.Helper()
	f := t.TempDir() + "/ct.nft"
	os.WriteFile(f, []byte(vmNftCt), 0o600)
	vmRun(t, ns, "nft", "-f", f)
	if ns == "" {
		t.Cleanup(func() { vmTry("", "nft", "delete", "table", "inet", "ctagent_test") })
	}
}

// vmVeth links namespace a (""= root) to b with IPv4 /24 and IPv6 /64
// addresses ending in .1/::1 on a's side and .2/::2 on b's side.
func vmVeth(t *testing.T, a, b, name, v4prefix, v6prefix string) {
	t.Helper()
	peer := name + "p"
	vmRun(t, a, "ip", "link", "add", name, "type", "veth", "peer", "name", peer, "netns", b)
	vmRun(t, a, "ip", "addr", "add", v4prefix+".1/24", "dev", name)
	vmRun(t, a, "ip", "addr", "add", v6prefix+"::1/64", "dev", name, "nodad")
	vmRun(t, a, "ip", "link", "set", name, "up")
	vmRun(t, b, "ip", "addr", "add", v4prefix+".2/24", "dev", peer)
	vmRun(t, b, "ip", "addr", "add", v6prefix+"::2/64", "dev", peer, "nodad")
	vmRun(t, b, "ip", "link", "set", peer, "up")
	if a == "" {
		t.Cleanup(func() { vmTry("", "ip", "link", "del", name) })
	}
}

// vmCollector gathers every event of a tracer.
type vmCollector struct {
	mu     sync.Mutex
	events []Event
	done   chan struct{}
}

func vmCollect(tr Tracer) *vmCollector {
	c := &vmCollector{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for ev := range tr.Events() {
			c.mu.Lock()
			c.events = append(c.events, ev)
			c.mu.Unlock()
		}
	}()
	return c
}

// matching returns the events of netns ns that satisfy keep.
func (c *vmCollector) matching(ns uint32, keep func(Event) bool) []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Event
	for _, ev := range c.events {
		if ev.NetNS == ns && keep(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// vmWait polls cond for up to 20 s; on time-out it fails the test, fatally
// or not.
func vmWait(t *testing.T, what string, cond func() bool, fatal bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			if fatal {
				t.Fatalf("timed out waiting for %s", what)
			}
			t.Errorf("timed out waiting for %s", what)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// vmFlow is a conntrack entry as the CLI prints it, our ground truth.
type vmFlow struct {
	protocol uint8
	orig     Tuple
	reply    Tuple
}

// vmConntrackList parses `conntrack -L -o extended` in a namespace, keeping
// flows whose original source is in one of the prefixes.
func vmConntrackList(t *testing.T, ns string, prefixes ...netip.Prefix) []vmFlow {
	t.Helper()
	out, err := vmTry(ns, "conntrack", "-L", "-o", "extended")
	if err != nil && !strings.Contains(out, "flow entries have been shown") {
		t.Fatalf("conntrack -L: %v\n%s", err, out)
	}
	var flows []vmFlow
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f, ok := vmParseFlow(sc.Text())
		if !ok {
			continue
		}
		for _, p := range prefixes {
			if p.Contains(f.orig.Src) {
				flows = append(flows, f)
				break
			}
		}
	}
	return flows
}

// vmParseFlow parses one line of `conntrack -L -o extended`:
// "ipv4 2 tcp 6 119 TIME_WAIT src=.. dst=.. sport=.. dport=.. src=.. ...".
func vmParseFlow(line string) (vmFlow, bool) {
	fields := strings.Fields(line)
	if len(fields) < 4 {
		return vmFlow{}, false
	}
	proto, err := strconv.Atoi(fields[3])
	if err != nil {
		return vmFlow{}, false
	}
	f := vmFlow{protocol: uint8(proto)}
	dir := -1
	var typ, code uint16
	for _, fld := range fields[4:] {
		k, v, ok := strings.Cut(fld, "=")
		if !ok {
			continue
		}
		tp := &f.orig
		if k == "src" {
			dir++
		}
		if dir == 1 {
			tp = &f.reply
		}
		n, _ := strconv.Atoi(v)
		switch k {
		case "src":
			tp.Src, _ = netip.ParseAddr(v)
		case "dst":
			tp.Dst, _ = netip.ParseAddr(v)
		case "sport":
			tp.SrcPort = uint16(n)
		case "dport":
			tp.DstPort = uint16(n)
		case "id":
			tp.SrcPort = uint16(n)
		case "type":
			typ = uint16(n)
		case "code":
			code = uint16(n)
			tp.DstPort = typ<<8 | code
		}
	}
	return f, dir == 1
}

func (f vmFlow) String() string {
	return fmt.Sprintf("proto %d %s:%d>%s:%d reply %s:%d>%s:%d", f.protocol, f.orig.Src, f.orig.SrcPort, f.orig.Dst, f.orig.DstPort,
		f.reply.Src, f.reply.SrcPort, f.reply.Dst, f.reply.DstPort)
}

func (f vmFlow) matches(ev Event) bool {
	return ev.Protocol == f.protocol && ev.Original == f.orig && ev.Reply == f.reply
}

// vmKernelStat sums one column of /proc/net/stat/nf_conntrack in a netns.
func vmKernelStat(t *testing.T, ns, column string) uint64 {
	t.Helper()
	out := vmRun(t, ns, "cat", "/proc/net/stat/nf_conntrack")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	col := -1
	for i, name := range strings.Fields(lines[0]) {
		if name == column {
			col = i
		}
	}
	if col < 0 {
		t.Fatalf("no column %q in /proc/net/stat/nf_conntrack: %s", column, lines[0])
	}
	var sum uint64
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		n, err := strconv.ParseUint(f[col], 16, 64)
		if err != nil {
			t.Fatalf("parse %q: %v", f[col], err)
		}
		sum += n
	}
	return sum
}

// vmServe accepts TCP connections and echoes one line on each.
func vmServe(t *testing.T, l net.Listener) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, io.LimitReader(c, 5))
			}()
		}
	}()
}

// vmDialTCP opens one connection from namespace ns, exchanges a few bytes and
// closes it.
func vmDialTCP(t *testing.T, ns, network, addr string) {
	t.Helper()
	var c net.Conn
	var err error
	vmInNetns(t, ns, func() { c, err = net.DialTimeout(network, addr, 5*time.Second) })
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("hello"))
	io.ReadFull(c, make([]byte, 5))
}

// TestVMBackends runs the scenario with each eBPF backend.
func TestVMBackends(t *testing.T) {
	requireVM(t)
	var hooksLine []string
	for _, b := range []Backend{BackendFentry, BackendKprobe} {
		t.Run(string(b), func(t *testing.T) {
			hooks := vmScenario(t, b)
			hooksLine = append(hooksLine, fmt.Sprintf("%s=%d[%s]", b, len(hooks), strings.Join(hooks, ",")))
		})
	}
	fmt.Printf("VMTEST-HOOKS: %s\n", strings.Join(hooksLine, " "))
}

// vmScenario creates three namespaces plus the root one, runs real traffic
// (TCP v4/v6, UDP, ICMP, DNAT) and ctnetlink inserts/deletes, and checks the
// events and counters against the kernel's own view.
func vmScenario(t *testing.T, b Backend) []string {
	if stats, err := EnableBPFStats(); err == nil {
		t.Cleanup(func() { stats.Close() })
	}
	tr, err := Open(t.Context(), Options{Backend: b, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatalf("open %s: %v", b, err)
	}
	t.Cleanup(func() { tr.Close() })
	info := tr.Info()
	if info.Backend != b || len(info.Hooks) == 0 {
		t.Fatalf("info = %+v", info)
	}
	t.Logf("%s on %s: hooks %v", b, info.Kernel, info.Hooks)
	col := vmCollect(tr)

	p := string(b[0]) // short, unique names per backend run
	// Distinct addresses per run: the root namespace keeps the entries of
	// an earlier run (TIME_WAIT) until they expire.
	v4, v6 := "10.201", "fd01"
	if b == BackendKprobe {
		v4, v6 = "10.202", "fd02"
	}
	a4 := func(rest string) string { return v4 + "." + rest }
	a6 := func(rest string) string { return v6 + ":" + rest }
	nsA, nsB, nsC := "ct"+p+"a", "ct"+p+"b", "ct"+p+"c"
	inode := map[string]uint32{"": vmInode(t, "")}
	for _, n := range []string{nsA, nsB, nsC} {
		inode[n] = vmNetns(t, n)
	}
	vmConntrackRule(t, "")
	vmVeth(t, "", nsA, "vt"+p+"a", a4("1"), a6("1"))
	vmVeth(t, "", nsB, "vt"+p+"b", a4("2"), a6("2"))
	vmVeth(t, nsB, nsC, "vt"+p+"c", a4("3"), a6("3"))
	vmRun(t, nsC, "ip", "route", "add", "default", "via", a4("3.1"))

	// DNAT in the root namespace: :8081 goes to :8080, so reply != original.
	nat := t.TempDir() + "/nat.nft"
	os.WriteFile(nat, []byte("table ip ctagent_nat {\n chain pre { type nat hook prerouting priority -100; tcp dport 8081 dnat to "+a4("1.1")+":8080; }\n}\n"), 0o600)
	vmRun(t, "", "nft", "-f", nat)
	t.Cleanup(func() { vmTry("", "nft", "delete", "table", "ip", "ctagent_nat") })

	l4, err := net.Listen("tcp4", a4("1.1:8080"))
	if err != nil {
		t.Fatal(err)
	}
	vmServe(t, l4)
	l6, err := net.Listen("tcp6", "["+a6("2::1")+"]:8080")
	if err != nil {
		t.Fatal(err)
	}
	vmServe(t, l6)
	var udp net.PacketConn
	vmInNetns(t, nsB, func() { udp, err = net.ListenPacket("udp4", a4("3.1:5353")) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			udp.WriteTo(buf[:n], from)
		}
	}()

	// Traffic.
	for i := 0; i < 3; i++ {
		vmDialTCP(t, nsA, "tcp4", a4("1.1:8080"))
	}
	vmDialTCP(t, nsA, "tcp4", a4("1.1:8081")) // DNAT
	for i := 0; i < 2; i++ {
		vmDialTCP(t, nsB, "tcp6", "["+a6("2::1")+"]:8080")
	}
	for i := 0; i < 2; i++ {
		var c net.Conn
		vmInNetns(t, nsC, func() { c, err = net.Dial("udp4", a4("3.1:5353")) })
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("q"))
		c.Read(make([]byte, 8))
		c.Close()
	}
	vmRun(t, nsA, "ping", "-c", "1", "-W", "5", a4("1.1"))
	vmRun(t, nsB, "ping", "-c", "1", "-W", "5", a6("2::1"))

	// ctnetlink: an entry inserted, then one whose reply tuple clashes with
	// it (ctnetlink looks up the original tuple only, so the clash is found
	// by nf_conntrack_hash_check_insert: -EEXIST), then the first deleted.
	vmRun(t, nsC, "conntrack", "-I", "-p", "tcp", "-s", "192.0.2.1", "-d", "192.0.2.2", "--sport", "1000", "--dport", "2000",
		"--state", "ESTABLISHED", "-t", "300", "-u", "ASSURED")
	if out, err := vmTry(nsC, "conntrack", "-I", "-p", "tcp", "-s", "192.0.2.5", "-d", "192.0.2.6", "--sport", "3000", "--dport", "4000",
		"--reply-src", "192.0.2.2", "--reply-dst", "192.0.2.1", "--reply-port-src", "2000", "--reply-port-dst", "1000",
		"--state", "ESTABLISHED", "-t", "300", "-u", "ASSURED"); err == nil {
		t.Fatalf("insert with a clashing reply tuple succeeded: %s", out)
	}
	vmRun(t, nsC, "conntrack", "-D", "-p", "tcp", "-s", "192.0.2.1", "-d", "192.0.2.2")

	// Ground truth: the live entries, per namespace.
	ours := []netip.Prefix{netip.MustParsePrefix(a4("0.0/16")), netip.MustParsePrefix(v6 + "::/16")}
	truth := map[string][]vmFlow{}
	for _, n := range []string{"", nsA, nsB, nsC} {
		truth[n] = vmConntrackList(t, n, ours...)
	}
	wantPerNS := map[string]int{nsA: 5, nsB: 5, nsC: 2} // A: 4 tcp + icmp; B: 2 tcp6 + icmpv6 + 2 udp; C: 2 udp
	for n, want := range wantPerNS {
		if got := len(truth[n]); got != want {
			t.Errorf("conntrack -L in %s: %d entries, want %d: %+v", n, got, want, truth[n])
		}
	}

	// Every live entry appears exactly once as created, in its namespace.
	created := func(ev Event) bool { return ev.Type == EventCreated }
	createdFor := func(n string, f vmFlow) []Event {
		return col.matching(inode[n], func(ev Event) bool { return created(ev) && f.matches(ev) })
	}
	vmWait(t, "a created event for every live entry", func() bool {
		for n, flows := range truth {
			for _, f := range flows {
				if len(createdFor(n, f)) == 0 {
					return false
				}
			}
		}
		return true
	}, false)
	if t.Failed() {
		lost, _ := tr.Lost()
		progs, _ := tr.Programs()
		counters, _ := tr.Counters()
		t.Logf("diagnostics: lost %v programs %+v", lost, progs)
		for k, v := range counters {
			t.Logf("counters %+v: created %d destroyed %d failed %v", k, v.Created, v.Destroyed, v.Failed)
		}
	}
	for n, flows := range truth {
		for _, f := range flows {
			if got := createdFor(n, f); len(got) != 1 {
				t.Errorf("netns %q: %d created events for %s, want 1", n, len(got), f)
			}
		}
	}
	// The DNAT flow shows the translation in its reply tuple.
	dnat := col.matching(inode[""], func(ev Event) bool { return created(ev) && ev.Original.DstPort == 8081 })
	if len(dnat) != 1 || dnat[0].Reply.SrcPort != 8080 {
		t.Errorf("DNAT flow: %+v", dnat)
	}

	// The ctnetlink entry: created, failed with -EEXIST, destroyed.
	ctnl := func(typ EventType) []Event {
		return col.matching(inode[nsC], func(ev Event) bool {
			return ev.Type == typ && netip.MustParsePrefix("192.0.2.0/24").Contains(ev.Original.Src)
		})
	}
	vmWait(t, "ctnetlink events", func() bool { return len(ctnl(EventDestroyed)) >= 1 }, true)
	if c, f, d := ctnl(EventCreated), ctnl(EventFailed), ctnl(EventDestroyed); len(c) != 1 || len(f) != 1 || len(d) != 1 {
		t.Errorf("ctnetlink entry: %d created, %d failed, %d destroyed; want 1 each", len(c), len(f), len(d))
	} else if f[0].Reason != ReasonExists || f[0].Error != -int32(unix.EEXIST) {
		t.Errorf("ctnetlink failure: reason %s error %d, want exists/-EEXIST", f[0].Reason, f[0].Error)
	}

	// Flush: every entry is destroyed exactly once, with a lifetime.
	for _, n := range []string{nsA, nsB, nsC} {
		vmRun(t, n, "conntrack", "-F")
	}
	for n, flows := range truth {
		if n == "" {
			continue
		}
		for _, f := range flows {
			f := f
			match := func(ev Event) bool { return ev.Type == EventDestroyed && f.matches(ev) }
			vmWait(t, fmt.Sprintf("destroyed event for %s", f), func() bool { return len(col.matching(inode[n], match)) >= 1 }, false)
			got := col.matching(inode[n], match)
			if len(got) != 1 || !got[0].LifetimeKnown || got[0].Lifetime < 0 {
				t.Errorf("netns %q: destroyed events for %s: %+v", n, f, got)
			}
		}
	}

	// Counters equal the ground truth per namespace.
	counters, err := tr.Counters()
	if err != nil {
		t.Fatal(err)
	}
	perNS := map[uint32]Values{}
	for k, v := range counters {
		x := perNS[k.NetNS]
		x.Add(v)
		perNS[k.NetNS] = x
	}
	for n, want := range wantPerNS {
		if n == nsC {
			want++ // the ctnetlink entry
		}
		v := perNS[inode[n]]
		if v.Created != uint64(want) || v.Destroyed != uint64(want) || v.DestroyedNoStart != 0 {
			t.Errorf("%s counters: created %d destroyed %d no-start %d, want %d/%d/0", n, v.Created, v.Destroyed, v.DestroyedNoStart, want, want)
		}
		var inHist uint64
		for _, c := range v.LifetimeBuckets {
			inHist += c
		}
		if inHist != v.Destroyed {
			t.Errorf("%s: %d lifetimes in the histogram, %d destroyed", n, inHist, v.Destroyed)
		}
		if got, kernel := v.Failed[ReasonConfirmDrop], vmKernelStat(t, n, "insert_failed"); got != kernel {
			t.Errorf("%s: confirm_drop %d, kernel insert_failed %d", n, got, kernel)
		}
	}
	if v := perNS[inode[nsC]]; v.Failed[ReasonExists] != 1 {
		t.Errorf("%s: failed[exists] = %d, want 1", nsC, v.Failed[ReasonExists])
	}
	perKey := counters[Key{NetNS: inode[nsB], Family: unix.AF_INET6, Protocol: unix.IPPROTO_TCP}]
	if perKey.Created != 2 {
		t.Errorf("%s tcp6 created = %d, want 2", nsB, perKey.Created)
	}

	vmTableFull(t, tr, p)

	lost, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	for r, n := range lost {
		if n != 0 {
			t.Errorf("lost[%s] = %d", r, n)
		}
	}
	if err := tr.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	<-col.done
	return info.Hooks
}

// vmTableFull fills a namespace up to a small nf_conntrack_max with ASSURED
// entries (which early drop will not evict), then asks for more: over
// ctnetlink and with a packet. The table-full failures must equal the
// kernel's own drop counter of that namespace (which counts the packet path
// only: nf_conntrack_in counts drop when resolve_normal_ct fails) plus the
// refused ctnetlink insert.
func vmTableFull(t *testing.T, tr Tracer, p string) {
	ns := "ct" + p + "full"
	ino := vmNetns(t, ns)
	maxPath := "/proc/sys/net/netfilter/nf_conntrack_max"
	old, err := os.ReadFile(maxPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(maxPath, old, 0o644) })
	const limit = 8
	if err := os.WriteFile(maxPath, []byte(strconv.Itoa(limit)), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < limit; i++ {
		vmRun(t, ns, "conntrack", "-I", "-p", "udp", "-s", "198.51.100.1", "-d", "198.51.100.2",
			"--sport", strconv.Itoa(1000+i), "--dport", "53", "-t", "300", "-u", "ASSURED")
	}
	if out, err := vmTry(ns, "conntrack", "-I", "-p", "udp", "-s", "198.51.100.1", "-d", "198.51.100.2",
		"--sport", "999", "--dport", "53", "-t", "300", "-u", "ASSURED"); err == nil {
		t.Fatalf("insert into a full table succeeded: %s", out)
	}
	vmTry(ns, "ping", "-c", "1", "-W", "1", "127.0.0.1") // dropped: no room for its entry
	drops := vmKernelStat(t, ns, "drop")
	if drops < 1 {
		t.Fatalf("kernel drop counter in %s = %d, want >= 1", ns, drops)
	}
	want := drops + 1 // the refused ctnetlink insert
	var got uint64
	vmWait(t, "table_full counters", func() bool {
		counters, err := tr.Counters()
		if err != nil {
			t.Fatal(err)
		}
		got = 0
		for k, v := range counters {
			if k.NetNS == ino {
				got += v.Failed[ReasonTableFull]
			}
		}
		return got >= want
	}, false)
	if got != want {
		t.Errorf("table_full failures %d, want kernel drop counter %d + 1 ctnetlink", got, drops)
	}
	os.WriteFile(maxPath, old, 0o644)
	vmRun(t, ns, "conntrack", "-F")
}
