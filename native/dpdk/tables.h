/* The DPDK worker's tables: what the XDP path keeps in BPF maps, kept in
 * plain memory. A policy snapshot holds every table one policy version
 * compiles to (agent/datapath/compile.py gives their exact contents, keyed by
 * the BPF map names) and is never changed once published; lcores switch
 * snapshots between bursts (worker.c), so no packet is judged by a mix.
 * Counters and token buckets are state, not policy: they live in the worker
 * and survive snapshot swaps, as the XDP maps survive a policy apply. */
#ifndef EW_DPDK_TABLES_H
#define EW_DPDK_TABLES_H

#include <stdint.h>
#include <stddef.h>
#include "edgewarden_abi.h"

enum ew_table_kind {
    EW_TABLE_HASH = 1,      /* exact match: a BPF hash map */
    EW_TABLE_LPM = 2,       /* longest prefix: a BPF LPM trie (key = __u32 prefixlen + data) */
};

/* Open addressing, linear probing; built once, then read-only. */
struct ew_table {
    /* Itself: on the packet path an inner table (what an outer map's slot 0
     * returns) is told from a named map by this first word, which in a map
     * definition is its `type` (bpf_shim.h's __uint), a NULL pointer. */
    const struct ew_table *self;
    uint32_t kind;
    uint32_t key_size;
    uint32_t value_size;
    uint32_t mask;          /* capacity - 1, capacity a power of two >= 2 x entries */
    uint32_t count;
    uint8_t *used;
    uint8_t *keys;
    uint8_t *values;
    /* EW_TABLE_LPM only: the prefix lengths present, longest first */
    uint32_t nlengths;
    uint32_t lengths[161];
};

/* Per-source buckets: a set-associative cache standing in for the LRU hash
 * ew_source_buckets, one per lcore (no locks; an evicted prefix starts over
 * with a full burst, as an LRU eviction does on the XDP path). */
#define EW_SOURCE_WAYS 4
struct ew_source_entry {
    struct ew_source_key key;
    struct ew_source_bucket bucket;
    uint32_t used;
    uint32_t pad;
};
struct ew_source_cache {
    uint32_t mask;          /* sets - 1 */
    struct ew_source_entry *entries;    /* sets x EW_SOURCE_WAYS */
};

/* One policy version. NULL block tables are an empty outer slot. */
struct ew_snapshot {
    struct ew_table *vips_v4, *vips_v6, *vip_ports_v4, *vip_ports_v6, *tenants, *port_blocks;
    struct ew_table *gblock_v4, *tblock_v4, *gblock_v6, *tblock_v6;
    struct ew_flood_policy *flood_policies;     /* [slots] */
    uint32_t slots;
    struct ew_config config;
};

/* One judged packet as its counters saw it: the slot, reason and class it
 * was counted under (tests observe the engine packet by packet with it, as
 * they observe the XDP program's counter deltas). */
struct ew_trace_entry {
    uint32_t slot;
    uint8_t reason;
    uint8_t traffic_class;
    uint8_t action;
    uint8_t counted;        /* 0: the packet moved no counter */
};

struct ew_trace {
    struct ew_trace_entry *entries;
    uint32_t capacity;
    uint32_t count;
};

/* Packet evidence (bpf/sample.h): the BPF ring buffer ew_samples becomes
 * one ring per lcore of fixed-size records, written by that lcore alone and
 * drained by the agent's evidence thread alone, so neither side locks. As
 * many records as fit in the XDP ring's bytes, rounded down to a power of
 * two (a full ring loses the sample and counts it in ew_sample_config.lost,
 * as on XDP). */
#define EW_DPDK_SAMPLE_RECORDS 8192
_Static_assert(EW_DPDK_SAMPLE_RECORDS * sizeof(struct ew_sample) <= EW_SAMPLE_RING_BYTES &&
               2 * EW_DPDK_SAMPLE_RECORDS * sizeof(struct ew_sample) > EW_SAMPLE_RING_BYTES,
               "EW_DPDK_SAMPLE_RECORDS: the largest power of two of samples in EW_SAMPLE_RING_BYTES");
