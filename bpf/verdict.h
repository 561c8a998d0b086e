/* Tenant lookup and the verdict. Precedence, first match wins:
 *   global source block > tenant suspended > tenant source block >
 *   malformed > blocked destination port > amplification source port >
 *   dropped fragment > SYN-ACK without connection > segment without
 *   connection or cookie > per-source rate > SYN rate > fragment rate >
 *   byte/packet rate > SYN answered with a cookie > pass.
 * Rate limits come after the drops, so blocked packets spend no tokens, and
 * before the cookie answer, so the SYN limit also caps the SYN-ACKs sent.
 * agent/reference.py is the executable statement of the same rules. */
#ifndef EW_VERDICT_H
#define EW_VERDICT_H

#include "maps.h"
#include "parse.h"
#include "blocklist.h"
#include "flood.h"
#include "syn_cookie_answer.h"

/* The head of the VIP value the packet's destination matched: what the
 * caller accounts by (slot) and the verdict decides by. */
struct tenant_facts {
    __u32 tenant_id;
    __u32 slot;
    __u32 flags;
};

static __always_inline int has_port(const struct packet_facts *f)
{
    return f->l4_parsed && (f->l4_proto == IPPROTO_TCP || f->l4_proto == IPPROTO_UDP);
}

/* (VIP, protocol, port) first, then (VIP, any port); else unassigned. The
 * any-port entry is looked up first because it also says whether the
 * address has port-specific VIPs at all, which most do not. */
static __always_inline const struct ew_vip *lookup_tenant(const struct packet_facts *f, struct tenant_facts *out)
{
    const struct ew_vip *vip, *port_vip = NULL;

    if (f->family == EW_FAMILY_IPV4) {
        __u32 daddr = f->daddr.v4;

        vip = bpf_map_lookup_elem(&ew_vips_v4, &daddr);
        if (vip && (vip->flags & EW_VIP_HAS_PORT_VIPS) && has_port(f)) {
            struct ew_vip_port_v4_key key = { .port = f->dport, .proto = f->l4_proto };

            __builtin_memcpy(key.addr, &daddr, 4);
            port_vip = bpf_map_lookup_elem(&ew_vip_ports_v4, &key);
        }
    } else {
        struct ew_vip_v6_key key;

        __builtin_memcpy(key.addr, &f->daddr.v6, 16);
        vip = bpf_map_lookup_elem(&ew_vips_v6, &key);
        if (vip && (vip->flags & EW_VIP_HAS_PORT_VIPS) && has_port(f)) {
            struct ew_vip_port_v6_key pkey = { .port = f->dport, .proto = f->l4_proto };

            __builtin_memcpy(pkey.addr, &f->daddr.v6, 16);
            port_vip = bpf_map_lookup_elem(&ew_vip_ports_v6, &pkey);
        }
    }
    if (port_vip)
        vip = port_vip;
    /* The head only: the port ranges are read where they are, in the map value. */
    if (vip) {
        out->tenant_id = vip->tenant_id;
        out->slot = vip->slot;
        out->flags = vip->flags;
    } else {
        out->tenant_id = EW_TENANT_UNASSIGNED;
        out->slot = EW_TENANT_UNASSIGNED;
        out->flags = 0;
    }
    return vip;
}

/* Which source checks an IPv4 packet needs, from its /24's prefilter entry:
 * a source in no list (almost every legitimate one) needs none. Without
 * an entry (cannot happen: the array covers every /24) everything is
 * looked up the way it was before the prefilter. */
enum ew_source_checks {
    EW_CHECK_GLOBAL = 1,        /* look in the global table */
    EW_CHECK_TENANT = 2,        /* look in the tenant tables */
    EW_BLOCKED_GLOBALLY = 4,    /* decided: the global list blocks the /24 whole */
    EW_CHECK_GLOBAL_NODES = 8,  /* no prefilter: walk the global table from its /16 node */
};

static __always_inline __u32 source_checks_v4(__be32 saddr)
{
    __u64 bit;
    const struct ew_prefilter_v4 *pf = prefilter_v4(saddr, &bit);

    if (!pf)    /* an engine without the prefilter (the DPDK build) */
        return EW_CHECK_GLOBAL_NODES | EW_CHECK_TENANT;
    if (pf->global_whole & bit)
        return EW_BLOCKED_GLOBALLY;
    return ((pf->global_listed & bit) ? EW_CHECK_GLOBAL : 0) | ((pf->tenant_listed & bit) ? EW_CHECK_TENANT : 0);
}

