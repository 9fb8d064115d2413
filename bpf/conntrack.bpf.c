// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ctagent: CO-RE programs on nf_conntrack.
 *
 * Every kind of event has a ranked list of candidate hooks (pkg/tracer,
 * hooks.go); user space loads the candidates whose kernel function exists,
 * attaches the first, proves at start that it sees every event (a self-test
 * in a throwaway network namespace) and moves to the next one when it does
 * not. A symbol that attaches is not proof: gcc splits and clones static
 * and exported functions differently per build (Debian 5.10 and 7.2 call a
 * clone nf_ct_delete.part.0 from gc, flush and early drop).
 *
 *   created, clash, confirm drop  __nf_conntrack_confirm (entry + exit)
 *   created, -EEXIST, -ENOSPC     nf_conntrack_hash_check_insert (exit)
 *   destroyed                     __nf_ct_delete_from_lists (5.10:
 *                                 nf_ct_delete_from_lists), nf_ct_delete,
 *                                 nf_ct_delete.part.N, nf_ct_destroy (5.10:
 *                                 destroy_conntrack), in this order
 *   table full                    __nf_conntrack_alloc (exit; optional)
 *
 * Every handler exists as an fentry/fexit program and as a
 * kprobe/kretprobe program; user space loads one set.
 */
#include "vmlinux.h"
#if defined(__TARGET_ARCH_arm64)
/* bpf/vmlinux.h is dumped from an x86 kernel. The arm64 kprobe macros read
 * arguments from struct user_pt_regs (arch/arm64/include/uapi/asm/ptrace.h);
 * CO-RE relocates it against the running kernel's BTF. */
struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
} __attribute__((preserve_access_index));
#endif
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
};

/* Set from Go, before load and at any time after: 1 while nobody consumes
 * events, so that no record is written (the counters still count). One
 * load from the global data map per event. */
volatile __u8 events_off;

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

/* Counters per {netns, family, protocol}, read by the collector at scrape.
 * Not preallocated: a preallocated per-CPU hash reserves max_entries values
 * on every possible CPU up front (16,384 keys x 320 bytes is 5 MiB per CPU,
 * over 300 MiB on a 64-CPU node); this one costs 320 bytes per CPU per key
 * in use. max_entries is set from Go. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct ct_counter_key);
	__type(value, struct ct_counter_value);
} counters SEC(".maps");

/* Keys whose insert into counters failed. Preallocated: an insert fails
 * only when it is full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 256);
	__type(key, struct ct_counter_key);
	__type(value, struct ct_counter_value);
} counters_spill SEC(".maps");

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

/* Deletes claimed at the entry of nf_ct_delete, keyed by entry address.
 * Two CPUs can enter nf_ct_delete for the same entry (two ctnetlink deletes,
 * gc and a flush); only one passes the kernel's test_and_set_bit of
 * IPS_DYING, after the entry program ran. The first to insert the key here
 * counts the entry. on_created drops the key of a new entry at the same
 * address (slab reuse) while claims are on. Only the nf_ct_delete candidate
 * needs this: the others run after the kernel chose its winner. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 12); /* a claim matters for microseconds */
	__type(key, __u64);
	__type(value, __u8);
} claims SEC(".maps");

/* Set from Go after load when the nf_ct_delete candidate serves destroyed. */
volatile __u8 use_claims;

/* The start-up self-test's namespace while it runs (0 otherwise): counted,
 * left out of the event stream. */
volatile __u32 selftest_netns;

