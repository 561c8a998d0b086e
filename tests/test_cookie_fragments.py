"""SYN-cookie mode drops TCP fragments, first and non-first, as
drop_bad_cookie: no server needs one before a connection exists, and a
non-first fragment has no TCP header to check a connection or cookie by.
Before, a non-first TCP fragment skipped cookie mode and passed unless the
tenant dropped fragments. Real program (BPF_PROG_TEST_RUN) against the
reference, expected reasons from the README's rules."""

import pytest

from agent.datapath.abi import VerdictReason
from agent.datapath.private import PrivateDatapath
from agent.policy import policy_from_document
from agent.reference import ReferenceBuckets
from frames import ipv4_fragment_frame, ipv6_fragment_frame, tcp, udp
from oracle import Oracle

VIP, VIP6 = "203.0.113.10", "2001:db8:10::10"
CLIENT, CLIENT6 = "198.51.100.9", "2001:db8:1::9"
TCP, UDP = 6, 17


def make_oracle(**flood):
    policy = policy_from_document({"revision": 1, "tenants": [
        {"id": 1, "name": "shop", "vips": [VIP, VIP6], "flood": flood}]}, "tests/test_cookie_fragments.py")
    buckets = ReferenceBuckets()
    buckets.apply(policy)
    return PrivateDatapath(policy), policy, buckets


@pytest.fixture
def cookies():
    datapath, policy, buckets = make_oracle(syn_cookies=True, syn_ack="pass")
    with datapath:
        yield Oracle(datapath, policy, buckets)


def fragments(proto, segment):
    """First and non-first fragments of `segment`, IPv4 and IPv6."""
    return {
        "v4-first": ipv4_fragment_frame(CLIENT, VIP, proto, segment[:16] if proto == UDP else segment, 0, True),
        "v4-nonfirst": ipv4_fragment_frame(CLIENT, VIP, proto, bytes(16), 3, False),
        "v6-first": ipv6_fragment_frame(CLIENT6, VIP6, proto, segment, 0, True),
        "v6-nonfirst": ipv6_fragment_frame(CLIENT6, VIP6, proto, bytes(16), 3, False),
    }


@pytest.mark.parametrize("flags", ["S", "A", "PA", "SA"], ids=["syn", "ack", "data", "syn-ack"])
def test_tcp_fragments_are_bad_cookies(cookies, flags):
    for name, frame in fragments(TCP, tcp(40000, 443, flags=flags) + bytes(8)).items():
        assert cookies.check(frame).reason is VerdictReason.drop_bad_cookie, name


def test_udp_fragments_are_not_cookie_business(cookies):
    for name, frame in fragments(UDP, udp(5000, 8080, bytes(16))).items():
        assert cookies.check(frame).reason is VerdictReason.pass_allowed, name


def test_dropped_fragments_and_syn_ack_policy_come_first():
    """Precedence: dropped fragment > SYN-ACK without connection > bad cookie."""
    datapath, policy, buckets = make_oracle(syn_cookies=True, syn_ack="drop", fragments="drop")
    with datapath:
        oracle = Oracle(datapath, policy, buckets)
        frames = fragments(TCP, tcp(40000, 443, flags="SA") + bytes(8))
        assert oracle.check(frames["v4-nonfirst"]).reason is VerdictReason.drop_fragment
        assert oracle.check(frames["v6-nonfirst"]).reason is VerdictReason.drop_fragment
        assert oracle.check(frames["v4-first"]).reason is VerdictReason.drop_syn_ack
        assert oracle.check(frames["v6-first"]).reason is VerdictReason.drop_syn_ack


def test_without_cookies_tcp_fragments_pass():
    datapath, policy, buckets = make_oracle(syn_ack="pass")
    with datapath:
        oracle = Oracle(datapath, policy, buckets)
        for name, frame in fragments(TCP, tcp(40000, 443, flags="A") + bytes(8)).items():
            assert oracle.check(frame).reason is VerdictReason.pass_allowed, name
