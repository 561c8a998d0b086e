/* The XDP program, compiled for the host: bpf/edgewarden.bpf.c itself
 * (parse.h, verdict.h, flood.h, account.h, ...) with bpf_shim.h standing in
 * for the BPF-only parts, and the map helpers defined over the lcore's view
 * (tables.h). So the DPDK worker's parse, tenant lookup, verdict and
 * accounting are the XDP datapath's, line for line. */
#include "bpf_shim.h"

/* Inlined into every lookup site, the inner-table path is compiled for each
 * key type with every key size (a table's key size always matches its map's
 * key: ew_snapshot_fill checks it), which gcc reports as out of bounds. */
#pragma GCC diagnostic ignored "-Warray-bounds"
#pragma GCC diagnostic ignored "-Wstringop-overread"

/* A DPDK port bypasses the kernel: no conntrack, as the datapath is built
 * for kernels without its kfuncs (bpf/edgewarden_no_conntrack.bpf.c). */
#define EW_WITHOUT_CONNTRACK 1
/* Packet evidence (bpf/sample.h) is compiled in: its ring buffer is the
 * lcore's sample ring (tables.h), its config and budgets the worker's. */
#include "edgewarden.bpf.c"

#include <errno.h>
#include "table_lookup.h"

/* The first word of a map or table, read whatever its type. */
typedef void *__attribute__((may_alias)) ew_first_word;

/* The view of the lcore running this thread, a copy made per burst
 * (initial-exec: one %fs load reaches a field, where a pointer to the view
 * cost a second dependent load in every map lookup). */
static __thread struct ew_view current_view __attribute__((tls_model("initial-exec")));
/* Tracing: the packet's counters go to a scratch block first, to see what it moved. */
static __thread struct ew_counters trace_scratch __attribute__((tls_model("initial-exec")));
static __thread int64_t trace_slot __attribute__((tls_model("initial-exec")));
/* The packet's facts and tenant head (bpf/edgewarden.bpf.c ew_packet_scratch): a thread's. */
static __thread struct ew_packet_scratch packet_scratch __attribute__((tls_model("initial-exec")));

static inline __attribute__((always_inline)) void *bpf_map_lookup_elem(void *map, const void *key)
{
    const struct ew_view *v = &current_view;
    const struct ew_snapshot *s = v->snapshot;
    __u32 index;

    /* What the outer lookups below return, tested first: otherwise a
     * (run-time) inner address went through every comparison with a named
     * map first, several times a packet. A block table is known by its
     * first word, which points at itself (a named map's first word is its
     * NULL `type`); the policy arrays by their addresses in the snapshot.
     * For the named maps the comparisons further down fold away, so these
     * few tests are all they pay. */
    if (map && *(const ew_first_word *)map == map)
        return ew_table_find(map, key);
    if (map == (void *)&s->config)
        return *(const __u32 *)key == 0 ? (void *)&s->config : NULL;
    if (map == (void *)s->flood_policies) {
        index = *(const __u32 *)key;
        return index < s->slots ? &s->flood_policies[index] : NULL;
    }
    if (map == (void *)&ew_vips_v4)
        return ew_exact_lookup_n(s->vips_v4, key, 4);
    if (map == (void *)&ew_vip_ports_v4)
        return ew_exact_lookup_n(s->vip_ports_v4, key, 8);
    if (map == (void *)&ew_vips_v6)
        return ew_exact_lookup_n(s->vips_v6, key, 16);
    if (map == (void *)&ew_vip_ports_v6)
        return ew_exact_lookup_n(s->vip_ports_v6, key, 20);
    if (map == (void *)&ew_port_blocks)
        return ew_exact_lookup_n(s->port_blocks, key, 8);
    if (map == (void *)&ew_tenants)
        return ew_exact_lookup_n(s->tenants, key, 4);
    /* Outer map-in-map slot 0: the inner table of this snapshot (a
     * published snapshot never changes, so every packet sees one whole). */
    if (map == (void *)&ew_config)
        return *(const __u32 *)key == 0 ? (void *)&s->config : NULL;
    if (map == (void *)&ew_flood_policies)
        return *(const __u32 *)key == 0 ? (void *)s->flood_policies : NULL;
    if (map == (void *)&ew_gblock_v4)
        return *(const __u32 *)key == 0 ? (void *)s->gblock_v4 : NULL;
    if (map == (void *)&ew_tblock_v4)
        return *(const __u32 *)key == 0 ? (void *)s->tblock_v4 : NULL;
    if (map == (void *)&ew_gblock_v6)
        return *(const __u32 *)key == 0 ? (void *)s->gblock_v6 : NULL;
    if (map == (void *)&ew_tblock_v6)
        return *(const __u32 *)key == 0 ? (void *)s->tblock_v6 : NULL;
    if (map == (void *)&ew_packet_scratch)
        return &packet_scratch;
    if (map == (void *)&ew_counters) {
        index = *(const __u32 *)key;
        if (index >= v->slots)
            return NULL;
        if (__builtin_expect(v->trace != NULL, 0)) {
            trace_slot = index;
            return &trace_scratch;
        }
        return &v->counters[index];
    }
    if (map == (void *)&ew_buckets) {
        index = *(const __u32 *)key;
        return index < v->slots * EW_BUCKET_KINDS ? &v->buckets[index] : NULL;
    }
    if (map == (void *)&ew_source_buckets)
        return ew_source_cache_lookup(v->sources, key);
    /* Evidence, reached only for a sampled tenant's packets. */
    if (map == (void *)&ew_sample_config)
        return *(const __u32 *)key == 0 ? (void *)v->sample_config : NULL;
    if (map == (void *)&ew_sample_budget) {
        index = *(const __u32 *)key;
        return index < v->slots ? &v->sample_budgets[index] : NULL;
    }
    /* Not kept by this engine: the datapath then walks the block tables
     * without the prefilter, takes tenant-wide tokens under the lock,
     * keeps IPv4 per-source buckets in ew_source_buckets (the lcore's
     * set-associative cache) as IPv6 ones, and finds every tenant in its
     * VIP table (no heads, no slot entries). */
    if (map == (void *)&ew_prefilter_v4 || map == (void *)&ew_bucket_shares || map == (void *)&ew_source_ways_v4 ||
        map == (void *)&ew_vip_heads_v4 || map == (void *)&ew_slot_tenants)
        return NULL;
    return NULL;
}

