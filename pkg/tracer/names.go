package tracer

import (
	"strconv"

	"golang.org/x/sys/unix"
)

// FamilyName names an L3 family as metrics and event output show it:
// "ipv4", "ipv6", "unspec" (0) or "other:N".
func FamilyName(f uint8) string {
	switch f {
	case unix.AF_UNSPEC:
		return "unspec"
	case unix.AF_INET:
		return "ipv4"
	case unix.AF_INET6:
		return "ipv6"
	}
	return "other:" + strconv.Itoa(int(f))
}

var protocolNames = map[uint8]string{
	0:                    "unspec",
	unix.IPPROTO_TCP:     "tcp",
	unix.IPPROTO_UDP:     "udp",
	unix.IPPROTO_ICMP:    "icmp",
	unix.IPPROTO_ICMPV6:  "icmpv6",
	unix.IPPROTO_SCTP:    "sctp",
	unix.IPPROTO_GRE:     "gre",
	unix.IPPROTO_DCCP:    "dccp",
	unix.IPPROTO_UDPLITE: "udplite",
}

// ProtocolName names an L4 protocol: "tcp", "udp", "icmp", "icmpv6",
// "sctp", "gre", "dccp", "udplite", "unspec" (0) or "other:N".
func ProtocolName(p uint8) string {
	if n, ok := protocolNames[p]; ok {
		return n
	}
	return "other:" + strconv.Itoa(int(p))
}

// tcpStateNames are enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
var tcpStateNames = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT",
	"CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

// TCPStateName names a TCP conntrack state (Event.TCPState) as the kernel
// does: "ESTABLISHED", "TIME_WAIT", ..., or the number if unknown.
func TCPStateName(s uint8) string {
	if int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return strconv.Itoa(int(s))
}

// statusBits are enum ip_conntrack_status (include/uapi/linux/netfilter/nf_conntrack_common.h).
var statusBits = []string{"EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT",
	"SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT", "TEMPLATE",
	"NAT_CLASH", "HELPER", "OFFLOAD", "HW_OFFLOAD"}

// StatusNames names the IPS_* bits set in s (Event.Status), without the
// IPS_ prefix, lowest bit first; unknown bits come last, as one hex number.
func StatusNames(s uint32) []string {
	var out []string
	for i, n := range statusBits {
		if s&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	if rest := s &^ (1<<len(statusBits) - 1); rest != 0 {
		out = append(out, "0x"+strconv.FormatUint(uint64(rest), 16))
	}
	return out
}
