// Package eventjson is the JSON form of a conntrack event together with the
// owner of its network namespace: one line of "ctagent events", and what an
// HTTP API for live events serves.
//
// It is a package of its own, rather than part of cmd/ctagent or
// pkg/server, so that everything that writes or reads these lines shares
// one type: the events command, the daemon's HTTP server, and a client of
// that API, which decodes them into Event and links neither the HTTP
// server nor a tracer backend (only the types of pkg/tracer and pkg/netns).
package eventjson

import (
	"bufio"
	"encoding/json"
	"io"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// Event is one conntrack event and the owner of its namespace. Names are
// those of pkg/tracer (FamilyName, ProtocolName, StatusNames, TCPStateName).
type Event struct {
	Time      time.Time         `json:"time"`
	Type      string            `json:"type"` // created, destroyed, failed
	Owner                       // netns .. comm
	PodLabels map[string]string `json:"pod_labels,omitempty"`
	Family    string            `json:"family"`
	Protocol  string            `json:"protocol"`
	Original  Tuple             `json:"original"`
	Reply     *Tuple            `json:"reply,omitempty"`
	Zone      uint16            `json:"zone,omitempty"`
	Mark      uint32            `json:"mark,omitempty"`
	Status    []string          `json:"status,omitempty"`
	TCPState  string            `json:"tcp_state,omitempty"`
	Lifetime  *float64          `json:"lifetime_seconds,omitempty"` // destroyed, creation seen
	Reason    string            `json:"reason,omitempty"`           // failed only
	Error     int32             `json:"error,omitempty"`            // failed: the kernel's return value
	Cookie    uint64            `json:"cookie,omitempty"`
}

// Owner is a network namespace and who owns it: the fields every line of
// the API and the CLI starts with (Event, Entry, and pkg/api's Namespace
// embed it; their JSON has these fields at its top level).
type Owner struct {
	NetNS        uint32 `json:"netns"`
	NetNSName    string `json:"netns_name,omitempty"`
	Host         bool   `json:"host_netns,omitempty"`
	Pod          string `json:"pod,omitempty"`
	PodNamespace string `json:"pod_namespace,omitempty"`
	Container    string `json:"container,omitempty"`
	PID          int    `json:"pid,omitempty"`
	Comm         string `json:"comm,omitempty"`
}

// NewOwner is namespace inode, whose owner is id.
func NewOwner(inode uint32, id netns.Identity) Owner {
	return Owner{
		NetNS: inode, NetNSName: id.Name, Host: id.Host, Pod: id.Pod, PodNamespace: id.PodNamespace,
		Container: id.ContainerID, PID: id.PID, Comm: id.Comm,
	}
}

// Tuple is one direction of a connection: ports, or the ICMP id, type and
// code.
type Tuple struct {
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	SrcPort  uint16 `json:"sport,omitempty"`
	DstPort  uint16 `json:"dport,omitempty"`
	ICMPID   *int   `json:"icmp_id,omitempty"`
	ICMPType *int   `json:"icmp_type,omitempty"`
	ICMPCode *int   `json:"icmp_code,omitempty"`
}

// New is the JSON form of ev, of a namespace whose owner is id.
func New(ev tracer.Event, id netns.Identity) Event {
	j := Event{
		Time:      ev.Time,
		Type:      ev.Type.String(),
		Owner:     NewOwner(ev.NetNS, id),
		PodLabels: id.PodLabels,
		Family:    tracer.FamilyName(ev.Family),
		Protocol:  tracer.ProtocolName(ev.Protocol),
		Original:  newTuple(ev.Original, ev.Protocol),
		Zone:      ev.Zone,
		Mark:      ev.Mark,
		Status:    tracer.StatusNames(ev.Status),
		Cookie:    ev.Cookie,
	}
	if ev.Reply.Src.IsValid() {
		rt := newTuple(ev.Reply, ev.Protocol)
		j.Reply = &rt
	}
	if ev.Protocol == unix.IPPROTO_TCP {
		j.TCPState = tracer.TCPStateName(ev.TCPState)
	}
	if ev.LifetimeKnown {
		s := ev.Lifetime.Seconds()
		j.Lifetime = &s
	}
	if ev.Type == tracer.EventFailed {
		j.Reason, j.Error = ev.Reason.String(), ev.Error
	}
	return j
}

func newTuple(t tracer.Tuple, proto uint8) Tuple {
	j := Tuple{Src: addrString(t.Src), Dst: addrString(t.Dst)}
	if proto == unix.IPPROTO_ICMP || proto == unix.IPPROTO_ICMPV6 {
		id, typ, code := int(t.SrcPort), int(t.ICMPType()), int(t.ICMPCode())
		j.ICMPID, j.ICMPType, j.ICMPCode = &id, &typ, &code
		return j
	}
	j.SrcPort, j.DstPort = t.SrcPort, t.DstPort
	return j
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// Writer writes events as JSON lines, one object a line, buffered: the
// caller flushes when its stream is idle, so a busy stream is written in
// large blocks.
type Writer struct {
	buf *bufio.Writer
	enc *json.Encoder
}

// NewWriter returns a Writer to w.
func NewWriter(w io.Writer) *Writer {
	buf := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	return &Writer{buf: buf, enc: enc}
}

// Write adds ev to the buffer, writing it out when the buffer is full.
func (w *Writer) Write(ev Event) error { return w.enc.Encode(ev) }

// Flush writes out what is buffered.
func (w *Writer) Flush() error { return w.buf.Flush() }

// Entry is one conntrack table entry and the owner of its namespace: one
// line of the daemon's /api/v1/entries and of "ctagent list --output json".
type Entry struct {
	Owner             // netns .. comm
	ID       uint32   `json:"id,omitempty"` // the kernel's CTA_ID
	Family   string   `json:"family"`
	Protocol string   `json:"protocol"`
	Original Tuple    `json:"original"`
	Reply    *Tuple   `json:"reply,omitempty"`
	TCPState string   `json:"tcp_state,omitempty"`
	Status   []string `json:"status,omitempty"`
	Timeout  int64    `json:"timeout_seconds"` // time left
	Zone     uint16   `json:"zone,omitempty"`
	Mark     uint32   `json:"mark,omitempty"`
}

// NewEntry is the JSON form of e, of namespace inode whose owner is id.
func NewEntry(inode uint32, e tracer.Entry, id netns.Identity) Entry {
	j := Entry{
		Owner:    NewOwner(inode, id),
		ID:       e.ID,
		Family:   tracer.FamilyName(e.Family),
		Protocol: tracer.ProtocolName(e.Protocol),
		Original: newTuple(e.Original, e.Protocol),
		Status:   tracer.StatusNames(e.Status),
		Timeout:  int64(e.Timeout / time.Second),
		Zone:     e.Zone,
		Mark:     e.Mark,
	}
	if e.Reply.Src.IsValid() {
		rt := newTuple(e.Reply, e.Protocol)
		j.Reply = &rt
	}
	if e.Protocol == unix.IPPROTO_TCP {
		j.TCPState = tracer.TCPStateName(e.TCPState)
	}
	return j
}

// WriteEntry adds e to the buffer, writing it out when the buffer is full.
func (w *Writer) WriteEntry(e Entry) error { return w.enc.Encode(e) }
