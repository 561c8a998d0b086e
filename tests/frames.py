"""Raw Ethernet frames built byte by byte with struct, with hypothesis strategies
producing well-formed and deliberately damaged frames for datapath tests."""

import ipaddress
import struct
from dataclasses import dataclass

from hypothesis import strategies as st

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_LLDP = 0x88CC
TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_GRE = 47
IPPROTO_ESP = 50
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_SCTP = 132

IPV6_HOPOPTS = 0
IPV6_ROUTING = 43
IPV6_FRAGMENT = 44
IPV6_DSTOPTS = 60
IPV6_EXT_HEADERS = (IPV6_HOPOPTS, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_DSTOPTS)

SRC_MAC = "02:00:00:00:00:01"
DST_MAC = "02:00:00:00:00:02"

# Option bodies that decoders and kernels accept as-is.
IPV4_OPT_NOP = b"\x01"
IPV4_OPT_ROUTER_ALERT = b"\x94\x04\x00\x00"
IPV4_OPT_RECORD_ROUTE = b"\x07\x07\x04" + bytes(4)  # one empty slot
IPV6_OPT_ROUTER_ALERT = b"\x05\x02\x00\x00"
TCP_OPT_MSS = b"\x02\x04\x05\xb4"
TCP_OPT_SACK_PERM = b"\x04\x02"
TCP_OPT_WSCALE = b"\x03\x03\x07"
TCP_OPT_TIMESTAMP = b"\x08\x0a" + bytes(8)
TCP_OPT_NOP = b"\x01"

_TCP_FLAG_BITS = {flag: 1 << bit for bit, flag in enumerate("FSRPAUEC")}


# --- checksums -------------------------------------------------------------

def checksum(data):
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _packed(address):
    return ipaddress.ip_address(address).packed


def _pseudo_header(src, dst, proto, length):
    src, dst = _packed(src), _packed(dst)
    if len(src) == 16:
        return struct.pack("!16s16sI3xB", src, dst, length, proto)
    return struct.pack("!4s4sxBH", src, dst, proto, length)


def _set_checksum(segment, at, value):
    return segment[:at] + struct.pack("!H", value) + segment[at + 2:]


def _l4_checksummed(segment, at, proto, src, dst):
    # Without the addresses the pseudo-header is unknown: leave the field zero.
    if src is None or dst is None:
        return segment
    value = checksum(_pseudo_header(src, dst, proto, len(segment)) + segment)
    if proto == IPPROTO_UDP and value == 0:
        value = 0xFFFF  # a zero UDP checksum means "not computed"
    return _set_checksum(segment, at, value)


def _pad(data, unit, filler=b"\0"):
    return data + filler * (-len(data) % unit)


# --- layer 2 -----------------------------------------------------------------

def _mac(mac):
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return raw


def ethernet(payload, ethertype, vlans=(), src_mac=SRC_MAC, dst_mac=DST_MAC):
    """Ethernet II frame. `vlans` is outermost first; each entry is a VLAN id
    or a (tpid, vid) pair. Untyped stacks use 802.1ad outside, 802.1Q inside."""
    tags = b""
    for i, vlan in enumerate(vlans):
        if isinstance(vlan, tuple):
            tpid, vid = vlan
        else:
            tpid, vid = (TPID_8021AD if i == 0 and len(vlans) > 1 else TPID_8021Q), vlan
        if not 0 <= vid <= 0xFFF:
            raise ValueError(f"VLAN id {vid} out of range")
        tags += struct.pack("!HH", tpid, vid)
    return _mac(dst_mac) + _mac(src_mac) + tags + struct.pack("!H", ethertype) + payload


def arp(sender_ip, target_ip, sender_mac=SRC_MAC, op=1):
    """ARP request (op 1) or reply (op 2) for IPv4 over Ethernet."""
    target_mac = "00:00:00:00:00:00" if op == 1 else DST_MAC
    return (struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op)
            + _mac(sender_mac) + _packed(sender_ip) + _mac(target_mac) + _packed(target_ip))


def lldp(chassis_mac=SRC_MAC, port=b"eth0", ttl=120):
    """LLDPDU with just the mandatory TLVs: chassis id, port id, TTL, end."""
    def tlv(kind, value):
        return struct.pack("!H", kind << 9 | len(value)) + value
    return (tlv(1, b"\x04" + _mac(chassis_mac)) + tlv(2, b"\x07" + port)
            + tlv(3, struct.pack("!H", ttl)) + tlv(0, b""))


