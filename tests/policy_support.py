"""Helpers shared by the policy tests (tests/test_policy_*.py): documents and
their errors, the decoders of compiled map entries and block tables, and the
flood-policy constants as the ABI header states them."""

import ipaddress
import socket
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, settings, strategies as st

from agent._libbpf import ffi
from agent._prefixes import EntryTable, PrefixSet
from agent.datapath import abi, blocktables
from agent.policy import Policy, PolicyError, policy_from_document
from agent.datapath.compile import compile_policy, pack_u32
from agent.policy.document import MAX_RATE
from agent.policy.model import FloodPolicy, FragmentPolicy


REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "configs" / "policy.example.toml"
MAX_ID = 2**32 - 1
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ip = ipaddress.ip_address
net = ipaddress.ip_network


def errors_of(doc) -> list[str]:
    with pytest.raises(PolicyError) as info:
        policy_from_document(doc, "test")
    assert info.value.source == "test"
    assert info.value.errors, "a PolicyError must list at least one error"
    return info.value.errors


def tenant(**fields) -> dict:
    return {"id": 1, "name": "t", **fields}


def one_tenant_errors(**fields) -> list[str]:
    return errors_of({"tenants": [tenant(**fields)]})


def u32(value: bytes) -> int:
    assert len(value) == 4
    return ffi.from_buffer("__u32 *", value)[0]


# --- [tenants.flood] ---------------------------------------------------------------

# The amplification source ports, in the order of enum ew_amplification_port
# (the value is the port's bit in ew_flood_policy.amplification_allowed).
AMPLIFICATION_PORTS = (19, 53, 111, 123, 137, 161, 389, 500, 1900, 3283, 3702, 5353, 10001, 11211, 37810)
# The tenant-wide limits, in enum ew_bucket_kind order; then the per-source one.
BUCKET_RATE_PAIRS = (("packets_per_second", "packet_burst"), ("bits_per_second", "bit_burst"),
                     ("syns_per_second", "syn_burst"), ("fragments_per_second", "fragment_burst"))
SOURCE_RATE_PAIR = ("source_packets_per_second", "source_packet_burst")
RATE_PAIRS = (*BUCKET_RATE_PAIRS, SOURCE_RATE_PAIR)
SOURCE_PREFIXES = {"source_prefix_v4": (8, 32, 24), "source_prefix_v6": (16, 128, 64)}   # low, high, default
MAX_BITS = 8 * 10**10


# Strategy: valid documents, written in any of the accepted spellings.

_v4_int = st.integers(0, 2**32 - 1)
_v6_int = st.one_of(st.integers(0, 2**128 - 1), st.integers(0, 0xFFFF).map(lambda x: (0x20010DB8 << 96) | x))
_address = st.one_of(_v4_int.map(ipaddress.IPv4Address), _v6_int.map(ipaddress.IPv6Address))


@st.composite
def _cidr_text(draw):
    address = draw(_address)
    length = draw(st.integers(0, address.max_prefixlen))
    form = draw(st.sampled_from(["cidr", "cidr", "bare", "padded"]))
    if form == "bare":
        return str(address)  # a host route
    text = f"{address}/{length}"
    return f"  {text} " if form == "padded" else text


@st.composite
def _port_rule_text(draw):
    protocol = draw(st.sampled_from(["tcp", "udp", "TCP", "Udp"]))
    first = draw(st.integers(1, 65535))
    span = draw(st.integers(0, min(40, 65535 - first)))
    if span == 0 and draw(st.booleans()):
        return f"{protocol}/{first}"
    return f"{protocol}/{first}-{first + span}"


_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda s: s.strip() != "")


