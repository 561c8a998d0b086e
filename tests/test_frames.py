"""Checks the frame builders in frames.py against an independent decoder, tshark."""

import ipaddress
import json
import os
import re
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings

try:  # tests/ may or may not be a package
    from tests import frames
except ImportError:
    import frames

TSHARK = "/usr/bin/tshark"
PREFS = ("ip.check_checksum:TRUE", "tcp.check_checksum:TRUE", "udp.check_checksum:TRUE",
         "sctp.checksum:CRC 32c",
         # A lone fragment must be dissected as itself, not held for reassembly.
         "ip.defragment:FALSE", "ipv6.defragment:FALSE",
         # Unrelated frames share 5-tuples; sequence analysis would only add noise.
         "tcp.analyze_sequence_numbers:FALSE")
# Everything else gets disabled: random payload bytes sent to port 53 or 443
# would otherwise be dissected as DNS or TLS and reported malformed.
BUILT_PROTOCOLS = re.compile(r"_ws\..*|frame|eth|ethertype|vlan|ieee8021ad|ip|ipv6(\..*)?"
                             r"|tcp(\.options\..*)?|udp|icmp|icmpv6|gre|esp|sctp|arp|lldp|data")
PI_ERROR = 0x00800000
L4_NAMES = {frames.IPPROTO_TCP: "tcp", frames.IPPROTO_UDP: "udp", frames.IPPROTO_SCTP: "sctp",
            frames.IPPROTO_ICMP: "icmp", frames.IPPROTO_ICMPV6: "icmpv6",
            frames.IPPROTO_GRE: "gre", frames.IPPROTO_ESP: "esp"}
EXT_NAMES = {frames.IPV6_HOPOPTS: "ipv6.hopopts", frames.IPV6_ROUTING: "ipv6.routing",
             frames.IPV6_FRAGMENT: "ipv6.fraghdr", frames.IPV6_DSTOPTS: "ipv6.dstopts"}


def write_pcap(path, packets):
    """Classic little-endian pcap, microsecond timestamps, linktype 1 (Ethernet)."""
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, frame in enumerate(packets):
            out.write(struct.pack("<IIII", i, 0, len(frame), len(frame)) + frame)


@pytest.fixture(scope="session")
def wireshark_config(tmp_path_factory):
    if not os.access(TSHARK, os.X_OK):
        pytest.fail(f"{TSHARK} not found: these tests need tshark (apt-get install tshark)")
    listing = subprocess.run([TSHARK, "-G", "protocols"], capture_output=True, text=True,
                             check=True).stdout
    config = tmp_path_factory.mktemp("wireshark")
    (config / "disabled_protos").write_text("".join(
        name + "\n" for name in (line.split("\t")[2] for line in listing.splitlines())
        if not BUILT_PROTOCOLS.fullmatch(name)))
    return config


@pytest.fixture
def decode(tmp_path, wireshark_config):
    """Frames in, one tshark JSON layer tree per frame out."""
    def run(packets):
        pcap = tmp_path / "frames.pcap"
        write_pcap(pcap, packets)
        command = [TSHARK, "-r", str(pcap), "-T", "json", "--no-duplicate-keys"]
        for pref in PREFS:
            command += ["-o", pref]
        env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(wireshark_config))
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        layers = [p["_source"]["layers"] for p in json.loads(result.stdout)]
        assert len(layers) == len(packets)
        return layers
    return run


def fields(node):
    """(name, value) of every field in a tshark JSON tree, in packet order."""
    for name, value in node.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                yield from fields(item)
            else:
                yield name, item


def values(layers, name):
    return [value for key, value in fields(layers) if key == name]


def first(layers, name):
    found = values(layers, name)
    return found[0] if found else None


def problems(layers):
    """Error-level expert messages (malformed, bogus lengths) and bad checksums."""
    expert = zip(values(layers, "_ws.expert.message"), values(layers, "_ws.expert.severity"))
    found = [message for message, severity in expert if int(severity) >= PI_ERROR]
    found += [f"bad {name}" for name, value in fields(layers)
              if name.endswith("checksum.status") and value == "0"]
    return found


def test_checksum_matches_rfc1071_example():
    assert frames.checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF
    assert frames.checksum(b"\x01") == ~0x0100 & 0xFFFF  # odd length pads with a zero byte


def test_ipv6_extension_headers_are_chained_and_padded():
    packet = frames.ipv6("2001:db8::1", "2001:db8::2", 17, b"",
                         [(0, b""), (60, bytes(7)), frames.ipv6_fragment_header(5, True, 7)])
    assert packet[6] == 0  # IPv6 header -> hop-by-hop
    assert packet[40:42] == bytes([60, 0])  # -> destination options, 8 bytes
    assert packet[48:50] == bytes([44, 1])  # -> fragment, 16 bytes
    assert packet[64:72] == struct.pack("!BBHI", 17, 0, 5 << 3 | 1, 7)
    assert struct.unpack("!H", packet[4:6])[0] == len(packet) - 40


