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


def read_counters(counters_map: BpfMap) -> dict[int, TenantCounters]:
    """Every tenant's counters, summed over CPUs (one batched map read)."""
    items = counters_map.items()
    keys = sorted(items)
    raw = b"".join(items[k] for k in keys)
    sums = _counters.sum_percpu(raw, len(keys), counters_map.ncpus, abi.COUNTER_FIELDS)
    return {
        int.from_bytes(k, "little"): TenantCounters.from_fields(int.from_bytes(k, "little"), s)
        for k, s in zip(keys, sums)
    }