def _amount(limit: int, unit: int = 1):
    """A positive amount up to `limit`, in multiples of `unit` (bits come in whole bytes)."""
    return st.one_of(st.integers(1, 1000), st.integers(1, limit // unit), st.just(limit // unit)).map(
        lambda n: n * unit)


@st.composite
def _flood_table(draw):
    """A valid [tenants.flood] table: any subset of the keys, ports in any order with
    repeats, each limit absent, spelt out as 0/0, a hard cap, or a rate and burst."""
    table = {}
    if draw(st.booleans()):
        table["amplification"] = draw(st.sampled_from(["drop", "pass"]))
    if draw(st.booleans()):
        table["allow_amplification_ports"] = draw(st.lists(st.sampled_from(AMPLIFICATION_PORTS), max_size=5))
    for rate_key, burst_key in RATE_PAIRS:
        limit = MAX_BITS if rate_key.startswith("bit") else MAX_RATE
        unit = 8 if rate_key.startswith("bit") else 1
        form = draw(st.sampled_from(["absent", "absent", "zero", "cap", "rate"]))
        if form == "zero":
            table[rate_key] = table[burst_key] = 0
        elif form == "cap":
            table[burst_key] = draw(_amount(limit, unit))
            if draw(st.booleans()):
                table[rate_key] = 0
        elif form == "rate":
            table[rate_key], table[burst_key] = draw(_amount(limit, unit)), draw(_amount(limit, unit))
    for key, (low, high, _) in SOURCE_PREFIXES.items():
        if draw(st.booleans()):
            table[key] = draw(st.integers(low, high))
    fragments = draw(st.sampled_from([None, "pass", "drop", "limit"]))
    if fragments == "limit" and not (table.get("fragments_per_second") or table.get("fragment_burst")):
        table["fragment_burst"] = draw(_amount(MAX_RATE))
    if fragments is not None:
        table["fragments"] = fragments
    return table


@st.composite
def valid_documents(draw):
    n = draw(st.integers(0, 5))
    ids = draw(st.lists(st.one_of(st.integers(1, 40), st.integers(1, MAX_ID), st.just(MAX_ID)),
                        min_size=n, max_size=n, unique=True))
    names = draw(st.lists(_names, min_size=n, max_size=n, unique_by=str.strip))
    used_vips = set()
    tenants = []
    for tenant_id, name in zip(ids, names):
        t = {"id": tenant_id, "name": name}
        if draw(st.booleans()):
            t["state"] = draw(st.sampled_from(["active", "suspended"]))
        vips = []
        for _ in range(draw(st.integers(0, 4))):
            address = draw(_address)
            if draw(st.booleans()):
                key = (address, None, None)
                vip = str(address) if draw(st.booleans()) else {"address": str(address)}
            else:
                protocol = draw(st.sampled_from(["tcp", "udp", "UDP"]))
                port = draw(st.integers(1, 65535))
                key = (address, protocol.lower(), port)
                vip = {"address": str(address), "protocol": protocol,
                       "port": str(port) if draw(st.booleans()) else port}
            if key not in used_vips:
                used_vips.add(key)
                vips.append(vip)
        if vips or draw(st.booleans()):
            t["vips"] = vips
        ports = draw(st.lists(_port_rule_text(), max_size=3))
        if ports or draw(st.booleans()):
            t["blocked_ports"] = ports
        sources = draw(st.lists(_cidr_text(), max_size=4))
        if sources or draw(st.booleans()):
            t["blocked_sources"] = sources
        if draw(st.booleans()):
            t["flood"] = draw(_flood_table())
        tenants.append(t)
    doc = {}
    if draw(st.booleans()):
        doc["revision"] = draw(st.one_of(st.integers(0, 1000), st.integers(0, 2**64 - 1)))
    if draw(st.booleans()):
        doc["global"] = {"blocked_sources": draw(st.lists(_cidr_text(), max_size=6))}
    if tenants or draw(st.booleans()):
        doc["tenants"] = tenants
    return doc


def vip_of(value: bytes) -> tuple[int, int, int]:
    """(tenant id, counter slot, flags) of a struct ew_vip."""
    assert len(value) == ffi.sizeof("struct ew_vip")
    v = ffi.from_buffer("struct ew_vip *", value)
    assert v.reserved == 0
    return v.tenant_id, v.slot, v.flags


def any_port_vips(compiled) -> dict:
    """address -> (tenant, slot, flags) from ew_vips_v4 (4 address bytes in network
    order) and ew_vips_v6 (16 bytes)."""
    result = {}
    for name, length, cls in (("ew_vips_v4", 4, ipaddress.IPv4Address), ("ew_vips_v6", 16, ipaddress.IPv6Address)):
        for key, value in compiled.maps[name].items():
            assert len(key) == length, name
            result[cls(key)] = vip_of(value)
    return result


def decode_port_vip_key(name: str, key: bytes):
    family = name[-2:]
    s = ffi.from_buffer(f"struct ew_vip_port_{family}_key *", key)
    assert len(key) == ffi.sizeof(f"struct ew_vip_port_{family}_key") and s.pad == 0
    return ipaddress.ip_address(bytes(s.addr)), s.proto, socket.ntohs(s.port)


def port_vips(compiled) -> dict:
    """(address, protocol number, port) -> (tenant, slot, flags)."""
    return {decode_port_vip_key(name, k): vip_of(v)
            for name in ("ew_vip_ports_v4", "ew_vip_ports_v6") for k, v in compiled.maps[name].items()}


NO_LIMITS = ((0, 0),) * 4


class Flood(NamedTuple):
    """A struct ew_flood_policy, field by field; limits: (rate, burst) per enum ew_bucket_kind."""

    flags: int
    allowed: int = 0
    limits: tuple = NO_LIMITS
    per_source: tuple = (0, 0)
    source_prefix_v4: int = 24
    source_prefix_v6: int = 64


def expected_flood(flood: FloodPolicy) -> Flood | None:
    """The struct ew_flood_policy a tenant's flood policy compiles to, as the header
    describes it: bits become bytes (// 8); a limit of 0 and 0 is none. None when there
    is nothing to check: no entry, and no TENANT_HAS_FLOOD_POLICY flag."""
    limits = ((flood.packets.per_second, flood.packets.burst),          # EW_BUCKET_PACKETS
              (flood.bits.per_second // 8, flood.bits.burst // 8),      # EW_BUCKET_BYTES
              (flood.syns.per_second, flood.syns.burst),                # EW_BUCKET_SYN
              (flood.fragment_rate.per_second, flood.fragment_rate.burst))   # EW_BUCKET_FRAGMENTS
    per_source = (flood.per_source.per_second, flood.per_source.burst)
    flags = ((abi.FLOOD_DROP_AMPLIFICATION if flood.drop_amplification else 0)
             | (abi.FLOOD_DROP_FRAGMENTS if flood.fragments is FragmentPolicy.DROP else 0)
             | (abi.FLOOD_LIMIT_FRAGMENTS if flood.fragments is FragmentPolicy.LIMIT else 0)
             | (abi.FLOOD_HAS_LIMITS if limits != NO_LIMITS or per_source != (0, 0) else 0)
             | (abi.FLOOD_SYN_COOKIES if flood.syn_cookies else 0)
             | {"drop": abi.FLOOD_SYN_ACK_DROP, "track": abi.FLOOD_SYN_ACK_TRACK, "pass": 0}[flood.syn_ack.value])
    # The coarse clock where every limit's burst holds a coarse tick of its rate.
    if flags & abi.FLOOD_HAS_LIMITS and all(burst * 10**9 >= rate * abi.COARSE_CLOCK_NS
                                            for rate, burst in (*limits, per_source)):
        flags |= abi.FLOOD_COARSE_CLOCK
    if not flags:
        return None
    allowed = 0
    for port in flood.allow_amplification_ports:
        allowed |= 1 << AMPLIFICATION_PORTS.index(port)
    return Flood(flags, allowed, limits, per_source, flood.source_prefix_v4, flood.source_prefix_v6)


FLOOD_POLICY_LAYOUT = [("flags", 0), ("amplification_allowed", 4), ("limits", 8), ("per_source", 72),
                       ("source_prefix_v4", 88), ("source_prefix_v6", 89), ("pad", 90), ("generation", 92)]


def flood_of(value: bytes) -> Flood:
    """A struct ew_flood_policy decoded, but for its generation (see
    generation_of); its padding must be zero."""
    assert len(value) == ffi.sizeof("struct ew_flood_policy") == 96
    assert [(name, field.offset) for name, field in ffi.typeof("struct ew_flood_policy").fields] == FLOOD_POLICY_LAYOUT
    f = ffi.from_buffer("struct ew_flood_policy *", value)
    assert f.pad == 0
    return Flood(f.flags, f.amplification_allowed, tuple((f.limits[k].rate, f.limits[k].burst) for k in range(4)),
                 (f.per_source.rate, f.per_source.burst), f.source_prefix_v4, f.source_prefix_v6)


def generation_of(value: bytes) -> int:
    return ffi.from_buffer("struct ew_flood_policy *", value).generation


def generations_of(maps) -> dict[int, int]:
    """counter slot -> generation of the live flood policy there."""
    return {u32(k): generation_of(v) for k, v in maps["ew_flood_policies"].items().items() if any(v)}


def without_generation(value: bytes) -> bytes:
    return value[:92] + bytes(4)


def flood_entries(compiled) -> dict[int, Flood]:
    """counter slot -> decoded ew_flood_policies entry."""
    return {u32(k): flood_of(v) for k, v in compiled.maps["ew_flood_policies"].items()}


def expected_flood_entries(policy: Policy, slots: dict[int, int]) -> dict[int, Flood]:
    return {slots[t.id]: expected_flood(t.flood) for t in policy.tenants if expected_flood(t.flood) is not None}


def tenant_entry(compiled, tenant_id: int) -> tuple[int, int]:
    """(flags, slot) of a tenant in ew_tenants."""
    t = ffi.from_buffer("struct ew_tenant *", compiled.maps["ew_tenants"][pack_u32(tenant_id)])
    return t.flags, t.slot


def config_of(compiled):
    (key, value), = compiled.maps["ew_config"].items()
    assert key == pack_u32(0)
    cfg = ffi.from_buffer("struct ew_config *", value)
    return cfg.policy_revision, cfg.flags


def compile_doc(doc, live=None, capacity=abi.MAX_TENANTS, named_lists=None):
    return compile_policy(policy_from_document(doc), live, capacity, named_lists)


# Block tables, decoded through the header's key layouts and blocktables' inverse.

def as_dict(table) -> dict[bytes, bytes]:
    """The entries of a compiled block table, an EntryTable: packed and sorted by key,
    each key once."""
    assert isinstance(table, EntryTable)
    items = table.items()
    keys = [k for k, _ in items]
    assert keys == sorted(set(keys)) and len(items) == len(table)
    assert table.keys_packed() == b"".join(keys) and table.values_packed() == b"".join(v for _, v in items)
    return dict(items)


def tenant_v4_networks(table: EntryTable) -> dict[int, list]:
    nodes: dict[int, dict[int, bytes]] = {}
    for key, value in as_dict(table).items():
        k = ffi.from_buffer("struct ew_tenant_block_key *", key)
        nodes.setdefault(k.tenant_id, {})[k.node] = value
    return {tenant_id: blocktables.v4_networks_from_nodes(n) for tenant_id, n in nodes.items()}


# --- flood policies ----------------------------------------------------------------

AMP, DROP_FRAGS, LIMIT_FRAGS, LIMITS = (abi.FLOOD_DROP_AMPLIFICATION, abi.FLOOD_DROP_FRAGMENTS,
                                        abi.FLOOD_LIMIT_FRAGMENTS, abi.FLOOD_HAS_LIMITS)
SA = abi.FLOOD_SYN_ACK_DROP     # the default: every SYN-ACK to a VIP is a reflection


# --- named block lists ------------------------------------------------------------

def prefix_set_of(texts) -> PrefixSet:
    networks = [ipaddress.ip_network(t, strict=False) for t in texts]
    return PrefixSet.from_list([(n.network_address.packed, n.prefixlen) for n in networks])


NAMED_DOC = {
    "revision": 5,
    "global": {"blocked_sources": ["198.51.100.0/25"]},
    "tenants": [
        {"id": 1, "name": "plain", "blocked_ports": ["tcp/25"],           # no list of its own in the policy
         "vips": ["203.0.113.1", {"address": "2001:db8::1", "protocol": "tcp", "port": 443}]},
        {"id": 2, "name": "listed", "vips": ["203.0.113.2"],
         "blocked_sources": ["192.0.2.0/25", "2001:db8:2::/48"]},
        {"id": 3, "name": "empty", "vips": ["203.0.113.3"]},
    ],
}
NAMED_LISTS = {
    None: ["198.51.100.128/25", "203.0.113.77", "2001:db8:bad::/48"],   # the v4 /25s merge into a /24
    1: ["100.64.0.0/10", "100.64.1.0/24", "2001:db8:1::/64"],
    2: ["192.0.2.128/25", "192.0.2.7", "2001:db8:2:1::/64"],            # both inside or beside the policy's
    3: [],                                                               # an empty list blocks nothing
}
