"""Compiling a policy into map contents: VIP keys and values, tenant flags,
ports, counter slots, block tables and named block lists, decoded through
the ABI header's layouts."""

import dataclasses
import ipaddress
import socket
import struct

import pytest
from hypothesis import given, strategies as st

from agent._libbpf import ffi
from agent._prefixes import EntryTable, PrefixSet
from agent.blocklist import compile_prefixes_reference
from agent.datapath import abi, blocktables
from agent.policy import Policy, Tenant, load_policy, policy_from_document
from agent.datapath.compile import (
    BLOCK_TABLES,
    POLICY_MAPS,
    SlotsExhausted,
    assign_slots,
    compile_policy,
    pack_u32,
)

from policy_support import (
    AMP,
    vip_of,
    EXAMPLE,
    Flood,
    MAX_ID,
    NAMED_DOC,
    NAMED_LISTS,
    SA,
    SETTINGS,
    _v4_int,
    _v6_int,
    any_port_vips,
    as_dict,
    compile_doc,
    config_of,
    decode_port_vip_key,
    expected_flood,
    expected_flood_entries,
    flood_entries,
    ip,
    net,
    port_vips,
    prefix_set_of,
    tenant,
    tenant_entry,
    tenant_v4_networks,
    u32,
    valid_documents,
)


# ==========================================================================
# Compilation

PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def port_runs(t: Tenant) -> int:
    """Maximal runs of consecutive blocked ports, per protocol (brute force)."""
    runs = 0
    for proto in {r.protocol for r in t.blocked_ports}:
        ports = {p for r in t.blocked_ports if r.protocol == proto for p in r.ports()}
        runs += sum(1 for p in ports if p - 1 not in ports)
    return runs


def port_flags(t: Tenant) -> int:
    """Port blocks, in the VIP value when they make at most VIP_PORT_RANGES runs."""
    if not t.blocked_ports:
        return 0
    return abi.TENANT_HAS_PORT_BLOCKS | (abi.TENANT_PORT_RANGES if port_runs(t) <= abi.VIP_PORT_RANGES else 0)


def expected_flags(t: Tenant) -> int:
    return ((abi.TENANT_SUSPENDED if t.suspended else 0)
            | (abi.TENANT_HAS_SOURCE_BLOCKS if t.blocked_sources else 0)
            | port_flags(t)
            | (abi.TENANT_HAS_FLOOD_POLICY if expected_flood(t.flood) is not None else 0))


def expected_vips(policy: Policy, slots: dict[int, int]) -> tuple[dict, dict]:
    """The VIP maps as the ABI header describes them, straight from the policy."""
    any_port, ports = {}, {}
    for t in policy.tenants:
        value = (t.id, slots[t.id], expected_flags(t))
        for v in t.vips:
            if v.protocol is None:
                any_port[v.address] = value
            else:
                ports[(v.address, PROTO[v.protocol], v.port)] = value
    for address in {a for a, _, _ in ports}:
        tenant_id, slot, flags = any_port.get(address, (abi.TENANT_UNASSIGNED, 0, 0))
        any_port[address] = (tenant_id, slot, flags | abi.VIP_HAS_PORT_VIPS)
    return any_port, ports


def decode_port_key(key: bytes):
    s = ffi.from_buffer("struct ew_port_key *", key)
    assert s.pad == 0
    return s.tenant_id, s.proto, socket.ntohs(s.port)


def global_v4_networks(table: EntryTable) -> list:
    return blocktables.v4_networks_from_nodes({u32(k): v for k, v in as_dict(table).items()})


def v6_networks(table: EntryTable) -> set:
    """{(tenant id or None, prefix)}; every value is list 0."""
    entries = as_dict(table)
    for value in entries.values():
        block = ffi.from_buffer("struct ew_block_value *", value)
        assert (block.list_id, block.reserved) == (0, 0)
    decoded = [blocktables.decode_v6_lpm_key(k) for k in entries]
    assert len(set(decoded)) == len(decoded)
    return set(decoded)


def v4_only(networks):
    return [n for n in networks if n.version == 4]


def v6_only(networks):
    return [n for n in networks if n.version == 6]


