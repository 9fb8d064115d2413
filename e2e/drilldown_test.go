package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ctagent/ctagent/internal/labnet"
)

// drillDownLab is a namespace with real connections to two destinations in
// another one over a veth pair: three TCP connections to B:8080 (kept
// open, ESTABLISHED) and two UDP exchanges with B:5353.
type drillDownLab struct {
	client, server *labnet.NS
	dst            netip.Addr // the server's address
}

func newDrillDownLab(t *testing.T) *drillDownLab {
	t.Helper()
	client, server := addNetns(t), addNetns(t)
	l := labnet.Connect(t, client, server)
	server.ServeTCP(8080)
	server.ServeUDP(5353)
	for range 3 {
		client.DialTCP(netip.AddrPortFrom(l.B4, 8080))
	}
	for range 2 {
		client.UDPRoundTrip(netip.AddrPortFrom(l.B4, 5353))
	}
	return &drillDownLab{client: client, server: server, dst: l.B4}
}

// The drill-down of a namespace (GET /api/v1/namespaces/{netns}/top and
// ctagent top --once --netns) counts its real connections by destination
// and by state, as conntrack -L shows them.
func TestNamespaceDrillDown(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip", "iproute2")
	requireTool(t, "conntrack", "conntrack")
	labnet.RemoveStale(t)
	lab := newDrillDownLab(t)
	ns := lab.client
	// The ground truth: conntrack -L in the namespace.
	truth := map[string]int{}
	states := map[string]int{}
	for _, r := range ns.CTList() {
		truth[fmt.Sprintf("%d %s %d", r.Protocol, r.Original.Dst, r.Original.DstPort)]++
		if r.Protocol == 6 {
			states[r.State]++
		}
	}
	tcpKey, udpKey := fmt.Sprintf("6 %s 8080", lab.dst), fmt.Sprintf("17 %s 5353", lab.dst)
	if truth[tcpKey] != 3 || truth[udpKey] != 2 || states["ESTABLISHED"] != 3 {
		t.Fatalf("conntrack -L in %s: %v, states %v; want 3 TCP ESTABLISHED to %s and 2 UDP to %s", ns.Name, truth, states, tcpKey, udpKey)
	}

	d := startDaemon(t, "--tracer.backend=netlink", "--netns.rescan-interval=1s")
	d.waitReady(30 * time.Second)
	server := "http://" + d.addr

	t.Run("api", func(t *testing.T) {
		var r struct {
			NetNS        uint32 `json:"netns"`
			NetNSName    string `json:"netns_name"`
			Dumped       int64  `json:"dumped"`
			Destinations []struct {
				Family, Protocol, Dst string
				Port                  uint16 `json:"dport"`
				Entries               int64
			} `json:"destinations"`
			OtherDestinations int `json:"other_destinations"`
			States            []struct {
				Protocol, State string
				Entries         int64
			} `json:"states"`
		}
		code, body, err := d.get(fmt.Sprintf("/api/v1/namespaces/%s/top?limit=1", ns.Name))
		if err != nil || code != 200 {
			t.Fatalf("status %d, %v: %s", code, err, body)
		}
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatal(err)
		}
		t.Logf("GET /api/v1/namespaces/%s/top?limit=1:\n%s", ns.Name, body)
		if r.NetNS != ns.Inode || r.NetNSName != ns.Name || r.Dumped != int64(count(ns)) {
			t.Errorf("netns %d %q, dumped %d; want %d %q, conntrack -C %d", r.NetNS, r.NetNSName, r.Dumped, ns.Inode, ns.Name, count(ns))
		}
		if len(r.Destinations) != 1 || r.OtherDestinations != len(truth)-1 {
			t.Fatalf("limit=1: %d destinations and %d others, want 1 and %d", len(r.Destinations), r.OtherDestinations, len(truth)-1)
		}
		if d := r.Destinations[0]; d.Protocol != "tcp" || d.Dst != lab.dst.String() || d.Port != 8080 || d.Entries != 3 || d.Family != "ipv4" {
			t.Errorf("top destination %+v, want tcp %s:8080 with 3 entries", d, lab.dst)
		}
		if len(r.States) == 0 || r.States[0].Protocol != "tcp" || r.States[0].State != "ESTABLISHED" || r.States[0].Entries != 3 {
			t.Errorf("states %+v, want tcp ESTABLISHED 3 first", r.States)
		}
		var udp int64
		for _, s := range r.States {
			if s.Protocol == "udp" {
				udp += s.Entries
			}
		}
		if udp != 2 {
			t.Errorf("states %+v: %d UDP entries, want 2", r.States, udp)
		}
		// The kernel's drop counters of the namespace, in the table too.
		type nsDrops struct {
			NetNS uint32  `json:"netns"`
			Drops *uint64 `json:"drops_total"`
		}
		var nss struct {
			Namespaces []nsDrops `json:"namespaces"`
		}
		code, body, err = d.get("/api/v1/namespaces")
		if err != nil || code != 200 || json.Unmarshal([]byte(body), &nss) != nil {
			t.Fatalf("/api/v1/namespaces: %d %v %s", code, err, body)
		}
		st := ns.CTStats()
		i := slices.IndexFunc(nss.Namespaces, func(n nsDrops) bool { return n.NetNS == ns.Inode })
		if i < 0 || nss.Namespaces[i].Drops == nil || *nss.Namespaces[i].Drops != st["drop"]+st["early_drop"] {
			t.Errorf("/api/v1/namespaces: %s not there or drops_total not conntrack -S drop+early_drop (%d): %s", ns.Name, st["drop"]+st["early_drop"], body)
		}
		for _, bad := range []string{"/api/v1/namespaces/nosuchns/top", "/api/v1/namespaces/" + ns.Name + "/top?limit=0"} {
			if code, body, _ := d.get(bad); code != 404 && code != 400 {
				t.Errorf("%s: status %d %s, want 404 or 400", bad, code, body)
			}
		}
	})

	t.Run("top --once --netns", func(t *testing.T) {
		r := runCLI(t, 30*time.Second, "top", "--once", "--server", server, "--netns", fmt.Sprint(ns.Inode))
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		t.Logf("ctagent top --once --netns %d:\n%s", ns.Inode, r.stdout)
		lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
		want := []string{
			fmt.Sprintf("netns %d %s: %d entries", ns.Inode, ns.Name, count(ns)),
			"DESTINATION                             PROTO     PORT   ENTRIES  SHARE",
			fmt.Sprintf("%-39s tcp       8080         3  %4.1f%%", lab.dst, 300/float64(count(ns))),
			fmt.Sprintf("%-39s udp       5353         2  %4.1f%%", lab.dst, 200/float64(count(ns))),
		}
		if len(lines) < len(want) {
			t.Fatalf("output too short:\n%s", r.stdout)
		}
		for i, w := range want {
			if !strings.HasPrefix(lines[i], w) {
				t.Errorf("line %d: %q, want %q", i, lines[i], w)
			}
		}
		if !strings.Contains(r.stdout, "\ntcp      ESTABLISHED           3 ") {
			t.Errorf("no tcp ESTABLISHED 3 line:\n%s", r.stdout)
		}
		for _, l := range lines {
			if len([]rune(l)) > 80 {
				t.Errorf("wider than 80 columns: %q", l)
			}
		}
		if r := runCLI(t, 30*time.Second, "top", "--once", "--server", server, "--netns", "nosuchns"); r.code != 1 || !strings.Contains(r.stderr, `no network namespace "nosuchns"`) {
			t.Errorf("unknown namespace: exit %d, %s", r.code, r.stderr)
		}
	})
}
