"""Block lists: reading operator block-list files into compiled prefix sets,
natively (agent._prefixes, C++), and the pure-Python reference (ipaddress)
the native code is held to.

A block-list file has one entry per line: an IPv4 or IPv6 address, a CIDR
(host bits are cleared, not an error) or a range ``a-b`` (also ``a - b``),
which becomes the smallest set of prefixes covering exactly the range.
``#`` and ``;`` start comments, blank lines are skipped and text after the
entry is ignored, so FireHOL netsets, Spamhaus DROP (``1.10.16.0/20 ;
SBL256894``) and plain lists all load. CRLF line ends and a UTF-8 BOM are
accepted. Lines that are not entries are reported with their number, the
reason and the (escaped, shortened) text; nothing is guessed.

Compiling normalises the prefixes, drops duplicates and covered prefixes and
merges siblings: the result is the unique smallest prefix set matching the
same addresses, IPv4 first, then IPv6, each sorted by address.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from agent import _prefixes
from agent._prefixes import ParseResult, PrefixSet, parse_blocklist

__all__ = [
    "BadLine", "BlockListError", "LoadedList", "ParseResult", "PrefixSet",
    "compile_prefixes", "compile_prefixes_reference", "parse_blocklist",
    "parse_blocklist_reference", "read_blocklist",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_LINE_BYTES = _prefixes.MAX_LINE_BYTES  # 1024
MAX_LISTED_BAD_LINES = 20


def _split_families(networks: Iterable[IPNetwork]) -> tuple[list[IPNetwork], list[IPNetwork]]:
    v4, v6 = [], []
    for net in networks:
        (v4 if net.version == 4 else v6).append(net)
    return v4, v6


def compile_prefixes(networks: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Native: IPv4 prefixes first, then IPv6, each sorted by address."""
    result: list[IPNetwork] = []
    for family, cls in zip(_split_families(networks), (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        if family:
            compiled = _prefixes.compile_prefixes([(n.network_address.packed, n.prefixlen) for n in family])
            result.extend(cls((raw, length)) for raw, length in compiled)
    return result


def compile_prefixes_reference(networks: Iterable[IPNetwork]) -> list[IPNetwork]:
    result: list[IPNetwork] = []
    for family in _split_families(networks):
        result.extend(ipaddress.collapse_addresses(family))
    return result


# --------------------------------------------------------------------------
# Reading block-list files


@dataclass(frozen=True)
class BadLine:
    source: str
    line: int      # from 1
    reason: str
    text: str      # the line, non-printable bytes escaped, at most ~80 characters

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}: {self.text!r}"


class BlockListError(ValueError):
    """A block list that cannot be used; ``bad_lines`` holds the lines at fault
    (the message lists the first 20)."""

    def __init__(self, message: str, bad_lines: Sequence[BadLine] = ()):
        self.summary = message
        self.bad_lines: list[BadLine] = list(bad_lines)
        parts = [message, *(f"  {bad}" for bad in self.bad_lines[:MAX_LISTED_BAD_LINES])]
        if len(self.bad_lines) > MAX_LISTED_BAD_LINES:
            parts.append(f"  and {len(self.bad_lines) - MAX_LISTED_BAD_LINES} more")
        super().__init__("\n".join(parts))


@dataclass
class LoadedList:
    source: str
    entries_read: int
    prefixes: PrefixSet
    bad_lines: list[BadLine]


_FAMILY_FLAGS = {None: (True, True), 4: (True, False), 6: (False, True)}


def _family_flags(family: int | None) -> tuple[bool, bool]:
    try:
        return _FAMILY_FLAGS[family]
    except (KeyError, TypeError):
        raise ValueError(f"family must be 4, 6 or None, not {family!r}") from None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def read_blocklist(path: str | os.PathLike, *, family: int | None = None, strict: bool = False,
                   allow_empty: bool = False) -> LoadedList:
    """Read and compile a block-list file.

    ``family`` 4 or 6 makes entries of the other family bad lines. Bad lines
    are returned in ``bad_lines`` for the caller to report; with ``strict``
    any bad line raises BlockListError instead and nothing is loaded. A list
    without a single valid entry raises BlockListError unless ``allow_empty``:
    applying it would unblock everything, which is what a truncated or failed
    download looks like.
    """
    allow_v4, allow_v6 = _family_flags(family)
    source = os.fspath(path)
    source = source.decode(errors="replace") if isinstance(source, bytes) else source
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BlockListError(f"{source}: cannot read block list: {exc.strerror or exc}") from exc
    result = parse_blocklist(data, allow_v4=allow_v4, allow_v6=allow_v6)
    bad_lines = [BadLine(source, line, reason, text) for line, reason, text in result.bad_lines]
    if strict and bad_lines:
        raise BlockListError(f"{source}: {_plural(len(bad_lines), 'bad line')}; nothing loaded", bad_lines)
    if result.entries_read == 0 and not allow_empty:
        raise BlockListError(
            f"{source}: no valid entries; refusing to load an empty block list "
            "(an empty download would unblock everything); pass allow_empty to clear a list",
            bad_lines)
    return LoadedList(source, result.entries_read, result.prefixes, bad_lines)


# --------------------------------------------------------------------------
# The reference: the same file format in plain Python on top of ipaddress.
# Slow; it is the oracle the native parser is tested against.

R_TOO_LONG = f"line longer than {MAX_LINE_BYTES} bytes"
R_NUL = "binary data (NUL byte)"
R_UTF8 = "binary data (invalid UTF-8)"
R_ADDRESS = "invalid address"
R_PREFIX_SYNTAX = "invalid prefix length"
R_PREFIX_RANGE = {4: "prefix length out of range for IPv4 (0-32)", 6: "prefix length out of range for IPv6 (0-128)"}
R_RANGE_ORDER = "range end before start"
R_RANGE_MIXED = "range mixes IPv4 and IPv6"
R_FAMILY = {4: "IPv4 entry in an IPv6-only list", 6: "IPv6 entry in an IPv4-only list"}

_BLANKS = " \t"
_STRIP = " \t\r"
_TOKEN = re.compile(r"[^ \t]*")
_DIGITS = re.compile(r"[0-9]+")
_COMMENT = re.compile(r"[#;]")
_MAX_TEXT = 80


def _escape_byte(b: int) -> str:
    if b == 0x5C:
        return "\\\\"
    if b == 0x09:
        return "\\t"
    if b == 0x0D:
        return "\\r"
    if 0x20 <= b < 0x7F:
        return chr(b)
    return f"\\x{b:02x}"


def _line_text(raw: bytes) -> str:
    """The text of a bad line as reported: see line_text in the native parser."""
    pieces = [_escape_byte(b) for b in raw.strip(_STRIP.encode())]
    text = "".join(pieces)
    if len(text) <= _MAX_TEXT:
        return text
    out, size = [], 0
    for piece in pieces:
        if size + len(piece) > _MAX_TEXT - 3:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) + "..."


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text:  # ipaddress takes scoped IPv6 addresses; block lists do not
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _entry(content: str) -> str:
    """The entry of a line's content: its first token, or "a-b" for a range
    written with blanks around the dash."""
    first = _TOKEN.match(content).group()
    rest = content[len(first):].lstrip(_BLANKS)
    if rest and first.count("-") == 1 and first.endswith("-"):
        return first + _TOKEN.match(rest).group()
    if "-" not in first and rest.startswith("-"):
        return first + "-" + _TOKEN.match(rest[1:].lstrip(_BLANKS)).group()
    return first


