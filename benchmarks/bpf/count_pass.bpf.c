/* Benchmark baseline: the least an accounting XDP program can do, count
 * packets and bytes in a per-CPU array and pass.
 * benchmarks/bench_datapath.py compiles it into a temporary directory. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct pkt_counter {
    __u64 packets;
    __u64 bytes;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct pkt_counter);
} count_pass_counters SEC(".maps");

SEC("xdp")
int count_pass(struct xdp_md *ctx)
{
    __u32 key = 0;
    struct pkt_counter *c = bpf_map_lookup_elem(&count_pass_counters, &key);

    if (c) {
        c->packets += 1;
        c->bytes += ctx->data_end - ctx->data;
    }
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
