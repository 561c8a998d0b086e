"""Failed authentication, per client: logged, and after too many failures in
a window the client is refused (429) until the window has passed."""

from __future__ import annotations

import collections
import logging
import threading
import time

log = logging.getLogger("edgewarden.controller.auth")


class FailedAuthLimiter:
    def __init__(self, max_failures: int = 10, window_seconds: float = 60.0):
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> collections.deque:
        q = self._failures.setdefault(client, collections.deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def retry_after(self, client: str) -> float | None:
        """Seconds until the client may try again, or None if it may now."""
        now = time.monotonic()
        with self._lock:
            q = self._recent(client, now)
            if len(q) >= self.max_failures:
                return max(1.0, q[0] + self.window - now)
            if not q:
                self._failures.pop(client, None)
            return None

    def failed(self, client: str, why: str) -> None:
        now = time.monotonic()
        with self._lock:
            q = self._recent(client, now)
            q.append(now)
            count = len(q)
        log.warning("authentication failed from %s: %s (%d in the last %.0f s; limit %d)",
                    client, why, count, self.window, self.max_failures)
