"""IP length fields end the datagram: what follows in the frame is Ethernet
padding and is never parsed as a header; an IP length shorter than the
header or longer than the frame is drop_malformed. Bytes are counted for
the whole frame, padding included. Each frame runs through the real
program (BPF_PROG_TEST_RUN) and the reference model (the Oracle compares
action and counter deltas), and the expected reason is stated here from
the rules, not taken from either.

Before the fix the parser read past tot_len/payload_len: a SYN hidden in
the padding of a frame whose IPv4 datagram was only a header got a cookie
answer, and lengths longer than the frame passed."""

import struct

import pytest

from agent.datapath.abi import VerdictReason
from agent.datapath.private import PrivateDatapath
from agent.policy import policy_from_document
from agent.reference import ReferenceBuckets
from frames import ETH_P_IP, ETH_P_IPV6, ethernet, ipv4, ipv6, ipv6_routing_header, tcp, udp
from oracle import Oracle

VIP, VIP6 = "203.0.113.10", "2001:db8:10::10"
CLIENT, CLIENT6 = "198.51.100.9", "2001:db8:1::9"
TCP, UDP, NO_NEXT_HEADER = 6, 17, 59
VLAN_STACKS = [(), (100,), (100, 200)]
VLAN_IDS = ["untagged", "vlan", "qinq"]


@pytest.fixture(scope="module")
def oracle():
    policy = policy_from_document({"revision": 1, "tenants": [
        {"id": 1, "name": "shop", "vips": [VIP, VIP6], "flood": {"syn_cookies": True, "syn_ack": "pass"}}]},
        "tests/test_length_fields.py")
    buckets = ReferenceBuckets()
    buckets.apply(policy)
    with PrivateDatapath(policy) as datapath:
        yield Oracle(datapath, policy, buckets)


def with_total_length(packet: bytes, total_length: int) -> bytes:
    """An IPv4 packet with tot_len rewritten (checksum left: the datapath does not check it)."""
    return packet[:2] + struct.pack("!H", total_length) + packet[4:]


def with_payload_length(packet: bytes, payload_length: int) -> bytes:
    return packet[:4] + struct.pack("!H", payload_length) + packet[6:]


def v4(packet: bytes, vlans, padding: bytes = b"") -> bytes:
    return ethernet(packet + padding, ETH_P_IP, vlans=vlans)


def v6(packet: bytes, vlans, padding: bytes = b"") -> bytes:
    return ethernet(packet + padding, ETH_P_IPV6, vlans=vlans)


def syn(**kw) -> bytes:
    return tcp(40000, 443, flags="S", seq=7, **kw)


@pytest.mark.parametrize("vlans", VLAN_STACKS, ids=VLAN_IDS)
def test_padding_after_a_syn_is_not_part_of_it(oracle, vlans):
    """A minimal SYN padded to the Ethernet minimum (and more) is answered,
    and the answer carries no padding; bytes are the whole padded frame."""
    for padding in (bytes(6), bytes(100), b"\xff" * 60):
        frame = v4(ipv4(CLIENT, VIP, TCP, syn()), vlans, padding)
        verdict = oracle.check(frame)
        assert verdict.reason is VerdictReason.answer_syn_cookie and verdict.length == len(frame)
        action, answer = oracle.datapath.run_with_output(frame)
        assert action == 3 and len(answer) == 14 + 4 * len(vlans) + 20 + 24


@pytest.mark.parametrize("vlans", VLAN_STACKS, ids=VLAN_IDS)
def test_a_syn_hidden_in_the_padding_is_malformed(oracle, vlans):
    """tot_len says the datagram is the IPv4 header alone (protocol TCP): the
    TCP SYN that follows in the frame is padding, so there is no TCP header
    and the packet is malformed, never answered."""
    packet = ipv4(CLIENT, VIP, TCP, syn())
    frame = v4(with_total_length(packet, 20), vlans)
    assert oracle.check(frame).reason is VerdictReason.drop_malformed
    # Likewise a header cut short by tot_len (doff says 20 bytes, tot_len leaves 12).
    frame = v4(with_total_length(packet, 32), vlans)
    assert oracle.check(frame).reason is VerdictReason.drop_malformed


