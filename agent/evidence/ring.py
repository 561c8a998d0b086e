"""The consumer of the datapath's sample ring buffer (libbpf ring_buffer
through the cffi binding): poll() returns the samples that arrived, copied
out of the ring, with their datapath fields decoded."""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent._libbpf import ffi, lib
from agent.datapath.syscalls import check

SAMPLE_HEADER = ffi.offsetof("struct ew_sample", "data")


@dataclass(frozen=True)
class Sample:
    timestamp_ns: int      # CLOCK_MONOTONIC, as the datapath read it
    tenant_id: int
    ifindex: int
    reason: int
    packet_length: int
    data: bytes            # the first captured_length bytes of the frame


@ffi.def_extern()
def ew_ring_sample(ctx, data, size):
    ring = ffi.from_handle(ctx)
    if size < SAMPLE_HEADER:
        return 0
    record = ffi.cast("struct ew_sample *", data)
    captured = min(record.captured_length, size - SAMPLE_HEADER, ffi.sizeof(record.data))
    ring._arrived.append(Sample(record.timestamp_ns, record.tenant_id, record.ifindex, record.reason,
                                record.packet_length, bytes(ffi.buffer(record.data, captured))))
    return 0


class SampleRing:
    def __init__(self, pin_path: str):
        self._fd = check(lib.bpf_obj_get(str(pin_path).encode()), f"opening the sample ring {pin_path}")
        self._handle = ffi.new_handle(self)
        self._arrived: list[Sample] = []
        self._rb = lib.ring_buffer__new(self._fd, lib.ew_ring_sample, self._handle, ffi.NULL)
        if self._rb == ffi.NULL:
            os.close(self._fd)
            raise OSError(ffi.errno, f"cannot consume the sample ring {pin_path}")

    def poll(self, timeout_ms: int = 200) -> list[Sample]:
        rc = lib.ring_buffer__poll(self._rb, timeout_ms)
        if rc < 0 and rc != -4:       # EINTR: try again next time
            check(rc, "polling the sample ring")
        arrived, self._arrived = self._arrived, []
        return arrived

    def close(self) -> None:
        if self._rb not in (None, ffi.NULL):
            lib.ring_buffer__free(self._rb)
            self._rb = None
            os.close(self._fd)
