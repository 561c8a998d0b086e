"""`edgewarden replay`: a real capture replayed into the lab. Frames whose
destination is the capture's victim are rewritten to the lab's victim (MACs
too, IPv4 and TCP/UDP checksums fixed) and sent with tcpreplay at a chosen
rate or top speed from inside the attacker namespace."""

from __future__ import annotations

import collections
import ipaddress
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.checksum import internet_checksum
from agent.lab.flood import interface_mac
from agent.pcap import LINKTYPE_ETHERNET, ethernet_frame, read_frames

MAX_FRAME = 1514        # larger captured frames (offloaded super-packets) cannot be sent on a 1500 MTU link




def most_common_destination(frames: list[bytes]) -> ipaddress.IPv4Address | None:
    counts = collections.Counter(f[30:34] for f in frames if len(f) >= 34 and f[12:14] == b"\x08\x00")
    return ipaddress.IPv4Address(counts.most_common(1)[0][0]) if counts else None


def rewrite(frame: bytes, victim: bytes, target: bytes, src_mac: bytes, dst_mac: bytes) -> bytes:
    """Point an IPv4 frame at `target` if it was for `victim`; other frames keep their IPs."""
    out = bytearray(dst_mac + src_mac + frame[12:])
    if len(out) < 34 or out[12:14] != b"\x08\x00" or out[30:34] != victim:
        return bytes(out)
    ihl = (out[14] & 0x0F) * 4
    if ihl < 20 or len(out) < 14 + ihl:
        return bytes(out)
    out[30:34] = target
    out[24:26] = b"\0\0"
    out[24:26] = struct.pack("!H", internet_checksum(bytes(out[14:14 + ihl])))
    fragment = struct.unpack_from("!H", out, 20)[0] & 0x3FFF
    proto, l4 = out[23], 14 + ihl
    total = struct.unpack_from("!H", out, 16)[0]
    segment_end = 14 + total
    # The pseudo-header holds the destination: recompute where the whole segment is here.
    if not fragment and segment_end <= len(out) and proto in (6, 17):
        at = l4 + (16 if proto == 6 else 6)
        if at + 2 <= segment_end and not (proto == 17 and out[at:at + 2] == b"\0\0"):
            out[at:at + 2] = b"\0\0"
            pseudo = bytes(out[26:34]) + struct.pack("!BBH", 0, proto, segment_end - l4)
            check = internet_checksum(pseudo + bytes(out[l4:segment_end]))
            out[at:at + 2] = struct.pack("!H", check if check or proto == 6 else 0xFFFF)
    return bytes(out)


def write_pcap(path: Path, frames: list[bytes]) -> None:
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for i, frame in enumerate(frames):
            out.write(struct.pack("<IIII", i // 1_000_000, i % 1_000_000, len(frame), len(frame)) + frame)


@dataclass
class ReplayResult:
    capture: str
    frames: int            # frames handed to tcpreplay
    skipped: int           # frames too large for the link
    rewritten: int         # frames pointed at the lab's victim
    sent: int              # what tcpreplay reports as sent
    seconds: float
    pps: float
    # Wall clock (time.time()) of the first and the last frame: tcpreplay's
    # own sending time counted back from the moment it exited, so a caller
    # slowed down after the replay does not shift them.
    started_at: float = 0.0
    ended_at: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def prepare(capture: str | Path, target: str, src_mac: bytes, dst_mac: bytes,
            victim: str | None = None) -> tuple[list[bytes], int, int]:
    frames = [ethernet_frame(f) for f in read_frames(capture)]
    victim_ip = ipaddress.IPv4Address(victim) if victim else most_common_destination(frames)
    if victim_ip is None:
        raise ValueError(f"{capture}: no IPv4 frame to find the victim by; pass --victim")
    usable = [f for f in frames if len(f) <= MAX_FRAME]
    rewritten = [rewrite(f, victim_ip.packed, ipaddress.IPv4Address(target).packed, src_mac, dst_mac) for f in usable]
    pointed = sum(1 for f in rewritten if len(f) >= 34 and f[12:14] == b"\x08\x00" and f[30:34] ==
                  ipaddress.IPv4Address(target).packed)
    return rewritten, len(frames) - len(usable), pointed


def replay(capture: str | Path, interface: str, target: str, dst_mac: str, *, pps: int | None = None,
           victim: str | None = None, timeout: float = 120) -> ReplayResult:
    if shutil.which("tcpreplay") is None:
        raise FileNotFoundError("tcpreplay is not installed (make setup installs it)")
    frames, skipped, pointed = prepare(capture, target, interface_mac(interface),
                                       bytes.fromhex(dst_mac.replace(":", "")), victim)
    with tempfile.TemporaryDirectory(prefix="ew-replay-") as tmp:
        path = Path(tmp) / "replay.pcap"
        write_pcap(path, frames)
        rate = [f"--pps={pps}"] if pps else ["--topspeed"]
        result = subprocess.run(["tcpreplay", "-q", f"--intf1={interface}", *rate, str(path)],
                                capture_output=True, text=True, timeout=timeout)
        ended_at = time.time()
    if result.returncode != 0:
        raise RuntimeError(f"tcpreplay failed: {result.stderr.strip() or result.stdout.strip()}")
    sent = re.search(r"Actual: (\d+) packets .* in ([\d.]+) seconds", result.stdout)
    rated = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", result.stdout)
    seconds = float(sent.group(2)) if sent else 0.0
    return ReplayResult(str(capture), len(frames), skipped, pointed, int(sent.group(1)) if sent else 0,
                        seconds, float(rated.group(1)) if rated else 0.0, ended_at - seconds, ended_at)
