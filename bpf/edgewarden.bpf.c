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

/* Frags-aware: attachable to interfaces with jumbo MTU; headers are read
 * from the linear part, or by offset (parse.h). */
SEC("xdp.frags")
int edgewarden_xdp(struct xdp_md *ctx)
{
    struct packet_facts facts = {};
    struct tenant_facts tenant = {};
    __u32 reason;

    reason = ew_packet_verdict(ctx, &facts, &tenant, parse_packet(ctx, &facts));
    sample_packet(ctx, &tenant, reason, facts.length);
    account_packet(tenant.slot, facts.traffic_class, reason, facts.length);
    return reason_action(reason);
}

char LICENSE[] SEC("license") = "GPL";