# What tshark must report for each hand-picked case (first occurrence of a field).
CASE_FIELDS = {
    "ipv4_tcp_syn": {"ip.src": "192.0.2.1", "ip.dst": "198.51.100.7", "tcp.dstport": "443",
                     "tcp.flags": "0x0002", "tcp.options.mss_val": "1460"},
    "ipv4_tcp_synack_vlan": {"vlan.id": "100", "tcp.srcport": "443", "tcp.flags": "0x0012"},
    "ipv4_tcp_rst_options": {"ip.hdr_len": "24", "ip.opt.ra": "0", "tcp.flags": "0x0004"},
    "ipv4_udp_dns": {"ip.dst": "203.0.113.53", "udp.dstport": "53", "udp.length": "20"},
    "ipv4_icmp_echo": {"icmp.type": "8", "icmp.ident": "7", "icmp.checksum.status": "1"},
    "ipv4_first_fragment": {"ip.flags.mf": "1", "ip.frag_offset": "0", "ip.id": "0x0063",
                            "udp.dstport": "53"},
    "ipv4_nonfirst_fragment": {"ip.flags.mf": "0", "ip.frag_offset": "185",
                               "frame.protocols": "eth:ethertype:ip:data"},
    "qinq_ipv4_udp": {"ieee8021ad.id": "10", "vlan.id": "20", "udp.dstport": "8080"},
    "ipv4_gre": {"gre.proto": "0x0800", "frame.protocols": "eth:ethertype:ip:gre:ip:icmp"},
    "ipv6_tcp_syn": {"ipv6.src": "2001:db8::1", "ipv6.dst": "2001:db8:1::53",
                     "tcp.dstport": "443", "tcp.checksum.status": "1"},
    "ipv6_udp_hbh_frag_first": {
        "frame.protocols": "eth:ethertype:ipv6:ipv6.hopopts:ipv6.fraghdr:udp:data",
        "ipv6.fraghdr.offset": "0", "ipv6.fraghdr.more": "1", "ipv6.fraghdr.ident": "0x00abcdef",
        "udp.dstport": "53"},
    "ipv6_nonfirst_fragment": {"ipv6.fraghdr.offset": "181", "ipv6.fraghdr.more": "0",
                               "frame.protocols": "eth:ethertype:ipv6:ipv6.fraghdr:data"},
    "ipv6_ext_chain_tcp": {
        "frame.protocols":
            "eth:ethertype:ipv6:ipv6.hopopts:ipv6.dstopts:ipv6.routing:ipv6.dstopts:tcp",
        "tcp.dstport": "22", "tcp.checksum.status": "1"},
    "ipv6_icmpv6_echo": {"ieee8021ad.id": "300", "icmpv6.type": "128",
                         "icmpv6.checksum.status": "1"},
    "ipv6_no_next_header": {"ipv6.nxt": "59", "ipv6.plen": "0"},
    "arp": {"arp.opcode": "1", "arp.src.proto_ipv4": "192.0.2.1",
            "arp.dst.proto_ipv4": "198.51.100.7"},
    "lldp": {"frame.protocols": "eth:ethertype:lldp", "lldp.time_to_live": "120"},
    "three_vlan_tags": {"frame.protocols": "eth:ethertype:ieee8021ad:ethertype:vlan:ethertype:"
                                           "vlan:ethertype:ip:udp"},
}
# The broken cases tshark can see are broken, and how it says so.
CASE_ERRORS = {
    "empty": "Malformed Packet",
    "truncated_ethernet": "Malformed Packet",
    "truncated_ipv4_header": "IPv4 total length exceeds packet length",
    "ipv4_ihl_too_small": "Bogus IP header length",
    "tcp_data_offset_too_small": "Bogus TCP header length",
}


def test_cases_decode_as_built(decode):
    assert len(frames.CASES) >= 12 and frames.MALFORMED_CASES <= set(frames.CASES)
    for (name, frame), layers in zip(frames.CASES.items(), decode(list(frames.CASES.values()))):
        found = problems(layers)
        if name in CASE_ERRORS:
            assert any(CASE_ERRORS[name] in p for p in found), (name, found)
        else:
            assert not found, (name, found)
        for field, expected in CASE_FIELDS.get(name, {}).items():
            assert first(layers, field) == expected, (name, field, frame.hex())


def draw_examples(strategy, count):
    """`count` deterministic examples, drawn in one go so tshark runs once."""
    drawn = []

    @settings(max_examples=count, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example):
        drawn.append(example)

    collect()
    return drawn


