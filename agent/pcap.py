"""Stdlib-only reader for pcap and pcapng capture files, so recorded traffic can be
replayed through the packet-inspection code without libpcap or scapy."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# Wireshark's largest per-packet limit is 128 MiB (D-Bus); anything bigger is a
# corrupt length, and refusing it early keeps garbage from being buffered.
_MAX_LENGTH = 128 * 1024 * 1024
_CHUNK = 1024 * 1024

# Classic pcap magic, as read little-endian -> (byte order, ns per fractional tick).
_PCAP_MAGIC = {
    0xA1B2C3D4: ("<", 1000),
    0xD4C3B2A1: (">", 1000),
    0xA1B23C4D: ("<", 1),
    0x4D3CB2A1: (">", 1),
}

_SHB_TYPE = b"\x0a\x0d\x0d\x0a"  # palindromic, so readable before the byte order is known
_SHB, _IDB, _OPB, _SPB, _EPB = 0x0A0D0D0A, 1, 2, 3, 6
_BLOCK_NAMES = {
    _SHB: "Section Header Block",
    _IDB: "Interface Description Block",
    _OPB: "Obsolete Packet Block",
    _SPB: "Simple Packet Block",
    _EPB: "Enhanced Packet Block",
}
# Minimum total lengths from the pcapng specification.
_MIN_BLOCK = {_SHB: 28, _IDB: 20, _OPB: 32, _SPB: 16, _EPB: 32}

# Raw IP link types; 12 and 14 are the platform-dependent DLT_RAW values that
# older writers put in files instead of LINKTYPE_RAW.
_RAW_IP_LINKTYPES = {LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6}
_IP_ETHERTYPES = {4: 0x0800, 6: 0x86DD}


class CaptureError(ValueError):
    """A capture is truncated, malformed, or uses something this reader does not support."""


@dataclass(frozen=True)
class CapturedFrame:
    index: int  # 0-based packet number in the file, across all pcapng sections
    timestamp_ns: int  # Unix epoch; 0 for pcapng Simple Packet Blocks, which carry none
    linktype: int
    data: bytes  # captured bytes, possibly shorter than original_length
    original_length: int


def read_frames(path: str | os.PathLike) -> Iterator[CapturedFrame]:
    """Yield the packets of a pcap or pcapng file, detecting the format by magic number."""
    name = os.fsdecode(path)
    with open(path, "rb") as f:
        head = f.read(4)
        if not head:
            raise CaptureError(f"{name}: empty file")
        if head == _SHB_TYPE:
            yield from _read_pcapng(f, name, head)
        else:
            yield from _read_pcap(f, name, head)


def _read(f: BinaryIO, n: int, where: str, what: str, head: bytes = b"") -> bytes:
    """Read exactly n bytes (head being ones already read), or raise CaptureError."""
    parts = [head]
    missing = n - len(head)
    while missing > 0:
        # Chunked so a corrupt length never makes us allocate it up front.
        chunk = f.read(min(missing, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        missing -= len(chunk)
    data = b"".join(parts)
    if len(data) < n:
        raise CaptureError(f"{where}: truncated {what} (need {n} bytes, have {len(data)})")
    return data


def _read_pcap(f: BinaryIO, name: str, magic: bytes) -> Iterator[CapturedFrame]:
    value = int.from_bytes(magic, "little")
    if len(magic) < 4 or value not in _PCAP_MAGIC:
        raise CaptureError(f"{name}: offset 0: not a pcap or pcapng file (magic {magic.hex()})")
    order, tick_ns = _PCAP_MAGIC[value]
    header = _read(f, 24, f"{name}: offset 0", "pcap file header", magic)
    major, minor, _zone, _sigfigs, _snaplen, network = struct.unpack(order + "HHiIII", header[4:])
    if major != 2:
        raise CaptureError(f"{name}: offset 4: unsupported pcap version {major}.{minor}")
    linktype = network & 0xFFFF  # the upper bits hold FCS-length flags
    record = struct.Struct(order + "IIII")
    offset, index = 24, 0
    while True:
        head = f.read(record.size)
        if not head:
            return
        where = f"{name}: packet {index} at offset {offset}"
        seconds, fraction, caplen, origlen = record.unpack(_read(f, record.size, where, "record header", head))
        if caplen > _MAX_LENGTH:
            raise CaptureError(f"{where}: captured length {caplen} is implausible (corrupt record header?)")
        data = _read(f, caplen, where, "packet data")
        yield CapturedFrame(index, seconds * 1_000_000_000 + fraction * tick_ns, linktype, data, origlen)
        offset += record.size + caplen
        index += 1


@dataclass(frozen=True)
class _Interface:
    linktype: int
    snaplen: int
    units_per_second: int
    offset_seconds: int

    def to_ns(self, ticks: int) -> int:
        return ticks * 1_000_000_000 // self.units_per_second + self.offset_seconds * 1_000_000_000


def _read_pcapng(f: BinaryIO, name: str, head: bytes) -> Iterator[CapturedFrame]:
    order = "<"
    interfaces: list[_Interface] = []
    offset, index = 0, 0
    while True:
        head += f.read(12 - len(head))
        if not head:
            return
        where = f"{name}: block at offset {offset}"
        head = _read(f, 12, where, "block header", head)
        if head[:4] == _SHB_TYPE:
            # A new section may switch byte order; its magic follows the length.
            order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(head[8:12], "")
            if not order:
                raise CaptureError(f"{where}: bad Section Header Block byte-order magic {head[8:12].hex()}")
        btype, length = struct.unpack(order + "II", head[:8])
        what = _BLOCK_NAMES.get(btype, f"block of type 0x{btype:08x}")
        if length % 4 or length < _MIN_BLOCK.get(btype, 12) or length > _MAX_LENGTH:
            raise CaptureError(f"{where}: invalid {what} length {length}")
        block = _read(f, length, where, what, head)
        (trailer,) = struct.unpack(order + "I", block[-4:])
        if trailer != length:
            raise CaptureError(f"{where}: {what} trailing length {trailer} differs from leading length {length}")
        body = block[8:-4]
        head = b""

        if btype == _SHB:
            major, minor = struct.unpack(order + "HH", body[4:8])
            if major != 1:
                raise CaptureError(f"{where}: unsupported pcapng version {major}.{minor}")
            interfaces = []  # interface ids are scoped to their section
        elif btype == _IDB:
            linktype, _reserved, snaplen = struct.unpack(order + "HHI", body[:8])
            interfaces.append(_Interface(linktype, snaplen, *_idb_options(body[8:], order, where)))
        elif btype in (_EPB, _OPB, _SPB):
            iface_id, ticks, origlen, data = _packet_block(btype, body, order, f"{where}: {what}")
            if iface_id >= len(interfaces):
                raise CaptureError(f"{where}: {what} refers to undeclared interface {iface_id}")
            iface = interfaces[iface_id]
            if ticks is None:
                # A Simple Packet Block has no captured length and its body is
                # padded, so the data is bounded by the original length and snaplen.
                data = data[: min(origlen, iface.snaplen or origlen)]
            timestamp = 0 if ticks is None else iface.to_ns(ticks)
            yield CapturedFrame(index, timestamp, iface.linktype, data, origlen)
            index += 1
        # Every other block type (name resolution, statistics, custom, ...) carries
        # no packets and has already been consumed by length.
        offset += length


def _packet_block(btype: int, body: bytes, order: str, where: str) -> tuple[int, int | None, int, bytes]:
    """Return (interface id, timestamp ticks or None, original length, data) of a packet block."""
    if btype == _SPB:
        (origlen,) = struct.unpack_from(order + "I", body)
        return 0, None, origlen, body[4:]
    if btype == _EPB:
        iface_id, high, low, caplen, origlen = struct.unpack_from(order + "IIIII", body)
    else:  # the obsolete layout has a 16-bit interface id followed by a drops count
        iface_id, _drops, high, low, caplen, origlen = struct.unpack_from(order + "HHIIII", body)
    if caplen > len(body) - 20:
        raise CaptureError(f"{where}: captured length {caplen} exceeds the block body ({len(body) - 20} bytes)")
    return iface_id, high << 32 | low, origlen, body[20 : 20 + caplen]


def _idb_options(options: bytes, order: str, where: str) -> tuple[int, int]:
    """Return (timestamp units per second, offset seconds) from an IDB's options."""
    units, offset_seconds = 1_000_000, 0  # defaults per the pcapng specification
    pos = 0
    while pos + 4 <= len(options):
        code, size = struct.unpack_from(order + "HH", options, pos)
        pos += 4
        if code == 0:  # opt_endofopt
            break
        if pos + size > len(options):
            raise CaptureError(f"{where}: option {code} overruns the Interface Description Block")
        value = options[pos : pos + size]
        if code == 9 and size == 1:  # if_tsresol: high bit selects 2^-n over 10^-n
            units = 2 ** (value[0] & 0x7F) if value[0] & 0x80 else 10 ** value[0]
        elif code == 14 and size == 8:  # if_tsoffset
            (offset_seconds,) = struct.unpack(order + "q", value)
        pos += (size + 3) & ~3
    return units, offset_seconds


