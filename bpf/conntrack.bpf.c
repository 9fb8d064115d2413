// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ctagent: CO-RE programs on nf_conntrack.
 *
 * Hook points (all present, and not inlined, on Debian's 6.1 and 6.12; the
 * first three are EXPORT_SYMBOL_GPL and therefore never inlined away):
 *   __nf_conntrack_confirm         packet path: an entry is confirmed into the
 *                                  hash table, or loses a clash (NF_DROP or a
 *                                  resolved clash).
 *   nf_conntrack_hash_check_insert ctnetlink path: 0, or -EEXIST / -ENOSPC ...
 *   nf_ct_delete                   a confirmed entry is removed (timeout, gc,
 *                                  ctnetlink delete or flush, early drop,
 *                                  netns teardown).
 *   __nf_conntrack_alloc           static; ERR_PTR(-ENOMEM) when the table is
 *                                  full and early_drop() freed nothing.
 * Alternatives on kernels that inline a static function:
 *   __nf_conntrack_hash_insert (both insert paths), early_drop (returns false
 *   when the table is full), nf_ct_destroy (also fires for unconfirmed
 *   entries: filter on IPS_CONFIRMED).
 *
 * Every handler exists as an fentry/fexit program (preferred, args at exit)
 * and as a kprobe/kretprobe program; user space loads one set.
 */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "bpf_endian.h"
#include "conntrack.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Never written: they put the shared types into the object's BTF, where
 * bpf2go -type finds them for pkg/tracer. */
const struct ct_event *unused_event __attribute__((unused));
const enum ct_event_type *unused_event_type __attribute__((unused));
const enum ct_fail_reason *unused_fail_reason __attribute__((unused));
const enum ct_lost_reason *unused_lost_reason __attribute__((unused));
const enum ct_event_flag *unused_event_flag __attribute__((unused));

/* Set from Go (spec.Variables) before load. */
volatile const struct ct_config ct_cfg = {
	.use_ringbuf = 1,
	.emit_events = 1,
};

#define NF_DROP 0
#define NF_ACCEPT 1
#define NFCT_PTRMASK (~7UL) /* skb->_nfct: pointer | ctinfo (3 bits) */
#define MAX_ERRNO 4095
#define EEXIST 17
#define ENOSPC 28

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* resized from Go */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events_perf SEC(".maps");

/* Counters per {netns, family, protocol}, read by the collector at scrape. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ct_counter_key);
	__type(value, struct ct_counter_value);
} counters SEC(".maps");

/* Events and updates that could not be recorded, by enum ct_lost_reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_LOST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Creation time of every entry seen confirmed, keyed by its address. On a
 * miss at destroy (the entry predates the tracer, or was evicted from this
 * LRU) the lifetime is unknown: the entry is counted in destroyed and
 * destroyed_no_start, the event has no CT_FLAG_LIFETIME_KNOWN and the
 * histogram is not touched. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, __u64);
	__type(value, __u64);
} starts SEC(".maps");

/* What an entry probe saw, for its return probe. */
struct inflight {
	__u64 ct;   /* struct nf_conn * */
	__u64 net;  /* struct net * (allocation) */
	__u64 orig; /* const struct nf_conntrack_tuple * (allocation) */
	__u64 repl;
};

/* Entry/return pairs nest: __nf_conntrack_confirm ends with
 * local_bh_enable(), which runs pending softirqs (received packets, other
 * confirms) on the same task before the outer call returns; ctnetlink
 * inserts can be interrupted the same way. Nesting on one key is strictly
 * last in, first out, so each key holds a small stack. */
#define INFLIGHT_DEPTH 4 /* a power of two */

struct inflight_stack {
	struct inflight frames[INFLIGHT_DEPTH];
	__u32 depth;
	__u32 pad;
};

/* Keyed by skb address (fentry) or probe_key() (kprobe). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct inflight_stack);
} inflights SEC(".maps");

/* Before about 3.19 the inode lived in struct net itself (proc_inum); since
 * then in net->ns.inum. */
