/* Benchmark baseline: the least an XDP program can do, drop everything.
 * benchmarks/bench_datapath.py compiles it into a temporary directory. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
    return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
