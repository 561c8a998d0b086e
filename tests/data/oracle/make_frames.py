#!/usr/bin/env python3
"""Writes frames.json: frames built with scapy, each with the verdict the
README's rules ("What the datapath does", the Decide table) give it under
policy.toml. The expectations are stated here by hand, next to the frame and
the rule that decides it; nothing here imports the project, so they share
none of the datapath's or the reference model's assumptions.

    .venv/bin/python tests/data/oracle/make_frames.py

Cases run in file order through one datapath; a case with several frames
is a sequence whose later frames depend on the earlier ones (hard caps:
rate 0 with a burst)."""

from __future__ import annotations

import json
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

HERE = Path(__file__).resolve().parent
OUT = HERE / "frames.json"

# Addresses of policy.toml.
OPEN, SUSPENDED, NOFRAG, COOKIES = "203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"
GAMES, WEB_AND_REST = "203.0.113.5", "203.0.113.6"
SYNCAP, PKTCAP, SRCCAP, FRAGCAP, BYTECAP = (f"203.0.113.{i}" for i in (10, 11, 12, 13, 14))
OPEN6, SUSPENDED6, NOFRAG6, COOKIES6 = "2001:db8:1::1", "2001:db8:2::2", "2001:db8:3::3", "2001:db8:4::4"
NOBODY, NOBODY6 = "203.0.113.200", "2001:db8:ff::1"          # no tenant's VIP
CLIENT, CLIENT6 = "198.51.100.10", "2001:db8:77::10"         # on no list
TENANT_BLOCKED, TENANT_BLOCKED6 = "198.51.100.70", "2001:db8:66::70"   # open's (and suspended's) list
GLOBAL_BLOCKED, GLOBAL_BLOCKED6 = "192.0.2.9", "2001:db8:bad::9"
TENANTS = {OPEN: 1, SUSPENDED: 2, NOFRAG: 3, COOKIES: 4, OPEN6: 1, SUSPENDED6: 2, NOFRAG6: 3, COOKIES6: 4}

MACS = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
VERDICTS = {"pass_allowed": "pass", "pass_non_ip": "pass", "answer_syn_cookie": "tx"}


def eth(**kw):
    return Ether(**MACS, **kw)


def v4(src, dst, **kw):
    return eth() / IP(src=src, dst=dst, **kw)


def v6(src, dst, **kw):
    return eth() / IPv6(src=src, dst=dst, **kw)


def raw(packet) -> bytes:
    return bytes(packet)


def padded(frame: bytes, padding: bytes) -> bytes:
    return frame + padding


def frame(packet_or_bytes, reason: str, tenant: int, traffic_class: str | None = None, note: str = "") -> dict:
    data = packet_or_bytes if isinstance(packet_or_bytes, bytes) else bytes(packet_or_bytes)
    entry = {"hex": data.hex(), "reason": reason, "tenant": tenant,
             "verdict": VERDICTS.get(reason, "drop")}
    if traffic_class is not None:
        entry["class"] = traffic_class
    if note:
        entry["note"] = note
    return entry


CASES: list[dict] = []


def case(name: str, why: str, *frames: dict) -> None:
    CASES.append({"name": name, "why": why, "frames": list(frames)})


# --- one per reason, and the precedence between them -------------------------

case("pass_allowed_v4_syn", "IP to a tenant with no rule that matches: pass_allowed; a SYN alone is class tcp_syn",
     frame(v4(CLIENT, OPEN) / TCP(sport=40000, dport=80, flags="S"), "pass_allowed", 1, "tcp_syn"))
case("pass_allowed_v6_ack", "IPv6 TCP ACK to a tenant: pass_allowed, class tcp_other",
     frame(v6(CLIENT6, OPEN6) / TCP(sport=40000, dport=80, flags="A"), "pass_allowed", 1, "tcp_other"))
case("pass_allowed_unassigned", "traffic to no VIP is tenant 0 and gets no flood policy (UDP from port 53 passes)",
     frame(v4(CLIENT, NOBODY) / UDP(sport=53, dport=4000) / Raw(b"x" * 20), "pass_allowed", 0, "udp"))
case("pass_non_ip_arp", "well-formed non-IP frames pass as pass_non_ip, tenant 0",
     frame(eth() / ARP(psrc=CLIENT, pdst=OPEN), "pass_non_ip", 0))
