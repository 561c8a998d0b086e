"""Block-list files: the native parser and PrefixSet (agent._prefixes, C++)
against the pure-Python ipaddress reference (agent.blocklist), LPM key
export against the ABI, the on-disk form, and read_blocklist's errors."""

from __future__ import annotations

import bisect
import ipaddress
import pickle
import random
import re
import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent import _prefixes
from agent._libbpf import ffi
from agent.blocklist import (
    BadLine, BlockListError, LoadedList, PrefixSet, _reference_parse, compile_prefixes_reference,
    parse_blocklist_reference, read_blocklist,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALLOW = {None: (True, True), 4: (True, False), 6: (False, True)}
WIDTH = {4: 32, 6: 128}


def networks(prefixes: PrefixSet) -> list:
    return [ipaddress.ip_network((raw, length)) for raw, length in prefixes.to_list()]


def native(data: bytes, family=None):
    return _prefixes.parse_blocklist(data, *ALLOW[family])


def assert_matches_reference(data: bytes, family=None):
    result = native(data, family)
    expected, entries_read, bad = _reference_parse(data, family)
    assert networks(result.prefixes) == expected
    assert result.entries_read == entries_read
    assert result.bad_lines == bad  # same line numbers, reasons and reported text
    assert parse_blocklist_reference(data, family=family) == (expected, entries_read, [b[:2] for b in bad])
    return result


# --------------------------------------------------------------------------
# Generated block-list files


def _v4(a: int) -> str:
    return str(ipaddress.IPv4Address(a))


_v4_int = st.one_of(
    st.integers(0, 2**32 - 1),
    st.integers(0x0A000000, 0x0A0000FF),             # dense: overlaps, siblings
    st.sampled_from([0, 1, 2**32 - 2, 2**32 - 1]),
)
_v6_int = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + 0x1FF),
    st.integers(0, 0x1FF),
    st.sampled_from([0, 1, 2**128 - 2, 2**128 - 1, 0xFFFF << 32]),
)


@st.composite
def _v6(draw, a: int | None = None) -> str:
    if a is None:
        a = draw(_v6_int)
    address = ipaddress.IPv6Address(a)
    form = draw(st.sampled_from(["compressed", "exploded", "upper", "v4-suffix"]))
    if form == "exploded":
        return address.exploded
    if form == "upper":
        return address.compressed.upper()
    if form == "v4-suffix":
        return ":".join(address.exploded.split(":")[:6]) + ":" + _v4(a & 0xFFFFFFFF)
    return address.compressed


def _mutate(draw, text: str) -> str:
    alphabet = "0123456789abcdefABCDEFg:./-%x "
    i = draw(st.integers(0, len(text)))
    op = draw(st.sampled_from(["insert", "delete", "replace"]))
    c = draw(st.sampled_from(alphabet))
    if op == "insert":
        return text[:i] + c + text[i:]
    if op == "delete":
        return text[:i] + text[i + 1:]
    return text[:i] + c + text[i + 1:]


@st.composite
def entry(draw) -> str:
    kind = draw(st.sampled_from([
        "addr4", "cidr4", "addr6", "cidr6", "range4", "range6", "spaced-range", "reversed-range",
        "mixed-range", "bad-length", "bad-address", "mutated", "junk",
    ]))
    if kind == "addr4":
        return _v4(draw(_v4_int))
    if kind == "addr6":
        return draw(_v6())
    if kind == "cidr4":  # host bits usually set
        return f"{_v4(draw(_v4_int))}/{draw(st.integers(0, 32))}"
    if kind == "cidr6":
        return f"{draw(_v6())}/{draw(st.integers(0, 128))}"
    if kind in ("range4", "range6", "spaced-range", "reversed-range"):
        v6 = kind == "range6" or (kind != "range4" and draw(st.booleans()))
        start = draw(_v6_int if v6 else _v4_int)
        top = 2**128 - 1 if v6 else 2**32 - 1
        end = draw(st.one_of(st.integers(start, top), st.integers(start, min(top, start + 600))))
        if kind == "reversed-range" and start != end:
            start, end = end, start
        first, last = (draw(_v6(start)), draw(_v6(end))) if v6 else (_v4(start), _v4(end))
        dash = draw(st.sampled_from([" - ", " -", "- ", "\t-\t"])) if kind == "spaced-range" else "-"
        return f"{first}{dash}{last}"
    if kind == "mixed-range":
        return f"{_v4(draw(_v4_int))}-{draw(_v6())}"
    if kind == "bad-length":
        address = draw(st.one_of(st.builds(_v4, _v4_int), _v6()))
        length = draw(st.sampled_from(["33", "129", "-1", "abc", "", "024", "0", "1000", "4294967328",
                                       "32 ", "/24", "2a", "255.255.255.0"]))
        return f"{address}/{length}"
    if kind == "bad-address":
        return draw(st.sampled_from([
            "1.2.3.256", "01.2.3.4", "1.2.3", "1.2.3.4.5", "1..2.3", "1.2.3.4/", "1:2:3:4:5:6:7:8:9",
            "1::2::3", "::g", ":::", "1:2:3:4:5:6:7::8", "fe80::1%eth0", "::1.2.3.04", "1.2.3.4::",
            ":1::2", "1::2:", "12345::", "::ffff:1.2.3", "-", "/", "/24", "-1.2.3.4", "1.2.3.4-",
            "::1-", "1.2.3.4-5.6.7.8-9.9.9.9", "example.com", "０.1.2.3", "1.2.3.4\x0b",
        ]))
    if kind == "mutated":
        base = draw(st.one_of(st.builds(_v4, _v4_int), _v6(), st.just("1.2.3.0/24"), st.just("::1-::ff")))
        return _mutate(draw, base)
    return draw(st.text(st.sampled_from("0123456789abcdefABCDEF:./-%x \t#;\r"), max_size=24))


