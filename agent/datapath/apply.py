"""Applies a compiled policy to live maps as a diff: only entries that differ
are written or deleted; block tables first (swapped whole or changed in a
safe order, see blocktables, inside a widening and a narrowing of the
prefilter, see prefilter, and followed by the host bits, see host_bits),
then the rules and tenants, then the VIPs that route traffic to them (and
their heads, see vip_heads); removals in reverse; the revision strictly
last, so a reader that sees a revision sees all of it."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from agent._prefixes import PrefixSet
from agent.datapath import abi
from agent.datapath.blocktables import SwappableTable
from agent.datapath.conntrack import require_conntrack
from agent.datapath.host_bits import MAPS as HOST_BITS_TABLES, follow_table, sync_host_bits
from agent.datapath.prefilter import MAP_NAME as PREFILTER_MAP, PrefilterUpdate
from agent.datapath.vip_heads import VIPS_MAP, sync_vip_heads
from agent.datapath.syscalls import BpfMap
from agent.datapath.compile import BLOCK_TABLES, POLICY_MAPS, CompiledPolicy, compile_policy, pack_u32
from agent.policy.model import Policy

CONFIG_MAP = "ew_config"
RULE_MAPS = tuple(name for name in POLICY_MAPS if name != CONFIG_MAP)


@dataclass
class ApplyReport:
    revision: int
    added: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    swapped: list[str] = field(default_factory=list)

    @property
    def total_writes(self) -> int:
        return sum(self.added.values()) + sum(self.changed.values()) + sum(self.removed.values())

    def summary(self) -> str:
        parts = [f"{name}: +{self.added.get(name, 0)} ~{self.changed.get(name, 0)} -{self.removed.get(name, 0)}"
                 + (" (swapped)" if name in self.swapped else "")
                 for name in (*BLOCK_TABLES, *POLICY_MAPS)
                 if self.added.get(name) or self.changed.get(name) or self.removed.get(name)]
        return f"revision {self.revision}: " + (", ".join(parts) if parts else "no changes")


def live_slots(maps: dict[str, BpfMap]) -> dict[int, int]:
    """tenant id -> counter slot, as the live ew_tenants map holds them."""
    return {struct.unpack("=I", k)[0]: struct.unpack("=II", v)[1] for k, v in maps["ew_tenants"].items().items()}


def apply_policy_to_maps(maps: dict[str, BpfMap], policy: Policy,
                         named_lists: dict[int | None, PrefixSet] | None = None,
                         tables: frozenset[str] = frozenset(BLOCK_TABLES), *,
                         conntrack: bool | None = None) -> ApplyReport:
    """`conntrack`: whether the program behind `maps` has the conntrack
    kfuncs (LoadedProgram.conntrack); None: whether the kernel has them. A
    policy that needs them where they are not is refused, unapplied."""
    require_conntrack(policy, "the datapath", conntrack)
    compiled = compile_policy(policy, live_slots(maps), maps["ew_counters"].max_entries, named_lists, tables)
    return apply_compiled(maps, compiled)


def apply_compiled(maps: dict[str, BpfMap], compiled: CompiledPolicy) -> ApplyReport:
    _check_capacity(maps, compiled)
    report = ApplyReport(compiled.revision)
    current = {name: _live_entries(maps[name]) for name in POLICY_MAPS}
    writes = {name: {k: v for k, v in compiled.maps[name].items() if current[name].get(k) != v} for name in POLICY_MAPS}
    stale = {name: [k for k in current[name] if k not in compiled.maps[name]] for name in POLICY_MAPS}
    for name in POLICY_MAPS:
        report.added[name] = sum(1 for k in writes[name] if k not in current[name])
        report.changed[name] = len(writes[name]) - report.added[name]
        report.removed[name] = len(stale[name])

    # The prefilter stays a superset of the v4 tables: widened before they
    # change, narrowed after (agent.datapath.prefilter). The host bits follow
    # each v4 table once it changed (agent.datapath.host_bits).
    prefilter = PrefilterUpdate.for_tables(maps[PREFILTER_MAP], compiled.tables)
    prefilter.widen()
    followed = [name for name in HOST_BITS_TABLES if name in compiled.tables]
    try:
        for name in compiled.tables:
            update = SwappableTable(maps[name]).apply(compiled.tables[name])
            report.added[name], report.changed[name], report.removed[name] = update.added, update.changed, update.removed
            if update.swapped:
                report.swapped.append(name)
    except BaseException:
        sync_host_bits(maps, followed)      # a table may hold part of the new version
        raise
    prefilter.narrow()
    for name in followed:
        follow_table(maps, name, compiled.tables[name])

    # A counter slot is zeroed when a tenant takes it, before any VIP points at
    # it. Token buckets need nothing: the datapath starts a bucket over when
    # its generation is not the flood policy's (compile.with_generation).
    old_slots = {struct.unpack("=I", k)[0]: struct.unpack("=II", v)[1] for k, v in current["ew_tenants"].items()}
    counters = maps["ew_counters"]
    zero = bytes(counters.value_size)
    for tenant_id, slot in compiled.slots.items():
        if old_slots.get(tenant_id) != slot:
            counters.update(pack_u32(slot), zero)

    # Adding before removing keeps enforcement gap-free but needs room for old
    # and new at once; a map without that room has its stale entries removed first.
    tight = [name for name in RULE_MAPS if len(current[name]) + report.added[name] > maps[name].max_entries]
    for name in tight:
        _remove(maps[name], stale[name])
    for name in RULE_MAPS:
        maps[name].update_many(writes[name])
    # The VIP heads follow ew_vips_v4 between its writes and its removals
    # (agent.datapath.vip_heads), so both versions' VIPs are found meanwhile.
    if writes[VIPS_MAP] or stale[VIPS_MAP]:
        sync_vip_heads(maps, compiled.maps[VIPS_MAP])
    for name in reversed(RULE_MAPS):
        if name not in tight:
            _remove(maps[name], stale[name])
    maps[CONFIG_MAP].update_many(writes[CONFIG_MAP])
    return report


def _live_entries(bpf_map: BpfMap) -> dict[bytes, bytes]:
    """A hash map's entries; for an array map, its entries that are not all zeroes."""
    entries = bpf_map.items()
    if bpf_map.name in abi.ARRAY_MAPS:
        return {k: v for k, v in entries.items() if any(v)}
    return entries


def _remove(bpf_map: BpfMap, keys: list[bytes]) -> None:
    if bpf_map.name in abi.ARRAY_MAPS:
        zero = bytes(bpf_map.value_size)
        bpf_map.update_many({k: zero for k in keys})
    else:
        bpf_map.delete_many(keys)


def _check_capacity(maps: dict[str, BpfMap], compiled: CompiledPolicy) -> None:
    """Everything that can be too big is checked before anything is written."""
    top_slot = max(compiled.slots.values(), default=0)
    if top_slot >= maps["ew_flood_policies"].max_entries or \
            (top_slot + 1) * abi.BUCKET_KINDS > maps["ew_buckets"].max_entries:
        raise ValueError(f"counter slot {top_slot} is beyond the flood-policy or bucket maps; load the program "
                         "with tenant_capacity= to size them together; nothing was applied")
    capacities = {name: maps[name].max_entries for name in compiled.maps}
    capacities.update({name: abi.SWAPPABLE_TABLES[name].max_entries for name in compiled.tables})
    for name, entries in {**compiled.maps, **compiled.tables}.items():
        if len(entries) > capacities[name]:
            raise ValueError(f"policy needs {len(entries)} entries in {name}, which holds {capacities[name]}; "
                             "nothing was applied")