case("pass_non_ip_lldp", "LLDP (ethertype 0x88cc) is non-IP",
     frame(eth(type=0x88CC) / Raw(bytes.fromhex("020702000000000001040302000106020078") + bytes(2)), "pass_non_ip", 0))
case("pass_non_ip_vlan_arp", "ARP behind an 802.1Q tag is still a well-formed non-IP frame",
     frame(eth() / Dot1Q(vlan=10) / ARP(psrc=CLIENT, pdst=OPEN), "pass_non_ip", 0))

case("global_block_v4", "source in the global block list: drop_global_block, attributed to the VIP's tenant",
     frame(v4(GLOBAL_BLOCKED, OPEN) / TCP(sport=40000, dport=80, flags="S"), "drop_global_block", 1))
case("global_block_v6", "IPv6 source in the global block list",
     frame(v6(GLOBAL_BLOCKED6, OPEN6) / UDP(sport=40000, dport=80), "drop_global_block", 1))
case("global_block_unassigned", "the global list applies to traffic to no tenant too (tenant 0)",
     frame(v4(GLOBAL_BLOCKED, NOBODY) / ICMP(), "drop_global_block", 0))
case("global_block_wins_over_suspension", "first match wins: the global list comes before suspension",
     frame(v4(GLOBAL_BLOCKED, SUSPENDED) / ICMP(), "drop_global_block", 2))

case("suspended_v4", "a suspended tenant drops everything",
     frame(v4(CLIENT, SUSPENDED) / ICMP(), "drop_tenant_suspended", 2, "icmp"))
case("suspended_v6", "a suspended tenant drops everything (IPv6)",
     frame(v6(CLIENT6, SUSPENDED6) / TCP(sport=1, dport=443, flags="S"), "drop_tenant_suspended", 2))
case("suspension_wins_over_tenant_block", "suspension comes before the tenant's own list",
     frame(v4(TENANT_BLOCKED, SUSPENDED) / UDP(sport=40000, dport=80), "drop_tenant_suspended", 2))

case("tenant_block_v4", "source in the tenant's own block list",
     frame(v4(TENANT_BLOCKED, OPEN) / TCP(sport=40000, dport=80, flags="A"), "drop_tenant_block", 1))
case("tenant_block_v6", "IPv6 source in the tenant's own block list",
     frame(v6(TENANT_BLOCKED6, OPEN6) / UDP(sport=40000, dport=80), "drop_tenant_block", 1))
case("tenant_block_is_per_tenant", "another tenant's list does not apply: nofrag has none",
     frame(v4(TENANT_BLOCKED, NOFRAG) / UDP(sport=40000, dport=80), "pass_allowed", 3))
case("tenant_block_wins_over_malformed", "once the addresses are readable, block lists come before malformation",
     frame(raw(v4(TENANT_BLOCKED, OPEN) / TCP(sport=40000, dport=80))[:14 + 20 + 10], "drop_tenant_block", 1))
case("global_block_wins_over_ip_length_beyond_frame",
     "block lists come before malformation: IPv4 total length beyond the frame from a blocked source",
     frame(v4(GLOBAL_BLOCKED, OPEN, len=1500) / UDP(sport=40000, dport=80), "drop_global_block", 1))

case("malformed_truncated_tcp", "a TCP header cut short by the frame: drop_malformed, attributed to the VIP's tenant",
     frame(raw(v4(CLIENT, OPEN) / TCP(sport=40000, dport=80))[:14 + 20 + 10], "drop_malformed", 1))
case("malformed_wins_over_port_block", "malformation comes before the port block: a TCP data offset past the segment",
     frame(v4(CLIENT, OPEN) / TCP(sport=40000, dport=25, dataofs=15, flags="S"), "drop_malformed", 1))
case("malformed_ip_header_unreadable", "an IPv4 ethertype with 10 bytes of IP: no addresses, so tenant 0",
     frame(raw(v4(CLIENT, OPEN) / ICMP())[:14 + 10], "drop_malformed", 0))
case("malformed_version_mismatch", "ethertype IPv4 but version 6 in the header: inconsistent, unreadable, tenant 0",
     frame(eth(type=0x0800) / IPv6(src=CLIENT6, dst=OPEN6) / UDP(sport=1, dport=2), "drop_malformed", 0))
