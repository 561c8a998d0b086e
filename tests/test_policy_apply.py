"""Applying compiled policies as diffs to maps: in-memory fakes with the
BpfMap interface for the regular maps, the kernel's own map-in-map tables
for the block lists; write order, counters kept, capacity errors that write
nothing, and a real program's maps."""

import errno
import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from agent._libbpf import ffi
from agent.datapath import abi, blocktables
from agent.datapath.apply import apply_compiled, apply_policy_to_maps, live_slots
from agent.datapath.blocktables import SwappableTable
from agent.datapath.program import LoadedProgram
from agent.policy import Policy, Tenant, Vip, policy_from_document
from agent.datapath.compile import BLOCK_TABLES, POLICY_MAPS, SlotsExhausted, compile_policy, pack_u32
from agent.policy.model import FloodPolicy, Rate

from policy_support import (
    AMP,
    DROP_FRAGS,
    Flood,
    LIMITS,
    NAMED_DOC,
    NAMED_LISTS,
    SA,
    any_port_vips,
    as_dict,
    compile_doc,
    config_of,
    expected_flood,
    expected_flood_entries,
    flood_entries,
    flood_of,
    generation_of,
    generations_of,
    ip,
    net,
    prefix_set_of,
    tenant_v4_networks,
    u32,
    vip_of,
)


# ==========================================================================
# Applying compiled policies. The regular maps are in-memory fakes with the
# BpfMap interface; the block tables are the kernel's own map-in-map tables
# (a private LoadedProgram), every write to them recorded in the same log.


NCPUS = 2   # of the fake per-CPU counters


class FakeMap:
    """In-memory stand-in for BpfMap. Like a kernel hash map it refuses a new key
    when full (E2BIG); like an array map (ew_config, ew_counters, ew_flood_policies,
    ew_buckets) it always holds every index and refuses deletes. Every successful
    mutation is appended to the shared `log`."""

    def __init__(self, name, log, max_entries=1000, *, array=False):
        self.name = name
        self.log = log
        self.max_entries = max_entries
        key_type, value_type = abi.MAP_LAYOUTS[name]
        self.key_size = ffi.sizeof(key_type)
        size = ffi.sizeof(value_type)
        self.value_size = ((size + 7) & ~7) * NCPUS if name in abi.PERCPU_MAPS else size
        self.array = array
        self.data = {pack_u32(i): bytes(self.value_size) for i in range(max_entries)} if array else {}

    def _write(self, key, value, flags=0):
        assert len(key) == self.key_size and len(value) == self.value_size, self.name
        if flags == 1 and key in self.data:
            raise OSError(errno.EEXIST, f"{self.name}: exists")
        if key not in self.data:
            if self.array:
                raise OSError(errno.E2BIG, f"{self.name}: index out of range")
            if len(self.data) >= self.max_entries:
                raise OSError(errno.E2BIG, f"{self.name}: full")
        self.data[key] = value
        self.log.append(("update", self.name, key))

    def items(self):
        return dict(self.data)

    def items_packed(self):
        return b"".join(self.data), b"".join(self.data.values())

    def keys(self):
        return iter(list(self.data))

    def lookup(self, key):
        return self.data.get(key)

    def update(self, key, value, flags=0):
        self._write(key, value, flags)

    def update_many(self, entries):
        for key, value in entries.items():
            self._write(key, value)

    def delete(self, key):
        if self.array:
            raise OSError(errno.EINVAL, f"{self.name}: cannot delete from an array")
        if key not in self.data:
            return False
        del self.data[key]
        self.log.append(("delete", self.name, key))
        return True

    def delete_many(self, keys):
        for key in keys:
            self.delete(key)


class Recorded:
    """A real BpfMap whose mutations are appended to the shared log: `op` is "swap"
    for an outer map (its slot 0 is the table version packets see), "fill" for a
    fresh inner map not yet swapped in, "update" for the live inner map."""

    def __init__(self, bpf_map, table, log, op):
        self._map, self._table, self._log, self._op = bpf_map, table, log, op

    def __getattr__(self, attr):
        return getattr(self._map, attr)

    def update(self, key, value, flags=0):
        self._map.update(key, value, flags)
        self._log.append((self._op, self._table, key))

    def update_many(self, entries):
        self._map.update_many(entries)
        self._log.extend((self._op, self._table, key) for key in entries)

    def items_packed(self):
        return self._map.items_packed()

    def update_packed(self, keys, values):
        self._map.update_packed(keys, values)
        size = self._map.key_size
        self._log.extend((self._op, self._table, keys[i:i + size]) for i in range(0, len(keys), size))

    def delete(self, key):
        found = self._map.delete(key)
        if found:
            self._log.append(("delete", self._table, key))
        return found

    def delete_many(self, keys):
        for key in keys:
            self.delete(key)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._map.close()


# Real arrays the block-table changes write beside the tables (the prefilter, the host bits).
ARRAYS_BESIDE_TABLES = ("ew_prefilter_v4", "ew_host_bits_v4", "ew_thost_bits_v4")


@pytest.fixture
def make_maps(monkeypatch):
    """make_maps(log, **capacities): fake regular maps and real, recorded block tables."""
    programs = []
    table_of = {spec.key_type: name for name, spec in abi.SWAPPABLE_TABLES.items()}

    def make(log, **capacity):
        program = LoadedProgram(pin_dir=None)
        programs.append(program)
        open_inner, create = blocktables.open_inner_table, blocktables.create_map
        monkeypatch.setattr(blocktables, "open_inner_table", lambda fd, name, key_type, value_type: Recorded(
            open_inner(fd, name, key_type, value_type), table_of[key_type], log, "update"))
        monkeypatch.setattr(blocktables, "create_map", lambda *args: Recorded(
            create(*args), table_of[args[2]], log, "fill"))
        maps = fake_maps(log, **capacity)
        for name in BLOCK_TABLES:
            maps[name] = Recorded(program.maps[name], name, log, "swap")
        for name in ARRAYS_BESIDE_TABLES:
            maps[name] = program.maps[name]
        return maps

    yield make
    for program in programs:
        program.close()


