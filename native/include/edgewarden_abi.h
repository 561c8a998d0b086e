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
#include <linux/bpf.h>      /* struct bpf_spin_lock */

/* ABI-BEGIN */

/* Map capacities. The loader may raise EW_MAX_TENANTS (tenants); an attached
 * interface's per-CPU slot maps get the policy's slots instead. */
#define EW_MAX_TENANTS 16384
#define EW_MAX_VIPS 65536
#define EW_MAX_PORT_RULES 65536
#define EW_MAX_BLOCK_NODES_V4 2097152
#define EW_MAX_TENANT_BLOCK_NODES_V4 262144
#define EW_MAX_SOURCE_BLOCKS_V6 262144
#define EW_MAX_SOURCE_BUCKETS 262144
/* IPv4 per-source buckets (ew_source_ways_v4): sets x ways = 524,288 buckets of 32 B, 16 MiB. */
#define EW_SOURCE_SETS_V4 131072
#define EW_SOURCE_SETS_V4_BITS 17
#define EW_SOURCE_WAYS_V4 4

/* Port ranges held in each VIP value (struct ew_vip.port_blocks). */
#define EW_VIP_PORT_RANGES 8

/* IPv4 source prefilter (ew_prefilter_v4): one entry per 64 consecutive
 * /24s, index = source address >> 14, bit = (address >> 8) & 63. */
#define EW_PREFILTER_V4_ENTRIES 262144

/* IPv4 VIP heads (ew_vip_heads_v4): 2^EW_VIP_HEAD_BUCKET_BITS buckets of
 * EW_VIP_HEAD_WAYS ways; a destination's bucket is
 * (daddr as loaded from the packet, a host-order u32) * EW_VIP_HEAD_MULTIPLIER
 * (mod 2^32), shifted right by 32 - EW_VIP_HEAD_BUCKET_BITS. */
#define EW_VIP_HEAD_BUCKET_BITS 14
#define EW_VIP_HEAD_BUCKETS 16384
#define EW_VIP_HEAD_WAYS 8
#define EW_VIP_HEAD_MULTIPLIER 2654435761
/* A way: the address in the low 32 bits, the head in the high 32: the slot
 * above bit 8, the VIP's flags (all below EW_VIP_HEAD_PRESENT) in the low
 * byte and EW_VIP_HEAD_PRESENT. A way whose head is EW_VIP_HEAD_OVERFLOW
 * (no EW_VIP_HEAD_PRESENT) is the overflow mark: some VIP of this bucket is
 * in ew_vips_v4 only. The probe returns a head, EW_VIP_HEAD_OVERFLOW (ask
 * ew_vips_v4) or 0 (no VIP has the address). */
#define EW_VIP_HEAD_PRESENT 128
#define EW_VIP_HEAD_PRESENT_SHIFT 7
#define EW_VIP_HEAD_SLOT_SHIFT 8
#define EW_VIP_HEAD_OVERFLOW 1
/* IPv4 host bits (ew_host_bits_v4, ew_thost_bits_v4): entry = ((source address >> 8) +
 * tenant id * EW_HOST_BITS_TENANT_SPREAD) & (EW_HOST_BITS_V4_ENTRIES - 1), a power of two
 * (tenant 0 in the global array); EW_HOST_BITS_VALID marks a tag that names a /24. */
#define EW_HOST_BITS_V4_ENTRIES 65536
#define EW_HOST_BITS_TENANT_SPREAD 40503
#define EW_HOST_BITS_VALID 0x80000000

/* Parser bounds: the verifier needs fixed loop bounds. */
#define EW_MAX_VLAN_TAGS 2
#define EW_MAX_IPV6_EXT_HEADERS 6

/* Tenant 0 owns all traffic whose destination matches no VIP; its counters
 * live in slot 0. */
#define EW_TENANT_UNASSIGNED 0

/* Values of ew_vip.flags (the tenant's state, copied into each of its VIPs so
 * the packet path needs one lookup) and of ew_tenant.flags. */
#define EW_TENANT_SUSPENDED 1
#define EW_TENANT_HAS_SOURCE_BLOCKS 2
#define EW_TENANT_HAS_PORT_BLOCKS 4
#define EW_VIP_HAS_PORT_VIPS 8      /* the address also has (protocol, port) VIPs */
#define EW_TENANT_HAS_FLOOD_POLICY 16 /* consult ew_flood_policies[slot] */
#define EW_TENANT_PORT_RANGES 64    /* every blocked port is in ew_vip.port_blocks: no ew_port_blocks lookup */

