"""The IPv4 host bits (struct ew_host_bits_v4): the per-host bitmaps of the
partial /24s of the global list (the level-24 nodes of ew_gblock_v4, map
ew_host_bits_v4) and of the tenants' lists (those of ew_tblock_v4, map
ew_thost_bits_v4) in inlined arrays, so that the drop of a source inside a
/25-/32 of the global list, and the verdict on a source in a /24 its
tenant's list blocks part of, cost no hash lookup. Direct-mapped: entry =
(/24 index + tenant id x EW_HOST_BITS_TENANT_SPREAD) & mask (tenant 0 in
the global array); of the (tenant, /24)s that share an entry one holds it
(the one already there, else the lowest), the others fall back to the
table's lookups, and so does every source whose entry names another
(tenant, /24) or none. An entry only ever answers for its own, so the
verdict stays exact.

The packet path reads the tag, the tenant and hosts words, the tag again
(bpf/blocklist.h host_bits_v4). The agent writes through a mmap of the
array, every tag and every hosts word of a held entry with one 8-byte
store, so that no packet reads a torn entry, and only after the table
changed (HostBitsUpdate.apply): an entry that keeps its (tenant, /24) gets
the new version's hosts word by word (a packet reads one word: the old
version's or the new one's); an entry whose /24 has no level-24 node any
more, or yields its entry, is freed (its tag loses EW_HOST_BITS_VALID);
then each (tenant, /24) that takes an entry has its tenant and hosts
written first and its tag last, with the entry's generation one up, so a
packet that read the entry's old tag sees the change on its second read.
Until then the entries say the old version, which is one of the two a
packet may be judged by while a version swaps in; nothing needs widening
first, as the prefilter does, because an entry never decides a source
outside its own /24. (A level-24 node is the whole decision for its /24:
compiled prefixes do not overlap, so no /24-or-shorter prefix covers it.)

Outside an update, an entry with a valid tag holds exactly the live table's
level-24 node of its (tenant, /24)."""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from agent._libbpf import ffi
from agent._prefixes import EntryTable
from agent.datapath import abi
from agent.datapath.syscalls import BpfMap

MAP_NAME = "ew_host_bits_v4"
TENANT_MAP_NAME = "ew_thost_bits_v4"
GLOBAL_TABLE, TENANT_TABLE = "ew_gblock_v4", "ew_tblock_v4"
MAPS = {GLOBAL_TABLE: MAP_NAME, TENANT_TABLE: TENANT_MAP_NAME}     # block table -> its host bits
ENTRY_WORDS = 8                     # struct ew_host_bits_v4 as u64: tag, hosts[4], tenant and reserved, spare[2]
TAG, FIRST_HOST_WORD, TENANT_WORD = 0, 1, 5
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

    def fill_free(self, entries: np.ndarray, tenants: np.ndarray, hosts: np.ndarray) -> None:
        """The tenant and hosts words of free entries, as one copy: no packet
        takes a free entry's words (its tag names another /24 or none)."""
        self.words[entries, FIRST_HOST_WORD:FIRST_HOST_WORD + 4] = hosts
        self.words[entries, TENANT_WORD] = tenants

    def close(self) -> None:
        del self.words, self._words     # the mmap cannot close while they export it
        self._mmap.close()

    def __enter__(self) -> "HostBitsArray":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def entry_of(owner):
    """The entry of an owner key (tenant id << 24 | /24 index; the global array's tenant is 0)."""
    owner = np.asarray(owner, dtype=np.uint64)
    index24, tenant = owner & np.uint64(INDEX24_MASK), owner >> np.uint64(24)
    return ((index24 + tenant * np.uint64(abi.HOST_BITS_TENANT_SPREAD)) & np.uint64(abi.HOST_BITS_V4_ENTRIES - 1)
            ).astype(np.int64)


def owner_key(tenant_id, index24):
    return (np.asarray(tenant_id, dtype=np.uint64) << np.uint64(24)) | np.asarray(index24, dtype=np.uint64)


