/* Per-tenant accounting: one per-CPU counter block per tenant slot, updated
 * once per packet with its traffic class and verdict reason. Indexing a map
 * value by a variable that is a different constant on different paths
 * needs CAP_PERFMON (Spectre v1 hardening): the caller passes values that
 * came out of a global function (ew_packet_verdict), which the verifier
 * sees as plain integers. */
#ifndef EW_ACCOUNT_H
#define EW_ACCOUNT_H

#include "maps.h"

/* `slot` points into the packet's scratch (edgewarden.bpf.c), so the key
 * takes no stack store (a speculation barrier without CAP_PERFMON). */
static __always_inline void account_packet(const __u32 *slot, __u32 traffic_class, __u32 reason, __u32 length)
{
    struct ew_counters *c = bpf_map_lookup_elem(&ew_counters, slot);

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

#endif /* EW_ACCOUNT_H */