/* Values of ew_config.flags: let the datapath skip empty global lists (IPv6;
 * IPv4 is decided by the prefilter, where an engine has one). */
#define EW_CONFIG_GLOBAL_V4_BLOCKS 1
#define EW_CONFIG_GLOBAL_V6_BLOCKS 2

/* Address families as used in policy compilation. */
#define EW_FAMILY_IPV4 4
#define EW_FAMILY_IPV6 6

/* IPv4 block tables: two levels in one hash. Key = level << 24 | index,
 * index = address >> 16 (level 16) or address >> 8 (level 24). */
#define EW_BLOCK_LEVEL_16 16
#define EW_BLOCK_LEVEL_24 24
#define EW_BLOCK_NODE_FULL 1        /* the whole /16 is blocked */

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
    EW_REASON_DROP_AMPLIFICATION = 7,
    EW_REASON_DROP_FRAGMENT = 8,
    EW_REASON_DROP_RATE_LIMIT = 9,
    EW_REASON_DROP_SYN_RATE = 10,
    EW_REASON_DROP_SOURCE_RATE = 11,
    EW_REASON_ANSWER_SYN_COOKIE = 12,   /* SYN answered with a cookie SYN-ACK (XDP_TX) */
    EW_REASON_DROP_SYN_ACK = 13,        /* SYN-ACK that belongs to no connection */
    EW_REASON_DROP_BAD_COOKIE = 14,     /* SYN-cookie mode: no connection and no valid cookie */
    EW_REASON_COUNT = 15,
    /* Array size in ew_counters: room for reasons added later. */
    EW_REASON_SLOTS = 16
};

/* UDP source ports of well-known amplification and reflection services.
 * The value is the bit in ew_flood_policy.amplification_allowed; the port
 * number is in the name. */
enum ew_amplification_port {
    EW_AMP_PORT_19 = 0,         /* chargen */
    EW_AMP_PORT_53 = 1,         /* DNS */
    EW_AMP_PORT_111 = 2,        /* portmap */
    EW_AMP_PORT_123 = 3,        /* NTP */
    EW_AMP_PORT_137 = 4,        /* NetBIOS */
    EW_AMP_PORT_161 = 5,        /* SNMP */
    EW_AMP_PORT_389 = 6,        /* CLDAP */
    EW_AMP_PORT_500 = 7,        /* IKE */
    EW_AMP_PORT_1900 = 8,       /* SSDP */
    EW_AMP_PORT_3283 = 9,       /* ARD */
    EW_AMP_PORT_3702 = 10,      /* WS-Discovery */
    EW_AMP_PORT_5353 = 11,      /* mDNS */
    EW_AMP_PORT_10001 = 12,     /* Ubiquiti discovery */
    EW_AMP_PORT_11211 = 13,     /* memcached */
    EW_AMP_PORT_37810 = 14,     /* DVR DHCPDiscover */
    EW_AMP_PORT_COUNT = 15
};

/* Values of ew_flood_policy.flags. */
#define EW_FLOOD_DROP_AMPLIFICATION 1   /* UDP from amplification ports, unless allowed */
#define EW_FLOOD_DROP_FRAGMENTS 2       /* non-first fragments */
#define EW_FLOOD_LIMIT_FRAGMENTS 4      /* non-first fragments through the fragment bucket */
#define EW_FLOOD_HAS_LIMITS 8           /* some limit is set: read the clock, visit the buckets */
#define EW_FLOOD_SYN_COOKIES 16         /* answer SYNs with cookies; other TCP needs a connection or a cookie */
#define EW_FLOOD_SYN_ACK_DROP 32        /* drop every SYN-ACK: the tenant's VIPs never connect out */
#define EW_FLOOD_SYN_ACK_TRACK 64       /* drop SYN-ACKs that match no conntrack connection */
#define EW_FLOOD_COARSE_CLOCK 128       /* every burst covers EW_COARSE_CLOCK_NS of its rate: the coarse clock suffices */

/* The coarse clock's tick is a jiffy (at most 10 ms at HZ=100): a limit
 * whose burst holds less than this much of its rate would lose the tokens
 * of a tick to the cap, so only policies whose every limit has the room
 * read bpf_ktime_get_coarse_ns. */