static inline long bpf_map_update_elem(void *map, const void *key, const void *value, __u64 flags)
{
    /* The datapath writes only its per-source buckets (with BPF_NOEXIST). */
    if (map == (void *)&ew_source_buckets && flags == BPF_NOEXIST)
        return ew_source_cache_insert(current_view.sources, key, value) ? -EEXIST : 0;
    return -EINVAL;
}

static inline __u64 bpf_ktime_get_ns(void)
{
    return ew_clock_ns();
}

static inline __u64 bpf_ktime_get_coarse_ns(void)
{
    return ew_clock_ns();
}

/* Tenant-wide buckets are shared by the lcores, exact under a lock, as on XDP. */
static inline void bpf_spin_lock(struct bpf_spin_lock *lock)
{
    while (__atomic_exchange_n(&lock->val, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&lock->val, __ATOMIC_RELAXED))
            __builtin_ia32_pause();
}

static inline void bpf_spin_unlock(struct bpf_spin_lock *lock)
{
    __atomic_store_n(&lock->val, 0, __ATOMIC_RELEASE);
}

static inline long bpf_xdp_load_bytes(struct ew_frame *ctx, __u32 offset, void *buf, __u32 len)
{
    if ((uint64_t)offset + len <= ctx->data_end - ctx->data) {
        __builtin_memcpy(buf, (const char *)ctx->data + offset, len);
        return 0;
    }
    return ew_packet_read(ctx->packet, offset, len, buf) ? 0 : -EFAULT;
}

static inline long bpf_xdp_store_bytes(struct ew_frame *ctx, __u32 offset, void *buf, __u32 len)
{
    if ((uint64_t)offset + len <= ctx->data_end - ctx->data) {
        __builtin_memcpy((char *)ctx->data + offset, buf, len);
        return 0;
    }
    return -EFAULT;     /* only the cookie answer writes, and the engine refuses cookie policies */
}

/* The lcore's sample ring: one record reserved, filled, then published
 * (the lcore is its only writer; the agent's reader moves the tail). */
static inline void *bpf_ringbuf_reserve(void *ringbuf, __u64 size, __u64 flags)
{
    struct ew_sample_ring *ring = current_view.samples;
    uint32_t head;

    (void)ringbuf, (void)flags;
    if (!ring || size != sizeof(struct ew_sample))
        return NULL;
    head = ring->head;
    if (head - __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE) >= EW_DPDK_SAMPLE_RECORDS)
        return NULL;
    return &ring->records[head & (EW_DPDK_SAMPLE_RECORDS - 1)];
}