case("malformed_truncated_udp_v6", "an IPv6 UDP header cut short",
     frame(raw(v6(CLIENT6, OPEN6) / UDP(sport=40000, dport=80))[:14 + 40 + 4], "drop_malformed", 1))

case("port_block_tcp", "TCP destination port on the tenant's list (tcp/25)",
     frame(v4(CLIENT, OPEN) / TCP(sport=40000, dport=25, flags="S"), "drop_port_block", 1))
case("port_block_udp_range", "UDP destination port in a blocked range (udp/5000-5010)",
     frame(v4(CLIENT, OPEN) / UDP(sport=40000, dport=5007), "drop_port_block", 1))
case("port_block_is_per_protocol", "tcp/5007 is not blocked: the range is udp",
     frame(v4(CLIENT, OPEN) / TCP(sport=40000, dport=5007, flags="A"), "pass_allowed", 1))
case("port_block_v6", "port blocks apply to IPv6",
     frame(v6(CLIENT6, OPEN6) / TCP(sport=40000, dport=25, flags="S"), "drop_port_block", 1))
case("port_block_wins_over_amplification", "the port block comes before the amplification check",
     frame(v4(CLIENT, OPEN) / UDP(sport=53, dport=5005), "drop_port_block", 1))

case("amplification_ntp", "UDP from port 123, which the tenant does not allow",
     frame(v4(CLIENT, OPEN) / UDP(sport=123, dport=40000) / Raw(bytes(48)), "drop_amplification", 1, "udp"))
case("amplification_v6_memcached", "UDP from port 11211 over IPv6",
     frame(v6(CLIENT6, OPEN6) / UDP(sport=11211, dport=40000), "drop_amplification", 1))
case("amplification_allowed_port", "nofrag allows 53",
     frame(v4(CLIENT, NOFRAG) / UDP(sport=53, dport=40000), "pass_allowed", 3))
case("amplification_other_port_still_dropped", "nofrag allows 53 only: 161 is dropped",
     frame(v4(CLIENT, NOFRAG) / UDP(sport=161, dport=40000), "drop_amplification", 3))
case("amplification_needs_udp", "TCP from port 53 is not amplification",
     frame(v4(CLIENT, OPEN) / TCP(sport=53, dport=40000, flags="A"), "pass_allowed", 1))

case("syn_ack_dropped_by_default", "a SYN-ACK to a tenant with syn_ack = drop (the default)",
     frame(v4(CLIENT, OPEN) / TCP(sport=80, dport=40000, flags="SA"), "drop_syn_ack", 1))
case("syn_ack_v6", "a SYN-ACK over IPv6",
     frame(v6(CLIENT6, OPEN6) / TCP(sport=80, dport=40000, flags="SA"), "drop_syn_ack", 1))
case("syn_ack_unassigned_passes", "tenant 0 gets no flood policy",
     frame(v4(CLIENT, NOBODY) / TCP(sport=80, dport=40000, flags="SA"), "pass_allowed", 0))

case("cookie_answer_v4", "SYN-cookie mode: the SYN is answered from XDP (XDP_TX)",
     frame(v4(CLIENT, COOKIES) / TCP(sport=40000, dport=80, flags="S", options=[("MSS", 1460)]),
           "answer_syn_cookie", 4, "tcp_syn"))
case("cookie_answer_v6", "SYN-cookie mode over IPv6",
     frame(v6(CLIENT6, COOKIES6) / TCP(sport=40000, dport=80, flags="S", options=[("MSS", 1440)]),
           "answer_syn_cookie", 4, "tcp_syn"))
case("cookie_ack_without_cookie", "SYN-cookie mode: an ACK that returns no valid cookie and belongs to no connection",
     frame(v4(CLIENT, COOKIES) / TCP(sport=40000, dport=80, flags="A", seq=1000, ack=12345), "drop_bad_cookie", 4))
case("cookie_rst", "SYN-cookie mode: a RST of no connection",
     frame(v4(CLIENT, COOKIES) / TCP(sport=40000, dport=80, flags="R"), "drop_bad_cookie", 4))
case("cookie_syn_fin", "SYN-cookie mode: SYN+FIN cannot be answered",
     frame(v4(CLIENT, COOKIES) / TCP(sport=40000, dport=80, flags="SF"), "drop_bad_cookie", 4))