# --- layer 3 -----------------------------------------------------------------

def ipv4(src, dst, proto, payload, options=b"", frag_offset=0, more_fragments=False,
         ttl=64, ident=0):
    """IPv4 packet; `frag_offset` is in 8-byte units, options are padded with EOL."""
    options = _pad(options, 4)
    if len(options) > 40:
        raise ValueError("IPv4 options are limited to 40 bytes")
    if not 0 <= frag_offset < 1 << 13:
        raise ValueError(f"fragment offset {frag_offset} out of range")
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s", 4 << 4 | ihl, 0, ihl * 4 + len(payload), ident,
        (0x2000 if more_fragments else 0) | frag_offset, ttl, proto, 0,
        _packed(src), _packed(dst)) + options
    return _set_checksum(header, 10, checksum(header)) + payload


def _pad_options(length):
    if length == 0:
        return b""
    if length == 1:
        return b"\x00"  # Pad1
    return bytes([1, length - 2]) + bytes(length - 2)  # PadN


def _ipv6_ext_header(header_type, next_header, body):
    if header_type == IPV6_FRAGMENT:
        if len(body) != 6:
            raise ValueError("fragment header body must be 6 bytes; use ipv6_fragment_header()")
        return bytes([next_header, 0]) + body
    if header_type not in IPV6_EXT_HEADERS:
        raise ValueError(f"{header_type} is not an IPv6 extension header")
    # Option headers must stay a valid TLV sequence, so they get Pad1/PadN;
    # routing type-specific data is just zero-filled.
    padding = -(len(body) + 2) % 8
    if header_type == IPV6_ROUTING:
        body += bytes(padding)
    else:
        body += _pad_options(padding)
    return bytes([next_header, (len(body) + 2 - 8) // 8]) + body


def ipv6_fragment_header(offset_units, more, ident):
    """(44, body) entry for ipv6(ext_headers=...)."""
    return IPV6_FRAGMENT, struct.pack("!HI", offset_units << 3 | bool(more), ident)


def ipv6_routing_header(routing_type=253, segments_left=0, data=bytes(4)):
    """(43, body) entry for ipv6(ext_headers=...). The default is an RFC 4727
    experimental type with no segments left, so the destination stays final."""
    return IPV6_ROUTING, bytes([routing_type, segments_left]) + data


def ipv6(src, dst, next_header, payload, ext_headers=(), hop_limit=64):
    """IPv6 packet. `ext_headers` is a list of (header_type, body), body being
    everything after the next-header and length bytes; bodies are padded to
    8-byte multiples and chained in order before `next_header`."""
    chain = b""
    # Build back to front: each header names the type of the one after it.
    for header_type, body in reversed(list(ext_headers)):
        chain = _ipv6_ext_header(header_type, next_header, body) + chain
        next_header = header_type
    header = struct.pack("!IHBB16s16s", 6 << 28, len(chain) + len(payload), next_header,
                         hop_limit, _packed(src), _packed(dst))
    return header + chain + payload


# --- layer 4 -----------------------------------------------------------------

def tcp(sport, dport, flags="S", seq=0, ack=0, payload=b"", options=b"", window=65535,
        *, src=None, dst=None):
    """TCP segment; `flags` is letters from "FSRPAUEC". The checksum is filled
    in only when the IP addresses `src` and `dst` are given."""
    bits = 0
    for flag in flags:
        bits |= _TCP_FLAG_BITS[flag]
    options = _pad(options, 4)
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(options) // 4) << 4,
                         bits, window, 0, 0) + options
    return _l4_checksummed(header + payload, 16, IPPROTO_TCP, src, dst)


def udp(sport, dport, payload=b"", *, src=None, dst=None):
    """UDP datagram; checksummed when `src` and `dst` are given."""
    datagram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _l4_checksummed(datagram, 6, IPPROTO_UDP, src, dst)


def icmp_echo(ident, seq, payload=b"", reply=False):
    """ICMP echo request (or reply); its checksum needs no pseudo-header."""
    message = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload
    return _set_checksum(message, 2, checksum(message))


def icmpv6_echo(ident, seq, payload=b"", reply=False, *, src=None, dst=None):
    """ICMPv6 echo request (or reply); checksummed when `src` and `dst` are given."""
    message = struct.pack("!BBHHH", 129 if reply else 128, 0, 0, ident, seq) + payload
    return _l4_checksummed(message, 2, IPPROTO_ICMPV6, src, dst)


def gre(inner, protocol=ETH_P_IP):
    """Minimal GRE (no key, checksum or sequence) carrying `inner`."""
    return struct.pack("!HH", 0, protocol) + inner


def esp(spi, seq, payload=b""):
    """ESP header followed by opaque (notionally encrypted) bytes."""
    return struct.pack("!II", spi, seq) + payload


def sctp(sport, dport, vtag=0, chunks=b""):
    """SCTP common header with a CRC-32c, stored little-endian as on the wire."""
    packet = struct.pack("!HHII", sport, dport, vtag, 0) + chunks
    return packet[:8] + struct.pack("<I", _crc32c(packet)) + packet[12:]


# --- complete frames ------------------------------------------------------------

def ip_frame(src, dst, proto, payload, vlans=(), **ip_fields):
    """Ethernet frame around an IPv4 or IPv6 packet, picked by address family;
    `ip_fields` go to ipv4() or ipv6()."""
    if ipaddress.ip_address(src).version == 6:
        return ethernet(ipv6(src, dst, proto, payload, **ip_fields), ETH_P_IPV6, vlans)
    return ethernet(ipv4(src, dst, proto, payload, **ip_fields), ETH_P_IP, vlans)


def _require_family(version, *addresses):
    for address in addresses:
        if ipaddress.ip_address(address).version != version:
            raise ValueError(f"{address} is not an IPv{version} address")


def tcp_ipv4_frame(src, dst, sport, dport, flags="S", payload=b"", vlans=(), seq=0, ack=0,
                   tcp_options=b"", **ip_fields):
    _require_family(4, src, dst)
    segment = tcp(sport, dport, flags, seq, ack, payload, tcp_options, src=src, dst=dst)
    return ip_frame(src, dst, IPPROTO_TCP, segment, vlans, **ip_fields)


def tcp_ipv6_frame(src, dst, sport, dport, flags="S", payload=b"", vlans=(), seq=0, ack=0,
                   tcp_options=b"", **ip_fields):
    _require_family(6, src, dst)
    segment = tcp(sport, dport, flags, seq, ack, payload, tcp_options, src=src, dst=dst)
    return ip_frame(src, dst, IPPROTO_TCP, segment, vlans, **ip_fields)


def udp_ipv4_frame(src, dst, sport, dport, payload=b"", vlans=(), **ip_fields):
    _require_family(4, src, dst)
    return ip_frame(src, dst, IPPROTO_UDP, udp(sport, dport, payload, src=src, dst=dst),
                    vlans, **ip_fields)


def udp_ipv6_frame(src, dst, sport, dport, payload=b"", vlans=(), **ip_fields):
    _require_family(6, src, dst)
    return ip_frame(src, dst, IPPROTO_UDP, udp(sport, dport, payload, src=src, dst=dst),
                    vlans, **ip_fields)


def icmp_ipv4_frame(src, dst, ident=1, seq=1, payload=b"", vlans=(), **ip_fields):
    _require_family(4, src, dst)
    return ip_frame(src, dst, IPPROTO_ICMP, icmp_echo(ident, seq, payload), vlans, **ip_fields)


def icmpv6_frame(src, dst, ident=1, seq=1, payload=b"", vlans=(), **ip_fields):
    _require_family(6, src, dst)
    message = icmpv6_echo(ident, seq, payload, src=src, dst=dst)
    return ip_frame(src, dst, IPPROTO_ICMPV6, message, vlans, **ip_fields)


def ipv4_fragment_frame(src, dst, proto, payload, frag_offset, more_fragments=True, ident=1,
                        vlans=(), **ip_fields):
    """One IPv4 fragment; `payload` is this fragment's share of the datagram."""
    _require_family(4, src, dst)
    return ip_frame(src, dst, proto, payload, vlans, frag_offset=frag_offset,
                    more_fragments=more_fragments, ident=ident, **ip_fields)


def ipv6_fragment_frame(src, dst, next_header, payload, frag_offset, more_fragments=True,
                        ident=1, vlans=(), ext_headers=()):
    """One IPv6 fragment; `ext_headers` (the unfragmentable part) precede the fragment header."""
    _require_family(6, src, dst)
    chain = [*ext_headers, ipv6_fragment_header(frag_offset, more_fragments, ident)]
    return ip_frame(src, dst, next_header, payload, vlans, ext_headers=chain)


# --- hypothesis strategies ------------------------------------------------------

DOC_NETS_V4 = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24",
                                                  "203.0.113.0/24")]