def mismatches(frame, layers):
    """How tshark's reading of `frame` differs from what was built."""
    wrong = problems(layers)
    protocols = first(layers, "frame.protocols").split(":")
    tags = [(k, int(v)) for k, v in fields(layers) if k in ("ieee8021ad.id", "vlan.id")]
    outer = "ieee8021ad.id" if len(frame.vlans) == 2 else "vlan.id"
    if tags != [(outer if i == 0 else "vlan.id", vid) for i, vid in enumerate(frame.vlans)]:
        wrong.append(f"VLAN tags {tags}")
    if frame.src is None:
        return wrong
    ip = "ip" if frame.ethertype == frames.ETH_P_IP else "ipv6"
    for end in ("src", "dst"):
        if ipaddress.ip_address(first(layers, f"{ip}.{end}")) != ipaddress.ip_address(
                getattr(frame, end)):
            wrong.append(f"{ip}.{end} {first(layers, f'{ip}.{end}')}")
    if [p for p in protocols if p in EXT_NAMES.values()] != [EXT_NAMES[t] for t, _ in frame.ext]:
        wrong.append(f"extension headers {protocols}")
    if frame.frag_offset is not None:
        offset_field = "ip.frag_offset" if ip == "ip" else "ipv6.fraghdr.offset"
        if first(layers, offset_field) != str(frame.frag_offset):
            wrong.append(f"{offset_field} {first(layers, offset_field)}")
    if ip == "ip" and first(layers, "ip.checksum.status") != "1":
        wrong.append("IPv4 checksum not verified")
    if frame.l4 is not None:
        l4 = L4_NAMES[frame.proto]
        if l4 not in protocols:
            wrong.append(f"no {l4} in {protocols}")
        if frame.sport is not None and (first(layers, f"{l4}.srcport"), first(
                layers, f"{l4}.dstport")) != (str(frame.sport), str(frame.dport)):
            wrong.append(f"{l4} ports {first(layers, f'{l4}.srcport')}")
        # Checksums of fragments cover the whole datagram, so tshark can't verify them.
        status = first(layers, f"{l4}.checksum.status")
        if frame.frag_offset is None and l4 not in ("gre", "esp") and status != "1":
            wrong.append(f"{l4} checksum status {status}")
    return wrong


def tshark_cannot_decode(frame) -> bool:
    """tshark 4.0 raises an exception (reported as a malformed packet) on a
    valid IPv6 hop-by-hop or destination-options header that ends the packet
    (next header 59) with a Pad1 option as its last byte. Such frames are
    still held to the reference by the datapath tests; only tshark's decode
    of them is not trusted here."""
    if frame.ethertype != frames.ETH_P_IPV6 or frame.proto != frames.IPPROTO_NONE or not frame.ext:
        return False
    last_type, offset = frame.ext[-1]
    if last_type not in (frames.IPV6_HOPOPTS, frames.IPV6_DSTOPTS):
        return False
    header_end = offset + (frame.data[offset + 1] + 1) * 8
    if header_end != frame.end:
        return False
    pos, last_option = offset + 2, None
    while pos < header_end:            # option TLVs; type 0 is Pad1, a lone byte
        last_option = frame.data[pos]
        pos += 1 if last_option == 0 else 2 + frame.data[pos + 1]
    return last_option == 0


def test_drawn_frames_decode_as_built(decode):
    drawn = draw_examples(frames.annotated_frames(), 400)
    failures = [(f.data.hex(), f, wrong)
                for f, layers in zip(drawn, decode([f.data for f in drawn]))
                if (wrong := mismatches(f, layers)) and not tshark_cannot_decode(f)]
    assert not failures, f"{len(failures)} of {len(drawn)} frames, e.g. {failures[:3]}"

    # The mix the datapath tests rely on really is drawn. Hypothesis mixes
    # literals from the imported modules into its draws, so the mix is
    # checked over a larger draw than the tshark one.
    drawn = drawn + draw_examples(frames.annotated_frames(), 1000)
    assert {len(f.vlans) for f in drawn} == {0, 1, 2}
    assert {f.ethertype for f in drawn} == {frames.ETH_P_IP, frames.ETH_P_IPV6,
                                            frames.ETH_P_ARP, frames.ETH_P_LLDP}
    assert set(L4_NAMES) | {frames.IPPROTO_NONE} <= {f.proto for f in drawn}
    assert {f.frag_offset == 0 for f in drawn if f.frag_offset is not None} == {True, False}
    assert max(len(f.ext) for f in drawn) >= 5


def test_malformed_frames_are_damaged(decode):
    drawn = draw_examples(frames.malformed_frames(), 300)
    assert min(map(len, drawn)) == 0
    assert any(0 < len(f) < 14 for f in drawn)
    # Some damage (a cut into Ethernet padding, a third VLAN tag, a wrong IP
    # version tshark skips) is invisible to tshark; most of it must not be.
    flagged = sum(bool(problems(layers)) for layers in decode(drawn))
    assert flagged > len(drawn) // 2, f"only {flagged} of {len(drawn)} flagged"
