"""The policy's arrays (ew_config, ew_flood_policies) as the agent reads and
writes them. Each sits in slot 0 of a single-slot map-in-map (bpf/maps.h),
because an array value written by the syscall is copied in place while
packets read it: a packet could take half of the old flood policy and half
of the new. Here every write fills a fresh inner array with the live entries
and the changes and swaps it in with one update of the slot (the block
tables' machinery, blocktables.SwappableTable), so each packet, reading the
slot once, is judged by one version whole. A PolicyArray offers what the
agent uses of a BpfMap (lookup, items, update, update_many, sizes), so the
compiler, apply and the readers of the revision need not know."""

from __future__ import annotations

import dataclasses
import errno
from typing import Callable

from agent._libbpf import ffi
from agent._prefixes import EntryTable
from agent.datapath import abi
from agent.datapath.blocktables import SwappableTable
from agent.datapath.syscalls import BpfError, BpfMap, map_info

# What the outer (map-in-map) map holds per slot: an inner map's fd in, its id out.
OUTER_LAYOUT = ("__u32", "__u32")
SWAPPED_WHILE_OPENING = 8      # tries to open the live inner array under swaps


class PolicyArray:
    """One policy array behind its outer map. `capacity`: the inner array's
    entries when this process creates the first one (the loader's tenant
    capacity for the flood policies); an adopted table keeps its own."""

    def __init__(self, outer: BpfMap, capacity: int | None = None):
        self.outer = outer
        self.name = outer.name
        self.key_type, self.value_type = abi.MAP_LAYOUTS[self.name]
        self.key_size, self.value_size = ffi.sizeof(self.key_type), ffi.sizeof(self.value_type)
        self.percpu = False
        spec = abi.POLICY_ARRAYS[self.name]
        self._table = SwappableTable(outer, dataclasses.replace(spec, max_entries=capacity or spec.max_entries))
        self._sized = False     # learnt from the live array on first use (the pin path is set after __init__)

    def _size_from_live(self) -> None:
        """An adopted array keeps its size, whatever this process was told:
        the kernel accepts only inner arrays of the template's size."""
        if self._sized:
            return
        live = self._table.inner()
        if live is not None:
            with live:
                self._table.spec = dataclasses.replace(self._table.spec, max_entries=map_info(live.fd).max_entries)
        self._sized = True

    @property
    def max_entries(self) -> int:
        self._size_from_live()
        return self._table.spec.max_entries

    @property
    def pin_path(self) -> str | None:
        return self.outer.pin_path

    @pin_path.setter
    def pin_path(self, path: str | None) -> None:
        self.outer.pin_path = path

    def ensure_inner(self) -> None:
        """Give a freshly created outer map an all-zero inner array."""
        self._size_from_live()
        self._table.ensure_inner()

    def _live(self) -> BpfMap:
        for _ in range(SWAPPED_WHILE_OPENING):
            try:
                inner = self._table.inner()
                break
            except BpfError as err:
                # Another process swapped a new array in (and the old one went)
                # between our read of the slot and our open: read it again.
                if err.errno != errno.ENOENT:
                    raise
        else:
            raise BpfError(errno.ENOENT, f"{self.name}: its inner array was swapped out {SWAPPED_WHILE_OPENING} "
                                         "times while opening it; is an agent swapping in a loop?")
        if inner is None:
            raise RuntimeError(f"{self.name} has no inner array; attach again to recreate it")
        return inner

    def lookup(self, key: bytes) -> bytes | None:
        with self._live() as inner:
            return inner.lookup(key)

    def items(self) -> dict[bytes, bytes]:
        with self._live() as inner:
            return inner.items()

    def items_packed(self) -> tuple[bytes, bytes]:
        with self._live() as inner:
            return inner.items_packed()

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if flags:
            raise ValueError(f"{self.name}: a policy array is written whole; flags {flags} have no meaning")
        self.update_many({key: value})

    def update_many(self, entries: dict[bytes, bytes]) -> None:
        """One swap: the live entries with `entries` written over them."""
        for key, value in entries.items():
            if len(key) != self.key_size or len(value) != self.value_size:
                raise ValueError(f"{self.name}: key/value of {len(key)}/{len(value)} bytes, "
                                 f"map wants {self.key_size}/{self.value_size}")
        if not entries:
            return
        self._size_from_live()
        desired = self.items() | entries
        # A fresh array is all zeroes: only the rest needs writing.
        desired = {k: v for k, v in desired.items() if any(v)}
        self._table.swap_in(EntryTable.from_packed(b"".join(desired), b"".join(desired.values()),
                                                    self.key_size, self.value_size))

    def close(self) -> None:
        self.outer.close()

    def __enter__(self) -> "PolicyArray":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_typed_map(name: str, open_map: Callable[[str, str], BpfMap], capacity: int | None = None):
    """The agent's view of datapath map `name`: a BpfMap with its ABI layout,
    or for a policy array its PolicyArray. `open_map(key_type, value_type)`
    opens the map itself (from a loaded object or a pin)."""
    if name in abi.POLICY_ARRAYS:
        return PolicyArray(open_map(*OUTER_LAYOUT), capacity)
    return open_map(*abi.MAP_LAYOUTS[name])