/* What the VIP heads say about an IPv4 destination, as one u32 (the
 * body of the global function ew_vip_head_v4, edgewarden.bpf.c: verified
 * once, its ways' branches do not multiply the verdict's paths): the head
 * (EW_VIP_HEAD_PRESENT set: slot and flags), EW_VIP_HEAD_NOT_A_VIP
 * (decided: no VIP has this address) or EW_VIP_HEAD_OVERFLOW (ask
 * ew_vips_v4: its bucket overflowed, or this engine keeps no heads). */
#define EW_VIP_HEAD_NOT_A_VIP 0

static __always_inline __u32 vip_head_v4(__be32 daddr)
{
    __u32 index = (__u32)((__u32)daddr * (__u32)EW_VIP_HEAD_MULTIPLIER) >> (32 - EW_VIP_HEAD_BUCKET_BITS);
    const struct ew_vip_head_bucket *bucket = bpf_map_lookup_elem(&ew_vip_heads_v4, &index);
    __u32 answer = EW_VIP_HEAD_NOT_A_VIP;

    if (!bucket)    /* an engine without the heads (the DPDK build) */
        return EW_VIP_HEAD_OVERFLOW;
#pragma unroll
    for (int i = 0; i < EW_VIP_HEAD_WAYS; i++) {
        /* One 8-byte load: the agent writes a way with one 8-byte store. */
        __u64 way = *(volatile const __u64 *)&bucket->ways[i];
        __u32 head = way >> 32;

        if ((__u32)way == (__u32)daddr && (head & EW_VIP_HEAD_PRESENT))
            return head;
        if (way && !(head & EW_VIP_HEAD_PRESENT))
            answer = EW_VIP_HEAD_OVERFLOW;
    }
    return answer;
}

__u32 ew_vip_head_v4(__u32 daddr);

/* Whether a VIP's head decides the packet without the VIP value: not when
 * the tenant may differ by port, when the packet is sampled (the sample
 * names the tenant id), or when a tenant-table or port lookup needs the
 * tenant id or the port ranges. A global drop needs the slot only. */
static __always_inline int head_decides(__u32 flags, __u32 checks)
{
    if (flags & (EW_VIP_HAS_PORT_VIPS | EW_TENANT_SAMPLED))
        return 0;
    if (checks & EW_BLOCKED_GLOBALLY)
        return 1;
    if (flags & EW_TENANT_HAS_PORT_BLOCKS)
        return 0;
    return !((flags & EW_TENANT_HAS_SOURCE_BLOCKS) && (checks & EW_CHECK_TENANT));
}

static __always_inline int source_blocked_for_tenant(const struct packet_facts *f, __u32 tenant_id)
{
    if (f->family == EW_FAMILY_IPV4) {
        return source_blocked_v4_tenant(f->saddr.v4, tenant_id);
    } else {
        return source_blocked_v6_tenant(&f->saddr.v6, tenant_id);
    }
}

static __always_inline int port_blocked_in_ranges(const struct ew_vip *vip, const struct packet_facts *f)
{
    __u16 port = bpf_ntohs(f->dport);

#pragma unroll
    for (int i = 0; i < EW_VIP_PORT_RANGES; i++) {
        const struct ew_port_range *r = &vip->port_blocks[i];

        if (r->proto == 0)
            break;
        if (r->proto == f->l4_proto && port >= r->first && port <= r->last)
            return 1;
    }
    return 0;
}

static __always_inline int port_blocked_for_tenant(const struct packet_facts *f, const struct ew_vip *vip,
                                                   __u32 tenant_id)
{
    struct ew_port_key key = {};

    if (!has_port(f))
        return 0;
    if (vip && (vip->flags & EW_TENANT_PORT_RANGES))
        return port_blocked_in_ranges(vip, f);
    key.tenant_id = tenant_id;
    key.port = f->dport;
    key.proto = f->l4_proto;
    return bpf_map_lookup_elem(&ew_port_blocks, &key) != NULL;
}

/* The global source verdict, which needs nothing of the tenant: the checks
 * the tenant part still needs (enum ew_source_checks), or
 * EW_BLOCKED_GLOBALLY. */
