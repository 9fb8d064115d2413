package workload

import (
	"net"
	"testing"

	"github.com/ctagent/ctagent/internal/labnet"
)

// LabTargets makes n targets for tests and benchmarks with labnet: each a
// namespace with a conntrack rule, a veth to a peer namespace of its own
// (no rule, no listener: the peer answers with ICMP errors, which
// conntrack relates to the entry), and a UDP socket on its end. It
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
		targets = append(targets, Target{Path: a.Path, Inode: a.Inode, Conn: conn, Dst: link.B4})
		spaces = append(spaces, a)
	}
	return targets, spaces
}