PORTS = (22, 25, 53, 80, 443, 8080, 25565)


def _mostly(pool, anything):
    """Draw from `pool` three times in four, so lookups in small tables hit."""
    @st.composite
    def strategy(draw):
        return draw(anything) if draw(st.integers(0, 3)) == 3 else draw(pool)
    return strategy()


addresses_v4 = _mostly(
    st.builds(lambda net, host: str(net[host]), st.sampled_from(DOC_NETS_V4), st.integers(0, 255)),
    st.ip_addresses(v=4).map(str))
addresses_v6 = _mostly(
    st.builds(lambda subnet, host: str(ipaddress.IPv6Address(f"2001:db8:{subnet:x}::{host:x}")),
              st.integers(0, 3), st.integers(0, 255)),
    st.ip_addresses(v=6).map(str))
ports = _mostly(st.sampled_from(PORTS), st.integers(0, 65535))


@dataclass(frozen=True)
class Frame:
    """A built frame plus what went into it, for checking decoders and for damaging."""
    data: bytes
    ethertype: int
    vlans: tuple = ()
    src: str | None = None
    dst: str | None = None
    proto: int | None = None        # L4 protocol (IPv6: the last next-header)
    sport: int | None = None        # TCP/UDP/SCTP ports, when an L4 header is present
    dport: int | None = None
    frag_offset: int | None = None  # 8-byte units; None when not a fragment
    l3: int = 14                    # offset of the first header after the Ethernet/VLAN tags
    l4: int | None = None           # offset of the L4 header, None when absent
    end: int = 0                    # end of the L3 packet; Ethernet padding may follow
    ext: tuple = ()                 # (type, offset) of each IPv6 extension header