@st.composite
def line(draw) -> bytes:
    kind = draw(st.sampled_from(["entry"] * 6 + ["comment", "blank", "binary", "long"]))
    if kind == "comment":
        return draw(st.sampled_from(["#", ";", "  # note", "; Spamhaus DROP", "# Müller", "#\x7f"])).encode()
    if kind == "blank":
        return draw(st.sampled_from(["", " ", "\t ", "\r"])).encode()
    text = draw(entry())
    lead = draw(st.sampled_from(["", "", " ", "\t"]))
    tail = draw(st.sampled_from(["", "", "", " # note", " ; SBL256894", ";x", "#x", " some text", "\t",
                                 " - ", " café"]))
    raw = (lead + text + tail).encode()
    if kind == "binary":
        junk = draw(st.sampled_from([b"\0", b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                     b"\xe2\x82", b"\x80", b"\xc3\xa9"]))  # the last one is valid
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + junk + raw[i:]
    elif kind == "long":
        size = draw(st.sampled_from([1023, 1024, 1025, 1100, 3000]))
        raw = (raw + b" #").ljust(size, b"x")
    return raw


@st.composite
def blocklist_file(draw) -> bytes:
    lines = draw(st.lists(line(), max_size=30))
    out = b"\xef\xbb\xbf" if draw(st.integers(0, 5)) == 0 else b""
    for i, raw in enumerate(lines):
        out += raw
        if i < len(lines) - 1 or draw(st.booleans()):
            out += draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\r\r\n"]))
    return out


@SETTINGS
@given(blocklist_file(), st.sampled_from([None, 4, 6]))
@example(b"", None)
@example(b"\xef\xbb\xbf", None)
@example(b"\n\n", None)
@example(b"1.2.3.4\r\n::1\r\n", 4)
@example(b"1.2.3.4\r\n::1\r\n", 6)
@example(b"0.0.0.0-255.255.255.255\n::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff\n", None)
@example(b"1.2.3.4 - 1.2.3.9\n1.2.3.4- 1.2.3.9\n1.2.3.4 -1.2.3.9\n1.2.3.4 -- x\n", None)
def test_native_parse_matches_reference(data, family):
    assert_matches_reference(data, family)


# Arbitrary text and bytes: the native address grammar is ipaddress's.
_ADDRESSY = st.text(st.sampled_from("0123456789abcdefABCDEF:./-%x \t#;\r\n"), max_size=200)


@SETTINGS
@given(st.one_of(_ADDRESSY.map(str.encode), st.binary(max_size=200)), st.sampled_from([None, 4, 6]))
def test_native_parse_matches_reference_on_arbitrary_input(data, family):
    assert_matches_reference(data, family)


def test_large_random_file_matches_reference():
    """Big enough for the radix-sort path of the compiler (>= 4096 prefixes)."""
    rng = random.Random(20240101)
    lines = []
    for _ in range(30_000):
        r = rng.random()
        if r < 0.5:
            lines.append(_v4(rng.getrandbits(32) & 0xFFFF00FF | 0x0A000000))  # 10.x with collisions
        elif r < 0.8:
            lines.append(f"{_v4(rng.getrandbits(32))}/{rng.randint(8, 32)}")
        elif r < 0.9:
            a = rng.getrandbits(32)
            lines.append(f"{_v4(a)}-{_v4(min(2**32 - 1, a + rng.randint(0, 5000)))}")
        else:
            lines.append(f"{ipaddress.IPv6Address(rng.getrandbits(128))}/{rng.randint(16, 128)}")
    result = assert_matches_reference("\n".join(lines).encode())
    assert result.entries_read == 30_000 and len(result.prefixes) > 4096


