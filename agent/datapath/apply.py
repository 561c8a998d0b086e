"""Applies a compiled policy to live maps as a diff: only entries that differ
are written or deleted, new rules before the state that refers to them, and
the revision strictly last, so a reader that sees a revision sees all of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.datapath import abi
from agent.datapath.syscalls import BpfMap
from agent.policy.compile import POLICY_MAPS, CompiledPolicy, pack_u32

CONFIG_MAP = "ew_config"
RULE_MAPS = tuple(name for name in POLICY_MAPS if name != CONFIG_MAP)


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
    _check_capacity(maps, compiled)
    report = ApplyReport(compiled.revision)
    current = {name: maps[name].items() for name in POLICY_MAPS}
    writes = {name: {k: v for k, v in compiled.maps[name].items() if current[name].get(k) != v} for name in POLICY_MAPS}
    stale = {name: [k for k in current[name] if k not in compiled.maps[name]] for name in POLICY_MAPS}
    for name in POLICY_MAPS:
        report.added[name] = sum(1 for k in writes[name] if k not in current[name])
        report.changed[name] = len(writes[name]) - report.added[name]
        report.removed[name] = len(stale[name])

    counters = maps["ew_counters"]
    wanted_counters = {pack_u32(t) for t in {abi.TENANT_UNASSIGNED, *compiled.tenant_ids}}
    live_counters = set(counters.keys())
    removed_counters = [k for k in live_counters if k not in wanted_counters]

    # Adding before removing keeps enforcement gap-free, but needs room for old
    # and new at once; a map without that room has its stale entries removed first.
    tight = [name for name in RULE_MAPS if len(current[name]) + report.added[name] > maps[name].max_entries]
    for name in tight:
        maps[name].delete_many(stale[name])
    if len(live_counters | wanted_counters) > counters.max_entries:
        counters.delete_many(removed_counters)
        removed_counters = []

    # Block rules first, the tenants and VIPs that make them reachable after.
    for name in RULE_MAPS:
        if name == "ew_tenants":
            _ensure_counters(counters, wanted_counters - live_counters)
        maps[name].update_many(writes[name])
    # Removals in reverse: first stop routing traffic to removed tenants, then drop their rules.
    for name in reversed(RULE_MAPS):
        if name not in tight:
            maps[name].delete_many(stale[name])
    counters.delete_many(removed_counters)
    maps[CONFIG_MAP].update_many(writes[CONFIG_MAP])
    return report


def _check_capacity(maps: dict[str, BpfMap], compiled: CompiledPolicy) -> None:
    for name, entries in compiled.maps.items():
        if len(entries) > maps[name].max_entries:
            raise ValueError(f"policy needs {len(entries)} entries in {name}, which holds {maps[name].max_entries}; "
                             "nothing was applied")
    if len(compiled.tenant_ids) + 1 > maps["ew_counters"].max_entries:
        raise ValueError(f"policy has {len(compiled.tenant_ids)} tenants, counters hold "
                         f"{maps['ew_counters'].max_entries - 1}; nothing was applied")


def _ensure_counters(counters: BpfMap, new_keys: set[bytes]) -> None:
    """Create zeroed counters for new tenants; never reset existing ones
    (the datapath may have created one meanwhile: EEXIST keeps its counts)."""
    zero = bytes(counters.value_size)
    for key in new_keys:
        try:
            counters.update(key, zero, flags=1)  # BPF_NOEXIST
        except OSError as err:
            if err.errno != 17:
                raise
