"""Per-tenant counters read from the per-CPU counter map and summed across
CPUs by the Cython core (agent._counters); sum_percpu_reference is the
pure-Python statement of the same arithmetic."""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from agent import _counters
from agent.datapath import abi
from agent.datapath.slot_maps import follow_grown_maps
from agent.datapath.syscalls import BpfMap

U64_WRAP = 2**64


def sum_percpu_reference(raw: bytes, entries: int, ncpus: int, fields: int) -> list[list[int]]:
    values = struct.unpack(f"={entries * ncpus * fields}Q", raw[: entries * ncpus * fields * 8])
    result = []
    for e in range(entries):
        base = e * ncpus * fields
        result.append([sum(values[base + c * fields + f] for c in range(ncpus)) % U64_WRAP for f in range(fields)])
    return result


@dataclass(frozen=True)
class TenantCounters:
    tenant_id: int
    class_packets: dict[str, int]
    class_bytes: dict[str, int]
    reason_packets: dict[str, int]
    reason_bytes: dict[str, int]

    @classmethod
    def from_fields(cls, tenant_id: int, fields: list[int]) -> "TenantCounters":
        layout = abi.COUNTER_LAYOUT

        def named(field: str, names) -> dict[str, int]:
            values = fields[layout[field]]
            return {member.name: values[member.value] for member in names}

        return cls(
            tenant_id,
            named("class_packets", abi.TrafficClass),
            named("class_bytes", abi.TrafficClass),
            named("reason_packets", abi.VerdictReason),
            named("reason_bytes", abi.VerdictReason),
        )

    @property
    def packets(self) -> int:
        return sum(self.reason_packets.values())

    @property
    def bytes(self) -> int:
        return sum(self.reason_bytes.values())

    @property
    def dropped_packets(self) -> int:
        return sum(n for r, n in self.reason_packets.items() if abi.VerdictReason[r] in abi.DROP_REASONS)

    @property
    def answered_packets(self) -> int:
        """Answered from XDP (SYN cookies): neither passed nor dropped."""
        return sum(n for r, n in self.reason_packets.items() if abi.VerdictReason[r] in abi.ANSWER_REASONS)

    @property
    def passed_packets(self) -> int:
        return self.packets - self.dropped_packets - self.answered_packets

    def as_dict(self) -> dict:
        return {
            "tenant_id": self.tenant_id,
            "packets": self.packets,
            "bytes": self.bytes,
            "passed_packets": self.passed_packets,
            "dropped_packets": self.dropped_packets,
            "answered_packets": self.answered_packets,
            "class_packets": self.class_packets,
            "class_bytes": self.class_bytes,
            "reason_packets": self.reason_packets,
            "reason_bytes": self.reason_bytes,
        }


class AggregatorReference:
    """Plain-Python statement of agent._counters.CounterAggregator."""

    WRAP_HIGH, WRAP_LOW = 2**63, 2**62

    def __init__(self, fields: int, packet_fields, byte_fields, drop_fields):
        self.fields = fields
        self.by = {"packets": tuple(packet_fields), "bytes": tuple(byte_fields), "drops": tuple(drop_fields)}
        self.previous: dict = {}
        self.previous_time_ns: int | None = None

    @classmethod
    def delta(cls, previous: int, current: int) -> int:
        if current >= previous:
            return current - previous
        if previous >= cls.WRAP_HIGH and current < cls.WRAP_LOW:
            return current + U64_WRAP - previous
        return current

    def scan(self, raw: bytes, tenant_ids: list, ncpus: int, now_ns: int):
        totals = sum_percpu_reference(raw, len(tenant_ids), ncpus, self.fields)
        seconds = (now_ns - self.previous_time_ns) / 1e9 if self.previous_time_ns is not None else 0.0
        rates = []
        for tenant_id, row in zip(tenant_ids, totals):
            old = self.previous.get(tenant_id) if tenant_id is not None else None
            if old is None or seconds <= 0:
                rates.append([0.0] * self.fields)
            else:
                rates.append([self.delta(o, n) / seconds for o, n in zip(old, row)])
        self.previous = {t: row for t, row in zip(tenant_ids, totals) if t is not None}
        self.previous_time_ns = now_ns
        return totals, rates, max(seconds, 0.0)

    def top(self, tenant_ids, totals, rates, n, by="packets", use_rates=True):
        values = rates if use_rates else totals
        scored = [(-float(sum(row[f] for f in self.by[by])), t) for t, row in zip(tenant_ids, values) if t is not None]
        return [(t, -s) for s, t in sorted(scored)[:n]]


