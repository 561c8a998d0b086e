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


/* Shares indexed by a CPU number the frame names, so that tests can play
 * several CPUs in one thread (the datapath's ew_bucket_shares is per-CPU). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, struct ew_bucket_share);
} harness_shares SEC(".maps");

struct share_input {
    struct harness_input bucket;
    __u64 cpu;
};

/* share_take() on bucket 0 of ew_buckets and the share of in->cpu. */
SEC("xdp")
int share_harness(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct share_input *in = data + 14;
    struct ew_rate limit;
    struct ew_bucket *bucket;
    struct ew_bucket_share *share;
    __u32 zero = 0, cpu;

    if ((void *)(in + 1) > data_end)
        return XDP_ABORTED;
    cpu = (__u32)in->cpu;
    bucket = bpf_map_lookup_elem(&ew_buckets, &zero);
    share = bpf_map_lookup_elem(&harness_shares, &cpu);
    if (!bucket || !share)
        return XDP_ABORTED;
    limit.rate = in->bucket.rate;
    limit.burst = in->bucket.burst;
    return share_take(share, bucket, &limit, in->bucket.now, in->bucket.units, (__u32)in->bucket.generation)
               ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
