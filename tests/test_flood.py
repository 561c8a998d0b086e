"""Flood defences: the token-bucket arithmetic of bpf/flood.h against the
reference TokenBucket (through a harness program that is handed the clock),
and every flood verdict reason of the real program against the reference."""

import ipaddress
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent._libbpf import ffi, lib
from agent.datapath.abi import AMPLIFICATION_PORTS, VerdictReason
from agent.datapath.private import PrivateDatapath
from agent.datapath.bpf_object import BpfObject
from agent.datapath.syscalls import test_run
from agent.policy import policy_from_document
from agent.reference import ReferenceBuckets, TokenBucket
from frames import ipv4_fragment_frame, tcp_ipv4_frame, udp_ipv4_frame
from native.bpf_build import compile_bpf
from oracle import Oracle, observe

REPO = Path(__file__).resolve().parents[1]
VIP, CLIENT = "203.0.113.10", "198.51.100.9"


# --- the bucket arithmetic ----------------------------------------------------

@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    obj = compile_bpf(REPO / "tests" / "bpf" / "bucket_harness.bpf.c",
                      tmp_path_factory.mktemp("harness") / "bucket_harness.bpf.o")
    with BpfObject(obj) as harness_object:
        yield harness_object.program_fd("bucket_harness"), harness_object.map("ew_buckets", "__u32", "struct ew_bucket")


def take(harness, now, rate, burst, units, generation=1):
    prog_fd, buckets = harness
    action = test_run(prog_fd, bytes(14) + struct.pack("=5Q", now, rate, burst, units, generation)).retval
    assert action in (lib.XDP_PASS, lib.XDP_DROP)
    state = ffi.from_buffer("struct ew_bucket *", buckets.lookup(b"\0\0\0\0"))
    return action == lib.XDP_PASS, state.tokens, state.last_ns


U64 = 2**64 - 1
steps = st.tuples(
    st.sampled_from([0, 1, 999, 10**6, 10**9 - 1, 10**9, 10**9 + 1, 3 * 10**9, 2**62,
                     -1, -10**9, -2**40]),                         # clock step, negative = a jump back
    st.sampled_from([0, 1, 3, 1000, 10**6, 10**10]),               # rate
    st.sampled_from([0, 1, 2, 5, 1500, 10**10]),                   # burst
    st.sampled_from([1, 2, 1500, 10**10]),                         # units
)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, min_size=1, max_size=25), st.integers(1, 2**50))
def test_bucket_arithmetic_matches_reference(harness, sequence, start):
    harness[1].update(b"\0\0\0\0", bytes(harness[1].value_size))
    reference = TokenBucket()
    now = start
    for step, rate, burst, units in sequence:
        now = min(max(now + step, 1), U64)
        allowed, tokens, last_ns = take(harness, now, rate, burst, units)
        assert allowed == reference.take(rate, burst, now, units), (now, rate, burst, units)
        assert (tokens, last_ns) == (reference.tokens, reference.last_ns)


def test_bucket_boundaries(harness):
    harness[1].update(b"\0\0\0\0", bytes(harness[1].value_size))
    t0 = 10**12
    assert [take(harness, t0, 1, 3, 1)[0] for _ in range(4)] == [True, True, True, False]   # starts full
    assert take(harness, t0 + 10**9 - 1, 1, 3, 1)[0] is False      # one ns short of a token
    assert take(harness, t0 + 10**9, 1, 3, 1)[0] is True           # exactly one token
    assert take(harness, t0 - 5 * 10**9, 1, 3, 1)[0] is False      # clock went back: no refill
    assert take(harness, t0 + 10**9 + 10**30 % U64, 1, 3, 1)[0] is True   # a huge jump fills, no overflow
    assert take(harness, 2**63, 10**10, 10**10, 10**10)[0] is True  # largest allowed rate and burst


