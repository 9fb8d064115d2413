package labnet

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestParseRecord parses lines as conntrack v1.4.7 -L -o extended,id prints
// them.
func TestParseRecord(t *testing.T) {
	a4, b4 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	a6, b6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	for _, c := range []struct {
		line string
		want Record
	}{
		{"ipv4     2 tcp      6 599 ESTABLISHED src=192.0.2.1 dst=192.0.2.2 sport=1000 dport=80 [UNREPLIED] src=192.0.2.2 dst=192.0.2.1 sport=8080 dport=1000 [ASSURED] mark=7 zone=5 use=1 id=1852807495",
			Record{Family: 2, Protocol: 6, Original: Tuple{a4, b4, 1000, 80}, Reply: Tuple{b4, a4, 8080, 1000}, Timeout: 599 * time.Second,
				State: "ESTABLISHED", Flags: []string{"UNREPLIED", "ASSURED"}, Mark: 7, Zone: 5, ID: 1852807495}},
		{"ipv4     2 udp      17 29 src=192.0.2.1 dst=192.0.2.2 sport=5 dport=53 [UNREPLIED] src=192.0.2.2 dst=192.0.2.1 sport=53 dport=5 mark=4294967295 zone=65535 use=1 id=1243733063",
			Record{Family: 2, Protocol: 17, Original: Tuple{a4, b4, 5, 53}, Reply: Tuple{b4, a4, 53, 5}, Timeout: 29 * time.Second,
				Flags: []string{"UNREPLIED"}, Mark: 4294967295, Zone: 65535, ID: 1243733063}},
		{"ipv4     2 icmp     1 599 src=192.0.2.1 dst=192.0.2.2 type=8 code=0 id=4242 [UNREPLIED] src=192.0.2.2 dst=192.0.2.1 type=0 code=0 id=4242 mark=0 use=1 id=2151079265",
			Record{Family: 2, Protocol: 1, Original: Tuple{a4, b4, 4242, 8 << 8}, Reply: Tuple{b4, a4, 4242, 0}, Timeout: 599 * time.Second,
				Flags: []string{"UNREPLIED"}, ID: 2151079265}},
		{"ipv6     10 icmpv6   58 599 src=2001:db8::1 dst=2001:db8::2 type=128 code=0 id=7 src=2001:db8::2 dst=2001:db8::1 type=129 code=0 id=7 mark=0 use=1 id=2601293456",
			Record{Family: 10, Protocol: 58, Original: Tuple{a6, b6, 7, 128 << 8}, Reply: Tuple{b6, a6, 7, 129 << 8}, Timeout: 599 * time.Second,
				ID: 2601293456}},
	} {
		got, err := ParseRecord(c.line)
		if err != nil {
			t.Errorf("%q: %v", c.line, err)
			continue
		}
		c.want.Line = c.line
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", c.line, got, c.want)
		}
	}
	if r, _ := ParseRecord("ipv4 2 tcp 6 10 ESTABLISHED src=192.0.2.1 dst=192.0.2.2 sport=1 dport=2 src=192.0.2.2 dst=192.0.2.1 sport=2 dport=1 [ASSURED] mark=0 use=1 id=9"); !r.Has("ASSURED") || r.Has("UNREPLIED") {
		t.Errorf("Has: flags %v", r.Flags)
	}
	for _, bad := range []string{
		"", "ipv4 2 tcp 6", "ipv4 x tcp 6 10", "ipv4 2 tcp 6 -1",
		"ipv4 2 icmp 1 10 type=8 src=192.0.2.1",
		"ipv4 2 udp 17 10 src=192.0.2.1 dst=192.0.2.2 sport=1 dport=2 src=192.0.2.2 dst=192.0.2.1 sport=2 dport=1 src=192.0.2.3",
		"ipv4 2 udp 17 10 src=192.0.2.300 dst=192.0.2.2",
		"ipv4 2 udp 17 10 src=192.0.2.1 dst=192.0.2.2 sport=70000 dport=2",
		"ipv4 2 udp 17 10 src=192.0.2.1 dst=192.0.2.2 sport=1 dport=2 use=1 id=x",
	} {
		if r, err := ParseRecord(bad); err == nil {
			t.Errorf("%q accepted: %+v", bad, r)
		}
	}
}

// TestInsertArgs pins the conntrack -I arguments; the first six select the
// entry for conntrack -D.
func TestInsertArgs(t *testing.T) {
	src, dst := netip.MustParseAddrPort("192.0.2.1:7"), netip.MustParseAddrPort("192.0.2.2:53")
	for proto, want := range map[string][]string{
		"udp":    {"-s", "192.0.2.1", "-d", "192.0.2.2", "-p", "udp", "-t", "600", "--sport", "7", "--dport", "53", "-u", "ASSURED"},
		"tcp":    {"-s", "192.0.2.1", "-d", "192.0.2.2", "-p", "tcp", "-t", "600", "--sport", "7", "--dport", "53", "--state", "ESTABLISHED", "-u", "ASSURED"},
		"icmp":   {"-s", "192.0.2.1", "-d", "192.0.2.2", "-p", "icmp", "-t", "600", "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", "7", "-u", "ASSURED"},
		"icmpv6": {"-s", "192.0.2.1", "-d", "192.0.2.2", "-p", "icmpv6", "-t", "600", "--icmpv6-type", "128", "--icmpv6-code", "0", "--icmpv6-id", "7", "-u", "ASSURED"},
	} {
		if got := InsertArgs(proto, src, dst, "-u", "ASSURED"); !slices.Equal(got, want) {
			t.Errorf("%s: %q, want %q", proto, got, want)
		}
	}
}

// TestChecksum: the example of RFC 1071 section 3, and an odd length.
func TestChecksum(t *testing.T) {
	if got := checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); got != ^uint16(0xddf2) {
		t.Errorf("checksum = %#04x, want %#04x", got, ^uint16(0xddf2))
	}
	if got := checksum([]byte{0xff}); got != ^uint16(0xff00) {
		t.Errorf("odd length: %#04x", got)
	}
}

// TestSysctl: a net.* sysctl set in a namespace is that namespace's own.
func TestSysctl(t *testing.T) {
	Require(t, "ip", "cat")
	const name, path = "net.netfilter.nf_conntrack_udp_timeout", "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"
	root := Root(t)
	before := root.MustExec("cat", path)
	n := New(t)
	n.Sysctl(name, "599")
	if got := strings.TrimSpace(n.MustExec("cat", path)); got != "599" {
		t.Errorf("%s in %s = %q, want 599", name, n.Name, got)
	}
	if got := root.MustExec("cat", path); got != before {
		t.Errorf("%s in the root namespace changed: %q, was %q", name, got, before)
	}
}
