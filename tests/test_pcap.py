"""Tests for agent.pcap: the real attack captures are cross-checked against tshark and
editcap, and hand-built and malformed files cover what those captures do not."""

import random
import shutil
import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # importable however pytest is started, with no conftest

from agent.pcap import (  # noqa: E402
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
    CaptureError,
    CapturedFrame,
    ethernet_frame,
    read_frames,
)

CAPTURES_DIR = Path(__file__).resolve().parent / "data" / "captures"
CAPTURES = sorted(CAPTURES_DIR.glob("*.pcap*")) if CAPTURES_DIR.is_dir() else []

SHB_TYPE, IDB, OPB, SPB, EPB = 0x0A0D0D0A, 1, 2, 3, 6
IPV4_PACKET = bytes.fromhex("45000014000100004006f3a40a0000010a0a0a0a")
IPV6_PACKET = bytes.fromhex("6000000000003b40") + bytes(15) + b"\x01" + bytes(15) + b"\x02"


# --- reference tools -------------------------------------------------------


def tool(name: str) -> str:
    fallback = Path("/usr/bin") / name
    found = shutil.which(name) or (str(fallback) if fallback.exists() else None)
    if found is None:
        pytest.fail(f"{name} is required as the reference implementation but is not installed; install tshark")
    return found


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def assert_matches_tshark(path: Path, *, timestamps: bool = True) -> list[CapturedFrame]:
    frames = list(read_frames(path))
    fields = ["frame.len", "frame.cap_len", "frame.time_epoch"]
    out = run(tool("tshark"), "-r", str(path), "-T", "fields", *(arg for f in fields for arg in ("-e", f)))
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(frames) == len(rows), f"{path.name}: packet count differs from tshark"
    assert [f.index for f in frames] == list(range(len(frames)))
    assert [(f.original_length, len(f.data)) for f in frames] == [(int(r[0]), int(r[1])) for r in rows]
    if timestamps:
        # Every packet, not only the first and last: it costs nothing and catches drift.
        for frame, row in zip(frames, rows):
            tshark_ns = int(Decimal(row[2]) * 1_000_000_000)
            assert abs(frame.timestamp_ns - tshark_ns) <= 1000, f"{path.name}: packet {frame.index} timestamp"
    return frames


# --- builders for hand-made captures -----------------------------------------