def test_compiled_layouts_match_the_abi():
    compiled = compile_policy(load_policy(EXAMPLE))
    assert set(compiled.maps) == set(POLICY_MAPS) and set(compiled.tables) == set(BLOCK_TABLES)
    for name, entries in compiled.maps.items():
        key_type, value_type = abi.MAP_LAYOUTS[name]
        for key, value in entries.items():
            assert len(key) == ffi.sizeof(key_type), name
            assert len(value) == ffi.sizeof(value_type), name
    for name, entries in compiled.tables.items():
        spec = abi.SWAPPABLE_TABLES[name]
        assert entries or name == "ew_tblock_v6", name   # the example has no tenant v6 list
        assert (entries.key_size, entries.value_size) == (ffi.sizeof(spec.key_type), ffi.sizeof(spec.value_type))
        for key, value in entries.items():
            assert len(key) == ffi.sizeof(spec.key_type), name
            assert len(value) == ffi.sizeof(spec.value_type), name
    assert compiled.revision == 1 and compiled.tenant_ids == frozenset({1, 2, 3})
    assert compiled.slots == {1: 1, 2: 2, 3: 3}


def test_vip_keys_and_values():
    compiled = compile_doc({"tenants": [
        {"id": 7, "name": "a", "vips": ["203.0.113.10", "2001:db8::10"], "blocked_ports": ["tcp/25"]},
        {"id": 70000, "name": "b", "state": "suspended",
         "vips": [{"address": "203.0.113.10", "protocol": "tcp", "port": 443},
                  {"address": "2001:db8::10", "protocol": "udp", "port": 0x1234},
                  {"address": "203.0.113.11", "protocol": "udp", "port": 65535},
                  {"address": "203.0.113.11", "protocol": "tcp", "port": 65535},
                  {"address": "2001:db8::11", "protocol": "tcp", "port": 1}]},
        {"id": 9, "name": "c", "vips": ["203.0.113.12"], "blocked_sources": ["192.0.2.0/24"]},
    ]})
    assert compiled.slots == {7: 1, 70000: 2, 9: 3}
    flood = abi.TENANT_HAS_FLOOD_POLICY   # every tenant here has the default flood policy
    a = abi.TENANT_HAS_PORT_BLOCKS | abi.TENANT_PORT_RANGES | flood
    b = abi.TENANT_SUSPENDED | flood
    port = abi.VIP_HAS_PORT_VIPS
    assert any_port_vips(compiled) == {
        ip("203.0.113.10"): (7, 1, a | port),           # the address also has a port VIP (of another tenant)
        ip("2001:db8::10"): (7, 1, a | port),
        ip("203.0.113.11"): (0, 0, port),               # port VIPs only: tenant 0 placeholder, no flood policy
        ip("2001:db8::11"): (0, 0, port),
        ip("203.0.113.12"): (9, 3, abi.TENANT_HAS_SOURCE_BLOCKS | flood),
    }
    assert port_vips(compiled) == {
        (ip("203.0.113.10"), socket.IPPROTO_TCP, 443): (70000, 2, b),
        (ip("2001:db8::10"), socket.IPPROTO_UDP, 0x1234): (70000, 2, b),
        (ip("203.0.113.11"), socket.IPPROTO_UDP, 65535): (70000, 2, b),
        (ip("203.0.113.11"), socket.IPPROTO_TCP, 65535): (70000, 2, b),
        (ip("2001:db8::11"), socket.IPPROTO_TCP, 1): (70000, 2, b),
    }
    # The raw bytes: addresses and ports in network byte order, as the packet carries them.
    assert ip("203.0.113.12").packed in compiled.maps["ew_vips_v4"]
    key4 = next(k for k in compiled.maps["ew_vip_ports_v4"] if decode_port_vip_key("ew_vip_ports_v4", k)[1] == 17)
    assert key4 == ip("203.0.113.11").packed + b"\xff\xff" + bytes([socket.IPPROTO_UDP, 0])
    key6 = next(k for k in compiled.maps["ew_vip_ports_v6"] if decode_port_vip_key("ew_vip_ports_v6", k)[2] == 0x1234)
    assert key6 == ip("2001:db8::10").packed + b"\x12\x34" + bytes([socket.IPPROTO_UDP, 0])
    assert compiled.maps["ew_vips_v4"][ip("203.0.113.11").packed] == struct.pack("=IIII", 0, 0, port, 0) + bytes(
        8 * abi.VIP_PORT_RANGES)   # no port ranges: tenant 0


def port_blocks_of(value: bytes) -> list[tuple[int, int, int]]:
    """(proto, first, last) of a struct ew_vip's port ranges, up to the first unused one."""
    ranges = []
    for i in range(abi.VIP_PORT_RANGES):
        first, last, proto = struct.unpack_from("=HHB", value, 16 + 8 * i)
        if proto == 0:
            break
        ranges.append((proto, first, last))
    return ranges


