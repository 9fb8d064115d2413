package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/eventjson"
	"github.com/ctagent/ctagent/pkg/metrics"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

func tcpEntry(sport uint16, state uint8, status uint32) tracer.Entry {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	return tracer.Entry{ID: 7, Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, TCPState: state, Status: status,
		Original: tracer.Tuple{Src: a, Dst: b, SrcPort: sport, DstPort: 80},
		Reply:    tracer.Tuple{Src: b, Dst: a, SrcPort: 80, DstPort: sport}, Timeout: 599 * time.Second}
}

func TestFilter(t *testing.T) {
	est := tcpEntry(1, 3, 1<<1|1<<2) // ESTABLISHED, SEEN_REPLY|ASSURED
	syn := tcpEntry(2, 1, 0)         // SYN_SENT, unreplied
	udp := est
	udp.Protocol = unix.IPPROTO_UDP
	id := netns.Identity{Name: "blue", Pod: "web-0", PodNamespace: "shop"}
	for _, tc := range []struct {
		query string
		ns    bool
		match []bool // est, syn, udp
	}{
		{"", true, []bool{true, true, true}},
		{"netns=blue", true, []bool{true, true, true}},
		{"netns=42", true, []bool{true, true, true}},
		{"netns=red", false, nil},
		{"pod=web-0", true, nil},
		{"pod=shop/web-0", true, nil},
		{"pod=other/web-0", false, nil},
		{"proto=udp", true, []bool{false, false, true}},
		{"proto=TCP,17", true, []bool{true, true, true}},
		{"state=established", true, []bool{true, false, false}},
		{"unreplied=true", true, []bool{false, true, false}},
		{"proto=tcp&unreplied=1&state=SYN_SENT", true, []bool{false, true, false}},
	} {
		q, _ := url.ParseQuery(tc.query)
		f, err := ParseFilter(q)
		if err != nil {
			t.Errorf("%s: %v", tc.query, err)
			continue
		}
		if got := f.MatchNamespace(42, id); got != tc.ns {
			t.Errorf("%s: MatchNamespace %v", tc.query, got)
		}
		for i, e := range []tracer.Entry{est, syn, udp} {
			if tc.match != nil && f.MatchEntry(e) != tc.match[i] {
				t.Errorf("%s: entry %d: %v", tc.query, i, !tc.match[i])
			}
		}
		// Values round-trips.
		if g, err := ParseFilter(f.Values()); err != nil || g.Values().Encode() != f.Values().Encode() {
			t.Errorf("%s: round trip %v %v", tc.query, g, err)
		}
	}
	for _, bad := range []string{"proto=tcpx", "state=OPEN", "unreplied=maybe"} {
		q, _ := url.ParseQuery(bad)
		if _, err := ParseFilter(q); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestFormatEntry(t *testing.T) {
	e := eventjson.NewEntry(4026532000, tcpEntry(40000, 3, 1<<1|1<<2|1<<3),
		netns.Identity{Name: "blue", Comm: "my app", Pod: "web-0", PodNamespace: "shop", ContainerID: strings.Repeat("ab", 32)})
	want := "ipv4     2 tcp      6 599 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=40000 [ASSURED] mark=0 zone=0" +
		` netns=4026532000 netns_name=blue pod=shop/web-0 container=abababababab comm="my app"`
	if got := FormatEntry(e); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	icmp := tracer.Entry{Family: unix.AF_INET, Protocol: unix.IPPROTO_ICMP, Timeout: 29 * time.Second,
		Original: tracer.Tuple{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), SrcPort: 9, DstPort: 8 << 8}}
	want = "ipv4     2 icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=9 [UNREPLIED] mark=0 zone=0 netns=1"
	if got := FormatEntry(eventjson.NewEntry(1, icmp, netns.Identity{})); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// The events command's text lines: one per event, conntrack -E's order,
// then lifetime or failure reason, then the owner as list writes it.
func TestFormatEvent(t *testing.T) {
	v4 := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	tcp := tracer.Event{Type: tracer.EventCreated, NetNS: 4026532000, Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP,
		Original: tracer.Tuple{Src: v4("10.0.0.1"), Dst: v4("10.0.0.2"), SrcPort: 40000, DstPort: 80},
		Reply:    tracer.Tuple{Src: v4("10.0.0.2"), Dst: v4("10.0.0.1"), SrcPort: 80, DstPort: 40000},
		TCPState: 1, Status: 1 << 3}
	destroyed := tcp
	destroyed.Type, destroyed.TCPState, destroyed.Status = tracer.EventDestroyed, 7, 1<<1|1<<2|1<<3
	destroyed.Lifetime, destroyed.LifetimeKnown, destroyed.Mark = 83456789*time.Microsecond, true, 5
	failed := tracer.Event{Type: tracer.EventFailed, NetNS: 1, Family: unix.AF_INET, Protocol: unix.IPPROTO_UDP,
		Original: tracer.Tuple{Src: v4("192.0.2.1"), Dst: v4("192.0.2.2"), SrcPort: 5353, DstPort: 53},
		Reason:   tracer.ReasonTableFull, Error: 0, Zone: 3}
	icmp6 := tracer.Event{Type: tracer.EventCreated, NetNS: 2, Family: unix.AF_INET6, Protocol: unix.IPPROTO_ICMPV6,
		Original: tracer.Tuple{Src: v4("fd00::1"), Dst: v4("fd00::2"), SrcPort: 7, DstPort: 128 << 8},
		Reply:    tracer.Tuple{Src: v4("fd00::2"), Dst: v4("fd00::1"), SrcPort: 7, DstPort: 129 << 8}}
	icmp := tracer.Event{Type: tracer.EventDestroyed, NetNS: 3, Family: unix.AF_INET, Protocol: unix.IPPROTO_ICMP,
		Original: tracer.Tuple{Src: v4("10.0.0.1"), Dst: v4("10.0.0.2"), SrcPort: 9, DstPort: 8 << 8},
		Reply:    tracer.Tuple{Src: v4("10.0.0.2"), Dst: v4("10.0.0.1"), SrcPort: 9, DstPort: 0},
		Status:   1 << 1, Lifetime: 400 * time.Microsecond, LifetimeKnown: true}
	pod := netns.Identity{Name: "blue", Comm: "my app", Pod: "web-0", PodNamespace: "shop", ContainerID: strings.Repeat("ab", 32)}
	for _, c := range []struct {
		ev   tracer.Event
		id   netns.Identity
		want string
	}{
		{tcp, pod, "    [NEW] tcp      6 SYN_SENT src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=80 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=80 dport=40000" +
			` netns=4026532000 netns_name=blue pod=shop/web-0 container=abababababab comm="my app"`},
		{destroyed, netns.Identity{Name: "blue"}, "[DESTROY] tcp      6 TIME_WAIT src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=40000 [ASSURED]" +
			" mark=5 lifetime=1m23.457s netns=4026532000 netns_name=blue"},
		{failed, netns.Identity{Host: true}, " [FAILED] udp      17 src=192.0.2.1 dst=192.0.2.2 sport=5353 dport=53 [UNREPLIED] zone=3 reason=table_full error=0 netns=1 host_netns=true"},
		{icmp6, netns.Identity{}, "    [NEW] icmpv6   58 src=fd00::1 dst=fd00::2 type=128 code=0 id=7 [UNREPLIED] src=fd00::2 dst=fd00::1 type=129 code=0 id=7 netns=2"},
		{icmp, netns.Identity{}, "[DESTROY] icmp     1 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=9 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=9 lifetime=400µs netns=3"},
	} {
		if got := FormatEvent(eventjson.New(c.ev, c.id)); got != c.want {
			t.Errorf("got\n%s\nwant\n%s", got, c.want)
		}
	}
}

func TestWriteTopFits80Columns(t *testing.T) {
	n, big, ratio := int64(12), int64(1<<40), 1.5
	r := &NamespacesResponse{Limit: 262144, Namespaces: []Namespace{
		{Owner: eventjson.Owner{NetNS: 4026531840, Host: true}, Listed: true, Entries: &n, Limit: 262144, Created: 3},
		{Owner: eventjson.Owner{NetNS: 4294967295, Pod: strings.Repeat("very-long-pod-name-", 4), PodNamespace: "kube-system"}, Listed: true,
			Entries: &big, FillRatio: &ratio, Limit: 1 << 40, Created: 1 << 62, Destroyed: 1 << 63, Failed: 1 << 50},
		{Owner: eventjson.Owner{NetNS: 1, Comm: "sleep"}},
	}}
	var b bytes.Buffer
	if err := WriteTop(&b, r, "created"); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[1], "NETNS") || !strings.HasPrefix(lines[2], "4294967295 kube-system/very-lo…") {
		t.Errorf("table:\n%s", b.String())
	}
	for _, l := range lines {
		if n := utf8.RuneCountInString(l); n > 80 {
			t.Errorf("%d columns: %q", n, l)
		}
	}
	if !strings.Contains(lines[3], "host") || !strings.Contains(lines[4], "sleep") || !strings.Contains(lines[2], "150%") {
		t.Errorf("table:\n%s", b.String())
	}
}

// fakeSource is two namespaces with many entries each.
type fakeSource struct {
	perNS   int
	dumping chan uint32 // a dump starts
}

func (f *fakeSource) Namespaces() []netns.Namespace {
	return []netns.Namespace{{Inode: 2, Path: "/b"}, {Inode: 1, Path: "/a"}}
}
func (f *fakeSource) Lookup(inode uint32) (netns.Identity, bool) {
	return netns.Identity{Inode: inode, Name: map[uint32]string{1: "a", 2: "b"}[inode]}, true
}
func (f *fakeSource) DumpTable(ns tracer.Namespace, fn func(tracer.Entry)) error {
	if f.dumping != nil {
		f.dumping <- ns.Inode
	}
	for i := range f.perNS {
		fn(tcpEntry(uint16(i), 3, 1<<1))
	}
	return nil
}
func (f *fakeSource) KernelStats(tracer.Namespace) (tracer.KernelStats, error) {
	return tracer.KernelStats{}, nil
}
func (f *fakeSource) Snapshot() ([]metrics.NamespaceStats, uint64) {
	return []metrics.NamespaceStats{{Inode: 1, Listed: true, Entries: []metrics.FamilyProtocolEntries{{Family: "ipv4", Protocol: "tcp", Entries: 5}}, EntriesTotal: 5, Created: 9}}, 100
}

func serve(t *testing.T, h *Handler) *Client {
	mux := http.NewServeMux()
	for _, r := range h.Routes() {
		mux.Handle(r.Path, r.Handler)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c, err := NewClient(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHandler(t *testing.T) {
	h := NewHandler(nil)
	c := serve(t, h)
	ctx := context.Background()
	if _, err := c.Namespaces(ctx); err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "not ready") {
		t.Errorf("before SetSource: %v", err)
	}
	src := &fakeSource{perNS: 3}
	h.SetSource(Source{Stats: src, Namespaces: src, Table: src})
	r, err := c.Namespaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Limit != 100 || len(r.Namespaces) != 1 || *r.Namespaces[0].Entries != 5 || *r.Namespaces[0].FillRatio != 0.05 || r.Namespaces[0].Created != 9 {
		t.Errorf("%+v", r)
	}
	var got []eventjson.Entry
	if err := c.Entries(ctx, Filter{NetNS: "b"}, func(line []byte) error {
		var e eventjson.Entry
		err := json.Unmarshal(line, &e)
		got = append(got, e)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].NetNS != 2 || got[0].NetNSName != "b" || got[0].TCPState != "ESTABLISHED" || got[2].Original.SrcPort != 2 {
		t.Errorf("%+v", got)
	}
	if err := c.Entries(ctx, Filter{Protocols: []string{"nope"}}, func([]byte) error { return nil }); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("bad filter: %v", err)
	}
}

// A client that goes away ends the stream: no other namespace is dumped.
func TestEntriesClientGone(t *testing.T) {
	h := NewHandler(nil)
	c := serve(t, h)
	src := &fakeSource{perNS: 200000, dumping: make(chan uint32, 2)}
	h.SetSource(Source{Stats: src, Namespaces: src, Table: src})
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	err := c.Entries(ctx, Filter{}, func([]byte) error {
		if n++; n == 10 {
			cancel()
		}
		return nil
	})
	if err == nil || n >= 2*200000 {
		t.Errorf("stream not cut: %d lines, %v", n, err)
	}
	time.Sleep(500 * time.Millisecond)
	if len(src.dumping) > 1 {
		t.Errorf("%d namespaces dumped after the client left", len(src.dumping))
	}
}
