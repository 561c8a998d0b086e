/* Flood defences per tenant: UDP from amplification source ports, non-first
 * fragments, TCP state (SYN cookies, SYN-ACKs with no connection: see
 * tcp_state.h), and token-bucket limits (packets/s, bytes/s, SYNs/s,
 * fragments/s; the buckets are token_bucket.h). Policies live in
 * ew_flood_policies per tenant slot, so they change at run time without a
 * reload, each change swapped in whole (bpf/maps.h). */
#ifndef EW_FLOOD_H
#define EW_FLOOD_H

#include "maps.h"
#include "parse.h"
#include "tcp_state.h"
#include "token_bucket.h"

/* Bit of an amplification source port in ew_flood_policy.amplification_allowed, or -1. */
static __always_inline int amplification_port_bit(__u16 sport)
{
    switch (sport) {
    case 19: return EW_AMP_PORT_19;
    case 53: return EW_AMP_PORT_53;
    case 111: return EW_AMP_PORT_111;
    case 123: return EW_AMP_PORT_123;
    case 137: return EW_AMP_PORT_137;
    case 161: return EW_AMP_PORT_161;
    case 389: return EW_AMP_PORT_389;
    case 500: return EW_AMP_PORT_500;
    case 1900: return EW_AMP_PORT_1900;
    case 3283: return EW_AMP_PORT_3283;
    case 3702: return EW_AMP_PORT_3702;
    case 5353: return EW_AMP_PORT_5353;
    case 10001: return EW_AMP_PORT_10001;
    case 11211: return EW_AMP_PORT_11211;
    case 37810: return EW_AMP_PORT_37810;
    default: return -1;
    }
}

static __always_inline int limit_allows(__u32 slot, const struct ew_flood_policy *policy, __u32 kind, __u64 now,
                                        __u64 units)
{
    const struct ew_rate *limit = &policy->limits[kind & (EW_BUCKET_KINDS - 1)];
    __u32 key = slot * EW_BUCKET_KINDS + (kind & (EW_BUCKET_KINDS - 1));
    struct ew_bucket *bucket;
    struct ew_bucket_share *share;

    if (limit->rate == 0 && limit->burst == 0)
        return 1;
    bucket = bpf_map_lookup_elem(&ew_buckets, &key);
    share = bpf_map_lookup_elem(&ew_bucket_shares, &key);
    if (!bucket)
        return 1;
    /* An engine without per-CPU shares (the DPDK build) takes from the bucket itself. */
    return share ? share_take(share, bucket, limit, now, units, policy->generation)
                 : bucket_take(bucket, limit, now, units, policy->generation);
}

/* Clears the host bits of the first `prefixlen` bits of an address. */
static __always_inline void mask_prefix(__u8 *addr, __u32 bytes, __u32 prefixlen)
{
#pragma unroll
    for (__u32 i = 0; i < 16; i++) {
        if (i >= bytes)
            break;
        if (i * 8 >= prefixlen)
            addr[i] = 0;
        else if (i * 8 + 8 > prefixlen)
            addr[i] &= (__u8)(0xff << (8 - (prefixlen - i * 8)));
    }
}

/* The per-source bucket in the LRU hash ew_source_buckets: IPv6 sources, and
 * IPv4 ones in an engine without ew_source_ways_v4 (the DPDK build). The key
 * carries the policy's generation: a new policy finds none of the old
 * buckets. A prefix seen for the first time (or evicted) is judged on a full
 * bucket, inserted already spent (no second lookup); only when another CPU
 * inserted the same prefix meanwhile is it judged again, on that one. */
static __always_inline int source_allows_lru(const struct packet_facts *f, __u32 slot,
                                             const struct ew_flood_policy *policy, __u64 now)
{
    struct ew_source_key key = { .slot = slot, .family = f->family, .generation = (__u16)policy->generation };
    struct ew_source_bucket *bucket, fresh = {};
    int allowed;

    if (f->family == EW_FAMILY_IPV4) {
        key.prefixlen = policy->source_prefix_v4;
        __builtin_memcpy(key.prefix, &f->saddr.v4, 4);
        mask_prefix(key.prefix, 4, key.prefixlen);
    } else {
        key.prefixlen = policy->source_prefix_v6;
        __builtin_memcpy(key.prefix, &f->saddr.v6, 16);
        mask_prefix(key.prefix, 16, key.prefixlen);
    }
    bucket = bpf_map_lookup_elem(&ew_source_buckets, &key);
    if (!bucket) {
        allowed = token_take(&fresh.tokens, &fresh.last_ns, &policy->per_source, now, 1);
        if (bpf_map_update_elem(&ew_source_buckets, &key, &fresh, BPF_NOEXIST) == 0)
            return allowed;
        bucket = bpf_map_lookup_elem(&ew_source_buckets, &key);
        if (!bucket)
            return allowed;
    }
    return token_take(&bucket->tokens, &bucket->last_ns, &policy->per_source, now, 1);
}

