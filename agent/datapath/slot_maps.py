"""The per-CPU maps indexed by tenant slot (counters, bucket shares, sample
budgets), sized to the tenants of the policy with headroom rather than to
the maximum: their memory is slots x possible CPUs, and a counter scan reads
every slot in use. Growing them means loading the program again with bigger
maps pinned under staged names, carrying the old maps' contents over, and,
once the new program is attached, renaming the staged pins over the live
ones (bpffs renames atomically), so counters continue across a growth as
they do across a daemon restart. The maps that are not per-CPU (tenants,
flood policies, token buckets) keep the tenant maximum: they cost no more
on a bigger server, and the token buckets, spin-locked, are never copied."""

from __future__ import annotations

import array
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from agent import _counters
from agent._libbpf import ffi
from agent.datapath import abi
from agent.datapath.blocktables import SLOT as TABLE_SLOT, SwappableTable
from agent.datapath.compile import assign_slots
from agent.datapath.scope import PROGRAM_PIN
from agent.datapath.syscalls import BpfMap, map_info, obj_get, prog_map_ids, round_up_8
from agent.policy.model import Policy

# Map name -> entries per tenant slot.
SLOT_MAPS: dict[str, int] = {"ew_counters": 1, "ew_bucket_shares": abi.BUCKET_KINDS, "ew_sample_budget": 1}
# Slots come in steps of this many, never fewer: a handful of tenants still
# gets room to add some without a reload.
SLOT_STEP = 64
STAGED_SUFFIX = "_grown"        # a slot map built by a growth, until its program is attached (bpffs allows no dots)
CHUNK_BYTES = 16 << 20        # read at a time when a growth copies a map
# Any swappable table does to wait for running programs (see _wait_for_running_programs).
_SYNC_TABLE = "ew_gblock_v4"


