package labnet

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// IOTimeout bounds every read and write of the traffic helpers.
const IOTimeout = 3 * time.Second

// Link is a veth pair between two namespaces, with one IPv4 and one IPv6
// address on each end: 10.X.Y.1|2/24 and fd00:1ab:X:Y::1|2/64 (A is .1).
type Link struct {
	A, B     *NS
	AIf, BIf string
	A4, B4   netip.Addr
	A6, B6   netip.Addr
}

var subnet atomic.Uint32

// Connect links a and b (either may be Root) with a veth pair, adds the
// addresses (IPv6 without duplicate address detection) and brings both
// ends up. The pair goes with its namespaces, or in t.Cleanup.
func Connect(t testing.TB, a, b *NS) *Link {
	t.Helper()
	s := subnet.Add(1)
	x, y := byte(150+os.Getpid()%100), byte(s)
	l := &Link{A: a, B: b, AIf: Name("va"), BIf: Name("vb")}
	l.A4 = netip.AddrFrom4([4]byte{10, x, y, 1})
	l.B4 = netip.AddrFrom4([4]byte{10, x, y, 2})
	l.A6 = netip.MustParseAddr(fmt.Sprintf("fd00:1ab:%x:%x::1", x, y))
	l.B6 = netip.MustParseAddr(fmt.Sprintf("fd00:1ab:%x:%x::2", x, y))
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
	// Deleting one end deletes both; gone already if a namespace went.
	t.Cleanup(func() { _, _ = a.Exec("ip", "link", "del", l.AIf) })
	for _, e := range []struct {
		n      *NS
		ifn    string
		v4, v6 netip.Addr
	}{{a, l.AIf, l.A4, l.A6}, {b, l.BIf, l.B4, l.B6}} {
		e.n.MustExec("ip", "addr", "add", e.v4.String()+"/24", "dev", e.ifn)
		e.n.MustExec("ip", "addr", "add", e.v6.String()+"/64", "dev", e.ifn, "nodad")
		e.n.MustExec("ip", "link", "set", e.ifn, "up")
	}
	return l
}

// listen opens a TCP listener or a UDP socket on port, IPv4 and IPv6, in
// n; it is closed in t.Cleanup.
func (n *NS) listen(network string, port uint16) io.Closer {
	n.t.Helper()
	var c io.Closer
	addr := fmt.Sprintf(":%d", port)
	if err := n.Do(func() error {
		if network == "tcp" {
			ln, err := net.Listen(network, addr)
			c = ln
			return err
		}
		pc, err := net.ListenPacket(network, addr)
		c = pc
		return err
	}); err != nil {
		n.t.Fatalf("netns %q: listen %s %d: %v", n.Name, network, port, err)
	}
	n.t.Cleanup(func() { c.Close() })
	return c
}