case("cookie_syn_rst_v6", "SYN-cookie mode: SYN+RST cannot be answered",
     frame(v6(CLIENT6, COOKIES6) / TCP(sport=40000, dport=80, flags="SR"), "drop_bad_cookie", 4))
case("cookie_syn_ack_is_syn_ack", "a SYN-ACK in cookie mode meets the syn_ack rule (drop) first",
     frame(v4(CLIENT, COOKIES) / TCP(sport=80, dport=40000, flags="SA"), "drop_syn_ack", 4))
case("cookie_udp_unaffected", "cookie mode concerns TCP only",
     frame(v4(CLIENT, COOKIES) / UDP(sport=40000, dport=80), "pass_allowed", 4))

case("syn_rate_hard_cap", "syns_per_second 0, syn_burst 1: one SYN passes, the next is over; an ACK is not a SYN",
     frame(v4(CLIENT, SYNCAP) / TCP(sport=40000, dport=80, flags="S"), "pass_allowed", 10),
     frame(v4(CLIENT, SYNCAP) / TCP(sport=40001, dport=80, flags="S"), "drop_syn_rate", 10),
     frame(v4(CLIENT, SYNCAP) / TCP(sport=40000, dport=80, flags="A"), "pass_allowed", 10))
case("packet_rate_hard_cap", "packets_per_second 0, packet_burst 1: the second packet is over the tenant's rate",
     frame(v4(CLIENT, PKTCAP) / UDP(sport=40000, dport=80), "pass_allowed", 11),
     frame(v4(CLIENT, PKTCAP) / UDP(sport=40000, dport=80), "drop_rate_limit", 11))
case("byte_rate_hard_cap", "bit_burst 12000 (1,500 bytes), rate 0: a 1,000-byte packet fits, a second does not",
     frame(v4(CLIENT, BYTECAP) / UDP(sport=40000, dport=80) / Raw(bytes(972)), "pass_allowed", 14),
     frame(v4(CLIENT, BYTECAP) / UDP(sport=40000, dport=80) / Raw(bytes(972)), "drop_rate_limit", 14))
case("source_rate_hard_cap", "per-source burst 1 by /24: a second source of the same /24 is over, another /24 is not",
     frame(v4(CLIENT, SRCCAP) / UDP(sport=40000, dport=80), "pass_allowed", 12),
     frame(v4("198.51.100.11", SRCCAP) / UDP(sport=40000, dport=80), "drop_source_rate", 12),
     frame(v4("192.0.2.200", SRCCAP) / UDP(sport=40000, dport=80), "pass_allowed", 12))

# --- tenant lookup: port-specific VIPs -----------------------------------------

case("port_specific_vip", "(VIP, protocol, port) first",
     frame(v4(CLIENT, WEB_AND_REST) / TCP(sport=40000, dport=443, flags="S"), "pass_allowed", 6))
case("any_port_vip_behind_port_specific", "then (VIP, any port): tcp/80 on the same address belongs to rest",
     frame(v4(CLIENT, WEB_AND_REST) / TCP(sport=40000, dport=80, flags="S"), "pass_allowed", 7))
case("port_specific_only_other_port", "games has port-specific VIPs only: another port is no tenant's",
     frame(v4(CLIENT, GAMES) / TCP(sport=40000, dport=80, flags="S"), "pass_allowed", 0))
case("port_specific_udp", "games' udp/27015",
     frame(v4(CLIENT, GAMES) / UDP(sport=53, dport=27015), "drop_amplification", 5))

# --- fragments ------------------------------------------------------------------

UDP_FROM_53_TO_5005 = raw(UDP(sport=53, dport=5005, len=8 + 64, chksum=0)) + bytes(64)

case("v4_first_fragment_has_ports", "a first fragment (MF, offset 0) carries the UDP header: amplification applies",
     frame(v4(CLIENT, OPEN, flags="MF", proto=17) / Raw(raw(UDP(sport=123, dport=40000, len=1008, chksum=0))
                                                      + bytes(64)), "drop_amplification", 1, "fragment"))
case("v4_first_fragment_allowed", "nofrag drops non-first fragments only; it allows 53",
     frame(v4(CLIENT, NOFRAG, flags="MF", proto=17) / Raw(UDP_FROM_53_TO_5005), "pass_allowed", 3, "fragment"))
