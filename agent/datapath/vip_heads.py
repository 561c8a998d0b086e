"""The IPv4 VIP heads (map ew_vip_heads_v4, struct ew_vip_head_bucket): an
open-addressing copy of each VIP's slot and flags from ew_vips_v4, read by
the packet path with inlined array lookups, so that a packet whose verdict
needs no more (a global drop, a tenant without port or tenant-list lookups)
costs no hash lookup.

Every way is one aligned u64, written here with one 8-byte store through a
mmap of the array, so a packet reads a VIP's old way or its new one, never
a mix (the kernel's map update copies a value with memcpy, which makes no
such promise). The heads follow ew_vips_v4 within an apply: synced after
its new and changed entries are written and before its stale ones are
deleted. Within a bucket a VIP that stays keeps its way; one that does not
fit turns a way into the overflow mark first, so that at every instant a
VIP of either version is in its bucket or its bucket says "ask the map".

Beside the heads, ew_slot_tenants holds per counter slot the tenant id and
port ranges that a head cannot (struct ew_slot_tenant), so that a tenant
with port blocks or a source list is judged without ew_vips_v4 too. An
entry is many words: each is written with one store between two stamps
(sequence << 32 | head), the sequence odd meanwhile, and a packet uses the
entry only if it read the same even stamp before and after it, holding the
head it found. Entries are written before the heads, so a head that
changed finds its entry ready; one that does not match is asked of the map."""

from __future__ import annotations

import mmap
import sys

import numpy as np

from agent.datapath import abi
from agent.datapath.syscalls import BpfMap, lib

MAP_NAME = "ew_vip_heads_v4"
VIPS_MAP = "ew_vips_v4"
WAYS = lib.EW_VIP_HEAD_WAYS
BUCKETS = lib.EW_VIP_HEAD_BUCKETS
PRESENT = lib.EW_VIP_HEAD_PRESENT
OVERFLOW_WAY = lib.EW_VIP_HEAD_OVERFLOW << 32
SLOT_SHIFT = lib.EW_VIP_HEAD_SLOT_SHIFT
MAX_SLOT = (1 << (32 - SLOT_SHIFT)) - 1
SLOT_TENANTS_MAP = "ew_slot_tenants"
ENTRY_WORDS = abi.ffi.sizeof("struct ew_slot_tenant") // 8
HAS_PORT_VIPS = lib.EW_VIP_HAS_PORT_VIPS


def address_word(key: bytes) -> int:
    """The address as the packet path compares it: its 4 bytes as a host-order u32."""
    return int.from_bytes(key, sys.byteorder)


def bucket_of(key: bytes) -> int:
    return ((address_word(key) * lib.EW_VIP_HEAD_MULTIPLIER) & 0xFFFF_FFFF) >> (32 - lib.EW_VIP_HEAD_BUCKET_BITS)


def head_way(key: bytes, vip_value: bytes) -> int | None:
    """The way for one ew_vips_v4 entry, or None when its head cannot hold
    it (a flag at or above EW_VIP_HEAD_PRESENT, a slot beyond 24 bits): such
    a VIP is left to the map."""
    vip = abi.ffi.from_buffer("struct ew_vip *", vip_value)
    if vip.flags >= PRESENT or vip.slot > MAX_SLOT:
        return None
    head = vip.slot << SLOT_SHIFT | vip.flags | PRESENT
    return address_word(key) | head << 32