def level24_nodes(table: EntryTable) -> tuple[np.ndarray, np.ndarray]:
    """(owner keys, hosts words (n, 4)) of every level-24 node of a v4 node
    table (global: u32 node keys; tenant: (tenant id, node) keys)."""
    keys = np.frombuffer(table.keys_view(), dtype=np.uint32).reshape(-1, table.key_size // 4)
    values = np.frombuffer(table.values_view(), dtype=np.uint64).reshape(-1, NODE_WORDS)
    nodes, tenants = keys[:, -1], (keys[:, 0] if table.key_size == 8 else np.zeros(len(keys), np.uint32))
    level24 = (nodes >> 24) == abi.BLOCK_LEVEL_24
    return owner_key(tenants[level24], nodes[level24] & INDEX24_MASK), values[level24, 1:5].copy()


def _owners(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(valid?, owner key) per entry, from its tag and tenant words."""
    tags = words[:, TAG]
    index24 = (tags >> np.uint64(32)) & np.uint64(INDEX24_MASK)
    return (tags & VALID) != 0, owner_key(words[:, TENANT_WORD] & np.uint64(0xFFFF_FFFF), index24)


def _decode_key(key: bytes) -> int | None:
    """The owner key of a packed table key that names a level-24 node, else None."""
    node = int.from_bytes(key[-4:], "little")
    if node >> 24 != abi.BLOCK_LEVEL_24:
        return None
    tenant = int.from_bytes(key[:4], "little") if len(key) == 8 else 0
    return (tenant << 24) | (node & INDEX24_MASK)


@dataclass
class HostBitsUpdate:
    """What one change of a v4 table does to its array: `kept` entries keep
    their (tenant, /24) (and get its new hosts), `freed` entries lose
    theirs, `taken` entries get one (after the freeing, if they were held)."""

    array: HostBitsArray
    kept: np.ndarray                # entry indexes
    kept_hosts: np.ndarray          # (n, 4) hosts words of the new version
    freed: np.ndarray               # entry indexes
    freed_tags: np.ndarray          # their tags without VALID (generation kept)
    taken: np.ndarray               # entry indexes
    taken_tags: np.ndarray
    taken_tenants: np.ndarray       # the tenant word of each
    taken_hosts: np.ndarray         # (n, 4)
    written: int = 0                # 8-byte stores made

    @classmethod
    def for_table(cls, array: HostBitsArray, table: EntryTable) -> "HostBitsUpdate":
        """The change that makes the array follow `table`, the whole new version."""
        owners, hosts = level24_nodes(table)
        words = array.words
        tags = words[:, TAG].copy()
        valid, held = _owners(words)
        entries = entry_of(owners)
        holds = valid[entries] & (held[entries] == owners)
        # Per entry, its holder if it stays, else the lowest owner that wants it.
        order = np.lexsort((owners, ~holds, entries))
        _, first = np.unique(entries[order], return_index=True)
        chosen = order[first]
        keep, take = chosen[holds[chosen]], chosen[~holds[chosen]]
        kept, taken = entries[keep], entries[take]
        freed = np.setdiff1d(np.nonzero(valid)[0], kept)
        return cls(array, kept, hosts[keep], freed, tags[freed] & ~VALID, taken,
                   tag_of(owners[take] & np.uint64(INDEX24_MASK), (tags[taken] & GENERATION_MASK) + np.uint64(1)),
                   owners[take] >> np.uint64(24), hosts[take])

    @classmethod
    def for_writes(cls, array: HostBitsArray, writes: list[tuple[bytes, bytes]],
                   stale: list[bytes]) -> "HostBitsUpdate | None":
        """The change of an in-place delta of a table (its written and
        deleted entries), for the (tenant, /24)s it touches only. One takes
        its entry only if that is free or freed by this delta: another
        keeps what it holds."""
        written: dict[int, np.ndarray] = {}
        for key, value in writes:
            owner = _decode_key(key)
            if owner is not None:
                written[owner] = np.frombuffer(value, dtype=np.uint64)[1:5].copy()
        deleted = {owner for owner in map(_decode_key, stale) if owner is not None}
        if not written and not deleted:
            return None
        holders: dict[int, tuple[bool, int, int]] = {}      # entry -> (valid, owner, tag)
        for owner in sorted({*written, *deleted}):
            entry = int(entry_of(owner))
            if entry not in holders:
                valid, held = _owners(array.words[entry:entry + 1])
                holders[entry] = (bool(valid[0]), int(held[0]), int(array.words[entry, TAG]))
        kept, kept_hosts, freed, freed_tags = [], [], [], []
        taken, taken_tags, taken_tenants, taken_hosts = [], [], [], []
        for entry, (valid, held, tag) in holders.items():
            if valid and held in written:
                kept.append(entry)
                kept_hosts.append(written[held])
                continue
            if valid and held not in deleted:
                continue                # another owner's entry, untouched
            if valid:
                freed.append(entry)
                freed_tags.append(tag & ~int(VALID))
            wanting = [owner for owner in written if entry_of(owner) == entry]
            if wanting:
                owner = min(wanting)
                taken.append(entry)
                taken_tags.append(int(tag_of(owner & INDEX24_MASK, (tag & int(GENERATION_MASK)) + 1)))
                taken_tenants.append(owner >> 24)
                taken_hosts.append(written[owner])

        def rows(hosts):
            return np.array(hosts, dtype=np.uint64).reshape(-1, 4)

        def column(values, dtype=np.uint64):
            return np.array(values, dtype=dtype)

        return cls(array, column(kept, np.int64), rows(kept_hosts), column(freed, np.int64), column(freed_tags),
                   column(taken, np.int64), column(taken_tags), column(taken_tenants), rows(taken_hosts))

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
            self.array.fill_free(self.taken, self.taken_tenants, self.taken_hosts)
            for entry, tag in zip(self.taken, self.taken_tags):
                self.array.store(entry, TAG, tag)
            self.written += 6 * len(self.taken)


def follow_table(maps: dict[str, BpfMap], table_name: str, table: EntryTable) -> None:
    """The v4 table `table_name` now holds `table` (the whole version): its array follows."""
    with HostBitsArray(maps[MAPS[table_name]]) as array:
        HostBitsUpdate.for_table(array, table).apply()


def follow_writes(maps: dict[str, BpfMap], table_name: str, writes: list[tuple[bytes, bytes]],
                  stale: list[bytes]) -> None:
    """The v4 table `table_name` now has `writes` written and `stale` deleted: its array follows."""
    with HostBitsArray(maps[MAPS[table_name]]) as array:
        update = HostBitsUpdate.for_writes(array, writes, stale)
        if update is not None:
            update.apply()


def sync_host_bits(maps: dict[str, BpfMap], tables=tuple(MAPS)) -> None:
    """Make the arrays of `tables` (both v4 tables by default) follow the
    live tables (a program loaded beside tables pinned by an edgewarden
    without the arrays, or after a table change that failed half-way: an
    array may hold hosts of a version the table does not)."""
    from agent.datapath.blocktables import SwappableTable
    for name in tables:
        follow_table(maps, name, SwappableTable(maps[name]).entries_table())


def host_bits_mismatches(maps: dict[str, BpfMap], table_name: str = GLOBAL_TABLE) -> list[str]:
    """Every entry of the array of `table_name` that disagrees with the live
    table (tests, status): a valid tag whose (tenant, /24) has no level-24
    node, or other hosts than its node, or sits on another entry."""
    from agent.datapath.blocktables import SwappableTable
    owners, hosts = level24_nodes(SwappableTable(maps[table_name]).entries_table())
    nodes = {int(o): h for o, h in zip(owners, hosts)}
    with HostBitsArray(maps[MAPS[table_name]]) as array:
        words = array.words.copy()
    valid, held = _owners(words)
    problems = []
    for entry in np.nonzero(valid)[0]:
        owner = int(held[entry])
        node, name = nodes.get(owner), f"tenant {owner >> 24} /24 {owner & INDEX24_MASK:#08x}"
        if entry_of(owner) != entry:
            problems.append(f"entry {entry} holds {name}, whose entry is {entry_of(owner)}")
        elif node is None:
            problems.append(f"entry {entry} holds {name}, which has no level-24 node")
        elif not np.array_equal(node, words[entry, FIRST_HOST_WORD:FIRST_HOST_WORD + 4]):
            problems.append(f"entry {entry} ({name}) holds other hosts than its node")
    return problems


def held_owners(maps: dict[str, BpfMap], table_name: str = GLOBAL_TABLE) -> set[int]:
    """The owner keys the array of `table_name` holds (tests, status): for
    the global array, /24 indexes."""
    with HostBitsArray(maps[MAPS[table_name]]) as array:
        valid, held = _owners(array.words.copy())
    return {int(o) for o in held[valid]}