def pcap_file(records, *, order="<", nanos=False, linktype=LINKTYPE_ETHERNET) -> bytes:
    """records: (seconds, fraction, data, original_length)."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for seconds, fraction, data, origlen in records:
        out += struct.pack(order + "IIII", seconds, fraction, len(data), origlen) + data
    return out


def block(order: str, btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def shb(order: str) -> bytes:
    return block(order, SHB_TYPE, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + bytes(-len(value) % 4)


def idb(order: str, linktype: int, snaplen: int = 0, *options: bytes) -> bytes:
    body = struct.pack(order + "HHI", linktype, 0, snaplen)
    if options:
        body += b"".join(options) + option(order, 0, b"")
    return block(order, IDB, body)


def epb(order: str, iface: int, ticks: int, data: bytes, origlen: int | None = None) -> bytes:
    header = struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), origlen or len(data))
    return block(order, EPB, header + data)


def spb(order: str, origlen: int, data: bytes) -> bytes:
    return block(order, SPB, struct.pack(order + "I", origlen) + data)


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# --- the real attack captures (tests/data/captures) ---------------------------


@pytest.fixture(params=CAPTURES or [None], ids=lambda p: p.name if p else "missing")
def capture(request) -> Path:
    if request.param is None:
        pytest.fail(f"no captures found in {CAPTURES_DIR}; they are part of the repository (git checkout tests/data)")
    return request.param


def test_capture_matches_tshark(capture):
    assert assert_matches_tshark(capture)


@pytest.mark.parametrize("fmt", ["pcapng", "nsecpcap"])
def test_editcap_conversion_reads_the_same(capture, fmt, tmp_path):
    converted = tmp_path / f"converted.{fmt}"
    run(tool("editcap"), "-F", fmt, str(capture), str(converted))
    # Make sure the conversion really exercises the other code path.
    expected_magic = {"pcapng": b"\x0a\x0d\x0d\x0a", "nsecpcap": struct.pack("<I", 0xA1B23C4D)}[fmt]
    assert converted.read_bytes()[:4] == expected_magic

    def key(frames):
        return [(f.index, f.timestamp_ns, f.linktype, f.data, f.original_length) for f in frames]

    assert key(read_frames(converted)) == key(read_frames(capture))


# --- hand-built captures -------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("nanos", [False, True], ids=["usec", "nsec"])
def test_classic_pcap(tmp_path, order, nanos):
    fraction = 123_456_789 if nanos else 123_456
    records = [(1_600_000_000, fraction, b"\xaa" * 60, 60), (1_600_000_001, 7, b"\xbb" * 20, 1500)]
    path = write(tmp_path, "hand.pcap", pcap_file(records, order=order, nanos=nanos))
    frames = assert_matches_tshark(path)
    scale = 1 if nanos else 1000
    assert frames == [
        CapturedFrame(0, 1_600_000_000 * 10**9 + fraction * scale, LINKTYPE_ETHERNET, b"\xaa" * 60, 60),
        CapturedFrame(1, 1_600_000_001 * 10**9 + 7 * scale, LINKTYPE_ETHERNET, b"\xbb" * 20, 1500),
    ]


def test_format_is_detected_by_magic_not_name(tmp_path):
    classic = write(tmp_path, "classic.pcapng", pcap_file([(1, 0, IPV4_PACKET, 20)]))
    nextgen = write(tmp_path, "nextgen.pcap", shb("<") + idb("<", 1) + epb("<", 0, 5, IPV4_PACKET))
    assert [f.data for f in read_frames(classic)] == [IPV4_PACKET]
    assert [f.data for f in read_frames(nextgen)] == [IPV4_PACKET]


def test_pcapng_sections_with_different_byte_orders(tmp_path):
    content = (
        shb("<") + idb("<", LINKTYPE_ETHERNET) + epb("<", 0, 1_000_000, b"\x01" * 64)
        + shb(">") + idb(">", LINKTYPE_RAW) + idb(">", LINKTYPE_ETHERNET)
        + epb(">", 0, 2_000_000, IPV4_PACKET) + epb(">", 1, 3_000_000, b"\x02" * 64, 1514)
    )  # fmt: skip
    path = write(tmp_path, "sections.pcapng", content)
    frames = assert_matches_tshark(path)
    assert [(f.index, f.linktype, f.timestamp_ns, f.original_length) for f in frames] == [
        (0, LINKTYPE_ETHERNET, 1_000_000_000, 64),
        (1, LINKTYPE_RAW, 2_000_000_000, 20),  # interface 0 now means the new section's first interface
        (2, LINKTYPE_ETHERNET, 3_000_000_000, 1514),
    ]


def test_pcapng_timestamp_resolutions(tmp_path):
    seconds = 1_600_000_000
    content = (
        shb("<")
        + idb("<", 1)  # default: microseconds
        + idb("<", 1, 0, option("<", 9, bytes([9])))  # 10^-9
        + idb("<", 1, 0, option("<", 9, bytes([0x80 | 10])))  # 2^-10
        + epb("<", 0, seconds * 10**6 + 123_456, b"\x00" * 60)
        + epb("<", 1, seconds * 10**9 + 123_456_789, b"\x00" * 60)
        + epb("<", 2, seconds * 1024 + 512 + 1, b"\x00" * 60)
    )
    path = write(tmp_path, "tsresol.pcapng", content)
    frames = assert_matches_tshark(path)
    assert [f.timestamp_ns for f in frames] == [
        seconds * 10**9 + 123_456_000,
        seconds * 10**9 + 123_456_789,
        seconds * 10**9 + 500_000_000 + 976_562,  # 1/1024 s, rounded down to whole nanoseconds
    ]


def test_pcapng_if_tsoffset(tmp_path):
    tsoffset = option("<", 14, struct.pack("<q", 1_600_000_000))
    content = shb("<") + idb("<", 1, 0, tsoffset) + epb("<", 0, 2, b"\x00" * 60)
    (frame,) = assert_matches_tshark(write(tmp_path, "tsoffset.pcapng", content))
    assert frame.timestamp_ns == 1_600_000_000 * 10**9 + 2_000


def test_pcapng_simple_packet_block(tmp_path):
    content = (
        shb("<")
        + idb("<", LINKTYPE_ETHERNET, 8)  # SPBs always belong to interface 0 and are cut at its snaplen
        + idb("<", LINKTYPE_RAW)
        + spb("<", 20, bytes(range(8)))
        + spb("<", 5, bytes(range(5)))  # block body is padded to 8 bytes; the padding is not data
    )
    path = write(tmp_path, "spb.pcapng", content)
    frames = assert_matches_tshark(path, timestamps=False)
    assert frames == [
        CapturedFrame(0, 0, LINKTYPE_ETHERNET, bytes(range(8)), 20),
        CapturedFrame(1, 0, LINKTYPE_ETHERNET, bytes(range(5)), 5),
    ]


def test_pcapng_obsolete_packet_block(tmp_path):
    opb = block("<", OPB, struct.pack("<HHIIII", 1, 0, 0, 7_000_000, 60, 1514) + b"\x03" * 60)
    path = write(tmp_path, "opb.pcapng", shb("<") + idb("<", LINKTYPE_RAW) + idb("<", LINKTYPE_ETHERNET) + opb)
    assert assert_matches_tshark(path) == [CapturedFrame(0, 7_000_000_000, LINKTYPE_ETHERNET, b"\x03" * 60, 1514)]


def test_pcapng_unknown_blocks_are_skipped(tmp_path):
    content = (
        shb("<")
        + block("<", 0x0BADF00D, b"before any interface")
        + idb("<", LINKTYPE_ETHERNET)
        + epb("<", 0, 1, b"\x01" * 60)
        + block("<", 0x80000001, b"local-use block, 29 bytes long")  # not 0xBAD: tshark lists Custom Blocks
        + block("<", 5, bytes(16))  # Interface Statistics Block: known elsewhere, carries no packet
        + epb("<", 0, 2, b"\x02" * 60)
    )
    path = write(tmp_path, "unknown.pcapng", content)
    frames = assert_matches_tshark(path)
    assert [f.data for f in frames] == [b"\x01" * 60, b"\x02" * 60]


def test_ethernet_frame_for_raw_ip_capture(tmp_path):
    records = [(1, 0, IPV4_PACKET, 20), (2, 0, IPV6_PACKET, 40)]
    path = write(tmp_path, "raw.pcap", pcap_file(records, linktype=LINKTYPE_RAW))
    frames = list(read_frames(path))
    assert [f.linktype for f in frames] == [LINKTYPE_RAW, LINKTYPE_RAW]
    assert [ethernet_frame(f) for f in frames] == [
        bytes(12) + b"\x08\x00" + IPV4_PACKET,
        bytes(12) + b"\x86\xdd" + IPV6_PACKET,
    ]


@pytest.mark.parametrize("linktype", [12, 14, 228, 229])
def test_ethernet_frame_for_other_raw_ip_linktypes(linktype):
    packet = IPV6_PACKET if linktype == 229 else IPV4_PACKET
    ethertype = b"\x86\xdd" if linktype == 229 else b"\x08\x00"
    assert ethernet_frame(CapturedFrame(0, 0, linktype, packet, len(packet))) == bytes(12) + ethertype + packet


def test_ethernet_frame_passes_ethernet_through():
    data = bytes(12) + b"\x08\x00" + IPV4_PACKET
    assert ethernet_frame(CapturedFrame(0, 0, LINKTYPE_ETHERNET, data, len(data))) is data


def test_ethernet_frame_for_linux_cooked_captures():
    mac = bytes.fromhex("020000aabbcc")
    sll = struct.pack(">HHH8sH", 0, 1, 6, mac + bytes(2), 0x86DD) + IPV6_PACKET
    sll2 = struct.pack(">HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, mac + bytes(2)) + IPV4_PACKET
    assert ethernet_frame(CapturedFrame(0, 0, LINKTYPE_LINUX_SLL, sll, len(sll))) == (
        bytes(6) + mac + b"\x86\xdd" + IPV6_PACKET
    )
    assert ethernet_frame(CapturedFrame(0, 0, 276, sll2, len(sll2))) == bytes(6) + mac + b"\x08\x00" + IPV4_PACKET


@pytest.mark.parametrize(
    "frame, message",
    [
        (CapturedFrame(3, 0, 105, b"\x00" * 30, 30), "link type 105"),
        (CapturedFrame(3, 0, LINKTYPE_RAW, b"\x50" * 20, 20), "not an IPv4 or IPv6"),
        (CapturedFrame(3, 0, LINKTYPE_RAW, b"", 0), "not an IPv4 or IPv6"),
        (CapturedFrame(3, 0, LINKTYPE_LINUX_SLL, b"\x00" * 10, 10), "truncated"),
        (CapturedFrame(3, 0, LINKTYPE_LINUX_SLL, struct.pack(">HHH8sH", 0, 1, 0, bytes(8), 4), 16), "0x0004"),
    ],
)
def test_ethernet_frame_rejects_what_it_cannot_wrap(frame, message):
    with pytest.raises(CaptureError, match=message):
        ethernet_frame(frame)


# --- malformed input --------------------------------------------------------------


def read_until_error(path: Path) -> tuple[list[CapturedFrame], str]:
    frames = []
    with pytest.raises(CaptureError) as excinfo:
        for frame in read_frames(path):
            frames.append(frame)
    message = str(excinfo.value)
    assert path.name in message
    return frames, message


def test_empty_file(tmp_path):
    assert read_until_error(write(tmp_path, "empty.pcap", b""))[1].endswith("empty file")


def test_random_junk(tmp_path):
    junk = random.Random(1234).randbytes(4096)
    assert "not a pcap or pcapng file" in read_until_error(write(tmp_path, "junk.pcap", junk))[1]


def test_truncated_pcap(tmp_path):
    content = pcap_file([(1, 0, b"\x01" * 60, 60), (2, 0, b"\x02" * 60, 60)])
    frames, message = read_until_error(write(tmp_path, "cut.pcap", content[:-25]))
    assert len(frames) == 1
    assert "packet 1 at offset 100: truncated packet data (need 60 bytes, have 35)" in message

    _, message = read_until_error(write(tmp_path, "cut-header.pcap", content[:24 + 16 + 60 + 5]))
    assert "truncated record header (need 16 bytes, have 5)" in message


def test_truncated_pcapng(tmp_path):
    content = shb("<") + idb("<", 1) + epb("<", 0, 1, b"\x01" * 60) + epb("<", 0, 2, b"\x02" * 60)
    frames, message = read_until_error(write(tmp_path, "cut.pcapng", content[:-30]))
    assert len(frames) == 1
    assert "truncated Enhanced Packet Block (need 92 bytes, have 62)" in message


def test_truncated_real_capture(tmp_path, capture):
    # A real file cut at an arbitrary byte lands mid-packet, whatever its format.
    content = capture.read_bytes()
    frames, _ = read_until_error(write(tmp_path, capture.name, content[: len(content) // 2 + 1]))
    assert frames


def _epb_with_trailer(trailer: int) -> bytes:
    good = epb("<", 0, 1, b"\x01" * 60)
    return good[:-4] + struct.pack("<I", trailer)


PCAPNG_HEAD = shb("<") + idb("<", 1)


@pytest.mark.parametrize(
    "content, message",
    [
        (PCAPNG_HEAD + _epb_with_trailer(96), "trailing length 96 differs from leading length 92"),
        (PCAPNG_HEAD + struct.pack("<II", 6, 90) + bytes(82), "invalid Enhanced Packet Block length 90"),
        (PCAPNG_HEAD + struct.pack("<III", 6, 8, 8), "invalid Enhanced Packet Block length 8"),
        (PCAPNG_HEAD + struct.pack("<II", 0x1234, 0xFFFFFFF0) + bytes(8), "invalid block of type 0x00001234"),
        (PCAPNG_HEAD + block("<", EPB, struct.pack("<5I", 0, 0, 0, 100, 100) + bytes(20)), "exceeds the block"),
        (shb("<") + epb("<", 0, 1, b"\x01" * 60), "refers to undeclared interface 0"),
        (PCAPNG_HEAD + epb("<", 1, 1, b"\x01" * 60), "refers to undeclared interface 1"),
        (shb("<")[:8] + b"\x11\x22\x33\x44" + shb("<")[12:], "byte-order magic 11223344"),
        (block("<", SHB_TYPE, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1)), "unsupported pcapng version 2.0"),
        (shb("<") + block("<", IDB, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 9, 40)), "overruns"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00", "truncated block header (need 12 bytes, have 6)"),
        (PCAPNG_HEAD + b"\x06\x00", "truncated block header (need 12 bytes, have 2)"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1), "unsupported pcap version 3.0"),
        (struct.pack("<IHH", 0xA1B2C3D4, 2, 4), "truncated pcap file header (need 24 bytes, have 8)"),
        (pcap_file([]) + struct.pack("<IIII", 0, 0, 0xFFFFFFFF, 60), "captured length 4294967295 is implausible"),
    ],
)
def test_malformed(tmp_path, content, message):
    assert message in read_until_error(write(tmp_path, "bad.pcapng", content))[1]


def test_random_corruption_only_raises_capture_error(tmp_path):
    # Whatever the damage, the reader must end with frames or a CaptureError:
    # never an IndexError/struct.error from half-parsed headers, and never a hang.
    pcapng = (
        shb("<") + idb("<", 1, 0, option("<", 9, bytes([9]))) + epb("<", 0, 1, b"\x01" * 61) + spb("<", 30, b"\x02" * 30)
        + shb(">") + idb(">", LINKTYPE_RAW) + epb(">", 0, 9, IPV4_PACKET)
    )  # fmt: skip
    pcap = pcap_file([(1, 2, b"\x01" * 40, 40), (3, 4, b"\x02" * 17, 20)], order=">")
    rng = random.Random(7)
    path = tmp_path / "fuzz.pcapng"
    for base in (pcapng, pcap):
        for _ in range(500):
            damaged = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            path.write_bytes(damaged[: rng.randint(1, len(damaged))] if rng.random() < 0.2 else damaged)
            try:
                list(read_frames(path))
            except CaptureError as error:
                assert path.name in str(error)