struct ew_sample_ring {
    uint32_t head;          /* next record the lcore fills */
    uint8_t pad_head[60];   /* head and tail on cache lines of their own */
    uint32_t tail;          /* next record the agent reads */
    uint8_t pad_tail[60];
    struct ew_sample records[EW_DPDK_SAMPLE_RECORDS];
};

/* What one lcore judges with: set by the worker before each burst. */
struct ew_view {
    const struct ew_snapshot *snapshot;
    struct ew_counters *counters;               /* this lcore's [slots] */
    uint32_t slots;
    struct ew_bucket *buckets;                  /* the worker's [slots x EW_BUCKET_KINDS] */
    struct ew_source_cache *sources;            /* this lcore's */
    struct ew_trace *trace;                     /* NULL unless tracing (tests) */
    struct ew_sample_ring *samples;             /* this lcore's evidence ring */
    struct ew_sample_budget *sample_budgets;    /* this lcore's [slots] (a per-CPU array on XDP) */
    struct ew_sample_config *sample_config;     /* the worker's, written by the agent */
    uint32_t port;                              /* the burst's port: a sample's ifindex */
};

/* Functions the packet path calls in other files, none of which calls back
 * into datapath.c: `leaf` lets the compiler keep the lcore's view (a
 * static of datapath.c) in registers across them. */
#define EW_LEAF __attribute__((leaf))

struct ew_table *ew_table_build(uint32_t kind, uint32_t key_size, uint32_t value_size, const void *keys,
                                const void *values, uint32_t count, char *error, size_t error_size);
void ew_table_free(struct ew_table *table);

int ew_source_cache_init(struct ew_source_cache *cache, uint32_t entries);
void ew_source_cache_free(struct ew_source_cache *cache);
EW_LEAF void *ew_source_cache_lookup(struct ew_source_cache *cache, const struct ew_source_key *key);
EW_LEAF int ew_source_cache_insert(struct ew_source_cache *cache, const struct ew_source_key *key,
                           const struct ew_source_bucket *value);

struct ew_snapshot *ew_snapshot_new(uint32_t slots);
/* Fills the table named as its BPF map (e.g. "ew_vips_v4") from packed keys
 * and values in the ABI layout. 0, or -1 with the reason in `error`. */
int ew_snapshot_fill(struct ew_snapshot *snapshot, const char *map_name, const void *keys, const void *values,
                     uint32_t count, uint32_t key_size, uint32_t value_size, char *error, size_t error_size);
void ew_snapshot_free(struct ew_snapshot *snapshot);

/* One received frame and what the XDP program returned for it. */
struct ew_frame_ref {
    void *packet;           /* the rte_mbuf */
    void *data;
    uint32_t length;        /* of the first segment, the part parsed */
    uint32_t packet_length; /* of all segments, the part counted */
    uint32_t action;        /* XDP_PASS, XDP_DROP, XDP_TX */
};

/* worker.c: `length` bytes at `offset` of a (multi-segment) packet; 0 if it is shorter. */
EW_LEAF int ew_packet_read(void *packet, uint32_t offset, uint32_t length, void *out);

/* datapath.c: the XDP program's verdict for each frame of a burst. */
void ew_judge_burst(struct ew_view *view, struct ew_frame_ref *frames, uint32_t count);

/* The test clock: when set (nonzero), bpf_ktime_get_ns returns it, so a
 * test can hold rate limits to the reference model's arithmetic. */
void ew_set_test_clock(uint64_t ns);
EW_LEAF uint64_t ew_clock_ns(void);
void ew_clock_init(uint64_t tsc_hz);

#endif /* EW_DPDK_TABLES_H */
