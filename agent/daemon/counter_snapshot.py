"""Counters that live in the daemon's memory (the DPDK engine's per-lcore
counters, which no pinned map holds) carried over the control socket as the
bytes of the maps `edgewarden stats` reads, and read back through the
BpfMap interface: the CLI runs the same aggregation (agent.datapath.counters
and the Cython core) on them as on an XDP interface's pins."""

from __future__ import annotations

import base64
import struct

from agent.datapath.counters import tenant_slots

CONFIG_KEY = struct.pack("=I", 0)


def take_snapshot(maps: dict, policy) -> dict:
    """The tenants, config and the counter slots in use of `maps` (anything
    with the BpfMap interface), with the tenants' names and states from
    `policy` so the CLI can label rows as it does from a pinned policy."""
    counters = maps["ew_counters"]
    slots = sorted({s for s in tenant_slots(maps).values() if s < counters.max_entries})
    raw = b"".join(counters.lookup(struct.pack("=I", slot)) for slot in slots)
    config = maps["ew_config"].lookup(CONFIG_KEY)
    return {
        "ncpus": counters.ncpus, "max_entries": counters.max_entries, "value_size": counters.value_size,
        "slots": slots, "counters": base64.b64encode(raw).decode(),
        "tenants": {k.hex(): v.hex() for k, v in maps["ew_tenants"].items().items()},
        "config": config.hex() if config else None,
        "policy": {"revision": policy.revision,
                   "tenants": {str(t.id): [t.name, t.state.value] for t in policy.tenants}},
    }


class _Table:
    def __init__(self, entries: dict[bytes, bytes]):
        self._entries = entries
        self.ncpus = 1

    def lookup(self, key: bytes) -> bytes | None:
        return self._entries.get(key)

    def items(self) -> dict[bytes, bytes]:
        return dict(self._entries)

    def close(self) -> None:
        pass


class _Counters:
    """ew_counters as a per-CPU array: the slots in use from the snapshot, zero elsewhere."""

    name = "ew_counters"

    def __init__(self, snapshot: dict):
        self.ncpus, self.max_entries = snapshot["ncpus"], snapshot["max_entries"]
        self.value_size = snapshot["value_size"]
        raw = base64.b64decode(snapshot["counters"])
        self._slots = {slot: raw[i * self.value_size:(i + 1) * self.value_size]
                       for i, slot in enumerate(snapshot["slots"])}

    def lookup(self, key: bytes) -> bytes | None:
        (slot,) = struct.unpack("=I", key)
        if slot >= self.max_entries:
            return None
        return self._slots.get(slot, bytes(self.value_size))

    def array_values(self, entries: int | None = None) -> memoryview:
        """The first `entries` slots (all by default), as BpfMap.array_values."""
        entries = self.max_entries if entries is None else min(entries, self.max_entries)
        empty = bytes(self.value_size)
        return memoryview(b"".join(self._slots.get(slot, empty) for slot in range(entries)))

    def items(self) -> dict[bytes, bytes]:
        return {struct.pack("=I", slot): self.lookup(struct.pack("=I", slot)) for slot in range(self.max_entries)}

    def close(self) -> None:
        pass


def snapshot_maps(snapshot: dict) -> dict:
    """The maps agent.datapath.counters reads, from a take_snapshot() document."""
    config = {CONFIG_KEY: bytes.fromhex(snapshot["config"])} if snapshot["config"] else {}
    return {"ew_tenants": _Table({bytes.fromhex(k): bytes.fromhex(v) for k, v in snapshot["tenants"].items()}),
            "ew_config": _Table(config), "ew_counters": _Counters(snapshot)}


def tenant_labels(snapshot: dict) -> dict[int, tuple[str, str]]:
    """tenant id -> (name, state) of the policy the daemon enforces."""
    return {int(t): (name, state) for t, (name, state) in snapshot["policy"]["tenants"].items()}