_TCP_FLAGS = ("S", "SA", "A", "PA", "FA", "F", "R", "RA", "SE", "SAE", "UA")
_small_payload = st.binary(max_size=32)


@st.composite
def _l4_segment(draw, src, dst, v6):
    """(proto, bytes, sport, dport) for a first-or-only fragment's payload."""
    kind = draw(st.sampled_from(("tcp", "udp", "icmp", "gre", "esp", "sctp")
                                + (("none",) if v6 else ())))
    if kind in ("tcp", "udp", "sctp"):
        sport, dport = draw(ports), draw(ports)
    if kind == "tcp":
        options = b"".join(draw(st.lists(st.sampled_from(
            (TCP_OPT_MSS, TCP_OPT_SACK_PERM, TCP_OPT_WSCALE, TCP_OPT_TIMESTAMP, TCP_OPT_NOP)),
            max_size=4, unique=True)))
        u32 = st.integers(0, 2**32 - 1)
        segment = tcp(sport, dport, draw(st.sampled_from(_TCP_FLAGS)), draw(u32), draw(u32),
                      draw(_small_payload), options, src=src, dst=dst)
        return IPPROTO_TCP, segment, sport, dport
    if kind == "udp":
        return IPPROTO_UDP, udp(sport, dport, draw(_small_payload), src=src, dst=dst), sport, dport
    if kind == "sctp":
        return IPPROTO_SCTP, sctp(sport, dport, draw(st.integers(0, 2**32 - 1))), sport, dport
    if kind == "icmp":
        u16 = st.integers(0, 65535)
        ident, seq, reply = draw(u16), draw(u16), draw(st.booleans())
        if v6:
            return IPPROTO_ICMPV6, icmpv6_echo(ident, seq, draw(_small_payload), reply,
                                               src=src, dst=dst), None, None
        return IPPROTO_ICMP, icmp_echo(ident, seq, draw(_small_payload), reply), None, None
    if kind == "gre":
        inner = ipv4("10.0.0.1", "10.0.0.2", IPPROTO_UDP,
                     udp(draw(ports), draw(ports), src="10.0.0.1", dst="10.0.0.2"))
        return IPPROTO_GRE, gre(inner), None, None
    if kind == "esp":
        return IPPROTO_ESP, esp(draw(st.integers(1, 2**32 - 1)), draw(st.integers(1, 2**32 - 1)),
                                draw(_small_payload)), None, None
    return IPPROTO_NONE, b"", None, None


