/* edgewarden XDP program: parse, find the tenant, decide, account. */
#include "parse.h"
#include "maps.h"
#include "account.h"
#include "verdict.h"
#include "sample.h"

/* Global functions, defined here so that a header never defines a
 * non-static function. Each is verified once, with its arguments as plain
 * values, not once per path of its caller: see verdict.h and tcp_state.h
 * for why each is one. */
/* Every packet's reason comes out of this one, IP or not: to the caller it
 * is then a plain integer, and so are the traffic class and tenant slot it
 * leaves in *facts and *tenant, which account_packet indexes the counters
 * by (see account.h). */
__noinline __u32 ew_packet_verdict(struct xdp_md *ctx, struct packet_facts *facts, struct tenant_facts *tenant,
                                   __u32 parsed)
{
    if (!facts || !tenant)
        return EW_REASON_DROP_MALFORMED;
    switch (parsed) {
    case EW_PARSED_IP:
        return ip_verdict(ctx, facts, tenant);
    case EW_PARSED_NON_IP:
        return EW_REASON_PASS_NON_IP;
    default:
        return EW_REASON_DROP_MALFORMED;
    }
}

__noinline __u32 ew_vip_tenant_v4(__u32 daddr, __u32 checks, __u32 proto, __u32 port, struct tenant_facts *out)
{
    if (!out)
        return 0;
    return vip_tenant_v4(daddr, checks, proto, port, out);
}

__noinline __u32 ew_tcp_state_verdict(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family,
                                      __u32 policy_flags)
{
    return tcp_state_checks(ctx, l3_offset, l4_offset, family, policy_flags);
}

__noinline __u32 ew_answer_syn_cookie(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family)
{
    return build_syn_cookie_answer(ctx, l3_offset, l4_offset, family);
}

/* The packet's facts and tenant head live in a per-CPU map value, not on
 * the stack. Loaded without CAP_PERFMON, the verifier puts a speculation
 * barrier (lfence on x86) after every stack store into a slot it does not
 * know to hold plain data (Spectre v4): zeroing the two structs, every
 * field the parser then wrote over them and the tenant head the verdict
 * copied in were ~30 barriers a packet, most of what the hardened
 * service's pass path cost (benchmarks/RESULTS.md, "Pass path fixed
 * costs"). Stores to a map value take none: it never holds stale kernel
 * data. XDP does not nest on a CPU, so the CPU's value is this packet's
 * own for the whole run. (The DPDK worker's is a thread's, native/dpdk.) */
struct ew_packet_scratch {
    struct packet_facts facts;
    struct tenant_facts tenant;
} __attribute__((aligned(8)));  /* zeroed by 8-byte stores */

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ew_packet_scratch);
} ew_packet_scratch SEC(".maps");

/* Frags-aware: attachable to interfaces with jumbo MTU; headers are read
 * from the linear part, or by offset (parse.h). */
SEC("xdp.frags")
int edgewarden_xdp(struct xdp_md *ctx)
{
    /* A key in .rodata: one stack store (and barrier) fewer. */
    static const __u32 zero_key = 0;
    struct ew_packet_scratch *s = bpf_map_lookup_elem(&ew_packet_scratch, &zero_key);
    __u32 reason;

    if (!s)     /* cannot happen: a per-CPU array always holds its index 0 */
        return XDP_ABORTED;
    __builtin_memset(s, 0, sizeof(*s));
    reason = ew_packet_verdict(ctx, &s->facts, &s->tenant, parse_packet(ctx, &s->facts));
    sample_packet(ctx, &s->tenant, reason, s->facts.length);
    account_packet(&s->tenant.slot, s->facts.traffic_class, reason, s->facts.length);
    return reason_action(reason);
}

char LICENSE[] SEC("license") = "GPL";
