"""Packet evidence from the DPDK engine: the lcores' sample rings (bpf/sample.h's
ring buffer, as the worker keeps it: native/dpdk/tables.h) drained with the
interface of agent.evidence.ring.SampleRing, and the worker's sampling
budget as the ew_sample_config map, so the daemon's evidence recorder
writes, rotates and seals DPDK samples exactly as it does XDP ones."""

from __future__ import annotations

import struct
import time

from agent._dpdk import ffi, lib
from agent.evidence.ring import Sample

READ_BATCH = 512
IDLE_POLL_SECONDS = 0.02      # how often an empty ring is looked at again within poll()'s timeout


class EngineSampleRing:
    """poll() returns the samples the lcores wrote since the last call, with
    their timestamps moved from the engine's clock (the TSC, as
    bpf_ktime_get_ns reads it) to CLOCK_MONOTONIC, as a BPF ring's are."""

    def __init__(self, engine):
        self._engine = engine
        self._out = ffi.new("struct ew_sample[]", READ_BATCH)

    def poll(self, timeout_ms: int = 200) -> list[Sample]:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            samples = self._read()
            if samples or time.monotonic() >= deadline:
                return samples
            time.sleep(IDLE_POLL_SECONDS)

    def _read(self) -> list[Sample]:
        samples = []
        while True:
            count = self._engine.read_samples(self._out, READ_BATCH)
            to_monotonic = time.monotonic_ns() - lib.ew_clock_ns()
            for i in range(count):
                record = self._out[i]
                captured = min(record.captured_length, ffi.sizeof(record.data))
                samples.append(Sample(record.timestamp_ns + to_monotonic, record.tenant_id, record.ifindex,
                                      record.reason, record.packet_length, bytes(ffi.buffer(record.data, captured))))
            if count < READ_BATCH:
                return samples

    def close(self) -> None:
        pass            # the rings are the worker's


class SampleConfigView:
    """ew_sample_config: the worker's single struct ew_sample_config, as a one-entry array map."""

    name = "ew_sample_config"

    def __init__(self, engine):
        self._engine = engine
        self.ncpus, self.max_entries = 1, 1

    def lookup(self, key: bytes) -> bytes | None:
        return self._engine.read_sample_config() if struct.unpack("=I", key)[0] == 0 else None

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if struct.unpack("=I", key)[0] != 0:
            raise KeyError("ew_sample_config has one entry, 0")
        self._engine.write_sample_config(value)

    def close(self) -> None:
        pass