def test_blocked_ports_sit_in_the_vip_value_as_merged_ranges_up_to_the_limit():
    rules = ["tcp/25", "tcp/22-24", "udp/1-1023", "udp/500", "tcp/26-30", "tcp/3306", "udp/1024"]
    compiled = compile_doc({"tenants": [
        {"id": 1, "name": "few", "vips": ["192.0.2.1"], "blocked_ports": rules},
        {"id": 2, "name": "many", "vips": ["192.0.2.2"],
         "blocked_ports": [f"tcp/{p}" for p in range(100, 100 + 2 * (abi.VIP_PORT_RANGES + 1), 2)]}]})
    few, many = (compiled.maps["ew_vips_v4"][ip(a).packed] for a in ("192.0.2.1", "192.0.2.2"))
    assert port_blocks_of(few) == [(socket.IPPROTO_TCP, 22, 30), (socket.IPPROTO_TCP, 3306, 3306),
                                   (socket.IPPROTO_UDP, 1, 1024)]
    assert vip_of(few)[2] & abi.TENANT_PORT_RANGES
    # One range too many: none in the value, the port hash decides.
    assert port_blocks_of(many) == [] and not vip_of(many)[2] & abi.TENANT_PORT_RANGES
    assert vip_of(many)[2] & abi.TENANT_HAS_PORT_BLOCKS
    assert len(compiled.maps["ew_port_blocks"]) == (1 + 3 + 5 + 1) + (1023 + 1) + (abi.VIP_PORT_RANGES + 1)


def test_any_port_vip_of_a_tenant_without_port_vips_has_no_port_flag():
    compiled = compile_doc({"tenants": [{"id": 1, "name": "a", "vips": ["192.0.2.1", "2001:db8::1"]},
                                        {"id": 2, "name": "b", "vips": ["192.0.2.2"],
                                         "flood": {"amplification": "pass", "syn_ack": "pass"}}]})
    flood = abi.TENANT_HAS_FLOOD_POLICY   # tenant 1's default flood policy; tenant 2 has nothing to check
    assert any_port_vips(compiled) == {ip("192.0.2.1"): (1, 1, flood), ip("2001:db8::1"): (1, 1, flood),
                                       ip("192.0.2.2"): (2, 2, 0)}
    assert not compiled.maps["ew_vip_ports_v4"] and not compiled.maps["ew_vip_ports_v6"]


FLOOD_VARIANTS = {
    "default": (None, True),                                  # no table: drop amplification
    "pass": ({"amplification": "pass", "syn_ack": "pass"}, False),   # nothing to check
    "pass-ports": ({"amplification": "pass", "syn_ack": "pass", "allow_amplification_ports": [53]}, False),
    "pass-limit": ({"amplification": "pass", "syns_per_second": 10, "syn_burst": 20}, True),
    "pass-fragments": ({"amplification": "pass", "fragments": "drop"}, True),
}


@pytest.mark.parametrize("state", ["active", "suspended"])
@pytest.mark.parametrize("sources", [[], ["198.51.100.0/24"], ["2001:db8::/48"]])
@pytest.mark.parametrize("ports", [[], ["tcp/25"]])
@pytest.mark.parametrize("flood", ["default", "pass", "pass-limit"])
def test_tenant_flags(state, sources, ports, flood):
    table, has_flood = FLOOD_VARIANTS[flood]
    x = {"id": 4, "name": "x", "state": state, "blocked_sources": sources, "blocked_ports": ports,
         "vips": ["192.0.2.4", {"address": "192.0.2.4", "protocol": "udp", "port": 53},
                  {"address": "2001:db8::4", "protocol": "tcp", "port": 80}]}
    if table is not None:
        x["flood"] = table
    compiled = compile_doc({"tenants": [
        x,
        {"id": 5, "name": "plain", "vips": ["192.0.2.5"]},
        {"id": 6, "name": "bare", "vips": ["192.0.2.6"], "flood": {"amplification": "pass", "syn_ack": "pass"}},
    ]})
    expected = ((abi.TENANT_SUSPENDED if state == "suspended" else 0)
                | (abi.TENANT_HAS_SOURCE_BLOCKS if sources else 0)
                | (abi.TENANT_HAS_PORT_BLOCKS | abi.TENANT_PORT_RANGES if ports else 0)
                | (abi.TENANT_HAS_FLOOD_POLICY if has_flood else 0))
    assert tenant_entry(compiled, 4) == (expected, 1)
    assert tenant_entry(compiled, 5) == (abi.TENANT_HAS_FLOOD_POLICY, 2)   # the default flood policy
    assert tenant_entry(compiled, 6) == (0, 3)                              # nothing at all to check
    # Copied into every VIP value, so the packet path needs one lookup.
    assert any_port_vips(compiled) == {ip("192.0.2.4"): (4, 1, expected | abi.VIP_HAS_PORT_VIPS),
                                       ip("2001:db8::4"): (0, 0, abi.VIP_HAS_PORT_VIPS),
                                       ip("192.0.2.5"): (5, 2, abi.TENANT_HAS_FLOOD_POLICY),
                                       ip("192.0.2.6"): (6, 3, 0)}
    assert set(port_vips(compiled).values()) == {(4, 1, expected)}
    # The flag and the entry go together: a flood policy exactly for the flagged tenants' slots.
    assert set(flood_entries(compiled)) == ({1} if has_flood else set()) | {2}


