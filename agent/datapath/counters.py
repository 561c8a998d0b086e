"""Per-tenant counters read from the per-CPU counter map and summed across
CPUs by the Cython core (agent._counters); sum_percpu_reference is the
pure-Python statement of the same arithmetic."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from agent import _counters
from agent.datapath import abi
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
    def passed_packets(self) -> int:
        return self.packets - self.dropped_packets

    def as_dict(self) -> dict:
        return {
            "tenant_id": self.tenant_id,
            "packets": self.packets,
            "bytes": self.bytes,
            "passed_packets": self.passed_packets,
            "dropped_packets": self.dropped_packets,
            "class_packets": self.class_packets,
            "class_bytes": self.class_bytes,
            "reason_packets": self.reason_packets,
            "reason_bytes": self.reason_bytes,
        }


def read_counters(maps: dict[str, BpfMap]) -> dict[int, TenantCounters]:
    """Every tenant's counters (tenant 0 included), summed over CPUs."""
    counters = maps["ew_counters"]
    slots = {struct.unpack("=I", k)[0]: struct.unpack("=II", v)[1] for k, v in maps["ew_tenants"].items().items()}
    slots[abi.TENANT_UNASSIGNED] = abi.TENANT_UNASSIGNED
    if len(slots) * 8 < counters.max_entries:
        # Few tenants: look up just their slots rather than copying the whole array.
        raw_by_slot = {slot: counters.lookup(struct.pack("=I", slot)) for slot in set(slots.values())}
    else:
        raw_by_slot = {struct.unpack("=I", k)[0]: v for k, v in counters.items().items()}
    order = sorted(slots)
    raw = b"".join(raw_by_slot[slots[t]] for t in order)
    sums = _counters.sum_percpu(raw, len(order), counters.ncpus, abi.COUNTER_FIELDS)
    return {tenant_id: TenantCounters.from_fields(tenant_id, s) for tenant_id, s in zip(order, sums)}
