package api

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/eventjson"
	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// NamespaceTopPath is the pattern of the drill-down of one namespace: what
// fills its table. {netns} is an inode number or a netns name.
const NamespaceTopPath = NamespacesPath + "/{netns}/top"

// DefaultTopLimit and MaxTopLimit bound the limit parameter of the
// drill-down.
const (
	DefaultTopLimit = 10
	MaxTopLimit     = 1000
)

// maxTopKeys bounds the distinct destinations one drill-down counts (about
// 80 bytes each in the map): a table of more distinct destinations (the
// kernel allows millions of entries) counts the entries of the destinations
// first seen after that in OtherEntries and says Truncated. A plain map and
// not a top-k sketch (Space-Saving, Misra-Gries): the question is which few
// destinations hold most entries, and up to this many distinct ones the
// counts are exact.
const maxTopKeys = 1 << 17

// NamespaceTopResponse is the answer of GET /api/v1/namespaces/{netns}/top:
// what fills one namespace's table, from one dump of it.
type NamespaceTopResponse struct {
	Namespace
	// Dumped is the number of entries the dump delivered.
	Dumped int64 `json:"dumped"`
	// Destinations are the most frequent original-direction destinations
	// (address, port, protocol), at most limit, by entries (descending).
	Destinations []DestinationEntries `json:"destinations"`
	// OtherDestinations and OtherEntries count the destinations left out
	// (beyond limit, or beyond the counting bound) and their entries.
	OtherDestinations int   `json:"other_destinations"`
	OtherEntries      int64 `json:"other_entries"`
	// Truncated: the table had more distinct destinations than the daemon
	// counts one by one (131072); those first seen after that are only in
	// OtherEntries.
	Truncated bool `json:"truncated,omitempty"`
	// States are the entries by protocol and state, by entries
	// (descending): the TCP state for TCP, else UNREPLIED (no reply seen),
	// ASSURED, or REPLIED (a reply, not assured yet).
	States []StateEntries `json:"states"`
}

// DestinationEntries are the entries of one destination.
type DestinationEntries struct {
	Family   string `json:"family"`
	Protocol string `json:"protocol"`
	Dst      string `json:"dst"`
	// DstPort is 0 for protocols without ports (ICMP).
	DstPort uint16 `json:"dport"`
	Entries int64  `json:"entries"`
}

// StateEntries are the entries of one protocol in one state.
type StateEntries struct {
	Protocol string `json:"protocol"`
	State    string `json:"state"`
	Entries  int64  `json:"entries"`
}

type destKey struct {
	family, proto uint8
	dst           netip.Addr
	dport         uint16
}

type stateKey struct{ proto, state uint8 } // state: TCP state, or one of the non-TCP ones below

// The states of entries without a TCP state; above every TCP state number.
const (
	stateUnreplied = 100 + iota
	stateReplied
	stateAssured
)

const ipsAssured = 1 << 2 // IPS_ASSURED

// topCounter counts a dump's entries by destination and state.
type topCounter struct {
	dests     map[destKey]int64
	states    map[stateKey]int64
	dumped    int64
	truncated int64 // entries of destinations not counted one by one
}

func newTopCounter() *topCounter {
	return &topCounter{dests: map[destKey]int64{}, states: map[stateKey]int64{}}
}

func (c *topCounter) add(e tracer.Entry) {
	c.dumped++
	k := destKey{family: e.Family, proto: e.Protocol, dst: e.Original.Dst, dport: e.Original.DstPort}
	if e.Protocol == 1 || e.Protocol == 58 { // ICMP, ICMPv6: DstPort holds type and code
		k.dport = 0
	}
	if _, ok := c.dests[k]; ok || len(c.dests) < maxTopKeys {
		c.dests[k]++
	} else {
		c.truncated++
	}
	s := stateKey{proto: e.Protocol}
	switch {
	case e.Protocol == 6:
		s.state = e.TCPState
	case e.Status&ipsSeenReply == 0:
		s.state = stateUnreplied
	case e.Status&ipsAssured != 0:
		s.state = stateAssured
	default:
		s.state = stateReplied
	}
	c.states[s]++
}