case("v4_nonfirst_fragment_passes", "a non-first fragment has no ports: bytes that look like UDP from 53 to a "
     "blocked port are payload, and fragments = pass",
     frame(v4(CLIENT, OPEN, flags="MF", frag=100, proto=17) / Raw(UDP_FROM_53_TO_5005), "pass_allowed", 1, "fragment"))
case("v4_last_fragment_is_nonfirst", "the last fragment (no MF, offset > 0) is non-first",
     frame(v4(CLIENT, NOFRAG, frag=185, proto=17) / Raw(bytes(40)), "drop_fragment", 3, "fragment"))
case("v4_nonfirst_fragment_dropped", "fragments = drop",
     frame(v4(CLIENT, NOFRAG, flags="MF", frag=1, proto=17) / Raw(bytes(40)), "drop_fragment", 3, "fragment"))
case("v4_fragment_offset_top_bit", "offset 4096 (the top bit of the 13-bit field) is non-first",
     frame(v4(CLIENT, NOFRAG, frag=4096, proto=17) / Raw(bytes(40)), "drop_fragment", 3, "fragment"))
case("v4_nonfirst_fragment_port_specific_only", "non-first fragments match only any-port VIPs: games has none",
     frame(v4(CLIENT, GAMES, frag=100, proto=6) / Raw(bytes(40)), "pass_allowed", 0, "fragment"))
case("v4_nonfirst_fragment_any_port_owner", "non-first fragments go to the address's any-port VIP (rest, not web)",
     frame(v4(CLIENT, WEB_AND_REST, frag=100, proto=6) / Raw(bytes(40)), "pass_allowed", 7, "fragment"))
case("fragment_rate_hard_cap", "fragments = limit with burst 1: the second non-first fragment is over",
     frame(v4(CLIENT, FRAGCAP, flags="MF", frag=100, proto=17) / Raw(bytes(40)), "pass_allowed", 13, "fragment"),
     frame(v4(CLIENT, FRAGCAP, flags="MF", frag=105, proto=17) / Raw(bytes(40)), "drop_fragment", 13, "fragment"))
case("v6_first_fragment_has_ports", "an IPv6 first fragment (M, offset 0) carries the UDP header: port block applies",
     frame(v6(CLIENT6, OPEN6) / IPv6ExtHdrFragment(m=1, offset=0, id=7, nh=17) / Raw(UDP_FROM_53_TO_5005),
           "drop_port_block", 1, "fragment"))
case("v6_nonfirst_fragment_passes", "an IPv6 non-first fragment has no ports",
     frame(v6(CLIENT6, OPEN6) / IPv6ExtHdrFragment(m=1, offset=100, id=7, nh=17) / Raw(UDP_FROM_53_TO_5005),
           "pass_allowed", 1, "fragment"))
case("v6_nonfirst_fragment_dropped", "fragments = drop, IPv6",
     frame(v6(CLIENT6, NOFRAG6) / IPv6ExtHdrFragment(m=0, offset=50, id=7, nh=17) / Raw(bytes(40)),
           "drop_fragment", 3, "fragment"))

# In cookie mode, TCP fragments are drop_bad_cookie (issue 8: no server needs
# them before a connection exists); a first fragment is a segment of no
# connection, a SYN in one cannot be answered.
case("cookie_v4_nonfirst_tcp_fragment", "SYN-cookie mode: a non-first TCP fragment is drop_bad_cookie",
     frame(v4(CLIENT, COOKIES, flags="MF", frag=100, proto=6) / Raw(bytes(40)), "drop_bad_cookie", 4, "fragment"))
case("cookie_v6_nonfirst_tcp_fragment", "SYN-cookie mode: a non-first IPv6 TCP fragment is drop_bad_cookie",
     frame(v6(CLIENT6, COOKIES6) / IPv6ExtHdrFragment(m=0, offset=100, id=9, nh=6) / Raw(bytes(40)),
           "drop_bad_cookie", 4, "fragment"))
case("cookie_v4_first_fragment_syn", "SYN-cookie mode: a SYN in a fragment cannot be answered",
     frame(v4(CLIENT, COOKIES, flags="MF", proto=6) / Raw(raw(TCP(sport=40000, dport=80, flags="S", chksum=0))
                                                         + bytes(16)), "drop_bad_cookie", 4, "fragment"))