struct net___old {
	unsigned int proc_inum;
} __attribute__((preserve_access_index));

static __always_inline void count_lost(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&lost, &reason);

	if (v)
		(*v)++;
}

static __always_inline __u32 net_inum(struct net *net)
{
	if (!net)
		return 0;
	if (bpf_core_field_exists(net->ns.inum))
		return BPF_CORE_READ(net, ns.inum);
	return BPF_CORE_READ((struct net___old *)net, proc_inum);
}

static __always_inline struct net *ct_net(struct nf_conn *ct)
{
	return BPF_CORE_READ(ct, ct_net.net);
}

static __always_inline void read_tuple(struct ct_tuple *out,
				       const struct nf_conntrack_tuple *t)
{
	BPF_CORE_READ_INTO(&out->src_addr, t, src.u3.all);
	BPF_CORE_READ_INTO(&out->dst_addr, t, dst.u3.all);
	out->src_port = bpf_ntohs(BPF_CORE_READ(t, src.u.all));
	out->dst_port = bpf_ntohs(BPF_CORE_READ(t, dst.u.all));
}

/* Fills everything but type, reason and error from the entry. */
static __always_inline void fill_from_ct(struct ct_event *e, struct nf_conn *ct)
{
	struct nf_conntrack_tuple *orig = &ct->tuplehash[0].tuple;
	struct nf_conntrack_tuple *repl = &ct->tuplehash[1].tuple;

	e->timestamp_ns = bpf_ktime_get_ns();
	e->cookie = (__u64)ct;
	e->netns = net_inum(ct_net(ct));
	e->status = (__u32)BPF_CORE_READ(ct, status);
	if (bpf_core_field_exists(ct->mark))
		e->mark = BPF_CORE_READ(ct, mark);
	if (bpf_core_field_exists(ct->zone))
		e->zone = BPF_CORE_READ(ct, zone.id);
	e->family = (__u8)BPF_CORE_READ(orig, src.l3num);
	e->protocol = BPF_CORE_READ(orig, dst.protonum);
	if (e->protocol == IPPROTO_TCP)
		e->tcp_state = BPF_CORE_READ(ct, proto.tcp.state);
	read_tuple(&e->original, orig);
	read_tuple(&e->reply, repl);
}

/* Zero value for new counter keys; kept in .rodata, not on the stack. */
static const struct ct_counter_value zero_counters;

static __always_inline struct ct_counter_value *counter(struct ct_event *e)
{
	struct ct_counter_key key = {
		.netns = e->netns,
		.family = e->family,
		.protocol = e->protocol,
	};
	struct ct_counter_value *v = bpf_map_lookup_elem(&counters, &key);

	if (v)
		return v;
	/* -EEXIST from a concurrent insert on another CPU is fine. */
	bpf_map_update_elem(&counters, &key, &zero_counters, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&counters, &key);
	if (!v)
		count_lost(CT_LOST_COUNTERS_FULL);
	return v;
}

/* Index of the first bucket whose bound (2^i ms) holds the lifetime. The
 * lifetime is rounded up to whole milliseconds: for an integer bound N,
 * ns <= N ms exactly when ceil(ns in ms) <= N, so every bucket is a true
 * "less or equal" bucket. */
static __always_inline __u32 lifetime_bucket(__u64 ns)
{
	__u64 ms = (ns + 999999) / 1000000;
	__u32 b = 0;

	if (ms <= 1)
		return 0;
	ms--; /* ceil(log2(ms)) = bit length of ms-1 */
	if (ms >> 16) { ms >>= 16; b += 16; }
	if (ms >> 8) { ms >>= 8; b += 8; }
	if (ms >> 4) { ms >>= 4; b += 4; }
	if (ms >> 2) { ms >>= 2; b += 2; }
	if (ms >> 1) { ms >>= 1; b += 1; }
	b += ms;
	if (b >= CT_LIFETIME_BUCKETS)
		b = CT_LIFETIME_BUCKETS - 1;
	return b;
}

