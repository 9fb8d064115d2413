package eventjson

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

func TestNew(t *testing.T) {
	ev := tracer.Event{
		Type: tracer.EventDestroyed, Time: time.Unix(1700000000, 0).UTC(), NetNS: 4026532281,
		Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP,
		Original: tracer.Tuple{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), SrcPort: 40000, DstPort: 80},
		Reply:    tracer.Tuple{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.1"), SrcPort: 80, DstPort: 40000},
		Status:   1<<1 | 1<<2 | 1<<3, TCPState: 7, Lifetime: 1500 * time.Millisecond, LifetimeKnown: true,
	}
	b, err := json.Marshal(New(ev, netns.Identity{Name: "blue", Comm: "nginx", PID: 42}))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"time":"2023-11-14T22:13:20Z","type":"destroyed","netns":4026532281,"netns_name":"blue","pid":42,"comm":"nginx",` +
		`"family":"ipv4","protocol":"tcp","original":{"src":"10.0.0.1","dst":"10.0.0.2","sport":40000,"dport":80},` +
		`"reply":{"src":"10.0.0.2","dst":"10.0.0.1","sport":80,"dport":40000},"status":["SEEN_REPLY","ASSURED","CONFIRMED"],` +
		`"tcp_state":"TIME_WAIT","lifetime_seconds":1.5}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}

	icmp := tracer.Event{Type: tracer.EventFailed, Family: unix.AF_INET6, Protocol: unix.IPPROTO_ICMPV6,
		Original: tracer.Tuple{Src: netip.MustParseAddr("::1"), Dst: netip.MustParseAddr("::2"), SrcPort: 7, DstPort: 128 << 8},
		Reason:   tracer.ReasonExists, Error: -17}
	b, _ = json.Marshal(New(icmp, netns.Identity{}))
	for _, w := range []string{`"icmp_id":7,"icmp_type":128,"icmp_code":0`, `"reason":"exists","error":-17`, `"family":"ipv6"`} {
		if !strings.Contains(string(b), w) {
			t.Errorf("missing %s in %s", w, b)
		}
	}
}

// One line per event, written out on Flush, HTML characters as they are;
// a reader decodes them into the same type.
func TestWriter(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	in := []Event{{Type: "created", Owner: Owner{Pod: "web<1>&co"}, Family: "ipv4", Protocol: "udp"}, {Type: "destroyed", Owner: Owner{NetNS: 7}}}
	for _, ev := range in {
		if err := w.Write(ev); err != nil {
			t.Fatal(err)
		}
	}
	if out.Len() != 0 {
		t.Errorf("written before Flush: %q", out.String())
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"pod":"web<1>&co"`) {
		t.Fatalf("lines %q", lines)
	}
	var back Event
	if err := json.Unmarshal([]byte(lines[1]), &back); err != nil || back.NetNS != 7 || back.Type != "destroyed" {
		t.Errorf("decoded %+v, %v", back, err)
	}
}
