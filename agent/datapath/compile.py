"""Compiles a validated policy into the exact contents of the datapath maps
(keys and values as bytes in the ABI layouts), so applying a policy is a
diff between two sets of map entries. Block lists compile into the
contents of the swappable tables (agent.datapath.blocktables)."""

from __future__ import annotations

import socket
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

from agent._libbpf import ffi
from agent._prefixes import EntryTable, PrefixSet
from agent.datapath import abi
from agent.policy.model import PROTOCOL_NUMBERS, FloodPolicy, FragmentPolicy, Policy, Rate, SynAckPolicy, Tenant

GLOBAL_LIST_ID = 0  # list id of entries from the policy's own block lists
NS_PER_SECOND = 10**9

# Regular maps, in the order new entries are written (removals go in reverse):
# rules before the tenants and VIPs that make them reachable, port-specific
# VIPs before the any-port entries that announce them.
POLICY_MAPS = ("ew_port_blocks", "ew_flood_policies", "ew_tenants", "ew_vip_ports_v4", "ew_vip_ports_v6",
               "ew_vips_v4", "ew_vips_v6", "ew_config")
BLOCK_TABLES = ("ew_gblock_v4", "ew_gblock_v6", "ew_tblock_v4", "ew_tblock_v6")


def _pack(c_type: str, init) -> bytes:
    return bytes(ffi.buffer(ffi.new(c_type + " *", init)))


def pack_u32(value: int) -> bytes:
    return _pack("__u32", value)


def tenant_flags(tenant: Tenant, with_source_blocks: set[int] | None = None) -> int:
    """`with_source_blocks`: tenants whose block lists (policy or named) are not empty."""
    flags = 0
    if tenant.suspended:
        flags |= abi.TENANT_SUSPENDED
    if tenant.id in with_source_blocks if with_source_blocks is not None else tenant.blocked_sources:
        flags |= abi.TENANT_HAS_SOURCE_BLOCKS
    if tenant.blocked_ports:
        flags |= abi.TENANT_HAS_PORT_BLOCKS
        if len(port_ranges(tenant)) <= abi.VIP_PORT_RANGES:
            flags |= abi.TENANT_PORT_RANGES
    if flood_policy_value(tenant.flood) is not None:
        flags |= abi.TENANT_HAS_FLOOD_POLICY
    if tenant.sampled:
        flags |= abi.TENANT_SAMPLED
    return flags