#define EW_COARSE_CLOCK_NS 10000000

/* The SYN-ACK a SYN cookie is sent in: IPv4 without options or IPv6 without
 * extension headers, and TCP with the MSS the cookie encodes. A client that
 * sent timestamps also gets SACK-permitted (if it offered it), a timestamp
 * whose low 6 bits carry its window scale and SACK choice (as the kernel's
 * synproxy encodes them, so synproxy can read them back from the ACK), and
 * our window scale (if it offered one), which must be synproxy's. */
#define EW_SYNACK_TCP_LEN 24            /* MSS only: the client sent no timestamps */
#define EW_SYNACK_TCP_LEN_TS 40         /* MSS, SACK-permitted or 2 NOPs, timestamps, NOP + window scale or 4 NOPs */
#define EW_SYNACK_TTL 64
#define EW_SYNPROXY_WSCALE 7            /* the nftables synproxy rule's wscale (agent/datapath/netfilter.py) */

/* Token buckets per tenant slot: ew_buckets[slot * EW_BUCKET_KINDS + kind]. */
enum ew_bucket_kind {
    EW_BUCKET_PACKETS = 0,      /* every packet of the tenant */
    EW_BUCKET_BYTES = 1,        /* its bytes */
    EW_BUCKET_SYN = 2,          /* its TCP SYNs */
    EW_BUCKET_FRAGMENTS = 3,    /* its non-first fragments, with EW_FLOOD_LIMIT_FRAGMENTS */
    EW_BUCKET_KINDS = 4
};

/* A limit: `rate` units per second, at most `burst` units at once. rate 0
 * with burst 0 means no limit. Units: packets, or bytes for EW_BUCKET_BYTES. */
struct ew_rate {
    __u64 rate;
    __u64 burst;
};

/* ew_flood_policies: per tenant slot, changed at run time without reload. */
struct ew_flood_policy {
    __u32 flags;
    __u32 amplification_allowed;    /* bit i: allow ew_amplification_port i */
    struct ew_rate limits[4];       /* EW_BUCKET_KINDS, indexed by enum ew_bucket_kind */
    struct ew_rate per_source;      /* packets per source prefix; 0 and 0 = none */
    __u8 source_prefix_v4;          /* sources are grouped by this prefix length */
    __u8 source_prefix_v6;
    __u16 pad;
    __u32 generation;               /* changes with the policy: buckets of another generation start full */
};

/* Value of ew_source_buckets: like ew_bucket but without a lock, which LRU
 * maps cannot hold; see bpf/flood.h on what that means. */
struct ew_source_bucket {
    __u64 tokens;
    __u64 last_ns;
};

/* ew_source_buckets (LRU): per tenant slot and source prefix (IPv6; IPv4 in
 * an engine without ew_source_ways_v4, the DPDK build). */
struct ew_source_key {
    __u32 slot;
    __u8 family;                    /* EW_FAMILY_IPV4 / EW_FAMILY_IPV6 */
    __u8 prefixlen;
    __u16 generation;               /* low 16 bits of the policy's: a new policy, new buckets */
    __u8 prefix[16];                /* the source, host bits cleared */
};

/* ew_source_ways_v4: the per-source buckets of IPv4 sources, a shared array
 * of EW_SOURCE_SETS_V4 sets of EW_SOURCE_WAYS_V4 consecutive ways, one bucket
 * each (bpf/flood.h source_allows_v4). A (slot, prefix) hashes to one set
 * and is kept in one of its ways; a prefix not found takes a free way, or
 * else the way refilled least recently, which starts over with a full burst
 * (as an LRU eviction does). */
struct ew_source_way_v4 {
    __u64 tag;                      /* slot << 32 | prefix (the source in network byte order, host bits cleared) */
    __u32 generation;               /* of the flood policy that spent from it; 0: a free way */
    __u32 reserved;
    __u64 tokens;                   /* as in ew_bucket */
    __u64 last_ns;
};

/* ew_buckets: token state. Tokens are kept in unit-nanoseconds (units x
 * 1e9) so refills are exact integer arithmetic. A bucket whose generation is
 * not its tenant's flood policy's starts full, so a policy change resets the
 * buckets in the same instant the new policy takes effect. */
struct ew_bucket {
    struct bpf_spin_lock lock;
    __u32 generation;
    __u64 tokens;
    __u64 last_ns;
};

