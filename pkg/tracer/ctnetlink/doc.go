// Package ctnetlink is the ctnetlink client every backend shares: table
// dumps, kernel statistics and the event socket of the netlink backend, in
// any network namespace without moving the calling thread.
//
// The socket is github.com/mdlayher/socket (namespace-aware, deadline and
// close-safe); messages are decoded here. Why not github.com/ti-mo/conntrack
// or vishvananda/netlink's conntrack dump: both return a whole table dump as
// a slice, which at a node's nf_conntrack_max (hundreds of thousands of
// entries) holds every entry in memory at once, while the exporter only
// counts them; Dump here streams each datagram's entries to a callback.
// Neither exposes the per-CPU statistics' CPU id either, which the
// wrap-correction of KernelStatsReader needs.
package ctnetlink