case("cookie_v4_first_fragment_ack", "SYN-cookie mode: an ACK in a first fragment belongs to no connection",
     frame(v4(CLIENT, COOKIES, flags="MF", proto=6) / Raw(raw(TCP(sport=40000, dport=80, flags="A", chksum=0))
                                                         + bytes(16)), "drop_bad_cookie", 4, "fragment"))
case("nonfirst_tcp_fragment_without_cookies", "without cookie mode a non-first TCP fragment just passes",
     frame(v4(CLIENT, OPEN, frag=100, proto=6) / Raw(bytes(40)), "pass_allowed", 1, "fragment"))

# --- VLAN tags --------------------------------------------------------------------

case("vlan_8021q_port_block", "one 802.1Q tag: the IPv4 behind it is parsed",
     frame(eth() / Dot1Q(vlan=10) / IP(src=CLIENT, dst=OPEN) / UDP(sport=40000, dport=5005), "drop_port_block", 1))
case("vlan_qinq_cookie_answer", "802.1ad + 802.1Q: an IPv6 SYN behind two tags is answered",
     frame(eth() / Dot1AD(vlan=20) / Dot1Q(vlan=10) / IPv6(src=CLIENT6, dst=COOKIES6)
           / TCP(sport=40000, dport=80, flags="S"), "answer_syn_cookie", 4, "tcp_syn"))
case("vlan_qinq_8021q_outer", "two 802.1Q tags (0x8100 twice) are two tags",
     frame(eth() / Dot1Q(vlan=10) / Dot1Q(vlan=11) / IP(src=TENANT_BLOCKED, dst=OPEN) / ICMP(),
           "drop_tenant_block", 1))
case("vlan_three_tags", "more than 2 VLAN tags: drop_malformed, IP unread, tenant 0",
     frame(eth() / Dot1AD(vlan=20) / Dot1Q(vlan=10) / Dot1Q(vlan=11) / IP(src=CLIENT, dst=OPEN) / ICMP(),
           "drop_malformed", 0))
case("vlan_truncated_tag", "a frame that ends inside its VLAN tag",
     frame(raw(eth() / Dot1Q(vlan=10) / IP(src=CLIENT, dst=OPEN))[:16], "drop_malformed", 0))

# --- IPv4 options -------------------------------------------------------------------

ROUTER_ALERT = b"\x94\x04\x00\x00"
case("v4_options_ports_after_options", "IHL 6 (router alert): the UDP header after the options is read",
     frame(v4(CLIENT, OPEN, options=[Raw(ROUTER_ALERT)]) / UDP(sport=40000, dport=5005), "drop_port_block", 1))
case("v4_options_40_bytes", "IHL 15 (40 bytes of options): amplification source port after them",
     frame(v4(CLIENT, OPEN, options=[Raw(b"\x01" * 36 + b"\x00" * 4)]) / UDP(sport=1900, dport=40000),
           "drop_amplification", 1))
case("v4_options_cookie_answer", "a SYN with IPv4 options is answerable (only fragments and IPv6 extension "
     "headers are not)",
     frame(v4(CLIENT, COOKIES, options=[Raw(ROUTER_ALERT)]) / TCP(sport=40000, dport=80, flags="S"),
           "answer_syn_cookie", 4, "tcp_syn"))
case("v4_ihl_below_5", "IHL 4 is inconsistent; the fixed header is readable, so the tenant is known",
     frame(v4(CLIENT, OPEN, ihl=4) / UDP(sport=40000, dport=80), "drop_malformed", 1))
case("v4_options_past_frame", "IHL 15 in a frame with 10 bytes after the fixed header",
     frame(raw(v4(CLIENT, OPEN, ihl=15, len=60, proto=17))[:14 + 20] + bytes(10), "drop_malformed", 1))

# --- IPv6 extension headers ---------------------------------------------------------

case("v6_hop_by_hop_port_block", "hop-by-hop options, then UDP to a blocked port",
     frame(v6(CLIENT6, OPEN6) / IPv6ExtHdrHopByHop() / UDP(sport=40000, dport=5005), "drop_port_block", 1))
