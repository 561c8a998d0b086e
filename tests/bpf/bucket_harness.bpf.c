/* Test harness: runs bucket_take() from bpf/token_bucket.h on bucket 0 of
 * ew_buckets with the clock, limit, cost and policy generation taken from
 * the frame, so tests can drive the arithmetic through boundaries, clock
 * jumps and policy changes. */
#include "maps.h"
#include "token_bucket.h"

struct harness_input {
    __u64 now;
    __u64 rate;
    __u64 burst;
    __u64 units;
    __u64 generation;
};

SEC("xdp")
int bucket_harness(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct harness_input *in = data + 14;   /* behind an Ethernet-sized header */
    struct ew_rate limit;
    struct ew_bucket *bucket;
    __u32 zero = 0;

    if ((void *)(in + 1) > data_end)
        return XDP_ABORTED;
    bucket = bpf_map_lookup_elem(&ew_buckets, &zero);
    if (!bucket)
        return XDP_ABORTED;
    limit.rate = in->rate;
    limit.burst = in->burst;
    return bucket_take(bucket, &limit, in->now, in->units, (__u32)in->generation) ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
