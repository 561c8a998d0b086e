/* Tenant lookup and the verdict. Precedence, first match wins:
 *   global source block > tenant suspended > tenant source block >
 *   malformed > blocked destination port > pass.
 * agent/reference.py is the executable statement of the same rules. */
#ifndef EW_VERDICT_H
#define EW_VERDICT_H

#include "maps.h"
#include "parse.h"

static __always_inline void vip_key_set_addr(struct ew_vip_key *key, const struct packet_facts *f)
{
    if (f->family == EW_FAMILY_IPV4) {
        const struct iphdr *ip = f->l3;
        __builtin_memcpy(key->addr, &ip->daddr, 4);
    } else {
        const struct ipv6hdr *ip6 = f->l3;
        __builtin_memcpy(key->addr, &ip6->daddr, 16);
    }
}

/* (VIP, protocol, port) first, then (VIP, any port); else unassigned. */
static __always_inline __u32 lookup_tenant(const struct packet_facts *f)
{
    struct ew_vip_key key = {};
    __u32 *tenant;

    key.family = f->family;
    vip_key_set_addr(&key, f);
    if (f->l4_parsed && (f->l4_proto == IPPROTO_TCP || f->l4_proto == IPPROTO_UDP)) {
        key.proto = f->l4_proto;
        key.port = f->dport;
        tenant = bpf_map_lookup_elem(&ew_vips, &key);
        if (tenant)
            return *tenant;
        key.proto = 0;
        key.port = 0;
    }
    tenant = bpf_map_lookup_elem(&ew_vips, &key);
    return tenant ? *tenant : EW_TENANT_UNASSIGNED;
}

static __always_inline int source_globally_blocked(const struct packet_facts *f, __u32 config_flags)
{
    if (f->family == EW_FAMILY_IPV4) {
        const struct iphdr *ip = f->l3;
        struct ew_lpm_v4_key key = { .prefixlen = 32 };

        if (!(config_flags & EW_CONFIG_GLOBAL_V4_BLOCKS))
            return 0;
        __builtin_memcpy(key.addr, &ip->saddr, 4);
        return bpf_map_lookup_elem(&ew_gblock_v4, &key) != NULL;
    } else {
        const struct ipv6hdr *ip6 = f->l3;
        struct ew_lpm_v6_key key = { .prefixlen = 128 };

        if (!(config_flags & EW_CONFIG_GLOBAL_V6_BLOCKS))
            return 0;
        __builtin_memcpy(key.addr, &ip6->saddr, 16);
        return bpf_map_lookup_elem(&ew_gblock_v6, &key) != NULL;
    }
}

static __always_inline int source_blocked_for_tenant(const struct packet_facts *f, __u32 tenant_id)
{
    __be32 tenant_be = bpf_htonl(tenant_id);

    if (f->family == EW_FAMILY_IPV4) {
        const struct iphdr *ip = f->l3;
        struct ew_tenant_lpm_v4_key key = { .prefixlen = 64 };

        __builtin_memcpy(key.tenant_id, &tenant_be, 4);
        __builtin_memcpy(key.addr, &ip->saddr, 4);
        return bpf_map_lookup_elem(&ew_tblock_v4, &key) != NULL;
    } else {
        const struct ipv6hdr *ip6 = f->l3;
        struct ew_tenant_lpm_v6_key key = { .prefixlen = 160 };

        __builtin_memcpy(key.tenant_id, &tenant_be, 4);
        __builtin_memcpy(key.addr, &ip6->saddr, 16);
        return bpf_map_lookup_elem(&ew_tblock_v6, &key) != NULL;
    }
}

static __always_inline int port_blocked_for_tenant(const struct packet_facts *f, __u32 tenant_id)
{
    struct ew_port_key key = {};

    if (!f->l4_parsed || (f->l4_proto != IPPROTO_TCP && f->l4_proto != IPPROTO_UDP))
        return 0;
    key.tenant_id = tenant_id;
    key.port = f->dport;
    key.proto = f->l4_proto;
    return bpf_map_lookup_elem(&ew_port_blocks, &key) != NULL;
}

static __always_inline __u32 decide_ip_verdict(const struct packet_facts *f, __u32 tenant_id)
{
    __u32 zero = 0;
    struct ew_config *config = bpf_map_lookup_elem(&ew_config, &zero);
    __u32 tenant_flags = 0;

    if (config && source_globally_blocked(f, config->flags))
        return EW_REASON_DROP_GLOBAL_BLOCK;
    if (tenant_id != EW_TENANT_UNASSIGNED) {
        struct ew_tenant *tenant = bpf_map_lookup_elem(&ew_tenants, &tenant_id);

        if (tenant)
            tenant_flags = tenant->flags;
    }
    if (tenant_flags & EW_TENANT_SUSPENDED)
        return EW_REASON_DROP_TENANT_SUSPENDED;
    if ((tenant_flags & EW_TENANT_HAS_SOURCE_BLOCKS) && source_blocked_for_tenant(f, tenant_id))
        return EW_REASON_DROP_TENANT_BLOCK;
    if (f->malformed)
        return EW_REASON_DROP_MALFORMED;
    if ((tenant_flags & EW_TENANT_HAS_PORT_BLOCKS) && port_blocked_for_tenant(f, tenant_id))
        return EW_REASON_DROP_PORT_BLOCK;
    return EW_REASON_PASS_ALLOWED;
}

static __always_inline int reason_is_drop(__u32 reason)
{
    return reason != EW_REASON_PASS_ALLOWED && reason != EW_REASON_PASS_NON_IP;
}

#endif /* EW_VERDICT_H */
