"""The DPDK engine's tables seen through the BpfMap interface (lookup,
items, array_values, max_entries, ncpus), so agent.datapath.counters and
everything built on it (`edgewarden stats`, CounterMonitor, the Cython
aggregation) read the engine's per-lcore counters unchanged: one lcore is
one CPU of a per-CPU map."""

from __future__ import annotations

import struct

from agent._dpdk import ffi


class PolicyTableView:
    """A policy map of the engine's current snapshot, read-only. Read at
    each call, so a view held by a long-lived reader (the daemon's counter
    scans) follows every policy applied after it was made."""

    def __init__(self, name: str, engine):
        self.name = name
        self._engine = engine
        self.ncpus = 1

    @property
    def _entries(self) -> dict[bytes, bytes]:
        compiled = self._engine.compiled
        return compiled.maps[self.name] if compiled else {}

    def lookup(self, key: bytes) -> bytes | None:
        return self._entries.get(key)

    def items(self) -> dict[bytes, bytes]:
        return dict(self._entries)

    def close(self) -> None:
        pass          # nothing is open: the engine owns its tables


class LcoreCounters:
    """ew_counters: one struct ew_counters per slot per lcore."""

    name = "ew_counters"

    def __init__(self, engine):
        self._engine = engine
        self.ncpus = engine.lcores
        self.max_entries = engine.slot_capacity
        self.value_size = ffi.sizeof("struct ew_counters") * self.ncpus

    def lookup(self, key: bytes) -> bytes | None:
        (slot,) = struct.unpack("=I", key)
        return self._engine.read_counter_slot(slot) if slot < self.max_entries else None

    def array_values(self, entries: int | None = None) -> memoryview:
        """The first `entries` slots (all by default), as BpfMap.array_values."""
        entries = self.max_entries if entries is None else min(entries, self.max_entries)
        return memoryview(b"".join(self._engine.read_counter_slot(slot) for slot in range(entries)))

    def items(self) -> dict[bytes, bytes]:
        return {struct.pack("=I", slot): self._engine.read_counter_slot(slot) for slot in range(self.max_entries)}

    def close(self) -> None:
        pass


def engine_maps(engine) -> dict:
    from agent.dpdk.samples import SampleConfigView
    maps = {name: PolicyTableView(name, engine) for name in ("ew_tenants", "ew_config", "ew_vips_v4", "ew_vips_v6")}
    maps["ew_counters"] = LcoreCounters(engine)
    maps["ew_sample_config"] = SampleConfigView(engine)     # the evidence recorder sets the budget here
    return maps
