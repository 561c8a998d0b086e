/* The few BPF-only things the datapath's C uses, for the host: included
 * before bpf/edgewarden.bpf.c in native/dpdk/datapath.c so that the DPDK
 * worker runs the XDP program's own parser, tenant lookup, verdict and
 * accounting, not a copy of them.
 *
 *  - <bpf/bpf_helpers.h> is kept out (its helpers are BPF call numbers);
 *    SEC() names no section, so the map definitions of bpf/maps.h become
 *    ordinary (hidden) variables whose addresses name the maps.
 *  - Map helpers keep their signatures; datapath.c defines them as lookups
 *    in the lcore's current policy snapshot, its counters and its buckets.
 *  - struct xdp_md becomes struct ew_frame, whose data and data_end are
 *    real pointers (the UAPI struct holds 32-bit offsets).
 *  - Kernel state has no host equivalent: the program is built as for a
 *    kernel without conntrack (EW_WITHOUT_CONNTRACK), the SYN-cookie
 *    helpers and tail adjustment answer "no cookie / cannot", and the DPDK
 *    engine refuses policies that would need them (agent/dpdk/engine.py). */
#ifndef EW_BPF_SHIM_H
#define EW_BPF_SHIM_H

#include <stdint.h>
#include <stddef.h>
#include <linux/bpf.h>      /* the real struct xdp_md is declared (and unused) before the rename */

#define __BPF_HELPERS__     /* keep <bpf/bpf_helpers.h> out */

#undef __always_inline
#define __always_inline inline __attribute__((always_inline))
/* Global functions are __noinline for the verifier (verified once, not per
 * caller); the host compiler may inline them. */
#define __noinline
#ifndef __weak
#define __weak __attribute__((weak))
#endif
/* Hidden: map addresses are link-time constants, so comparing a map
 * pointer with one costs no GOT load, and lookups in a named map fold to a
 * direct table lookup. */
#define SEC(name) __attribute__((visibility("hidden")))
#define __ksym
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __array(name, val) typeof(val) *name[]

/* One frame as the datapath sees it. */
struct ew_frame {
    unsigned long data;
    unsigned long data_end;
    uint32_t buff_len;      /* the whole packet, all segments */
    void *packet;           /* the rte_mbuf, for reads past the first segment */
    uint32_t ingress_ifindex;   /* the DPDK port id (evidence names the port by it) */
};
#define xdp_md ew_frame

static inline __attribute__((always_inline)) void *bpf_map_lookup_elem(void *map, const void *key);
static inline long bpf_map_update_elem(void *map, const void *key, const void *value, __u64 flags);
static inline __u64 bpf_ktime_get_ns(void);
static inline __u64 bpf_ktime_get_coarse_ns(void);
static inline void bpf_spin_lock(struct bpf_spin_lock *lock);
static inline void bpf_spin_unlock(struct bpf_spin_lock *lock);

static inline __u32 bpf_xdp_get_buff_len(struct ew_frame *ctx)
{
    return ctx->buff_len;
}

/* Reads and writes by offset, across segments as across XDP frags. */
static inline long bpf_xdp_load_bytes(struct ew_frame *ctx, __u32 offset, void *buf, __u32 len);
static inline long bpf_xdp_store_bytes(struct ew_frame *ctx, __u32 offset, void *buf, __u32 len);

/* Kernel-state helpers: see above; defined in datapath.c. */
struct iphdr;
struct ipv6hdr;
struct tcphdr;
long bpf_tcp_raw_check_syncookie_ipv4(struct iphdr *iph, struct tcphdr *th);
long bpf_tcp_raw_check_syncookie_ipv6(struct ipv6hdr *iph, struct tcphdr *th);
__s64 bpf_tcp_raw_gen_syncookie_ipv4(struct iphdr *iph, struct tcphdr *th, __u32 th_len);
__s64 bpf_tcp_raw_gen_syncookie_ipv6(struct ipv6hdr *iph, struct tcphdr *th, __u32 th_len);
long bpf_xdp_adjust_tail(struct ew_frame *ctx, int delta);
__s64 bpf_csum_diff(__be32 *from, __u32 from_size, __be32 *to, __u32 to_size, __wsum seed);
long bpf_loop(__u32 nr_loops, void *callback_fn, void *callback_ctx, __u64 flags);
/* The evidence ring (bpf/sample.h): the lcore's ring of samples, datapath.c. */
static inline void *bpf_ringbuf_reserve(void *ringbuf, __u64 size, __u64 flags);
static inline void bpf_ringbuf_submit(void *data, __u64 flags);

#endif /* EW_BPF_SHIM_H */
