"""TCP state defences through the real program (BPF_PROG_TEST_RUN): SYNs
answered with kernel SYN cookies, the ACK that returns a cookie accepted and
every other segment without a connection dropped, and the SYN-ACK policies.
The live handshake through synproxy is in tests/test_live_syncookies.py."""

import ipaddress
import struct
from dataclasses import dataclass

import pytest

from agent._libbpf import lib
from agent.checksum import internet_checksum
from agent.datapath.abi import SYNACK_TCP_LEN, SYNACK_TCP_LEN_TS, SYNACK_TTL, SYNPROXY_WSCALE, VerdictReason
from agent.datapath.private import PrivateDatapath
from agent.policy import policy_from_document
from agent.reference import ReferenceBuckets, TcpState, parse_frame
from frames import (
    DST_MAC, SRC_MAC, ipv4_fragment_frame, ipv6_routing_header, tcp_ipv4_frame, tcp_ipv6_frame,
)
from oracle import Oracle

VIP, VIP6 = "203.0.113.10", "2001:db8:10::10"
CLIENT, CLIENT6 = "198.51.100.9", "2001:db8:1::9"
MSS_1460 = bytes([2, 4, 0x05, 0xB4])
CLIENT_TSVAL = bytes.fromhex("0badcafe")
# Linux's SYN: MSS, SACK-permitted, timestamps, NOP, window scale 10
SYN_OPTIONS = MSS_1460 + bytes([4, 2, 8, 10]) + CLIENT_TSVAL + bytes(4) + bytes([1, 3, 3, 10])


def policy(**flood):
    return policy_from_document({"revision": 1, "tenants": [
        {"id": 1, "name": "shop", "vips": [VIP, VIP6], "flood": flood}]}, "tests/test_tcp_state.py")


@pytest.fixture
def cookies():
    p = policy(syn_cookies=True, syn_ack="pass")
    buckets = ReferenceBuckets()
    buckets.apply(p)
    with PrivateDatapath(p) as datapath:
        yield Oracle(datapath, p, buckets)


@dataclass
class SynAck:
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options: bytes
    ttl: int


def decode_answer(frame: bytes, l3_offset: int = 14) -> SynAck:
    """The cookie SYN-ACK, checked field by field on the way: MACs swapped,
    a bare IP header with a valid checksum, a 24-byte TCP header with a valid
    checksum, nothing after it."""
    assert frame[0:6] == bytes.fromhex(SRC_MAC.replace(":", "")), "destination MAC is the SYN's source"
    assert frame[6:12] == bytes.fromhex(DST_MAC.replace(":", ""))
    version = frame[l3_offset] >> 4
    if version == 4:
        ip = frame[l3_offset:l3_offset + 20]
        assert ip[0] == 0x45 and internet_checksum(ip) == 0
        total_length, frag, ttl, proto = struct.unpack("!H2xHBB", ip[2:10])
        assert (total_length, frag, proto) == (len(frame) - l3_offset, 0x4000, 6)
        src, dst = (str(ipaddress.ip_address(ip[12:16])), str(ipaddress.ip_address(ip[16:20])))
        segment = frame[l3_offset + 20:]
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(segment))
    else:
        ip = frame[l3_offset:l3_offset + 40]
        assert struct.unpack("!I", ip[:4])[0] == 0x60000000
        payload_length, next_header, ttl = struct.unpack("!HBB", ip[4:8])
        assert (payload_length, next_header) == (len(frame) - l3_offset - 40, 6)
        src, dst = (str(ipaddress.ip_address(ip[8:24])), str(ipaddress.ip_address(ip[24:40])))
        segment = frame[l3_offset + 40:]
        pseudo = ip[8:40] + struct.pack("!IxxxB", len(segment), 6)
    assert len(segment) in (SYNACK_TCP_LEN, SYNACK_TCP_LEN_TS)
    assert internet_checksum(pseudo + segment) == 0, "TCP checksum"
    sport, dport, seq, ack, offset, flags, window, _, urgent = struct.unpack("!HHIIBBHHH", segment[:20])
    assert offset >> 4 == len(segment) // 4 and urgent == 0, "the answer ends with the TCP header"
    return SynAck(src, dst, sport, dport, seq, ack, flags, window, segment[20:], ttl)


def answer(oracle: Oracle, frame: bytes) -> tuple[int, bytes]:
    verdict = oracle.check(frame)        # the action and the counters, against the reference
    action, out = oracle.datapath.run_with_output(frame)
    assert action == verdict.action
    return action, out