static __always_inline void account(struct ct_event *e)
{
	struct ct_counter_value *v = counter(e);

	if (!v)
		return;
	switch (e->type) {
	case CT_EVENT_CREATED:
		v->created++;
		break;
	case CT_EVENT_DESTROYED:
		v->destroyed++;
		if (e->flags & CT_FLAG_LIFETIME_KNOWN) {
			__u32 b = lifetime_bucket(e->lifetime_ns);

			v->lifetime_sum_ns += e->lifetime_ns;
			if (b < CT_LIFETIME_BUCKETS)
				v->lifetime_buckets[b]++;
		} else {
			v->destroyed_no_start++;
		}
		break;
	case CT_EVENT_FAILED:
		if (e->reason < CT_FAIL_MAX)
			v->failed[e->reason]++;
		break;
	}
}

static __always_inline void submit(void *ctx, struct ct_event *e)
{
	account(e);
	if (!ct_cfg.emit_events)
		return;
	if (ct_cfg.use_ringbuf) {
		if (bpf_ringbuf_output(&events, e, sizeof(*e), 0))
			count_lost(CT_LOST_RINGBUF_FULL);
	} else {
		if (bpf_perf_event_output(ctx, &events_perf, BPF_F_CURRENT_CPU,
					  e, sizeof(*e)))
			count_lost(CT_LOST_PERF_FULL);
	}
}

static __always_inline void on_created(void *ctx, struct nf_conn *ct)
{
	struct ct_event e = {};
	__u64 key = (__u64)ct;

	fill_from_ct(&e, ct);
	e.type = CT_EVENT_CREATED;
	bpf_map_update_elem(&starts, &key, &e.timestamp_ns, BPF_ANY);
	submit(ctx, &e);
}

static __always_inline void on_failed(void *ctx, struct nf_conn *ct,
				      __u8 reason, int err)
{
	struct ct_event e = {};

	fill_from_ct(&e, ct);
	e.type = CT_EVENT_FAILED;
	e.reason = reason;
	e.error = err;
	submit(ctx, &e);
}

/* Empty stack for new keys; kept in .rodata, not on the stack. */
static const struct inflight_stack empty_stack;

/* The key of a kprobe entry/return pair: the task. Idle tasks are pid 0 on
 * every CPU, so softirqs that interrupt them are told apart by CPU. */
static __always_inline __u64 probe_key(void)
{
	__u64 id = bpf_get_current_pid_tgid();

	if ((__u32)id == 0)
		return (1ULL << 63) | bpf_get_smp_processor_id();
	return id;
}

/* Pushes what an entry probe saw under key; a full map or stack is
 * counted, and its return probe will then count a miss too. */
static __always_inline void put_inflight(__u64 key, struct inflight *in)
{
	struct inflight_stack *st = bpf_map_lookup_elem(&inflights, &key);
	__u32 d;

	if (!st) {
		bpf_map_update_elem(&inflights, &key, &empty_stack, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&inflights, &key);
		if (!st) {
			count_lost(CT_LOST_INFLIGHT_MISS);
			return;
		}
	}
	d = st->depth;
	if (d >= INFLIGHT_DEPTH) {
		count_lost(CT_LOST_INFLIGHT_MISS);
		return;
	}
	/* The mask is a no-op after the check; barrier_var keeps clang from
	 * dropping it, so the verifier sees the bound. */
	barrier_var(d);
	st->frames[d & (INFLIGHT_DEPTH - 1)] = *in;
	st->depth = d + 1;
}

/* Pops what the matching entry probe stashed under key, for its return
 * probe. A miss (the entry probe did not run, or could not store) is
 * counted. */
static __always_inline bool take_inflight(__u64 key, struct inflight *out)
{
	struct inflight_stack *st = bpf_map_lookup_elem(&inflights, &key);
	__u32 d;

	if (!st || st->depth == 0 || st->depth > INFLIGHT_DEPTH) {
		count_lost(CT_LOST_INFLIGHT_MISS);
		return false;
	}
	d = st->depth - 1;
	barrier_var(d); /* see put_inflight */
	*out = st->frames[d & (INFLIGHT_DEPTH - 1)];
	st->depth = d;
	if (d == 0)
		bpf_map_delete_elem(&inflights, &key);
	return true;
}

