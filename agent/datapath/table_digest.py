"""What the block tables of an interface hold, as one number per table, so
that a map changed by hand (bpftool, the library) is noticed: the digest
of the entries the agent wrote (kept up to date by every change it makes,
at the cost of that change) against the digest of the entries read back
from the kernel.

A table's digest is the sum, modulo 2**64, of a 64-bit hash of each entry
(key and value bytes): independent of the order a hash map is read in, and
a change of a few entries moves it by the hashes of those entries alone
(TableDigests.adjust), so a 100-entry delta keeps it exact without reading
the table. Reading a table back is the costly half (a batched read of every
entry: about half a second for the 840,000 nodes of a 1M-prefix list);
check_tables() does it, away from the writer, and a change that ran while
it read makes that round undecided rather than drifted."""

from __future__ import annotations

import errno
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from agent._libbpf import ffi, lib
from agent.datapath import abi
from agent.datapath.blocktables import SwappableTable
from agent.datapath.syscalls import BpfMap, check

MASK = (1 << 64) - 1
_SEED = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def entries_digest(keys, values, key_size: int, value_size: int) -> int:
    """The digest of packed entries (keys and values concatenated, as a
    batched read or an EntryTable gives them), in any order."""
    count = len(keys) // key_size
    if count == 0:
        return 0
    width = -(-(key_size + value_size) // 8) * 8
    rows = np.zeros((count, width), np.uint8)
    rows[:, :key_size] = np.frombuffer(keys, np.uint8, count * key_size).reshape(count, key_size)
    if value_size:
        rows[:, key_size:key_size + value_size] = np.frombuffer(values, np.uint8, count * value_size).reshape(
            count, value_size)
    words = rows.view("<u8")
    h = np.full(count, _SEED, np.uint64)
    for column in range(words.shape[1]):      # splitmix64 over the entry's words, in order
        h ^= words[:, column]
        h ^= h >> _S30
        h *= _M1
        h ^= h >> _S27
        h *= _M2
        h ^= h >> _S31
    return int(h.sum(dtype=np.uint64))


def entry_table_digest(table) -> int:
    """The digest of an agent._prefixes.EntryTable (what a change writes or replaces)."""
    return entries_digest(table.keys_packed(), table.values_packed(), table.key_size, table.value_size)


READ_CHUNK = 262144     # entries per batched read (fewer, larger reads: measured faster than 65,536)


def _batched_digest(table: BpfMap) -> tuple[int, int] | None:
    """(digest, entries) by batched reads hashed in place (no copy of the
    table), or None for a map type without batch reads (LPM tries)."""
    chunk = max(1, min(table.max_entries, READ_CHUNK))
    keys = ffi.new("char[]", table.key_size * chunk)
    values = ffi.new("char[]", table.value_size * chunk)
    out_batch = ffi.new("char[]", max(8, table.key_size))
    in_batch, count = ffi.NULL, ffi.new("__u32 *")
    digest = entries = 0
    while True:
        count[0] = chunk
        rc = lib.ew_map_lookup_batch(table.fd, in_batch, out_batch, keys, values, count)
        if rc < 0 and rc != -errno.ENOENT:
            if rc in (-errno.EINVAL, -errno.EOPNOTSUPP, -524) and entries == 0:
                return None
            check(rc, f"batch read of {table.name}")
        digest += entries_digest(ffi.buffer(keys, table.key_size * count[0]),
                                 ffi.buffer(values, table.value_size * count[0]), table.key_size, table.value_size)
        entries += count[0]
        if rc == -errno.ENOENT:
            return digest & MASK, entries
        in_batch = ffi.new("char[]", ffi.buffer(out_batch)[:])


def read_table_digest(bpf_map: BpfMap) -> tuple[int, int]:
    """(digest, entries) of what the live inner table of a swappable table holds now."""
    inner = SwappableTable(bpf_map).inner()
    if inner is None:
        return 0, 0
    with inner:
        found = _batched_digest(inner)
        if found is not None:
            return found
        keys, values = inner.items_packed()
        return entries_digest(keys, values, inner.key_size, inner.value_size), len(keys) // inner.key_size


def read_digests(maps: dict[str, BpfMap], tables=abi.SWAPPABLE_TABLES) -> dict[str, tuple[int, int]]:
    """Per block table (all four by default), (digest, entries) read back from the kernel."""
    return {name: read_table_digest(maps[name]) for name in tables}


@dataclass
class TableDigests:
    """The digests one interface's block tables should have. `expected` is
    None until a readback after a full apply set it (reset). `generation`
    is odd while a change is being written (a seqlock for check_tables)."""
    expected: dict[str, int] | None = None
    generation: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def writing(self):
        """Around every write to the tables: a readback that overlaps it is not judged."""
        with self._lock:
            self.generation += 1
        try:
            yield
        finally:
            with self._lock:
                self.generation += 1

    def adjust(self, table: str, before, after) -> None:
        """`before` (EntryTable) was replaced by `after` in `table`."""
        if self.expected is not None:
            self.expected[table] = (self.expected.get(table, 0) - entry_table_digest(before)
                                    + entry_table_digest(after)) & MASK

    def reset(self, maps: dict[str, BpfMap], tables=None) -> None:
        """After a full apply: what the tables (`tables`, default all) hold now is what they should hold."""
        if tables is not None and self.expected is not None:
            self.expected.update({name: digest for name, (digest, _) in read_digests(maps, tables).items()})
        else:
            self.expected = {name: digest for name, (digest, _) in read_digests(maps).items()}

    def forget(self) -> None:
        self.expected = None


@dataclass
class TableCheck:
    """One comparison of the tables with what the agent wrote."""
    drifted: list[str]            # tables whose entries differ
    entries: int                  # entries read back
    decided: bool = True          # False: a change ran during the readback, or nothing is expected yet


def check_tables(digests: TableDigests, maps: dict[str, BpfMap]) -> TableCheck:
    """Read the tables back and compare (safe beside a writer: see TableDigests.generation)."""
    generation, expected = digests.generation, digests.expected
    if expected is None or generation % 2:
        return TableCheck([], 0, decided=False)
    found = read_digests(maps)
    if digests.generation != generation:
        return TableCheck([], sum(n for _, n in found.values()), decided=False)
    return TableCheck(sorted(t for t, (d, _) in found.items() if d != expected.get(t, 0)),
                      sum(n for _, n in found.values()))


_digests: dict[str, TableDigests] = {}
_registry_lock = threading.Lock()


def digests_for(ifname: str) -> TableDigests:
    """The TableDigests of `ifname` in this process."""
    with _registry_lock:
        return _digests.setdefault(ifname, TableDigests())