// result fills r's counts with the limit most frequent destinations.
func (c *topCounter) result(r *NamespaceTopResponse, limit int) {
	r.Dumped = c.dumped
	dests := make([]DestinationEntries, 0, len(c.dests))
	for k, n := range c.dests {
		dests = append(dests, DestinationEntries{
			Family: tracer.FamilyName(k.family), Protocol: tracer.ProtocolName(k.proto),
			Dst: k.dst.String(), DstPort: k.dport, Entries: n,
		})
	}
	slices.SortFunc(dests, func(a, b DestinationEntries) int {
		return cmp.Or(cmp.Compare(b.Entries, a.Entries), cmp.Compare(a.Protocol, b.Protocol),
			cmp.Compare(a.Dst, b.Dst), cmp.Compare(a.DstPort, b.DstPort))
	})
	if len(dests) > limit {
		for _, d := range dests[limit:] {
			r.OtherEntries += d.Entries
		}
		r.OtherDestinations = len(dests) - limit
		dests = dests[:limit]
	}
	r.Destinations = dests
	r.OtherEntries += c.truncated
	r.Truncated = c.truncated > 0
	r.States = make([]StateEntries, 0, len(c.states))
	for k, n := range c.states {
		var st string
		switch k.state {
		case stateUnreplied:
			st = "UNREPLIED"
		case stateReplied:
			st = "REPLIED"
		case stateAssured:
			st = "ASSURED"
		default:
			st = tracer.TCPStateName(k.state)
		}
		r.States = append(r.States, StateEntries{Protocol: tracer.ProtocolName(k.proto), State: st, Entries: n})
	}
	slices.SortFunc(r.States, func(a, b StateEntries) int {
		return cmp.Or(cmp.Compare(b.Entries, a.Entries), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.State, b.State))
	})
}

// ServeNamespaceTop serves GET /api/v1/namespaces/{netns}/top?limit=N:
// one dump of the namespace's table, counted by original-direction
// destination and by state while it streams in (memory grows with the
// distinct destinations, bounded, not with the entries), with the
// namespace's health as /api/v1/namespaces has it.
func (h *Handler) ServeNamespaceTop(w http.ResponseWriter, r *http.Request) {
	src := h.source(w, r)
	if src == nil {
		return
	}
	limit := DefaultTopLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxTopLimit {
			httpError(w, http.StatusBadRequest, fmt.Errorf("limit: want a number from 1 to %d, got %q", MaxTopLimit, s))
			return
		}
		limit = n
	}
	want := r.PathValue("netns")
	var (
		ns    tracer.Namespace
		id    netns.Identity
		found bool
	)
	for _, n := range src.Namespaces.Namespaces() {
		i, _ := src.Namespaces.Lookup(n.Inode)
		if strconv.FormatUint(uint64(n.Inode), 10) == want || i.Name == want {
			ns, id, found = n, i, true
			break
		}
	}
	if !found {
		httpError(w, http.StatusNotFound, fmt.Errorf("no network namespace %q", want))
		return
	}
	resp := NamespaceTopResponse{}
	stats, lim := src.Stats.Snapshot()
	for _, s := range stats {
		if s.Inode == ns.Inode {
			resp.Namespace = namespaceOf(s, lim)
		}
	}
	resp.Namespace.Owner = eventjson.NewOwner(ns.Inode, id)
	resp.Namespace.readDrops(src.Table, ns)
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Type", "application/json")
		return
	}
	c := newTopCounter()
	if err := src.Table.DumpTable(ns, c.add); err != nil {
		httpError(w, http.StatusInternalServerError, fmt.Errorf("dumping the table of %d: %w", ns.Inode, err))
		return
	}
	c.result(&resp, limit)
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(resp); err != nil {
		h.log.Debug("writing "+NamespaceTopPath, zap.Error(err))
	}
}