/* Entry of __nf_conntrack_confirm: remember the entry the skb carries. */
static __always_inline void confirm_enter(__u64 key, struct sk_buff *skb)
{
	struct inflight in = {
		.ct = BPF_CORE_READ(skb, _nfct) & NFCT_PTRMASK,
	};

	put_inflight(key, &in);
}

/* Exit of __nf_conntrack_confirm. NF_ACCEPT with IPS_CONFIRMED set on the
 * entry seen at entry: inserted. NF_ACCEPT without it: the clash was resolved
 * in favour of an existing entry (nf_ct_resolve_clash). NF_DROP: the kernel
 * counted insert_failed and dropped the packet. */
static __always_inline void confirm_exit(void *ctx, __u64 key, int ret)
{
	struct inflight in;
	struct nf_conn *ct;

	if (!take_inflight(key, &in))
		return;
	ct = (struct nf_conn *)in.ct;
	if (!ct)
		return;
	if (ret == NF_DROP) {
		on_failed(ctx, ct, CT_FAIL_CONFIRM_DROP, ret);
		return;
	}
	if (BPF_CORE_READ(ct, status) & IPS_CONFIRMED)
		on_created(ctx, ct);
	else
		on_failed(ctx, ct, CT_FAIL_CLASH_RESOLVED, ret);
}

/* Exit of nf_conntrack_hash_check_insert (ctnetlink). */
static __always_inline void check_insert_exit(void *ctx, struct nf_conn *ct, int ret)
{
	__u8 reason;

	if (ret == 0) {
		on_created(ctx, ct);
		return;
	}
	switch (-ret) {
	case EEXIST:
		reason = CT_FAIL_EXISTS;
		break;
	case ENOSPC:
		reason = CT_FAIL_NO_SPACE;
		break;
	default:
		reason = CT_FAIL_OTHER;
	}
	on_failed(ctx, ct, reason, ret);
}

/* Entry of nf_ct_delete: only the first caller gets past
 * test_and_set_bit(IPS_DYING_BIT) in the kernel, so an entry already dying is
 * not counted twice. Removal happens even when nf_ct_delete later returns
 * false (undelivered destroy event), so the entry, not the exit, is used. */
static __always_inline void on_delete(void *ctx, struct nf_conn *ct)
{
	struct ct_event e = {};
	__u64 key = (__u64)ct;
	__u64 *start;

	fill_from_ct(&e, ct);
	if ((e.status & (IPS_CONFIRMED | IPS_DYING)) != IPS_CONFIRMED)
		return;
	e.type = CT_EVENT_DESTROYED;
	start = bpf_map_lookup_elem(&starts, &key);
	if (start) {
		if (e.timestamp_ns >= *start) {
			e.lifetime_ns = e.timestamp_ns - *start;
			e.flags |= CT_FLAG_LIFETIME_KNOWN;
		}
		bpf_map_delete_elem(&starts, &key);
	}
	submit(ctx, &e);
}

/* Exit of __nf_conntrack_alloc: ERR_PTR(-ENOMEM) is a full table (or, very
 * rarely, a failed slab allocation). */
static __always_inline void alloc_exit(void *ctx, struct net *net,
				       const struct nf_conntrack_tuple *orig,
				       const struct nf_conntrack_tuple *repl,
				       long ret)
{
	struct ct_event e = {};

	if (ret < -MAX_ERRNO || ret >= 0)
		return;
	e.timestamp_ns = bpf_ktime_get_ns();
	e.netns = net_inum(net);
	e.type = CT_EVENT_FAILED;
	e.reason = CT_FAIL_TABLE_FULL;
	e.error = (__s32)ret;
	if (orig) {
		e.family = (__u8)BPF_CORE_READ(orig, src.l3num);
		e.protocol = BPF_CORE_READ(orig, dst.protonum);
		read_tuple(&e.original, orig);
	}
	if (repl)
		read_tuple(&e.reply, repl);
	submit(ctx, &e);
}