def the_ack(syn: SynAck, flags="A", ack_delta=1, payload=b""):
    """The client's third packet for an answered SYN."""
    make = tcp_ipv6_frame if ":" in syn.src else tcp_ipv4_frame
    return make(syn.dst, syn.src, syn.dport, syn.sport, flags, payload, seq=syn.ack, ack=syn.seq + ack_delta)


COOKIE_VALID = TcpState(cookie_valid=lambda facts: True)
MSS_TABLE = {4: (536, 1300, 1440, 1460), 6: (1220, 1420, 1440, 8940)}   # net/ipv{4,6}/syncookies.c msstab


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("options,mss", [(SYN_OPTIONS, 1460), (b"", 536), (bytes([2, 4, 0x02, 0x18]), 536),
                                         (bytes([2, 4, 0x23, 0x28]), 8960)])
def test_a_syn_is_answered_with_a_cookie_the_ack_then_returns(cookies, family, options, mss):
    client, vip = (CLIENT, VIP) if family == 4 else (CLIENT6, VIP6)
    make = tcp_ipv4_frame if family == 4 else tcp_ipv6_frame
    syn = make(client, vip, 40000, 443, "S", seq=0xFFFFFFFF, tcp_options=options)
    action, out = answer(cookies, syn)
    assert action == lib.XDP_TX
    reply = decode_answer(out)
    assert (reply.src, reply.dst, reply.sport, reply.dport) == (vip, client, 443, 40000)
    assert reply.flags == 0x12 and reply.ack == 0 and reply.window == 0 and reply.ttl == SYNACK_TTL
    # The MSS is the one the cookie encodes: the kernel's table entry at or below the
    # client's (536 without an option), or the table's smallest.
    kind, length, encoded = struct.unpack("!BBH", reply.options[:4])
    table = MSS_TABLE[family]
    assert (kind, length) == (2, 4) and encoded == max([m for m in table if m <= mss] or [table[0]])
    # The returning ACK carries the cookie: it passes (to synproxy in the kernel).
    assert cookies.check(the_ack(reply), tcp=COOKIE_VALID).reason is VerdictReason.pass_allowed
    # A number the cookie did not make, or a RST with the right one, or a stray data
    # segment: dropped. (Not cookie + 1: the cookie's low bits are the MSS index,
    # and the kernel accepts any index in its table.)
    assert cookies.check(the_ack(reply, ack_delta=1 + (1 << 20))).reason is VerdictReason.drop_bad_cookie
    assert cookies.check(the_ack(reply, flags="RA")).reason is VerdictReason.drop_bad_cookie
    assert cookies.check(the_ack(reply, flags="PA", ack_delta=77, payload=b"GET /")).reason \
        is VerdictReason.drop_bad_cookie


@pytest.mark.parametrize("offered,sack,wscale", [
    (MSS_1460 + bytes([4, 2, 8, 10]) + CLIENT_TSVAL + bytes(4) + bytes([1, 3, 3, 10]), True, 10),
    (bytes([1, 1, 8, 10]) + CLIENT_TSVAL + bytes(4) + bytes([1, 3, 3, 14]), False, 14),
    (bytes([1, 3, 3, 15]) + bytes([8, 10]) + CLIENT_TSVAL + bytes(4) + bytes([4, 2, 0, 0]), True, 14),  # capped
    (MSS_1460 + bytes([1, 1, 8, 10]) + CLIENT_TSVAL + bytes(4), False, None),
    # Linux's layout is read without the option walk: its window scale is capped too,
    # and the same layout with NOPs where the window scale was is not taken for it.
    (MSS_1460 + bytes([4, 2, 8, 10]) + CLIENT_TSVAL + bytes(4) + bytes([1, 3, 3, 15]), True, 14),
    (MSS_1460 + bytes([4, 2, 8, 10]) + CLIENT_TSVAL + bytes(4) + bytes([1, 1, 1, 1]), True, None),
])
@pytest.mark.parametrize("family", [4, 6])
def test_timestamps_carry_what_the_cookie_cannot(cookies, family, offered, sack, wscale):
    """As synproxy's own SYN-ACK: with client timestamps, the answer offers
    SACK (if asked) and synproxy's window scale (if the client scales), and
    keeps the client's window scale and SACK choice in the low 6 bits of its
    timestamp, which the ACK echoes back to synproxy."""
    client, vip = (CLIENT, VIP) if family == 4 else (CLIENT6, VIP6)
    make = tcp_ipv4_frame if family == 4 else tcp_ipv6_frame
    action, out = answer(cookies, make(client, vip, 40000, 443, "S", seq=7, tcp_options=offered))
    assert action == lib.XDP_TX
    options = decode_answer(out).options
    assert len(options) == SYNACK_TCP_LEN_TS - 20
    assert options[4:8] == (bytes([4, 2, 8, 10]) if sack else bytes([1, 1, 8, 10]))
    tsval, tsecr = struct.unpack("!II", options[8:16])
    assert options[12:16] == CLIENT_TSVAL, "the client's timestamp is echoed"
    assert tsval & 0xF == (wscale if wscale is not None else 0xF)
    assert bool(tsval & 0x10) == sack and not tsval & 0x20
    assert options[16:20] == (bytes([1, 3, 3, SYNPROXY_WSCALE]) if wscale is not None else bytes([1] * 4))