/* A range of blocked destination ports of one protocol, inside the VIP
 * value so that the pass path needs no port lookup. proto 0 ends the list. */
struct ew_port_range {
    __u16 first;        /* host byte order, inclusive */
    __u16 last;
    __u8 proto;         /* IPPROTO_TCP / IPPROTO_UDP; 0: unused (and every later one) */
    __u8 pad[3];
};

/* ew_bucket_shares: per-CPU, indexed like ew_buckets: the tokens one CPU
 * took from the tenant-wide bucket and has not spent yet (bpf/token_bucket.h
 * share_take), in unit-nanoseconds. */
struct ew_bucket_share {
    __u64 tokens;
    __u64 dry_ns;       /* when the shared bucket last could not cover a packet (0: never) */
    __u64 dry_tokens;   /* what it held then: it holds at most that plus the rate since */
    __u32 generation;   /* of the flood policy; another one: the share starts empty */
    __u32 reserved;
};

/* Value of every VIP map: who owns the destination and its state. A tenant
 * whose blocked ports merge into at most EW_VIP_PORT_RANGES ranges has them
 * in port_blocks (merged, in order of protocol then first port: the
 * datapath stops at the first range past the packet's) and
 * EW_TENANT_PORT_RANGES set; one with more keeps
 * EW_TENANT_HAS_PORT_BLOCKS alone and the datapath looks in ew_port_blocks. */
struct ew_vip {
    __u32 tenant_id;
    __u32 slot;         /* index into ew_counters */
    __u32 flags;        /* EW_TENANT_* | EW_VIP_HAS_PORT_VIPS */
    __u32 reserved;
    struct ew_port_range port_blocks[8];    /* EW_VIP_PORT_RANGES */
};

/* ew_vip_heads_v4: an inlined open-addressing copy of the heads (slot and
 * flags) of ew_vips_v4, so that a packet whose verdict needs no more than
 * that (a global drop, a tenant without port or source-block lookups) costs
 * no hash lookup. Each way is one aligned u64, written by the agent with one
 * store through a mmap (agent/datapath/vip_heads.py), so a packet reads a
 * VIP's old head or its new one, never a mix. ew_vips_v4 stays the whole
 * truth: a VIP not in its bucket (overflow) is looked up there. */
struct ew_vip_head_bucket {
    __u64 ways[8];      /* EW_VIP_HEAD_WAYS */
};

/* ew_slot_tenants: per counter slot, what a packet whose VIP head names
 * the slot needs beyond the head when its tenant has port blocks, a source
 * list the packet must be looked up in, or sampling: the tenant id and the
 * blocked port ranges (those of its VIPs' values). So that such a tenant's
 * packets, too, are judged without the ew_vips_v4 lookup. The agent writes
 * an entry through a mmap, one aligned u64 store at a time, between two
 * stamps (agent/datapath/vip_heads.py): stamp = sequence << 32 | head, the
 * sequence odd while the entry is being written. A packet uses an entry
 * only if the stamp it read before and after the entry were equal, even and
 * held the very head it found; else it asks ew_vips_v4 (the whole truth). */
struct ew_slot_tenant {
    __u64 stamp;
    __u32 tenant_id;
    __u32 reserved;
    struct ew_port_range port_blocks[8];    /* EW_VIP_PORT_RANGES */
};

/* ew_vips_v4 / ew_vips_v6: destination address (any port) -> ew_vip. An
 * address with only (protocol, port) VIPs has an entry for tenant 0 with
 * EW_VIP_HAS_PORT_VIPS set, so one lookup tells whether a second is needed. */
struct ew_vip_v6_key {
    __u8 addr[16];
};

/* ew_vip_ports_v4 / ew_vip_ports_v6: (address, protocol, port) -> ew_vip. */
struct ew_vip_port_v4_key {
    __u8 addr[4];
    __u16 port;         /* network byte order */
    __u8 proto;
    __u8 pad;
};

struct ew_vip_port_v6_key {
    __u8 addr[16];
    __u16 port;         /* network byte order */
    __u8 proto;
    __u8 pad;
};

/* ew_tenants: tenant id -> state and counter slot (read by the agent, not
 * on the packet path). */
struct ew_tenant {
    __u32 flags;
    __u32 slot;
};

