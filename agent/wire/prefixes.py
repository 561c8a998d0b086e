"""Block lists as they travel: packed records, one family per block,
readable without native code on either side.

A record is the address in network order followed by one prefix-length
byte (5 bytes for IPv4, 17 for IPv6): the record layout of the native
PrefixSet serialisation, so an agent with agent._prefixes turns a received
list into a PrefixSet without a Python loop (to_prefix_set). A PrefixList
holds its records sorted (address, then length), without duplicates and
without host bits: byte order is then prefix order, and one set of prefixes
has exactly one encoding (digests hash the bytes as they are)."""

from __future__ import annotations

import bisect
import ipaddress
import socket
import struct
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

RECORD_SIZE = {4: 5, 6: 17}
ADDRESS_BITS = {4: 32, 6: 128}
_INET = {4: socket.AF_INET, 6: socket.AF_INET6}


class PrefixListError(ValueError):
    """Packed records that are not a valid list; the message names the family and the record."""


class PackedRecords:
    """The records of one family as a sequence of bytes, for bisect."""

    def __init__(self, data: bytes, size: int):
        self.data, self.size = data, size

    def __len__(self) -> int:
        return len(self.data) // self.size

    def __getitem__(self, i: int) -> bytes:
        return self.data[i * self.size:(i + 1) * self.size]

    def has(self, record: bytes) -> bool:
        i = bisect.bisect_left(self, record)
        return i < len(self) and self[i] == record


def _record(network) -> tuple[int, bytes]:
    return network.version, network.network_address.packed + bytes([network.prefixlen])


_UNPACK = {4: struct.Struct(">IB"), 6: struct.Struct(">QQB")}
_HOST_MASK = [(1 << (32 - n)) - 1 for n in range(33)]
_HOST_MASK_V6 = [(1 << (128 - n)) - 1 for n in range(129)]


def _first_bad_record(family: int, data: bytes) -> tuple[int, str] | None:
    """(index, what is wrong) of the first bad record, or None. The loops run
    in C (struct.iter_unpack, map, zip); only a failure is located in Python."""
    if family == 4:
        records = list(_UNPACK[4].iter_unpack(data))
        masks = _HOST_MASK
        try:
            ok = not any(map(int.__and__, (a for a, _ in records), (masks[n] for _, n in records)))
        except IndexError:
            ok = False
    else:
        records = [((hi << 64) | lo, n) for hi, lo, n in _UNPACK[6].iter_unpack(data)]
        masks = _HOST_MASK_V6
        ok = all(n <= 128 and not a & masks[n] for a, n in records)
    if ok and all(map(tuple.__lt__, records, records[1:])):
        return None
    bits = ADDRESS_BITS[family]
    for i, (address, length) in enumerate(records):
        if length > bits:
            return i, f"prefix length {length} > {bits}"
        if address & masks[length]:
            return i, "host bits set"
        if i and records[i - 1] >= records[i]:
            return i, "out of order or repeated"
    return None


def check_records(family: int, data: bytes, where: str = "") -> None:
    """PrefixListError unless `data` is sorted, duplicate-free, host-bit-free records of `family`."""
    size = RECORD_SIZE.get(family)
    label = f"{where + ': ' if where else ''}IPv{family}"
    if size is None:
        raise PrefixListError(f"{where + ': ' if where else ''}family {family!r} is not 4 or 6")
    if len(data) % size:
        raise PrefixListError(f"{label} block of {len(data)} bytes is not a whole number of {size}-byte records")
    bad = _first_bad_record(family, data)
    if bad is not None:
        raise PrefixListError(f"{label} record {bad[0]}: {bad[1]}")


