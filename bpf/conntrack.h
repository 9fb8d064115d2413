/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared by bpf/conntrack.bpf.c and pkg/tracer (Go types are generated
 * from this header's BTF by bpf2go -type). Keep every struct free of implicit
 * padding: the Go side decodes raw ring-buffer records with the same layout.
 */
#ifndef CTAGENT_CONNTRACK_H
#define CTAGENT_CONNTRACK_H

/* What happened to a conntrack entry. */
enum ct_event_type {
	CT_EVENT_CREATED = 1,   /* confirmed into the hash table */
	CT_EVENT_DESTROYED = 2, /* a confirmed entry was removed */
	CT_EVENT_FAILED = 3,    /* an entry could not be created or inserted */
};

/* Why an insert failed. */
enum ct_fail_reason {
	CT_FAIL_NONE = 0,
	/* Packet path: another CPU confirmed the same tuple first; the kernel
	 * resolved the clash and the packet went on with the winner's entry. */
	CT_FAIL_CLASH_RESOLVED = 1,
	/* Packet path: __nf_conntrack_confirm returned NF_DROP (the kernel's
	 * insert_failed statistic), the packet was dropped. */
	CT_FAIL_CONFIRM_DROP = 2,
	/* Allocation refused: the table is full and early drop freed nothing
	 * ("nf_conntrack: table full, dropping packet", the kernel's drop
	 * statistic). */
	CT_FAIL_TABLE_FULL = 3,
	/* ctnetlink: nf_conntrack_hash_check_insert returned -EEXIST. */
	CT_FAIL_EXISTS = 4,
	/* ctnetlink: -ENOSPC (hash chain too long). */
	CT_FAIL_NO_SPACE = 5,
	/* ctnetlink: any other error (e.g. -EAGAIN for a dying helper). */
	CT_FAIL_OTHER = 6,
	CT_FAIL_MAX = 7,
};

/* Why an event or a counter update was lost. */
enum ct_lost_reason {
	CT_LOST_RINGBUF_FULL = 0,  /* bpf_ringbuf_output failed */
	CT_LOST_PERF_FULL = 1,     /* bpf_perf_event_output failed */
	CT_LOST_COUNTERS_FULL = 2, /* the counters map had no room for a new key */
	CT_LOST_INFLIGHT_MISS = 3, /* a return probe found no matching entry probe */
	CT_LOST_MAX = 4,
};

/* Flags of struct ct_event. */
enum ct_event_flag {
	CT_FLAG_LIFETIME_KNOWN = 1, /* destroyed: the creation was seen, lifetime_ns is valid */
};

/* One direction of a connection. Addresses are in network byte order (IPv4
 * in the first 4 bytes); ports in host byte order. For ICMP and ICMPv6,
 * src_port is the echo id and dst_port is type << 8 | code. */
struct ct_tuple {
	__u8 src_addr[16];
	__u8 dst_addr[16];
	__u16 src_port;
	__u16 dst_port;
};

/* One record of the event stream. */
struct ct_event {
	__u64 timestamp_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 lifetime_ns;  /* destroyed, with CT_FLAG_LIFETIME_KNOWN */
	__u64 cookie;       /* identifies the entry while it lives (0 for failed allocations) */
	__u32 netns;        /* inode number of the entry's network namespace */
	__u32 mark;
	__u32 status;       /* enum ip_conntrack_status bits */
	__s32 error;        /* failed: the kernel's return value */
	__u16 zone;
	__u8 type;          /* enum ct_event_type */
	__u8 reason;        /* enum ct_fail_reason */
	__u8 family;        /* AF_INET or AF_INET6 */
	__u8 protocol;      /* IPPROTO_* */
	__u8 tcp_state;     /* enum tcp_conntrack, TCP only */
	__u8 flags;         /* enum ct_event_flag */
	struct ct_tuple original;
	struct ct_tuple reply;
};

/* Key of the in-kernel counters: one per namespace, family and protocol. */
struct ct_counter_key {
	__u32 netns;
	__u8 family;
	__u8 protocol;
	__u16 pad;
};

/* Lifetime histogram: bucket i counts lifetimes of at most 2^i ms; the last
 * bucket counts everything longer. */
#define CT_LIFETIME_BUCKETS 28

/* In-kernel counters per struct ct_counter_key, summed over CPUs in Go. */
struct ct_counter_value {
	__u64 created;
	__u64 destroyed;
	__u64 destroyed_no_start; /* destroyed entries whose creation was not seen */
	__u64 failed[CT_FAIL_MAX];
	__u64 lifetime_sum_ns;
	__u64 lifetime_buckets[CT_LIFETIME_BUCKETS];
};

/* Runtime configuration, set from Go before load. */
struct ct_config {
	__u8 use_ringbuf; /* 1: ring buffer, 0: perf event array */
	__u8 pad[7];
};

#endif /* CTAGENT_CONNTRACK_H */
