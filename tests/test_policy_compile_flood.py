"""Compiling flood policies into ew_flood_policies values: flags, allowed
amplification ports, bucket limits and per-source limits."""

import struct

import pytest

from agent.datapath import abi
from agent.policy import PolicyError
from agent.datapath.compile import flood_policy_value, pack_u32
from agent.policy.document import MAX_RATE
from agent.policy.model import FloodPolicy, Rate, SynAckPolicy

from policy_support import (
    AMP,
    AMPLIFICATION_PORTS,
    BUCKET_RATE_PAIRS,
    DROP_FRAGS,
    Flood,
    LIMITS,
    LIMIT_FRAGS,
    MAX_BITS,
    NO_LIMITS,
    SA,
    compile_doc,
    flood_entries,
    flood_of,
    tenant,
    tenant_entry,
    without_generation,
)


def raw_flood(f: Flood) -> bytes:
    """struct ew_flood_policy as bytes: two __u32, (rate, burst) __u64 pairs in
    bucket-kind order, the per-source pair, the two prefix lengths, zero padding."""
    return struct.pack("=II8Q2QBBHI", f.flags, f.allowed, *(n for limit in f.limits for n in limit),
                       *f.per_source, f.source_prefix_v4, f.source_prefix_v6, 0, 0)


def test_flood_policy_values_are_keyed_by_slot():
    doc = {"tenants": [
        {"id": 10, "name": "default"},
        {"id": 11, "name": "dns", "flood": {"allow_amplification_ports": [123, 53], "fragments": "drop"}},
        {"id": 12, "name": "limited", "flood": {
            "amplification": "pass", "allow_amplification_ports": list(AMPLIFICATION_PORTS),
            "fragments": "limit", "fragments_per_second": 100, "fragment_burst": 200,
            "packets_per_second": 1000, "packet_burst": 2000,
            "bits_per_second": 8_000_000, "bit_burst": 1_600_000, "syn_burst": 5,
            "source_packets_per_second": 20, "source_packet_burst": 40, "source_prefix_v4": 32}},
        {"id": 13, "name": "none", "flood": {"amplification": "pass", "allow_amplification_ports": [19],
                                             "source_prefix_v4": 16, "source_prefix_v6": 56}},
        {"id": 14, "name": "max", "flood": {"packets_per_second": MAX_RATE, "packet_burst": MAX_RATE,
                                            "bits_per_second": MAX_BITS, "bit_burst": MAX_BITS,
                                            "syns_per_second": MAX_RATE, "syn_burst": MAX_RATE,
                                            "fragments_per_second": MAX_RATE, "fragment_burst": MAX_RATE,
                                            "source_packets_per_second": MAX_RATE,
                                            "source_packet_burst": MAX_RATE,
                                            "source_prefix_v4": 8, "source_prefix_v6": 128}},
        {"id": 15, "name": "rounded", "flood": {"amplification": "pass",
                                                "bits_per_second": 1016, "bit_burst": 16}},
        {"id": 16, "name": "inert", "flood": {"amplification": "pass", "fragments_per_second": 9,
                                              "fragment_burst": 9}},   # a fragment rate without "limit"
        {"id": 17, "name": "per-source", "flood": {"amplification": "pass", "source_packet_burst": 3,
                                                   "source_prefix_v6": 16}},
    ]}
    compiled = compile_doc(doc, live={10: 7, 11: 3, 12: 9, 13: 1, 14: 5})
    assert compiled.slots == {10: 7, 11: 3, 12: 9, 13: 1, 14: 5, 15: 2, 16: 4, 17: 6}
    COARSE = abi.FLOOD_COARSE_CLOCK   # every burst here holds 10 ms of its rate
    expected = {
        7: Flood(SA | AMP),
        3: Flood(SA | AMP | DROP_FRAGS, 1 << 1 | 1 << 3),
        9: Flood(SA | LIMIT_FRAGS | LIMITS | COARSE, 0x7FFF, ((1000, 2000), (1_000_000, 200_000), (0, 5), (100, 200)),
                 (20, 40), 32, 64),
        5: Flood(SA | AMP | LIMITS | COARSE, 0, ((MAX_RATE, MAX_RATE),) * 4, (MAX_RATE, MAX_RATE), 8, 128),
        2: Flood(SA | LIMITS | COARSE, 0, ((0, 0), (127, 2), (0, 0), (0, 0))),   # bits // 8
        4: Flood(SA | LIMITS | COARSE, 0, ((0, 0), (0, 0), (0, 0), (9, 9))),
        6: Flood(SA | LIMITS | COARSE, 0, NO_LIMITS, (0, 3), 24, 16),   # a per-source limit alone is a limit
        1: Flood(SA, 1, NO_LIMITS, (0, 0), 16, 56),   # amplification passed, but SYN-ACKs dropped
    }
    assert flood_entries(compiled) == expected
    assert set(compiled.maps["ew_flood_policies"]) == {pack_u32(s) for s in expected}
    for slot, flood in expected.items():
        assert without_generation(compiled.maps["ew_flood_policies"][pack_u32(slot)]) == raw_flood(flood), slot
    for tenant_id, slot in compiled.slots.items():
        has = abi.TENANT_HAS_FLOOD_POLICY if slot in expected else 0
        assert tenant_entry(compiled, tenant_id) == (has, slot)