/* ew_port_blocks: (tenant, proto, destination port) -> 1. */
struct ew_port_key {
    __u32 tenant_id;
    __u16 port;         /* network byte order */
    __u8 proto;
    __u8 pad;
};

/* Node of an IPv4 block table. Level 16: flags may say the whole /16 is
 * blocked; else bit i of full24 / partial24 says /24 number i inside it is
 * blocked entirely / has a level-24 node. Level 24: bit h of hosts says
 * host h of the /24 is blocked. One inner map holds both levels, so a whole
 * list version is swapped in with one update of the outer map. */
struct ew_block_node {
    __u32 flags;
    __u32 reserved;
    __u64 full24[4];    /* level 16; at level 24: hosts */
    __u64 partial24[4]; /* level 16 only */
};

/* ew_tblock_v4 inner key: the tenant, then the level-tagged index. */
struct ew_tenant_block_key {
    __u32 tenant_id;
    __u32 node;
};

/* ew_gblock_v6 / ew_tblock_v6 inner LPM tries. */
struct ew_lpm_v6_key {
    __u32 prefixlen;
    __u8 addr[16];
};

/* Tenant-scoped v6 trie: prefixlen = 32 + source prefix length. */
struct ew_tenant_lpm_v6_key {
    __u32 prefixlen;
    __u8 tenant_id[4];  /* network byte order, part of the matched prefix */
    __u8 addr[16];
};

/* Value of the v6 tries. */
struct ew_block_value {
    __u32 list_id;
    __u32 reserved;
};

/* ew_prefilter_v4: per /24 of IPv4 sources, whether any list touches it, so
 * a source in no list is decided by one inlined array lookup, and whether
 * the global list blocks it whole, so most global drops need no hash
 * lookup. Always a superset of the block tables: bits are set before a
 * table gains entries and cleared after it lost them (agent/datapath/
 * prefilter.py). Three bitmaps of 2 MiB and a spare word, interleaved (8
 * MiB), so that one lookup (one cache line) answers every question the
 * packet path asks about a /24. */
struct ew_prefilter_v4 {
    __u64 global_listed;    /* the global table has something inside the /24 */
    __u64 global_whole;     /* the global list blocks the whole /24 */
    __u64 tenant_listed;    /* some tenant's table has something inside the /24 */
    __u64 reserved;
};

/* ew_host_bits_v4, ew_thost_bits_v4: the host bits of the partial /24s (the
 * level-24 nodes) of the global list and of the tenants' lists, in
 * mmapable arrays so the packet path reads them with one inlined lookup
 * instead of hash lookups. Direct-mapped caches in front of ew_gblock_v4
 * and ew_tblock_v4: an entry decides only for the (tenant, /24) it names,
 * any other source falls back to the table. tag = (EW_HOST_BITS_VALID |
 * /24 index) << 32 | generation; a tag without EW_HOST_BITS_VALID is a free
 * entry (its generation kept, so an entry never gets the same tag twice).
 * The agent writes them through a mmap, one 8-byte word at a time, after
 * the table changed: the hosts of a kept (tenant, /24) word by word; an
 * entry changes owner only by tag freed, tenant and hosts written, tag set;
 * the reader takes the tenant and hosts words between two reads of the tag
 * (agent/datapath/host_bits.py, bpf/blocklist.h). 64 bytes: one cache line. */
struct ew_host_bits_v4 {
    __u64 tag;
    __u64 hosts[4];     /* bit h: host h of the /24 is blocked */
    __u32 tenant_id;    /* whose list (ew_thost_bits_v4); 0 in ew_host_bits_v4 */
    __u32 reserved;
    __u64 spare[2];
};

/* ew_counters: per-CPU array indexed by tenant slot. */
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

/* Packet evidence (bpf/sample.h). A tenant whose VIP values carry
 * EW_TENANT_SAMPLED (under incident or on the watch list) has its packets
 * sampled into the ew_samples ring buffer: the first EW_SAMPLE_BYTES bytes
 * and what the datapath knew, within a per-tenant budget (per CPU) of
 * ew_sample_config.samples_per_second. Other tenants pay one flag test. */
#define EW_TENANT_SAMPLED 32
#define EW_SAMPLE_BYTES 256
#define EW_SAMPLE_RING_BYTES 4194304

