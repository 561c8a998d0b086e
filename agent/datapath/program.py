"""Opening and loading the XDP object: with maps pinned per interface (and
adopted when already pinned, so state survives reloads), or with private
maps for classification and tests."""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

from agent._libbpf import ffi, lib
from agent.datapath import abi
from agent.datapath.blocktables import SwappableTable
from agent.datapath.conntrack import kernel_has_function, object_kfuncs
from agent.datapath.syscalls import BpfError, BpfMap, check, take_libbpf_log

PROGRAM_NAME = "edgewarden_xdp"
OBJECT_NAME = "edgewarden.bpf.o"
CONNTRACK_SWITCH = ".rodata.ct"     # bpf/tcp_state.h ew_conntrack_kfuncs


def object_path() -> Path:
    path = Path(str(resources.files("agent.datapath") / OBJECT_NAME))
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build the project first (make build, or pip install -e .)")
    return path


class LoadedProgram:
    """A loaded bpf_object: the program fd and a BpfMap per map. close() drops
    our references only; an attached program and pinned maps live on.
    `conntrack`: the kernel had every kfunc the object calls (the conntrack
    ones) when it was loaded; without, the program runs with those calls
    removed, and policies that need them must be refused
    (agent.datapath.conntrack.require_conntrack)."""

    def __init__(self, pin_dir: Path | None = None, capacities: dict[str, int] | None = None,
                 tenant_capacity: int | None = None, object_file: Path | None = None):
        """`tenant_capacity`: counter slots (and with them tenants, flood
        policies and token buckets), above the default EW_MAX_TENANTS.
        `object_file`: another build of the datapath (tests)."""
        if tenant_capacity is not None:
            capacities = {**(capacities or {}), "ew_counters": tenant_capacity, "ew_tenants": tenant_capacity,
                          "ew_flood_policies": tenant_capacity,
                          "ew_buckets": tenant_capacity * abi.BUCKET_KINDS}
        path = object_file or object_path()
        take_libbpf_log()
        self._obj = lib.bpf_object__open_file(str(path).encode(), ffi.NULL)
        if self._obj == ffi.NULL:
            raise BpfError(ffi.errno or 22, f"opening {path}", take_libbpf_log())
        try:
            self.missing_kfuncs = [name for name in object_kfuncs(self._obj) if not kernel_has_function(name)]
            self.conntrack = not self.missing_kfuncs
            check(lib.ew_set_rodata_u32(self._obj, CONNTRACK_SWITCH.encode(), int(self.conntrack)),
                  f"setting {CONNTRACK_SWITCH} in {path}")
            for name in abi.MAP_LAYOUTS:
                bpf_map = lib.bpf_object__find_map_by_name(self._obj, name.encode())
                if bpf_map == ffi.NULL:
                    raise BpfError(2, f"{path} has no map {name}: object and agent disagree")
                if capacities and name in capacities:
                    check(lib.bpf_map__set_max_entries(bpf_map, capacities[name]), f"sizing {name}")
                if pin_dir is not None:
                    check(lib.bpf_map__set_pin_path(bpf_map, str(pin_dir / name).encode()), f"pin path of {name}")
            check(lib.bpf_object__load(self._obj), f"loading {path}")
            prog = lib.bpf_object__find_program_by_name(self._obj, PROGRAM_NAME.encode())
            if prog == ffi.NULL:
                raise BpfError(2, f"{path} has no program {PROGRAM_NAME}")
            self._prog = prog
            self.prog_fd = lib.bpf_program__fd(prog)
            self.maps: dict[str, BpfMap] = {}
            for name, (key_type, value_type) in abi.MAP_LAYOUTS.items():
                fd = lib.bpf_map__fd(lib.bpf_object__find_map_by_name(self._obj, name.encode()))
                self.maps[name] = BpfMap(fd, name, key_type, value_type,
                                         percpu=name in abi.PERCPU_MAPS, owns_fd=False)
            # A new (not adopted) swappable table starts with an empty inner table.
            for name in abi.SWAPPABLE_TABLES:
                SwappableTable(self.maps[name]).ensure_inner()
        except Exception:
            self.close()
            raise

    def pin_program(self, path: Path) -> None:
        if path.exists():
            path.unlink()
        check(lib.bpf_program__pin(self._prog, str(path).encode()), f"pinning the program at {path}")

    def close(self) -> None:
        if self._obj not in (None, ffi.NULL):
            lib.bpf_object__close(self._obj)
        self._obj = None

    def __enter__(self) -> "LoadedProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_pinned_maps(pin_dir: Path) -> dict[str, BpfMap]:
    """The live maps of an attached interface, without loading anything."""
    maps = {}
    try:
        for name, (key_type, value_type) in abi.MAP_LAYOUTS.items():
            path = pin_dir / name
            maps[name] = BpfMap.from_pin(str(path), name, key_type, value_type, percpu=name in abi.PERCPU_MAPS)
    except Exception:
        for m in maps.values():
            m.close()
        raise
    return maps


def close_maps(maps: dict[str, BpfMap]) -> None:
    for m in maps.values():
        m.close()


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
