/* Source block-list lookups. IPv4 tables are two-level (/16 then /24 nodes
 * in one hash, see struct ew_block_node): a prefix of /24 or shorter is
 * decided by one lookup, a longer one by two; for the global list the
 * prefilter decides the first level, and the host-bits arrays mostly the
 * second of both lists (inlined array lookups). IPv6 uses LPM tries. Every table sits in slot 0 of
 * a map-in-map so versions swap atomically. */
#ifndef EW_BLOCKLIST_H
#define EW_BLOCKLIST_H

#include "maps.h"

static __always_inline int bit_is_set(const __u64 *words, __u32 bit)
{
    return (words[(bit >> 6) & 3] >> (bit & 63)) & 1;
}

static __always_inline __u32 block_node_key(__u32 level, __u32 addr_host)
{
    return level == EW_BLOCK_LEVEL_16 ? (EW_BLOCK_LEVEL_16 << 24) | (addr_host >> 16)
                                      : (EW_BLOCK_LEVEL_24 << 24) | (addr_host >> 8);
}

/* The decision for one address given its level-16 and level-24 nodes. */
static __always_inline int block_nodes_match(const struct ew_block_node *n16, void *table, void *key24,
                                             __u32 addr_host, int tenant_scoped)
{
    const struct ew_block_node *n24;
    __u32 index24 = (addr_host >> 8) & 0xff;

    if (n16->flags & EW_BLOCK_NODE_FULL || bit_is_set(n16->full24, index24))
        return 1;
    if (!bit_is_set(n16->partial24, index24))
        return 0;
    n24 = bpf_map_lookup_elem(table, key24);
    return n24 && bit_is_set(n24->full24, addr_host & 0xff);
}

static __always_inline int source_blocked_v4_global(__be32 saddr)
{
    __u32 zero = 0, addr = bpf_ntohl(saddr), key16, key24;
    const struct ew_block_node *n16;
    void *table = bpf_map_lookup_elem(&ew_gblock_v4, &zero);

    if (!table)
        return 0;
    key16 = block_node_key(EW_BLOCK_LEVEL_16, addr);
    n16 = bpf_map_lookup_elem(table, &key16);
    if (!n16)
        return 0;
    key24 = block_node_key(EW_BLOCK_LEVEL_24, addr);
    return block_nodes_match(n16, table, &key24, addr, 0);
}

/* What a host-bits array (ew_host_bits_v4, ew_thost_bits_v4) says of an
 * IPv4 source (host order) for `tenant_id` (0: the global array): 1
 * blocked, 0 not, -1 when its entry does not name the source's (tenant,
 * /24) (free, another one, or changing owner while read): then the table
 * decides. The tenant and hosts words are read between two reads of the
 * tag, and a tag never repeats on an entry, so an equal tag means both
 * belong to that owner (loads stay in program order: volatile for the
 * compiler; x86 does not reorder loads with loads, nor the agent's 8-byte
 * stores with its others). */
static __always_inline int host_bits_v4(void *array, __u32 addr, __u32 tenant_id)
{
    __u32 index24 = addr >> 8;
    __u32 entry = (index24 + tenant_id * EW_HOST_BITS_TENANT_SPREAD) & (EW_HOST_BITS_V4_ENTRIES - 1);
    const struct ew_host_bits_v4 *bits = bpf_map_lookup_elem(array, &entry);
    __u64 tag, hosts;
    __u32 owner;

    if (!bits)      /* an engine without the arrays (the DPDK build) */
        return -1;
    tag = *(const volatile __u64 *)&bits->tag;
    if ((__u32)(tag >> 32) != (EW_HOST_BITS_VALID | index24))
        return -1;
    owner = *(const volatile __u32 *)&bits->tenant_id;
    hosts = *(const volatile __u64 *)&bits->hosts[(addr >> 6) & 3];
    if (*(const volatile __u64 *)&bits->tag != tag || owner != tenant_id)
        return -1;
    return (hosts >> (addr & 63)) & 1;
}

/* The global decision for a source whose /24 the prefilter says the global
 * table has something in but does not block whole: only a level-24 node
 * can block it (a /16 node that blocks it would have put the /24 in
 * global_whole), so its host bits decide, from ew_host_bits_v4 when that
 * holds the /24, else from the node's one lookup. */
static __always_inline int source_blocked_v4_global_partial(__be32 saddr)
{
    __u32 zero = 0, addr = bpf_ntohl(saddr), key24;
    const struct ew_block_node *n24;
    void *table;
    int cached = host_bits_v4(&ew_host_bits_v4, addr, 0);

    if (cached >= 0)
        return cached;
    table = bpf_map_lookup_elem(&ew_gblock_v4, &zero);
    if (!table)
        return 0;
    key24 = block_node_key(EW_BLOCK_LEVEL_24, addr);
    n24 = bpf_map_lookup_elem(table, &key24);
    return n24 && bit_is_set(n24->full24, addr & 0xff);
}

/* The prefilter entry of an IPv4 source, and the source's bit in it. */
static __always_inline const struct ew_prefilter_v4 *prefilter_v4(__be32 saddr, __u64 *bit)
{
    __u32 addr = bpf_ntohl(saddr), index = addr >> 14;

    *bit = 1ULL << ((addr >> 8) & 63);
    return bpf_map_lookup_elem(&ew_prefilter_v4, &index);
}

/* A tenant's decision: from ew_thost_bits_v4 when that holds the tenant's
 * level-24 node of the source's /24 (the node is then the whole decision:
 * compiled prefixes do not overlap, so nothing coarser blocks the /24),
 * else from the tenant's /16 node and, if it points there, its /24 node. */
static __always_inline int source_blocked_v4_tenant(__be32 saddr, __u32 tenant_id)
{
    __u32 zero = 0, addr = bpf_ntohl(saddr);
    struct ew_tenant_block_key key16, key24;
    const struct ew_block_node *n16;
    void *table;
    int cached = host_bits_v4(&ew_thost_bits_v4, addr, tenant_id);

    if (cached >= 0)
        return cached;
    table = bpf_map_lookup_elem(&ew_tblock_v4, &zero);
    if (!table)
        return 0;
    key16.tenant_id = tenant_id;
    key16.node = block_node_key(EW_BLOCK_LEVEL_16, addr);
    n16 = bpf_map_lookup_elem(table, &key16);
    if (!n16)
        return 0;
    key24.tenant_id = tenant_id;
    key24.node = block_node_key(EW_BLOCK_LEVEL_24, addr);
    return block_nodes_match(n16, table, &key24, addr, 1);
}

static __always_inline int source_blocked_v6_global(const struct in6_addr *saddr)
{
    __u32 zero = 0;
    struct ew_lpm_v6_key key = { .prefixlen = 128 };
    void *trie = bpf_map_lookup_elem(&ew_gblock_v6, &zero);

    if (!trie)
        return 0;
    __builtin_memcpy(key.addr, saddr, 16);
    return bpf_map_lookup_elem(trie, &key) != NULL;
}

static __always_inline int source_blocked_v6_tenant(const struct in6_addr *saddr, __u32 tenant_id)
{
    __u32 zero = 0;
    __be32 tenant_be = bpf_htonl(tenant_id);
    struct ew_tenant_lpm_v6_key key = { .prefixlen = 160 };
    void *trie = bpf_map_lookup_elem(&ew_tblock_v6, &zero);

    if (!trie)
        return 0;
    __builtin_memcpy(key.tenant_id, &tenant_be, 4);
    __builtin_memcpy(key.addr, saddr, 16);
    return bpf_map_lookup_elem(trie, &key) != NULL;
}

#endif /* EW_BLOCKLIST_H */