@pytest.mark.parametrize("flood", sorted(FLOOD_VARIANTS))
def test_flood_flag_and_entry_go_together(flood):
    table, has_flood = FLOOD_VARIANTS[flood]
    doc = {"tenants": [tenant(vips=["192.0.2.1"], **({} if table is None else {"flood": table}))]}
    compiled = compile_doc(doc)
    flags = abi.TENANT_HAS_FLOOD_POLICY if has_flood else 0
    assert tenant_entry(compiled, 1) == (flags, 1)
    assert any_port_vips(compiled) == {ip("192.0.2.1"): (1, 1, flags)}
    assert (pack_u32(1) in compiled.maps["ew_flood_policies"]) == has_flood
    assert len(compiled.maps["ew_flood_policies"]) == (1 if has_flood else 0)


def test_port_ranges_expand_to_one_entry_per_port():
    compiled = compile_doc({"tenants": [
        {"id": 1, "name": "a", "blocked_ports": ["udp/6000-6010", "tcp/25", "tcp/20-30", "udp/6005"]},
        {"id": 2, "name": "b", "blocked_ports": ["tcp/65530-65535", "tcp/1-4096"]},
    ]})
    entries = compiled.maps["ew_port_blocks"]
    assert set(entries.values()) == {b"\x01"}
    decoded = [decode_port_key(k) for k in entries]
    assert len(decoded) == len(set(decoded))
    assert set(decoded) == (
        {(1, socket.IPPROTO_UDP, p) for p in range(6000, 6011)}
        | {(1, socket.IPPROTO_TCP, p) for p in range(20, 31)}
        | {(2, socket.IPPROTO_TCP, p) for p in range(65530, 65536)}
        | {(2, socket.IPPROTO_TCP, p) for p in range(1, 4097)}
    )
    key = next(k for k in entries if decode_port_key(k) == (2, socket.IPPROTO_TCP, 0x0102))
    assert key == struct.pack("=I", 2) + b"\x01\x02" + bytes([socket.IPPROTO_TCP, 0])


# --- counter slots ------------------------------------------------------------

def test_slots_of_a_fresh_compile_are_dense_from_one():
    doc = {"tenants": [{"id": i, "name": f"t{i}", "vips": [f"192.0.2.{i & 0xFF}"]} for i in (50, 3, 2**32 - 1, 7)]}
    compiled = compile_doc(doc)
    assert compiled.slots == {50: 1, 3: 2, 2**32 - 1: 3, 7: 4}   # policy order; slot 0 is tenant 0's
    for tenant_id, slot in compiled.slots.items():
        assert tenant_entry(compiled, tenant_id)[1] == slot
    assert {a: v[:2] for a, v in any_port_vips(compiled).items()} == {
        ip("192.0.2.50"): (50, 1), ip("192.0.2.3"): (3, 2), ip("192.0.2.255"): (2**32 - 1, 3), ip("192.0.2.7"): (7, 4)}


def test_slots_are_stable_and_new_tenants_take_free_slots():
    doc = {"tenants": [{"id": i, "name": f"t{i}", "vips": [f"192.0.2.{i}"]} for i in (1, 2, 3, 4)]}
    live = {1: 5, 2: 1, 9: 2, 3: 4}   # 9 is being removed: its slot 2 stays taken in this apply
    compiled = compile_doc(doc, live, capacity=16)
    assert compiled.slots == {1: 5, 2: 1, 3: 4, 4: 3}
    assert {a: v[1] for a, v in any_port_vips(compiled).items()} == {
        ip("192.0.2.1"): 5, ip("192.0.2.2"): 1, ip("192.0.2.3"): 4, ip("192.0.2.4"): 3}
    # In the next apply tenant 9 is gone from the live maps, and its slot is free again.
    live = compiled.slots
    doc["tenants"] += [{"id": 10, "name": "t10"}, {"id": 11, "name": "t11"}]
    assert compile_doc(doc, live, capacity=16).slots == {1: 5, 2: 1, 3: 4, 4: 3, 10: 2, 11: 6}


