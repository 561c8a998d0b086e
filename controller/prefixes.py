"""Prefix text <-> the native PrefixSet (agent._prefixes): the controller
stores normalised CIDR text and compiles and diffs it natively."""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Iterable

from agent._prefixes import PrefixSet, parse_blocklist


def prefix_set(texts: Iterable[str]) -> PrefixSet:
    """Compile CIDR/address texts with the project's list parser (they are
    already valid: stored only after parsing)."""
    data = "\n".join(texts).encode()
    return parse_blocklist(data).prefixes if data else PrefixSet()


def prefix_set_of_lines(text: str) -> PrefixSet:
    """prefix_set of the texts in `text`, one a line."""
    return parse_blocklist(text.encode()).prefixes if text else PrefixSet()


def _v6_text(raw: bytes) -> str:
    # inet_ntop writes IPv4-mapped and -compatible addresses with a dotted quad
    # (::ffff:1.2.3.4); agent.policy's documents are written by ipaddress
    # (::ffff:102:304), and the controller's must be the same text
    text = socket.inet_ntop(socket.AF_INET6, raw)
    return str(ipaddress.IPv6Address(raw)) if "." in text else text


def prefix_texts(prefixes: PrefixSet) -> list[str]:
    """CIDR texts as agent.policy writes them, IPv4 first, then IPv6, sorted
    by address (the set's order)."""
    v4, ntop = socket.AF_INET, socket.inet_ntop
    return [f"{ntop(v4, raw) if len(raw) == 4 else _v6_text(raw)}/{length}" for raw, length in prefixes.to_list()]




class _Positions:
    """Indexes into a set's to_list() order (IPv4 first, each family by address),
    by bisecting its packed records (agent.wire.prefixes' layout)."""

    def __init__(self, prefixes: PrefixSet):
        from agent.wire.prefixes import RECORD_SIZE, PrefixList
        self.blocks, self.size, self.v4 = PrefixList.from_prefix_set(prefixes), RECORD_SIZE, prefixes.count_v4()

    def of(self, raw: bytes, length: int) -> int:
        family = 4 if len(raw) == 4 else 6
        records, size, record = self.blocks.block(family), self.size[family], raw + bytes([length])
        low, high = 0, len(records) // size
        while low < high:
            mid = (low + high) // 2
            if records[mid * size:(mid + 1) * size] < record:
                low = mid + 1
            else:
                high = mid
        return low if family == 4 else self.v4 + low


class TextsCache:
    """prefix_texts of each scope's list, kept from the last compile and edited
    by the native diff to the next one: one entry added to a 1M list costs a
    few list edits instead of writing a million CIDR texts again (0.7 s).
    Keyed by nothing but the sets themselves, so a revision another process
    made cannot make it stale: the new set is always compiled from the store."""

    SMALLEST = 10_000    # smaller lists are written out in a few ms: not worth the memory
    MOST_CHANGES = 256   # each change is a list insert or delete (a memmove of the list)

    def __init__(self):
        self._lock = threading.Lock()
        self._kept: dict = {}   # scope -> (PrefixSet, its texts)

    def texts(self, scope, prefixes: PrefixSet) -> list[str]:
        with self._lock:
            kept = self._kept.get(scope)
            texts = self._edited(*kept, prefixes) if kept is not None else None
            if texts is None:
                texts = prefix_texts(prefixes)
            if len(texts) >= self.SMALLEST:
                self._kept[scope] = (prefixes, texts)
            else:
                self._kept.pop(scope, None)
            return list(texts)   # the caller's own copy: the kept one is edited next time

    def _edited(self, old: PrefixSet, old_texts: list[str], new: PrefixSet) -> list[str] | None:
        added, removed = old.diff(new)
        if added.count_v4() + added.count_v6() + removed.count_v4() + removed.count_v6() > self.MOST_CHANGES:
            return None
        texts = list(old_texts)
        if removed.count_v4() or removed.count_v6():
            where = _Positions(old)
            for index in sorted((where.of(raw, length) for raw, length in removed.to_list()), reverse=True):
                del texts[index]
        if added.count_v4() or added.count_v6():
            where = _Positions(new)
            # indexes in the new set are distinct, so the sort never compares the texts
            for index, text in sorted(zip((where.of(raw, length) for raw, length in added.to_list()),
                                          prefix_texts(added))):
                texts.insert(index, text)
        if len(texts) != new.count_v4() + new.count_v6():
            return None
        return texts