@dataclass(frozen=True)
class PrefixList:
    """A set of IPv4 and IPv6 prefixes as two blocks of packed records."""

    v4: bytes = b""
    v6: bytes = b""

    @classmethod
    def from_networks(cls, networks: Iterable) -> "PrefixList":
        """From ip_network objects or CIDR strings (host bits cleared, duplicates merged)."""
        blocks: dict[int, set[bytes]] = {4: set(), 6: set()}
        for net in networks:
            if isinstance(net, str):
                net = ipaddress.ip_network(net.strip(), strict=False)
            family, record = _record(net)
            blocks[family].add(record)
        return cls(b"".join(sorted(blocks[4])), b"".join(sorted(blocks[6])))

    @classmethod
    def from_packed(cls, v4: bytes, v6: bytes, where: str = "") -> "PrefixList":
        """From received blocks, checked record by record (PrefixListError says which)."""
        check_records(4, v4, where)
        check_records(6, v6, where)
        return cls(bytes(v4), bytes(v6))

    def block(self, family: int) -> bytes:
        return self.v4 if family == 4 else self.v6

    def count(self, family: int) -> int:
        return len(self.block(family)) // RECORD_SIZE[family]

    def __len__(self) -> int:
        return self.count(4) + self.count(6)

    def records(self, family: int) -> Iterator[bytes]:
        data, size = self.block(family), RECORD_SIZE[family]
        return (data[i:i + size] for i in range(0, len(data), size))

    def cidrs(self) -> Iterator[str]:
        """The prefixes as CIDR strings, IPv4 first, each family in order."""
        for family in (4, 6):
            inet, size = _INET[family], RECORD_SIZE[family]
            for record in self.records(family):
                yield f"{socket.inet_ntop(inet, record[:size - 1])}/{record[-1]}"

    def has_cidr(self, text: str) -> bool:
        """Whether `text` is one of cidrs(), exactly as written: a bisect, not a pass over the list."""
        try:
            net = ipaddress.ip_network(text)
        except ValueError:
            return False
        family, record = _record(net)
        return PackedRecords(self.block(family), RECORD_SIZE[family]).has(record) and _show(family, record) == text

    def networks(self) -> Iterator:
        return (ipaddress.ip_network(c) for c in self.cidrs())

    def apply(self, added: "PrefixList", removed: "PrefixList") -> "PrefixList":
        """This list with `removed` taken out and `added` put in; PrefixListError
        if an added prefix is present already or a removed one is absent (the
        change was made against another list). Costs a bisect per change and
        one copy of the list, not a pass over its records in Python."""
        blocks = []
        for family in (4, 6):
            data, size = self.block(family), RECORD_SIZE[family]
            records = PackedRecords(data, size)
            cuts: list[tuple[int, int, bytes]] = []   # (at, records to skip, bytes to insert)
            for record in removed.records(family):
                i = bisect.bisect_left(records, record)
                if i >= len(records) or records[i] != record:
                    raise PrefixListError(f"IPv{family} prefix {_show(family, record)} to remove is not in the list")
                cuts.append((i, 1, b""))
            for record in added.records(family):
                i = bisect.bisect_left(records, record)
                if i < len(records) and records[i] == record:
                    raise PrefixListError(f"IPv{family} prefix {_show(family, record)} to add is already in the list")
                cuts.append((i, 0, record))
            # removals before insertions at one index: the removed record sits at i, insertions go before i+1
            cuts.sort(key=lambda c: (c[0] + c[1], c[2]))
            pieces, at = [], 0
            for index, skip, insert in cuts:
                pieces.append(data[at * size:index * size] if index >= at else b"")
                if insert:
                    pieces.append(insert)
                at = max(at, index + skip)
            pieces.append(data[at * size:])
            blocks.append(b"".join(pieces))
        return PrefixList(*blocks)

    def difference(self, other: "PrefixList") -> tuple["PrefixList", "PrefixList"]:
        """(added, removed) that turn `self` into `other` (self.apply(added, removed) == other).
        A merge of the two sorted blocks that skips equal runs with memcmp, so
        a few changes in a long list cost a few comparisons, not a pass in Python."""
        out = {}
        for family in (4, 6):
            out[family] = _merge_difference(self.block(family), other.block(family), RECORD_SIZE[family])
        return PrefixList(out[4][0], out[6][0]), PrefixList(out[4][1], out[6][1])

    def to_prefix_set(self):
        """The native agent._prefixes.PrefixSet enforcing this list (needs the
        compiled module). A minimal list, as PrefixSet compiles them, is taken
        over as it is, without a Python loop; any other is compiled first."""
        from agent._prefixes import PrefixSet   # optional fast path: the wire itself never needs it
        body = b"EWPFXSET" + struct.pack("<III", 1, self.count(4), self.count(6)) + self.v4 + self.v6
        try:
            return PrefixSet.deserialize(body + struct.pack("<I", zlib.crc32(body)))
        except ValueError:   # overlapping or mergeable entries: not a compiled set
            return PrefixSet.from_list([(r[:-1], r[-1]) for family in (4, 6) for r in self.records(family)])

    @classmethod
    def from_prefix_set(cls, prefix_set) -> "PrefixList":
        """From a native PrefixSet (its serialisation holds the same records)."""
        data = prefix_set.serialize()
        n4, n6 = struct.unpack_from("<II", data, 12)
        v4_end = 20 + n4 * RECORD_SIZE[4]
        return cls(data[20:v4_end], data[v4_end:v4_end + n6 * RECORD_SIZE[6]])


_RUN = 4096   # records compared at once while the two lists agree


def _merge_difference(old: bytes, new: bytes, size: int) -> tuple[bytes, bytes]:
    """(records only in new, records only in old) of two sorted record blocks."""
    added, removed = [], []
    i, j, n_old, n_new = 0, 0, len(old) // size, len(new) // size
    while i < n_old and j < n_new:
        run = min(_RUN, n_old - i, n_new - j)
        if old[i * size:(i + run) * size] == new[j * size:(j + run) * size]:
            i, j = i + run, j + run
            continue
        # the first record where they differ, by halving the run (each step one memcmp)
        low, high = 0, run - 1          # records [i, i+low) agree; they differ somewhere before i+high+1
        while low < high:
            mid = (low + high) // 2
            if old[(i + low) * size:(i + mid + 1) * size] == new[(j + low) * size:(j + mid + 1) * size]:
                low = mid + 1
            else:
                high = mid
        i, j = i + low, j + low
        a, b = old[i * size:(i + 1) * size], new[j * size:(j + 1) * size]
        if a < b:
            removed.append(a)
            i += 1
        elif b < a:
            added.append(b)
            j += 1
    removed.append(old[i * size:])
    added.append(new[j * size:])
    return b"".join(added), b"".join(removed)


def _show(family: int, record: bytes) -> str:
    return f"{socket.inet_ntop(_INET[family], record[:-1])}/{record[-1]}"