# --------------------------------------------------------------------------
# The reasons, one by one


@pytest.mark.parametrize("text,family,reason", [
    ("1.2.3.0/abc", None, "invalid prefix length"),
    ("1.2.3.0/-1", None, "invalid prefix length"),
    ("1.2.3.0/", None, "invalid prefix length"),
    ("1.2.3.0/255.255.255.0", None, "invalid prefix length"),
    ("1.2.3.0/33", None, "prefix length out of range for IPv4 (0-32)"),
    ("2001:db8::/129", None, "prefix length out of range for IPv6 (0-128)"),
    ("1.2.3.256", None, "invalid address"),
    ("1.2.3.0/24/8", None, "invalid prefix length"),
    ("01.2.3.4", None, "invalid address"),  # octal or decimal? ipaddress refuses to guess
    ("1.2.3", None, "invalid address"),
    ("1::2::3", None, "invalid address"),
    ("fe80::1%eth0", None, "invalid address"),
    ("1.2.3.9-1.2.3.4", None, "range end before start"),
    ("::9 - ::1", None, "range end before start"),
    ("1.2.3.4-::1", None, "range mixes IPv4 and IPv6"),
    ("2001:db8::/32", 4, "IPv6 entry in an IPv4-only list"),
    ("::1-::2", 4, "IPv6 entry in an IPv4-only list"),
    ("192.0.2.1", 6, "IPv4 entry in an IPv6-only list"),
    ("1.2.3.4\0", None, "binary data (NUL byte)"),
    ("1.2.3.4 # \udcff", None, "binary data (invalid UTF-8)"),
    ("1.2.3.4 #" + "x" * 1020, None, "line longer than 1024 bytes"),
])
def test_bad_line_reasons(text, family, reason):
    good = "2001:db8::/32" if family == 6 else "10.0.0.0/8"
    data = ("# header\n\n" + text + "\n" + good + "\n").encode("utf-8", "surrogateescape")
    result = assert_matches_reference(data, family)
    assert [(line, why) for line, why, _ in result.bad_lines] == [(3, reason)]


def test_accepted_forms_and_normalisation():
    data = (
        "\ufeff"                       # BOM
        "# comment\r\n"
        "; comment\r\n"
        "   \r\n"
        "192.0.2.77/24 # host bits set: normalised, not an error\r\n"
        "198.51.100.1 some text\r\n"
        "198.51.100.2;note\r\n"
        "198.51.100.4-198.51.100.7\r\n"
        "203.0.113.0 - 203.0.113.255\r\n"
        "2001:DB8::1/32\r\n"
        "2001:db9::1-2001:db9::2\r\n"
        "::ffff:192.0.2.1\r\n"
        "1.2.3.0/024\r\n"
        "1.2.3.4/32\n"                 # LF after CRLF lines, and no final newline
        "1.2.3.4"
    ).encode()
    result = assert_matches_reference(data)
    assert result.bad_lines == []
    assert result.entries_read == 11
    assert [str(n) for n in networks(result.prefixes)] == [
        "1.2.3.0/24", "192.0.2.0/24", "198.51.100.1/32", "198.51.100.2/32", "198.51.100.4/30", "203.0.113.0/24",
        "::ffff:c000:201/128", "2001:db8::/32", "2001:db9::1/128", "2001:db9::2/128",
    ]
    assert result.prefixes.count_v4() == 6 and result.prefixes.count_v6() == 4


def test_line_length_limit_counts_bytes_without_the_line_end():
    exact = b"1.2.3.4 #".ljust(1024, b"x")
    assert native(exact + b"\r\n").bad_lines == []
    assert native(exact + b"x\n").bad_lines == [(1, "line longer than 1024 bytes", (exact + b"x")[:77].decode() + "...")]


def test_bad_line_text_is_escaped_and_shortened():
    result = native(b"  1.2.3.4\x00\x01\\\xff\t  \n" + b"\xff" * 500 + b"\n" + b"1.2.3.0/33 ; SBL1\n")
    texts = [text for _, _, text in result.bad_lines]
    assert texts[0] == "1.2.3.4\\x00\\x01\\\\\\xff"
    assert texts[1] == "\\xff" * 19 + "..." and len(texts[1]) == 79
    assert texts[2] == "1.2.3.0/33 ; SBL1"
    assert all(len(t) <= 80 and t.isprintable() for t in texts)


