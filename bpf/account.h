/* Per-tenant accounting: one per-CPU counter block per tenant, updated once
 * per packet with its traffic class and verdict reason. */
#ifndef EW_ACCOUNT_H
#define EW_ACCOUNT_H

#include "maps.h"

/* Source of zeroes for inserting a missing tenant's counters; lives in .bss
 * because a 352-byte zeroed stack object would eat most of the BPF stack. */
struct ew_counters ew_zero_counters;

static __always_inline void account_packet(__u32 tenant_id, __u8 traffic_class, __u32 reason,
                                           __u32 length)
{
    struct ew_counters *c = bpf_map_lookup_elem(&ew_counters, &tenant_id);

    if (!c) {
        bpf_map_update_elem(&ew_counters, &tenant_id, &ew_zero_counters, BPF_NOEXIST);
        c = bpf_map_lookup_elem(&ew_counters, &tenant_id);
        if (!c)
            return;
    }
    if (traffic_class < EW_CLASS_COUNT) {
        c->class_packets[traffic_class] += 1;
        c->class_bytes[traffic_class] += length;
    }
    if (reason < EW_REASON_SLOTS) {
        c->reason_packets[reason] += 1;
        c->reason_bytes[reason] += length;
    }
}

#endif /* EW_ACCOUNT_H */