def test_a_new_policy_generation_finds_its_buckets_full(harness):
    """The generation travels with the policy, so a packet judged by the new
    policy never spends tokens the old one left behind (nor the reverse)."""
    harness[1].update(b"\0\0\0\0", bytes(harness[1].value_size))
    t0 = 10**12
    assert [take(harness, t0, 1, 2, 1, generation=7)[0] for _ in range(3)] == [True, True, False]
    assert [take(harness, t0, 1, 2, 1, generation=8)[0] for _ in range(3)] == [True, True, False]
    state = ffi.from_buffer("struct ew_bucket *", harness[1].lookup(b"\0\0\0\0"))
    assert (state.generation, state.last_ns) == (8, t0)
    assert take(harness, t0, 1, 2, 1, generation=8)[0] is False     # same generation: no reset


# --- flood verdicts in the real program -----------------------------------------

def flood_policy(**flood):
    return policy_from_document({"revision": 1, "tenants": [
        {"id": 1, "name": "shop", "vips": [VIP], "flood": flood}]}, "tests/test_flood.py")


def oracle_for(policy, datapath=None):
    buckets = ReferenceBuckets()
    buckets.apply(policy)
    return Oracle(datapath or PrivateDatapath(policy), policy, buckets)


@pytest.mark.parametrize("port", sorted(AMPLIFICATION_PORTS))
def test_amplification_source_ports_are_dropped_by_default(port):
    oracle = oracle_for(flood_policy())
    try:
        verdict = oracle.check(udp_ipv4_frame(CLIENT, VIP, port, 40000, b"x" * 64))
        assert verdict.reason is VerdictReason.drop_amplification
        assert oracle.check(udp_ipv4_frame(CLIENT, VIP, 40001, 53)).reason is VerdictReason.pass_allowed
        assert oracle.check(tcp_ipv4_frame(CLIENT, VIP, port, 443, "PA")).reason is VerdictReason.pass_allowed
        # the same reflection over TCP is the SYN-ACK policy's (default: drop)
        assert oracle.check(tcp_ipv4_frame(CLIENT, VIP, port, 443, "SA")).reason is VerdictReason.drop_syn_ack
        # not a tenant's VIP: not ours to police
        assert oracle.check(udp_ipv4_frame(CLIENT, "203.0.113.99", port, 40000)).reason is VerdictReason.pass_allowed
    finally:
        oracle.datapath.close()


def test_allowed_amplification_ports_pass_and_amplification_can_be_off():
    oracle = oracle_for(flood_policy(allow_amplification_ports=[53, 123]))
    try:
        assert oracle.check(udp_ipv4_frame(CLIENT, VIP, 53, 40000)).reason is VerdictReason.pass_allowed
        assert oracle.check(udp_ipv4_frame(CLIENT, VIP, 123, 40000)).reason is VerdictReason.pass_allowed
        assert oracle.check(udp_ipv4_frame(CLIENT, VIP, 161, 40000)).reason is VerdictReason.drop_amplification
        off = flood_policy(amplification="pass")
        oracle.datapath.apply(off)
        oracle.policy = off
        assert oracle.check(udp_ipv4_frame(CLIENT, VIP, 161, 40000)).reason is VerdictReason.pass_allowed
    finally:
        oracle.datapath.close()


def test_fragments_dropped_or_passed():
    oracle = oracle_for(flood_policy(fragments="drop"))
    try:
        nonfirst = ipv4_fragment_frame(CLIENT, VIP, 17, bytes(64), frag_offset=8, more_fragments=False)
        first = ipv4_fragment_frame(CLIENT, VIP, 17, struct.pack("!HHHH", 40000, 80, 72, 0) + bytes(64),
                                    frag_offset=0, more_fragments=True)
        assert oracle.check(nonfirst).reason is VerdictReason.drop_fragment
        assert oracle.check(first).reason is VerdictReason.pass_allowed
    finally:
        oracle.datapath.close()


