"""Time for the workflow, injectable: the controller runs on the system clock;
tests and the demo move a ManualClock, so the 30-minute rule of 七.3 runs in
milliseconds. Every time is naive UTC, as the store keeps it."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Protocol

from controller.store import utcnow


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return utcnow()


class ManualClock:
    """A clock that moves only when told to (thread-safe)."""

    def __init__(self, start: dt.datetime | None = None):
        self._now = start or utcnow()
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, *, minutes: float = 0, seconds: float = 0) -> dt.datetime:
        with self._lock:
            self._now += dt.timedelta(minutes=minutes, seconds=seconds)
            return self._now

    def set(self, when: dt.datetime) -> None:
        with self._lock:
            self._now = when