# --------------------------------------------------------------------------
# Realistic lists


SPAMHAUS_DROP = """\
; Spamhaus DROP List 2024/06/01 - (c) 2024 The Spamhaus Project SLU
; https://www.spamhaus.org/drop/drop.txt
; Last-Modified: Sat, 01 Jun 2024 10:00:00 GMT
; Expires: Sat, 01 Jun 2024 11:00:00 GMT
1.10.16.0/20 ; SBL256894
1.19.0.0/16 ; SBL434604
1.32.128.0/18 ; SBL286275
2.56.192.0/22 ; SBL459831
2.59.200.0/22 ; SBL458543
5.134.128.0/19 ; SBL270738
5.183.60.0/22 ; SBL463004
223.254.0.0/16 ; SBL212803
"""

SPAMHAUS_DROPV6 = """\
; Spamhaus IPv6 DROP List 2024/06/01 - (c) 2024 The Spamhaus Project SLU
; https://www.spamhaus.org/drop/dropv6.txt
2001:678:738::/48 ; SBL635837
2400:fc00:8540::/44 ; SBL610171
2a06:e480::/29 ; SBL301771
"""

FIREHOL_LEVEL1 = """\
#
# firehol_level1
#
# ipv4 hash:net ipset
#
# A firewall blacklist composed from IP lists, providing
# maximum protection with minimum false positives. Suitable
# for basic protection on all internet facing servers,
# routers and firewalls. (includes: bambenek_c2 dshield
# feodo fullbogons spamhaus_drop spamhaus_edrop)
#
# Maintainer      : FireHOL
# Maintainer URL  : http://iplists.firehol.org/
# List source URL :
# Source File Date: Sat Jun  1 10:05:02 UTC 2024
#
# Category        : attacks
# Version         : 41523
#
# This File Date  : Sat Jun  1 10:14:02 UTC 2024
# Update Frequency: 1 min
# Aggregation     : none
# Entries         : 9 subnets, 9 unique IPs
#
# ATTENTION
# ---------
#
# This list was automatically generated by the FireHOL project.
#
0.0.0.0/8
1.10.16.0/20
1.19.0.0/16
5.188.10.179
10.0.0.0/8
31.184.198.71
100.64.0.0/10
185.220.100.240
185.220.100.241
"""


def test_spamhaus_drop_sample(tmp_path):
    path = tmp_path / "drop.txt"
    path.write_text(SPAMHAUS_DROP)
    loaded = read_blocklist(path, family=4, strict=True)
    assert loaded.entries_read == 8 and loaded.bad_lines == []
    assert [str(n) for n in networks(loaded.prefixes)] == [
        "1.10.16.0/20", "1.19.0.0/16", "1.32.128.0/18", "2.56.192.0/22", "2.59.200.0/22",
        "5.134.128.0/19", "5.183.60.0/22", "223.254.0.0/16"]
    assert_matches_reference(SPAMHAUS_DROP.encode(), 4)

    path6 = tmp_path / "dropv6.txt"
    path6.write_text(SPAMHAUS_DROPV6.replace("\n", "\r\n"))
    loaded6 = read_blocklist(path6, family=6, strict=True)
    assert [str(n) for n in networks(loaded6.prefixes)] == ["2001:678:738::/48", "2400:fc00:8540::/44", "2a06:e480::/29"]
    with pytest.raises(BlockListError, match=r"dropv6.txt:3: IPv6 entry in an IPv4-only list: '2001:678:738::/48 ; SBL635837'"):
        read_blocklist(path6, family=4, strict=True)


def test_firehol_sample(tmp_path):
    path = tmp_path / "firehol_level1.netset"
    path.write_text(FIREHOL_LEVEL1)
    loaded = read_blocklist(path, strict=True)
    assert loaded.entries_read == 9 and loaded.bad_lines == []
    assert [str(n) for n in networks(loaded.prefixes)] == [
        "0.0.0.0/8", "1.10.16.0/20", "1.19.0.0/16", "5.188.10.179/32", "10.0.0.0/8", "31.184.198.71/32",
        "100.64.0.0/10", "185.220.100.240/31"]  # .240 and .241 merge
    assert_matches_reference(FIREHOL_LEVEL1.encode())


# --------------------------------------------------------------------------
# read_blocklist: errors name the file and the line


