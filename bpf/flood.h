/* Flood defences per tenant: UDP from amplification source ports, non-first
 * fragments, and token-bucket limits (packets/s, bytes/s, SYNs/s,
 * fragments/s). Policies live in ew_flood_policies per tenant slot, so they
 * change at run time without a reload. agent/reference.py TokenBucket is the
 * same arithmetic in Python. */
#ifndef EW_FLOOD_H
#define EW_FLOOD_H

#include "maps.h"
#include "parse.h"

#define EW_NS_PER_SECOND 1000000000ULL

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

/* Takes `units` from the bucket if it holds them. A bucket never used
 * (last_ns 0) starts full; a clock that did not move forward refills
 * nothing; a refill is capped at the burst before multiplying, so no
 * product can overflow (rates and bursts are at most 1e10, see policy
 * validation). Returns 1 if the packet may pass. */
static __always_inline int bucket_take(struct ew_bucket *b, const struct ew_rate *limit, __u64 now, __u64 units)
{
    __u64 capacity = limit->burst * EW_NS_PER_SECOND, cost = units * EW_NS_PER_SECOND;
    __u64 rate = limit->rate, tokens, room, elapsed;
    int allowed = 0;

    bpf_spin_lock(&b->lock);
    tokens = b->tokens < capacity ? b->tokens : capacity;
    if (b->last_ns == 0) {
        tokens = capacity;
        b->last_ns = now;
    } else if (now > b->last_ns) {
        elapsed = now - b->last_ns;
        room = capacity - tokens;
        if (rate && elapsed >= (room + rate - 1) / rate)
            tokens = capacity;
        else
            tokens += elapsed * rate;
        b->last_ns = now;
    }
    if (tokens >= cost) {
        tokens -= cost;
        allowed = 1;
    }
    b->tokens = tokens;
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
    return !bucket || bucket_take(bucket, limit, now, units);
}

/* The flood verdict for a packet that passed every block rule, or PASS. */
static __always_inline __u32 flood_verdict(const struct packet_facts *f, __u32 slot)
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
    if (!(policy->flags & EW_FLOOD_HAS_LIMITS))
        return EW_REASON_PASS_ALLOWED;      /* the clock is not free: only read it when needed */
    now = bpf_ktime_get_ns();
    if (f->traffic_class == EW_CLASS_TCP_SYN && !limit_allows(slot, policy, EW_BUCKET_SYN, now, 1))
        return EW_REASON_DROP_SYN_RATE;
    if (f->fragment == EW_NONFIRST_FRAGMENT && (policy->flags & EW_FLOOD_LIMIT_FRAGMENTS) &&
        !limit_allows(slot, policy, EW_BUCKET_FRAGMENTS, now, 1))
        return EW_REASON_DROP_FRAGMENT;
    if (!limit_allows(slot, policy, EW_BUCKET_PACKETS, now, 1) ||
        !limit_allows(slot, policy, EW_BUCKET_BYTES, now, f->length))
        return EW_REASON_DROP_RATE_LIMIT;
    return EW_REASON_PASS_ALLOWED;
}

#endif /* EW_FLOOD_H */