# Policy maps that are arrays: every index exists, an all-zero value is no entry
# and writing zeroes removes one.
ARRAY_POLICY_MAPS = frozenset({"ew_flood_policies"})


def fake_maps(log, **capacity) -> dict[str, FakeMap]:
    """The regular maps as fakes: hash maps of 1000 entries unless told; the arrays
    sized as the loader sizes them, from the counter slots (ew_buckets holds
    BUCKET_KINDS buckets per slot, at slot * BUCKET_KINDS + kind); ew_source_buckets
    (an LRU hash in the kernel, keyed by struct ew_source_key, which starts with the slot)."""
    slots = capacity.get("ew_counters", 64)
    maps = {name: FakeMap(name, log, capacity.get(name, 1000)) for name in POLICY_MAPS
            if name != "ew_config" and name not in ARRAY_POLICY_MAPS}
    maps["ew_config"] = FakeMap("ew_config", log, 1, array=True)
    maps["ew_counters"] = FakeMap("ew_counters", log, slots, array=True)
    maps["ew_flood_policies"] = FakeMap("ew_flood_policies", log, capacity.get("ew_flood_policies", slots), array=True)
    maps["ew_buckets"] = FakeMap("ew_buckets", log, slots * 4, array=True)
    maps["ew_source_buckets"] = FakeMap("ew_source_buckets", log, capacity.get("ew_source_buckets", 1000))   # LRU
    return maps


def live_entries(maps, name) -> dict[bytes, bytes]:
    """A policy map's entries as a policy sees them: an array's all-zero values are absent."""
    entries = maps[name].items()
    return {k: v for k, v in entries.items() if any(v)} if name in ARRAY_POLICY_MAPS else entries


def bucket_keys(*slots) -> set[bytes]:
    return {pack_u32(slot * 4 + kind) for slot in slots for kind in range(4)}


def busy_bucket(key: bytes) -> bytes:
    """A used struct ew_bucket (lock word 0: the kernel does not copy it from user space)."""
    index = u32(key)
    return struct.pack("=IIQQ", 0, 0, (index + 1) * 10**9, 10**12 + index)


def source_keys(slot: int) -> list[bytes]:
    """Two struct ew_source_key of a slot: a v4 /24 and a v6 /64 source prefix."""
    return [struct.pack("=IBBH16s", slot, abi.FAMILY_IPV4, 24, 0, ip("198.51.100.0").packed + bytes(12)),
            struct.pack("=IBBH16s", slot, abi.FAMILY_IPV6, 64, 0, ip("2001:db8:5::").packed)]


