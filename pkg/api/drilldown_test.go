package api

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/tracer"
)

// The drill-down counter: destinations by original destination, port and
// protocol (ICMP without the type and code in its port), states by
// protocol, the limit, and the bound on distinct destinations.
func TestTopCounter(t *testing.T) {
	c := newTopCounter()
	for i := range 5 {
		c.add(tcpEntry(uint16(i), 3, 1<<1|1<<2)) // 10.0.0.2:80 ESTABLISHED
	}
	c.add(tcpEntry(9, 1, 0)) // SYN_SENT
	icmp := tracer.Entry{Family: unix.AF_INET, Protocol: unix.IPPROTO_ICMP,
		Original: tracer.Tuple{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.3"), SrcPort: 7, DstPort: 8 << 8}}
	c.add(icmp)
	icmp.Original.SrcPort, icmp.Status = 8, 1<<1 // another id, replied
	c.add(icmp)
	udp := tcpEntry(1, 0, 1<<1|1<<2)
	udp.Protocol, udp.Original.DstPort = unix.IPPROTO_UDP, 53
	c.add(udp)

	var r NamespaceTopResponse
	c.result(&r, 2)
	got := fmt.Sprint(r.Destinations)
	if want := "[{ipv4 tcp 10.0.0.2 80 6} {ipv4 icmp 10.0.0.3 0 2}]"; got != want || r.Dumped != 9 || r.OtherDestinations != 1 || r.OtherEntries != 1 {
		t.Errorf("destinations %s (others %d, %d entries, dumped %d), want %s, 1 other with 1 entry, 9", got, r.OtherDestinations, r.OtherEntries, r.Dumped, want)
	}
	if got, want := fmt.Sprint(r.States), "[{tcp ESTABLISHED 5} {icmp REPLIED 1} {icmp UNREPLIED 1} {tcp SYN_SENT 1} {udp ASSURED 1}]"; got != want {
		t.Errorf("states %s, want %s", got, want)
	}
	for _, l := range FormatNamespaceTop(&r) {
		if len([]rune(l)) > 80 {
			t.Errorf("wider than 80: %q", l)
		}
	}
	if s := strings.Join(FormatNamespaceTop(&r), "\n"); !strings.Contains(s, "(1 more destinations: 1 entries)") ||
		!strings.Contains(s, "10.0.0.3                                icmp         -         2  22.2%") {
		t.Errorf("text:\n%s", s)
	}

	// More distinct destinations than the bound: the rest is counted, not
	// listed, and said.
	c = newTopCounter()
	e := tcpEntry(1, 3, 0)
	for i := range maxTopKeys + 3 {
		e.Original.DstPort = uint16(i)
		e.Original.Dst = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		c.add(e)
	}
	r = NamespaceTopResponse{}
	c.result(&r, 1)
	if !r.Truncated || r.OtherEntries != maxTopKeys+2 || r.OtherDestinations != maxTopKeys-1 || r.Dumped != maxTopKeys+3 {
		t.Errorf("bounded: truncated %v, other %d entries of %d destinations, dumped %d", r.Truncated, r.OtherEntries, r.OtherDestinations, r.Dumped)
	}
}