@pytest.mark.parametrize("flood, frame, allowed, reason", [
    # A burst with no rate is a hard cap: exactly `burst` pass, on any clock.
    ({"packets_per_second": 0, "packet_burst": 5}, tcp_ipv4_frame(CLIENT, VIP, 1, 80, "A"), 5,
     VerdictReason.drop_rate_limit),
    ({"syns_per_second": 0, "syn_burst": 3}, tcp_ipv4_frame(CLIENT, VIP, 1, 80, "S"), 3,
     VerdictReason.drop_syn_rate),
    ({"bits_per_second": 0, "bit_burst": 8 * 600}, udp_ipv4_frame(CLIENT, VIP, 5000, 80, bytes(58)), 6,
     VerdictReason.drop_rate_limit),   # 100-byte frames, 600 bytes of burst
    ({"fragments": "limit", "fragments_per_second": 0, "fragment_burst": 2},
     ipv4_fragment_frame(CLIENT, VIP, 17, bytes(64), frag_offset=8, more_fragments=False), 2,
     VerdictReason.drop_fragment),
])
def test_burst_caps_are_exact(flood, frame, allowed, reason):
    """The kernel's clock runs, but with rate 0 nothing refills: the program
    and the reference must agree packet by packet."""
    oracle = oracle_for(flood_policy(**flood))
    try:
        reasons = [oracle.check(frame).reason for _ in range(allowed + 4)]
        assert reasons == [VerdictReason.pass_allowed] * allowed + [reason] * 4
    finally:
        oracle.datapath.close()


def test_syn_limit_does_not_touch_other_packets():
    oracle = oracle_for(flood_policy(syns_per_second=0, syn_burst=1))
    try:
        syn, ack = tcp_ipv4_frame(CLIENT, VIP, 1, 80, "S"), tcp_ipv4_frame(CLIENT, VIP, 1, 80, "A")
        got = [oracle.check(f).reason for f in (syn, syn, ack, syn, ack)]
        assert got == [VerdictReason.pass_allowed, VerdictReason.drop_syn_rate, VerdictReason.pass_allowed,
                       VerdictReason.drop_syn_rate, VerdictReason.pass_allowed]
    finally:
        oracle.datapath.close()


def test_limits_change_at_run_time_without_reload():
    """New limits reach the loaded program through its maps (one program,
    no reload, between the applies)."""
    policy = flood_policy(packets_per_second=0, packet_burst=2)
    oracle = oracle_for(policy)
    try:
        frame = tcp_ipv4_frame(CLIENT, VIP, 1, 80, "A")
        assert [oracle.check(frame).reason for _ in range(3)][-1] is VerdictReason.drop_rate_limit
        raised = flood_policy(packets_per_second=0, packet_burst=4)
        oracle.datapath.apply(raised)          # a new flood policy: fresh buckets
        oracle.policy = raised
        oracle.buckets.apply(raised)
        assert [oracle.check(frame).reason for _ in range(5)] == [VerdictReason.pass_allowed] * 4 + \
            [VerdictReason.drop_rate_limit]
        unchanged = policy_from_document({"revision": 2, "tenants": [
            {"id": 1, "name": "shop", "vips": [VIP, "203.0.113.11"],
             "flood": {"packets_per_second": 0, "packet_burst": 4}}]})
        oracle.datapath.apply(unchanged)       # same flood policy: buckets keep their state
        oracle.policy = unchanged
        oracle.buckets.apply(unchanged)
        assert oracle.check(frame).reason is VerdictReason.drop_rate_limit
    finally:
        oracle.datapath.close()


