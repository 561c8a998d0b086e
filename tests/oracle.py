"""Holds the XDP program (through BPF_PROG_TEST_RUN) to the pure-Python
reference model, packet by packet: same XDP action, same counter deltas;
and observes, for one frame, the action and the counters it moved (for the
expectations in tests/data that come from no code)."""

import errno
import time
from dataclasses import dataclass

import pytest

from agent._libbpf import lib
from agent.datapath.abi import VerdictReason
from agent.datapath.syscalls import BpfError
from agent.datapath.counters import TenantCounters
from agent.datapath.private import PrivateDatapath
from agent.reference import NO_TCP_STATE, ReferenceCounters, TcpState, judge

ETH_HLEN = 14
FIELDS = ("class_packets", "class_bytes", "reason_packets", "reason_bytes")


def _nonzero(counters: TenantCounters) -> dict:
    return {f: {k: v for k, v in getattr(counters, f).items() if v} for f in FIELDS}


def counters_snapshot(datapath: PrivateDatapath) -> dict[int, dict]:
    return {t: _nonzero(c) for t, c in datapath.counters().items()}


def delta(before: dict[int, dict], after: dict[int, dict]) -> dict[int, dict]:
    result = {}
    for tenant, fields in after.items():
        old = before.get(tenant, {f: {} for f in FIELDS})
        d = {f: {k: v - old[f].get(k, 0) for k, v in fields[f].items() if v - old[f].get(k, 0)} for f in FIELDS}
        if any(d.values()):
            result[tenant] = d
    return result


def reference_delta(verdict) -> dict[int, dict]:
    ref = ReferenceCounters()
    ref.count(verdict)
    return {t: {f: dict(v) for f, v in fields.items()} for t, fields in ref.by_tenant.items()}


class Oracle:
    """Runs frames through the kernel and the reference under one policy."""

    def __init__(self, datapath: PrivateDatapath, policy, buckets=None):
        self.datapath = datapath
        self.policy = policy
        self.buckets = buckets      # ReferenceBuckets, for policies with rate limits

    def check(self, frame: bytes, *, counters: bool = True, tcp: TcpState = NO_TCP_STATE):
        # The kernel's clock is never 0 (0 marks a bucket never used).
        verdict = judge(self.policy, frame, self.buckets, time.monotonic_ns(), tcp)
        if len(frame) < ETH_HLEN:
            # The kernel refuses to test-run frames shorter than an Ethernet
            # header (and no driver hands XDP such a runt); the reference
            # must call them malformed.
            with pytest.raises(BpfError) as refused:
                self.datapath.run(frame)
            assert refused.value.errno == errno.EINVAL
            assert verdict.reason is VerdictReason.drop_malformed
            return verdict
        before = counters_snapshot(self.datapath) if counters else None
        action = self.datapath.run(frame)
        expected = verdict.action
        assert action == expected, (
            f"XDP returned {action}, reference says {verdict} for frame {frame.hex()}")
        if counters:
            got = delta(before, counters_snapshot(self.datapath))
            assert got == reference_delta(verdict), f"counter deltas differ for {verdict}, frame {frame.hex()}"
        return verdict


@dataclass(frozen=True)
class Observed:
    """What the kernel did with one frame: its XDP action, and the one
    (tenant, verdict reason, traffic class) whose counters it moved."""

    action: int
    tenant_id: int | None
    reason: str | None
    traffic_class: str | None

    @property
    def verdict(self) -> str:
        return ACTION_NAMES.get(self.action, f"action {self.action}")


ACTION_NAMES = {lib.XDP_ABORTED: "aborted", lib.XDP_DROP: "drop", lib.XDP_PASS: "pass", lib.XDP_TX: "tx",
                lib.XDP_REDIRECT: "redirect"}


def observe(datapath: PrivateDatapath, frame: bytes) -> Observed:
    """Runs one frame and reads which counters it moved (exactly one packet
    for one tenant, reason and class, or the observation says None)."""
    before = counters_snapshot(datapath)
    action = datapath.run(frame)
    moved = delta(before, counters_snapshot(datapath))
    if len(moved) != 1:
        return Observed(action, None, None, None)
    (tenant_id, fields), = moved.items()
    reasons, classes = fields["reason_packets"], fields["class_packets"]
    reason = next(iter(reasons)) if list(reasons.values()) == [1] else None
    traffic_class = next(iter(classes)) if list(classes.values()) == [1] else None
    return Observed(action, tenant_id, reason, traffic_class)