/* What an entry probe saw, for its return probe. */
struct inflight {
	__u64 ct;   /* struct nf_conn * (confirm: the one the skb carried) */
	__u64 skb;  /* struct sk_buff * (confirm) */
	__u64 net;  /* struct net * (allocation) */
	__u64 orig; /* const struct nf_conntrack_tuple * (allocation) */
	__u64 repl;
	__u64 reply_dir; /* confirm: the skb is in the reply direction */
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

/* Keyed by skb address (fentry) or probe_key() (kprobe). An LRU: a pair
 * whose return never came (the entry program ran just before detach, or a
 * task died in between) is evicted instead of filling the map. User space
 * attaches return programs before entry programs, so a return without its
 * entry is the only mismatch at attach, and it is counted. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
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
	e->family = (__u8)BPF_CORE_READ(orig, src.l3num);
	e->protocol = BPF_CORE_READ(orig, dst.protonum);
	/* The counters need no more: with no event consumer, skip the eleven
	 * reads of the tuples, mark, zone and state (make bench measures it). */
	if (events_off)
		return;
	if (bpf_core_field_exists(ct->mark))
		e->mark = BPF_CORE_READ(ct, mark);
	if (bpf_core_field_exists(ct->zone))
		e->zone = BPF_CORE_READ(ct, zone.id);
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
	if (v)
		return v;
	/* The allocator had nothing at hand (measured on 6.1: bpf_mem_alloc's
	 * per-CPU cache empty in softirq), or the map is full: the spill map
	 * is preallocated. Go sums both. */
	v = bpf_map_lookup_elem(&counters_spill, &key);
	if (v)
		return v;
	bpf_map_update_elem(&counters_spill, &key, &zero_counters, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&counters_spill, &key);
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
	if (events_off || (selftest_netns && e->netns == selftest_netns))
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
	if (use_claims)
		bpf_map_delete_elem(&claims, &key);
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

/* The entry an skb carries: skb->_nfct is the pointer with ctinfo in its
 * low 3 bits. */
static __always_inline __u64 skb_ct(struct sk_buff *skb, __u64 *ctinfo)
{
	__u64 nfct = BPF_CORE_READ(skb, _nfct);

	if (ctinfo)
		*ctinfo = nfct & ~NFCT_PTRMASK;
	return nfct & NFCT_PTRMASK;
}

/* Entry of __nf_conntrack_confirm: remember the entry the skb carries. */
static __always_inline void confirm_enter(__u64 key, struct sk_buff *skb)
{
	__u64 ctinfo = 0;
	struct inflight in = {
		.skb = (__u64)skb,
	};

	in.ct = skb_ct(skb, &ctinfo);
	/* A reply-direction skb (REJECT's RST or ICMP error attached to an
	 * unconfirmed entry) returns NF_ACCEPT at once without inserting. */
	in.reply_dir = ctinfo >= IP_CT_IS_REPLY;
	put_inflight(key, &in);
}

/* Exit of __nf_conntrack_confirm, from the entry the skb carried at entry
 * and the one it carries now:
 *   NF_DROP                         insert_failed (the kernel dropped it);
 *   the skb's entry was replaced    the clash was resolved to the entry
 *                                   that won (nf_ct_resolve_clash);
 *   same entry, IPS_CONFIRMED       inserted.
 * IPS_CONFIRMED alone cannot tell a clash loser from an inserted entry:
 * kernels before the 2025 fix "netfilter: nf_conntrack: fix crash due to
 * removal of uninitialised entry" set it before the clash check, later ones
 * after the insertion. A loser kept by nf_ct_resolve_clash_harder (NAT) is
 * inserted in the reply direction with IPS_NAT_CLASH: it is a clash
 * (the kernel's clash_resolve) and, where it is confirmed, an entry whose
 * removal will be seen, so it is counted as created too. */
static __always_inline void confirm_exit(void *ctx, __u64 key, int ret,
					 struct sk_buff *skb)
{
	struct inflight in;
	struct nf_conn *ct;
	__u32 status;

	if (!take_inflight(key, &in))
		return;
	ct = (struct nf_conn *)in.ct;
	if (!ct || in.reply_dir)
		return;
	if (!skb)
		skb = (struct sk_buff *)in.skb;
	if (ret == NF_DROP) {
		on_failed(ctx, ct, CT_FAIL_CONFIRM_DROP, ret);
		return;
	}
	if (skb_ct(skb, NULL) != in.ct) {
		on_failed(ctx, ct, CT_FAIL_CLASH_RESOLVED, ret);
		return;
	}
	status = BPF_CORE_READ(ct, status);
	if (status & IPS_NAT_CLASH)
		on_failed(ctx, ct, CT_FAIL_CLASH_RESOLVED, ret);
	if (status & IPS_CONFIRMED)
		on_created(ctx, ct);
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

/* Where a destroyed-candidate hook runs, relative to the kernel's
 * test_and_set_bit(IPS_DYING_BIT) that makes one caller the winner. */
enum delete_hook {
	/* After it, winner only, once per entry: __nf_ct_delete_from_lists,
	 * nf_ct_delete.part.N (its callers ran the test inline). */
	DELETE_WINNER,
	/* Before it, every caller: nf_ct_delete. IPS_DYING already set means
	 * an earlier caller won; two callers at once are told apart by claims. */
	DELETE_ENTRY,
	/* When the last reference goes: nf_ct_destroy / destroy_conntrack. Also
	 * runs for entries never inserted (clash losers, dropped packets):
	 * only an entry that was deleted (IPS_DYING) and confirmed counts. */
	DELETE_DESTROY,
};

/* A confirmed entry is removed. Removal happens even when nf_ct_delete
 * later returns false (undelivered destroy event), so entry programs are
 * used, not exits. */
static __always_inline void on_delete(void *ctx, struct nf_conn *ct,
				      enum delete_hook where)
{
	struct ct_event e = {};
	__u64 key = (__u64)ct;
	__u64 *start;
	__u32 st;

