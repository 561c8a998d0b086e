/* edgewarden XDP program: parse, find the tenant, decide, account. */
#include "parse.h"
#include "maps.h"
#include "account.h"
#include "verdict.h"
#include "sample.h"

/* Frags-aware: attachable to interfaces with jumbo MTU; headers are always
 * in the linear part that parse.h reads. */
SEC("xdp.frags")
int edgewarden_xdp(struct xdp_md *ctx)
{
    struct packet_facts facts = {};
    struct ew_vip tenant = {};
    __u32 reason;

    switch (parse_packet(ctx, &facts)) {
    case EW_PARSED_IP:
        lookup_tenant(&facts, &tenant);
        reason = decide_ip_verdict(ctx, &facts, &tenant);
        if (reason == EW_REASON_ANSWER_SYN_COOKIE)
            reason = answer_syn_with_cookie(ctx, &facts);
        break;
    case EW_PARSED_NON_IP:
        reason = EW_REASON_PASS_NON_IP;
        break;
    default:
        reason = EW_REASON_DROP_MALFORMED;
        break;
    }
    sample_packet(ctx, &tenant, reason, facts.length);
    account_packet(tenant.slot, facts.traffic_class, reason, facts.length);
    return reason_action(reason);
}

char LICENSE[] SEC("license") = "GPL";
