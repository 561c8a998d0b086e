"""The one seam between edgewarden and the kernel's BPF syscalls (through
libbpf): typed map handles, program test runs, XDP attach/query. Everything
above it works with bytes keyed by the ABI layouts and can be tested without
a kernel."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

from agent._libbpf import ffi, lib

lib.ew_capture_libbpf_log(1)


class BpfError(OSError):
    """A BPF operation failed; carries libbpf's log (e.g. the verifier's) when there is one."""

    def __init__(self, errno_: int, what: str, log: str = ""):
        message = f"{what}: {os.strerror(errno_)}"
        if log.strip():
            message += "\n--- libbpf says ---\n" + log.strip()[-4000:]
        super().__init__(errno_, message)
        self.what = what
        self.log = log


def check(rc: int, what: str) -> int:
    """libbpf 1.x returns -errno on failure."""
    if rc < 0:
        raise BpfError(-rc, what, ffi.string(lib.ew_libbpf_log()).decode(errors="replace"))
    return rc


def take_libbpf_log() -> str:
    text = ffi.string(lib.ew_libbpf_log()).decode(errors="replace")
    lib.ew_clear_libbpf_log()
    return text


def possible_cpus() -> int:
    return check(lib.libbpf_num_possible_cpus(), "counting possible CPUs")


def round_up_8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True)
class MapInfo:
    id: int
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int


def map_info(fd: int) -> MapInfo:
    id_, type_, ks, vs, me = (ffi.new("__u32 *") for _ in range(5))
    name = ffi.new("char[]", 64)
    check(lib.ew_map_info(fd, id_, name, 64, type_, ks, vs, me), "reading map info")
    return MapInfo(id_[0], ffi.string(name).decode(), type_[0], ks[0], vs[0], me[0])


def prog_map_ids(fd: int) -> set[int]:
    """The ids of the maps a loaded program uses."""
    count = ffi.new("__u32 *", 64)
    while True:
        ids = ffi.new("__u32[]", count[0])
        wanted = count[0]
        check(lib.ew_prog_map_ids(fd, ids, count), "reading the maps of a program")
        if count[0] <= wanted:
            return {ids[i] for i in range(count[0])}


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str
    type: int


def prog_info(fd: int) -> ProgInfo:
    id_, type_ = ffi.new("__u32 *"), ffi.new("__u32 *")
    name = ffi.new("char[]", 64)
    check(lib.ew_prog_info(fd, id_, name, 64, type_), "reading program info")
    return ProgInfo(id_[0], ffi.string(name).decode(), type_[0])


class BpfMap:
    """A map file descriptor with the key and value layouts from the ABI header.

    Keys and values cross this class as bytes of exactly the C layout; for
    per-CPU maps a value is ncpus consecutive 8-byte-aligned copies.
    """

    def __init__(self, fd: int, name: str, key_type: str, value_type: str, *, percpu: bool = False, owns_fd: bool = True):
        self.fd = fd
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        self.key_size = ffi.sizeof(key_type)
        self.percpu = percpu
        self.ncpus = possible_cpus() if percpu else 1
        self.value_size = round_up_8(ffi.sizeof(value_type)) * self.ncpus if percpu else ffi.sizeof(value_type)
        self._owns_fd = owns_fd
        self._batch_buffers = None
        self.pin_path: str | None = None          # where it is pinned, when known
        self.held_inner_fd: int | None = None     # map-in-map: our fd of the inner map we put in slot 0
        info = map_info(fd)
        expected_value = ffi.sizeof(value_type)
        if info.key_size != self.key_size or info.value_size != expected_value:
            raise BpfError(
                22,
                f"map {name} (id {info.id}) has key/value sizes {info.key_size}/{info.value_size}, "
                f"this agent expects {self.key_size}/{expected_value}: it was created by an incompatible "
                f"edgewarden; detach and attach again to recreate it",
            )
        self.max_entries = info.max_entries

    @classmethod
    def from_pin(cls, path: str, name: str, key_type: str, value_type: str, *, percpu: bool = False) -> "BpfMap":
        fd = check(lib.bpf_obj_get(path.encode()), f"opening pinned map {path}")
        bpf_map = cls(fd, name, key_type, value_type, percpu=percpu)
        bpf_map.pin_path = path
        return bpf_map

    def hold_inner(self, fd: int) -> None:
        """Keep `fd` (ours now) as the inner map in slot 0, replacing any held before."""
        if self.held_inner_fd is not None:
            os.close(self.held_inner_fd)
        self.held_inner_fd = fd

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
        if self.held_inner_fd is not None:
            os.close(self.held_inner_fd)
            self.held_inner_fd = None

    def __enter__(self) -> "BpfMap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def lookup(self, key: bytes) -> bytes | None:
        value = ffi.new("char[]", self.value_size)
        rc = lib.bpf_map_lookup_elem(self.fd, key, value)
        if rc == -2:  # ENOENT
            return None
        check(rc, f"looking up a key in {self.name}")
        return bytes(ffi.buffer(value, self.value_size))

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self._check_sizes(key, value)
        check(lib.bpf_map_update_elem(self.fd, key, value, flags), f"updating {self.name}")

    def delete(self, key: bytes) -> bool:
        rc = lib.bpf_map_delete_elem(self.fd, key)
        if rc == -2:
            return False
        check(rc, f"deleting a key from {self.name}")
        return True

    def keys(self) -> Iterator[bytes]:
        """All keys, by get_next_key (correct for LPM tries, which have no batch ops in 6.x)."""
        cur = ffi.NULL
        nxt = ffi.new("char[]", self.key_size)
        while True:
            rc = lib.bpf_map_get_next_key(self.fd, cur, nxt)
            if rc == -2:
                return
            check(rc, f"iterating {self.name}")
            key = bytes(ffi.buffer(nxt, self.key_size))
            yield key
            cur = ffi.new("char[]", key)

    def items(self) -> dict[bytes, bytes]:
        """Every entry. Uses a batched lookup where the map type has one."""
        keys, values = self.items_packed()
        ks, vs = self.key_size, self.value_size
        return {keys[i * ks:(i + 1) * ks]: values[i * vs:(i + 1) * vs] for i in range(len(keys) // ks)}

    def array_values(self, entries: int | None = None, start: int = 0) -> memoryview:
        """The values of `entries` indexes from `start` (all by default) of
        an (per-CPU) array map in index order, one batched read into a buffer
        reused by the next call (valid until then)."""
        entries = self.max_entries - start if entries is None else min(entries, self.max_entries - start)
        if self._batch_buffers is None or self._batch_buffers[4] < entries:
            # Sized to what is read, not to the map: a scan reads the slots in use.
            self._batch_buffers = (ffi.new("char[]", self.key_size * max(entries, 1)),
                                   ffi.new("char[]", self.value_size * max(entries, 1)),
                                   ffi.new("__u32 *"), ffi.new("__u32 *"), entries)
        keys, values, count, out_batch, _ = self._batch_buffers
        count[0] = entries
        # The batch starts after the key it is given (the kernel's get_next_key).
        in_batch = ffi.new("__u32 *", start - 1) if start else ffi.NULL
        rc = lib.ew_map_lookup_batch(self.fd, in_batch, out_batch, keys, values, count)
        if rc < 0 and rc != -2:
            check(rc, f"batch read of {self.name}")
        if count[0] != entries:
            raise BpfError(5, f"batch read of {self.name} returned {count[0]} of {entries} entries")
        return memoryview(ffi.buffer(values, self.value_size * entries))

    def items_packed(self) -> tuple[bytes, bytes]:
        """(keys, values) concatenated, for building an EntryTable without an
        object per entry: batched where the map type has it, else key by key."""
        key_parts, value_parts = [], []
        for keys, values in self.packed_batches():
            key_parts.append(bytes(keys))
            value_parts.append(bytes(values))
        return b"".join(key_parts), b"".join(value_parts)

    def _items_one_by_one(self) -> tuple[bytes, bytes]:
        keys = list(self.keys())
        values = [self.lookup(k) for k in keys]
        present = [(k, v) for k, v in zip(keys, values) if v is not None]
        return b"".join(k for k, _ in present), b"".join(v for _, v in present)

    def packed_batches(self):
        """(keys, values) of the map a batch at a time, as views of read
        buffers that the next batch reuses (EntryTable.from_batches copies
        each in turn): no copy of the whole map is held. A map type without
        batched reads gives one pair, read key by key."""
        chunk = max(1, min(self.max_entries, 65536))
        keys = ffi.new("char[]", self.key_size * chunk)
        values = ffi.new("char[]", self.value_size * chunk)
        out_batch = ffi.new("char[]", max(8, self.key_size))
        in_batch = ffi.NULL
        count = ffi.new("__u32 *")
        while True:
            count[0] = chunk
            rc = lib.ew_map_lookup_batch(self.fd, in_batch, out_batch, keys, values, count)
            if rc in (-22, -95, -524) and in_batch == ffi.NULL:
                yield self._items_one_by_one()
                return
            if rc < 0 and rc != -2:
                check(rc, f"batch read of {self.name}")
            yield (memoryview(ffi.buffer(keys, self.key_size * count[0])),
                   memoryview(ffi.buffer(values, self.value_size * count[0])))
            if rc == -2:
                return
            in_batch = ffi.new("char[]", ffi.buffer(out_batch)[:])

    def update_packed(self, keys, values) -> None:
        """Write concatenated keys and values (bytes or any buffer, e.g. a
        zero-copy view): one batched update where the map type has it, else
        key by key. (Splitting a big load over threads was measured slower:
        the kernel's element allocation serialises.)"""
        count = len(keys) // self.key_size
        if count == 0:
            return
        n = ffi.new("__u32 *", count)
        rc = lib.ew_map_update_batch(self.fd, ffi.from_buffer(keys), ffi.from_buffer(values), n, 0)
        if rc in (-22, -95, -524) and n[0] == 0:
            for i in range(count):
                self.update(bytes(keys[i * self.key_size:(i + 1) * self.key_size]),
                            bytes(values[i * self.value_size:(i + 1) * self.value_size]))
            return
        check(rc, f"batch update of {count} entries in {self.name} (failed after {n[0]})")

    def update_many(self, entries: dict[bytes, bytes]) -> None:
        """Write entries with batched updates where the map type has them."""
        for key, value in entries.items():
            self._check_sizes(key, value)
        self.update_packed(b"".join(entries.keys()), b"".join(entries.values()))

    def delete_many(self, keys: list[bytes]) -> None:
        for key in keys:
            self.delete(key)

    def _check_sizes(self, key: bytes, value: bytes) -> None:
        if len(key) != self.key_size or len(value) != self.value_size:
            raise ValueError(
                f"{self.name}: key/value of {len(key)}/{len(value)} bytes, map wants {self.key_size}/{self.value_size}"
            )


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    duration_ns: int
    data_out: bytes


def test_run(prog_fd: int, frame: bytes, repeat: int = 1, *, want_data: bool = False) -> TestRunResult:
    """BPF_PROG_TEST_RUN: runs the program on `frame` in the kernel, nothing is sent."""
    retval = ffi.new("__u32 *")
    duration = ffi.new("__u32 *")
    size_out = ffi.new("__u32 *", len(frame) + 256)
    data_out = ffi.new("char[]", size_out[0]) if want_data else ffi.NULL
    check(lib.ew_prog_test_run(prog_fd, frame, len(frame), data_out, size_out, repeat, retval, duration),
          f"BPF_PROG_TEST_RUN on a {len(frame)}-byte frame")
    out = bytes(ffi.buffer(data_out, size_out[0])) if want_data else b""
    return TestRunResult(retval[0], duration[0], out)


test_run.__test__ = False  # not a pytest test despite its name
TestRunResult.__test__ = False


@dataclass(frozen=True)
class XdpAttachment:
    prog_id: int         # the one program attached, 0 if none
    drv_prog_id: int
    skb_prog_id: int
    attach_mode: int     # XDP_ATTACHED_*: 0 none, 1 drv, 2 skb, 3 hw, 4 multi

    @property
    def mode_name(self) -> str:
        return {0: "none", 1: "native", 2: "generic", 3: "offload", 4: "multi"}.get(self.attach_mode, "unknown")


def xdp_query(ifindex: int) -> XdpAttachment:
    ids = [ffi.new("__u32 *") for _ in range(3)]
    mode = ffi.new("__u8 *")
    check(lib.ew_xdp_query(ifindex, *ids, mode), f"querying XDP on ifindex {ifindex}")
    return XdpAttachment(ids[0][0], ids[1][0], ids[2][0], mode[0])


def xdp_attach(ifindex: int, prog_fd: int, flags: int, replace_prog_fd: int | None = None) -> None:
    if replace_prog_fd is None:
        check(lib.bpf_xdp_attach(ifindex, prog_fd, flags, ffi.NULL), f"attaching XDP to ifindex {ifindex}")
    else:
        check(lib.ew_xdp_attach_replacing(ifindex, prog_fd, flags, replace_prog_fd),
              f"replacing the XDP program on ifindex {ifindex}")


def xdp_detach(ifindex: int, flags: int) -> None:
    check(lib.bpf_xdp_detach(ifindex, flags, ffi.NULL), f"detaching XDP from ifindex {ifindex}")


def prog_fd_by_id(prog_id: int) -> int:
    return check(lib.bpf_prog_get_fd_by_id(prog_id), f"opening program id {prog_id}")


def obj_get(path: str) -> int:
    return check(lib.bpf_obj_get(path.encode()), f"opening pinned object {path}")


def obj_pin(fd: int, path: str) -> None:
    check(lib.bpf_obj_pin(fd, path.encode()), f"pinning at {path}")


def create_map(map_type: int, name: str, key_type: str, value_type: str, max_entries: int, map_flags: int) -> BpfMap:
    fd = check(lib.ew_map_create(map_type, name.encode(), ffi.sizeof(key_type), ffi.sizeof(value_type),
                                 max_entries, map_flags), f"creating map {name}")
    return BpfMap(fd, name, key_type, value_type)


def map_fd_by_id(map_id: int, what: str) -> int:
    """Opening by id needs CAP_SYS_ADMIN: only for objects we hold no pin or fd of."""
    return check(lib.bpf_map_get_fd_by_id(map_id), f"opening map id {map_id} ({what})")