class VipHeads:
    """The live heads array, mmapped; ways are read and written in place."""

    def __init__(self, bpf_map: BpfMap):
        if bpf_map.max_entries != BUCKETS:
            raise ValueError(f"{MAP_NAME} has {bpf_map.max_entries} buckets, this agent expects {BUCKETS}")
        self._mmap = mmap.mmap(bpf_map.fd, BUCKETS * WAYS * 8, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.ways = np.frombuffer(self._mmap, dtype=np.uint64).reshape(BUCKETS, WAYS)
        self.stores = 0

    def close(self) -> None:
        del self.ways
        self._mmap.close()

    def __enter__(self) -> "VipHeads":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _store(self, bucket: int, way: int, value: int) -> None:
        # One aligned 8-byte store (a numpy scalar assignment to a u64 element).
        self.ways[bucket, way] = np.uint64(value)
        self.stores += 1

    def sync(self, vips: dict[bytes, bytes]) -> None:
        """Make the heads those of `vips` (ew_vips_v4's entries, which must
        be in the map by now), touching only the buckets that differ."""
        desired: dict[int, dict[int, int | None]] = {}
        for key, value in vips.items():
            desired.setdefault(bucket_of(key), {})[address_word(key)] = head_way(key, value)
        live_buckets = np.nonzero(self.ways.any(axis=1))[0].tolist()
        for bucket in sorted(set(live_buckets) | set(desired)):
            self._sync_bucket(bucket, desired.get(bucket, {}))

    def _sync_bucket(self, bucket: int, want: dict[int, int | None]) -> None:
        live = [int(w) for w in self.ways[bucket]]
        new = list(live)
        for i, way in enumerate(live):
            if way & (PRESENT << 32):
                address = way & 0xFFFF_FFFF
                new[i] = (want.get(address) or 0) if address in want else 0
        placed = {w & 0xFFFF_FFFF for w in new if w & (PRESENT << 32)}
        missing = [want[a] for a in sorted(want) if a not in placed]
        free = [i for i, w in enumerate(new) if w == 0]
        overflow = [w is None for w in missing]
        missing = [w for w in missing if w is not None]
        marks = [i for i, w in enumerate(new) if w and not (w & (PRESENT << 32))]
        while missing and free:
            new[free.pop(0)] = missing.pop(0)
        needs_mark = bool(missing) or any(overflow)
        if needs_mark and not marks:
            if free:
                new[free.pop(0)] = OVERFLOW_WAY
            else:   # evict the last way's VIP to the map: the mark replaces it in one store
                new[WAYS - 1] = OVERFLOW_WAY
            marks = [i for i, w in enumerate(new) if w == OVERFLOW_WAY]
        elif marks and not needs_mark:
            for i in marks:
                new[i] = 0
        if not needs_mark:
            marks = []
        # Marks go in first and come out last; the other ways in between.
        order = sorted(range(WAYS), key=lambda i: (0 if new[i] == OVERFLOW_WAY else 2 if live[i] == OVERFLOW_WAY else 1))
        for i in order:
            if new[i] != live[i]:
                self._store(bucket, i, new[i])


def slot_entry(vip_value: bytes) -> tuple[int, int, bytes] | None:
    """(slot, head, entry words after the stamp) for an ew_vips_v4 value
    whose head ew_slot_tenants can complete, else None (a VIP with port
    VIPs is judged from the map, and one without a head has no entry)."""
    vip = abi.ffi.from_buffer("struct ew_vip *", vip_value)
    if vip.flags & HAS_PORT_VIPS or vip.flags >= PRESENT or vip.slot > MAX_SLOT:
        return None
    ranges = abi.ffi.offsetof("struct ew_vip", "port_blocks")
    # The tenant id, the reserved word, the port ranges as the value has them.
    body = vip_value[:4] + bytes(4) + vip_value[ranges:ranges + 8 * (ENTRY_WORDS - 2)]
    return vip.slot, vip.slot << SLOT_SHIFT | vip.flags | PRESENT, body


class SlotTenants:
    """The live ew_slot_tenants array, mmapped; entries written in place
    under their stamps."""

    def __init__(self, bpf_map: BpfMap):
        self.slots = bpf_map.max_entries
        length = self.slots * ENTRY_WORDS * 8
        self._mmap = mmap.mmap(bpf_map.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.words = np.frombuffer(self._mmap, dtype=np.uint64, count=self.slots * ENTRY_WORDS).reshape(
            self.slots, ENTRY_WORDS)
        self.stores = 0

    def close(self) -> None:
        del self.words
        self._mmap.close()

    def __enter__(self) -> "SlotTenants":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _store(self, slot: int, word: int, value: int) -> None:
        self.words[slot, word] = np.uint64(value)     # one aligned 8-byte store
        self.stores += 1

    def write(self, slot: int, head: int, body: bytes) -> None:
        """Entry `slot` for `head` with `body` (the words after the stamp),
        unless it holds them already."""
        stamp = int(self.words[slot, 0])
        new_body = np.frombuffer(body, dtype=np.uint64)
        if stamp & 0xFFFF_FFFF == head and not (stamp >> 32) & 1 and (self.words[slot, 1:] == new_body).all():
            return
        sequence = stamp >> 32 | 1      # odd: being written
        self._store(slot, 0, sequence << 32 | stamp & 0xFFFF_FFFF)
        for i, word in enumerate(new_body.tolist(), start=1):
            if int(self.words[slot, i]) != word:
                self._store(slot, i, word)
        self._store(slot, 0, ((sequence + 1) & 0xFFFF_FFFF) << 32 | head)

    def clear(self, slot: int) -> None:
        """No head matches the entry any more (its words stay as they are)."""
        stamp = int(self.words[slot, 0])
        if stamp & 0xFFFF_FFFF:
            self._store(slot, 0, ((stamp >> 32 | 1) + 1 & 0xFFFF_FFFF) << 32)

    def sync(self, vips: dict[bytes, bytes]) -> None:
        desired: dict[int, tuple[int, bytes] | None] = {}
        for value in vips.values():
            entry = slot_entry(value)
            if entry is None:
                continue
            slot, head, body = entry
            if slot >= self.slots:
                continue
            # Two heads for one slot (cannot happen: a slot is one tenant's): neither gets the entry.
            desired[slot] = (head, body) if desired.get(slot, (head, body)) == (head, body) else None
        live = np.nonzero(self.words[:, 0] & np.uint64(0xFFFF_FFFF))[0].tolist()
        for slot in sorted(set(live) | set(desired)):
            want = desired.get(slot)
            if want is None:
                self.clear(slot)
            else:
                self.write(slot, *want)


def sync_vip_heads(maps: dict[str, BpfMap], vips: dict[bytes, bytes] | None = None) -> int:
    """Bring ew_slot_tenants and then ew_vip_heads_v4 to `vips` (default:
    the live ew_vips_v4). Returns the stores made. A program without the
    heads map: nothing."""
    if MAP_NAME not in maps:
        return 0
    if vips is None:
        vips = maps[VIPS_MAP].items()
    stores = 0
    if SLOT_TENANTS_MAP in maps:
        with SlotTenants(maps[SLOT_TENANTS_MAP]) as entries:
            entries.sync(vips)
            stores += entries.stores
    with VipHeads(maps[MAP_NAME]) as heads:
        heads.sync(vips)
        return stores + heads.stores


def live_slot_tenants(maps: dict[str, BpfMap]) -> dict[int, tuple[int, int]]:
    """Slot -> (stamp, tenant id) of every entry that some head can match (tests, status)."""
    with SlotTenants(maps[SLOT_TENANTS_MAP]) as entries:
        return {int(slot): (int(entries.words[slot, 0]), int(entries.words[slot, 1]) & 0xFFFF_FFFF)
                for slot in np.nonzero(entries.words[:, 0] & np.uint64(0xFFFF_FFFF))[0]}


def live_heads(maps: dict[str, BpfMap]) -> dict[int, list[int]]:
    """Bucket -> its nonzero ways, as the live map holds them (tests, status)."""
    with VipHeads(maps[MAP_NAME]) as heads:
        return {int(b): [int(w) for w in heads.ways[b] if w] for b in np.nonzero(heads.ways.any(axis=1))[0]}