def test_per_source_buckets_are_fresh_under_a_new_policy_and_kept_under_the_same():
    """Per-source buckets carry the policy's generation (IPv4: in the array's
    way, IPv6: in the LRU key): a new policy finds none of the old ones, with
    no write by the agent."""
    def policy(burst, revision=1):
        return policy_from_document({"revision": revision, "tenants": [{"id": 1, "name": "shop", "vips": [VIP],
            "flood": {"source_packets_per_second": 0, "source_packet_burst": burst}}]})
    oracle = oracle_for(policy(2))
    try:
        frame = tcp_ipv4_frame("198.51.100.1", VIP, 1, 80, "A")
        assert [oracle.check(frame).reason for _ in range(3)][-1] is VerdictReason.drop_source_rate
        for doc, expected in ((policy(3, 2), [VerdictReason.pass_allowed] * 3 + [VerdictReason.drop_source_rate]),
                              (policy(3, 3), [VerdictReason.drop_source_rate])):   # same flood: state kept
            oracle.datapath.apply(doc)
            oracle.policy = doc
            oracle.buckets.apply(doc)
            assert [oracle.check(frame).reason for _ in expected] == expected
    finally:
        oracle.datapath.close()


def test_high_rate_passes_everything():
    oracle = oracle_for(flood_policy(packets_per_second=10**10, packet_burst=10**10,
                                     bits_per_second=8 * 10**10, bit_burst=8 * 10**10))
    try:
        assert all(oracle.check(tcp_ipv4_frame(CLIENT, VIP, 1, 80, "A")).reason is VerdictReason.pass_allowed
                   for _ in range(50))
    finally:
        oracle.datapath.close()


def test_per_source_limit_groups_sources_by_prefix():
    """Sources in one /24 share a bucket; another /24 has its own; v6 by /64."""
    policy = policy_from_document({"revision": 1, "tenants": [{"id": 1, "name": "shop", "vips": [VIP, "2001:db8::10"],
        "flood": {"source_packets_per_second": 0, "source_packet_burst": 3}}]})
    oracle = oracle_for(policy)
    try:
        same_prefix = [tcp_ipv4_frame(f"198.51.100.{h}", VIP, 1, 80, "A") for h in (1, 2, 3, 4)]
        assert [oracle.check(f).reason for f in same_prefix] == [VerdictReason.pass_allowed] * 3 + \
            [VerdictReason.drop_source_rate]
        assert oracle.check(tcp_ipv4_frame("192.0.2.7", VIP, 1, 80, "A")).reason is VerdictReason.pass_allowed
        from frames import tcp_ipv6_frame
        v6 = [tcp_ipv6_frame(f"2001:db8:5::{h}", "2001:db8::10", 1, 80, "A") for h in (1, 2, 3, 4)]
        assert [oracle.check(f).reason for f in v6][-1] is VerdictReason.drop_source_rate
        assert oracle.check(tcp_ipv6_frame("2001:db8:6::1", "2001:db8::10", 1, 80, "A")).reason is \
            VerdictReason.pass_allowed
    finally:
        oracle.datapath.close()


def test_per_source_prefix_lengths_are_configurable():
    policy = policy_from_document({"revision": 1, "tenants": [{"id": 1, "name": "shop", "vips": [VIP],
        "flood": {"source_packets_per_second": 0, "source_packet_burst": 1, "source_prefix_v4": 32}}]})
    oracle = oracle_for(policy)
    try:
        assert [oracle.check(tcp_ipv4_frame(f"198.51.100.{h}", VIP, 1, 80, "A")).reason for h in (1, 2, 1)] == \
            [VerdictReason.pass_allowed, VerdictReason.pass_allowed, VerdictReason.drop_source_rate]
    finally:
        oracle.datapath.close()


def source_set_v4(slot: int, source: str, prefixlen: int) -> int:
    """The set of ew_source_ways_v4 a (slot, IPv4 prefix) hashes to (bpf/flood.h source_set_v4)."""
    prefix = ipaddress.ip_network((source, prefixlen), strict=False).network_address.packed
    tag = slot << 32 | int.from_bytes(prefix, "little")     # the prefix as the kernel's __u32 holds it
    return ((tag * 0x9E3779B97F4A7C15) % 2**64) >> (64 - lib.EW_SOURCE_SETS_V4_BITS)