def test_slots_exhausted():
    doc = {"tenants": [{"id": i, "name": f"t{i}"} for i in (1, 2, 3)]}
    assert compile_doc(doc, capacity=4).slots == {1: 1, 2: 2, 3: 3}
    with pytest.raises(SlotsExhausted, match=r"no free counter slot for tenant 4 \(3 slots, 0 held\).*"
                                             r"nothing was applied"):
        compile_doc({"tenants": doc["tenants"] + [{"id": 4, "name": "t4"}]}, capacity=4)
    # A removed tenant's slot is not reused in the same apply, even when the count fits.
    doc4 = {"tenants": [{"id": i, "name": f"t{i}"} for i in (1, 2, 4)]}
    with pytest.raises(SlotsExhausted, match=r"tenant 4 \(3 slots, 3 held\)"):
        compile_doc(doc4, {1: 1, 2: 2, 3: 3}, capacity=4)
    assert compile_doc(doc4, {1: 1, 2: 2}, capacity=4).slots == {1: 1, 2: 2, 4: 3}
    assert issubclass(SlotsExhausted, ValueError)


@SETTINGS
@given(ids=st.lists(st.integers(1, 30), unique=True, max_size=12),
       live=st.dictionaries(st.integers(1, 30), st.integers(1, 20), max_size=12),
       capacity=st.integers(1, 24))
def test_assign_slots_properties(ids, live, capacity):
    live = {t: s for t, s in live.items() if s < capacity}
    live = dict(zip(live, dict.fromkeys(live.values())))   # live tenants hold distinct slots
    policy = Policy(tenants=tuple(Tenant(i, f"t{i}") for i in ids))
    free = [s for s in range(1, capacity) if s not in set(live.values())]
    new = [i for i in ids if i not in live]
    if len(new) > len(free):
        with pytest.raises(SlotsExhausted):
            assign_slots(policy, live, capacity)
        return
    slots = assign_slots(policy, live, capacity)
    assert set(slots) == set(ids)
    assert all(slots[i] == live[i] for i in ids if i in live)            # tenants keep their slot
    assert [slots[i] for i in new] == free[:len(new)]                    # lowest slots held by no live tenant
    assert len(set(slots.values())) == len(slots)
    assert all(0 < s < capacity for s in slots.values())


# --- block tables ---------------------------------------------------------------

