"""The IPv4 host bits (struct ew_host_bits_v4, map ew_host_bits_v4): the
per-host bitmaps of the global list's partial /24s (the level-24 nodes of
ew_gblock_v4) in an inlined array, so that the drop of a source inside a
/25-/32 of the global list costs no hash lookup. Entry = /24 index & mask,
direct-mapped: of the /24s that share an entry one holds it (the one already
there, else the lowest), the others fall back to the table's lookup, and so
does every source whose entry's tag names another /24 or none. The array
only ever answers for its own /24, so the verdict stays exact.

The packet path reads the tag, the hosts word, the tag again (bpf/blocklist.h
host_bits_v4). The agent writes through a mmap of the array, every tag and
every hosts word of a held entry with one 8-byte store, so that no packet
reads a torn entry, and only after the table changed (HostBitsUpdate.apply):
an entry that keeps its /24 gets the new version's hosts word by word (a
packet reads one word: the old version's or the new one's); an entry whose
/24 has no level-24 node any more, or yields its entry, is freed (its tag
loses EW_HOST_BITS_VALID); then each /24 that takes an entry has its hosts
written first and its tag last, with the entry's generation one up, so a
packet that read the entry's old tag sees the change on its second read.
Until then the entries say the old version, which is one of the two a
packet may be judged by while a version swaps in; nothing needs widening
first, as the prefilter does, because an entry never decides a source
outside its own /24.

Outside an update, an entry with a valid tag holds exactly the live table's
level-24 node of its /24."""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from agent._libbpf import ffi
from agent._prefixes import EntryTable
from agent.datapath import abi
from agent.datapath.syscalls import BpfMap

MAP_NAME = "ew_host_bits_v4"
GLOBAL_TABLE = "ew_gblock_v4"
ENTRY_WORDS = 8                     # struct ew_host_bits_v4 as u64: tag, hosts[4], reserved[3]
TAG, FIRST_HOST_WORD = 0, 1
NODE_WORDS = 9                      # struct ew_block_node as u64: flags and reserved, full24[4] (hosts), partial24[4]
VALID = np.uint64(abi.HOST_BITS_VALID << 32)
INDEX24_MASK = 0xFFFFFF
GENERATION_MASK = np.uint64(0xFFFF_FFFF)


def tag_of(index24, generation):
    """The tag of an entry holding /24 number `index24` (arrays or ints)."""
    index24, generation = np.asarray(index24, dtype=np.uint64), np.asarray(generation, dtype=np.uint64)
    return VALID | (index24 << np.uint64(32)) | (generation & GENERATION_MASK)