def flood_policy_value(flood: FloodPolicy) -> bytes | None:
    """Packed struct ew_flood_policy (generation 0: see with_generation), or
    None when the tenant needs no flood check."""
    flags = 0
    if flood.drop_amplification:
        flags |= abi.FLOOD_DROP_AMPLIFICATION
    if flood.fragments is FragmentPolicy.DROP:
        flags |= abi.FLOOD_DROP_FRAGMENTS
    if flood.fragments is FragmentPolicy.LIMIT:
        flags |= abi.FLOOD_LIMIT_FRAGMENTS
    if flood.syn_cookies:
        flags |= abi.FLOOD_SYN_COOKIES
    flags |= {SynAckPolicy.DROP: abi.FLOOD_SYN_ACK_DROP, SynAckPolicy.TRACK: abi.FLOOD_SYN_ACK_TRACK,
              SynAckPolicy.PASS: 0}[flood.syn_ack]
    limits = [Rate()] * abi.BUCKET_KINDS
    limits[abi.BucketKind.packets] = flood.packets
    limits[abi.BucketKind.bytes] = Rate(flood.bits.per_second // 8, flood.bits.burst // 8)
    limits[abi.BucketKind.syn] = flood.syns
    limits[abi.BucketKind.fragments] = flood.fragment_rate
    if not all(r.unlimited for r in limits) or not flood.per_source.unlimited:
        flags |= abi.FLOOD_HAS_LIMITS
        # The coarse clock (a jiffy's resolution, cheaper to read) suffices
        # when no limit's burst is smaller than a tick of its rate.
        if all(r.burst * NS_PER_SECOND >= r.per_second * abi.COARSE_CLOCK_NS for r in (*limits, flood.per_source)):
            flags |= abi.FLOOD_COARSE_CLOCK
    if not flags:
        return None
    allowed = sum(1 << abi.AMPLIFICATION_PORTS[port] for port in flood.allow_amplification_ports)
    return _pack("struct ew_flood_policy", {
        "flags": flags, "amplification_allowed": allowed,
        "limits": [{"rate": r.per_second, "burst": r.burst} for r in limits],
        "per_source": {"rate": flood.per_source.per_second, "burst": flood.per_source.burst},
        "source_prefix_v4": flood.source_prefix_v4, "source_prefix_v6": flood.source_prefix_v6})


GENERATION_OFFSET = ffi.offsetof("struct ew_flood_policy", "generation")


def with_generation(value: bytes, tenant_id: int) -> bytes:
    """The flood policy value stamped with its generation: a digest of the
    tenant and the policy, never 0. The datapath starts a bucket over, full,
    when its generation differs from the policy's, so a changed policy (or
    another tenant in the slot) gets fresh buckets in the instant it takes
    effect, and an unchanged one keeps them."""
    generation = zlib.crc32(pack_u32(tenant_id) + value) or 1
    return value[:GENERATION_OFFSET] + pack_u32(generation) + value[GENERATION_OFFSET + 4:]


def port_ranges(tenant: Tenant) -> list[tuple[int, int, int]]:
    """(protocol number, first, last) of the tenant's blocked ports, merged
    where rules overlap or touch, in order."""
    merged: list[list[int]] = []
    for proto, first, last in sorted((PROTOCOL_NUMBERS[r.protocol], r.first, r.last) for r in tenant.blocked_ports):
        if merged and merged[-1][0] == proto and first <= merged[-1][2] + 1:
            merged[-1][2] = max(merged[-1][2], last)
        else:
            merged.append([proto, first, last])
    return [tuple(r) for r in merged]


def vip_value(tenant_id: int, slot: int, flags: int, ranges: list[tuple[int, int, int]] = ()) -> bytes:
    """`ranges`: the tenant's blocked ports, held in the value when flags has TENANT_PORT_RANGES."""
    blocks = [{"proto": proto, "first": first, "last": last} for proto, first, last in ranges] \
        if flags & abi.TENANT_PORT_RANGES else []
    return _pack("struct ew_vip", {"tenant_id": tenant_id, "slot": slot, "flags": flags, "port_blocks": blocks})


def tenant_value(flags: int, slot: int) -> bytes:
    return _pack("struct ew_tenant", {"flags": flags, "slot": slot})


def port_key(tenant_id: int, protocol: str, port: int) -> bytes:
    return _pack("struct ew_port_key", {
        "tenant_id": tenant_id, "port": socket.htons(port), "proto": PROTOCOL_NUMBERS[protocol],
    })


def config_value(revision: int, flags: int) -> bytes:
    return _pack("struct ew_config", {"policy_revision": revision, "flags": flags})


def block_value(list_id: int = GLOBAL_LIST_ID) -> bytes:
    return _pack("struct ew_block_value", {"list_id": list_id})


class SlotsExhausted(ValueError):
    pass


def assign_slots(policy: Policy, live_slots: dict[int, int], capacity: int) -> dict[int, int]:
    """Counter slot per tenant: a tenant keeps its slot; a new one takes a slot
    no live tenant holds (slots of removed tenants are free from the next
    apply on, once no VIP can point at them any more). Slot 0 is tenant 0's."""
    slots = {t.id: live_slots[t.id] for t in policy.tenants if t.id in live_slots}
    taken = set(live_slots.values()) | {abi.TENANT_UNASSIGNED}
    free = (s for s in range(1, capacity) if s not in taken)
    for tenant in policy.tenants:
        if tenant.id not in slots:
            slot = next(free, None)
            if slot is None:
                raise SlotsExhausted(f"no free counter slot for tenant {tenant.id} ({capacity - 1} slots, "
                                     f"{len(live_slots)} held); apply a policy without removed tenants first, "
                                     "or attach with more capacity; nothing was applied")
            slots[tenant.id] = slot
    return slots


@dataclass
class CompiledPolicy:
    """Desired contents of every policy map and block table; counters are not policy."""

    revision: int
    maps: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    tables: dict[str, EntryTable] = field(default_factory=dict)
    slots: dict[int, int] = field(default_factory=dict)

    @property
    def tenant_ids(self) -> frozenset[int]:
        return frozenset(self.slots)

    def entry_counts(self) -> dict[str, int]:
        return {name: len(entries) for name, entries in {**self.maps, **self.tables}.items()}


def _vip_maps(policy: Policy, slots: dict[int, int], with_source_blocks: set[int]) -> dict[str, dict[bytes, bytes]]:
    maps: dict[str, dict[bytes, bytes]] = {name: {} for name in
                                           ("ew_vips_v4", "ew_vips_v6", "ew_vip_ports_v4", "ew_vip_ports_v6")}
    any_port: dict[bytes, tuple[int, str]] = {}      # packed address -> (tenant id, family suffix)
    with_ports: dict[bytes, str] = {}
    for tenant in policy.tenants:
        value = vip_value(tenant.id, slots[tenant.id], tenant_flags(tenant, with_source_blocks), port_ranges(tenant))
        for vip in tenant.vips:
            addr = vip.address.packed
            suffix = "v4" if vip.address.version == 4 else "v6"
            if vip.protocol is None:
                any_port[addr] = (tenant.id, suffix)
                continue
            key = _pack(f"struct ew_vip_port_{suffix}_key", {
                "addr": list(addr), "port": socket.htons(vip.port), "proto": PROTOCOL_NUMBERS[vip.protocol]})
            maps[f"ew_vip_ports_{suffix}"][key] = value
            with_ports[addr] = suffix
    by_id = {t.id: t for t in policy.tenants}
    for addr in any_port.keys() | with_ports.keys():
        tenant_id, suffix = any_port.get(addr, (abi.TENANT_UNASSIGNED, with_ports.get(addr)))
        flags = abi.VIP_HAS_PORT_VIPS if addr in with_ports else 0
        ranges = []
        if tenant_id != abi.TENANT_UNASSIGNED:
            flags |= tenant_flags(by_id[tenant_id], with_source_blocks)
            ranges = port_ranges(by_id[tenant_id])
        maps[f"ew_vips_{suffix}"][addr] = vip_value(tenant_id, slots.get(tenant_id, 0), flags, ranges)
    return maps


def prefix_set(networks) -> PrefixSet:
    return PrefixSet.from_list([(n.network_address.packed, n.prefixlen) for n in networks])


def scope_sets(policy: Policy, named: dict[int | None, PrefixSet] | None = None) -> dict[int | None, PrefixSet]:
    """Per scope (None = global), everything blocked: the policy's own lists
    united with the named lists of that scope. Named lists of a tenant that
    is not in the policy are not enforced."""
    named = named or {}
    sets = {None: prefix_set(policy.blocked_sources)}
    for tenant in policy.tenants:
        sets[tenant.id] = prefix_set(tenant.blocked_sources)
    for scope, extra in named.items():
        if scope in sets:
            sets[scope] = sets[scope].union(extra)
    return sets


GLOBAL_TABLES = ("ew_gblock_v4", "ew_gblock_v6")
TENANT_TABLES = ("ew_tblock_v4", "ew_tblock_v6")


def _block_tables(sets: dict[int | None, PrefixSet], only: frozenset[str]) -> dict[str, EntryTable]:
    value = block_value()
    tenants = [(scope, s) for scope, s in sorted(sets.items(), key=lambda item: -1 if item[0] is None else item[0])
               if scope is not None and len(s)]
    node_size = ffi.sizeof("struct ew_block_node")
    builders = {
        "ew_gblock_v4": lambda: sets[None].v4_block_entries(),
        "ew_gblock_v6": lambda: sets[None].v6_lpm_entries(None, value),
        "ew_tblock_v4": lambda: EntryTable.merged([s.v4_block_entries(t) for t, s in tenants],
                                                  ffi.sizeof("struct ew_tenant_block_key"), node_size),
        "ew_tblock_v6": lambda: EntryTable.merged([s.v6_lpm_entries(t, value) for t, s in tenants],
                                                  ffi.sizeof("struct ew_tenant_lpm_v6_key"), len(value)),
    }
    return {name: build() for name, build in builders.items() if name in only}


def compile_policy(policy: Policy, live_slots: dict[int, int] | None = None,
                   slot_capacity: int = abi.MAX_TENANTS,
                   named_lists: dict[int | None, PrefixSet] | None = None,
                   tables: frozenset[str] = frozenset(BLOCK_TABLES)) -> CompiledPolicy:
    """`named_lists`: per scope, the union of the named lists loaded beside the policy.
    `tables`: the block tables to build; the others are left as they are live
    (rebuilding a million-entry table nobody changed costs a second)."""
    slots = assign_slots(policy, live_slots or {}, slot_capacity)
    sets = scope_sets(policy, named_lists)
    with_source_blocks = {scope for scope, s in sets.items() if scope is not None and len(s)}
    maps: dict[str, dict[bytes, bytes]] = defaultdict(dict)
    maps.update(_vip_maps(policy, slots, with_source_blocks))
    for tenant in policy.tenants:
        maps["ew_tenants"][pack_u32(tenant.id)] = tenant_value(tenant_flags(tenant, with_source_blocks),
                                                                slots[tenant.id])
        for rule in tenant.blocked_ports:
            for port in rule.ports():
                maps["ew_port_blocks"][port_key(tenant.id, rule.protocol, port)] = b"\x01"
        flood = flood_policy_value(tenant.flood)
        if flood is not None:
            maps["ew_flood_policies"][pack_u32(slots[tenant.id])] = with_generation(flood, tenant.id)
    built = _block_tables(sets, tables)
    flags = (abi.CONFIG_GLOBAL_V4_BLOCKS if sets[None].count_v4() else 0) | (
        abi.CONFIG_GLOBAL_V6_BLOCKS if sets[None].count_v6() else 0)
    maps["ew_config"][pack_u32(0)] = config_value(policy.revision, flags)
    return CompiledPolicy(policy.revision, {name: dict(maps[name]) for name in POLICY_MAPS}, built, slots)
