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

        vip = bpf_map_lookup_elem(&ew_vips_v4, &f->daddr.v4);   /* no key on the stack */
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
    if (!((pf->global_whole | pf->global_listed | pf->tenant_listed) & bit))
        return 0;   /* in no list: one test */
    if (pf->global_whole & bit)
        return EW_BLOCKED_GLOBALLY;
    return ((pf->global_listed & bit) ? EW_CHECK_GLOBAL : 0) | ((pf->tenant_listed & bit) ? EW_CHECK_TENANT : 0);
}

/* What the VIP heads say about an IPv4 destination, as one u32: the head
 * (EW_VIP_HEAD_PRESENT set: slot and flags), EW_VIP_HEAD_NOT_A_VIP
 * (decided: no VIP has this address) or EW_VIP_HEAD_OVERFLOW (ask
 * ew_vips_v4: its bucket overflowed, or this engine keeps no heads). */
#define EW_VIP_HEAD_NOT_A_VIP 0

static __always_inline __u32 vip_head_v4(__be32 daddr)
{
    __u32 index = (__u32)((__u32)daddr * (__u32)EW_VIP_HEAD_MULTIPLIER) >> (32 - EW_VIP_HEAD_BUCKET_BITS);
    const struct ew_vip_head_bucket *bucket = bpf_map_lookup_elem(&ew_vip_heads_v4, &index);
    __u32 marks = 0;

    if (!bucket)    /* an engine without the heads (the DPDK build) */
        return EW_VIP_HEAD_OVERFLOW;
#pragma unroll
    for (int i = 0; i < EW_VIP_HEAD_WAYS; i++) {
        /* One 8-byte load: the agent writes a way with one 8-byte store. */
        __u64 way = *(volatile const __u64 *)&bucket->ways[i];
        __u32 head = way >> 32;

        if ((__u32)way == (__u32)daddr && (head & EW_VIP_HEAD_PRESENT))
            return head;
        /* The overflow mark's bit, unless PRESENT says the way is a head:
         * arithmetic, not a branch. A branch here would leave a 0 or a 1
         * in a register at every way, and the verifier without CAP_PERFMON
         * compares scalars exactly (see ip_verdict), so it walked 2^16
         * paths through this loop and gave up with E2BIG. */
        marks |= head & ~(head >> EW_VIP_HEAD_PRESENT_SHIFT);
    }
    return marks & EW_VIP_HEAD_OVERFLOW;
}

/* The ranges are merged and in order of (protocol, first port)
 * (agent.datapath.compile.port_ranges): the scan stops at the first range
 * past the packet's (protocol, port), which for most ports is the first
 * or second, not the last. */
static __always_inline int port_blocked_in_ranges(const struct ew_port_range *ranges, __u32 proto, __u16 port)
{
    __u32 packet = proto << 16 | port;

#pragma unroll
    for (int i = 0; i < EW_VIP_PORT_RANGES; i++) {
        const struct ew_port_range *r = &ranges[i];

        if (r->proto == 0 || ((__u32)r->proto << 16 | r->first) > packet)
            break;
        if (r->proto == proto && port <= r->last)
            return 1;
    }
    return 0;
}

/* What a VIP head (and its slot's ew_slot_tenants entry) decide, as one
 * integer: EW_HEAD_DECIDES set, the tenant id in the high 32 bits (when
 * the verdict needs it) and EW_HEAD_PORT_BLOCKED (the packet's port is in
 * the tenant's ranges); 0: the VIP value must be read (no head, a VIP with
 * port VIPs, an entry being written or of another head). */
#define EW_HEAD_DECIDES 1ULL
#define EW_HEAD_PORT_BLOCKED 2ULL

/* Whether the verdict needs more than the head's slot and flags: the
 * tenant id for the sample, a tenant-table or port-hash lookup, or the
 * port ranges. A global drop needs the slot only. */
static __always_inline int head_needs_tenant(__u32 flags, __u32 checks)
{
    if (flags & EW_TENANT_SAMPLED)
        return 1;
    if (checks & EW_BLOCKED_GLOBALLY)
        return 0;
    return (flags & EW_TENANT_HAS_PORT_BLOCKS) || ((flags & EW_TENANT_HAS_SOURCE_BLOCKS) && (checks & EW_CHECK_TENANT));
}

/* `proto`: the packet's L4 protocol if it has a port (else 0, which no
 * range holds), `port` its destination port in host order. */
static __always_inline __u64 head_tenant(__u32 head, __u32 checks, __u32 proto, __u32 port)
{
    __u32 flags = head & (EW_VIP_HEAD_PRESENT - 1), slot = head >> EW_VIP_HEAD_SLOT_SHIFT;
    const struct ew_slot_tenant *entry;
    __u64 stamp, answer;

    if (!(head & EW_VIP_HEAD_PRESENT) || (flags & EW_VIP_HAS_PORT_VIPS))
        return 0;
    if (!head_needs_tenant(flags, checks))
        return EW_HEAD_DECIDES;
    entry = bpf_map_lookup_elem(&ew_slot_tenants, &slot);
    if (!entry)     /* an engine without the entries (the DPDK build), or a slot beyond them */
        return 0;
    /* A seqlock read: the entry between two loads of its stamp (the loads
     * stay in program order: a compiler barrier here, and x86 does not
     * reorder loads; a weakly ordered CPU would need load-acquires). */
    stamp = *(volatile const __u64 *)&entry->stamp;
    asm volatile("" ::: "memory");
    answer = (__u64)entry->tenant_id << 32 | EW_HEAD_DECIDES |
             (port_blocked_in_ranges(entry->port_blocks, proto, (__u16)port) ? EW_HEAD_PORT_BLOCKED : 0);
    asm volatile("" ::: "memory");
    if (*(volatile const __u64 *)&entry->stamp != stamp || (stamp >> 32) & 1 || (__u32)stamp != head)
        return 0;
    return answer;
}

