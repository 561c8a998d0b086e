"""Opening and loading the XDP object: with maps pinned per interface (and
adopted when already pinned, so state survives reloads), or with private
maps for classification and tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
from importlib import resources
from pathlib import Path

from agent._libbpf import ffi, lib
from agent.datapath import abi
from agent.datapath.blocktables import SwappableTable
from agent.datapath.conntrack import CONNTRACK_KFUNCS, conntrack_available, object_kfuncs
from agent.datapath.errors import InterfaceError
from agent.datapath.prefilter import MAP_NAME as PREFILTER_MAP, sync_prefilter
from agent.datapath.vip_heads import MAP_NAME as VIP_HEADS_MAP, SLOT_TENANTS_MAP, sync_vip_heads
from agent.datapath.host_bits import MAPS as HOST_BITS_MAPS, sync_host_bits
from agent.datapath.scope import pin_dir_for
from agent.datapath.bpf_object import BpfObject
from agent.datapath.policy_arrays import open_typed_map
from agent.datapath.slot_maps import SlotMapGrowth, capacity_for, slot_capacities
from agent.datapath.syscalls import BpfMap, map_info, obj_get

PROGRAM_NAME = "edgewarden_xdp"
OBJECT_NAME = "edgewarden.bpf.o"
NO_CONNTRACK_OBJECT_NAME = "edgewarden_no_conntrack.bpf.o"   # for kernels without usable conntrack kfuncs


def object_path(conntrack: bool = True) -> Path:
    name = OBJECT_NAME if conntrack else NO_CONNTRACK_OBJECT_NAME
    return Path(str(resources.files("agent.datapath") / name))


class LoadedProgram:
    """The datapath object loaded: the program fd and a BpfMap per map of the
    ABI. close() drops our references only; an attached program and pinned
    maps live on. The build with conntrack calls where libbpf can resolve
    them, else the one without; `conntrack` says which, and policies that
    need it are refused without (agent.datapath.conntrack.require_conntrack)."""

    def __init__(self, pin_dir: Path | None = None, capacities: dict[str, int] | None = None,
                 tenant_capacity: int | None = None, object_file: Path | None = None, slots: int | None = None):
        """`tenant_capacity`: tenants (and with them counter slots, flood
        policies and token buckets), above the default EW_MAX_TENANTS.
        `slots`: with `pin_dir`, counter slots for the per-CPU slot maps
        (agent.datapath.slot_maps; never fewer than pinned): pinned maps of
        another size are replaced by bigger ones holding their contents,
        which take over the live pins at commit_slot_maps(), once this
        program is attached. Without `pin_dir` the slot maps have one slot
        per tenant. `object_file`: another build of the datapath (tests)."""
        if tenant_capacity is not None:
            capacities = {**(capacities or {}), "ew_tenants": tenant_capacity,
                          "ew_flood_policies": tenant_capacity, "ew_slot_tenants": tenant_capacity,
                          "ew_buckets": tenant_capacity * abi.BUCKET_KINDS,
                          **slot_capacities(tenant_capacity)}
        # A policy array's capacity is its inner array's (its outer map has one slot).
        inner_capacities = {name: n for name, n in (capacities or {}).items() if name in abi.POLICY_ARRAYS}
        capacities = {name: n for name, n in (capacities or {}).items() if name not in abi.POLICY_ARRAYS}
        pins = {name: pin_dir / name for name in (*abi.MAP_LAYOUTS, *abi.RING_MAPS)} if pin_dir is not None else None
        self.slot_growth: SlotMapGrowth | None = None
        if pin_dir is not None:
            self.slot_growth = SlotMapGrowth.plan(pin_dir, slots if slots is not None else capacity_for(1))
            capacities = {**(capacities or {}), **self.slot_growth.capacities}
            pins.update(self.slot_growth.pins)
        # Tables pinned by an edgewarden without the prefilter get one built from them.
        new_prefilter = pins is not None and not pins[PREFILTER_MAP].exists()
        # Likewise the VIP heads (an empty heads map would call every address "no VIP").
        new_vip_heads = pins is not None and not (pins[VIP_HEADS_MAP].exists() and pins[SLOT_TENANTS_MAP].exists())
        # ...and the host bits (without them every partial /24 takes the table lookups).
        new_host_bits = [table for table, name in HOST_BITS_MAPS.items()
                         if pins is not None and not pins[name].exists()]
        if pins is not None:
            refuse_in_place_policy_arrays(pins)
        path = object_file or object_path(conntrack=conntrack_available())
        try:
            self.kfuncs = object_kfuncs(path)
            self._object = BpfObject(path, max_entries=capacities, pin_paths=pins,
                                     inner_max_entries=inner_capacities)
        except Exception:
            if self.slot_growth is not None:
                self.slot_growth.abort()
            raise
        try:
            self.prog_fd = self._object.program_fd(PROGRAM_NAME)
            self.maps: dict[str, BpfMap] = {
                name: open_typed_map(name, lambda k, v, name=name: self._object.map(
                    name, k, v, percpu=name in abi.PERCPU_MAPS), inner_capacities.get(name))
                for name in abi.MAP_LAYOUTS}
            for name, path in (pins or {}).items():
                if name in self.maps:       # the ring buffer has no BpfMap view
                    self.maps[name].pin_path = str(path)
            # A new (not adopted) swappable table starts with an empty inner table.
            for name in abi.SWAPPABLE_TABLES:
                SwappableTable(self.maps[name]).ensure_inner()
            for name in abi.POLICY_ARRAYS:
                self.maps[name].ensure_inner()
            if new_prefilter:
                sync_prefilter(self.maps)
            if new_vip_heads:
                sync_vip_heads(self.maps)
            if new_host_bits:
                sync_host_bits(self.maps, new_host_bits)
            if self.slot_growth is not None:
                self.slot_growth.carry_over(self.maps)
        except Exception:
            self.close()
            raise

    @property
    def slots(self) -> int:
        return self.maps["ew_counters"].max_entries

    def commit_slot_maps(self) -> None:
        """This program is attached (or none is): its slot maps become the live ones."""
        if self.slot_growth is not None:
            self.slot_growth.commit(self.maps)

    @property
    def conntrack(self) -> bool:
        """The loaded program asks conntrack (it calls, and the kernel resolved, its kfuncs)."""
        return set(CONNTRACK_KFUNCS) <= set(self.kfuncs)

    def pin_program(self, path: Path) -> None:
        self._object.pin_program(PROGRAM_NAME, path)

    def close(self) -> None:
        """Slot maps not committed are dropped, the live ones kept."""
        if self.slot_growth is not None:
            self.slot_growth.abort()
        self._object.close()

    def __enter__(self) -> "LoadedProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def refuse_in_place_policy_arrays(pins: dict[str, Path]) -> None:
    """Pins of an edgewarden that wrote ew_config and ew_flood_policies in
    place (plain arrays) cannot be adopted: libbpf would refuse them with a
    bare EINVAL."""
    for name in abi.POLICY_ARRAYS:
        if not pins[name].exists():
            continue
        fd = obj_get(str(pins[name]))
        try:
            map_type = map_info(fd).type
        finally:
            os.close(fd)
        if map_type != lib.BPF_MAP_TYPE_ARRAY_OF_MAPS:
            raise InterfaceError(f"{pins[name]} was pinned by an older edgewarden, which wrote {name} in place; "
                                 "this one swaps it whole (a map-in-map): run edgewarden detach and attach "
                                 "again to recreate the maps (enforcement stops in between)")


def open_pinned_maps(pin_dir: Path, names=None) -> dict[str, BpfMap]:
    """The live maps of an attached interface (those of `names`, all by
    default), without loading anything."""
    maps = {}
    try:
        for name in names or abi.MAP_LAYOUTS:
            path = pin_dir / name
            maps[name] = open_typed_map(name, lambda k, v, path=path, name=name: BpfMap.from_pin(
                str(path), name, k, v, percpu=name in abi.PERCPU_MAPS))
    except Exception:
        for m in maps.values():
            m.close()
        raise
    return maps


def close_maps(maps: dict[str, BpfMap]) -> None:
    for m in maps.values():
        m.close()


@contextlib.contextmanager
def live_maps(ifname: str):
    """The pinned maps of a managed interface, closed on exit."""
    pin_dir = pin_dir_for(ifname)
    if not pin_dir.is_dir():
        raise InterfaceError(f"{ifname} is not managed by edgewarden (no {pin_dir}); run: edgewarden attach {ifname}")
    maps = open_pinned_maps(pin_dir)
    try:
        yield maps
    finally:
        close_maps(maps)


def read_revision(maps) -> int:
    raw = maps["ew_config"].lookup((0).to_bytes(4, "little"))
    return ffi.from_buffer("struct ew_config *", raw).policy_revision if raw else 0


def ensure_bpffs(root: Path) -> None:
    """Mount bpffs at /sys/fs/bpf when it is not (some hosts do not mount it)."""
    mount_point = Path("/sys/fs/bpf")
    if root.is_relative_to(mount_point) and not _is_bpffs(mount_point):
        result = subprocess.run(["mount", "-t", "bpf", "bpf", str(mount_point)], capture_output=True, text=True)
        if result.returncode != 0 or not _is_bpffs(mount_point):
            raise OSError(f"bpffs is not mounted at {mount_point} and mounting it failed ({result.stderr.strip()}); "
                          f"run: mount -t bpf bpf {mount_point}")
    root.mkdir(parents=True, exist_ok=True)


def _is_bpffs(path: Path) -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(fields[1] == str(path) and fields[2] == "bpf" for fields in (line.split() for line in mounts))