def capacity_for(needed: int, limit: int = abi.MAX_TENANTS) -> int:
    """Slots for a policy whose highest slot is `needed` - 1: a quarter more,
    rounded up to SLOT_STEP, capped at `limit` (the tenant maximum)."""
    wanted = needed + needed // 4
    return max(needed, min(limit, max(SLOT_STEP, -(-wanted // SLOT_STEP) * SLOT_STEP)))


def slots_needed(policy: Policy | None, live_slots: dict[int, int], limit: int = abi.MAX_TENANTS) -> int:
    """The highest slot `policy` would hold, plus one (as compile assigns
    them: live tenants keep theirs, new ones take the lowest free).
    compile.SlotsExhausted when `limit` slots cannot hold it."""
    held = list(live_slots.values())
    if policy is not None:
        held = list(assign_slots(policy, live_slots, limit).values())
    return max([abi.TENANT_UNASSIGNED, *held]) + 1


def bytes_per_slot(ncpus: int) -> int:
    """Kernel memory of one slot across the per-CPU maps, as the kernel
    charges it: each value rounded up to 8 bytes and held once per possible
    CPU, and a pointer per entry."""
    return sum(entries * (8 + ncpus * round_up_8(ffi.sizeof(abi.MAP_LAYOUTS[name][1])))
               for name, entries in SLOT_MAPS.items())


def slot_capacities(slots: int) -> dict[str, int]:
    return {name: slots * entries for name, entries in SLOT_MAPS.items()}


def _open_pin(path: Path, name: str) -> BpfMap:
    key_type, value_type = abi.MAP_LAYOUTS[name]
    return BpfMap.from_pin(str(path), name, key_type, value_type, percpu=name in abi.PERCPU_MAPS)


def pinned_slots(pin_dir: Path) -> int | None:
    """Slots of the pinned counter map, None when there is none."""
    path = pin_dir / "ew_counters"
    if not path.exists():
        return None
    with _open_pin(path, "ew_counters") as counters:
        return counters.max_entries


@dataclass
class SlotMapGrowth:
    """How a load sizes and pins the slot maps of `pin_dir`: adopted where
    the pinned map has the size, else created under a staged pin and filled
    from the pinned one (carry_over), which commit() then replaces."""

    pin_dir: Path
    slots: int
    pins: dict[str, Path] = field(default_factory=dict)
    replaced: dict[str, BpfMap] = field(default_factory=dict)     # the pinned maps being replaced, open
    _copied: dict[str, bytes] = field(default_factory=dict)       # counters as carried over, for late counts

    @classmethod
    def plan(cls, pin_dir: Path, slots: int) -> "SlotMapGrowth":
        """Never smaller than what is pinned: a growth is one way."""
        finish_died_growth(pin_dir)
        growth = cls(pin_dir, max(slots, pinned_slots(pin_dir) or 0))
        try:
            for name, entries in slot_capacities(growth.slots).items():
                pin = pin_dir / name
                growth.pins[name] = pin
                if not pin.exists():
                    continue
                old = _open_pin(pin, name)
                if old.max_entries == entries:
                    old.close()
                    continue
                growth.replaced[name] = old
                growth.pins[name] = pin_dir / (name + STAGED_SUFFIX)
        except Exception:
            growth.abort()
            raise
        return growth

    @property
    def capacities(self) -> dict[str, int]:
        return slot_capacities(self.slots)

    def carry_over(self, maps: dict[str, BpfMap]) -> None:
        """Copy the replaced maps' slots into the new ones (before the new
        program runs, so nothing else writes them), in chunks: on a big
        server a map is hundreds of MB, and only the counters' copy is kept."""
        for name, old in self.replaced.items():
            new = maps[name]
            copied = bytearray()
            for start, values in _chunks(old, min(old.max_entries, new.max_entries)):
                new.update_packed(array.array("I", range(start, start + len(values) // old.value_size)).tobytes(),
                                  values)
                if name == "ew_counters":
                    copied += values
            if name == "ew_counters":
                self._copied[name] = bytes(copied)

    def commit(self, maps: dict[str, BpfMap]) -> None:
        """After the new program is attached: add what the old program
        counted since carry_over, then put the new maps under the live pins."""
        if not self.replaced:
            return
        _wait_for_running_programs(maps)
        old = self.replaced.get("ew_counters")
        if old is not None and "ew_counters" in self._copied:
            _add_late_counts(old, maps["ew_counters"], self._copied["ew_counters"])
        for name in self.replaced:
            live = self.pin_dir / name
            self.pins[name].replace(live)
            maps[name].pin_path = str(live)
            self.pins[name] = live
        self._close_replaced()

    def abort(self) -> None:
        """No commit: staged maps no pinned program uses are dropped and the
        live ones kept; if the new program was attached and pinned (the
        commit itself failed), its maps become the live ones all the same."""
        self._close_replaced()
        finish_died_growth(self.pin_dir)

    def _close_replaced(self) -> None:
        for old in self.replaced.values():
            old.close()
        self.replaced = {}
        self._copied = {}


def finish_died_growth(pin_dir: Path) -> None:
    """Staged pins left by a growth that died (kill -9): those the pinned
    program uses (it died after the attach) are renamed over the live pins,
    as its commit would have (only what the old program counted in the
    instant before the swap is lost); the others (it died before) are
    dropped, and the live maps stay."""
    staged = {name: pin_dir / (name + STAGED_SUFFIX) for name in SLOT_MAPS}
    staged = {name: path for name, path in staged.items() if path.exists()}
    if not staged:
        return
    in_use: set[int] = set()
    if (pin_dir / PROGRAM_PIN).exists():
        fd = obj_get(str(pin_dir / PROGRAM_PIN))
        try:
            in_use = prog_map_ids(fd)
        finally:
            os.close(fd)
    for name, path in staged.items():
        fd = obj_get(str(path))
        try:
            used = map_info(fd).id in in_use
        finally:
            os.close(fd)
        if used:
            path.replace(pin_dir / name)
        else:
            path.unlink()


def _wait_for_running_programs(maps: dict[str, BpfMap]) -> None:
    """Returns once no run of the program replaced a moment ago is still in
    flight on another CPU: the kernel waits for running programs (an RCU
    grace period) after every update of a map-in-map, so writing a
    swappable table's slot with the inner table it already holds does."""
    table = SwappableTable(maps[_SYNC_TABLE])
    inner = table.inner()
    if inner is None:
        return
    with inner:
        maps[_SYNC_TABLE].update(TABLE_SLOT, struct.pack("=I", inner.fd))


def _add_late_counts(old: BpfMap, new: BpfMap, copied: bytes) -> None:
    """What the old program counted between the copy and the swap, added
    slot by slot (a read and a write per slot, so the new program's counts
    in that instant are at stake on one slot at a time, not on all)."""
    size = old.value_size
    for start, now in _chunks(old, len(copied) // size):
        for slot in range(start, start + len(now) // size):
            before = copied[slot * size:(slot + 1) * size]
            after = now[(slot - start) * size:(slot - start + 1) * size]
            if before == after:
                continue
            key = struct.pack("=I", slot)
            total = bytearray(new.lookup(key))
            _counters.add_counts(total, after, before)
            new.update(key, bytes(total))


def _chunks(bpf_map: BpfMap, entries: int):
    """(first index, values) of the map's first `entries` indexes, CHUNK_BYTES at a time."""
    step = max(1, CHUNK_BYTES // bpf_map.value_size)
    for start in range(0, entries, step):
        yield start, bytes(bpf_map.array_values(min(step, entries - start), start))


def follow_grown_maps(maps: dict) -> bool:
    """A long-lived holder of pinned maps (the daemon's counter scans) swaps
    in the slot maps a growth pinned in place of the ones it opened; True if
    it did."""
    followed = False
    for name in SLOT_MAPS:
        held = maps.get(name)
        pin = getattr(held, "pin_path", None)
        if pin is None:
            continue
        try:
            fd = obj_get(pin)
        except OSError:
            continue        # the interface is being detached: keep what is open
        try:
            same = map_info(fd).id == map_info(held.fd).id
        finally:
            os.close(fd)
        if not same:
            maps[name] = _open_pin(Path(pin), name)
            held.close()
            followed = True
    return followed