def test_block_tables_decode_to_the_merged_networks():
    doc = {
        "global": {"blocked_sources": ["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8", "192.0.2.1",
                                       "2001:db8::/33", "2001:db8:8000::/33", "2001:db8:1::5/64", "::/0"]},
        "tenants": [{"id": 1, "name": "a", "blocked_sources": ["198.51.100.0/25", "198.51.100.128/25",
                                                               "198.51.100.7/32", "2001:db8:1::/48",
                                                               "203.0.113.64/27"]},
                    {"id": 0x01020304, "name": "b", "blocked_sources": ["198.51.100.0/24", "0.0.0.0/0"]}],
    }
    compiled = compile_doc(doc)
    assert global_v4_networks(compiled.tables["ew_gblock_v4"]) == [net("10.0.0.0/7"), net("192.0.2.1/32")]
    assert v6_networks(compiled.tables["ew_gblock_v6"]) == {(None, net("::/0"))}
    assert tenant_v4_networks(compiled.tables["ew_tblock_v4"]) == {
        1: [net("198.51.100.0/24"), net("203.0.113.64/27")], 0x01020304: [net("0.0.0.0/0")]}
    assert v6_networks(compiled.tables["ew_tblock_v6"]) == {(1, net("2001:db8:1::/48"))}

    # The node encoding itself: 10.0.0.0/7 is 512 full /16 nodes; 192.0.2.1 is a /16 node
    # pointing at /24 number 2, whose node has host bit 1.
    gv4 = as_dict(compiled.tables["ew_gblock_v4"])

    def node(level, index, flags=0, a=0, b=0, table=gv4, tenant=None):
        key = struct.pack("=I", level << 24 | index) if tenant is None else struct.pack("=II", tenant, level << 24 | index)
        words = [(a >> (64 * i)) & (2**64 - 1) for i in range(4)] + [(b >> (64 * i)) & (2**64 - 1) for i in range(4)]
        assert table[key] == struct.pack("=II8Q", flags, 0, *words), (level, index)

    assert len(gv4) == 512 + 2
    for index16 in range(10 << 8, 12 << 8):
        node(16, index16, flags=abi.BLOCK_NODE_FULL)
    node(16, 192 << 8 | 0, b=1 << 2)
    node(24, (192 << 16) | 2, a=1 << 1)
    tv4 = as_dict(compiled.tables["ew_tblock_v4"])
    assert len(tv4) == 3 + 65536
    node(16, 198 << 8 | 51, a=1 << 100, table=tv4, tenant=1)
    node(16, 203 << 8 | 0, b=1 << 113, table=tv4, tenant=1)
    node(24, (203 << 16) | 113, a=(2**32 - 1) << 64, table=tv4, tenant=1)
    node(16, 0, flags=abi.BLOCK_NODE_FULL, table=tv4, tenant=0x01020304)
    # v6 keys: LPM length, then (tenant id big-endian, covered by the length), then the address.
    (key, _), = as_dict(compiled.tables["ew_tblock_v6"]).items()
    s = ffi.from_buffer("struct ew_tenant_lpm_v6_key *", key)
    assert s.prefixlen == 32 + 48 and bytes(s.tenant_id) == b"\0\0\0\1"
    assert bytes(s.addr) == ip("2001:db8:1::").packed
    (key, _), = as_dict(compiled.tables["ew_gblock_v6"]).items()
    assert key == struct.pack("=I", 0) + bytes(16)
    tenant_b = blocktables.v6_lpm_key(net("2001:db8::/32"), 0x01020304)
    assert tenant_b[4:8] == b"\x01\x02\x03\x04"


@pytest.mark.parametrize("v4,v6,flags", [
    ([], [], 0),
    (["10.0.0.0/8"], [], abi.CONFIG_GLOBAL_V4_BLOCKS),
    ([], ["2001:db8::/32"], abi.CONFIG_GLOBAL_V6_BLOCKS),
    (["10.0.0.0/8"], ["2001:db8::/32"], abi.CONFIG_GLOBAL_V4_BLOCKS | abi.CONFIG_GLOBAL_V6_BLOCKS),
])
@pytest.mark.parametrize("revision", [0, 1, 2**32 + 5, 2**64 - 1])
def test_config_flags_and_revision(v4, v6, flags, revision):
    # Tenant block lists must not set the global flags.
    compiled = compile_doc({"revision": revision, "global": {"blocked_sources": v4 + v6},
                            "tenants": [{"id": 1, "name": "a", "blocked_sources": ["192.0.2.0/24", "2001:db8::/64"]}]})
    assert config_of(compiled) == (revision, flags)
    assert compiled.revision == revision
    assert ffi.from_buffer("struct ew_config *", compiled.maps["ew_config"][pack_u32(0)]).reserved == 0


def at_most_a_slash_8(policy: Policy) -> Policy:
    """The policy with IPv4 prefixes shorter than /8 lengthened to /8. A /0 is 65536
    table nodes, slow to decode in Python; the short prefixes are covered by
    test_block_tables_decode_to_the_merged_networks and tests/test_blocktables.py."""
    def bound(networks):
        return tuple(ipaddress.ip_network((n.network_address, 8), strict=False) if n.version == 4 and n.prefixlen < 8
                     else n for n in networks)
    return dataclasses.replace(policy, blocked_sources=bound(policy.blocked_sources), tenants=tuple(
        dataclasses.replace(t, blocked_sources=bound(t.blocked_sources)) for t in policy.tenants))


