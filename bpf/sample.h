/* Packet evidence: a sampled tenant's packets (its VIP value carries
 * EW_TENANT_SAMPLED) go into the ew_samples ring buffer, the first
 * EW_SAMPLE_BYTES bytes with tenant, verdict reason, time and interface,
 * within a per-tenant, per-CPU budget so a flood cannot fill the ring or
 * drown the agent. A tenant that is not sampled costs one flag test. */
#ifndef EW_SAMPLE_H
#define EW_SAMPLE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "edgewarden_abi.h"
#include "verdict.h"     /* struct tenant_facts */

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, EW_SAMPLE_RING_BYTES);
} ew_samples SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ew_sample_config);
} ew_sample_config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, EW_MAX_TENANTS);
    __type(key, __u32);
    __type(value, struct ew_sample_budget);
} ew_sample_budget SEC(".maps");

#define EW_NS_PER_SECOND 1000000000ULL

/* Compiled out: benchmarks/bench_daemon.py's baseline. (The DPDK worker
 * compiles it in: its lcores' sample rings stand in for the ring buffer,
 * native/dpdk/datapath.c.) */
#ifndef EW_SAMPLING_COMPILED_OUT

/* One token per sample; refilled at samples_per_second, capped at burst. */
static __always_inline int sample_budget_take(__u32 slot, const struct ew_sample_config *config, __u64 now)
{
    struct ew_sample_budget *budget = bpf_map_lookup_elem(&ew_sample_budget, &slot);
    __u64 cap, elapsed;

    if (!budget || !config->samples_per_second)
        return 0;
    cap = (config->burst ? config->burst : config->samples_per_second) * EW_NS_PER_SECOND;
    elapsed = now - budget->last_ns;
    if (budget->last_ns == 0 || elapsed >= EW_NS_PER_SECOND)
        budget->tokens = cap;           /* a second idle refills it whole (and no multiply can overflow) */
    else
        budget->tokens += elapsed * config->samples_per_second;
    if (budget->tokens > cap)
        budget->tokens = cap;
    budget->last_ns = now;
    if (budget->tokens < EW_NS_PER_SECOND)
        return 0;
    budget->tokens -= EW_NS_PER_SECOND;
    return 1;
}

static __noinline __attribute__((unused)) int sample_packet_slow(struct xdp_md *ctx, __u32 tenant_id, __u32 slot, __u32 reason, __u32 length)
{
    __u32 zero = 0;
    struct ew_sample_config *config = bpf_map_lookup_elem(&ew_sample_config, &zero);
    struct ew_sample *sample;
    __u64 now = bpf_ktime_get_ns();
    __u64 captured;     /* 64-bit: the bounds check and the call see one register, no zero-extension between */

    if (!config || !sample_budget_take(slot, config, now))
        return 0;
    sample = bpf_ringbuf_reserve(&ew_samples, sizeof(*sample), 0);
    if (!sample) {
        __sync_fetch_and_add(&config->lost, 1);
        return 0;
    }
    captured = length < EW_SAMPLE_BYTES ? length : EW_SAMPLE_BYTES;
    /* Hide the value from clang so the bounds check below stays where the
     * verifier needs it, on the register passed as the length. */
    asm volatile("" : "+r"(captured));
    if (captured == 0 || captured > EW_SAMPLE_BYTES || bpf_xdp_load_bytes(ctx, 0, sample->data, captured) < 0)
        captured = 0;
    sample->timestamp_ns = now;
    sample->tenant_id = tenant_id;
    sample->ifindex = ctx->ingress_ifindex;
    sample->reason = reason;
    sample->packet_length = length;
    sample->captured_length = captured;
    sample->reserved = 0;
    bpf_ringbuf_submit(sample, 0);
    return 1;
}
#endif

static __always_inline void sample_packet(struct xdp_md *ctx, const struct tenant_facts *tenant, __u32 reason,
                                          __u32 length)
{
#ifndef EW_SAMPLING_COMPILED_OUT
    if (tenant->flags & EW_TENANT_SAMPLED)
        sample_packet_slow(ctx, tenant->tenant_id, tenant->slot, reason, length);
#endif
}

#endif /* EW_SAMPLE_H */
