package workload

import (
	"net"
	"net/netip"
	"testing"

	"github.com/ctagent/ctagent/internal/labnet"
)

// labTCPPort is the port of the peers' TCP servers.
const labTCPPort = 7

// LabTargets makes n targets for tests and benchmarks with labnet: each a
// namespace with a conntrack rule, a veth to a peer namespace of its own
// (no rule; no UDP listener: the peer answers datagrams with ICMP errors,
// which conntrack relates to the entry; a TCP echo server on labTCPPort),
// a UDP socket on its end and a TCP dialer into the peer's server. It
// returns the targets and their namespaces; everything goes in
// t.Cleanup. It needs root and the ip and nft tools (labnet.Require).
func LabTargets(t testing.TB, n int) ([]Target, []*labnet.NS) {
	t.Helper()
	var targets []Target
	var spaces []*labnet.NS
	for range n {
		a, b := labnet.New(t), labnet.New(t)
		link := labnet.Connect(t, a, b)
		a.EnableConntrack()
		var conn net.PacketConn
		if err := a.Do(func() (err error) {
			conn, err = net.ListenPacket("udp4", link.A4.String()+":0")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		b.ServeTCP(labTCPPort)
		dst := netip.AddrPortFrom(link.B4, labTCPPort).String()
		dial := func() (c *net.TCPConn, err error) {
			err = a.Do(func() error {
				nc, err := net.DialTimeout("tcp4", dst, labnet.IOTimeout)
				if err == nil {
					c = nc.(*net.TCPConn)
				}
				return err
			})
			return c, err
		}
		targets = append(targets, Target{Path: a.Path, Inode: a.Inode, Conn: conn, Dst: link.B4, DialTCP: dial})
		spaces = append(spaces, a)
	}
	return targets, spaces
}
