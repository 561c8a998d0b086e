/* edgewarden ABI: the one definition of every map key, value, traffic class
 * and verdict reason shared by the XDP program (bpf/) and the host side
 * (the cffi binding derives its struct layouts and constants from this file).
 *
 * The block between ABI-BEGIN and ABI-END is also parsed by cffi's cdef, so it
 * is restricted to what cdef understands: plain integer #defines, enums and
 * structs of fixed-width types. Layouts are append-only: maps pinned by an
 * older agent must stay readable by a newer one, which is why the reason
 * array reserves slots for reasons not yet defined.
 */
#ifndef EDGEWARDEN_ABI_H
#define EDGEWARDEN_ABI_H

#include <linux/types.h>

/* ABI-BEGIN */

/* Map capacities. The loader may raise them (bpf_map__set_max_entries). */
#define EW_MAX_TENANTS 16384
#define EW_MAX_VIPS 65536
#define EW_MAX_PORT_RULES 65536
#define EW_MAX_SOURCE_BLOCKS 1048576

/* Parser bounds: the verifier needs fixed loop bounds. */
#define EW_MAX_VLAN_TAGS 2
#define EW_MAX_IPV6_EXT_HEADERS 6

/* Tenant 0 owns all traffic whose destination matches no VIP. */
#define EW_TENANT_UNASSIGNED 0

/* Values of ew_tenant.flags. */
#define EW_TENANT_SUSPENDED 1
#define EW_TENANT_HAS_SOURCE_BLOCKS 2
#define EW_TENANT_HAS_PORT_BLOCKS 4

/* Values of ew_config.flags: let the datapath skip empty global lists. */
#define EW_CONFIG_GLOBAL_V4_BLOCKS 1
#define EW_CONFIG_GLOBAL_V6_BLOCKS 2

/* Address families as stored in ew_vip_key.family. */
#define EW_FAMILY_IPV4 4
#define EW_FAMILY_IPV6 6

enum ew_traffic_class {
    EW_CLASS_TCP_SYN = 0,
    EW_CLASS_TCP_OTHER = 1,
    EW_CLASS_UDP = 2,
    EW_CLASS_ICMP = 3,
    EW_CLASS_FRAGMENT = 4,
    EW_CLASS_OTHER = 5,
    EW_CLASS_COUNT = 6
};

/* Reasons are checked in this order of precedence (see bpf/verdict.h). */
enum ew_verdict_reason {
    EW_REASON_PASS_ALLOWED = 0,
    EW_REASON_PASS_NON_IP = 1,
    EW_REASON_DROP_MALFORMED = 2,
    EW_REASON_DROP_GLOBAL_BLOCK = 3,
    EW_REASON_DROP_TENANT_SUSPENDED = 4,
    EW_REASON_DROP_TENANT_BLOCK = 5,
    EW_REASON_DROP_PORT_BLOCK = 6,
    EW_REASON_COUNT = 7,
    /* Array size in ew_counters: room for reasons added later. */
    EW_REASON_SLOTS = 16
};

/* ew_vips: destination -> tenant. port == 0 and proto == 0 means any port. */
struct ew_vip_key {
    __u8 addr[16];      /* IPv4 in the first 4 bytes, rest zero */
    __u16 port;         /* network byte order */
    __u8 proto;         /* IPPROTO_TCP, IPPROTO_UDP, or 0 */
    __u8 family;        /* EW_FAMILY_IPV4 or EW_FAMILY_IPV6 */
};

/* ew_tenants: tenant id -> state. */
struct ew_tenant {
    __u32 flags;
    __u32 reserved;
};

/* ew_port_blocks: (tenant, proto, destination port) -> 1. */
struct ew_port_key {
    __u32 tenant_id;
    __u16 port;         /* network byte order */
    __u8 proto;
    __u8 pad;
};

/* ew_global_blocks_v4/v6: LPM tries on the source address. */
struct ew_lpm_v4_key {
    __u32 prefixlen;
    __u8 addr[4];
};

struct ew_lpm_v6_key {
    __u32 prefixlen;
    __u8 addr[16];
};

/* ew_tenant_blocks_v4/v6: LPM tries keyed by tenant then source, so one trie
 * serves every tenant: prefixlen = 32 + source prefix length. */
struct ew_tenant_lpm_v4_key {
    __u32 prefixlen;
    __u8 tenant_id[4];  /* network byte order, part of the matched prefix */
    __u8 addr[4];
};

struct ew_tenant_lpm_v6_key {
    __u32 prefixlen;
    __u8 tenant_id[4];
    __u8 addr[16];
};

/* Value of every block-list trie: which list put the entry there. */
struct ew_block_value {
    __u32 list_id;
    __u32 reserved;
};

/* ew_counters: per-CPU, per tenant. */
struct ew_counters {
    __u64 class_packets[6];    /* EW_CLASS_COUNT */
    __u64 class_bytes[6];
    __u64 reason_packets[16];  /* EW_REASON_SLOTS */
    __u64 reason_bytes[16];
};

/* ew_config: single-entry array read by the datapath and by `status`. */
struct ew_config {
    __u64 policy_revision;
    __u32 flags;
    __u32 reserved;
};

/* ABI-END */

/* The array sizes above are literals because cffi's cdef cannot evaluate enum
 * constants there; these keep them honest. */
_Static_assert(sizeof(((struct ew_counters *)0)->class_packets) == EW_CLASS_COUNT * 8,
               "class_packets must hold EW_CLASS_COUNT counters");
_Static_assert(sizeof(((struct ew_counters *)0)->reason_packets) == EW_REASON_SLOTS * 8,
               "reason_packets must hold EW_REASON_SLOTS counters");
_Static_assert(EW_REASON_COUNT <= EW_REASON_SLOTS, "too many verdict reasons");
_Static_assert(sizeof(struct ew_vip_key) == 20, "ew_vip_key layout changed");

#endif /* EDGEWARDEN_ABI_H */