@st.composite
def _ipv6_options_body(draw, hop_by_hop):
    # 0x1e is an RFC 4727 experimental option whose high bits say "skip if unknown".
    options = draw(st.lists(st.binary(max_size=12).map(lambda d: bytes([0x1E, len(d)]) + d),
                            max_size=2))
    if hop_by_hop and draw(st.booleans()):
        options.insert(0, IPV6_OPT_ROUTER_ALERT)
    return b"".join(options)


@st.composite
def _ipv6_ext_chain(draw, fragment):
    """0-8 extension headers: optional hop-by-hop first (the only place it is
    allowed), then routing/destination options, with `fragment` (a ready
    (44, body) entry or None) at a random spot after hop-by-hop."""
    chain = []
    if draw(st.booleans()):
        chain.append((IPV6_HOPOPTS, draw(_ipv6_options_body(True))))
    after_hop_by_hop = len(chain)
    room = 8 - len(chain) - (fragment is not None)
    for header_type in draw(st.lists(st.sampled_from((IPV6_ROUTING, IPV6_DSTOPTS)), max_size=room)):
        if header_type == IPV6_ROUTING:
            chain.append(ipv6_routing_header(data=bytes(4) + draw(st.binary(max_size=16))))
        else:
            chain.append((IPV6_DSTOPTS, draw(_ipv6_options_body(False))))
    if fragment is not None:
        chain.insert(draw(st.integers(after_hop_by_hop, len(chain))), fragment)
    return chain


def _ext_offsets(packet_start, data):
    """(type, offset) of each IPv6 extension header, read back from built bytes."""
    found, next_header, offset = [], data[packet_start + 6], packet_start + 40
    while next_header in IPV6_EXT_HEADERS:
        found.append((next_header, offset))
        size = 8 if next_header == IPV6_FRAGMENT else (data[offset + 1] + 1) * 8
        next_header, offset = data[offset], offset + size
    return tuple(found)


@st.composite
def annotated_frames(draw):
    """Well-formed frames as `Frame` records (use frames() for just the bytes)."""
    vlans = tuple(draw(st.lists(st.integers(1, 4094), max_size=2)))
    l3 = 14 + 4 * len(vlans)
    # Padding to the 60-byte Ethernet minimum, as on the wire, leaves bytes
    # after the L3 packet that parsers must not take for more headers.
    pad = draw(st.booleans())
    family = draw(st.sampled_from((4, 6, 4, 6, 0)))  # one frame in five is not IP
    if family == 0:
        if draw(st.booleans()):
            ethertype, payload = ETH_P_ARP, arp(draw(addresses_v4), draw(addresses_v4))
        else:
            ethertype, payload = ETH_P_LLDP, lldp()
        data = ethernet(payload, ethertype, vlans)
        return Frame(data.ljust(60 if pad else 0, b"\0"), ethertype, vlans, l3=l3, end=len(data))

    v6 = family == 6
    addresses = addresses_v6 if v6 else addresses_v4
    src, dst = draw(addresses), draw(addresses)
    # Unfragmented most of the time; otherwise a first or a later fragment.
    fragment = draw(st.sampled_from((None, None, "first", "later")))
    if fragment == "later":
        # Mid-datagram bytes: no L4 header to find, whatever the protocol says.
        proto = draw(st.sampled_from((IPPROTO_TCP, IPPROTO_UDP,
                                      IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP)))
        payload, sport, dport = draw(st.binary(min_size=8, max_size=48)), None, None
        frag_offset, more = draw(st.integers(1, 8000)), draw(st.booleans())
    else:
        proto, payload, sport, dport = draw(_l4_segment(src, dst, v6))
        frag_offset, more = (0, True) if fragment else (None, False)
    ident = draw(st.integers(0, 2**32 - 1 if v6 else 2**16 - 1))

    if v6:
        fragment_header = (None if fragment is None
                           else ipv6_fragment_header(frag_offset, more, ident))
        chain = draw(_ipv6_ext_chain(fragment_header))
        if fragment == "later":
            # Headers after the fragment header would be part of the fragmentable part.
            chain = chain[:chain.index(fragment_header) + 1]
        packet = ipv6(src, dst, proto, payload, chain)
        data = ethernet(packet, ETH_P_IPV6, vlans)
        ext = _ext_offsets(l3, data)
    else:
        options = b"".join(draw(st.lists(st.sampled_from(
            (IPV4_OPT_NOP, IPV4_OPT_ROUTER_ALERT, IPV4_OPT_RECORD_ROUTE)), max_size=4)))
        packet = ipv4(src, dst, proto, payload, options, frag_offset or 0, more,
                      draw(st.integers(1, 255)), ident)
        data = ethernet(packet, ETH_P_IP, vlans)
        ext = ()
    end = len(data)
    l4 = end - len(payload)
    if pad:
        data = data.ljust(60, b"\0")
    has_l4 = fragment != "later" and proto != IPPROTO_NONE
    return Frame(data, ETH_P_IPV6 if v6 else ETH_P_IP, vlans, src, dst, proto, sport, dport,
                 frag_offset, l3, l4 if has_l4 else None, end, ext)