/* fentry / fexit: arguments are available at exit. */

SEC("fentry/__nf_conntrack_confirm")
int BPF_PROG(fentry_confirm, struct sk_buff *skb)
{
	confirm_enter((__u64)skb, skb);
	return 0;
}

SEC("fexit/__nf_conntrack_confirm")
int BPF_PROG(fexit_confirm, struct sk_buff *skb, int ret)
{
	confirm_exit(ctx, (__u64)skb, ret);
	return 0;
}

SEC("fexit/nf_conntrack_hash_check_insert")
int BPF_PROG(fexit_check_insert, struct nf_conn *ct, int ret)
{
	check_insert_exit(ctx, ct, ret);
	return 0;
}

SEC("fentry/nf_ct_delete")
int BPF_PROG(fentry_delete, struct nf_conn *ct)
{
	on_delete(ctx, ct);
	return 0;
}

SEC("fexit/__nf_conntrack_alloc")
int BPF_PROG(fexit_alloc, struct net *net, const struct nf_conntrack_zone *zone,
	     const struct nf_conntrack_tuple *orig,
	     const struct nf_conntrack_tuple *repl)
{
	long ret = 0;

	/* The verifier types the return value as a trusted struct nf_conn
	 * pointer, which cannot be narrowed to an errno: read the raw slot
	 * (argument 6, after net, zone, orig, repl, gfp, hash). */
	bpf_probe_read_kernel(&ret, sizeof(ret), &ctx[6]);
	alloc_exit(ctx, net, orig, repl, ret);
	return 0;
}

/* kprobe / kretprobe: arguments are stashed at entry, keyed by the task. */

SEC("kprobe/__nf_conntrack_confirm")
int BPF_KPROBE(kprobe_confirm, struct sk_buff *skb)
{
	confirm_enter(probe_key(), skb);
	return 0;
}

SEC("kretprobe/__nf_conntrack_confirm")
int BPF_KRETPROBE(kretprobe_confirm, int ret)
{
	confirm_exit(ctx, probe_key(), ret);
	return 0;
}

SEC("kprobe/nf_conntrack_hash_check_insert")
int BPF_KPROBE(kprobe_check_insert, struct nf_conn *ct)
{
	struct inflight in = { .ct = (__u64)ct };

	put_inflight(probe_key(), &in);
	return 0;
}

SEC("kretprobe/nf_conntrack_hash_check_insert")
int BPF_KRETPROBE(kretprobe_check_insert, int ret)
{
	struct inflight in;

	if (take_inflight(probe_key(), &in))
		check_insert_exit(ctx, (struct nf_conn *)in.ct, ret);
	return 0;
}

SEC("kprobe/nf_ct_delete")
int BPF_KPROBE(kprobe_delete, struct nf_conn *ct)
{
	on_delete(ctx, ct);
	return 0;
}

SEC("kprobe/__nf_conntrack_alloc")
int BPF_KPROBE(kprobe_alloc, struct net *net, const struct nf_conntrack_zone *zone,
	       const struct nf_conntrack_tuple *orig,
	       const struct nf_conntrack_tuple *repl)
{
	struct inflight in = {
		.net = (__u64)net,
		.orig = (__u64)orig,
		.repl = (__u64)repl,
	};

	put_inflight(probe_key(), &in);
	return 0;
}

SEC("kretprobe/__nf_conntrack_alloc")
int BPF_KRETPROBE(kretprobe_alloc, long ret)
{
	struct inflight in;

	if (take_inflight(probe_key(), &in))
		alloc_exit(ctx, (struct net *)in.net,
			   (const struct nf_conntrack_tuple *)in.orig,
			   (const struct nf_conntrack_tuple *)in.repl, ret);
	return 0;
}