case("v6_three_headers_amplification", "hop-by-hop, routing, destination options, then UDP from port 53",
     frame(v6(CLIENT6, OPEN6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
           / UDP(sport=53, dport=40000), "drop_amplification", 1))
case("v6_six_headers", "a chain of 6 extension headers is walked to the TCP header",
     frame(v6(CLIENT6, OPEN6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
           / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / TCP(sport=40000, dport=25, flags="S"),
           "drop_port_block", 1))
case("v6_seven_headers", "an extension chain longer than 6 is drop_malformed",
     frame(v6(CLIENT6, OPEN6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
           / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
           / UDP(sport=40000, dport=80), "drop_malformed", 1))
case("v6_extension_header_past_frame", "a destination-options header whose length runs past the frame",
     frame(raw(v6(CLIENT6, OPEN6) / IPv6ExtHdrDestOpt(len=4) / UDP(sport=40000, dport=80))[:14 + 40 + 16],
           "drop_malformed", 1))
case("v6_cookie_syn_with_extension_header", "SYN-cookie mode: a SYN behind IPv6 extension headers cannot be answered",
     frame(v6(CLIENT6, COOKIES6) / IPv6ExtHdrDestOpt() / TCP(sport=40000, dport=80, flags="S"),
           "drop_bad_cookie", 4, "tcp_syn"))

# --- ICMP errors quoting an inner header: the outer packet decides -------------------

case("icmp_error_quoting_amplification_udp", "port unreachable quoting UDP from 53 to a blocked port: the outer is "
     "ICMP, neither the quoted ports nor the quoted source count",
     frame(v4(CLIENT, OPEN) / ICMP(type=3, code=3) / IP(src=OPEN, dst=CLIENT) / UDP(sport=53, dport=5005),
           "pass_allowed", 1, "icmp"))
case("icmp_error_quoting_blocked_source", "the quoted header's source is on the global list; the outer source is not",
     frame(v4(CLIENT, OPEN) / ICMP(type=11, code=0) / IP(src=GLOBAL_BLOCKED, dst=CLIENT) / TCP(sport=1, dport=2),
           "pass_allowed", 1, "icmp"))
case("icmp_error_from_blocked_source", "the outer source is on the global list",
     frame(v4(GLOBAL_BLOCKED, OPEN) / ICMP(type=3, code=1) / IP(src=OPEN, dst=CLIENT) / UDP(sport=40000, dport=80),
           "drop_global_block", 1))
case("icmp_error_quoting_syn_in_cookie_mode", "an ICMP error quoting a SYN is no SYN to answer",
     frame(v4(CLIENT, COOKIES) / ICMP(type=3, code=4) / IP(src=CLIENT, dst=COOKIES) / TCP(sport=40000, dport=80,
                                                                                          flags="S"),
           "pass_allowed", 4, "icmp"))
case("icmp_error_quoting_nonfirst_fragment", "an error quoting a fragment is not itself a fragment",
     frame(v4(CLIENT, NOFRAG) / ICMP(type=3, code=3) / IP(src=NOFRAG, dst=CLIENT, frag=100, proto=17) / Raw(bytes(8)),
           "pass_allowed", 3, "icmp"))
case("icmpv6_packet_too_big_quoting_syn", "ICMPv6 packet-too-big quoting a SYN to a cookie tenant",
     frame(v6(CLIENT6, COOKIES6) / ICMPv6PacketTooBig(mtu=1280) / IPv6(src=COOKIES6, dst=CLIENT6)
           / TCP(sport=80, dport=40000, flags="SA"), "pass_allowed", 4, "icmp"))
case("icmpv6_echo", "ICMPv6 echo is class icmp",
     frame(v6(CLIENT6, OPEN6) / ICMPv6EchoRequest(), "pass_allowed", 1, "icmp"))

# --- length fields: the IP length, not the frame, says where the packet ends -------
# Ethernet pads frames to 60 bytes; what follows the IP packet is not part of it.

PADDING_SYN = raw(TCP(sport=40000, dport=80, flags="S", chksum=0))

case("padding_after_udp", "a short UDP datagram padded to 60 bytes: classified as the UDP it is",
     frame(padded(raw(v4(CLIENT, OPEN) / UDP(sport=40000, dport=80)), bytes(18)), "pass_allowed", 1, "udp"))
case("padding_after_syn", "a SYN padded to 60 bytes is answered (the padding is not TCP options or data)",
     frame(padded(raw(v4(CLIENT, COOKIES) / TCP(sport=40000, dport=80, flags="S")), b"\xff" * 6),
           "answer_syn_cookie", 4, "tcp_syn"))
case("syn_hidden_in_v4_padding", "an IPv4 packet of total length 20 (no TCP header inside it) with a SYN in the "
     "Ethernet padding: the TCP header is truncated by the IP length, so drop_malformed, never a cookie answer",
     frame(padded(raw(v4(CLIENT, COOKIES, proto=6, len=20)), PADDING_SYN + bytes(6)), "drop_malformed", 4))
case("syn_hidden_in_v6_padding", "an IPv6 packet of payload length 0 announcing TCP, with a SYN after it",
     frame(padded(raw(v6(CLIENT6, COOKIES6, nh=6, plen=0)), PADDING_SYN), "drop_malformed", 4))
case("syn_hidden_in_vlan_padding", "the same behind an 802.1Q tag",
     frame(padded(raw(eth() / Dot1Q(vlan=10) / IP(src=CLIENT, dst=COOKIES, proto=6, len=20)), PADDING_SYN),
           "drop_malformed", 4))
case("udp_header_in_v6_padding_after_extension", "IPv6 payload length covers the hop-by-hop header only; the UDP "
     "header after it is padding",
     frame(padded(raw(v6(CLIENT6, OPEN6, plen=8) / IPv6ExtHdrHopByHop(nh=17)), raw(UDP(sport=53, dport=5005))),
           "drop_malformed", 1))
case("tcp_options_in_padding", "a TCP data offset (60 bytes) beyond the IP length though within the frame",
     frame(padded(raw(v4(CLIENT, OPEN, len=40) / TCP(sport=40000, dport=80, dataofs=15, flags="S")), bytes(40)),
           "drop_malformed", 1))
case("v4_total_length_beyond_frame", "IPv4 total length longer than the frame: drop_malformed",
     frame(v4(CLIENT, OPEN, len=1500) / UDP(sport=40000, dport=80), "drop_malformed", 1))
case("v4_total_length_beyond_frame_vlan", "the same behind an 802.1Q tag",
     frame(eth() / Dot1Q(vlan=10) / IP(src=CLIENT, dst=OPEN, len=200) / UDP(sport=40000, dport=80),
           "drop_malformed", 1))
case("v4_total_length_one_beyond", "total length one byte past the frame",
     frame(v4(CLIENT, OPEN, len=20 + 8 + 11) / UDP(sport=40000, dport=80, len=18) / Raw(bytes(10)),
           "drop_malformed", 1))
case("v4_total_length_below_header", "total length 19, shorter than the IPv4 header itself",
     frame(v4(CLIENT, OPEN, len=19) / UDP(sport=40000, dport=80), "drop_malformed", 1))
case("v4_total_length_below_options", "IHL 6 (24 bytes) but total length 20",
     frame(v4(CLIENT, OPEN, len=20, options=[Raw(ROUTER_ALERT)]) / UDP(sport=40000, dport=80), "drop_malformed", 1))
case("v6_payload_length_beyond_frame", "IPv6 payload length longer than the frame: drop_malformed",
     frame(v6(CLIENT6, OPEN6, plen=1000) / UDP(sport=40000, dport=80), "drop_malformed", 1))
case("v6_payload_length_beyond_frame_qinq", "the same behind two tags",
     frame(eth() / Dot1AD(vlan=20) / Dot1Q(vlan=10) / IPv6(src=CLIENT6, dst=OPEN6, plen=100)
           / UDP(sport=40000, dport=80), "drop_malformed", 1))
case("v4_fragment_total_length_beyond_frame", "a non-first fragment whose total length runs past the frame",
     frame(v4(CLIENT, OPEN, frag=100, proto=17, len=600) / Raw(bytes(40)), "drop_malformed", 1))


def main() -> None:
    document = {
        "about": "Oracle frames built with scapy by make_frames.py; the expected reason, tenant, XDP verdict and "
                 "(where the README defines it) traffic class come from the README's rules, not from the code.",
        "policy": "policy.toml",
        "cases": CASES,
    }
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    OUT.write_text(json.dumps(document, indent=1) + "\n")
    print(f"{OUT}: {len(CASES)} cases, {sum(len(c['frames']) for c in CASES)} frames")


if __name__ == "__main__":
    main()
