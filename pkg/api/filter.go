package api

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/ctagent/ctagent/pkg/netns"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// Filter selects the entries of /api/v1/entries; its zero value selects
// every entry. Its query parameters are those of Values.
type Filter struct {
	// NetNS is a namespace's inode number or name (netns=).
	NetNS string
	// Pod is a pod name, or pod_namespace/pod (pod=).
	Pod string
	// Protocols are protocol names as tracer.ProtocolName gives them
	// (tcp, udp, icmp, icmpv6, sctp, ...) or numbers; any of them matches
	// (proto=, repeated or comma-separated).
	Protocols []string
	// State is a TCP state as tracer.TCPStateName gives it, in any case
	// (state=ESTABLISHED); it selects TCP entries only.
	State string
	// Unreplied selects entries that saw no reply (no SEEN_REPLY status),
	// as conntrack -L shows [UNREPLIED] (unreplied=true).
	Unreplied bool
}

const ipsSeenReply = 1 << 1 // IPS_SEEN_REPLY

// ParseFilter reads a Filter from query parameters and checks it.
func ParseFilter(q url.Values) (Filter, error) {
	f := Filter{NetNS: q.Get("netns"), Pod: q.Get("pod"), State: strings.ToUpper(q.Get("state"))}
	for _, p := range q["proto"] {
		for _, s := range strings.Split(p, ",") {
			if s = strings.ToLower(strings.TrimSpace(s)); s != "" {
				f.Protocols = append(f.Protocols, s)
			}
		}
	}
	if s := q.Get("unreplied"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return f, fmt.Errorf("unreplied: %q is not a boolean", s)
		}
		f.Unreplied = b
	}
	return f, f.Check()
}

// Check reports a protocol or state that no entry can have.
func (f Filter) Check() error {
	for _, p := range f.Protocols {
		if _, ok := protocolNumber(p); !ok {
			return fmt.Errorf("proto: unknown protocol %q (want tcp, udp, icmp, icmpv6, sctp, gre, dccp, udplite or a number)", p)
		}
	}
	if f.State != "" {
		if _, ok := tcpStateNumber(f.State); !ok {
			return fmt.Errorf("state: unknown TCP state %q (want e.g. ESTABLISHED, SYN_SENT, TIME_WAIT)", f.State)
		}
	}
	return nil
}

// Values are the query parameters of f.
func (f Filter) Values() url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("netns", f.NetNS)
	set("pod", f.Pod)
	set("proto", strings.Join(f.Protocols, ","))
	set("state", f.State)
	if f.Unreplied {
		q.Set("unreplied", "true")
	}
	return q
}

// MatchNamespace reports whether the entries of namespace inode, owned by
// id, can match f.
func (f Filter) MatchNamespace(inode uint32, id netns.Identity) bool {
	if f.NetNS != "" && f.NetNS != strconv.FormatUint(uint64(inode), 10) && f.NetNS != id.Name {
		return false
	}
	if f.Pod != "" {
		if ns, name, ok := strings.Cut(f.Pod, "/"); ok {
			return id.PodNamespace == ns && id.Pod == name
		}
		return id.Pod == f.Pod
	}
	return true
}

// MatchEntry reports whether e matches f's protocol, state and reply
// conditions.
func (f Filter) MatchEntry(e tracer.Entry) bool {
	if len(f.Protocols) > 0 && !slices.ContainsFunc(f.Protocols, func(p string) bool {
		n, _ := protocolNumber(p)
		return n == e.Protocol
	}) {
		return false
	}
	if f.State != "" {
		st, _ := tcpStateNumber(f.State)
		if e.Protocol != 6 || e.TCPState != st {
			return false
		}
	}
	return !f.Unreplied || e.Status&ipsSeenReply == 0
}

func protocolNumber(s string) (uint8, bool) {
	if n, err := strconv.ParseUint(s, 10, 8); err == nil {
		return uint8(n), true
	}
	for p := range 256 {
		if tracer.ProtocolName(uint8(p)) == s && !strings.HasPrefix(s, "other:") {
			return uint8(p), true
		}
	}
	return 0, false
}

func tcpStateNumber(s string) (uint8, bool) {
	for st := range 16 {
		if tracer.TCPStateName(uint8(st)) == s {
			return uint8(st), true
		}
	}
	return 0, false
}
