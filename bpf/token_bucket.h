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

/* Takes `units` from a bucket (*tokens, *last_ns) if it holds them. A bucket
 * never used (last_ns 0) starts full; a clock that did not move forward
 * refills nothing; a refill is capped at the burst before multiplying, so
 * no product can overflow (rates and bursts are at most 1e10, enforced by
 * agent/policy/model.py). Returns 1 if the packet may pass. */
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

#endif /* EW_TOKEN_BUCKET_H */