def test_without_client_timestamps_the_answer_offers_the_mss_only(cookies):
    options = decode_answer(answer(cookies, tcp_ipv4_frame(CLIENT, VIP, 40000, 443, "S",
                                                           tcp_options=MSS_1460 + bytes([1, 3, 3, 7])))[1]).options
    assert len(options) == 4 and options[:2] == bytes([2, 4])


def test_answers_are_counted_neither_passed_nor_dropped(cookies):
    for port in range(3):
        assert cookies.check(tcp_ipv4_frame(CLIENT, VIP, 40000 + port, 443, "S")).action == lib.XDP_TX
    shop = cookies.datapath.counters()[1]
    assert shop.reason_packets["answer_syn_cookie"] == 3
    assert (shop.answered_packets, shop.passed_packets, shop.dropped_packets) == (3, 0, 0)
    assert shop.class_packets["tcp_syn"] == 3


def test_a_syn_behind_vlan_tags_and_with_ip_options_and_data_is_answered_bare(cookies):
    syn = tcp_ipv4_frame(CLIENT, VIP, 40000, 443, "S", payload=b"x" * 300, vlans=(7, 8), seq=5,
                         options=bytes([1, 1, 1, 0]), tcp_options=MSS_1460)
    action, out = answer(cookies, syn)
    assert action == lib.XDP_TX
    assert out[12:22] == syn[12:22], "the VLAN tags stay"
    reply = decode_answer(out, l3_offset=22)
    assert (reply.ack, reply.dst) == (6, CLIENT)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("vlans", [(), (7,)], ids=["untagged", "tagged"])
@pytest.mark.parametrize("options", [MSS_1460, SYN_OPTIONS], ids=["mss", "linux"])
@pytest.mark.parametrize("payload", [b"", b"x" * 100], ids=["bare", "data"])
def test_the_answer_is_the_same_read_in_place_or_copied(cookies, family, vlans, options, payload):
    """An untagged SYN is answered in place (read and written at constant
    offsets), a tagged one through copies by offset; with data after the
    header the frame is cut to the answer, without it (the lengths match)
    it is not resized. Each way gives a valid answer whose ACK the kernel's
    cookie check lets through."""
    client, vip = (CLIENT, VIP) if family == 4 else (CLIENT6, VIP6)
    make = tcp_ipv4_frame if family == 4 else tcp_ipv6_frame
    syn = make(client, vip, 40000, 443, "S", payload=payload, vlans=vlans, seq=5, tcp_options=options)
    action, out = answer(cookies, syn)
    assert action == lib.XDP_TX
    assert out[12:12 + 4 * len(vlans)] == syn[12:12 + 4 * len(vlans)], "the VLAN tags stay"
    reply = decode_answer(out, l3_offset=14 + 4 * len(vlans))
    assert (reply.src, reply.dst, reply.sport, reply.dport, reply.ack) == (vip, client, 443, 40000, 6)
    assert len(reply.options) == (4 if options == MSS_1460 else SYNACK_TCP_LEN_TS - 20)
    assert cookies.check(the_ack(reply), tcp=COOKIE_VALID).reason is VerdictReason.pass_allowed
    assert cookies.check(the_ack(reply, ack_delta=1 + (1 << 20))).reason is VerdictReason.drop_bad_cookie


