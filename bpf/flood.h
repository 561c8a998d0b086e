/* Flood defences per tenant: UDP from amplification source ports, non-first
 * fragments, TCP state (SYN cookies, SYN-ACKs with no connection: see
 * tcp_state.h), and token-bucket limits (packets/s, bytes/s, SYNs/s,
 * fragments/s). Policies live in ew_flood_policies per tenant slot, so they
 * change at run time without a reload. agent/reference.py TokenBucket is the
 * same arithmetic in Python. */
#ifndef EW_FLOOD_H
#define EW_FLOOD_H

#include "maps.h"
#include "parse.h"
#include "tcp_state.h"

#define EW_NS_PER_SECOND 1000000000ULL
/* Below this many ns since the last refill, the refill is a plain multiply
 * (rates are at most 1e10 < 2^34, see policy validation). */
#define EW_REFILL_MULTIPLY_NS (1ULL << 30)

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

/* Takes `units` from a bucket (*tokens, *last_ns) if it holds them. A bucket
 * never used (last_ns 0) starts full; a clock that did not move forward
 * refills nothing; a refill is capped at the burst before multiplying, so
 * no product can overflow (rates and bursts are at most 1e10, see policy
 * validation). Returns 1 if the packet may pass. */
static __always_inline int token_take(__u64 *tokens_p, __u64 *last_ns_p, const struct ew_rate *limit, __u64 now,
                                      __u64 units)
{
    __u64 capacity = limit->burst * EW_NS_PER_SECOND, cost = units * EW_NS_PER_SECOND;
    __u64 rate = limit->rate, tokens, room, elapsed;
    int allowed = 0;

    tokens = *tokens_p < capacity ? *tokens_p : capacity;
    if (*last_ns_p == 0) {
        tokens = capacity;
        *last_ns_p = now;
    } else if (now > *last_ns_p) {
        elapsed = now - *last_ns_p;
        room = capacity - tokens;
        if (elapsed < EW_REFILL_MULTIPLY_NS) {
            /* The usual case under load: elapsed * rate < 2^30 * 2^34 cannot
             * overflow, and no division is needed. */
            __u64 refill = elapsed * rate;

            tokens = refill >= room ? capacity : tokens + refill;
        } else if (rate && elapsed >= (room + rate - 1) / rate) {
            tokens = capacity;
        } else {
            tokens += elapsed * rate;
        }
        *last_ns_p = now;
    }
    if (tokens >= cost) {
        tokens -= cost;
        allowed = 1;
    }
    *tokens_p = tokens;
    return allowed;
}

/* A tenant-wide bucket, shared by all CPUs: exact, under its lock. One
 * left by another policy generation starts over, full. */
static __always_inline int bucket_take(struct ew_bucket *b, const struct ew_rate *limit, __u64 now, __u64 units,
                                       __u32 generation)
{
    int allowed;

    bpf_spin_lock(&b->lock);
    if (b->generation != generation) {
        b->generation = generation;
        b->tokens = 0;
        b->last_ns = 0;
    }
    allowed = token_take(&b->tokens, &b->last_ns, limit, now, units);
    bpf_spin_unlock(&b->lock);
    return allowed;
}

