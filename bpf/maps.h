/* Every map of the datapath, pinned by name under
 * /sys/fs/bpf/edgewarden/<ifname>/ by the loader so that enforcement and
 * counters outlive the agent. Capacities come from edgewarden_abi.h. */
#ifndef EW_MAPS_H
#define EW_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "edgewarden_abi.h"

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, EW_MAX_VIPS);
    __type(key, struct ew_vip_key);
    __type(value, __u32);
} ew_vips SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, EW_MAX_TENANTS);
    __type(key, __u32);
    __type(value, struct ew_tenant);
} ew_tenants SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, EW_MAX_PORT_RULES);
    __type(key, struct ew_port_key);
    __type(value, __u8);
} ew_port_blocks SEC(".maps");

#define EW_LPM_MAP(name, key_type)                      \
    struct {                                            \
        __uint(type, BPF_MAP_TYPE_LPM_TRIE);            \
        __uint(max_entries, EW_MAX_SOURCE_BLOCKS);      \
        __uint(map_flags, BPF_F_NO_PREALLOC);           \
        __type(key, key_type);                          \
        __type(value, struct ew_block_value);           \
    } name SEC(".maps")

EW_LPM_MAP(ew_gblock_v4, struct ew_lpm_v4_key);
EW_LPM_MAP(ew_gblock_v6, struct ew_lpm_v6_key);
EW_LPM_MAP(ew_tblock_v4, struct ew_tenant_lpm_v4_key);
EW_LPM_MAP(ew_tblock_v6, struct ew_tenant_lpm_v6_key);

/* Per-CPU so the packet path never contends on a counter. The loader creates
 * an entry for every tenant; the datapath only inserts as a fallback. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, EW_MAX_TENANTS);
    __type(key, __u32);
    __type(value, struct ew_counters);
} ew_counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ew_config);
} ew_config SEC(".maps");

#endif /* EW_MAPS_H */