/* The tenant of an IPv4 destination from the heads, in *out, when they
 * decide it: returns EW_HEAD_DECIDES (and EW_HEAD_PORT_BLOCKED), or 0 when
 * the VIP value must be read. The body of the global function
 * ew_vip_tenant_v4 (edgewarden.bpf.c): the probe's ways and the branches
 * on the head's flags and stamps are verified once, and ip_verdict
 * branches on the one integer it returns. */
static __always_inline __u32 vip_tenant_v4(__be32 daddr, __u32 checks, __u32 proto, __u32 port,
                                           struct tenant_facts *out)
{
    __u32 head = vip_head_v4(daddr);
    __u64 known;

    if (head == EW_VIP_HEAD_NOT_A_VIP) {
        out->tenant_id = EW_TENANT_UNASSIGNED;
        out->slot = EW_TENANT_UNASSIGNED;
        out->flags = 0;
        return EW_HEAD_DECIDES;
    }
    known = head_tenant(head, checks, proto, port);
    if (!(known & EW_HEAD_DECIDES))
        return 0;
    /* The tenant id only where head_needs_tenant said the verdict needs it. */
    out->tenant_id = known >> 32;
    out->slot = head >> EW_VIP_HEAD_SLOT_SHIFT;
    out->flags = head & (EW_VIP_HEAD_PRESENT - 1);
    return (__u32)known;
}

__u32 ew_vip_tenant_v4(__u32 daddr, __u32 checks, __u32 proto, __u32 port, struct tenant_facts *out);

static __always_inline int source_blocked_for_tenant(const struct packet_facts *f, __u32 tenant_id)
{
    if (f->family == EW_FAMILY_IPV4) {
        return source_blocked_v4_tenant(f->saddr.v4, tenant_id);
    } else {
        return source_blocked_v6_tenant(&f->saddr.v6, tenant_id);
    }
}

/* `vip`: the VIP value, or NULL when the head decided (then `known`, from
 * ew_vip_tenant_v4, holds the ranges' answer). */
static __always_inline int port_blocked_for_tenant(const struct packet_facts *f, const struct ew_vip *vip,
                                                   __u32 tenant_id, __u32 flags, __u32 known)
{
    if (!has_port(f))
        return 0;
    if (flags & EW_TENANT_PORT_RANGES)
        return vip ? port_blocked_in_ranges(vip->port_blocks, f->l4_proto, bpf_ntohs(f->dport))
                   : (known & EW_HEAD_PORT_BLOCKED) != 0;

    struct ew_port_key key = { .tenant_id = tenant_id, .port = f->dport, .proto = f->l4_proto };

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
 * decided by the VIP head: `known` from ew_vip_tenant_v4). */
static __always_inline __u32 decide_tenant_verdict(struct xdp_md *ctx, const struct packet_facts *f,
                                                   const struct tenant_facts *tenant, const struct ew_vip *vip,
                                                   __u32 checks, __u32 known)
{
    if (tenant->flags & EW_TENANT_SUSPENDED)
        return EW_REASON_DROP_TENANT_SUSPENDED;
    if ((tenant->flags & EW_TENANT_HAS_SOURCE_BLOCKS) && (checks & EW_CHECK_TENANT) &&
        source_blocked_for_tenant(f, tenant->tenant_id))
        return EW_REASON_DROP_TENANT_BLOCK;
    if (f->malformed)
        return EW_REASON_DROP_MALFORMED;
    if ((tenant->flags & EW_TENANT_HAS_PORT_BLOCKS) && port_blocked_for_tenant(f, vip, tenant->tenant_id, tenant->flags, known))
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
 * verified once rather than once per parser path. Without CAP_PERFMON the
 * verifier masks pointer arithmetic against Spectre v1, and from the first
 * map value indexed by a variable on (account.h's counters, the block
 * nodes' bitmaps, a flood policy's limits) it prunes states only where
 * every live scalar is exactly equal, for the rest of the program (the
 * kernel's explore_alu_limits): each branch that leaves a different value
 * in a live register doubles the states that follow it. Hence global
 * functions that hand back plain integers (ew_vip_tenant_v4: the heads'
 * ways, flags and stamps become one integer, branched on once here), and
 * no such branch inside them. */
static __always_inline __u32 ip_verdict(struct xdp_md *ctx, struct packet_facts *f, struct tenant_facts *tenant)
{
    __u32 reason, checks = global_source_checks(f);
    const struct ew_vip *vip = NULL;
    __u32 known = f->family == EW_FAMILY_IPV4 ?
                  ew_vip_tenant_v4(f->daddr.v4, checks, has_port(f) ? f->l4_proto : 0, bpf_ntohs(f->dport), tenant) : 0;

    if (!(known & EW_HEAD_DECIDES))
        vip = lookup_tenant(f, tenant);
    if (checks & EW_BLOCKED_GLOBALLY)
        return EW_REASON_DROP_GLOBAL_BLOCK;
    reason = decide_tenant_verdict(ctx, f, tenant, vip, checks, known);
    if (reason == EW_REASON_ANSWER_SYN_COOKIE)
        reason = answer_syn_with_cookie(ctx, f);
    return reason;
}

#endif /* EW_VERDICT_H */