@SETTINGS
@given(doc=valid_documents())
def test_compile_properties(doc):
    policy = at_most_a_slash_8(policy_from_document(doc))
    compiled = compile_policy(policy)
    assert compiled.tenant_ids == frozenset(t.id for t in policy.tenants)
    assert compiled.slots == {t.id: i for i, t in enumerate(policy.tenants, 1)}
    assert compiled.revision == policy.revision
    flags_expected = ((abi.CONFIG_GLOBAL_V4_BLOCKS if any(n.version == 4 for n in policy.blocked_sources) else 0)
                      | (abi.CONFIG_GLOBAL_V6_BLOCKS if any(n.version == 6 for n in policy.blocked_sources) else 0))
    assert config_of(compiled) == (policy.revision, flags_expected)

    gblocks = compile_prefixes_reference(policy.blocked_sources)
    assert global_v4_networks(compiled.tables["ew_gblock_v4"]) == v4_only(gblocks)
    assert v6_networks(compiled.tables["ew_gblock_v6"]) == {(None, n) for n in v6_only(gblocks)}

    ports, tv4, tv6 = set(), {}, set()
    for t in policy.tenants:
        assert tenant_entry(compiled, t.id) == (expected_flags(t), compiled.slots[t.id])
        ports |= {(t.id, PROTO[r.protocol], p) for r in t.blocked_ports for p in r.ports()}
        tblocks = compile_prefixes_reference(t.blocked_sources)
        if v4_only(tblocks):
            tv4[t.id] = v4_only(tblocks)
        tv6 |= {(t.id, n) for n in v6_only(tblocks)}
    assert len(compiled.maps["ew_tenants"]) == len(policy.tenants)
    any_port, port = expected_vips(policy, compiled.slots)
    assert any_port_vips(compiled) == any_port
    assert port_vips(compiled) == port
    assert sum(len(compiled.maps[n]) for n in ("ew_vip_ports_v4", "ew_vip_ports_v6")) == len(port)
    assert {decode_port_key(k) for k in compiled.maps["ew_port_blocks"]} == ports
    assert len(compiled.maps["ew_port_blocks"]) == len(ports)
    assert tenant_v4_networks(compiled.tables["ew_tblock_v4"]) == tv4
    assert v6_networks(compiled.tables["ew_tblock_v6"]) == tv6
    assert flood_entries(compiled) == expected_flood_entries(policy, compiled.slots)


def test_named_lists_are_united_into_the_tables():
    named = {scope: prefix_set_of(texts) for scope, texts in NAMED_LISTS.items()}
    compiled = compile_doc(NAMED_DOC, named_lists=named)
    plain = compile_doc(NAMED_DOC)

    assert global_v4_networks(compiled.tables["ew_gblock_v4"]) == [net("198.51.100.0/24"), net("203.0.113.77/32")]
    assert v6_networks(compiled.tables["ew_gblock_v6"]) == {(None, net("2001:db8:bad::/48"))}
    assert tenant_v4_networks(compiled.tables["ew_tblock_v4"]) == {1: [net("100.64.0.0/10")],
                                                                   2: [net("192.0.2.0/24")]}
    assert v6_networks(compiled.tables["ew_tblock_v6"]) == {(1, net("2001:db8:1::/64")), (2, net("2001:db8:2::/48"))}
    # A global v6 list from a named list alone turns the global v6 lookup on.
    assert config_of(plain) == (5, abi.CONFIG_GLOBAL_V4_BLOCKS)
    assert config_of(compiled) == (5, abi.CONFIG_GLOBAL_V4_BLOCKS | abi.CONFIG_GLOBAL_V6_BLOCKS)

    # Tenant 1 has source blocks now, from its named list: in ew_tenants and in every VIP value.
    # (Every tenant of NAMED_DOC has the default flood policy.)
    has, ports, flood = (abi.TENANT_HAS_SOURCE_BLOCKS, abi.TENANT_HAS_PORT_BLOCKS | abi.TENANT_PORT_RANGES,
                         abi.TENANT_HAS_FLOOD_POLICY)
    assert tenant_entry(plain, 1) == (ports | flood, 1)
    assert {t: tenant_entry(compiled, t) for t in (1, 2, 3)} == {1: (ports | has | flood, 1), 2: (has | flood, 2),
                                                                 3: (flood, 3)}
    assert any_port_vips(compiled) == {ip("203.0.113.1"): (1, 1, ports | has | flood),
                                       ip("203.0.113.2"): (2, 2, has | flood),
                                       ip("203.0.113.3"): (3, 3, flood),
                                       ip("2001:db8::1"): (0, 0, abi.VIP_HAS_PORT_VIPS)}
    assert port_vips(compiled) == {(ip("2001:db8::1"), socket.IPPROTO_TCP, 443): (1, 1, ports | has | flood)}
    assert flood_entries(compiled) == flood_entries(plain) == {s: Flood(SA | AMP) for s in (1, 2, 3)}

    # Exactly what the policy compiles to with the lists written into its own block lists.
    merged = compile_doc({
        **NAMED_DOC, "global": {"blocked_sources": NAMED_DOC["global"]["blocked_sources"] + NAMED_LISTS[None]},
        "tenants": [{**t, "blocked_sources": t.get("blocked_sources", []) + NAMED_LISTS[t["id"]]}
                    for t in NAMED_DOC["tenants"]]})
    assert compiled.maps == merged.maps and compiled.slots == merged.slots
    assert compiled.tables == merged.tables


