"""Source block tables as the datapath reads them, and their safe update.

IPv4 lists become two-level node tables (struct ew_block_node): a /16 node
says whether the whole /16, or which of its /24s, are blocked, and which
/24s have a level-24 node with per-host bits. v4_block_nodes() is the
pure-Python statement of that encoding. IPv6 lists are LPM trie entries.

Every table sits in slot 0 of a single-slot map-in-map, and its inner map
is pinned beside the outer one (<outer>_inner): the kernel gives a map's
inner maps out only by id, and opening a map by id needs CAP_SYS_ADMIN,
which a hardened agent does not have. A new version is
either swapped in whole (fresh inner map, one update of the outer slot) or,
for a small change, applied in place in an order that never lets an address
blocked by both versions through: level-24 nodes are written before the
level-16 nodes that point at them, and removed after the level-16 nodes
that pointed at them."""

from __future__ import annotations

import errno
import ipaddress
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from agent._libbpf import ffi
from agent._prefixes import EntryTable
from agent.datapath import abi
from agent.datapath.compile import BLOCK_TABLES
from agent.datapath.syscalls import BpfError, BpfMap, create_map, map_fd_by_id, map_info, obj_get, obj_pin

NODE_FORMAT = "=II4Q4Q"      # struct ew_block_node
TENANT_KEY_FORMAT = "=II"    # struct ew_tenant_block_key
DELTA_LIMIT = 4096           # changed entries above which a version is swapped in whole
INNER_PIN_SUFFIX = "_inner"  # the live inner map's pin, beside its outer map's (bpffs allows no dots)
NEW_INNER_PIN_SUFFIX = "_inner_new"
SLOT = b"\0\0\0\0"


def node_key(level: int, index: int) -> int:
    return (level << 24) | index


def node_level(key: int) -> int:
    return key >> 24


def v4_block_nodes(networks: Iterable[ipaddress.IPv4Network]) -> dict[int, bytes]:
    """Node key -> packed struct ew_block_node for a set of non-overlapping
    IPv4 prefixes (compile them first)."""
    n16: dict[int, list] = {}     # index16 -> [flags, full24 bits, partial24 bits]
    n24: dict[int, int] = {}      # index24 -> host bits
    for net in networks:
        first, length = int(net.network_address), net.prefixlen
        if length <= 16:
            for index16 in range(first >> 16, (first >> 16) + (1 << (16 - length))):
                n16[index16] = [abi.BLOCK_NODE_FULL, 0, 0]
        elif length <= 24:
            node = n16.setdefault(first >> 16, [0, 0, 0])
            for index24 in range(first >> 8, (first >> 8) + (1 << (24 - length))):
                node[1] |= 1 << (index24 & 0xFF)
        else:
            node = n16.setdefault(first >> 16, [0, 0, 0])
            node[2] |= 1 << ((first >> 8) & 0xFF)
            hosts = ((1 << (1 << (32 - length))) - 1) << (first & 0xFF)
            n24[first >> 8] = n24.get(first >> 8, 0) | hosts
    nodes = {}
    for index16, (flags, full, partial) in n16.items():
        nodes[node_key(abi.BLOCK_LEVEL_16, index16)] = _pack_node(flags, full, partial)
    for index24, hosts in n24.items():
        nodes[node_key(abi.BLOCK_LEVEL_24, index24)] = _pack_node(0, hosts, 0)
    return nodes


def _words(bits: int) -> list[int]:
    return [(bits >> (64 * i)) & 0xFFFFFFFFFFFFFFFF for i in range(4)]


def _pack_node(flags: int, a: int, b: int) -> bytes:
    return struct.pack(NODE_FORMAT, flags, 0, *_words(a), *_words(b))


def _unpack_node(value: bytes) -> tuple[int, int, int]:
    fields = struct.unpack(NODE_FORMAT, value)
    a = sum(w << (64 * i) for i, w in enumerate(fields[2:6]))
    b = sum(w << (64 * i) for i, w in enumerate(fields[6:10]))
    return fields[0], a, b


def v4_networks_from_nodes(nodes: dict[int, bytes]) -> list[ipaddress.IPv4Network]:
    """Inverse of v4_block_nodes, up to merging: what a live table blocks."""
    nets = []
    for key, value in nodes.items():
        flags, a, b = _unpack_node(value)
        index = key & 0xFFFFFF
        if node_level(key) == abi.BLOCK_LEVEL_16:
            if flags & abi.BLOCK_NODE_FULL:
                nets.append(ipaddress.IPv4Network((index << 16, 16)))
            nets += [ipaddress.IPv4Network(((index << 16) | (i << 8), 24)) for i in range(256) if a >> i & 1]
        else:
            nets += [ipaddress.IPv4Network(((index << 8) | h, 32)) for h in range(256) if a >> h & 1]
    return list(ipaddress.collapse_addresses(nets))