@pytest.mark.parametrize("vlans", VLAN_STACKS, ids=VLAN_IDS)
@pytest.mark.parametrize("total_length", [0, 10, 19], ids=["zero", "ten", "one-short"])
def test_total_length_shorter_than_the_header_is_malformed(oracle, vlans, total_length):
    frame = v4(with_total_length(ipv4(CLIENT, VIP, UDP, udp(5000, 53, b"q" * 20)), total_length), vlans)
    assert oracle.check(frame).reason is VerdictReason.drop_malformed


def test_total_length_shorter_than_the_options_is_malformed(oracle):
    packet = ipv4(CLIENT, VIP, UDP, udp(5000, 53), options=bytes([1] * 8))     # ihl 7: 28 bytes
    assert oracle.check(v4(with_total_length(packet, 24), ())).reason is VerdictReason.drop_malformed


@pytest.mark.parametrize("vlans", VLAN_STACKS, ids=VLAN_IDS)
@pytest.mark.parametrize("excess", [1, 100, 65535 - 48], ids=["one", "hundred", "max"])
def test_total_length_longer_than_the_frame_is_malformed(oracle, vlans, excess):
    packet = ipv4(CLIENT, VIP, UDP, udp(5000, 53, b"q" * 20))
    frame = v4(with_total_length(packet, len(packet) + excess), vlans)
    assert oracle.check(frame).reason is VerdictReason.drop_malformed


@pytest.mark.parametrize("vlans", VLAN_STACKS, ids=VLAN_IDS)
def test_udp_with_padding_passes_and_counts_the_whole_frame(oracle, vlans):
    frame = v4(ipv4(CLIENT, VIP, UDP, udp(5000, 8080, b"x")), vlans, bytes(40))
    verdict = oracle.check(frame)
    assert verdict.reason is VerdictReason.pass_allowed and verdict.length == len(frame)


@pytest.mark.parametrize("vlans", VLAN_STACKS, ids=VLAN_IDS)
def test_ipv6_padding_is_not_parsed(oracle, vlans):
    frame = v6(ipv6(CLIENT6, VIP6, TCP, syn()), vlans, bytes(30))
    assert oracle.check(frame).reason is VerdictReason.answer_syn_cookie
    _, answer = oracle.datapath.run_with_output(frame)
    assert len(answer) == 14 + 4 * len(vlans) + 40 + 24


@pytest.mark.parametrize("vlans", VLAN_STACKS, ids=VLAN_IDS)
def test_ipv6_syn_hidden_in_the_padding_is_malformed(oracle, vlans):
    """payload_len 0 with next header TCP: no TCP header in the datagram."""
    frame = v6(with_payload_length(ipv6(CLIENT6, VIP6, TCP, syn()), 0), vlans)
    assert oracle.check(frame).reason is VerdictReason.drop_malformed


@pytest.mark.parametrize("vlans", VLAN_STACKS, ids=VLAN_IDS)
@pytest.mark.parametrize("excess", [1, 8, 65535 - 20], ids=["one", "eight", "max"])
def test_ipv6_payload_length_longer_than_the_frame_is_malformed(oracle, vlans, excess):
    packet = ipv6(CLIENT6, VIP6, UDP, udp(5000, 53))
    frame = v6(with_payload_length(packet, len(packet) - 40 + excess), vlans)
    assert oracle.check(frame).reason is VerdictReason.drop_malformed


def test_ipv6_extension_header_beyond_the_payload_is_malformed(oracle):
    """The routing header is in the frame but payload_len ends the datagram
    before it (4 bytes in), and again in the middle of the UDP header."""
    packet = ipv6(CLIENT6, VIP6, UDP, udp(5000, 8080), ext_headers=[ipv6_routing_header()])
    assert oracle.check(v6(with_payload_length(packet, 4), ())).reason is VerdictReason.drop_malformed
    assert oracle.check(v6(with_payload_length(packet, 8 + 4), ())).reason is VerdictReason.drop_malformed
    assert oracle.check(v6(with_payload_length(packet, 8 + 8), (), bytes(8))).reason is VerdictReason.pass_allowed


def test_ipv6_no_next_header_with_padding_passes(oracle):
    """payload_len 0 and next header 59 (no next header): a complete datagram,
    the rest of the frame is padding."""
    frame = v6(ipv6(CLIENT6, VIP6, NO_NEXT_HEADER, b""), (), bytes(20))
    assert oracle.check(frame).reason is VerdictReason.pass_allowed
