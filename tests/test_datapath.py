"""The XDP program, run by the kernel through BPF_PROG_TEST_RUN, against the
pure-Python reference model: same action and same counter deltas for every
frame, well-formed or malformed, under fixed and random policies."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.datapath.abi import TrafficClass, VerdictReason
from agent.datapath.private import PrivateDatapath
from agent.policy import Policy, policy_from_document
from frames import CASES, MALFORMED_CASES, frames, malformed_frames, tcp_ipv4_frame, udp_ipv6_frame
from frames import icmp_ipv4_frame, ipv4_fragment_frame, ipv6_fragment_frame, udp, udp_ipv4_frame
from oracle import Oracle
from policies import FIXED_POLICY, policies

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fixed_oracle():
    with PrivateDatapath(FIXED_POLICY) as datapath:
        yield Oracle(datapath, FIXED_POLICY)


@pytest.mark.parametrize("name", sorted(CASES))
def test_named_cases_match_reference(fixed_oracle, name):
    fixed_oracle.check(CASES[name])


@pytest.fixture(scope="module")
def empty_policy_oracle():
    policy = Policy()
    with PrivateDatapath(policy) as datapath:
        yield Oracle(datapath, policy)


@pytest.mark.parametrize("name", sorted(MALFORMED_CASES))
def test_malformed_cases_are_dropped_as_malformed(empty_policy_oracle, name):
    """With no block rule to take precedence, broken frames drop as malformed."""
    verdict = empty_policy_oracle.check(CASES[name])
    assert verdict.reason is VerdictReason.drop_malformed


@SETTINGS
@given(frame=frames())
def test_wellformed_frames_match_reference(fixed_oracle, frame):
    fixed_oracle.check(frame)


@SETTINGS
@given(frame=malformed_frames())
def test_malformed_frames_match_reference(fixed_oracle, frame):
    fixed_oracle.check(frame)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies(), batch=st.lists(st.one_of(frames(), malformed_frames()), min_size=1, max_size=12))
def test_random_policies_applied_as_diffs_match_reference(diff_datapath, policy, batch):
    """One datapath for all examples: each policy is applied as a diff over the
    previous one, so stale entries left by a wrong diff would show up."""
    diff_datapath.apply(policy)
    oracle = Oracle(diff_datapath, policy)
    for frame in batch:
        oracle.check(frame)


@pytest.fixture(scope="module")
def diff_datapath():
    with PrivateDatapath() as datapath:
        yield datapath


# --- examples that pin the rules down, one per verdict reason -----------------

def run(oracle, frame):
    return oracle.check(frame)


def test_pass_for_tenant_counts_class_and_reason(fixed_oracle):
    v = run(fixed_oracle, tcp_ipv4_frame("192.0.2.130", "203.0.113.5", 40000, 443, flags="S"))
    assert (v.tenant_id, v.reason, v.traffic_class) == (1, VerdictReason.pass_allowed, TrafficClass.tcp_syn)


def test_global_block_wins_over_suspension(fixed_oracle):
    v = run(fixed_oracle, icmp_ipv4_frame("192.0.2.1", "198.51.100.5"))
    assert (v.tenant_id, v.reason) == (3, VerdictReason.drop_global_block)


def test_suspended_tenant_drops_everything(fixed_oracle):
    v = run(fixed_oracle, udp_ipv6_frame("2001:db8::99", "2001:db8:2::1", 5000, 443))
    assert (v.tenant_id, v.reason) == (3, VerdictReason.drop_tenant_suspended)


def test_tenant_block_list(fixed_oracle):
    v = run(fixed_oracle, tcp_ipv4_frame("198.51.100.200", "203.0.113.7", 1234, 80, flags="A"))
    assert (v.tenant_id, v.reason, v.traffic_class) == (1, VerdictReason.drop_tenant_block, TrafficClass.tcp_other)


def test_port_block_and_port_specific_vip(fixed_oracle):
    v = run(fixed_oracle, tcp_ipv4_frame("198.51.100.40", "203.0.113.70", 1234, 25565, flags="S"))
    assert (v.tenant_id, v.reason) == (2, VerdictReason.drop_port_block)
    # Same VIP, a port with no VIP entry and no any-port VIP: unassigned, passes.
    v = run(fixed_oracle, tcp_ipv4_frame("198.51.100.40", "203.0.113.70", 1234, 80, flags="S"))
    assert (v.tenant_id, v.reason) == (0, VerdictReason.pass_allowed)


def test_nonfirst_fragment_has_no_port_and_matches_any_port_vip(fixed_oracle):
    v = run(fixed_oracle, ipv4_fragment_frame("198.51.100.40", "203.0.113.200", 17, bytes(64), frag_offset=10,
                                              more_fragments=False))
    assert (v.tenant_id, v.reason, v.traffic_class) == (2, VerdictReason.pass_allowed, TrafficClass.fragment)


def test_first_fragment_gets_port_checks(fixed_oracle):
    segment = udp(1234, 53, b"x" * 40, src="198.51.100.40", dst="203.0.113.9")
    v = run(fixed_oracle, ipv4_fragment_frame("198.51.100.40", "203.0.113.9", 17, segment, frag_offset=0,
                                              more_fragments=True))
    assert (v.tenant_id, v.reason, v.traffic_class) == (1, VerdictReason.drop_port_block, TrafficClass.fragment)


def test_ipv6_nonfirst_fragment(fixed_oracle):
    v = run(fixed_oracle, ipv6_fragment_frame("2001:db8:1::5", "2001:db8::3", 6, bytes(40), frag_offset=20,
                                              more_fragments=True))
    assert (v.tenant_id, v.reason, v.traffic_class) == (1, VerdictReason.pass_allowed, TrafficClass.fragment)


def test_truncated_tcp_to_tenant_is_malformed_and_attributed(fixed_oracle):
    frame = tcp_ipv4_frame("198.51.100.40", "203.0.113.3", 1234, 80)[:14 + 20 + 10]
    v = run(fixed_oracle, frame)
    assert (v.tenant_id, v.reason, v.traffic_class) == (1, VerdictReason.drop_malformed, TrafficClass.other)


@pytest.mark.parametrize("name", sorted(set(CASES) - set(MALFORMED_CASES)))
def test_truncation_at_every_byte(fixed_oracle, name):
    """Every prefix of every named frame (IPv4 options, IPv6 extension chains,
    VLAN stacks, fragments): never an abort, always the reference verdict."""
    frame = CASES[name]
    for cut in range(len(frame) + 1):
        fixed_oracle.check(frame[:cut], counters=cut % 5 == 0)


def test_program_never_aborts_on_random_bytes(fixed_oracle):
    """Random bytes get the reference's action, which is never XDP_ABORTED
    (check() fails on any other action the kernel returns)."""
    import random
    rng = random.Random(7)
    for _ in range(2000):
        frame = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        fixed_oracle.check(frame, counters=False)


@pytest.mark.parametrize("offset_units", [1, 4095, 4096, 8191])
def test_fragment_offsets_at_field_boundaries(fixed_oracle, offset_units):
    """Every bit of the 13-bit offset field makes a fragment non-first."""
    v4 = fixed_oracle.check(ipv4_fragment_frame("198.51.100.40", "203.0.113.200", 17, bytes(16),
                                                frag_offset=offset_units, more_fragments=False))
    v6 = fixed_oracle.check(ipv6_fragment_frame("2001:db8:1::5", "2001:db8::3", 17, bytes(16),
                                                frag_offset=offset_units, more_fragments=False))
    assert v4.traffic_class is TrafficClass.fragment and v6.traffic_class is TrafficClass.fragment
    assert v4.reason is VerdictReason.pass_allowed      # no port to check on a non-first fragment


# Port ranges in the VIP value, both protocols, scanned in (protocol, first)
# order with an early exit (bpf/verdict.h port_blocked_in_ranges): every
# edge of every range, and the ports between and around them.
PORT_RANGES = ["tcp/25", "tcp/100-200", "tcp/3306", "tcp/6379", "udp/53", "udp/1000-2000", "udp/11211", "udp/65535"]


def test_port_ranges_in_the_vip_value_match_reference_at_every_edge():
    policy = policy_from_document({"revision": 1, "tenants": [
        {"id": 1, "name": "ranges", "vips": ["203.0.113.10"], "blocked_ports": PORT_RANGES}]}, "test")
    edges = {0, 1, 65534, 65535}
    for rule in PORT_RANGES:
        first, _, last = rule.split("/")[1].partition("-")
        for port in (int(first), int(last or first)):
            edges |= {port - 1, port, port + 1}
    with PrivateDatapath(policy) as datapath:
        oracle = Oracle(datapath, policy)
        reasons = {}
        for port in sorted(p for p in edges if 0 < p <= 65535):
            for proto, frame in (("tcp", tcp_ipv4_frame("198.51.100.9", "203.0.113.10", 40000, port, flags="S")),
                                 ("udp", udp_ipv4_frame("198.51.100.9", "203.0.113.10", 40000, port, b"x"))):
                reasons[proto, port] = oracle.check(frame).reason
    blocked = {key for key, reason in reasons.items() if reason is VerdictReason.drop_port_block}
    assert {("tcp", 25), ("tcp", 100), ("tcp", 200), ("tcp", 3306), ("tcp", 6379), ("udp", 53), ("udp", 1000),
            ("udp", 2000), ("udp", 11211), ("udp", 65535)} <= blocked
    assert not blocked & {("tcp", 24), ("tcp", 26), ("tcp", 99), ("tcp", 201), ("tcp", 53), ("udp", 25),
                          ("udp", 999), ("udp", 2001), ("udp", 65534), ("tcp", 65535)}
