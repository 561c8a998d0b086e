"""Classic pcap files of Ethernet frames, as the net_pcap device reads them
(rx_pcap=) and writes the frames the engine passed (tx_pcap=). Reading goes
through agent.pcap."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

LINKTYPE_ETHERNET = 1
SNAPLEN = 65535


def write_pcap(path: str | Path, frames: Iterable[bytes]) -> int:
    """Writes the frames with microsecond timestamps 1 us apart; returns the count."""
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        for count, frame in enumerate(frames, 1):
            f.write(struct.pack("=IIII", count // 1_000_000, count % 1_000_000, len(frame), len(frame)))
            f.write(frame)
    return count