def fill_buckets(maps, slots=None):
    """Mark the tenant buckets of `slots` (all by default) as used, and give each of
    those slots per-source buckets."""
    buckets, sources = maps["ew_buckets"], maps["ew_source_buckets"]
    slots = range(buckets.max_entries // 4) if slots is None else slots
    entries = {key: busy_bucket(key) for key in bucket_keys(*slots)}
    entries |= {key: struct.pack("=QQ", 5 * 10**9, 10**12) for slot in slots for key in source_keys(slot)}
    for key, value in entries.items():
        target = buckets if len(key) == 4 else sources
        if isinstance(target, FakeMap):
            target.data[key] = value
        else:
            target.update(key, value)


def table_entries(maps, name):
    return SwappableTable(maps[name]).entries()


def snapshot(maps):
    def contents(name, m):
        if isinstance(m, FakeMap):
            return m.items()
        return bytes(m.array_values()) if name in ARRAYS_BESIDE_TABLES else table_entries(maps, name)
    return {name: contents(name, m) for name, m in maps.items()}


def assert_maps_hold(maps, compiled):
    for name in POLICY_MAPS:
        assert live_entries(maps, name) == compiled.maps[name], name
    for name in BLOCK_TABLES:
        assert table_entries(maps, name) == as_dict(compiled.tables[name]), name
    assert live_slots(maps) == compiled.slots


def compile_for(maps, doc, named_lists=None):
    """Compiled as apply_policy_to_maps does: slots from the live maps."""
    return compile_doc(doc, live_slots(maps), maps["ew_counters"].max_entries, named_lists)


BASE_DOC = {
    "revision": 1,
    "global": {"blocked_sources": ["198.51.100.128/25", "2001:db8:bad::/48"]},
    "tenants": [
        {"id": 1, "name": "shop", "vips": ["203.0.113.10", "2001:db8:10::10"],
         "blocked_ports": ["tcp/25"], "blocked_sources": ["198.51.100.64/26"]},
        {"id": 2, "name": "video", "vips": [{"address": "203.0.113.20", "protocol": "tcp", "port": 443}]},
        {"id": 3, "name": "spammer", "state": "suspended", "vips": ["203.0.113.30"]},
    ],
}

NEXT_DOC = {
    "revision": 2,
    "global": {"blocked_sources": ["198.51.100.128/25", "192.0.2.0/24"]},   # v6 list emptied, v4 entry added
    "tenants": [
        {"id": 1, "name": "shop", "vips": ["203.0.113.10", "2001:db8:10::10"],
         "blocked_ports": ["tcp/25"], "blocked_sources": ["198.51.100.64/26"]},   # unchanged
        {"id": 2, "name": "video", "state": "suspended",                            # state changed
         "vips": [{"address": "203.0.113.20", "protocol": "tcp", "port": 443}]},
        # tenant 3 removed
        {"id": 4, "name": "news", "vips": ["203.0.113.40"], "blocked_ports": ["udp/53"],   # added
         "blocked_sources": ["2001:db8:4::/64"]},
    ],
}

THIRD_DOC = dict(NEXT_DOC, revision=3, tenants=NEXT_DOC["tenants"] + [{"id": 5, "name": "late", "vips": ["203.0.113.50"]}])


def positions(log, *, op=None, name=None):
    return [i for i, (o, n, _) in enumerate(log) if (op is None or o == op) and (name is None or n == name)]


def test_apply_to_empty_maps_writes_everything(make_maps):
    log = []
    maps = make_maps(log)
    counters = maps["ew_counters"]
    busy = b"\x07" * counters.value_size   # what a slot holds before a tenant takes it
    for slot in range(counters.max_entries):
        counters.data[pack_u32(slot)] = busy
    fill_buckets(maps)
    compiled = compile_for(maps, BASE_DOC)
    report = apply_compiled(maps, compiled)
    assert_maps_hold(maps, compiled)
    assert compiled.slots == {1: 1, 2: 2, 3: 3}
    # The newly assigned slots were zeroed; tenant 0's and the free ones were left alone.
    zero = bytes(counters.value_size)
    assert {k for k, v in counters.items().items() if v == zero} == {pack_u32(s) for s in (1, 2, 3)}
    assert sorted(key for op, name, key in log if name == "ew_counters") == [pack_u32(s) for s in (1, 2, 3)]
    # Token buckets are never written: each flood policy carries its own generation,
    # and the datapath starts a bucket of another generation over, full.
    assert not positions(log, name="ew_buckets") and not positions(log, name="ew_source_buckets")
    generations = generations_of(maps)
    assert set(generations) == {1, 2, 3} and 0 not in generations.values()
    assert len(set(generations.values())) == 3
    # Every tenant has the default flood policy, in its slot.
    assert flood_entries(compiled) == {s: Flood(SA | AMP) for s in (1, 2, 3)}
    assert {u32(k) for k in live_entries(maps, "ew_flood_policies")} == {1, 2, 3}

    assert report.revision == 1
    assert report.added == ({n: len(e) for n, e in compiled.maps.items() if n != "ew_config"} | {"ew_config": 0}
                            | {n: len(e) for n, e in compiled.tables.items()})
    assert report.changed == {n: 0 for n in (*POLICY_MAPS, *BLOCK_TABLES)} | {"ew_config": 1}
    assert report.removed == {n: 0 for n in (*POLICY_MAPS, *BLOCK_TABLES)}
    assert report.swapped == []   # a few entries: written into the empty live tables
    assert {(op, name) for op, name, _ in log if name in BLOCK_TABLES} == {
        ("update", n) for n, e in compiled.tables.items() if e}

    # Tables first, then the counters, then rules (port blocks, flood policies)
    # before the tenants and VIPs that reach them, port VIPs before the any-port
    # entries announcing them; config last. No bucket is written.
    tables = positions(log, name="ew_gblock_v4") + positions(log, name="ew_gblock_v6") + positions(
        log, name="ew_tblock_v4")
    first = {n: min(positions(log, name=n)) for n in {n for _, n, _ in log}}
    last = {n: max(positions(log, name=n)) for n in {n for _, n, _ in log}}
    assert max(tables) < first["ew_counters"] and last["ew_counters"] < first["ew_port_blocks"]
    assert "ew_buckets" not in first and "ew_source_buckets" not in first
    assert last["ew_port_blocks"] < first["ew_tenants"] < first["ew_vip_ports_v4"]
    assert last["ew_flood_policies"] < first["ew_tenants"]
    assert last["ew_tenants"] < first["ew_vip_ports_v4"] and last["ew_vip_ports_v4"] < first["ew_vips_v4"]
    assert log[-1] == ("update", "ew_config", pack_u32(0)) and len(positions(log, name="ew_config")) == 1
    assert ffi.from_buffer("struct ew_config *", maps["ew_config"].items()[pack_u32(0)]).policy_revision == 1


def test_reapplying_the_same_policy_writes_nothing(make_maps):
    log = []
    maps = make_maps(log)
    compiled = compile_for(maps, BASE_DOC)
    apply_compiled(maps, compiled)
    log.clear()
    again = compile_for(maps, BASE_DOC)
    assert again.slots == compiled.slots
    report = apply_compiled(maps, again)
    assert log == []
    assert report.total_writes == 0 and report.swapped == []
    assert report.summary() == "revision 1: no changes"
    assert_maps_hold(maps, compiled)


def test_apply_diff_writes_only_changes_and_keeps_counters(make_maps):
    log = []
    maps = make_maps(log)
    old = compile_for(maps, BASE_DOC)
    apply_compiled(maps, old)
    counters = maps["ew_counters"]
    busy = {pack_u32(slot): bytes([slot + 1]) * counters.value_size for slot in range(counters.max_entries)}
    counters.data.update(busy)
    old_generations = generations_of(maps)
    log.clear()

    new = compile_for(maps, NEXT_DOC)
    # Tenants keep their slots; the new tenant does not get removed tenant 3's slot in this apply.
    assert new.slots == {1: 1, 2: 2, 4: 4}
    report = apply_compiled(maps, new)
    assert_maps_hold(maps, new)

    def contents(compiled, kind, name):
        entries = getattr(compiled, kind)[name]
        return entries if kind == "maps" else as_dict(entries)

    def changed(kind, name):
        return {k for k, v in contents(new, kind, name).items() if contents(old, kind, name).get(k) != v}

    def stale(kind, name):
        return set(contents(old, kind, name)) - set(contents(new, kind, name))

    writes = {(name, key) for op, name, key in log if op == "update" and name != "ew_counters"}
    deletes = {(name, key) for op, name, key in log if op == "delete"}
    # An array's stale entry is removed by writing zeroes into it: a write, never a delete.
    assert writes == ({(name, k) for name in POLICY_MAPS for k in changed("maps", name)}
                      | {(name, k) for name in ARRAY_POLICY_MAPS for k in stale("maps", name)}
                      | {(name, k) for name in BLOCK_TABLES for k in changed("tables", name)})
    assert deletes == ({(name, k) for name in POLICY_MAPS if name not in ARRAY_POLICY_MAPS for k in stale("maps", name)}
                       | {(name, k) for name in BLOCK_TABLES for k in stale("tables", name)})
    # Each once, plus the one counter slot of the new tenant 4; no bucket is written.
    assert len(writes) + len(deletes) == len(log) - 1
    assert not positions(log, name="ew_buckets") and not positions(log, name="ew_source_buckets")
    # Tenants 1 and 2 kept their flood policies, so their buckets live on; tenant 4's are new.
    generations = generations_of(maps)
    assert set(generations) == {1, 2, 4}
    assert generations[1] == old_generations[1] and generations[2] == old_generations[2]
    assert generations[4] not in old_generations.values()
    assert stale("maps", "ew_flood_policies") == {pack_u32(3)}
    assert maps["ew_flood_policies"].lookup(pack_u32(3)) == bytes(maps["ew_flood_policies"].value_size)
    assert changed("maps", "ew_flood_policies") == {pack_u32(4)}
    assert (report.added["ew_flood_policies"], report.changed["ew_flood_policies"],
            report.removed["ew_flood_policies"]) == (1, 0, 1)
    assert not positions(log, op="swap") and not positions(log, op="fill")   # small changes: in place
    assert ("ew_tenants", pack_u32(1)) not in writes           # unchanged tenant not rewritten
    assert ("ew_tenants", pack_u32(2)) in writes                # its state changed
    assert ("ew_tenants", pack_u32(3)) in deletes
    assert ("ew_vip_ports_v4", next(iter(new.maps["ew_vip_ports_v4"]))) in writes   # suspension copied in
    assert report.added["ew_tenants"] == 1 and report.changed["ew_tenants"] == 1
    assert report.removed["ew_tenants"] == 1
    assert report.added["ew_gblock_v4"] == 1 and report.removed["ew_gblock_v4"] == 0
    assert report.removed["ew_gblock_v6"] == 1 and report.added["ew_tblock_v6"] == 1
    assert report.removed["ew_vips_v4"] == 1 and report.added["ew_vips_v4"] == 1
    assert report.changed["ew_vips_v4"] == 0 and report.changed["ew_vip_ports_v4"] == 1
    assert report.changed["ew_config"] == 1
    assert config_of(new) == (2, abi.CONFIG_GLOBAL_V4_BLOCKS)
    assert ffi.from_buffer("struct ew_config *", maps["ew_config"].items()[pack_u32(0)]).policy_revision == 2

    # Counters: only the new tenant's slot is zeroed, before the tenant and its VIP exist;
    # every other slot (tenant 0's, the kept tenants', removed tenant 3's) is untouched.
    live = counters.items()
    assert live == busy | {pack_u32(4): bytes(counters.value_size)}
    assert positions(log, name="ew_counters") == [positions(log, op="update", name="ew_counters")[0]]
    zeroed = log.index(("update", "ew_counters", pack_u32(4)))
    assert zeroed < log.index(("update", "ew_tenants", pack_u32(4)))
    assert zeroed < log.index(("update", "ew_vips_v4", ip("203.0.113.40").packed))
    assert all(i < zeroed for name in BLOCK_TABLES for i in positions(log, name=name))
    # The new tenant's flood policy before its tenant and VIP entries.
    assert log.index(("update", "ew_flood_policies", pack_u32(4))) < log.index(("update", "ew_tenants", pack_u32(4)))
    # Removals in reverse: tenant 3's VIP and tenant entry go before its flood policy is cleared.
    cleared = log.index(("update", "ew_flood_policies", pack_u32(3)))
    assert log.index(("delete", "ew_vips_v4", ip("203.0.113.30").packed)) < cleared
    assert log.index(("delete", "ew_tenants", pack_u32(3))) < cleared

    # Next apply: tenant 3 is gone from the live maps, so a newcomer takes its slot (zeroed).
    log.clear()
    third = compile_for(maps, THIRD_DOC)
    assert third.slots == {1: 1, 2: 2, 4: 4, 5: 3}
    apply_compiled(maps, third)
    assert_maps_hold(maps, third)
    assert counters.items() == live | {pack_u32(3): bytes(counters.value_size)}
    assert [key for _, name, key in log if name == "ew_counters"] == [pack_u32(3)]
    assert not positions(log, name="ew_buckets")
    assert flood_entries(third) == {s: Flood(SA | AMP) for s in (1, 2, 3, 4)}
    # Slot 3 had removed tenant 3's buckets; newcomer 5 has the same flood policy but
    # another generation, so it finds them full.
    assert generations_of(maps)[3] not in old_generations.values()


FLOOD_BASE_DOC = {"revision": 1, "tenants": [
    {"id": 1, "name": "kept", "vips": ["203.0.113.1"]},
    {"id": 2, "name": "gains", "vips": ["203.0.113.2"], "flood": {"amplification": "pass", "syn_ack": "pass"}},
    {"id": 3, "name": "loses", "vips": ["203.0.113.3"],
     "flood": {"amplification": "pass", "syn_ack": "pass", "syns_per_second": 10, "syn_burst": 20}},
    {"id": 4, "name": "retuned", "vips": ["203.0.113.4"], "flood": {"packets_per_second": 100, "packet_burst": 200}},
    {"id": 5, "name": "suspended", "vips": ["203.0.113.5"]},
    {"id": 6, "name": "still-none", "vips": ["203.0.113.6"], "flood": {"amplification": "pass", "syn_ack": "pass"}},
    {"id": 7, "name": "removed", "vips": ["203.0.113.7"]},
    {"id": 8, "name": "same-bytes", "vips": ["203.0.113.8"], "flood": {"bits_per_second": 8000, "bit_burst": 16000}},
]}
FLOOD_NEXT_DOC = {"revision": 2, "tenants": [
    {"id": 1, "name": "kept", "vips": ["203.0.113.1"]},                                      # unchanged
    {"id": 2, "name": "gains", "vips": ["203.0.113.2"],                                      # none -> a policy
     "flood": {"amplification": "pass", "syn_ack": "pass", "fragments": "drop"}},
    {"id": 3, "name": "loses", "vips": ["203.0.113.3"], "flood": {"amplification": "pass", "syn_ack": "pass"}},   # a policy -> none
    {"id": 4, "name": "retuned", "vips": ["203.0.113.4"],                                    # a policy changed
     "flood": {"packets_per_second": 100, "packet_burst": 300}},
    {"id": 5, "name": "suspended", "state": "suspended", "vips": ["203.0.113.5"]},           # flood unchanged
    {"id": 6, "name": "still-none", "vips": ["203.0.113.6"],                                 # still nothing to check
     "flood": {"amplification": "pass", "syn_ack": "pass", "allow_amplification_ports": [53]}},
    {"id": 8, "name": "same-bytes", "vips": ["203.0.113.8"], "blocked_ports": ["tcp/25"],    # same flood, other rules
     "flood": {"bits_per_second": 8000, "bit_burst": 16000}},
    {"id": 9, "name": "new", "vips": ["203.0.113.9"]},                                       # added
    {"id": 10, "name": "new-none", "vips": ["203.0.113.10"], "flood": {"amplification": "pass", "syn_ack": "pass"}},   # added, none
]}


def test_token_buckets_are_fresh_when_a_flood_policy_changes(make_maps):
    """A slot's buckets start full when its tenant is new or its flood policy
    changed: the policy's generation changes with it, and the datapath starts
    a bucket of another generation over. A tenant whose entry stays the same
    keeps its generation, and so its bucket state, whatever else changed. The
    agent writes no bucket."""
    log = []
    maps = make_maps(log)
    base = compile_for(maps, FLOOD_BASE_DOC)
    apply_compiled(maps, base)
    assert base.slots == {i: i for i in range(1, 9)}
    assert flood_entries(base) == {1: Flood(SA | AMP), 3: Flood(LIMITS | abi.FLOOD_COARSE_CLOCK, 0, ((0, 0), (0, 0), (10, 20), (0, 0))),
                                   4: Flood(SA | AMP | LIMITS | abi.FLOOD_COARSE_CLOCK, 0, ((100, 200), (0, 0), (0, 0), (0, 0))),
                                   5: Flood(SA | AMP), 7: Flood(SA | AMP),
                                   8: Flood(SA | AMP | LIMITS | abi.FLOOD_COARSE_CLOCK, 0, ((0, 0), (1000, 2000), (0, 0), (0, 0)))}
    before = generations_of(maps)
    log.clear()

    nxt = compile_for(maps, FLOOD_NEXT_DOC)
    assert nxt.slots == {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 8: 8, 9: 9, 10: 10}
    report = apply_compiled(maps, nxt)
    assert_maps_hold(maps, nxt)
    assert flood_entries(nxt) == {1: Flood(SA | AMP), 2: Flood(DROP_FRAGS),
                                  4: Flood(SA | AMP | LIMITS | abi.FLOOD_COARSE_CLOCK, 0, ((100, 300), (0, 0), (0, 0), (0, 0))),
                                  5: Flood(SA | AMP), 8: Flood(SA | AMP | LIMITS | abi.FLOOD_COARSE_CLOCK, 0, ((0, 0), (1000, 2000), (0, 0), (0, 0))),
                                  9: Flood(SA | AMP)}
    # Fresh: 2 (policy written), 4 (changed), 9 (new); 3 and 7 have none left. Kept: 1, 5, 8.
    after = generations_of(maps)
    assert set(after) == {1, 2, 4, 5, 8, 9}
    assert {slot for slot in after if after[slot] == before.get(slot)} == {1, 5, 8}
    assert not {after[slot] for slot in (2, 4, 9)} & set(before.values())
    assert not positions(log, name="ew_buckets") and not positions(log, name="ew_source_buckets")
    # The flood policy map: written for 2, 4 and 9, zeroed for 3 and 7; never a delete.
    flood_log = [(op, u32(key)) for op, name, key in log if name == "ew_flood_policies"]
    assert sorted(flood_log) == [("update", s) for s in (2, 3, 4, 7, 9)]
    zero = bytes(maps["ew_flood_policies"].value_size)
    assert maps["ew_flood_policies"].lookup(pack_u32(3)) == maps["ew_flood_policies"].lookup(pack_u32(7)) == zero
    assert (report.added["ew_flood_policies"], report.changed["ew_flood_policies"],
            report.removed["ew_flood_policies"]) == (2, 1, 2)
    # The flag follows: tenant 2 gains it, tenant 3 loses it, in ew_tenants and the VIPs.
    flags = {u32(k): ffi.from_buffer("struct ew_tenant *", v).flags
             for k, v in live_entries(maps, "ew_tenants").items()}
    assert {t for t, f in flags.items() if f & abi.TENANT_HAS_FLOOD_POLICY} == {1, 2, 4, 5, 8, 9}
    vip_flags = {ipaddress.IPv4Address(k): vip_of(v)[2] for k, v in live_entries(maps, "ew_vips_v4").items()}
    assert {a for a, f in vip_flags.items() if f & abi.TENANT_HAS_FLOOD_POLICY} == {
        ip(f"203.0.113.{t}") for t in (1, 2, 4, 5, 8, 9)}
    # A policy is in place before a VIP announces it, and announced no longer before it goes.
    vip_write = log.index(("update", "ew_vips_v4", ip("203.0.113.2").packed))
    assert log.index(("update", "ew_flood_policies", pack_u32(2))) < vip_write
    cleared = log.index(("update", "ew_flood_policies", pack_u32(3)))
    assert log.index(("update", "ew_vips_v4", ip("203.0.113.3").packed)) < cleared
    assert log.index(("update", "ew_tenants", pack_u32(3))) < cleared
    # A new tenant's flood policy is in place before its tenant entry.
    assert log.index(("update", "ew_flood_policies", pack_u32(9))) < log.index(("update", "ew_tenants", pack_u32(9)))
    assert pack_u32(10) not in live_entries(maps, "ew_flood_policies")

    # Applying the same policy again writes nothing, generations included.
    log.clear()
    report = apply_compiled(maps, compile_for(maps, FLOOD_NEXT_DOC))
    assert log == [] and report.total_writes == 0
    assert generations_of(maps) == after


def test_a_removed_flood_policy_reads_back_as_absent(make_maps):
    """ew_flood_policies is an array: clearing a slot writes zeroes, and an all-zero
    slot counts as no entry, so the next apply neither rewrites nor 'removes' it."""
    log = []
    maps = make_maps(log)
    apply_compiled(maps, compile_for(maps, FLOOD_BASE_DOC))
    apply_compiled(maps, compile_for(maps, FLOOD_NEXT_DOC))
    flood_map = maps["ew_flood_policies"]
    assert len(flood_map.items()) == flood_map.max_entries              # every index exists,
    assert set(live_entries(maps, "ew_flood_policies")) == {pack_u32(s) for s in (1, 2, 4, 5, 8, 9)}
    log.clear()
    report = apply_compiled(maps, compile_for(maps, dict(FLOOD_NEXT_DOC, revision=3)))
    assert report.removed["ew_flood_policies"] == 0 and report.added["ew_flood_policies"] == 0
    assert log == [("update", "ew_config", pack_u32(0))]
    # Everything off: every entry zeroed, none deleted.
    log.clear()
    off = {"revision": 4, "tenants": [dict(t, flood={"amplification": "pass", "syn_ack": "pass"}) for t in FLOOD_NEXT_DOC["tenants"]]}
    report = apply_compiled(maps, compile_for(maps, off))
    assert report.removed["ew_flood_policies"] == 6
    assert live_entries(maps, "ew_flood_policies") == {}
    assert not positions(log, op="delete", name="ew_flood_policies")
    assert not positions(log, name="ew_buckets")


def test_named_lists_are_applied_and_withdrawn(make_maps):
    """apply_policy_to_maps with named lists enforces their union with the policy's
    lists; applying without them takes them out again, in place."""
    log = []
    maps = make_maps(log)
    named = {scope: prefix_set_of(texts) for scope, texts in NAMED_LISTS.items()}
    policy = policy_from_document(NAMED_DOC)
    report = apply_policy_to_maps(maps, policy, named)
    assert report.added["ew_tblock_v4"] > 0 and report.added["ew_gblock_v6"] == 1
    assert_maps_hold(maps, compile_for(maps, NAMED_DOC, named))
    assert tenant_v4_networks(SwappableTable(maps["ew_tblock_v4"]).entries_table())[1] == [net("100.64.0.0/10")]
    log.clear()
    report = apply_policy_to_maps(maps, policy)
    assert report.swapped == [] and report.removed["ew_gblock_v6"] == 1 and report.changed["ew_tenants"] == 1
    assert_maps_hold(maps, compile_for(maps, NAMED_DOC))
    assert 1 not in tenant_v4_networks(SwappableTable(maps["ew_tblock_v4"]).entries_table())


def test_revision_is_written_after_every_other_policy_change(make_maps):
    """The module promises 'the revision last, so a reader that sees a revision sees
    all of it': nothing, in any map or table, may be written or deleted after it."""
    log = []
    maps = make_maps(log)
    apply_compiled(maps, compile_for(maps, BASE_DOC))
    log.clear()
    apply_compiled(maps, compile_for(maps, NEXT_DOC))
    config_at = log.index(("update", "ew_config", pack_u32(0)))
    after = log[config_at + 1:]
    assert after == [], f"written after the new revision was published: {after}"


def test_capacity_error_in_a_policy_map_writes_nothing(make_maps):
    log = []
    maps = make_maps(log, ew_port_blocks=50)
    apply_compiled(maps, compile_for(maps, BASE_DOC))
    before = snapshot(maps)
    log.clear()
    doc = dict(NEXT_DOC, tenants=NEXT_DOC["tenants"] + [{"id": 9, "name": "z", "blocked_ports": ["tcp/1-51"]}])
    with pytest.raises(ValueError, match=r"policy needs 53 entries in ew_port_blocks, which holds 50; "
                                         r"nothing was applied"):
        apply_compiled(maps, compile_for(maps, doc))
    assert log == [] and snapshot(maps) == before


def test_slots_exhausted_writes_nothing(make_maps):
    log = []
    maps = make_maps(log, ew_counters=4)   # slot 0 (tenant 0) + 3 tenant slots
    apply_policy_to_maps(maps, policy_from_document(BASE_DOC))
    before = snapshot(maps)
    log.clear()
    # Tenant 3 removed, 4 added: 3 tenants, but 3's slot is still held in this apply.
    with pytest.raises(SlotsExhausted, match="nothing was applied"):
        apply_policy_to_maps(maps, policy_from_document(NEXT_DOC))
    assert log == [] and snapshot(maps) == before
    # Removing first, then adding, as the message advises, works.
    without = dict(NEXT_DOC, tenants=NEXT_DOC["tenants"][:2])
    apply_policy_to_maps(maps, policy_from_document(without))
    report = apply_policy_to_maps(maps, policy_from_document(NEXT_DOC))
    assert report.revision == 2 and live_slots(maps) == {1: 1, 2: 2, 4: 3}
    assert_maps_hold(maps, compile_for(maps, NEXT_DOC))


def test_capacity_error_on_empty_maps_writes_nothing(make_maps):
    log = []
    maps = make_maps(log, ew_vips_v4=2)
    with pytest.raises(ValueError, match="policy needs 3 entries in ew_vips_v4, which holds 2"):
        apply_compiled(maps, compile_for(maps, BASE_DOC))   # 3 IPv4 addresses
    assert log == []
    assert all(not live_entries(maps, name) for name in POLICY_MAPS if name != "ew_config")
    assert not any(any(v) for v in maps["ew_buckets"].items().values())
    assert all(not table_entries(maps, name) for name in BLOCK_TABLES)


def test_block_table_capacity_error_writes_nothing(make_maps):
    """Regression: a policy whose tenant v4 block table needs more nodes than the inner
    table holds (EW_MAX_TENANT_BLOCK_NODES_V4 = 262144; five tenants blocking 0.0.0.0/0
    need 5 x 65536) is refused before anything is written: the global tables of the new
    policy must not be enforced under the old revision, tenants and VIPs."""
    log = []
    maps = make_maps(log)
    apply_compiled(maps, compile_for(maps, BASE_DOC))
    before = snapshot(maps)
    log.clear()
    doc = dict(NEXT_DOC, tenants=[{"id": i, "name": f"t{i}", "blocked_sources": ["0.0.0.0/0"]} for i in range(1, 6)])
    with pytest.raises(ValueError, match="nothing was applied"):
        apply_compiled(maps, compile_for(maps, doc))
    assert log == [], f"{len(log)} writes before the capacity error, e.g. {sorted({(o, n) for o, n, _ in log})}"
    assert snapshot(maps) == before


@pytest.mark.parametrize("scenario", ["vips", "counters"])
def test_replacing_a_full_map_does_not_fail_half_way(make_maps, scenario):
    """Adding before removing needs room for old and new at once: a map without it must
    have its stale entries removed first (or the apply refused before any write), never
    an E2BIG half-way through with earlier maps already rewritten."""
    log = []
    old_doc = {"revision": 1, "tenants": [{"id": 1, "name": "a", "vips": ["203.0.113.1", "203.0.113.2"]},
                                          {"id": 2, "name": "b"}]}
    new_doc = {"revision": 2, "global": {"blocked_sources": ["192.0.2.0/24"]},
               "tenants": [{"id": 1, "name": "a", "vips": ["203.0.113.3", "203.0.113.4"]},
                           {"id": 2, "name": "b"}]}
    if scenario == "vips":
        maps = make_maps(log, ew_vips_v4=2)
    else:
        maps = make_maps(log, ew_counters=3)
        new_doc["tenants"] = [{"id": 3, "name": "c", "vips": ["203.0.113.1", "203.0.113.2"]},
                              {"id": 4, "name": "d"}]
    apply_policy_to_maps(maps, policy_from_document(old_doc))
    before = snapshot(maps)
    try:
        apply_policy_to_maps(maps, policy_from_document(new_doc))
    except (ValueError, OSError) as err:
        assert snapshot(maps) == before, f"apply failed half-way ({err}); maps were already modified"
    else:
        assert_maps_hold(maps, compile_for(maps, new_doc))


def test_large_table_change_is_swapped_in_whole(make_maps):
    """More than DELTA_LIMIT changed entries: a fresh inner table is filled and swapped
    in with one write of the outer slot; a small change after that is applied in place
    in the swapped-in table."""
    log = []
    maps = make_maps(log)
    apply_compiled(maps, compile_for(maps, BASE_DOC))
    log.clear()
    hosts = [str(ipaddress.IPv4Address((100 << 24) | (64 << 16) | (i << 8) | (i & 0xFF)))
             for i in range(blocktables.DELTA_LIMIT + 1)]   # one /24 node each
    doc = {**BASE_DOC, "revision": 2, "global": {"blocked_sources": hosts}}
    compiled = compile_for(maps, doc)
    report = apply_compiled(maps, compiled)
    assert report.swapped == ["ew_gblock_v4"]
    assert_maps_hold(maps, compiled)
    swap = log.index(("swap", "ew_gblock_v4", b"\0\0\0\0"))
    fills = positions(log, op="fill", name="ew_gblock_v4")
    assert len(fills) == len(compiled.tables["ew_gblock_v4"]) and max(fills) < swap
    assert not positions(log, op="update", name="ew_gblock_v4") and not positions(log, op="delete",
                                                                                   name="ew_gblock_v4")
    assert log[-1][1] == "ew_config"

    log.clear()
    smaller = {**doc, "revision": 3, "global": {"blocked_sources": hosts[1:]}}
    compiled = compile_for(maps, smaller)
    report = apply_compiled(maps, compiled)
    assert report.swapped == [] and report.removed["ew_gblock_v4"] == 1
    # 100.64.0.0 was the only host of its /24: the /16 node loses that /24's bit first,
    # then the /24 node goes.
    assert log == [("update", "ew_gblock_v4", struct.pack("=I", 16 << 24 | 100 << 8 | 64)),
                   ("delete", "ew_gblock_v4", struct.pack("=I", 24 << 24 | 100 << 16 | 64 << 8)),
                   ("update", "ew_config", pack_u32(0))]
    assert_maps_hold(maps, compiled)


def test_apply_to_real_maps():
    """The whole apply against the kernel's maps, per-CPU counters and the flood
    policy array included; the spin-locked token buckets are left alone (a
    policy's generation resets them in the datapath)."""
    with LoadedProgram(pin_dir=None) as program:
        maps = program.maps
        assert maps["ew_flood_policies"].max_entries == maps["ew_counters"].max_entries
        assert maps["ew_buckets"].max_entries == 4 * maps["ew_counters"].max_entries
        for doc in (BASE_DOC, NEXT_DOC, THIRD_DOC, BASE_DOC):
            policy = policy_from_document(doc)
            expected = compile_policy(policy, live_slots(maps), maps["ew_counters"].max_entries)
            if doc is NEXT_DOC:
                # traffic on the live slots, which the apply must not reset
                for slot in (0, 1, 2, 3):
                    maps["ew_counters"].update(pack_u32(slot), bytes([slot + 1]) * maps["ew_counters"].value_size)
            fill_buckets(maps, range(8))
            buckets_before = maps["ew_buckets"].items(), maps["ew_source_buckets"].items()
            apply_policy_to_maps(maps, policy)
            for name in POLICY_MAPS:
                assert live_entries(maps, name) == expected.maps[name], (doc["revision"], name)
            for name in BLOCK_TABLES:
                assert table_entries(maps, name) == as_dict(expected.tables[name]), (doc["revision"], name)
            assert live_slots(maps) == expected.slots
            assert flood_entries(expected) == expected_flood_entries(policy, expected.slots)
            assert (maps["ew_buckets"].items(), maps["ew_source_buckets"].items()) == buckets_before
        counters = maps["ew_counters"]
        assert live_slots(maps) == {1: 1, 2: 2, 3: 5}   # 3 came back after 4 and 5 took slots 4 and 3
        for slot in (0, 1, 2):
            assert counters.lookup(pack_u32(slot)) == bytes([slot + 1]) * counters.value_size
        for slot in (3, 4, 5):
            assert counters.lookup(pack_u32(slot)) == bytes(counters.value_size)   # zeroed when (re)assigned


@pytest.fixture(scope="module")
def shared_program():
    with LoadedProgram(pin_dir=None) as program:
        yield program


# Flood policies the tenants of the property test below switch between; 1 and 4 both
# compile to nothing to check, so switching between them resets nothing.
STEP_FLOODS = (FloodPolicy(), FloodPolicy(False), FloodPolicy(False, syns=Rate(10, 20)),
               FloodPolicy(packets=Rate(5, 5)), FloodPolicy(False, (53,)))


@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(2, 8),
       steps=st.lists(st.lists(st.tuples(st.integers(1, 9), st.integers(0, len(STEP_FLOODS) - 1)),
                               unique_by=lambda t: t[0], max_size=6), min_size=1, max_size=6))
