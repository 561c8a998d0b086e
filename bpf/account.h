/* Per-tenant accounting: one per-CPU counter block per tenant slot, updated
 * once per packet with its traffic class and verdict reason. The update
 * runs in a global function (ew_account_packet, edgewarden.bpf.c): there the
 * class and reason are plain integers, whereas inline they are a different
 * constant on each path, and indexing a map value by a constant that
 * differs between paths needs CAP_PERFMON (Spectre v1 hardening). */
#ifndef EW_ACCOUNT_H
#define EW_ACCOUNT_H

#include "maps.h"

static __always_inline void count_packet(__u32 slot, __u32 traffic_class, __u32 reason, __u32 length)
{
    struct ew_counters *c = bpf_map_lookup_elem(&ew_counters, &slot);

    if (!c) {
        /* a slot beyond the array (never written by the agent): count as unassigned */
        __u32 unassigned = EW_TENANT_UNASSIGNED;

        c = bpf_map_lookup_elem(&ew_counters, &unassigned);
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

__u32 ew_account_packet(__u32 slot, __u32 traffic_class, __u32 reason, __u32 length);

static __always_inline void account_packet(__u32 slot, __u8 traffic_class, __u32 reason, __u32 length)
{
    ew_account_packet(slot, traffic_class, reason, length);
}

#endif /* EW_ACCOUNT_H */