@pytest.mark.parametrize("content,family,line,reason", [
    (b"10.0.0.0/8\n1.2.3.0/2x4\n", None, 2, "invalid prefix length"),
    (b"10.0.0.0/8\n2001:db8::/32\n", 4, 2, "IPv6 entry in an IPv4-only list"),
    (b"10.0.0.0/8\n\n1.2.3.0/33\n", None, 3, "prefix length out of range for IPv4 (0-32)"),
    (b"::/0\n2001:db8::/129\n", None, 2, "prefix length out of range for IPv6 (0-128)"),
    (b"10.0.0.0/8\n\x89PNG\xff\r\n", None, 2, "binary data (invalid UTF-8)"),
    (b"10.0.0.0/8\n1.2.3.4\x00\n", None, 2, "binary data (NUL byte)"),
    (b"10.0.0.0/8\n" + b"1" * 2000 + b"\n", None, 2, "line longer than 1024 bytes"),
], ids=["bad-cidr", "v6-in-v4-list", "slash-33", "slash-129", "binary", "nul", "overlong"])
def test_malformed_lists(tmp_path, content, family, line, reason):
    path = tmp_path / "list.txt"
    path.write_bytes(content)
    with pytest.raises(BlockListError) as info:
        read_blocklist(path, family=family, strict=True)
    assert f"{path}:{line}: {reason}: " in str(info.value)
    assert [(b.source, b.line, b.reason) for b in info.value.bad_lines] == [(str(path), line, reason)]
    # Not strict: the good entries load and the bad line is returned.
    loaded = read_blocklist(path, family=family)
    assert isinstance(loaded, LoadedList) and loaded.entries_read == 1 and len(loaded.prefixes) == 1
    assert [(b.line, b.reason) for b in loaded.bad_lines] == [(line, reason)]


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n", b"# only\n; comments\n", b"\xef\xbb\xbf# x\n"],
                         ids=["empty", "blank", "comments", "bom-comment"])
def test_empty_lists_are_refused_unless_allowed(tmp_path, content):
    path = tmp_path / "list.txt"
    path.write_bytes(content)
    message = (f"{path}: no valid entries; refusing to load an empty block list (an empty download "
               "would unblock everything); pass allow_empty to clear a list")
    with pytest.raises(BlockListError) as info:
        read_blocklist(path)
    assert str(info.value) == message and info.value.bad_lines == []
    loaded = read_blocklist(path, allow_empty=True, strict=True)
    assert loaded.entries_read == 0 and len(loaded.prefixes) == 0 and loaded.prefixes == PrefixSet()


def test_only_bad_lines_is_an_empty_list_and_says_why(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"<html>\n<body>Service Unavailable</body>\n")
    with pytest.raises(BlockListError, match="no valid entries") as info:
        read_blocklist(path)
    assert f"{path}:1: invalid address: '<html>'" in str(info.value)
    assert len(info.value.bad_lines) == 2


def test_unreadable_files(tmp_path):
    with pytest.raises(BlockListError, match=re.escape(f"{tmp_path / 'missing.txt'}: cannot read block list: No such file")):
        read_blocklist(tmp_path / "missing.txt")
    with pytest.raises(BlockListError, match=re.escape(f"{tmp_path}: cannot read block list")):
        read_blocklist(tmp_path)
    with pytest.raises(ValueError, match="family must be 4, 6 or None"):
        read_blocklist(tmp_path / "missing.txt", family=5)