# --- key packing for each table ------------------------------------------------

def global_v4_entries(nodes: dict[int, bytes]) -> dict[bytes, bytes]:
    return {struct.pack("=I", key): value for key, value in nodes.items()}


def tenant_v4_entries(tenant_id: int, nodes: dict[int, bytes]) -> dict[bytes, bytes]:
    return {struct.pack(TENANT_KEY_FORMAT, tenant_id, key): value for key, value in nodes.items()}


def v6_lpm_key(net: ipaddress.IPv6Network, tenant_id: int | None = None) -> bytes:
    if tenant_id is None:
        return struct.pack("=I", net.prefixlen) + net.network_address.packed
    return struct.pack("=I", 32 + net.prefixlen) + tenant_id.to_bytes(4, "big") + net.network_address.packed


def decode_v6_lpm_key(key: bytes) -> tuple[int | None, ipaddress.IPv6Network]:
    prefixlen = struct.unpack_from("=I", key)[0]
    if len(key) == 20:
        return None, ipaddress.IPv6Network((key[4:], prefixlen))
    return int.from_bytes(key[4:8], "big"), ipaddress.IPv6Network((key[8:], prefixlen - 32))


def table_key_level(table: str, key: bytes) -> int:
    """Level of a v4 node key (for ordering); v6 trie entries are all level 0."""
    if table == "ew_gblock_v4":
        return node_level(struct.unpack("=I", key)[0])
    if table == "ew_tblock_v4":
        return node_level(struct.unpack(TENANT_KEY_FORMAT, key)[1])
    return 0


# --- the live tables -----------------------------------------------------------

@dataclass
class TableUpdate:
    table: str
    added: int = 0
    changed: int = 0
    removed: int = 0
    swapped: bool = False


def open_inner_table(fd: int, name: str, key_type: str, value_type: str) -> BpfMap:
    """The live inner table behind an fd we own (one seam: tests record through it)."""
    return BpfMap(fd, name, key_type, value_type)


