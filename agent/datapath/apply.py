"""Applies a compiled policy to live maps as a diff: only entries that differ
are written or deleted, new rules before the state that refers to them, and
the revision last, so a reader that sees a revision sees all of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.datapath import abi
from agent.datapath.syscalls import BpfMap
from agent.policy.compile import POLICY_MAPS, CompiledPolicy, pack_u32


@dataclass
class ApplyReport:
    revision: int
    added: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def total_writes(self) -> int:
        return sum(self.added.values()) + sum(self.changed.values()) + sum(self.removed.values())

    def summary(self) -> str:
        parts = [f"{name}: +{self.added.get(name, 0)} ~{self.changed.get(name, 0)} -{self.removed.get(name, 0)}"
                 for name in POLICY_MAPS
                 if self.added.get(name) or self.changed.get(name) or self.removed.get(name)]
        return f"revision {self.revision}: " + (", ".join(parts) if parts else "no changes")


def apply_compiled(maps: dict[str, BpfMap], compiled: CompiledPolicy) -> ApplyReport:
    report = ApplyReport(compiled.revision)
    current = {name: maps[name].items() for name in POLICY_MAPS}
    _check_capacity(maps, compiled)

    # Additions and changes: block rules first, the tenants and VIPs that make
    # them reachable after, the revision last.
    for name in POLICY_MAPS:
        desired, live = compiled.maps[name], current[name]
        writes = {k: v for k, v in desired.items() if live.get(k) != v}
        report.added[name] = sum(1 for k in writes if k not in live)
        report.changed[name] = len(writes) - report.added[name]
        if name == "ew_tenants":
            _ensure_counters(maps["ew_counters"], compiled.tenant_ids)
        maps[name].update_many(writes)

    # Removals in reverse: first stop routing traffic to removed tenants, then
    # drop their rules.
    for name in reversed(POLICY_MAPS):
        stale = [k for k in current[name] if k not in compiled.maps[name]]
        maps[name].delete_many(stale)
        report.removed[name] = len(stale)
    _drop_counters_of_removed_tenants(maps["ew_counters"], compiled.tenant_ids)
    return report


def _check_capacity(maps: dict[str, BpfMap], compiled: CompiledPolicy) -> None:
    for name, entries in compiled.maps.items():
        if len(entries) > maps[name].max_entries:
            raise ValueError(f"policy needs {len(entries)} entries in {name}, which holds {maps[name].max_entries}; "
                             "nothing was applied")
    if len(compiled.tenant_ids) + 1 > maps["ew_counters"].max_entries:
        raise ValueError(f"policy has {len(compiled.tenant_ids)} tenants, counters hold "
                         f"{maps['ew_counters'].max_entries - 1}; nothing was applied")


def _ensure_counters(counters: BpfMap, tenant_ids: frozenset[int]) -> None:
    """Create zeroed counters for new tenants (and tenant 0); never reset existing ones."""
    zero = bytes(counters.value_size)
    for tenant_id in {abi.TENANT_UNASSIGNED, *tenant_ids}:
        try:
            counters.update(pack_u32(tenant_id), zero, flags=1)  # BPF_NOEXIST
        except OSError as err:
            if err.errno != 17:  # EEXIST: keep its counts
                raise


def _drop_counters_of_removed_tenants(counters: BpfMap, tenant_ids: frozenset[int]) -> None:
    keep = {pack_u32(t) for t in tenant_ids} | {pack_u32(abi.TENANT_UNASSIGNED)}
    counters.delete_many([k for k in counters.keys() if k not in keep])
