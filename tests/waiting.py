"""Waiting on the state a live test means instead of sleeping: a condition
polled until it holds, or a line a subprocess prints. Both fail the test
loudly, with what was seen, when the timeout passes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO, TypeVar

import pytest

T = TypeVar("T")


def wait_until(probe: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str,
               interval: float = 0.05) -> T:
    """Calls `probe` until `done(value)`; returns that value. Fails after
    `timeout` seconds, naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; last seen: {value!r}")
        time.sleep(interval)    # polling interval, not synchronisation: the condition decides


class LineWatcher:
    """Reads a subprocess's text stream on a thread (so the pipe never fills)
    and lets the test wait for a line containing some text."""

    def __init__(self, stream: IO[str]):
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float, what: str) -> str:
        """The first line containing `text`; fails after `timeout` seconds or
        when the stream closes without it, with everything the stream said."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    said = "\n  ".join(self.lines) or "(nothing)"
                    why = "the stream closed" if self._closed else f"timed out after {timeout} s"
                    pytest.fail(f"{why} waiting for {what} ({text!r}); it said:\n  {said}")
                self._changed.wait(left)