def test_error_lists_twenty_bad_lines_then_counts_the_rest(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("10.0.0.0/8\n" + "bad\n" * 25)
    with pytest.raises(BlockListError) as info:
        read_blocklist(path, strict=True)
    message = str(info.value).splitlines()
    assert message[0] == f"{path}: 25 bad lines; nothing loaded"
    assert message[1] == f"  {path}:2: invalid address: 'bad'"
    assert message[20] == f"  {path}:21: invalid address: 'bad'"
    assert message[21:] == ["  and 5 more"]
    assert len(info.value.bad_lines) == 25


def test_bad_line_str():
    bad = BadLine("lists/x.txt", 7, "invalid address", "1.2.3.4\\x00")
    assert str(bad) == "lists/x.txt:7: invalid address: '1.2.3.4\\\\x00'"


# --------------------------------------------------------------------------
# PrefixSet: diff, union, equality


@st.composite
def prefix_entries(draw):
    """(bytes, length) entries of both families that overlap and merge often."""
    out = []
    for _ in range(draw(st.integers(0, 40))):
        if draw(st.booleans()):
            addr, length = draw(_v4_int), draw(st.one_of(st.integers(0, 32), st.integers(24, 32)))
            out.append((addr.to_bytes(4, "big"), length))
        else:
            addr, length = draw(_v6_int), draw(st.one_of(st.integers(0, 128), st.integers(118, 128)))
            out.append((addr.to_bytes(16, "big"), length))
    return out


def _reference_set(entries):
    return compile_prefixes_reference(ipaddress.ip_network((raw, length), strict=False) for raw, length in entries)


class Membership:
    """Address lookup in a list of disjoint networks of one family."""

    def __init__(self, nets):
        self.ranges = sorted((int(n.network_address), int(n.broadcast_address)) for n in nets)
        self.starts = [start for start, _ in self.ranges]

    def __contains__(self, address: int) -> bool:
        i = bisect.bisect_right(self.starts, address) - 1
        return i >= 0 and self.ranges[i][1] >= address


@SETTINGS
@given(prefix_entries(), prefix_entries(), st.lists(st.integers(0, 2**128 - 1), max_size=50))
def test_diff_turns_old_into_new(old_entries, new_entries, probes):
    old, new = PrefixSet.from_list(old_entries), PrefixSet.from_list(new_entries)
    assert networks(old) == _reference_set(old_entries)
    assert networks(new) == _reference_set(new_entries)
    added, removed = old.diff(new)
    old_set, new_set = set(old.to_list()), set(new.to_list())
    assert set(added.to_list()) == new_set - old_set
    assert set(removed.to_list()) == old_set - new_set
    applied = (old_set - set(removed.to_list())) | set(added.to_list())
    assert applied == new_set
    assert PrefixSet.from_list(list(applied)) == new
    # Addresses: the trie after the diff answers like the reference of the new list.
    applied_nets = [ipaddress.ip_network(e) for e in applied]
    expected = _reference_set(new_entries)
    for version, width in WIDTH.items():
        got = Membership(n for n in applied_nets if n.version == version)
        want = Membership(n for n in expected if n.version == version)
        edges = [int(n.network_address) + d for n in expected if n.version == version for d in (-1, 0)]
        edges += [int(n.broadcast_address) + d for n in expected if n.version == version for d in (0, 1)]
        for address in [p % (1 << width) for p in probes] + [e % (1 << width) for e in edges]:
            assert (address in got) == (address in want)
    assert old.diff(old) == (PrefixSet(), PrefixSet())
    assert new.diff(old) == (removed, added)


@SETTINGS
@given(prefix_entries(), prefix_entries())
def test_union_and_equality(a_entries, b_entries):
    a, b = PrefixSet.from_list(a_entries), PrefixSet.from_list(b_entries)
    union = a.union(b)
    assert networks(union) == _reference_set(a_entries + b_entries)
    assert union == b.union(a) == PrefixSet.from_list(a_entries + b_entries)
    assert (a == b) == (networks(a) == networks(b))
    assert (a != b) == (networks(a) != networks(b))
    if a == b:
        assert hash(a) == hash(b)
    assert len(union) == union.count_v4() + union.count_v6()
    assert [len(raw) for raw, _ in union.to_list()] == sorted(len(raw) for raw, _ in union.to_list())


def test_diff_of_large_sets():
    rng = random.Random(7)
    base = sorted({rng.getrandbits(31) * 2 for _ in range(20_000)})  # even: no siblings
    old = PrefixSet.from_list([(a.to_bytes(4, "big"), 32) for a in base])
    assert len(old) == len(base)
    dropped = set(rng.sample(base, 50))
    fresh = [(bytes([10, rng.randrange(256), rng.randrange(256), 0]), 24) for _ in range(50)]
    kept = [(a.to_bytes(4, "big"), 32) for a in base if a not in dropped and a >> 24 != 10]
    new = PrefixSet.from_list(kept + fresh)
    added, removed = old.diff(new)
    assert set(added.to_list()) == set(new.to_list()) - set(old.to_list())
    assert set(removed.to_list()) == set(old.to_list()) - set(new.to_list())
    assert len(added) == len(set(fresh))


def test_from_list_errors():
    with pytest.raises(ValueError, match="4 .IPv4. or 16 .IPv6. bytes"):
        PrefixSet.from_list([(b"\0" * 5, 8)])
    with pytest.raises(ValueError, match="prefix length 33 is outside 0..32"):
        PrefixSet.from_list([(b"\0" * 4, 33)])
    with pytest.raises(ValueError, match="prefix length -1 is outside 0..128"):
        PrefixSet.from_list([(b"\0" * 16, -1)])
    with pytest.raises(TypeError):
        PrefixSet.from_list([("1.2.3.4", 8)])
    assert PrefixSet.from_list(iter([(b"\xff" * 4, 1), (b"\0" * 4, 1)])).to_list() == [(b"\0" * 4, 0)]


def test_parse_errors():
    with pytest.raises(ValueError, match="cannot both be false"):
        _prefixes.parse_blocklist(b"1.2.3.4", allow_v4=False, allow_v6=False)
    with pytest.raises(TypeError):
        _prefixes.parse_blocklist("1.2.3.4")
    assert len(_prefixes.parse_blocklist(bytearray(b"1.2.3.4")).prefixes) == 1
    assert len(_prefixes.parse_blocklist(memoryview(b"1.2.3.4\n::1")).prefixes) == 2


# --------------------------------------------------------------------------
# LPM keys: the layouts of native/include/edgewarden_abi.h


def _cffi_key(c_type: str, **fields) -> bytes:
    return bytes(ffi.buffer(ffi.new(c_type + " *", fields)))


@SETTINGS
@given(prefix_entries(), st.one_of(st.none(), st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**32 - 1])))
def test_lpm_keys_decode_to_the_prefixes(entries, tenant):
    """BPF LPM keys: u32 prefixlen (native endian), [tenant id, big endian], address."""
    prefixes = PrefixSet.from_list(entries)
    v4 = [(raw, n) for raw, n in prefixes.to_list() if len(raw) == 4]
    v6 = [(raw, n) for raw, n in prefixes.to_list() if len(raw) == 16]
    keys4, keys6 = prefixes.lpm_keys_v4(tenant), prefixes.lpm_keys_v6(tenant_id=tenant)
    if tenant is None:
        assert [(raw, n) for n, raw in struct.iter_unpack("=I4s", keys4)] == v4
        assert [(raw, n) for n, raw in struct.iter_unpack("=I16s", keys6)] == v6
        c_type, fields = "struct ew_lpm_v6_key", lambda raw, n: {"prefixlen": n, "addr": list(raw)}
    else:
        tenant_be = tenant.to_bytes(4, "big")
        assert [(t, raw, n - 32) for n, t, raw in struct.iter_unpack("=I4s4s", keys4)] == [(tenant_be, *e) for e in v4]
        assert [(t, raw, n - 32) for n, t, raw in struct.iter_unpack("=I4s16s", keys6)] == [(tenant_be, *e) for e in v6]
        c_type = "struct ew_tenant_lpm_v6_key"
        fields = lambda raw, n: {"prefixlen": 32 + n, "tenant_id": list(tenant_be), "addr": list(raw)}  # noqa: E731
    # IPv6: byte for byte the structs of native/include/edgewarden_abi.h, as packed by cffi.
    size = ffi.sizeof(c_type)
    assert size == (20 if tenant is None else 24)
    assert [keys6[i:i + size] for i in range(0, len(keys6), size)] == [_cffi_key(c_type, **fields(*e)) for e in v6]