static __always_inline __u32 global_source_checks(const struct packet_facts *f)
{
    __u32 checks = EW_CHECK_TENANT;

    if (f->family == EW_FAMILY_IPV4) {
        checks = source_checks_v4(f->saddr.v4);
        if (checks & EW_BLOCKED_GLOBALLY)
            return EW_BLOCKED_GLOBALLY;
        if ((checks & EW_CHECK_GLOBAL) && source_blocked_v4_global_partial(f->saddr.v4))
            return EW_BLOCKED_GLOBALLY;
        if (checks & EW_CHECK_GLOBAL_NODES) {
            const struct ew_config *config = current_config();

            if (config && (config->flags & EW_CONFIG_GLOBAL_V4_BLOCKS) && source_blocked_v4_global(f->saddr.v4))
                return EW_BLOCKED_GLOBALLY;
        }
    } else {
        const struct ew_config *config = current_config();

        if (config && (config->flags & EW_CONFIG_GLOBAL_V6_BLOCKS) && source_blocked_v6_global(&f->saddr.v6))
            return EW_BLOCKED_GLOBALLY;
    }
    return checks;
}

/* The verdict after the global list: `checks` from global_source_checks;
 * `vip`: the VIP map value *tenant was copied from, or NULL (unassigned, or
 * decided by the VIP head alone, which then needs none of its ports). */
static __always_inline __u32 decide_tenant_verdict(struct xdp_md *ctx, const struct packet_facts *f,
                                                   const struct tenant_facts *tenant, const struct ew_vip *vip,
                                                   __u32 checks)
{
    if (tenant->flags & EW_TENANT_SUSPENDED)
        return EW_REASON_DROP_TENANT_SUSPENDED;
    if ((tenant->flags & EW_TENANT_HAS_SOURCE_BLOCKS) && (checks & EW_CHECK_TENANT) &&
        source_blocked_for_tenant(f, tenant->tenant_id))
        return EW_REASON_DROP_TENANT_BLOCK;
    if (f->malformed)
        return EW_REASON_DROP_MALFORMED;
    if ((tenant->flags & EW_TENANT_HAS_PORT_BLOCKS) && port_blocked_for_tenant(f, vip, tenant->tenant_id))
        return EW_REASON_DROP_PORT_BLOCK;
    if (tenant->flags & EW_TENANT_HAS_FLOOD_POLICY)
        return flood_verdict(ctx, f, tenant->slot);
    return EW_REASON_PASS_ALLOWED;
}

static __always_inline int reason_action(__u32 reason)
{
    switch (reason) {
    case EW_REASON_PASS_ALLOWED:
    case EW_REASON_PASS_NON_IP:
        return XDP_PASS;
    case EW_REASON_ANSWER_SYN_COOKIE:
        return XDP_TX;
    default:
        return XDP_DROP;
    }
}

/* The verdict for a parsed IP packet, and its tenant in *tenant: the body
 * of the global function ew_packet_verdict (edgewarden.bpf.c), which runs
 * verified once rather than once per parser path (without CAP_PERFMON the
 * verifier also walks every branch's speculative side, and the product of
 * parser and verdict paths would exceed its budget). */
static __always_inline __u32 ip_verdict(struct xdp_md *ctx, struct packet_facts *f, struct tenant_facts *tenant)
{
    __u32 reason, checks = global_source_checks(f);
    const struct ew_vip *vip = NULL;
    __u32 head = f->family == EW_FAMILY_IPV4 ? ew_vip_head_v4(f->daddr.v4) : EW_VIP_HEAD_OVERFLOW;

    if ((head & EW_VIP_HEAD_PRESENT) && head_decides(head & (EW_VIP_HEAD_PRESENT - 1), checks)) {
        /* No tenant id: head_decides said nothing below needs it. */
        tenant->tenant_id = EW_TENANT_UNASSIGNED;
        tenant->slot = head >> EW_VIP_HEAD_SLOT_SHIFT;
        tenant->flags = head & (EW_VIP_HEAD_PRESENT - 1);
    } else if (head == EW_VIP_HEAD_NOT_A_VIP) {
        tenant->tenant_id = EW_TENANT_UNASSIGNED;
        tenant->slot = EW_TENANT_UNASSIGNED;
        tenant->flags = 0;
    } else {
        vip = lookup_tenant(f, tenant);
    }
    if (checks & EW_BLOCKED_GLOBALLY)
        return EW_REASON_DROP_GLOBAL_BLOCK;
    reason = decide_tenant_verdict(ctx, f, tenant, vip, checks);
    if (reason == EW_REASON_ANSWER_SYN_COOKIE)
        reason = answer_syn_with_cookie(ctx, f);
    return reason;
}

#endif /* EW_VERDICT_H */