/* The first way of the set of a (slot, IPv4 prefix) tag in
 * ew_source_ways_v4: the top bits of a multiplicative (Fibonacci) hash. */
static __always_inline __u32 source_set_v4(__u64 tag)
{
    return (__u32)((tag * 0x9E3779B97F4A7C15ULL) >> (64 - EW_SOURCE_SETS_V4_BITS)) * EW_SOURCE_WAYS_V4;
}

/* An IPv4 source's bucket: an inlined array lookup per way of its set (a
 * lookup, not pointer arithmetic on one value, which the verifier refuses
 * without CAP_PERFMON when the offset differs by path), the first way
 * first, which is where a set's only prefix is. A prefix not in its set
 * takes a free way, else the one refilled least recently, which starts
 * over full (an eviction, as in an LRU: the set is its LRU list). A way of
 * another policy generation starts over full where it is. */
static __always_inline int source_allows_v4(const struct packet_facts *f, __u32 slot,
                                            const struct ew_flood_policy *policy, __u64 now)
{
    __u32 prefixlen = policy->source_prefix_v4 < 32 ? policy->source_prefix_v4 : 32;
    /* The top `prefixlen` of 32 bits, for 0..32 without a shift by 32. */
    __u32 mask = (__u32)(0xffffffff00000000ULL >> prefixlen);
    __u64 tag = (__u64)slot << 32 | (__u32)(f->saddr.v4 & bpf_htonl(mask));
    __u32 first = source_set_v4(tag), index = first, victim = first;
    struct ew_source_way_v4 *way = bpf_map_lookup_elem(&ew_source_ways_v4, &index);
    __u64 oldest;

    if (!way)
        return source_allows_lru(f, slot, policy, now);
    if (way->tag == tag && way->generation)
        goto found;
    oldest = way->generation ? way->last_ns : 0;    /* a free way goes first */
#pragma unroll
    for (__u32 i = 1; i < EW_SOURCE_WAYS_V4; i++) {
        __u64 age;

        index = first + i;
        way = bpf_map_lookup_elem(&ew_source_ways_v4, &index);
        if (!way)
            return 1;
        if (way->tag == tag && way->generation)
            goto found;
        age = way->generation ? way->last_ns : 0;
        if (age < oldest) {
            oldest = age;
            victim = index;
        }
    }
    way = bpf_map_lookup_elem(&ew_source_ways_v4, &victim);
    if (!way)
        return 1;
    way->tag = tag;
    way->generation = policy->generation;     /* never 0 (agent/datapath/compile.py with_generation) */
    way->tokens = 0;
    way->last_ns = 0;
    return token_take(&way->tokens, &way->last_ns, &policy->per_source, now, 1);
found:
    if (way->generation != policy->generation) {
        way->generation = policy->generation;
        way->tokens = 0;
        way->last_ns = 0;
    }
    return token_take(&way->tokens, &way->last_ns, &policy->per_source, now, 1);
}

/* Per-source limits take no lock (the LRU cannot hold one, and the array
 * is written in place): CPUs updating the same prefix at once may lose an
 * update, so a per-source limit is approximate under a multi-queue flood
 * from one prefix; two CPUs taking the same way for two new prefixes at
 * once leave it to one of them, the other starting over full at its next
 * packet (as if evicted). Tenant-wide limits stay within their bound
 * (token_bucket.h share_take). */
static __always_inline int source_allows(const struct packet_facts *f, __u32 slot,
                                         const struct ew_flood_policy *policy, __u64 now)
{
    if (policy->per_source.rate == 0 && policy->per_source.burst == 0)
        return 1;
    if (f->family == EW_FAMILY_IPV4)
        return source_allows_v4(f, slot, policy, now);
    return source_allows_lru(f, slot, policy, now);
}