@pytest.mark.parametrize("frame", [
    pytest.param(tcp_ipv4_frame(CLIENT, VIP, 40000, 443, "SR"), id="syn-rst"),
    pytest.param(tcp_ipv4_frame(CLIENT, VIP, 40000, 443, "SF"), id="syn-fin"),
    pytest.param(tcp_ipv6_frame(CLIENT6, VIP6, 40000, 443, "S", ext_headers=[ipv6_routing_header()]),
                 id="ipv6-extension-header"),
    pytest.param(ipv4_fragment_frame(CLIENT, VIP, 6, struct.pack("!HHIIBBHHH", 40000, 443, 0, 0, 0x50, 2, 0, 0, 0),
                                     0, more_fragments=True), id="first-fragment"),
    pytest.param(tcp_ipv4_frame(CLIENT, VIP, 40000, 443, "F"), id="fin"),
    pytest.param(tcp_ipv4_frame(CLIENT, VIP, 40000, 443, "R"), id="rst"),
    pytest.param(tcp_ipv4_frame(CLIENT, VIP, 40000, 443, "A", seq=1, ack=1), id="ack-flood"),
])
def test_what_cannot_be_answered_or_has_no_connection_is_dropped(cookies, frame):
    assert cookies.check(frame).reason is VerdictReason.drop_bad_cookie


def test_the_syn_limit_caps_the_answers():
    p = policy(syn_cookies=True, syns_per_second=1, syn_burst=2)
    buckets = ReferenceBuckets()
    buckets.apply(p)
    with PrivateDatapath(p) as datapath:
        oracle = Oracle(datapath, p, buckets)
        reasons = [oracle.check(tcp_ipv4_frame(CLIENT, VIP, 40000 + i, 443, "S")).reason for i in range(4)]
    assert reasons[:2] == [VerdictReason.answer_syn_cookie] * 2
    assert reasons[2:] == [VerdictReason.drop_syn_rate] * 2


def test_cookies_are_per_tenant():
    p = policy_from_document({"tenants": [
        {"id": 1, "name": "shop", "vips": [VIP], "flood": {"syn_cookies": True}},
        {"id": 2, "name": "blog", "vips": ["203.0.113.11"]}]})
    with PrivateDatapath(p) as datapath:
        oracle = Oracle(datapath, p)
        assert oracle.check(tcp_ipv4_frame(CLIENT, VIP, 1, 443, "S")).reason is VerdictReason.answer_syn_cookie
        assert oracle.check(tcp_ipv4_frame(CLIENT, "203.0.113.11", 1, 443, "S")).reason is VerdictReason.pass_allowed
        assert oracle.check(tcp_ipv4_frame(CLIENT, "203.0.113.11", 1, 443, "A")).reason is VerdictReason.pass_allowed
        assert oracle.check(tcp_ipv4_frame(CLIENT, "203.0.113.99", 1, 443, "S")).reason is VerdictReason.pass_allowed


@pytest.mark.parametrize("syn_ack,reason", [("drop", VerdictReason.drop_syn_ack),
                                             ("track", VerdictReason.drop_syn_ack),   # no conntrack entry here
                                             ("pass", VerdictReason.pass_allowed)])
@pytest.mark.parametrize("family", [4, 6])
def test_syn_ack_policies(syn_ack, reason, family):
    p = policy(syn_ack=syn_ack, amplification="pass")
    make, client, vip = (tcp_ipv4_frame, CLIENT, VIP) if family == 4 else (tcp_ipv6_frame, CLIENT6, VIP6)
    with PrivateDatapath(p) as datapath:
        oracle = Oracle(datapath, p)
        assert oracle.check(make(client, vip, 443, 40000, "SA", seq=1, ack=1)).reason is reason
        assert oracle.check(make(client, vip, 443, 40000, "SAE", seq=1, ack=1)).reason is reason
        # only SYN-ACKs: a reply segment of an established flow is not this policy's
        assert oracle.check(make(client, vip, 443, 40000, "PA", seq=1, ack=1)).reason is VerdictReason.pass_allowed


def test_the_reference_knows_what_the_kernel_state_says():
    """TcpState stands for conntrack and the cookie secret: with a connection
    known, the reference passes what it would otherwise drop."""
    from agent.reference import decide
    p = policy(syn_cookies=True, syn_ack="track")
    known = TcpState(connection_known=lambda facts: True)
    for flags in ("SA", "A", "PA", "R", "F"):
        facts = parse_frame(tcp_ipv4_frame(CLIENT, VIP, 443, 40000, flags))
        assert decide(p, facts)[1] in (VerdictReason.drop_syn_ack, VerdictReason.drop_bad_cookie)
        assert decide(p, facts, tcp=known)[1] is VerdictReason.pass_allowed