def test_lpm_keys_tenant_id_checks():
    prefixes = PrefixSet.from_list([(b"\x0a\0\0\0", 8)])
    for bad in (-1, 2**32, 2**70):
        with pytest.raises(ValueError, match="tenant_id must be in 0..4294967295"):
            prefixes.lpm_keys_v4(bad)
    for bad in ("1", 1.0, True):
        with pytest.raises(TypeError):
            prefixes.lpm_keys_v6(bad)
    assert PrefixSet().lpm_keys_v4() == b"" and PrefixSet().lpm_keys_v6(3) == b""


# --------------------------------------------------------------------------
# serialize / deserialize


@SETTINGS
@given(prefix_entries())
def test_serialize_round_trip(entries):
    prefixes = PrefixSet.from_list(entries)
    data = prefixes.serialize()
    assert data[:8] == b"EWPFXSET"
    assert struct.unpack_from("<III", data, 8) == (1, prefixes.count_v4(), prefixes.count_v6())
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    assert len(data) == 24 + 5 * prefixes.count_v4() + 17 * prefixes.count_v6()
    back = PrefixSet.deserialize(data)
    assert back == prefixes and back.to_list() == prefixes.to_list()
    assert PrefixSet.deserialize(bytearray(data)) == prefixes
    assert pickle.loads(pickle.dumps(prefixes)) == prefixes