static inline void bpf_ringbuf_submit(void *data, __u64 flags)
{
    struct ew_sample_ring *ring = current_view.samples;

    (void)data, (void)flags;
    __atomic_store_n(&ring->head, ring->head + 1, __ATOMIC_RELEASE);
}

/* Kernel state the host does not have. The engine refuses policies that
 * would reach these (SYN cookies, SYN-ACK tracking), so they only answer
 * what an empty kernel would: no valid cookie, no answer. */
long bpf_tcp_raw_check_syncookie_ipv4(struct iphdr *iph, struct tcphdr *th)
{
    (void)iph, (void)th;
    return -EACCES;
}

long bpf_tcp_raw_check_syncookie_ipv6(struct ipv6hdr *iph, struct tcphdr *th)
{
    (void)iph, (void)th;
    return -EACCES;
}

__s64 bpf_tcp_raw_gen_syncookie_ipv4(struct iphdr *iph, struct tcphdr *th, __u32 th_len)
{
    (void)iph, (void)th, (void)th_len;
    return -EOPNOTSUPP;
}

__s64 bpf_tcp_raw_gen_syncookie_ipv6(struct ipv6hdr *iph, struct tcphdr *th, __u32 th_len)
{
    (void)iph, (void)th, (void)th_len;
    return -EOPNOTSUPP;
}

long bpf_xdp_adjust_tail(struct ew_frame *ctx, int delta)
{
    (void)ctx, (void)delta;
    return -EOPNOTSUPP;
}

__s64 bpf_csum_diff(__be32 *from, __u32 from_size, __be32 *to, __u32 to_size, __wsum seed)
{
    __u64 sum = seed;

    for (__u32 i = 0; i < to_size / 4; i++)
        sum += to[i];
    for (__u32 i = 0; i < from_size / 4; i++)
        sum += ~from[i];
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffffffff) + (sum >> 32);
    return (__s64)sum;
}

long bpf_loop(__u32 nr_loops, void *callback_fn, void *callback_ctx, __u64 flags)
{
    long (*step)(__u32, void *) = (long (*)(__u32, void *))callback_fn;
    __u32 i;

    (void)flags;
    for (i = 0; i < nr_loops; i++)
        if (step(i, callback_ctx))
            return i + 1;
    return i;
}

/* After a traced packet: what it moved, recorded; then added to the real counters. */
static void trace_packet(struct ew_view *view, uint32_t action)
{
    struct ew_trace *trace = view->trace;
    struct ew_trace_entry entry = { .action = (uint8_t)action };
    const __u64 *scratch = (const __u64 *)&trace_scratch;
    __u64 *real;

    if (trace_slot >= 0) {
        entry.slot = (uint32_t)trace_slot;
        entry.counted = 1;
        for (int c = 0; c < EW_CLASS_COUNT; c++)
            if (trace_scratch.class_packets[c])
                entry.traffic_class = (uint8_t)c;
        for (int r = 0; r < EW_REASON_SLOTS; r++)
            if (trace_scratch.reason_packets[r])
                entry.reason = (uint8_t)r;
        real = (__u64 *)&view->counters[entry.slot];
        for (size_t k = 0; k < sizeof(trace_scratch) / sizeof(__u64); k++)
            real[k] += scratch[k];
    }
    if (trace->count < trace->capacity)
        trace->entries[trace->count++] = entry;
}

/* flatten: the whole program inlined into the burst loop, as the BPF JIT
 * sees one program; the packet facts and tenant then live in registers
 * rather than being passed by pointer to ew_packet_verdict per packet. */
__attribute__((flatten)) void ew_judge_burst(struct ew_view *view, struct ew_frame_ref *frames, uint32_t count)
{
    current_view = *view;
    for (uint32_t i = 0; i < count; i++) {
        struct ew_frame ctx = {
            .data = (unsigned long)frames[i].data,
            .data_end = (unsigned long)frames[i].data + frames[i].length,
            .buff_len = frames[i].packet_length,
            .packet = frames[i].packet,
            .ingress_ifindex = view->port,
        };

        if (__builtin_expect(view->trace != NULL, 0)) {
            __builtin_memset(&trace_scratch, 0, sizeof(trace_scratch));
            trace_slot = -1;
            frames[i].action = edgewarden_xdp(&ctx);
            trace_packet(view, frames[i].action);
        } else {
            frames[i].action = edgewarden_xdp(&ctx);
        }
    }
}