class HostBitsArray:
    """The live array through a shared mmap: reads as numpy views, writes as
    single 8-byte stores (cffi), never through the syscall, which copies a
    whole value and could let a packet read half of it."""

    def __init__(self, bpf_map: BpfMap):
        self.entries = bpf_map.max_entries
        self._mmap = mmap.mmap(bpf_map.fd, self.entries * ENTRY_WORDS * 8, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
        self._words = ffi.from_buffer("uint64_t[]", self._mmap)
        self.words = np.frombuffer(self._mmap, dtype=np.uint64).reshape(self.entries, ENTRY_WORDS)

    def store(self, entry: int, word: int, value) -> None:
        """One aligned 8-byte store: a packet sees the old or the new word."""
        self._words[int(entry) * ENTRY_WORDS + word] = int(value)

    def fill_free(self, entries: np.ndarray, hosts: np.ndarray) -> None:
        """The hosts words of free entries, as one copy: no packet takes a
        free entry's words (its tag names another /24 or none)."""
        self.words[entries, FIRST_HOST_WORD:FIRST_HOST_WORD + 4] = hosts

    def close(self) -> None:
        del self.words, self._words     # the mmap cannot close while they export it
        self._mmap.close()

    def __enter__(self) -> "HostBitsArray":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def entry_of(index24):
    return index24 & (abi.HOST_BITS_V4_ENTRIES - 1)


def level24_nodes(table: EntryTable) -> tuple[np.ndarray, np.ndarray]:
    """(/24 index, hosts words (n, 4)) of every level-24 node of a global v4 table."""
    keys = np.frombuffer(table.keys_view(), dtype=np.uint32)
    values = np.frombuffer(table.values_view(), dtype=np.uint64).reshape(-1, NODE_WORDS)
    level24 = (keys >> 24) == abi.BLOCK_LEVEL_24
    return (keys[level24] & INDEX24_MASK).astype(np.uint32), values[level24, 1:5].copy()


def _owners(tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(valid?, /24 index) per entry, from its tag."""
    return (tags & VALID) != 0, ((tags >> np.uint64(32)) & np.uint64(INDEX24_MASK)).astype(np.uint32)


@dataclass
class HostBitsUpdate:
    """What one change of the global v4 table does to the array: `kept`
    entries keep their /24 (and get its new hosts), `freed` entries lose
    theirs, `taken` entries get one (after the freeing, if they were held)."""

    array: HostBitsArray
    kept: np.ndarray                # entry indexes
    kept_hosts: np.ndarray          # (n, 4) hosts words of the new version
    freed: np.ndarray               # entry indexes
    freed_tags: np.ndarray          # their tags without VALID (generation kept)
    taken: np.ndarray               # entry indexes
    taken_tags: np.ndarray
    taken_hosts: np.ndarray         # (n, 4)
    written: int = 0                # 8-byte stores made

    @classmethod
    def for_table(cls, array: HostBitsArray, table: EntryTable) -> "HostBitsUpdate":
        """The change that makes the array follow `table`, the whole new version."""
        index24, hosts = level24_nodes(table)
        tags = array.words[:, TAG].copy()
        valid, owner = _owners(tags)
        entries = entry_of(index24).astype(np.int64)
        holds = valid[entries] & (owner[entries] == index24)
        # Per entry, its holder if it stays, else the lowest /24 that wants it.
        order = np.lexsort((index24, ~holds, entries))
        _, first = np.unique(entries[order], return_index=True)
        chosen = order[first]
        keep, take = chosen[holds[chosen]], chosen[~holds[chosen]]
        kept, taken = entries[keep], entries[take]
        freed = np.setdiff1d(np.nonzero(valid)[0], kept)
        return cls(array, kept, hosts[keep], freed, tags[freed] & ~VALID,
                   taken, tag_of(index24[take], (tags[taken] & GENERATION_MASK) + np.uint64(1)), hosts[take])

    @classmethod
    def for_writes(cls, array: HostBitsArray, writes: list[tuple[bytes, bytes]],
                   stale: list[bytes]) -> "HostBitsUpdate | None":
        """The change of an in-place delta of the global table (its written
        and deleted entries), for the /24s it touches only. A touched /24
        takes its entry only if that is free or freed by this delta: another
        /24 keeps what it holds."""
        written: dict[int, np.ndarray] = {}
        for key, value in writes:
            node = int.from_bytes(key, "little")
            if node >> 24 == abi.BLOCK_LEVEL_24:
                written[node & INDEX24_MASK] = np.frombuffer(value, dtype=np.uint64)[1:5].copy()
        deleted = {node & INDEX24_MASK for node in (int.from_bytes(key, "little") for key in stale)
                   if node >> 24 == abi.BLOCK_LEVEL_24}
        if not written and not deleted:
            return None
        tags: dict[int, int] = {}
        for index24 in sorted({*written, *deleted}):
            entry = int(entry_of(index24))
            tags.setdefault(entry, int(array.words[entry, TAG]))
        kept, kept_hosts, freed, taken, taken_tags, taken_hosts = [], [], [], [], [], []
        for entry, tag in tags.items():
            valid, owner = bool(tag & int(VALID)), (tag >> 32) & INDEX24_MASK
            if valid and owner in written:
                kept.append(entry)
                kept_hosts.append(written[owner])
                continue
            if valid and owner not in deleted:
                continue                # another /24's entry
            if valid:
                freed.append(entry)
            wanting = [index24 for index24 in written if entry_of(index24) == entry]
            if wanting:
                taken.append(entry)
                taken_tags.append(int(tag_of(min(wanting), (tag & int(GENERATION_MASK)) + 1)))
                taken_hosts.append(written[min(wanting)])

        def rows(hosts):
            return np.array(hosts, dtype=np.uint64).reshape(-1, 4)

        return cls(array, np.array(kept, dtype=np.int64), rows(kept_hosts), np.array(freed, dtype=np.int64),
                   np.array([tags[e] for e in freed], dtype=np.uint64) & ~VALID,
                   np.array(taken, dtype=np.int64), np.array(taken_tags, dtype=np.uint64), rows(taken_hosts))

    def apply(self) -> None:
        """After the table changed: kept entries get the new hosts, then
        entries are freed, then taken."""
        current = self.array.words[self.kept, FIRST_HOST_WORD:FIRST_HOST_WORD + 4]
        for row, column in zip(*np.nonzero(current != self.kept_hosts)):
            self.array.store(self.kept[row], FIRST_HOST_WORD + column, self.kept_hosts[row, column])
            self.written += 1
        for entry, tag in zip(self.freed, self.freed_tags):
            self.array.store(entry, TAG, tag)
        self.written += len(self.freed)
        if len(self.taken):
            self.array.fill_free(self.taken, self.taken_hosts)
            for entry, tag in zip(self.taken, self.taken_tags):
                self.array.store(entry, TAG, tag)
            self.written += 5 * len(self.taken)


def follow_table(maps: dict[str, BpfMap], table: EntryTable) -> None:
    """The global table now holds `table` (the whole version): follow it."""
    with HostBitsArray(maps[MAP_NAME]) as array:
        HostBitsUpdate.for_table(array, table).apply()


def follow_writes(maps: dict[str, BpfMap], writes: list[tuple[bytes, bytes]], stale: list[bytes]) -> None:
    """The global table now has `writes` written and `stale` deleted: follow it."""
    with HostBitsArray(maps[MAP_NAME]) as array:
        update = HostBitsUpdate.for_writes(array, writes, stale)
        if update is not None:
            update.apply()


def sync_host_bits(maps: dict[str, BpfMap]) -> None:
    """Make the array follow the live global table (a program loaded beside
    tables pinned by an edgewarden without the array, or after a table
    change that failed half-way: the array may hold hosts of a version the
    table does not)."""
    from agent.datapath.blocktables import SwappableTable
    follow_table(maps, SwappableTable(maps[GLOBAL_TABLE]).entries_table())


def host_bits_mismatches(maps: dict[str, BpfMap]) -> list[str]:
    """Every entry that disagrees with the live global table (tests, status):
    a valid tag whose /24 has no level-24 node, or other hosts than its node."""
    from agent.datapath.blocktables import SwappableTable
    index24, hosts = level24_nodes(SwappableTable(maps[GLOBAL_TABLE]).entries_table())
    nodes = {int(i): h for i, h in zip(index24, hosts)}
    problems = []
    with HostBitsArray(maps[MAP_NAME]) as array:
        words = array.words.copy()
    valid, owner = _owners(words[:, TAG])
    for entry in np.nonzero(valid)[0]:
        held, node = int(owner[entry]), nodes.get(int(owner[entry]))
        if entry_of(held) != entry:
            problems.append(f"entry {entry} holds /24 {held:#08x}, whose entry is {entry_of(held)}")
        elif node is None:
            problems.append(f"entry {entry} holds /24 {held:#08x}, which has no level-24 node")
        elif not np.array_equal(node, words[entry, FIRST_HOST_WORD:FIRST_HOST_WORD + 4]):
            problems.append(f"entry {entry} (/24 {held:#08x}) holds other hosts than its node")
    return problems


def held_24s(maps: dict[str, BpfMap]) -> set[int]:
    """The /24 indexes the array holds (tests, status)."""
    with HostBitsArray(maps[MAP_NAME]) as array:
        valid, owner = _owners(array.words[:, TAG].copy())
    return {int(i) for i in owner[valid]}