def _payload(v4=(), v6=(), version=1) -> bytes:
    """A serialised set with a valid checksum, whatever its content."""
    body = b"EWPFXSET" + struct.pack("<III", version, len(v4), len(v6))
    body += b"".join(a.to_bytes(4, "big") + bytes([n]) for a, n in v4)
    body += b"".join(a.to_bytes(16, "big") + bytes([n]) for a, n in v6)
    return body + struct.pack("<I", zlib.crc32(body))


def test_deserialize_rejects_corrupt_data():
    good = PrefixSet.from_list([(bytes([10, 0, 0, 0]), 8), (bytes([192, 0, 2, 7]), 32),
                                (ipaddress.IPv6Address("2001:db8::").packed, 32)]).serialize()
    assert PrefixSet.deserialize(good).count_v6() == 1
    assert PrefixSet.deserialize(_payload([(0x0A000000, 8)], [(1, 128)])).to_list() == [
        (bytes([10, 0, 0, 0]), 8), (b"\0" * 15 + b"\1", 128)]
    for cut in range(len(good)):
        with pytest.raises(ValueError):
            PrefixSet.deserialize(good[:cut])
    with pytest.raises(ValueError, match="header says"):
        PrefixSet.deserialize(good + b"\0")
    for i in range(len(good)):  # every single-byte corruption is caught
        for flip in (0x01, 0x80, 0xFF):
            corrupt = bytearray(good)
            corrupt[i] ^= flip
            with pytest.raises(ValueError):
                PrefixSet.deserialize(bytes(corrupt))
    cases = [
        (b"", "too short"),
        (b"NOTASET!" + good[8:], "bad magic"),
        (_payload(version=2), "unsupported PrefixSet format version 2"),
        (good[:-1] + bytes([good[-1] ^ 1]), "checksum mismatch"),
        (_payload([(0, 33)]), "IPv4 entry 0: prefix length 33 > 32"),
        (_payload(v6=[(0, 129)]), "IPv6 entry 0: prefix length 129 > 128"),
        (_payload([(0x0A000001, 8)]), "IPv4 entry 0: host bits set"),
        (_payload([(0x0B000000, 8), (0x0A000000, 8)]), "IPv4 entry 1: out of order or overlapping"),
        (_payload([(0x0A000000, 8), (0x0A010000, 16)]), "IPv4 entry 1: out of order or overlapping"),
        (_payload([(0x0A000000, 8), (0x0A000000, 8)]), "IPv4 entry 1: out of order or overlapping"),
        (_payload([(0x0A000000, 8), (0x0B000000, 8)]), "IPv4 entry 1: mergeable"),
        (_payload(v6=[(2, 127), (0, 127)]), "IPv6 entry 1: out of order"),
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            PrefixSet.deserialize(data)
    with pytest.raises(TypeError):
        PrefixSet.deserialize("EWPFXSET")


# --------------------------------------------------------------------------
# The million-entry targets (generous bounds: a regression guard, not a benchmark)


def _best_of(n, fn):
    best, result = float("inf"), None
    for _ in range(n):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def test_million_line_list_is_fast():
    rng = random.Random(1)
    lines = []
    for a in rng.sample(range(0, 2**32, 2), 1_000_000):  # even addresses: nothing merges
        lines.append(f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}" + ("" if a & 6 else "/32 ; SBL1"))
    data = "\n".join(lines).encode()
    seconds, result = _best_of(3, lambda: _prefixes.parse_blocklist(data))
    assert result.entries_read == 1_000_000 and result.bad_lines == []
    old = result.prefixes
    assert len(old) == 1_000_000
    assert seconds < 1.0, f"parse + compile of 1M lines took {seconds:.3f} s"

    seconds, keys = _best_of(3, lambda: old.lpm_keys_v4(7))
    assert len(keys) == 12 * 1_000_000
    assert seconds < 0.1, f"key export of 1M prefixes took {seconds:.3f} s"

    # A new version: 50 entries gone, 50 new /32s whose /31 holds nothing old (so nothing merges).
    entries = old.to_list()
    gone = set(rng.sample(range(len(entries)), 50))
    new_entries = [e for i, e in enumerate(entries) if i not in gone]
    present = {raw for raw, _ in entries}
    fresh = [a for a in rng.sample(range(0, 2**32, 2), 100) if a.to_bytes(4, "big") not in present][:50]
    new_entries += [(a.to_bytes(4, "big"), 32) for a in fresh]
    new = PrefixSet.from_list(new_entries)
    seconds, (added, removed) = _best_of(3, lambda: old.diff(new))
    assert len(added) == 50 and len(removed) == 50
    assert seconds < 0.1, f"diff of two 1M sets took {seconds:.3f} s"
