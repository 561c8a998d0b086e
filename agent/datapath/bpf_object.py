"""One wrapper for a BPF object file opened and loaded through libbpf: its
programs' fds and its maps as BpfMap, with map sizes and pin paths set
before load. The datapath (LoadedProgram), the lab's flood generator and
the tests' harness programs all load through it."""

from __future__ import annotations

import os
from pathlib import Path

from agent._libbpf import ffi, lib
from agent.datapath.syscalls import BpfError, BpfMap, check, take_libbpf_log


class BpfObject:
    """close() drops our references only: an attached program and pinned
    maps live on in the kernel."""

    def __init__(self, path: Path, *, max_entries: dict[str, int] | None = None,
                 pin_paths: dict[str, Path] | None = None, inner_max_entries: dict[str, int] | None = None):
        """`inner_max_entries`: for a map-in-map, the entries of its inner
        template (the inner maps put in its slots must match it)."""
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} is missing: build the project first (make build)")
        take_libbpf_log()
        self._inner_templates: list[int] = []
        self._obj = lib.bpf_object__open_file(str(self.path).encode(), ffi.NULL)
        if self._obj == ffi.NULL:
            self._obj = None
            raise BpfError(ffi.errno or 22, f"opening {self.path}", take_libbpf_log())
        try:
            for name, entries in (max_entries or {}).items():
                check(lib.bpf_map__set_max_entries(self._find_map(name), entries), f"sizing {name}")
            for name, entries in (inner_max_entries or {}).items():
                self._size_inner(name, entries)
            for name, pin in (pin_paths or {}).items():
                check(lib.bpf_map__set_pin_path(self._find_map(name), str(pin).encode()), f"pin path of {name}")
            check(lib.bpf_object__load(self._obj), f"loading {self.path}")
        except Exception:
            self.close()
            raise
        finally:
            for fd in self._inner_templates:
                os.close(fd)
            self._inner_templates = []

    def _size_inner(self, name: str, entries: int) -> None:
        """libbpf cannot resize the inner template it made from the BTF (the
        call crashes in libbpf 1.1), so the outer map gets a template of ours,
        the same but for its entries, for the kernel to check inner maps by."""
        outer = self._find_map(name)
        inner = lib.bpf_map__inner_map(outer)
        if inner == ffi.NULL:
            raise BpfError(22, f"{self.path}: {name} is not a map-in-map: object and agent disagree")
        fd = check(lib.ew_map_create(lib.bpf_map__type(inner), name[:13].encode() + b"_t", lib.bpf_map__key_size(inner),
                                     lib.bpf_map__value_size(inner), entries, lib.bpf_map__map_flags(inner)),
                   f"creating the inner template of {name}")
        self._inner_templates.append(fd)
        check(lib.bpf_map__set_inner_map_fd(outer, fd), f"sizing the inner map of {name}")

    def _find_map(self, name: str):
        bpf_map = lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if bpf_map == ffi.NULL:
            raise BpfError(2, f"{self.path} has no map {name}: object and agent disagree")
        return bpf_map

    def program(self, name: str):
        prog = lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if prog == ffi.NULL:
            raise BpfError(2, f"{self.path} has no program {name}")
        return prog

    def program_fd(self, name: str) -> int:
        return lib.bpf_program__fd(self.program(name))

    def map(self, name: str, key_type: str, value_type: str, *, percpu: bool = False) -> BpfMap:
        """A view of one of the object's maps (the object keeps the fd)."""
        return BpfMap(lib.bpf_map__fd(self._find_map(name)), name, key_type, value_type, percpu=percpu, owns_fd=False)

    def pin_program(self, name: str, path: Path) -> None:
        if path.exists():
            path.unlink()
        check(lib.bpf_program__pin(self.program(name), str(path).encode()), f"pinning the program at {path}")

    def close(self) -> None:
        if self._obj is not None:
            lib.bpf_object__close(self._obj)
        self._obj = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