def frames():
    """Well-formed frames: IPv4/IPv6 with 0-2 VLAN tags, options and extension
    chains, TCP/UDP/ICMP/GRE/ESP/SCTP, fragments, and ARP/LLDP."""
    return annotated_frames().map(lambda frame: frame.data)


# --- damage -------------------------------------------------------------------

def _replace(data, offset, value):
    return data[:offset] + bytes([value]) + data[offset + 1:]


def _truncate_at_boundary(draw, f):
    cuts = {12, f.l3, *(offset for _, offset in f.ext)}
    cuts |= {14 + 4 * i for i in range(len(f.vlans))}
    if f.ethertype in (ETH_P_IP, ETH_P_IPV6):
        cuts.add(f.l3 + (20 if f.ethertype == ETH_P_IP else 40))
    if f.l4 is not None:
        cuts |= {f.l4, f.l4 + 8, f.l4 + 20}
    # Cutting at f.end would only drop Ethernet padding, which is no damage.
    return f.data[:draw(st.sampled_from(sorted(c for c in cuts if c < f.end)))]


def _truncate_anywhere(draw, f):
    return f.data[:draw(st.integers(0, len(f.data) - 1))]


def _three_vlan_tags(draw, f):
    extra = b"".join(struct.pack("!HH", draw(st.sampled_from((TPID_8021AD, TPID_8021Q))),
                                 draw(st.integers(1, 4094))) for _ in range(3 - len(f.vlans)))
    return f.data[:12] + extra + f.data[12:]


def _wrong_ip_version(draw, f):
    right = 4 if f.ethertype == ETH_P_IP else 6
    version = draw(st.integers(0, 15).filter(lambda v: v != right))
    return _replace(f.data, f.l3, version << 4 | f.data[f.l3] & 0x0F)


def _ihl_too_small(draw, f):
    return _replace(f.data, f.l3, 0x40 | draw(st.integers(0, 4)))


def _ihl_past_end(draw, f):
    # Cut the packet short of 60 bytes, then claim the maximum 60-byte header.
    data = f.data[:f.l3 + draw(st.integers(20, 59))]
    return _replace(data, f.l3, 0x4F)


def _tcp_data_offset(draw, f):
    segment_length = f.end - f.l4
    too_long = [words for words in range(6, 16) if words * 4 > segment_length]
    words = draw(st.sampled_from([0, 1, 2, 3, 4] + too_long))
    at = f.l4 + 12
    return _replace(f.data, at, words << 4 | f.data[at] & 0x0F)