static __always_inline int limit_allows(__u32 slot, const struct ew_flood_policy *policy, __u32 kind, __u64 now,
                                        __u64 units)
{
    const struct ew_rate *limit = &policy->limits[kind & (EW_BUCKET_KINDS - 1)];
    __u32 key = slot * EW_BUCKET_KINDS + (kind & (EW_BUCKET_KINDS - 1));
    struct ew_bucket *bucket;

    if (limit->rate == 0 && limit->burst == 0)
        return 1;
    bucket = bpf_map_lookup_elem(&ew_buckets, &key);
    return !bucket || bucket_take(bucket, limit, now, units, policy->generation);
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

static __always_inline int source_allows(const struct packet_facts *f, __u32 slot,
                                         const struct ew_flood_policy *policy, __u64 now)
{
    struct ew_source_key key = { .slot = slot, .family = f->family, .generation = (__u16)policy->generation };
    struct ew_source_bucket *bucket;

    if (policy->per_source.rate == 0 && policy->per_source.burst == 0)
        return 1;
    if (f->family == EW_FAMILY_IPV4) {
        const struct iphdr *ip = f->l3;

        key.prefixlen = policy->source_prefix_v4;
        __builtin_memcpy(key.prefix, &ip->saddr, 4);
        mask_prefix(key.prefix, 4, key.prefixlen);
    } else {
        const struct ipv6hdr *ip6 = f->l3;

        key.prefixlen = policy->source_prefix_v6;
        __builtin_memcpy(key.prefix, &ip6->saddr, 16);
        mask_prefix(key.prefix, 16, key.prefixlen);
    }
    bucket = bpf_map_lookup_elem(&ew_source_buckets, &key);
    if (!bucket) {
        struct ew_source_bucket fresh = {};

        bpf_map_update_elem(&ew_source_buckets, &key, &fresh, BPF_NOEXIST);
        bucket = bpf_map_lookup_elem(&ew_source_buckets, &key);
        if (!bucket)
            return 1;
    }
    /* No lock (LRU maps cannot hold one): CPUs updating the same prefix at
     * once may lose an update, so a per-source limit is approximate under
     * a multi-queue flood from one prefix; tenant-wide limits stay exact. */
    return token_take(&bucket->tokens, &bucket->last_ns, &policy->per_source, now, 1);
}

#define EW_FLOOD_TCP_STATE (EW_FLOOD_SYN_COOKIES | EW_FLOOD_SYN_ACK_DROP | EW_FLOOD_SYN_ACK_TRACK)

/* The flood verdict for a packet that passed every block rule: a drop,
 * ANSWER_SYN_COOKIE (the caller builds the answer), or PASS. */
static __always_inline __u32 flood_verdict(struct xdp_md *ctx, const struct packet_facts *f, __u32 slot)
{
    const struct ew_flood_policy *policy = bpf_map_lookup_elem(&ew_flood_policies, &slot);
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
    if ((policy->flags & EW_FLOOD_TCP_STATE) && f->l4_parsed && f->l4_proto == IPPROTO_TCP) {
        /* Inline what needs no state; only cookie mode and SYN-ACK tracking
         * pay for the call (conntrack, cookie check). */
        int syn_ack = is_syn_ack(f->tcp_flags);

        if (syn_ack && (policy->flags & EW_FLOOD_SYN_ACK_DROP))
            return EW_REASON_DROP_SYN_ACK;
        if ((syn_ack && (policy->flags & EW_FLOOD_SYN_ACK_TRACK)) ||
            (!syn_ack && (policy->flags & EW_FLOOD_SYN_COOKIES))) {
            __u32 reason = tcp_state_verdict(ctx, f, policy->flags);

            if (reason != EW_REASON_PASS_ALLOWED)
                return reason;
        }
    }
    if (!(policy->flags & EW_FLOOD_HAS_LIMITS))     /* the clock is not free: only read it when needed */
        return wants_syn_cookie(f, policy->flags) ? EW_REASON_ANSWER_SYN_COOKIE : EW_REASON_PASS_ALLOWED;
    now = bpf_ktime_get_ns();
    if (f->traffic_class == EW_CLASS_TCP_SYN && !limit_allows(slot, policy, EW_BUCKET_SYN, now, 1))
        return EW_REASON_DROP_SYN_RATE;
    if (f->fragment == EW_NONFIRST_FRAGMENT && (policy->flags & EW_FLOOD_LIMIT_FRAGMENTS) &&
        !limit_allows(slot, policy, EW_BUCKET_FRAGMENTS, now, 1))
        return EW_REASON_DROP_FRAGMENT;
    if (!source_allows(f, slot, policy, now))
        return EW_REASON_DROP_SOURCE_RATE;
    if (!limit_allows(slot, policy, EW_BUCKET_PACKETS, now, 1) ||
        !limit_allows(slot, policy, EW_BUCKET_BYTES, now, f->length))
        return EW_REASON_DROP_RATE_LIMIT;
    return wants_syn_cookie(f, policy->flags) ? EW_REASON_ANSWER_SYN_COOKIE : EW_REASON_PASS_ALLOWED;
}

#endif /* EW_FLOOD_H */
