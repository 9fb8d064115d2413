package tracer

// Test lab: throw-away network namespaces with veth links, nftables rules
// that make conntrack run, real traffic made with Go's net package inside
// a namespace, and the conntrack CLI as ground truth. Everything is removed
// in t.Cleanup. Used by the netlink tests and by the eBPF tests (also inside
// qemu guests, where ip, nft and conntrack are copied in).
//
//	labRequire(t, "ip", "nft", "conntrack") // skip unless root with the tools
//	a, b := newLabNS(t), newLabNS(t)
//	link := labConnect(t, a, b)            // veth a<->b, IPv4 and IPv6
//	a.enableConntrack(); b.enableConntrack()
//	b.addRedirect("tcp", 80, 8080)         // DNAT: reply tuples differ
//	b.serveTCP(8080)
//	local := a.tcpRoundTrip(netip.AddrPortFrom(link.B4, 80))
//	entries := b.ctList()                  // conntrack -L, both families

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// labRequire skips t, saying why, unless the test runs as root and every
// tool is on PATH.
func labRequire(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (network namespaces, conntrack)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: %s not found: %v", tool, err)
		}
	}
}

var labSeq atomic.Uint32

// labName returns a name unique across processes and calls, at most 15
// bytes so it can also name an interface.
func labName(prefix string) string {
	return fmt.Sprintf("%s%d%c%d", prefix, os.Getpid()%100000, 'x', labSeq.Add(1))
}

// labNS is a network namespace used by a test.
type labNS struct {
	Name  string // ip netns name; "" for the test process's own namespace
	Path  string // /var/run/netns/Name; "" for the own namespace
	Inode uint32 // inode of the namespace file: what tracers label events with
	t     testing.TB
}

// newLabNS creates a named network namespace with lo up; it is deleted in
// t.Cleanup (sockets still open keep the namespace itself alive).
func newLabNS(t testing.TB) *labNS {
	t.Helper()
	name := labName("ctl")
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	n := &labNS{Name: name, Path: "/var/run/netns/" + name, t: t}
	var st unix.Stat_t
	if err := unix.Stat(n.Path, &st); err != nil {
		t.Fatalf("stat %s: %v", n.Path, err)
	}
	n.Inode = uint32(st.Ino)
	n.mustExec("ip", "link", "set", "lo", "up")
	return n
}

// rootLabNS is the test process's own namespace. Other tests may use it
// concurrently: filter by your own addresses and ports, and never flush it.
func rootLabNS(t testing.TB) *labNS {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatalf("stat /proc/self/ns/net: %v", err)
	}
	return &labNS{Inode: uint32(st.Ino), t: t}
}

// Namespace is n as the tracer package names namespaces.
func (n *labNS) Namespace() Namespace { return Namespace{Inode: n.Inode, Path: n.Path} }