def _ext_length_past_end(draw, f):
    header_type, offset = draw(st.sampled_from([e for e in f.ext if e[0] != IPV6_FRAGMENT]))
    shortest = min((f.end - offset) // 8, 255)  # (length + 1) * 8 must overrun the packet
    return _replace(f.data, offset + 1, draw(st.integers(shortest, 255)))


@st.composite
def malformed_frames(draw):
    """A frames() frame damaged one way: truncated (at a header boundary or
    anywhere, down to 0 bytes), bad IPv4 IHL or IP version, TCP data offset
    under 5 or past the segment, IPv6 extension length past the end, or
    three stacked VLAN tags."""
    f = draw(annotated_frames())
    damages = [_truncate_at_boundary, _truncate_anywhere, _three_vlan_tags]
    if f.ethertype == ETH_P_IP:
        damages += [_wrong_ip_version, _ihl_too_small, _ihl_past_end]
    if f.ethertype == ETH_P_IPV6:
        damages.append(_wrong_ip_version)
        if any(t != IPV6_FRAGMENT for t, _ in f.ext):
            damages.append(_ext_length_past_end)
    if f.proto == IPPROTO_TCP and f.l4 is not None:
        damages.append(_tcp_data_offset)
    return draw(st.sampled_from(damages))(draw, f)


# --- hand-picked examples -----------------------------------------------------------

def _cases():
    v4a, v4b = "192.0.2.1", "198.51.100.7"
    v6a, v6b = "2001:db8::1", "2001:db8:1::53"
    syn = tcp_ipv4_frame(v4a, v4b, 40000, 443, "S", tcp_options=TCP_OPT_MSS + TCP_OPT_SACK_PERM)
    hbh = (IPV6_HOPOPTS, IPV6_OPT_ROUTER_ALERT)
    return {
        "ipv4_tcp_syn": syn,
        "ipv4_tcp_synack_vlan": tcp_ipv4_frame(v4b, v4a, 443, 40000, "SA", seq=1000, ack=1,
                                               vlans=(100,)),
        "ipv4_tcp_rst_options": tcp_ipv4_frame(v4a, v4b, 40000, 80, "R", seq=7,
                                               options=IPV4_OPT_ROUTER_ALERT),
        "ipv4_udp_dns": udp_ipv4_frame(v4a, "203.0.113.53", 5353, 53, b"\x12\x34" + bytes(10)),
        "ipv4_icmp_echo": icmp_ipv4_frame(v4a, v4b, ident=7, seq=1, payload=b"ping"),
        "ipv4_first_fragment": ipv4_fragment_frame(
            v4a, v4b, IPPROTO_UDP, udp(1234, 53, bytes(16), src=v4a, dst=v4b), 0, ident=99),
        "ipv4_nonfirst_fragment": ipv4_fragment_frame(v4a, v4b, IPPROTO_UDP, bytes(24), 185,
                                                      more_fragments=False, ident=99),
        "qinq_ipv4_udp": udp_ipv4_frame(v4a, v4b, 5000, 8080, b"hello", vlans=(10, 20)),
        "ipv4_gre": ip_frame(v4a, v4b, IPPROTO_GRE,
                             gre(ipv4("10.0.0.1", "10.0.0.2", IPPROTO_ICMP, icmp_echo(1, 1)))),
        "ipv6_tcp_syn": tcp_ipv6_frame(v6a, v6b, 40000, 443, "S", tcp_options=TCP_OPT_MSS),
        "ipv6_udp_hbh_frag_first": ipv6_fragment_frame(
            v6a, v6b, IPPROTO_UDP, udp(5353, 53, bytes(16), src=v6a, dst=v6b), 0,
            ident=0xABCDEF, ext_headers=[hbh]),
        "ipv6_nonfirst_fragment": ipv6_fragment_frame(v6a, v6b, IPPROTO_TCP, bytes(32), 181,
                                                      more_fragments=False, ident=0xABCDEF),
        "ipv6_ext_chain_tcp": tcp_ipv6_frame(
            v6a, v6b, 40000, 22, "A", seq=1, ack=1,
            ext_headers=[hbh, (IPV6_DSTOPTS, b""), ipv6_routing_header(), (IPV6_DSTOPTS, b"")]),
        "ipv6_icmpv6_echo": icmpv6_frame(v6a, v6b, ident=3, seq=4, vlans=((TPID_8021AD, 300),)),
        "ipv6_no_next_header": ip_frame(v6a, v6b, IPPROTO_NONE, b""),
        "arp": ethernet(arp(v4a, v4b), ETH_P_ARP, dst_mac="ff:ff:ff:ff:ff:ff"),
        "lldp": ethernet(lldp(), ETH_P_LLDP, dst_mac="01:80:c2:00:00:0e"),
        # Deliberately broken; names are listed in MALFORMED_CASES.
        "empty": b"",
        "truncated_ethernet": syn[:10],
        "truncated_ipv4_header": syn[:14 + 12],
        "ipv4_ihl_too_small": _replace(syn, 14, 0x44),
        "tcp_data_offset_too_small": _replace(syn, 14 + 20 + 12, 0x30),
        "three_vlan_tags": udp_ipv4_frame(v4a, v4b, 5000, 53, vlans=(10, 20, 30)),
    }


CASES = _cases()
MALFORMED_CASES = frozenset(("empty", "truncated_ethernet", "truncated_ipv4_header",
                             "ipv4_ihl_too_small", "tcp_data_offset_too_small",
                             "three_vlan_tags"))