class SwappableTable:
    """Slot 0 of a single-slot map-in-map, holding one inner table."""

    def __init__(self, outer: BpfMap, spec: abi.InnerTable | None = None):
        """`spec`: the inner map, when it is not a block table's (policy_arrays)."""
        self.outer = outer
        self.name = outer.name
        self.spec = spec or abi.SWAPPABLE_TABLES[outer.name]

    def inner(self) -> BpfMap | None:
        raw = self.outer.lookup(SLOT)
        if raw is None:
            return None
        fd = self._inner_fd(struct.unpack("=I", raw)[0])
        return open_inner_table(fd, self.name + "_inner", self.spec.key_type, self.spec.value_type)

    def _inner_fd(self, inner_id: int) -> int:
        """An fd of the inner map in slot 0 (id `inner_id`): the one we hold,
        else its pin (the new one's, if a swap stopped between the slot
        update and the rename), else, for tables pinned by an edgewarden
        that did not pin inner maps, by id."""
        held = self.outer.held_inner_fd
        if held is not None and map_info(held).id == inner_id:
            return os.dup(held)
        pin = self.outer.pin_path
        if pin is not None:
            for path in (pin + INNER_PIN_SUFFIX, pin + NEW_INNER_PIN_SUFFIX):
                try:
                    fd = obj_get(path)
                except BpfError as err:
                    if err.errno == errno.ENOENT:
                        continue
                    raise
                if map_info(fd).id == inner_id:
                    return fd
                os.close(fd)
        try:
            return map_fd_by_id(inner_id, f"the inner table of {self.name}")
        except BpfError as err:
            where = f"its pin {pin}{INNER_PIN_SUFFIX} is missing" if pin else "no fd of it is held"
            raise BpfError(err.errno, f"{self.name}: cannot open its inner table (map id {inner_id}): {where}, "
                                      "and opening by id needs CAP_SYS_ADMIN; detach and attach again to "
                                      "recreate the tables") from None

    def ensure_inner(self) -> None:
        """Give a freshly created outer map an empty inner table."""
        inner = self.inner()
        if inner is None:
            with self._new_inner() as fresh:
                self._install(fresh)
        else:
            inner.close()

    def _install(self, inner: BpfMap) -> None:
        """Make `inner` the live table: pinned beside the outer map first (so
        another process can open it), then swapped into the slot, then
        pinned under the live name (bpffs has no rename); inner() finds it
        under either name in between."""
        pin = self.outer.pin_path
        if pin is not None:
            staged, live = Path(pin + NEW_INNER_PIN_SUFFIX), Path(pin + INNER_PIN_SUFFIX)
            staged.unlink(missing_ok=True)
            obj_pin(inner.fd, str(staged))
        self.outer.update(SLOT, struct.pack("=I", inner.fd))
        if pin is not None:
            live.unlink(missing_ok=True)
            obj_pin(inner.fd, str(live))
            staged.unlink()
        self.outer.hold_inner(os.dup(inner.fd))

    def _sizes(self) -> tuple[int, int]:
        return ffi.sizeof(self.spec.key_type), ffi.sizeof(self.spec.value_type)

    def entries_table(self) -> EntryTable:
        """What the live inner table holds, read in packed batches."""
        inner = self.inner()
        if inner is None:
            return EntryTable(*self._sizes())
        with inner:
            keys, values = inner.items_packed()
        return EntryTable.from_packed(keys, values, *self._sizes())

    def entries(self) -> dict[bytes, bytes]:
        return dict(self.entries_table().items())

    def _new_inner(self) -> BpfMap:
        # Kernel map names are at most 15 characters: "ew_gblock_v4_i".
        return create_map(self.spec.map_type, self.name + "_i", self.spec.key_type, self.spec.value_type,
                          self.spec.max_entries, self.spec.map_flags)

    def apply(self, desired: EntryTable | dict[bytes, bytes]) -> TableUpdate:
        """Make the live table hold exactly `desired`, diffed against what it holds now."""
        if isinstance(desired, dict):
            desired = EntryTable.from_packed(b"".join(desired), b"".join(desired.values()), *self._sizes())
        current = self.entries_table()
        added, changed, removed = current.diff_counts(desired)
        update = TableUpdate(self.name, added, changed, removed)
        if not (added or changed or removed):
            return update
        if added + changed + removed > DELTA_LIMIT or len(current) + added > self.spec.max_entries:
            del current            # a million-entry table: do not hold two while building a third
            self._swap_in(desired)
            update.swapped = True
        else:
            writes, stale = current.diff(desired)
            self._apply_delta(writes.items(), [key for key, _ in stale.items()])
        return update

    def swap_in(self, desired: EntryTable) -> None:
        """Make the live table hold exactly `desired` by a swap, never in
        place (the policy arrays: an array value is not replaced atomically)."""
        self._swap_in(desired)

    def _swap_in(self, desired: EntryTable) -> None:
        if len(desired) > self.spec.max_entries:
            raise ValueError(f"{self.name}: {len(desired)} entries do not fit in {self.spec.max_entries}; "
                             "nothing was applied")
        with self._new_inner() as inner:
            inner.update_packed(desired.keys_view(), desired.values_view())
            self._install(inner)

    def _apply_delta(self, writes: list[tuple[bytes, bytes]], stale: list[bytes]) -> None:
        inner = self.inner()
        if inner is None:
            raise RuntimeError(f"{self.name} has no inner table; attach again to recreate it")
        with inner:
            level = lambda key: table_key_level(self.name, key)
            # Finer nodes first when writing, coarser first when removing.
            for key, value in sorted(writes, key=lambda kv: level(kv[0]), reverse=True):
                inner.update(key, value)
            for key in sorted(stale, key=level):
                inner.delete(key)


def blocked_prefixes(maps: dict[str, BpfMap]) -> list[tuple[int | None, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """(tenant id or None for global, prefix) for everything the live tables block."""
    return prefixes_of_tables({name: SwappableTable(maps[name]).entries().items() for name in BLOCK_TABLES})


def prefixes_of_tables(tables) -> list[tuple[int | None, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """(tenant id or None for global, prefix) for the block-table entries
    `tables` holds: per table name, its (key, value) pairs, as read from the
    kernel or as compiled (agent.datapath.compile) for an engine without pins."""
    result: list = [(None, n) for n in v4_networks_from_nodes(
        {struct.unpack("=I", k)[0]: v for k, v in tables["ew_gblock_v4"]})]
    per_tenant: dict[int, dict[int, bytes]] = {}
    for key, value in tables["ew_tblock_v4"]:
        tenant_id, node = struct.unpack(TENANT_KEY_FORMAT, key)
        per_tenant.setdefault(tenant_id, {})[node] = value
    for tenant_id, nodes in per_tenant.items():
        result += [(tenant_id, n) for n in v4_networks_from_nodes(nodes)]
    for name in ("ew_gblock_v6", "ew_tblock_v6"):
        result += [decode_v6_lpm_key(k) for k, _ in tables[name]]
    return result
