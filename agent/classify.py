"""`edgewarden classify`: every frame of a capture through the real XDP
program (BPF_PROG_TEST_RUN, private maps) under a policy, with totals per
XDP action, verdict reason and tenant."""

from __future__ import annotations

from pathlib import Path

from agent._libbpf import lib
from agent.datapath.private import PrivateDatapath
from agent.pcap import ethernet_frame, read_frames
from agent.policy.model import Policy

ACTION_NAMES = {lib.XDP_ABORTED: "aborted", lib.XDP_DROP: "drop", lib.XDP_PASS: "pass",
                lib.XDP_TX: "tx", lib.XDP_REDIRECT: "redirect"}


def classify_capture(capture: str | Path, policy: Policy) -> dict:
    """The stable result document of `edgewarden classify --json` (see README)."""
    actions = {name: 0 for name in ACTION_NAMES.values()}
    packets = total_bytes = 0
    with PrivateDatapath(policy) as datapath:
        for captured in read_frames(capture):
            frame = ethernet_frame(captured)
            actions[ACTION_NAMES.get(datapath.run(frame), "unknown")] += 1
            packets += 1
            total_bytes += len(frame)
        counters = datapath.counters()
    reasons: dict[str, dict[str, int]] = {}
    for tenant in counters.values():
        for reason, n in tenant.reason_packets.items():
            entry = reasons.setdefault(reason, {"packets": 0, "bytes": 0})
            entry["packets"] += n
            entry["bytes"] += tenant.reason_bytes[reason]
    tenants = []
    for tenant_id in sorted(counters):
        c = counters[tenant_id]
        if c.packets == 0:
            continue
        known = policy.tenant(tenant_id)
        tenants.append({"name": known.name if known else ("unassigned" if tenant_id == 0 else None), **c.as_dict()})
    return {
        "capture": str(capture),
        "policy_revision": policy.revision,
        "packets": packets,
        "bytes": total_bytes,
        "actions": actions,
        "reasons": reasons,
        "tenants": tenants,
    }