@pytest.mark.parametrize("port", AMPLIFICATION_PORTS)
def test_each_allowed_amplification_port_is_its_bit(port):
    compiled = compile_doc({"tenants": [tenant(flood={"allow_amplification_ports": [port]})]})
    bit = AMPLIFICATION_PORTS.index(port)
    assert abi.AMPLIFICATION_PORTS[port] == bit
    assert flood_entries(compiled) == {1: Flood(SA | AMP, 1 << bit)}


@pytest.mark.parametrize("fragments,flags", [("pass", 0), ("drop", DROP_FRAGS), ("limit", LIMIT_FRAGS | LIMITS | abi.FLOOD_COARSE_CLOCK)])
@pytest.mark.parametrize("amplification", ["drop", "pass"])
def test_flood_flags(fragments, flags, amplification):
    table = {"amplification": amplification, "fragments": fragments}
    if fragments == "limit":
        table |= {"fragments_per_second": 1, "fragment_burst": 1}
    flags |= AMP if amplification == "drop" else 0
    entries = flood_entries(compile_doc({"tenants": [tenant(flood=table)]}))
    if True:    # the default syn_ack = "drop" is always something to check
        limits = ((0, 0), (0, 0), (0, 0), (1, 1)) if fragments == "limit" else NO_LIMITS
        assert entries == {1: Flood(SA | flags, 0, limits)}


@pytest.mark.parametrize("kind,rate_key,burst_key", [(k, *pair) for k, pair in enumerate(BUCKET_RATE_PAIRS)])
def test_each_limit_lands_in_its_bucket_kind(kind, rate_key, burst_key):
    scale = 8 if rate_key.startswith("bit") else 1
    entries = flood_entries(compile_doc({"tenants": [tenant(flood={"amplification": "pass",
                                                                   rate_key: 3000 * scale,
                                                                   burst_key: 7 * scale})]}))
    limits = [(0, 0)] * 4
    limits[kind] = (3000, 7)
    assert entries == {1: Flood(SA | LIMITS, 0, tuple(limits))}   # a burst of 7 holds less than 10 ms of 3000/s


@pytest.mark.parametrize("v4,v6", [(None, None), (8, 16), (32, 128), (20, 48)])
def test_per_source_limit_and_prefixes(v4, v6):
    table = {"amplification": "pass", "source_packets_per_second": 3000, "source_packet_burst": 7}
    table |= {} if v4 is None else {"source_prefix_v4": v4, "source_prefix_v6": v6}
    entries = flood_entries(compile_doc({"tenants": [tenant(flood=table)]}))
    assert entries == {1: Flood(SA | LIMITS, 0, NO_LIMITS, (3000, 7), v4 or 24, v6 or 64)}


def test_flood_policy_value():
    off = dict(syn_ack=SynAckPolicy.PASS)
    assert flood_of(flood_policy_value(FloodPolicy())) == Flood(SA | AMP, 0, NO_LIMITS, (0, 0), 24, 64)
    assert flood_policy_value(FloodPolicy()) == raw_flood(Flood(SA | AMP))
    assert flood_of(flood_policy_value(FloodPolicy(False))) == Flood(SA)    # SYN-ACKs are still checked
    assert flood_policy_value(FloodPolicy(False, **off)) is None
    assert flood_policy_value(FloodPolicy(False, (53, 123), **off)) is None   # allowed ports alone check nothing
    assert flood_policy_value(FloodPolicy(False, bits=Rate(7, 7), **off)) is None   # under a byte: no byte limit
    assert flood_policy_value(FloodPolicy(False, source_prefix_v4=8, **off)) is None   # prefixes without a limit
    assert flood_of(flood_policy_value(FloodPolicy(False, (11211,), syns=Rate(0, 1), **off))) == Flood(
        LIMITS | abi.FLOOD_COARSE_CLOCK, 1 << 13, ((0, 0), (0, 0), (0, 1), (0, 0)))
    assert flood_of(flood_policy_value(FloodPolicy(per_source=Rate(1, 2), source_prefix_v6=100))) == Flood(
        SA | AMP | LIMITS | abi.FLOOD_COARSE_CLOCK, 0, NO_LIMITS, (1, 2), 24, 100)
    assert flood_of(flood_policy_value(FloodPolicy(False, syn_cookies=True, syn_ack=SynAckPolicy.TRACK))) == Flood(
        abi.FLOOD_SYN_COOKIES | abi.FLOOD_SYN_ACK_TRACK)


@pytest.mark.parametrize("bits_per_second,bit_burst", [(800, 4), (8, 7), (10**6, 1), (MAX_BITS, 7)])
def test_a_bit_rate_never_compiles_to_a_byte_bucket_that_holds_nothing(bits_per_second, bit_burst):
    """Regression: the datapath counts bytes (limits[EW_BUCKET_BYTES] = bits // 8), so
    bits_per_second = 800 with bit_burst = 4 would compile to a byte burst of 0, a
    bucket that holds nothing (bpf/flood.h bucket_take: capacity 0 < cost) and drops
    every packet as drop_rate_limit. The document must be refused, or the compiled
    byte burst must be at least 1."""
    doc = {"tenants": [tenant(flood={"bits_per_second": bits_per_second, "bit_burst": bit_burst})]}
    try:
        compiled = compile_doc(doc)
    except PolicyError as err:
        assert all(e.startswith("tenants[0].flood: ") for e in err.errors), err.errors
        return
    flood, = flood_entries(compiled).values()
    rate, burst = flood.limits[abi.BucketKind.bytes]
    assert not (rate and not burst), f"bits {bits_per_second}/{bit_burst} compiled to bytes {rate}/{burst}"