	fill_from_ct(&e, ct);
	st = e.status & (IPS_CONFIRMED | IPS_DYING);
	switch (where) {
	case DELETE_WINNER:
		if (!(st & IPS_CONFIRMED))
			return;
		break;
	case DELETE_ENTRY:
		if (st != IPS_CONFIRMED)
			return;
		break;
	case DELETE_DESTROY:
		if (st != (IPS_CONFIRMED | IPS_DYING))
			return;
		break;
	}
	if (where == DELETE_ENTRY) {
		__u8 one = 1;

		if (bpf_map_update_elem(&claims, &key, &one, BPF_NOEXIST))
			return; /* another CPU is deleting it */
	}
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

/* fentry / fexit: arguments are available at exit. Programs on functions
 * with more than one name across kernels are retargeted from Go
 * (ProgramSpec.AttachTo) to the name this kernel has. */

SEC("fentry/__nf_conntrack_confirm")
int BPF_PROG(fentry_confirm, struct sk_buff *skb)
{
	confirm_enter((__u64)skb, skb);
	return 0;
}

SEC("fexit/__nf_conntrack_confirm")
int BPF_PROG(fexit_confirm, struct sk_buff *skb, int ret)
{
	confirm_exit(ctx, (__u64)skb, ret, skb);
	return 0;
}

SEC("fexit/nf_conntrack_hash_check_insert")
int BPF_PROG(fexit_check_insert, struct nf_conn *ct, int ret)
{
	check_insert_exit(ctx, ct, ret);
	return 0;
}

SEC("fentry/__nf_ct_delete_from_lists")
int BPF_PROG(fentry_delete_from_lists, struct nf_conn *ct)
{
	on_delete(ctx, ct, DELETE_WINNER);
	return 0;
}

SEC("fentry/nf_ct_delete")
int BPF_PROG(fentry_delete, struct nf_conn *ct)
{
	on_delete(ctx, ct, DELETE_ENTRY);
	return 0;
}

/* struct nf_conntrack is the first member of struct nf_conn. */
SEC("fentry/nf_ct_destroy")
int BPF_PROG(fentry_destroy, struct nf_conntrack *nfct)
{
	on_delete(ctx, (struct nf_conn *)nfct, DELETE_DESTROY);
	return 0;
}

SEC("fexit/__nf_conntrack_alloc")
int BPF_PROG(fexit_alloc, struct net *net, const struct nf_conntrack_zone *zone,
	     const struct nf_conntrack_tuple *orig,
	     const struct nf_conntrack_tuple *repl)
{
	__u64 ret = 0;

	/* The verifier types the return value as a trusted struct nf_conn
	 * pointer, which cannot be narrowed to an errno: the helper (5.17)
	 * reads the raw value wherever the arguments end. User space leaves
	 * this program out on kernels without it. */
	bpf_get_func_ret(ctx, &ret);
	alloc_exit(ctx, net, orig, repl, (long)ret);
	return 0;
}

/* kprobe / kretprobe: arguments are stashed at entry, keyed by the task.
 * Attached by symbol from Go, which picks the name this kernel has. */

SEC("kprobe/__nf_conntrack_confirm")
int BPF_KPROBE(kprobe_confirm, struct sk_buff *skb)
{
	confirm_enter(probe_key(), skb);
	return 0;
}

SEC("kretprobe/__nf_conntrack_confirm")
int BPF_KRETPROBE(kretprobe_confirm, int ret)
{
	confirm_exit(ctx, probe_key(), ret, NULL);
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

SEC("kprobe/__nf_ct_delete_from_lists")
int BPF_KPROBE(kprobe_delete_from_lists, struct nf_conn *ct)
{
	on_delete(ctx, ct, DELETE_WINNER);
	return 0;
}

SEC("kprobe/nf_ct_delete")
int BPF_KPROBE(kprobe_delete, struct nf_conn *ct)
{
	on_delete(ctx, ct, DELETE_ENTRY);
	return 0;
}

/* nf_ct_delete.part.N: gcc's clone of nf_ct_delete without its first test;
 * its callers ran test_and_set_bit(IPS_DYING_BIT) inline, so it sees the
 * winner only. Same first argument (the wrapper tail-jumps to it with the
 * registers unchanged: objdump of Debian's 5.10.262 and 7.2.13). */
SEC("kprobe/nf_ct_delete.part.0")
int BPF_KPROBE(kprobe_delete_part, struct nf_conn *ct)
{
	on_delete(ctx, ct, DELETE_WINNER);
	return 0;
}

SEC("kprobe/nf_ct_destroy")
int BPF_KPROBE(kprobe_destroy, struct nf_conntrack *nfct)
{
	on_delete(ctx, (struct nf_conn *)nfct, DELETE_DESTROY);
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
