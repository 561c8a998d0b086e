"""The IPv4 source prefilter (struct ew_prefilter_v4, map ew_prefilter_v4):
per /24 of source addresses, whether the global table has anything inside
it, whether the global list blocks it whole, and whether any tenant's
table has anything inside it. The packet path reads it with one inlined
array lookup, so a source in no list costs no hash lookup at all, and a
source in a /24 the global list blocks whole is dropped without one.

The bitmaps are derived from the level-16 nodes of the IPv4 block tables
(struct ew_block_node): the four words of a node's full24 and partial24
bitmaps are exactly the four prefilter entries of its /16, one bit per /24.

They must never miss a /24 that a live table blocks something in, so a
change goes in two steps around the table update: widen() before it (every
bit of the old and the new version set), narrow() after it (only the new
version's bits). In between, the prefilter answers for the union of both
versions; a /24 blocked whole by either is dropped whole."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent._prefixes import EntryTable
from agent.datapath import abi
from agent.datapath.syscalls import BpfMap

MAP_NAME = "ew_prefilter_v4"
GLOBAL_TABLE, TENANT_TABLE = "ew_gblock_v4", "ew_tblock_v4"
# Words of struct ew_prefilter_v4, in its order.
GLOBAL_LISTED, GLOBAL_WHOLE, TENANT_LISTED, ENTRY_WORDS = 0, 1, 2, 4
ENTRIES_PER_16 = 4          # 256 /24s in a /16, 64 per entry
ALL_BITS = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
NODE_WORDS = 9              # struct ew_block_node as u64: flags and reserved, full24[4], partial24[4]
WRITE_CHUNK = 16384         # prefilter entries read, compared and written at a time (512 KiB)


def _level16_nodes(table: EntryTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(/16 index, whole bitmap words, listed bitmap words) of every
    level-16 node of a v4 node table (global: u32 node keys; tenant:
    (tenant id, node) keys, the node key last)."""
    keys = np.frombuffer(table.keys_view(), dtype=np.uint32).reshape(-1, table.key_size // 4)[:, -1]
    values = np.frombuffer(table.values_view(), dtype=np.uint64).reshape(-1, NODE_WORDS)
    level16 = (keys >> 24) == abi.BLOCK_LEVEL_16
    index16, nodes = (keys[level16] & 0xFFFF).astype(np.int64), values[level16]
    full_node = (nodes[:, 0] & np.uint64(abi.BLOCK_NODE_FULL)) != 0
    whole = nodes[:, 1:5].copy()
    whole[full_node] = ALL_BITS
    return index16, whole, whole | nodes[:, 5:9]


def _scatter(entries: np.ndarray, word: int, index16: np.ndarray, bits: np.ndarray) -> None:
    """OR each node's four words into the entries of its /16 (several
    tenants may have a node for the same /16)."""
    column = entries.reshape(-1, ENTRIES_PER_16, ENTRY_WORDS)[:, :, word]
    column[...] = 0
    np.bitwise_or.at(column, index16, bits)


def desired_entries(live: np.ndarray, tables: dict[str, EntryTable]) -> np.ndarray:
    """The prefilter for the tables in `tables`, keeping what `live` says
    for the tables not rebuilt."""
    return _make_desired(live.copy(), tables)


def _make_desired(entries: np.ndarray, tables: dict[str, EntryTable]) -> np.ndarray:
    """desired_entries, written over `entries` (the live prefilter)."""
    if GLOBAL_TABLE in tables:
        index16, whole, listed = _level16_nodes(tables[GLOBAL_TABLE])
        _scatter(entries, GLOBAL_WHOLE, index16, whole)
        _scatter(entries, GLOBAL_LISTED, index16, listed)
    if TENANT_TABLE in tables:
        index16, _, listed = _level16_nodes(tables[TENANT_TABLE])
        _scatter(entries, TENANT_LISTED, index16, listed)
    return entries


def _read_chunk(bpf_map: BpfMap, start: int) -> np.ndarray:
    """Entries start.. of the live prefilter, at most WRITE_CHUNK of them
    (a view of the map's read buffer: valid until its next read)."""
    return np.frombuffer(bpf_map.array_values(WRITE_CHUNK, start), dtype=np.uint64).reshape(-1, ENTRY_WORDS)


@dataclass
class PrefilterUpdate:
    """One change of the prefilter around one change of the v4 tables.
    Only the desired version is held (8 MB); both steps read the live map
    back a chunk of entries at a time and write what differs, so a
    million-prefix load, which peaks while its compiled tables are held,
    holds no second and third full-size copy of the prefilter."""

    bpf_map: BpfMap
    desired: np.ndarray
    written: int = 0

    @classmethod
    def for_tables(cls, bpf_map: BpfMap, tables: dict[str, EntryTable]) -> "PrefilterUpdate":
        entries = np.empty((bpf_map.max_entries, ENTRY_WORDS), dtype=np.uint64)
        for start in range(0, len(entries), WRITE_CHUNK):
            live = _read_chunk(bpf_map, start)
            entries[start:start + len(live)] = live
        return cls(bpf_map, _make_desired(entries, tables))

    def widen(self) -> None:
        """Before the tables change: the union of the old and new versions."""
        self._write(lambda live, desired: live | desired)

    def narrow(self) -> None:
        """After the tables changed: the new version only."""
        self._write(lambda live, desired: desired)

    def _write(self, wanted) -> None:
        for start in range(0, len(self.desired), WRITE_CHUNK):
            live = _read_chunk(self.bpf_map, start)
            entries = wanted(live, self.desired[start:start + len(live)])
            changed = np.nonzero((entries != live).any(axis=1))[0]
            if len(changed):
                self.bpf_map.update_packed((changed + start).astype(np.uint32).tobytes(),
                                           np.ascontiguousarray(entries[changed]).tobytes())
                self.written += len(changed)


def sync_prefilter(maps: dict[str, BpfMap]) -> None:
    """Rebuild the prefilter from the live v4 tables (a program loaded
    beside tables pinned by an edgewarden that had no prefilter)."""
    from agent.datapath.blocktables import SwappableTable
    tables = {name: SwappableTable(maps[name]).entries_table() for name in (GLOBAL_TABLE, TENANT_TABLE)}
    update = PrefilterUpdate.for_tables(maps[MAP_NAME], tables)
    update.widen()
    update.narrow()


def prefilter_bits(maps: dict[str, BpfMap]) -> np.ndarray:
    """The live prefilter as (entries, 4) u64 words (tests, status)."""
    return np.frombuffer(maps[MAP_NAME].array_values(), dtype=np.uint64).reshape(-1, ENTRY_WORDS).copy()


@dataclass
class NodePrefilterUpdate:
    """The prefilter change of an in-place delta (agent.datapath.list_delta),
    read and written for the /16s it touches only, so its cost follows the
    delta, not the list. The global words of a touched /16 follow its new
    level-16 node exactly (the global table has one node per /16); the
    tenant word only gains bits, since other tenants' nodes for the same
    /16 are not read: a bit left set costs a lookup, never a missed block."""

    bpf_map: BpfMap
    indexes: np.ndarray         # entry indexes, 4 per touched /16
    live: np.ndarray
    desired: np.ndarray

    @classmethod
    def for_writes(cls, bpf_map: BpfMap, writes: dict[str, list[tuple[bytes, bytes]]],
                   stale: dict[str, list[bytes]]) -> "NodePrefilterUpdate | None":
        global_nodes: dict[int, bytes | None] = {}
        tenant_bits: dict[int, np.ndarray] = {}
        for key, value in writes.get(GLOBAL_TABLE, []):
            node = int.from_bytes(key[-4:], "little")
            if node >> 24 == abi.BLOCK_LEVEL_16:
                global_nodes[node & 0xFFFF] = value
        for key in stale.get(GLOBAL_TABLE, []):
            node = int.from_bytes(key[-4:], "little")
            if node >> 24 == abi.BLOCK_LEVEL_16:
                global_nodes.setdefault(node & 0xFFFF, None)
        for key, value in writes.get(TENANT_TABLE, []):
            node = int.from_bytes(key[-4:], "little")
            if node >> 24 == abi.BLOCK_LEVEL_16:
                _, listed = _node_bits(value)
                tenant_bits[node & 0xFFFF] = tenant_bits.get(node & 0xFFFF, 0) | listed
        touched = sorted(set(global_nodes) | set(tenant_bits))
        if not touched:
            return None
        indexes = np.array([i * ENTRIES_PER_16 + j for i in touched for j in range(ENTRIES_PER_16)], dtype=np.uint32)
        live = np.zeros((len(indexes), ENTRY_WORDS), dtype=np.uint64)
        for row, index in enumerate(indexes):
            raw = bpf_map.lookup(int(index).to_bytes(4, "little"))
            live[row] = np.frombuffer(raw, dtype=np.uint64)
        desired = live.copy()
        for n, index16 in enumerate(touched):
            rows = slice(n * ENTRIES_PER_16, (n + 1) * ENTRIES_PER_16)
            if index16 in global_nodes:
                value = global_nodes[index16]
                whole, listed = _node_bits(value) if value is not None else (np.zeros(4, np.uint64),) * 2
                desired[rows, GLOBAL_WHOLE], desired[rows, GLOBAL_LISTED] = whole, listed
            if index16 in tenant_bits:
                desired[rows, TENANT_LISTED] |= tenant_bits[index16]
        return cls(bpf_map, indexes, live, desired)

    def widen(self) -> None:
        self._write(self.live | self.desired)

    def narrow(self) -> None:
        self._write(self.desired)

    def _write(self, entries: np.ndarray) -> None:
        self.bpf_map.update_packed(self.indexes.tobytes(), np.ascontiguousarray(entries).tobytes())


def _node_bits(value: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(whole, listed) words of one level-16 node, as _level16_nodes derives them."""
    node = np.frombuffer(value, dtype=np.uint64)
    whole = np.full(4, ALL_BITS) if int(node[0]) & abi.BLOCK_NODE_FULL else node[1:5].copy()
    return whole, whole | node[5:9]