def _layout_indexes() -> tuple[list[int], list[int], list[int]]:
    layout = abi.COUNTER_LAYOUT
    packets = list(range(layout["reason_packets"].start, layout["reason_packets"].start + len(abi.VerdictReason)))
    bytes_ = list(range(layout["reason_bytes"].start, layout["reason_bytes"].start + len(abi.VerdictReason)))
    drops = [layout["reason_packets"].start + r.value for r in abi.DROP_REASONS]
    return packets, bytes_, drops


def new_aggregator(reference: bool = False):
    cls = AggregatorReference if reference else _counters.CounterAggregator
    return cls(abi.COUNTER_FIELDS, *_layout_indexes())


def tenant_slots(maps: dict[str, BpfMap]) -> dict[int, int]:
    """tenant id -> counter slot, tenant 0 included."""
    slots = {int.from_bytes(k, "little"): int.from_bytes(v[4:8], "little")
             for k, v in maps["ew_tenants"].items().items()}
    slots[abi.TENANT_UNASSIGNED] = abi.TENANT_UNASSIGNED
    return slots


class CounterMonitor:
    """Scans the live counters on a monotonic clock: totals and rates per tenant.

    Only the slots in use are read: one batched read of slots 0 up to the
    highest held, or, when few of those are held, a lookup per slot. The
    tenant -> slot map only changes when a policy is applied, so it is
    re-read only when the live revision changes; the counter map itself is
    replaced when its slots grow (agent.datapath.slot_maps), which each
    scan checks, so a long-lived monitor follows it."""

    # Per-slot lookups when fewer than one slot in this many of the read prefix is held.
    sparse_ratio = 8

    def __init__(self, maps: dict[str, BpfMap], clock=time.monotonic_ns):
        self.maps = maps
        self.clock = clock
        self.aggregator = new_aggregator()
        self._revision: int | None = None
        self._row_ids: list | None = None
        self._few_tenants: list[int] = []

    def _refresh_rows(self) -> None:
        if follow_grown_maps(self.maps):
            self._row_ids = None
        revision = live_revision(self.maps)
        if revision == self._revision and self._row_ids is not None:
            return
        counters = self.maps["ew_counters"]
        slots = {t: s for t, s in tenant_slots(self.maps).items() if s < counters.max_entries}
        in_use = max(slots.values()) + 1
        if len(slots) * self.sparse_ratio < in_use:
            self._row_ids = sorted(slots)
            self._few_tenants = [slots[t] for t in self._row_ids]
        else:
            self._few_tenants = []
            self._row_ids = [None] * in_use
            for tenant_id, slot in slots.items():
                self._row_ids[slot] = tenant_id
        self._revision = revision

    def scan(self) -> "_counters.CounterScan":
        self._refresh_rows()
        counters = self.maps["ew_counters"]
        if self._few_tenants:
            raw = b"".join(counters.lookup(struct.pack("=I", slot)) for slot in self._few_tenants)
        else:
            raw = counters.array_values(len(self._row_ids))
        return self.aggregator.scan(raw, self._row_ids, counters.ncpus, self.clock())


def live_revision(maps: dict[str, BpfMap]) -> int:
    raw = maps["ew_config"].lookup(struct.pack("=I", 0))
    return struct.unpack_from("=Q", raw)[0] if raw else 0


def read_counters(maps: dict[str, BpfMap]) -> dict[int, TenantCounters]:
    """Every tenant's counters (tenant 0 included), summed over CPUs."""
    scan = CounterMonitor(maps).scan()
    return {tenant_id: TenantCounters.from_fields(tenant_id, scan.row(i)[0])
            for i, tenant_id in enumerate(scan.tenant_ids) if tenant_id is not None}