#define EW_FLOOD_TCP_STATE (EW_FLOOD_SYN_COOKIES | EW_FLOOD_SYN_ACK_DROP | EW_FLOOD_SYN_ACK_TRACK)

/* The flood verdict for a packet that passed every block rule: a drop,
 * ANSWER_SYN_COOKIE (the caller builds the answer), or PASS. */
static __always_inline __u32 flood_verdict(struct xdp_md *ctx, const struct packet_facts *f, __u32 slot)
{
    /* Read once: every decision below is the one version's. */
    const struct ew_flood_policy *policy = current_flood_policy(slot);
    __u64 now;

    if (!policy)
        return EW_REASON_PASS_ALLOWED;
    if ((policy->flags & EW_FLOOD_DROP_AMPLIFICATION) && f->l4_parsed && f->l4_proto == IPPROTO_UDP) {
        int bit = amplification_port_bit(bpf_ntohs(f->sport));

        if (bit >= 0 && !(policy->amplification_allowed & (1U << (bit & 31))))
            return EW_REASON_DROP_AMPLIFICATION;
    }
    if (f->fragment == EW_NONFIRST_FRAGMENT && (policy->flags & EW_FLOOD_DROP_FRAGMENTS))
        return EW_REASON_DROP_FRAGMENT;
    if ((policy->flags & EW_FLOOD_TCP_STATE) && f->l4_proto == IPPROTO_TCP &&
        (f->l4_parsed || f->fragment == EW_NONFIRST_FRAGMENT)) {
        /* Inline what needs no state; only cookie mode and SYN-ACK tracking
         * pay for the call (conntrack, cookie check). */
        int syn_ack = f->l4_parsed && is_syn_ack(f->tcp_flags);
        __u32 reason;

        if (syn_ack && (policy->flags & EW_FLOOD_SYN_ACK_DROP))
            return EW_REASON_DROP_SYN_ACK;
        if (syn_ack && (policy->flags & EW_FLOOD_SYN_ACK_TRACK)) {
            reason = tcp_state_verdict(ctx, f, policy->flags);
            if (reason != EW_REASON_PASS_ALLOWED)
                return reason;
        }
        /* No server needs a TCP fragment before a connection exists, and a
         * non-first one has no header to check a connection or cookie by. */
        if ((policy->flags & EW_FLOOD_SYN_COOKIES) && f->fragment != EW_NOT_FRAGMENT)
            return EW_REASON_DROP_BAD_COOKIE;
        if (!syn_ack && (policy->flags & EW_FLOOD_SYN_COOKIES)) {
            reason = tcp_state_verdict(ctx, f, policy->flags);
            if (reason != EW_REASON_PASS_ALLOWED)
                return reason;
        }
    }
    if (!(policy->flags & EW_FLOOD_HAS_LIMITS))     /* the clock is not free: only read it when needed */
        return wants_syn_cookie(f, policy->flags) ? EW_REASON_ANSWER_SYN_COOKIE : EW_REASON_PASS_ALLOWED;
    now = (policy->flags & EW_FLOOD_COARSE_CLOCK) ? bpf_ktime_get_coarse_ns() : bpf_ktime_get_ns();
    /* Per-source tokens first, so that one (spoofed) prefix over its own
     * limit spends none of the tenant's; bytes before packets, so that a
     * packet the byte limit drops spends no packet token. */
    if (!source_allows(f, slot, policy, now))
        return EW_REASON_DROP_SOURCE_RATE;
    if (f->traffic_class == EW_CLASS_TCP_SYN && !limit_allows(slot, policy, EW_BUCKET_SYN, now, 1))
        return EW_REASON_DROP_SYN_RATE;
    if (f->fragment == EW_NONFIRST_FRAGMENT && (policy->flags & EW_FLOOD_LIMIT_FRAGMENTS) &&
        !limit_allows(slot, policy, EW_BUCKET_FRAGMENTS, now, 1))
        return EW_REASON_DROP_FRAGMENT;
    if (!limit_allows(slot, policy, EW_BUCKET_BYTES, now, f->length) ||
        !limit_allows(slot, policy, EW_BUCKET_PACKETS, now, 1))
        return EW_REASON_DROP_RATE_LIMIT;
    return wants_syn_cookie(f, policy->flags) ? EW_REASON_ANSWER_SYN_COOKIE : EW_REASON_PASS_ALLOWED;
}

#endif /* EW_FLOOD_H */