// ServeTCP starts a TCP echo server on port, IPv4 and IPv6, in n; it stops
// in t.Cleanup.
func (n *NS) ServeTCP(port uint16) {
	n.t.Helper()
	ln := n.listen("tcp", port).(net.Listener)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// A plain loop: io.Copy would splice through pooled
				// pipes that stay open and look like leaked descriptors
				// to tests that check for those.
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

// ServeUDP starts a UDP echo server on port, IPv4 and IPv6, in n; it stops
// in t.Cleanup.
func (n *NS) ServeUDP(port uint16) {
	n.t.Helper()
	pc := n.listen("udp", port).(net.PacketConn)
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

// dial connects from n to dst over network ("tcp" or "udp").
func (n *NS) dial(network string, dst netip.AddrPort) net.Conn {
	n.t.Helper()
	var c net.Conn
	if err := n.Do(func() (err error) {
		d := net.Dialer{Timeout: IOTimeout}
		c, err = d.Dial(network, dst.String())
		return err
	}); err != nil {
		n.t.Fatalf("netns %q: dial %s %s: %v", n.Name, network, dst, err)
	}
	return c
}

// DialTCP connects from n to dst, exchanges one message with an echo
// server, and returns the open connection: its conntrack entry stays
// ESTABLISHED until the connection closes. It is closed in t.Cleanup.
func (n *NS) DialTCP(dst netip.AddrPort) net.Conn {
	n.t.Helper()
	c := n.dial("tcp", dst)
	n.t.Cleanup(func() { c.Close() })
	n.echo(c)
	return c
}

// TCPRoundTrip connects from n to dst, exchanges one message with an echo
// server and closes; the entry goes on in TIME_WAIT or CLOSE. It returns
// the local address used.
func (n *NS) TCPRoundTrip(dst netip.AddrPort) netip.AddrPort {
	n.t.Helper()
	return n.roundTrip("tcp", dst)
}

// UDPRoundTrip sends one datagram from n to dst and reads the echo; it
// returns the local address used.
func (n *NS) UDPRoundTrip(dst netip.AddrPort) netip.AddrPort {
	n.t.Helper()
	return n.roundTrip("udp", dst)
}

func (n *NS) roundTrip(network string, dst netip.AddrPort) netip.AddrPort {
	n.t.Helper()
	c := n.dial(network, dst)
	defer c.Close()
	n.echo(c)
	return netip.MustParseAddrPort(c.LocalAddr().String())
}

// UDPSend sends one datagram from n to dst and reads nothing: with no
// server, the entry stays UNREPLIED (an ICMP port unreachable does not
// count as a reply).
func (n *NS) UDPSend(dst netip.AddrPort) {
	n.t.Helper()
	c := n.dial("udp", dst)
	defer c.Close()
	if _, err := c.Write([]byte("labnet")); err != nil {
		n.t.Fatalf("netns %q: send udp %s: %v", n.Name, dst, err)
	}
}

func (n *NS) echo(c net.Conn) {
	n.t.Helper()
	msg := []byte("labnet echo\n")
	_ = c.SetDeadline(time.Now().Add(IOTimeout))
	if _, err := c.Write(msg); err != nil {
		n.t.Fatalf("netns %q: write %s: %v", n.Name, c.RemoteAddr(), err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		n.t.Fatalf("netns %q: echo from %s: %v", n.Name, c.RemoteAddr(), err)
	}
	_ = c.SetDeadline(time.Time{})
}

// Ping sends one ICMP or ICMPv6 echo request with id from n to dst over a
// raw socket and waits for the reply.
func (n *NS) Ping(dst netip.Addr, id uint16) {
	n.t.Helper()
	network, reqType, repType := "ip4:icmp", byte(8), byte(0)
	if dst.Is6() {
		network, reqType, repType = "ip6:ipv6-icmp", 128, 129
	}
	var c net.PacketConn
	if err := n.Do(func() (err error) {
		c, err = net.ListenPacket(network, "")
		return err
	}); err != nil {
		n.t.Fatalf("netns %q: %s socket: %v", n.Name, network, err)
	}
	defer c.Close()
	msg := make([]byte, 16)
	msg[0] = reqType
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], 1)
	copy(msg[8:], "labnet!!")
	if dst.Is4() { // the kernel computes ICMPv6 checksums
		binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	}
	_ = c.SetDeadline(time.Now().Add(IOTimeout))
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

// SendRawTCP sends one bare IPv4 TCP segment with flags (e.g. 0x01, a FIN)
// from src to dst over a raw socket in n, and waits for nothing. A lone FIN
// or RST with no connection is what conntrack counts as "invalid".
func (n *NS) SendRawTCP(src, dst netip.AddrPort, flags uint8) {
	n.t.Helper()
	seg := tcpSegment(src, dst, flags)
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

// tcpSegment is a bare IPv4 TCP header from src to dst with flags,
// sequence number 12345, window 1024 and its checksum.
func tcpSegment(src, dst netip.AddrPort, flags uint8) []byte {
	seg := make([]byte, 20)
	binary.BigEndian.PutUint16(seg[0:], src.Port())
	binary.BigEndian.PutUint16(seg[2:], dst.Port())
	binary.BigEndian.PutUint32(seg[4:], 12345)
	seg[12] = 5 << 4 // data offset
	seg[13] = flags
	binary.BigEndian.PutUint16(seg[14:], 1024)
	pseudo := slices.Concat(src.Addr().AsSlice(), dst.Addr().AsSlice(), []byte{0, unix.IPPROTO_TCP, 0, 20}, seg)
	binary.BigEndian.PutUint16(seg[16:], checksum(pseudo))
	return seg
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
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