def test_ipv4_per_source_buckets_are_exact_up_to_the_ways_of_a_set():
    """IPv4 per-source buckets live in 4-way sets of a shared array: four
    prefixes that hash to one set keep their buckets (the reference agrees
    packet by packet); a fifth takes the way refilled least recently, and the
    prefix that held it starts over with a full burst, which the exact
    reference does not do. That is the documented loss of exactness (an
    LRU evicts the same way, only with one list for all 262,144 buckets)."""
    ways = lib.EW_SOURCE_WAYS_V4
    policy = policy_from_document({"revision": 1, "tenants": [{"id": 1, "name": "shop", "vips": [VIP],
        "flood": {"source_packets_per_second": 0, "source_packet_burst": 1, "source_prefix_v4": 32}}]})
    oracle = oracle_for(policy)
    try:
        slot = struct.unpack_from("=I", oracle.datapath.program.maps["ew_vips_v4"].lookup(
            ipaddress.IPv4Address(VIP).packed), 4)[0]
        by_set: dict[int, list[str]] = {}
        for n in range(1 << 17):    # in 198.18.0.0/15, the first set to hold five
            source = str(ipaddress.IPv4Address(0xC6120000 + n))
            crowd = by_set.setdefault(source_set_v4(slot, source, 32), [])
            crowd.append(source)
            if len(crowd) > ways:
                break
        assert len(crowd) == ways + 1
        frame = {s: tcp_ipv4_frame(s, VIP, 40000, 443, "A") for s in crowd}
        for source in crowd[:ways]:
            assert oracle.check(frame[source]).reason is VerdictReason.pass_allowed
        for source in crowd[:ways]:                 # each spent its one token, each is still known
            assert oracle.check(frame[source]).reason is VerdictReason.drop_source_rate
        assert observe(oracle.datapath, frame[crowd[ways]]).reason == "pass_allowed"    # a fifth: a way
        assert observe(oracle.datapath, frame[crowd[0]]).reason == "pass_allowed"       # evicted: full again
        for source in crowd[2:ways]:                 # the others kept theirs
            assert observe(oracle.datapath, frame[source]).reason == "drop_source_rate"
    finally:
        oracle.datapath.close()


def test_a_source_over_its_own_limit_spends_none_of_the_tenants_syn_budget():
    """Per-source tokens are spent before tenant-wide ones: one prefix's flood
    is dropped as drop_source_rate and leaves the SYN budget to the others."""
    oracle = oracle_for(flood_policy(syns_per_second=0, syn_burst=3, source_packets_per_second=0,
                                     source_packet_burst=1))
    try:
        flooder, other = "198.51.100.9", "192.0.2.9"
        reasons = [oracle.check(tcp_ipv4_frame(flooder, VIP, 40000 + i, 443, "S")).reason for i in range(6)]
        assert reasons == [VerdictReason.pass_allowed] + [VerdictReason.drop_source_rate] * 5
        assert oracle.check(tcp_ipv4_frame(other, VIP, 40000, 443, "S")).reason is VerdictReason.pass_allowed
        assert oracle.check(tcp_ipv4_frame("203.0.113.200", VIP, 40000, 443, "S")).reason \
            is VerdictReason.pass_allowed    # the third SYN token: 1 + 1 + 1
    finally:
        oracle.datapath.close()


def test_a_packet_the_byte_limit_drops_spends_no_packet_token():
    oracle = oracle_for(flood_policy(amplification="pass", packets_per_second=0, packet_burst=2,
                                     bits_per_second=0, bit_burst=8 * 300))
    try:
        big, small = udp_ipv4_frame(CLIENT, VIP, 40000, 53, b"x" * 400), udp_ipv4_frame(CLIENT, VIP, 40000, 53)
        assert oracle.check(big).reason is VerdictReason.drop_rate_limit
        assert [oracle.check(small).reason for _ in range(3)] == [VerdictReason.pass_allowed] * 2 + [
            VerdictReason.drop_rate_limit]
    finally:
        oracle.datapath.close()
