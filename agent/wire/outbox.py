"""The frames waiting to be written on one connection, highest priority
first and in order within a priority: an emergency block overtakes the
chunks of a snapshot already queued, a delta never overtakes its snapshot."""

from __future__ import annotations

import heapq
import itertools

PRIORITY_POLICY = 0        # snapshots and deltas, in revision order
PRIORITY_REPORT = 10       # acks, reports, digests
PRIORITY_EMERGENCY = 100   # EmergencyBlock.priority (0..) is added to this
PRIORITY_SESSION = 1 << 62  # the hello and the welcome: nothing may go before them


class Outbox:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, bytes]] = []
        self._order = itertools.count()
        self.queued_bytes = 0

    def put(self, frames, priority: int = PRIORITY_POLICY) -> None:
        """Queue bytes (one frame or an iterable of frames, written as they are)."""
        if isinstance(frames, (bytes, bytearray)):
            frames = (frames,)
        for frame in frames:
            if frame:
                heapq.heappush(self._heap, (-priority, next(self._order), frame))
                self.queued_bytes += len(frame)

    def pop(self) -> bytes | None:
        if not self._heap:
            return None
        frame = heapq.heappop(self._heap)[2]
        self.queued_bytes -= len(frame)
        return frame

    def __len__(self) -> int:
        return len(self._heap)