// command returns a command that runs in n.
func (n *labNS) command(args ...string) *exec.Cmd {
	if n.Name == "" {
		return exec.Command(args[0], args[1:]...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// exec runs a command in n and returns its combined output.
func (n *labNS) exec(args ...string) (string, error) {
	out, err := n.command(args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// mustExec is exec that fails the test on error; it returns stdout only.
func (n *labNS) mustExec(args ...string) string {
	n.t.Helper()
	cmd := n.command(args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		n.t.Fatalf("netns %q: %s: %v: %s", n.Name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// Do runs fn on an OS thread switched into n and restores the thread.
// Sockets that fn creates stay in n and may be used from any goroutine
// afterwards; goroutines that fn starts do NOT run in n.
func (n *labNS) Do(fn func() error) error {
	if n.Name == "" {
		return fn()
	}
	target, err := netns.GetFromPath(n.Path)
	if err != nil {
		return err
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with the goroutine.
		return errors.Join(fnErr, fmt.Errorf("restore netns: %w", err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// labLink is a veth pair between two namespaces with one IPv4 and one
// IPv6 address on each end (10.X.Y.1|2/24, fd00:c7:X:Y::1|2/64).
type labLink struct {
	A, B     *labNS
	AIf, BIf string
	A4, B4   netip.Addr
	A6, B6   netip.Addr
}

var labSubnet atomic.Uint32

// labConnect links a and b (b may be rootLabNS) with a veth pair, sets
// the addresses (IPv6 without DAD) and brings both ends up. The pair is
// deleted in t.Cleanup if it survives its namespaces.
func labConnect(t testing.TB, a, b *labNS) *labLink {
	t.Helper()
	s := labSubnet.Add(1)
	x, y := byte(100+os.Getpid()%100), byte(s)
	l := &labLink{A: a, B: b, AIf: labName("va"), BIf: labName("vb")}
	l.A4 = netip.AddrFrom4([4]byte{10, x, y, 1})
	l.B4 = netip.AddrFrom4([4]byte{10, x, y, 2})
	l.A6 = netip.MustParseAddr(fmt.Sprintf("fd00:c7:%x:%x::1", x, y))
	l.B6 = netip.MustParseAddr(fmt.Sprintf("fd00:c7:%x:%x::2", x, y))
	args := []string{"link", "add", l.AIf}
	if a.Name != "" {
		args = append(args, "netns", a.Name)
	}
	args = append(args, "type", "veth", "peer", "name", l.BIf)
	if b.Name != "" {
		args = append(args, "netns", b.Name)
	}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(func() {
		// Deleting one end deletes both; gone already if a namespace went.
		_, _ = a.exec("ip", "link", "del", l.AIf)
	})
	for _, e := range []struct {
		n      *labNS
		ifn    string
		v4, v6 netip.Addr
	}{{a, l.AIf, l.A4, l.A6}, {b, l.BIf, l.B4, l.B6}} {
		e.n.mustExec("ip", "addr", "add", e.v4.String()+"/24", "dev", e.ifn)
		e.n.mustExec("ip", "addr", "add", e.v6.String()+"/64", "dev", e.ifn, "nodad")
		e.n.mustExec("ip", "link", "set", e.ifn, "up")
	}
	return l
}

// nft loads an nftables ruleset (nft -f -) in n. Statements inside a
// chain need a newline or ';' after each.
func (n *labNS) nft(ruleset string) {
	n.t.Helper()
	cmd := n.command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.t.Fatalf("netns %q: nft: %v: %s\n%s", n.Name, err, out, ruleset)
	}
}

// enableConntrack adds an inet table whose 'ct state' rules make the
// conntrack hooks run for IPv4 and IPv6 in n (packets are accepted).
func (n *labNS) enableConntrack() {
	n.nft(`table inet ctlab {
	chain pre { type filter hook prerouting priority -150; ct state new counter; }
	chain out { type filter hook output priority -150; ct state new counter; }
}
`)
}

// addRedirect adds a DNAT rule: proto ("tcp" or "udp") to port is
// redirected to local port to, for IPv4 and IPv6. Reply tuples then carry
// the port to.
func (n *labNS) addRedirect(proto string, port, to uint16) {
	n.nft(fmt.Sprintf(`table inet ctlabnat {
	chain pre { type nat hook prerouting priority -100; %s dport %d redirect to :%d; }
}
`, proto, port, to))
}

// addMasquerade masquerades everything leaving through oif.
func (n *labNS) addMasquerade(oif string) {
	n.nft(fmt.Sprintf(`table inet ctlabmasq {
	chain post { type nat hook postrouting priority 100; oifname %q masquerade; }
}
`, oif))
}

// closeLater closes c in t.Cleanup.
func (n *labNS) closeLater(c io.Closer) { n.t.Cleanup(func() { c.Close() }) }

// serveTCP starts a TCP echo server on port (IPv4 and IPv6) in n.
func (n *labNS) serveTCP(port uint16) {
	n.t.Helper()
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		n.t.Fatalf("netns %q: listen tcp %d: %v", n.Name, port, err)
	}
	n.closeLater(ln)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// A plain loop: io.Copy would splice through pooled
				// pipes that stay open and look like leaked descriptors.
				buf := make([]byte, 2048)
				for {
					m, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:m]); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// serveUDP starts a UDP echo server on port (IPv4 and IPv6) in n.
func (n *labNS) serveUDP(port uint16) {
	n.t.Helper()
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		n.t.Fatalf("netns %q: listen udp %d: %v", n.Name, port, err)
	}
	n.closeLater(pc)
	go func() {
		buf := make([]byte, 2048)
		for {
			m, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:m], from)
		}
	}()
}

const labIOTimeout = 3 * time.Second

// tcpRoundTrip connects from n to dst, sends a line, reads the echo and
// closes; it returns the local address the connection used.
func (n *labNS) tcpRoundTrip(dst netip.AddrPort) netip.AddrPort {
	n.t.Helper()
	var c net.Conn
	err := n.Do(func() (err error) {
		d := net.Dialer{Timeout: labIOTimeout}
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	if err != nil {
		n.t.Fatalf("netns %q: dial tcp %s: %v", n.Name, dst, err)
	}
	defer c.Close()
	n.echo(c)
	return c.LocalAddr().(*net.TCPAddr).AddrPort()
}

// tcpOpen connects from n to dst and leaves the connection open (an
// ESTABLISHED entry) until t.Cleanup.
func (n *labNS) tcpOpen(dst netip.AddrPort) net.Conn {
	n.t.Helper()
	var c net.Conn
	err := n.Do(func() (err error) {
		d := net.Dialer{Timeout: labIOTimeout}
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	if err != nil {
		n.t.Fatalf("netns %q: dial tcp %s: %v", n.Name, dst, err)
	}
	n.closeLater(c)
	n.echo(c)
	return c
}

// udpRoundTrip sends one datagram from n to dst and reads the echo; it
// returns the local address used.
func (n *labNS) udpRoundTrip(dst netip.AddrPort) netip.AddrPort {
	n.t.Helper()
	var c *net.UDPConn
	err := n.Do(func() (err error) {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		return err
	})
	if err != nil {
		n.t.Fatalf("netns %q: dial udp %s: %v", n.Name, dst, err)
	}
	defer c.Close()
	n.echo(c)
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (n *labNS) echo(c net.Conn) {
	n.t.Helper()
	msg := []byte("ctagent lab\n")
	_ = c.SetDeadline(time.Now().Add(labIOTimeout))
	if _, err := c.Write(msg); err != nil {
		n.t.Fatalf("netns %q: write %s: %v", n.Name, c.RemoteAddr(), err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		n.t.Fatalf("netns %q: echo from %s: %v", n.Name, c.RemoteAddr(), err)
	}
}

// ping sends one ICMP or ICMPv6 echo request with the given id from n to
// dst (raw socket) and waits for the reply.
func (n *labNS) ping(dst netip.Addr, id uint16) {
	n.t.Helper()
	network, reqType, repType := "ip4:icmp", byte(8), byte(0)
	if dst.Is6() {
		network, reqType, repType = "ip6:ipv6-icmp", 128, 129
	}
	var c net.PacketConn
	err := n.Do(func() (err error) {
		c, err = net.ListenPacket(network, "")
		return err
	})
	if err != nil {
		n.t.Fatalf("netns %q: %s socket: %v", n.Name, network, err)
	}
	defer c.Close()
	msg := make([]byte, 16)
	msg[0] = reqType
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], 1)
	copy(msg[8:], "ctagent!")
	if dst.Is4() { // the kernel fills in the ICMPv6 checksum
		binary.BigEndian.PutUint16(msg[2:], inetChecksum(msg))
	}
	_ = c.SetDeadline(time.Now().Add(labIOTimeout))
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		n.t.Fatalf("netns %q: ping %s: %v", n.Name, dst, err)
	}
	buf := make([]byte, 1500)
	for {
		m, _, err := c.ReadFrom(buf)
		if err != nil {
			n.t.Fatalf("netns %q: ping %s id %d: no reply: %v", n.Name, dst, id, err)
		}
		if m >= 8 && buf[0] == repType && binary.BigEndian.Uint16(buf[4:]) == id {
			return
		}
	}
}

// sendRawTCP sends one bare IPv4 TCP segment with the given flags from n
// (raw socket). A lone FIN or RST with no connection is what conntrack
// counts as "invalid".
func (n *labNS) sendRawTCP(src, dst netip.AddrPort, flags uint8) {
	n.t.Helper()
	seg := make([]byte, 20)
	binary.BigEndian.PutUint16(seg[0:], src.Port())
	binary.BigEndian.PutUint16(seg[2:], dst.Port())
	binary.BigEndian.PutUint32(seg[4:], 12345)
	seg[12] = 5 << 4 // data offset
	seg[13] = flags
	binary.BigEndian.PutUint16(seg[14:], 1024)
	pseudo := slices.Concat(src.Addr().AsSlice(), dst.Addr().AsSlice(), []byte{0, unix.IPPROTO_TCP, 0, 20}, seg)
	binary.BigEndian.PutUint16(seg[16:], inetChecksum(pseudo))
	err := n.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.Addr().As4()}); err != nil {
			return err
		}
		return unix.Sendto(fd, seg, 0, &unix.SockaddrInet4{Addr: dst.Addr().As4()})
	})
	if err != nil {
		n.t.Fatalf("netns %q: raw TCP %s -> %s: %v", n.Name, src, dst, err)
	}
}

func inetChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// ctRecord is one line of conntrack -L -o extended,id.
type ctRecord struct {
	Family, Protocol uint8
	Original, Reply  Tuple
	State            string   // TCP state name, e.g. ESTABLISHED
	Flags            []string // ASSURED, UNREPLIED, ...
	Mark             uint32
	Zone             uint16
	ID               uint32
	Timeout          time.Duration
}

// ctList lists n's conntrack table (IPv4 and IPv6) with the conntrack CLI.
func (n *labNS) ctList() []ctRecord {
	n.t.Helper()
	var out []ctRecord
	for _, fam := range []string{"ipv4", "ipv6"} {
		for _, line := range strings.Split(n.mustExec("conntrack", "-L", "-f", fam, "-o", "extended,id"), "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			r, err := parseCTLine(line)
			if err != nil {
				n.t.Fatalf("netns %q: conntrack -L: %v", n.Name, err)
			}
			out = append(out, r)
		}
	}
	return out
}

// parseCTLine parses "ipv4 2 tcp 6 117 SYN_SENT src=.. dst=.. sport=..
// dport=.. [UNREPLIED] src=.. .. mark=0 zone=3 use=1 id=123".
func parseCTLine(line string) (ctRecord, error) {
	var r ctRecord
	f := strings.Fields(line)
	if len(f) < 5 {
		return r, fmt.Errorf("short line %q", line)
	}
	fam, err1 := strconv.ParseUint(f[1], 10, 8)
	proto, err2 := strconv.ParseUint(f[3], 10, 8)
	tmo, err3 := strconv.ParseUint(f[4], 10, 32)
	if err := errors.Join(err1, err2, err3); err != nil {
		return r, fmt.Errorf("line %q: %w", line, err)
	}
	r.Family, r.Protocol, r.Timeout = uint8(fam), uint8(proto), time.Duration(tmo)*time.Second
	tuple, srcs, afterUse := &r.Original, 0, false
	var icmpType, icmpCode [2]uint64
	for _, tok := range f[5:] {
		if strings.HasPrefix(tok, "[") {
			r.Flags = append(r.Flags, strings.Trim(tok, "[]"))
			continue
		}
		k, v, ok := strings.Cut(tok, "=")
		if !ok {
			r.State = tok
			continue
		}
		var err error
		switch k {
		case "src":
			if srcs++; srcs == 2 {
				tuple = &r.Reply
			}
			tuple.Src, err = netip.ParseAddr(v)
		case "dst":
			tuple.Dst, err = netip.ParseAddr(v)
		case "sport":
			tuple.SrcPort, err = parseU16(v)
		case "dport":
			tuple.DstPort, err = parseU16(v)
		case "type":
			icmpType[srcs-1], err = strconv.ParseUint(v, 10, 8)
		case "code":
			icmpCode[srcs-1], err = strconv.ParseUint(v, 10, 8)
		case "id":
			if afterUse {
				var id uint64
				id, err = strconv.ParseUint(v, 10, 32)
				r.ID = uint32(id)
			} else {
				tuple.SrcPort, err = parseU16(v)
			}
		case "mark":
			var m uint64
			m, err = strconv.ParseUint(v, 10, 32)
			r.Mark = uint32(m)
		case "zone":
			r.Zone, err = parseU16(v)
		case "use":
			afterUse = true
		}
		if err != nil {
			return r, fmt.Errorf("line %q: %s: %w", line, tok, err)
		}
	}
	if r.Protocol == unix.IPPROTO_ICMP || r.Protocol == unix.IPPROTO_ICMPV6 {
		r.Original.DstPort = uint16(icmpType[0]<<8 | icmpCode[0])
		r.Reply.DstPort = uint16(icmpType[1]<<8 | icmpCode[1])
	}
	return r, nil
}

func parseU16(s string) (uint16, error) {
	v, err := strconv.ParseUint(s, 10, 16)
	return uint16(v), err
}

// ctCount is conntrack -C in n.
func (n *labNS) ctCount() uint64 {
	n.t.Helper()
	s := strings.TrimSpace(n.mustExec("conntrack", "-C"))
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		n.t.Fatalf("netns %q: conntrack -C: %q: %v", n.Name, s, err)
	}
	return v
}

// ctStats is conntrack -S in n, every counter summed over CPUs.
func (n *labNS) ctStats() map[string]uint64 {
	n.t.Helper()
	sum := map[string]uint64{}
	for _, tok := range strings.Fields(n.mustExec("conntrack", "-S")) {
		k, v, ok := strings.Cut(tok, "=")
		if !ok || k == "cpu" {
			continue
		}
		x, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			n.t.Fatalf("netns %q: conntrack -S: %q: %v", n.Name, tok, err)
		}
		sum[k] += x
	}
	return sum
}

// procStats reads /proc/net/stat/nf_conntrack in n: every column summed
// over the CPU rows, except "entries", which every row repeats.
func (n *labNS) procStats() map[string]uint64 {
	n.t.Helper()
	lines := strings.Split(strings.TrimSpace(n.mustExec("cat", "/proc/net/stat/nf_conntrack")), "\n")
	head := strings.Fields(lines[0])
	sum := map[string]uint64{}
	for i, line := range lines[1:] {
		for j, f := range strings.Fields(line) {
			v, err := strconv.ParseUint(f, 16, 64)
			if err != nil || j >= len(head) {
				n.t.Fatalf("netns %q: /proc/net/stat/nf_conntrack: %q", n.Name, line)
			}
			if head[j] == "entries" && i > 0 {
				continue
			}
			sum[head[j]] += v
		}
	}
	return sum
}

// ctInsert runs conntrack -I with args in n.
func (n *labNS) ctInsert(args ...string) error {
	_, err := n.exec(append([]string{"conntrack", "-I"}, args...)...)
	return err
}

// ctDelete runs conntrack -D with args in n.
func (n *labNS) ctDelete(args ...string) error {
	_, err := n.exec(append([]string{"conntrack", "-D"}, args...)...)
	return err
}

// ctFlush flushes n's table (never use it on the root namespace).
func (n *labNS) ctFlush() {
	n.t.Helper()
	if n.Name == "" {
		n.t.Fatal("ctFlush on the shared root namespace")
	}
	n.mustExec("conntrack", "-F")
}

// ctLoad runs many conntrack commands (one per line, e.g. "-I -s ...") in
// one process (conntrack -R).
func (n *labNS) ctLoad(lines []string) {
	n.t.Helper()
	f, err := os.CreateTemp("", "ctlab-*.txt")
	if err != nil {
		n.t.Fatal(err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(strings.Join(lines, "\n") + "\n")
	if err := errors.Join(err, f.Close()); err != nil {
		n.t.Fatal(err)
	}
	n.mustExec("conntrack", "-R", f.Name())
}

// ctInsertArgs returns conntrack -I arguments for an entry of proto
// ("tcp", "udp", "icmp", "icmpv6") from src to dst with a timeout of 600 s;
// ICMP uses the port of src as echo id. extra is appended (e.g. "-u",
// "ASSURED").
func ctInsertArgs(proto string, src, dst netip.AddrPort, extra ...string) []string {
	a := []string{"-s", src.Addr().String(), "-d", dst.Addr().String(), "-p", proto, "-t", "600"}
	switch proto {
	case "icmp":
		a = append(a, "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", strconv.Itoa(int(src.Port())))
	case "icmpv6":
		a = append(a, "--icmpv6-type", "128", "--icmpv6-code", "0", "--icmpv6-id", strconv.Itoa(int(src.Port())))
	case "tcp":
		a = append(a, "--sport", strconv.Itoa(int(src.Port())), "--dport", strconv.Itoa(int(dst.Port())), "--state", "ESTABLISHED")
	default:
		a = append(a, "--sport", strconv.Itoa(int(src.Port())), "--dport", strconv.Itoa(int(dst.Port())))
	}
	return append(a, extra...)
}

// setConntrackMax sets the global net.netfilter.nf_conntrack_max and
// restores the previous value in t.Cleanup (and when the returned func
// is called, whichever comes first).
func setConntrackMax(t testing.TB, v uint64) (restore func()) {
	t.Helper()
	const path = "/proc/sys/net/netfilter/nf_conntrack_max"
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	restore = func() {
		once.Do(func() {
			if err := os.WriteFile(path, old, 0o644); err != nil {
				t.Errorf("restore %s to %s: %v", path, strings.TrimSpace(string(old)), err)
			}
		})
	}
	t.Cleanup(restore)
	if err := os.WriteFile(path, []byte(strconv.FormatUint(v, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	return restore
}
