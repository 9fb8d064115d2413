package e2e

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/ctagent/ctagent/internal/labnet"
)

// The namespaces of the e2e tests come from internal/labnet; these are the
// few things they do alike.

// addNetns creates a named network namespace with loopback up and
// conntrack enabled (its hooks only run in a namespace where something
// needs them); it is deleted in t.Cleanup.
func addNetns(t *testing.T) *labnet.NS {
	t.Helper()
	ns := labnet.New(t)
	ns.EnableConntrack()
	return ns
}

// The test entries go from 192.0.2.1:sport to 192.0.2.2:80.
var entrySrc, entryDst = netip.MustParseAddr("192.0.2.1"), netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), 80)

// insert adds a conntrack entry over ctnetlink (conntrack -I); the entry is
// ASSURED with a 10 minute timeout so it stays until the test deletes it.
func insert(t *testing.T, ns *labnet.NS, proto string, sport int) {
	t.Helper()
	if err := ns.CTInsert(labnet.InsertArgs(proto, netip.AddrPortFrom(entrySrc, uint16(sport)), entryDst, "-u", "ASSURED")...); err != nil {
		t.Fatal(err)
	}
}

// deleteEntry removes the entry insert made.
func deleteEntry(t *testing.T, ns *labnet.NS, proto string, sport int) {
	t.Helper()
	if err := ns.CTDelete("-p", proto, "-s", entrySrc.String(), "-d", entryDst.Addr().String(),
		"--sport", strconv.Itoa(sport), "--dport", strconv.Itoa(int(entryDst.Port()))); err != nil {
		t.Fatal(err)
	}
}

// count is the ground truth: conntrack -C in the namespace.
func count(ns *labnet.NS) int { return int(ns.CTCount()) }

// tcpConnect makes a real TCP connection over loopback inside the
// namespace, to an echo server there; both stay open until t.Cleanup.
func tcpConnect(ns *labnet.NS) {
	const port = 8080
	ns.ServeTCP(port)
	ns.DialTCP(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
}