struct ew_sample {
    __u64 timestamp_ns;     /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
    __u32 tenant_id;
    __u32 ifindex;
    __u32 reason;           /* enum ew_verdict_reason */
    __u32 packet_length;    /* whole frame */
    __u32 captured_length;  /* bytes in data: min(packet_length, EW_SAMPLE_BYTES) */
    __u32 reserved;
    __u8 data[256];         /* EW_SAMPLE_BYTES */
};

/* ew_sample_config: single-entry array written by the agent. */
struct ew_sample_config {
    __u64 samples_per_second;   /* per tenant and CPU; 0: none */
    __u64 burst;
    __u64 lost;                 /* samples the ring had no room for (datapath adds) */
};

/* ew_sample_budget: per-CPU array indexed by tenant slot. Tokens in
 * sample-nanoseconds, as the token buckets of the flood defences. */
struct ew_sample_budget {
    __u64 tokens;
    __u64 last_ns;
};

/* ABI-END */

/* The array sizes above are literals because cffi's cdef cannot evaluate enum
 * constants there; these keep them honest. */
_Static_assert(sizeof(((struct ew_counters *)0)->class_packets) == EW_CLASS_COUNT * 8,
               "class_packets must hold EW_CLASS_COUNT counters");
_Static_assert(sizeof(((struct ew_counters *)0)->reason_packets) == EW_REASON_SLOTS * 8,
               "reason_packets must hold EW_REASON_SLOTS counters");
_Static_assert(EW_REASON_COUNT <= EW_REASON_SLOTS, "too many verdict reasons");
_Static_assert(sizeof(struct ew_vip_port_v4_key) == 8, "ew_vip_port_v4_key layout changed");
_Static_assert(sizeof(struct ew_block_node) == 72, "ew_block_node layout changed");
_Static_assert(sizeof(((struct ew_vip *)0)->port_blocks) == EW_VIP_PORT_RANGES * sizeof(struct ew_port_range),
               "port_blocks must hold EW_VIP_PORT_RANGES ranges");
_Static_assert(sizeof(struct ew_prefilter_v4) == 32, "ew_prefilter_v4 layout changed");
_Static_assert(sizeof(((struct ew_vip_head_bucket *)0)->ways) == EW_VIP_HEAD_WAYS * 8, "one u64 per way");
_Static_assert(EW_VIP_HEAD_BUCKETS == 1 << EW_VIP_HEAD_BUCKET_BITS, "buckets: a power of two");
_Static_assert(sizeof(struct ew_slot_tenant) == 80 && sizeof(struct ew_port_range) == 8,
               "a slot tenant entry is u64 words, each written with one store");
_Static_assert(EW_VIP_HEAD_PRESENT == 1 << EW_VIP_HEAD_PRESENT_SHIFT && EW_VIP_HEAD_OVERFLOW == 1,
               "the probe finds the mark by a shift of PRESENT onto bit 0");
_Static_assert((EW_TENANT_SUSPENDED | EW_TENANT_HAS_SOURCE_BLOCKS | EW_TENANT_HAS_PORT_BLOCKS | EW_VIP_HAS_PORT_VIPS |
                EW_TENANT_HAS_FLOOD_POLICY | EW_TENANT_SAMPLED | EW_TENANT_PORT_RANGES) < EW_VIP_HEAD_PRESENT,
               "every VIP flag fits below EW_VIP_HEAD_PRESENT");
_Static_assert(sizeof(struct ew_host_bits_v4) == 64, "ew_host_bits_v4 layout changed");
_Static_assert((EW_HOST_BITS_V4_ENTRIES & (EW_HOST_BITS_V4_ENTRIES - 1)) == 0,
               "EW_HOST_BITS_V4_ENTRIES is a power of two (the entry is a mask of the /24)");
_Static_assert(sizeof(((struct ew_flood_policy *)0)->limits) == EW_BUCKET_KINDS * sizeof(struct ew_rate),
               "one limit per bucket kind");
_Static_assert(sizeof(((struct ew_sample *)0)->data) == EW_SAMPLE_BYTES, "one sample holds EW_SAMPLE_BYTES");
_Static_assert(EW_TENANT_SAMPLED > EW_TENANT_HAS_FLOOD_POLICY, "EW_TENANT_SAMPLED is a bit of its own");
_Static_assert(EW_AMP_PORT_COUNT <= 32, "amplification_allowed is a 32-bit mask");

#endif /* EDGEWARDEN_ABI_H */
