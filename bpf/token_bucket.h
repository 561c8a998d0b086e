/* Token buckets: the arithmetic of every rate limit (bpf/flood.h), on its
 * own so that a test harness can drive it without the rest of the datapath.
 * agent/reference.py TokenBucket is the same arithmetic in Python. */
#ifndef EW_TOKEN_BUCKET_H
#define EW_TOKEN_BUCKET_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "edgewarden_abi.h"

#define EW_NS_PER_SECOND 1000000000ULL
/* Below this many ns since the last refill, the refill is a plain multiply
 * (rates are at most 1e10 < 2^34, enforced by agent/policy/model.py). */
#define EW_REFILL_MULTIPLY_NS (1ULL << 30)

/* Refills a bucket (*tokens, *last_ns) to `now` and returns its tokens. A
 * bucket never used (last_ns 0) starts full; a clock that did not move
 * forward refills nothing; a refill is capped at the burst before
 * multiplying, so no product can overflow (rates and bursts are at most
 * 1e10, enforced by agent/policy/model.py). */
static __always_inline __u64 token_refill(__u64 *tokens_p, __u64 *last_ns_p, const struct ew_rate *limit, __u64 now)
{
    __u64 capacity = limit->burst * EW_NS_PER_SECOND;
    __u64 rate = limit->rate, tokens, room, elapsed;

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
    return tokens;
}

/* Takes `units` from a bucket (*tokens, *last_ns) if it holds them after
 * its refill. Returns 1 if the packet may pass. */
static __always_inline int token_take(__u64 *tokens_p, __u64 *last_ns_p, const struct ew_rate *limit, __u64 now,
                                      __u64 units)
{
    __u64 cost = units * EW_NS_PER_SECOND, tokens = token_refill(tokens_p, last_ns_p, limit, now);
    int allowed = 0;

    if (tokens >= cost) {
        tokens -= cost;
        allowed = 1;
    }
    *tokens_p = tokens;
    return allowed;
}

/* A tenant-wide bucket, shared by all CPUs: exact, under its lock. One
 * left by another policy generation starts over, full. (The datapath takes
 * from it through share_take below.) */
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

/* A CPU takes tokens from a tenant-wide bucket in batches of rate / 2^8
 * units (at least 1, at most the burst): 2 CPUs hold at most 0.8% of a
 * second's rate between them. */
#define EW_SHARE_BATCH_SHIFT 8

static __always_inline __u64 share_batch(const struct ew_rate *limit)
{
    __u64 batch = limit->rate >> EW_SHARE_BATCH_SHIFT;

    if (batch == 0)
        batch = 1;
    if (batch > limit->burst)
        batch = limit->burst;
    return batch * EW_NS_PER_SECOND;
}

/* A tenant-wide limit without a lock per packet: the CPU spends its own
 * share (struct ew_bucket_share, per-CPU) and only takes the shared
 * bucket's lock to refill it, by at least a batch. When the shared bucket
 * could not cover a packet, the share remembers when and what it held:
 * until it can have gained enough at the rate to cover the next packet
 * (other CPUs only take from it), that packet is dropped without the lock.
 * Tokens move only when the shared bucket covers the packet, so with
 * batches of one unit (rates below 2^8 per second) the limit is exactly
 * bucket_take's. Error bound: tokens in the shares are spent by their CPU
 * only, at most one batch per CPU, so over any interval the tenant passes
 * within ncpus x batch units of the exact bucket (agent/reference.py
 * SharedBucket is the same algorithm). */
static __always_inline int share_take(struct ew_bucket_share *share, struct ew_bucket *b,
                                      const struct ew_rate *limit, __u64 now, __u64 units, __u32 generation)
{
    __u64 cost = units * EW_NS_PER_SECOND, deficit, want, shared, got = 0;

    if (share->generation != generation) {
        share->generation = generation;
        share->tokens = 0;
        share->dry_ns = 0;
        share->dry_tokens = 0;
    }
    if (share->tokens >= cost) {
        share->tokens -= cost;
        return 1;
    }
    deficit = cost - share->tokens;
    if (share->dry_ns) {
        /* At most what it held then plus the refill since (the clock never
         * refills backwards; a long gap is worth a look under the lock). */
        __u64 since = now > share->dry_ns ? now - share->dry_ns : 0;

        if (since < EW_REFILL_MULTIPLY_NS && share->dry_tokens + since * limit->rate < deficit)
            return 0;
    }
    want = share_batch(limit);
    if (want < deficit)
        want = deficit;
    bpf_spin_lock(&b->lock);
    if (b->generation != generation) {
        b->generation = generation;
        b->tokens = 0;
        b->last_ns = 0;
    }
    shared = token_refill(&b->tokens, &b->last_ns, limit, now);
    if (shared >= deficit)
        got = shared < want ? shared : want;
    b->tokens = shared - got;
    bpf_spin_unlock(&b->lock);
    if (got) {
        share->tokens += got - cost;
        share->dry_ns = 0;
        return 1;
    }
    share->dry_ns = now;
    share->dry_tokens = shared;
    return 0;
}

#endif /* EW_TOKEN_BUCKET_H */