def test_named_lists_of_a_tenant_not_in_the_policy_change_nothing():
    named = {scope: prefix_set_of(texts) for scope, texts in NAMED_LISTS.items()}
    absent = {99: prefix_set_of(["0.0.0.0/0", "::/0"]), 2**32 - 1: prefix_set_of(["10.0.0.0/8"])}
    for base in ({}, named):
        expected = compile_doc(NAMED_DOC, named_lists=base or None)
        compiled = compile_doc(NAMED_DOC, named_lists=base | absent)
        assert compiled.maps == expected.maps and compiled.slots == expected.slots
        assert set(compiled.tables) == set(BLOCK_TABLES)
        for name in BLOCK_TABLES:
            assert compiled.tables[name] == expected.tables[name], name
            assert as_dict(compiled.tables[name]) == as_dict(expected.tables[name]), name
        assert set(tenant_v4_networks(compiled.tables["ew_tblock_v4"])) <= {1, 2}
        assert all(t in (1, 2) for t, _ in v6_networks(compiled.tables["ew_tblock_v6"]))
    # No named lists at all, and empty ones, are the policy alone.
    plain = compile_doc(NAMED_DOC)
    empty = compile_doc(NAMED_DOC, named_lists={None: PrefixSet(), 1: PrefixSet(), 2: PrefixSet(), 3: PrefixSet()})
    assert empty.maps == plain.maps and empty.tables == plain.tables


_named_network = st.one_of(
    st.builds(lambda a, length: ipaddress.IPv4Network((a, length), strict=False), _v4_int, st.integers(8, 32)),
    st.builds(lambda a, length: ipaddress.IPv6Network((a, length), strict=False), _v6_int, st.integers(0, 128)))


@SETTINGS
@given(doc=valid_documents(), data=st.data())
def test_compile_with_named_lists_properties(doc, data):
    policy = at_most_a_slash_8(policy_from_document(doc))
    ids = [t.id for t in policy.tenants]
    scopes = data.draw(st.lists(st.one_of(st.none(), st.sampled_from(ids or [None]), st.integers(1, MAX_ID)),
                                unique=True, max_size=4))
    lists = {scope: data.draw(st.lists(_named_network, max_size=4)) for scope in scopes}
    compiled = compile_policy(policy, named_lists={scope: prefix_set_of(map(str, n)) for scope, n in lists.items()})

    def blocked(scope, own):
        return compile_prefixes_reference(list(own) + lists.get(scope, []))

    gblocks = blocked(None, policy.blocked_sources)
    assert global_v4_networks(compiled.tables["ew_gblock_v4"]) == v4_only(gblocks)
    assert v6_networks(compiled.tables["ew_gblock_v6"]) == {(None, n) for n in v6_only(gblocks)}
    assert config_of(compiled) == (policy.revision, (abi.CONFIG_GLOBAL_V4_BLOCKS if v4_only(gblocks) else 0)
                                   | (abi.CONFIG_GLOBAL_V6_BLOCKS if v6_only(gblocks) else 0))
    tv4, tv6 = {}, set()
    for t in policy.tenants:
        tblocks = blocked(t.id, t.blocked_sources)
        if v4_only(tblocks):
            tv4[t.id] = v4_only(tblocks)
        tv6 |= {(t.id, n) for n in v6_only(tblocks)}
        flags = expected_flags(t) | (abi.TENANT_HAS_SOURCE_BLOCKS if tblocks else 0)
        assert tenant_entry(compiled, t.id) == (flags, compiled.slots[t.id])
    assert tenant_v4_networks(compiled.tables["ew_tblock_v4"]) == tv4   # lists of absent tenants: nowhere
    assert v6_networks(compiled.tables["ew_tblock_v6"]) == tv6
    assert flood_entries(compiled) == expected_flood_entries(policy, compiled.slots)   # lists change no flood policy
    # The same as the policy with the lists written into its own block lists.
    merged = dataclasses.replace(
        policy, blocked_sources=policy.blocked_sources + tuple(lists.get(None, [])),
        tenants=tuple(dataclasses.replace(t, blocked_sources=t.blocked_sources + tuple(lists.get(t.id, [])))
                      for t in policy.tenants))
    expected = compile_policy(merged)
    assert compiled.maps == expected.maps and compiled.tables == expected.tables
