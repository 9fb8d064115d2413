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
