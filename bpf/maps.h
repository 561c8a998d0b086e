/* Every map of the datapath, pinned by name under
 * /sys/fs/bpf/edgewarden/<ifname>/ by the loader so that enforcement and
 * counters outlive the agent. Capacities come from edgewarden_abi.h.
 *
 * Block lists sit behind single-slot map-in-map tables: the agent builds a
 * new version in a fresh inner map and swaps it in with one update, so no
 * packet is judged against a half-written list. */
#ifndef EW_MAPS_H
#define EW_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "edgewarden_abi.h"

#define EW_HASH_MAP(name, key_type, value_type, capacity)  \
    struct {                                                \
        __uint(type, BPF_MAP_TYPE_HASH);                    \
        __uint(max_entries, capacity);                      \
        __type(key, key_type);                              \
        __type(value, value_type);                          \
    } name SEC(".maps")

EW_HASH_MAP(ew_vips_v4, __u32, struct ew_vip, EW_MAX_VIPS);
EW_HASH_MAP(ew_vips_v6, struct ew_vip_v6_key, struct ew_vip, EW_MAX_VIPS);
EW_HASH_MAP(ew_vip_ports_v4, struct ew_vip_port_v4_key, struct ew_vip, EW_MAX_VIPS);
EW_HASH_MAP(ew_vip_ports_v6, struct ew_vip_port_v6_key, struct ew_vip, EW_MAX_VIPS);
EW_HASH_MAP(ew_tenants, __u32, struct ew_tenant, EW_MAX_TENANTS);
EW_HASH_MAP(ew_port_blocks, struct ew_port_key, __u8, EW_MAX_PORT_RULES);

/* Structs seen only through map definitions would reach BTF as forward
 * declarations, which libbpf cannot size (and a map whose value holds a
 * bpf_spin_lock needs its BTF): this variable anchors them. */
struct ew_inner_types {
    struct ew_source_key source_key;
    struct ew_source_bucket source_bucket;
    struct ew_source_way_v4 source_way_v4;
    struct ew_block_node block_node;
    struct ew_tenant_block_key tenant_block_key;
    struct ew_lpm_v6_key lpm_v6_key;
    struct ew_tenant_lpm_v6_key tenant_lpm_v6_key;
    struct ew_block_value block_value;
    struct ew_config config;
    struct ew_flood_policy flood_policy;
} ew_inner_types_anchor;

/* Inner-map templates: the verifier learns the inner layouts from them; the
 * agent creates the real inner maps with the same type, sizes and flags
 * (agent/datapath/abi.py SWAPPABLE_TABLES). */
#define EW_INNER_TEMPLATE(name, map_type, capacity, key_type, value_type) \
    struct name {                                                        \
        __uint(type, map_type);                                          \
        __uint(max_entries, capacity);                                   \
        __uint(map_flags, BPF_F_NO_PREALLOC);                            \
        __type(key, key_type);                                           \
        __type(value, value_type);                                       \
    }

EW_INNER_TEMPLATE(ew_block_table_v4, BPF_MAP_TYPE_HASH, EW_MAX_BLOCK_NODES_V4, __u32, struct ew_block_node);
EW_INNER_TEMPLATE(ew_tenant_block_table_v4, BPF_MAP_TYPE_HASH, EW_MAX_TENANT_BLOCK_NODES_V4,
                  struct ew_tenant_block_key, struct ew_block_node);
EW_INNER_TEMPLATE(ew_block_trie_v6, BPF_MAP_TYPE_LPM_TRIE, EW_MAX_SOURCE_BLOCKS_V6, struct ew_lpm_v6_key,
                  struct ew_block_value);
EW_INNER_TEMPLATE(ew_tenant_block_trie_v6, BPF_MAP_TYPE_LPM_TRIE, EW_MAX_SOURCE_BLOCKS_V6,
                  struct ew_tenant_lpm_v6_key, struct ew_block_value);

#define EW_SWAPPABLE_TABLE(name, inner)                     \
    struct {                                                \
        __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);           \
        __uint(max_entries, 1);                             \
        __type(key, __u32);                                 \
        __array(values, struct inner);                      \
    } name SEC(".maps")

EW_SWAPPABLE_TABLE(ew_gblock_v4, ew_block_table_v4);
EW_SWAPPABLE_TABLE(ew_tblock_v4, ew_tenant_block_table_v4);
EW_SWAPPABLE_TABLE(ew_gblock_v6, ew_block_trie_v6);
EW_SWAPPABLE_TABLE(ew_tblock_v6, ew_tenant_block_trie_v6);

/* The IPv4 source prefilter (struct ew_prefilter_v4): an array, so its
 * lookup is inlined into an address computation. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, EW_PREFILTER_V4_ENTRIES);
    __type(key, __u32);
    __type(value, struct ew_prefilter_v4);
} ew_prefilter_v4 SEC(".maps");

/* The IPv4 VIP heads (struct ew_vip_head_bucket): an array, so the lookup
 * is inlined; mmapable, so the agent writes each way with one store. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, EW_VIP_HEAD_BUCKETS);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct ew_vip_head_bucket);
} ew_vip_heads_v4 SEC(".maps");

/* Per tenant slot, the tenant id and port ranges for packets decided by
 * their VIP head (struct ew_slot_tenant); mmapable like the heads. The
 * loader sizes it to the tenant capacity. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, EW_MAX_TENANTS);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct ew_slot_tenant);
} ew_slot_tenants SEC(".maps");

/* The host bits of the partial /24s of the global list and of the tenants'
 * lists (struct ew_host_bits_v4): arrays, so their lookups are inlined too;
 * mmapable, so the agent writes a tag or a hosts word with one 8-byte store
 * (an update through the syscall copies the whole value, and a packet could
 * read half of it). */
