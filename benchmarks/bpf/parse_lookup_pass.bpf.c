/* Benchmark baseline: the floor for any datapath that attributes traffic to
 * tenants. edgewarden's own parser (bpf/parse.h), one hash lookup on the
 * destination address, one per-CPU array count by what it found, pass.
 * benchmarks/bench_datapath.py compiles it into a temporary directory and
 * fills the destination map with the benchmark policy's IPv4 VIPs. */
#include "parse.h"

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, EW_MAX_VIPS);
    __type(key, __u32);
    __type(value, __u32);           /* counter slot */
} plp_destinations SEC(".maps");

struct plp_counter {
    __u64 packets;
    __u64 bytes;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, struct plp_counter);
} plp_counters SEC(".maps");

/* Like edgewarden's ew_packet_verdict: the slot comes out of a global
 * function, so the verifier sees a plain integer when it indexes the
 * counters (no CAP_PERFMON needed). */
__noinline __u32 plp_slot(struct packet_facts *facts, __u32 parsed)
{
    __u32 *slot, daddr;

    if (!facts || parsed != EW_PARSED_IP || facts->family != EW_FAMILY_IPV4)
        return 0;
    daddr = facts->daddr.v4;
    slot = bpf_map_lookup_elem(&plp_destinations, &daddr);
    return slot ? *slot : 0;
}

SEC("xdp")
int parse_lookup_pass(struct xdp_md *ctx)
{
    struct packet_facts facts = {};
    __u32 slot = plp_slot(&facts, parse_packet(ctx, &facts));
    struct plp_counter *c = bpf_map_lookup_elem(&plp_counters, &slot);

    if (c) {
        c->packets += 1;
        c->bytes += facts.length;
    }
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