def _parse_entry(entry: str, allowed: tuple[int, ...]) -> tuple[str | None, list[IPNetwork]]:
    if "-" in entry and "/" not in entry:  # "a/-1" is a CIDR with a bad length
        first_text, _, last_text = entry.partition("-")
        first, last = _address(first_text), _address(last_text)
        if first is None or last is None:
            return R_ADDRESS, []
        if first.version != last.version:
            return R_RANGE_MIXED, []
        if first.version not in allowed:
            return R_FAMILY[first.version], []
        if last < first:
            return R_RANGE_ORDER, []
        return None, list(ipaddress.summarize_address_range(first, last))
    address_text, slash, length_text = entry.partition("/")
    address = _address(address_text)
    if address is None:
        return R_ADDRESS, []
    if address.version not in allowed:
        return R_FAMILY[address.version], []
    length = address.max_prefixlen
    if slash:
        if not _DIGITS.fullmatch(length_text):
            return R_PREFIX_SYNTAX, []
        length = int(length_text)
        if length > address.max_prefixlen:
            return R_PREFIX_RANGE[address.version], []
    return None, [ipaddress.ip_network((address, length), strict=False)]


def _parse_line(raw: bytes, allowed: tuple[int, ...]) -> tuple[str | None, list[IPNetwork] | None]:
    """(reason, None) for a bad line, (None, None) for a blank or comment line,
    (None, networks) for an entry."""
    if len(raw) > MAX_LINE_BYTES:
        return R_TOO_LONG, None
    if b"\0" in raw:
        return R_NUL, None
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return R_UTF8, None
    content = _COMMENT.split(line, maxsplit=1)[0].strip(_STRIP)
    if not content:
        return None, None
    reason, networks = _parse_entry(_entry(content), allowed)
    return (reason, None) if reason else (None, networks)


def _to_bytes(text: str | bytes) -> bytes:
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    try:  # undecodable bytes kept by surrogateescape go back as they were
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates: not text, flagged as invalid UTF-8
        return text.encode("utf-8", "surrogatepass")


def _reference_parse(text: str | bytes, family: int | None = None
                     ) -> tuple[list[IPNetwork], int, list[tuple[int, str, str]]]:
    """parse_blocklist_reference with the reported text of each bad line."""
    allow_v4, allow_v6 = _family_flags(family)
    allowed = tuple(v for v, ok in ((4, allow_v4), (6, allow_v6)) if ok)
    data = _to_bytes(text)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the end of the last line, or an empty file
        lines.pop()
    networks: list[IPNetwork] = []
    entries_read = 0
    bad: list[tuple[int, str, str]] = []
    for number, raw in enumerate(lines, 1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        reason, found = _parse_line(raw, allowed)
        if reason:
            bad.append((number, reason, _line_text(raw)))
        elif found is not None:
            entries_read += 1
            networks.extend(found)
    return compile_prefixes_reference(networks), entries_read, bad


def parse_blocklist_reference(text: str | bytes, *, family: int | None = None
                              ) -> tuple[list[IPNetwork], int, list[tuple[int, str]]]:
    """Pure-Python parse of a block-list file: (compiled networks, IPv4 first;
    number of valid entry lines; [(line number, reason)] of the bad lines).
    Takes the file's bytes, or its text (undecodable bytes as surrogateescape)."""
    networks, entries_read, bad = _reference_parse(text, family)
    return networks, entries_read, [(line, reason) for line, reason, _ in bad]