def ethernet_frame(frame: CapturedFrame) -> bytes:
    """Return the packet as an Ethernet frame, synthesising the header when the link has none."""
    linktype, data = frame.linktype, frame.data
    if linktype == LINKTYPE_ETHERNET:
        return data
    if linktype in _RAW_IP_LINKTYPES:
        version = data[0] >> 4 if data else None
        if version not in _IP_ETHERTYPES:
            raise CaptureError(f"packet {frame.index}: link type {linktype}: not an IPv4 or IPv6 packet")
        return bytes(12) + struct.pack(">H", _IP_ETHERTYPES[version]) + data
    if linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
        return _decook(frame)
    raise CaptureError(f"packet {frame.index}: unsupported link type {linktype}")


def _decook(frame: CapturedFrame) -> bytes:
    """Rebuild an Ethernet header from a Linux cooked capture (tcpdump -i any) header."""
    data = frame.data
    size = 16 if frame.linktype == LINKTYPE_LINUX_SLL else 20
    if len(data) < size:
        raise CaptureError(f"packet {frame.index}: link type {frame.linktype}: truncated cooked-capture header")
    if frame.linktype == LINKTYPE_LINUX_SLL:
        addrlen, address, protocol = struct.unpack_from(">4xH8sH", data)
    else:
        protocol, addrlen, address = struct.unpack_from(">H9xB8s", data)
    # Values below 0x0600 mark 802.3/802.2 framing, which has no Ethertype to carry over.
    if protocol < 0x0600:
        raise CaptureError(
            f"packet {frame.index}: link type {frame.linktype}: protocol 0x{protocol:04x} is not an Ethertype"
        )
    source = address[:6] if addrlen == 6 else bytes(6)  # the cooked address is the sender's
    return bytes(6) + source + struct.pack(">H", protocol) + data[size:]