def test_slots_and_counters_across_applies(shared_program, capacity, steps):
    """A sequence of policies applied with apply_policy_to_maps: tenants keep their slot
    and their counters; a new tenant takes the lowest slot not held before the apply,
    zeroed; a refused apply (SlotsExhausted) changes nothing. A slot's flood policy
    generation changes when its tenant or its flood policy does, and only then; the
    agent never writes a token bucket."""
    log = []
    maps = fake_maps(log, ew_counters=capacity)
    counters, buckets, sources = maps["ew_counters"], maps["ew_buckets"], maps["ew_source_buckets"]
    for name in (*BLOCK_TABLES, *ARRAYS_BESIDE_TABLES):   # no block lists here: the (empty) tables are only read
        maps[name] = shared_program.maps[name]
    traffic = 0
    floods: dict[int, FloodPolicy] = {}   # of the live tenants
    for revision, step in enumerate(steps):
        ids = [i for i, _ in step]
        held = live_slots(maps)
        free = [s for s in range(1, capacity) if s not in held.values()]
        new = [i for i in ids if i not in held]
        before = {name: maps[name].items() for name in (*POLICY_MAPS, "ew_counters", "ew_buckets",
                                                        "ew_source_buckets")}
        policy = Policy(revision, tuple(Tenant(i, f"t{i}", vips=(Vip(ipaddress.IPv4Address(i)),),
                                               flood=STEP_FLOODS[f]) for i, f in step))
        if len(new) > len(free):
            with pytest.raises(SlotsExhausted):
                apply_policy_to_maps(maps, policy)
            assert {name: maps[name].items() for name in before} == before
            continue
        apply_policy_to_maps(maps, policy)
        slots = live_slots(maps)
        assert slots == {i: held[i] for i in ids if i in held} | dict(zip(new, free))
        assert {a: v[:2] for a, v in any_port_vips(compile_policy(policy, slots, capacity)).items()} == {
            ipaddress.IPv4Address(i): (i, slots[i]) for i in ids}
        assert {ipaddress.IPv4Address(k): vip_of(v)[:2] for k, v in maps["ew_vips_v4"].items().items()} == {
            ipaddress.IPv4Address(i): (i, slots[i]) for i in ids}
        assert {u32(k): flood_of(v) for k, v in live_entries(maps, "ew_flood_policies").items()} == \
            expected_flood_entries(policy, slots)
        after = counters.items()
        for slot in range(capacity):
            key = pack_u32(slot)
            if slot in (slots[i] for i in new):
                assert after[key] == bytes(counters.value_size)
            else:
                assert after[key] == before["ew_counters"][key], slot
        new_floods = {t.id: t.flood for t in policy.tenants}
        fresh = ({slots[i] for i in new}
                 | {slots[i] for i in ids if i in held and expected_flood(floods[i]) != expected_flood(new_floods[i])})
        old_generations = {u32(k): generation_of(v) for k, v in before["ew_flood_policies"].items() if any(v)}
        for slot, generation in generations_of(maps).items():
            if slot in old_generations:
                assert (generation != old_generations[slot]) == (slot in fresh), (slot, fresh)
        assert buckets.items() == before["ew_buckets"] and sources.items() == before["ew_source_buckets"]
        floods = new_floods
        # traffic: every slot in use counts something new, and spends tokens
        for slot in (0, *slots.values()):
            traffic += 1
            counters.data[pack_u32(slot)] = traffic.to_bytes(8, "little") * (counters.value_size // 8)
            for key in bucket_keys(slot):
                buckets.data[key] = struct.pack("=IIQQ", 0, 0, traffic, traffic)
            for key in source_keys(slot):
                sources.data[key] = struct.pack("=QQ", traffic, traffic)