#define EW_HOST_BITS_ARRAY(name)                            \
    struct {                                                \
        __uint(type, BPF_MAP_TYPE_ARRAY);                   \
        __uint(max_entries, EW_HOST_BITS_V4_ENTRIES);       \
        __uint(map_flags, BPF_F_MMAPABLE);                  \
        __type(key, __u32);                                 \
        __type(value, struct ew_host_bits_v4);              \
    } name SEC(".maps")

EW_HOST_BITS_ARRAY(ew_host_bits_v4);
EW_HOST_BITS_ARRAY(ew_thost_bits_v4);

/* Per-CPU array indexed by tenant slot: the packet path never contends on a
 * counter and the lookup compiles to an address computation. An attached
 * interface's loader sizes it, ew_bucket_shares and ew_sample_budget to the
 * policy's slots with headroom (agent/datapath/slot_maps.py): their memory is
 * slots x possible CPUs. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, EW_MAX_TENANTS);
    __type(key, __u32);
    __type(value, struct ew_counters);
} ew_counters SEC(".maps");

/* The policy's arrays, ew_config (one entry) and the flood policy per
 * tenant slot, sit behind single-slot map-in-map tables too: an array value
 * is updated in place by the syscall, so a packet could read half of the
 * old value and half of the new. The agent fills a fresh inner array and
 * swaps it in (agent/datapath/policy_arrays.py); a packet reads the slot
 * once and sees one version whole. Arrays take no BPF_F_NO_PREALLOC, and
 * the inner size must equal the template's (the loader sets the flood
 * table's to the tenant capacity), so the inner lookup stays inlined. */
#define EW_INNER_ARRAY_TEMPLATE(name, capacity, value_type) \
    struct name {                                           \
        __uint(type, BPF_MAP_TYPE_ARRAY);                   \
        __uint(max_entries, capacity);                      \
        __type(key, __u32);                                 \
        __type(value, value_type);                          \
    }

EW_INNER_ARRAY_TEMPLATE(ew_config_table, 1, struct ew_config);
EW_INNER_ARRAY_TEMPLATE(ew_flood_table, EW_MAX_TENANTS, struct ew_flood_policy);

EW_SWAPPABLE_TABLE(ew_config, ew_config_table);
/* Flood policy per tenant slot; the token buckets it refers to follow. */
EW_SWAPPABLE_TABLE(ew_flood_policies, ew_flood_table);

/* The live policy arrays' entries, through their slot (NULL: none yet). */
static __always_inline const struct ew_config *current_config(void)
{
    __u32 zero = 0;
    void *table = bpf_map_lookup_elem(&ew_config, &zero);

    return table ? bpf_map_lookup_elem(table, &zero) : NULL;
}

static __always_inline const struct ew_flood_policy *current_flood_policy(__u32 slot)
{
    __u32 zero = 0;
    void *table = bpf_map_lookup_elem(&ew_flood_policies, &zero);

    return table ? bpf_map_lookup_elem(table, &slot) : NULL;
}

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, EW_MAX_TENANTS * EW_BUCKET_KINDS);
    __type(key, __u32);
    __type(value, struct ew_bucket);
} ew_buckets SEC(".maps");

/* Each CPU's share of the tenant-wide buckets (bpf/token_bucket.h share_take). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, EW_MAX_TENANTS * EW_BUCKET_KINDS);
    __type(key, __u32);
    __type(value, struct ew_bucket_share);
} ew_bucket_shares SEC(".maps");

/* Per-source buckets of IPv6 sources (IPv4 ones are in ew_source_ways_v4
 * below, but in an engine without it). LRU: under a spoofed flood from more prefixes than it
 * holds, the least recently seen prefixes are evicted and start again with a
 * full burst, so the tenant-wide limits are the backstop that cannot churn.
 * One LRU list for all CPUs, on purpose: with BPF_F_NO_COMMON_LRU each CPU
 * evicts from its own list of max_entries / ncpus nodes, so a flood that
 * arrives on one queue could hold only that many prefixes (measured: of
 * 140,000 prefixes from one CPU of 2, 131,072 kept, against all 140,000 with
 * the common list; 2,048 per CPU on a 128-CPU server), and the lookup of a
 * known prefix, the drop path, takes no LRU lock either way. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, EW_MAX_SOURCE_BUCKETS);
    __type(key, struct ew_source_key);
    __type(value, struct ew_source_bucket);
} ew_source_buckets SEC(".maps");

/* Per-source buckets of IPv4 sources: a shared array of 4-way sets, an
 * inlined array lookup per way where the LRU hash took a hash lookup (bpf/flood.h
 * source_allows_v4; what it keeps: benchmarks/RESULTS.md, "Per-source
 * buckets in an array"). Not per CPU, so the limit is per prefix, not per
 * prefix and CPU. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, EW_SOURCE_SETS_V4 * EW_SOURCE_WAYS_V4);
    __type(key, __u32);
    __type(value, struct ew_source_way_v4);
} ew_source_ways_v4 SEC(".maps");

#endif /* EW_MAPS_H */
