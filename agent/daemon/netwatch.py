"""Interface events from rtnetlink, read with pyroute2 in a thread of its
own (pyroute2 does not run under uvloop) and handed to the event loop:
an interface that appears (again), disappears, or is renamed."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from pyroute2 import IPRoute


@dataclass(frozen=True)
class LinkEvent:
    kind: str            # appeared | gone | renamed
    name: str
    index: int
    old_name: str | None = None


class InterfaceWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop, deliver):
        self.loop = loop
        self.deliver = deliver           # called in the loop with each LinkEvent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ew-netwatch", daemon=True)
        self._names: dict[int, str] = {}
        self._ready = threading.Event()
        self._failure: Exception | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        if self._failure is not None:
            raise OSError(f"cannot watch interfaces over rtnetlink: {self._failure}")

    def _run(self) -> None:
        # Created in this thread: pyroute2 runs an asyncio loop of its own.
        try:
            self._ipr = IPRoute()
            self._ipr.bind()                 # RTMGRP_LINK among the default groups
            self._names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in self._ipr.get_links()}
        except Exception as err:
            self._failure = err
            self._ready.set()
            return
        self._ready.set()
        try:
            # A blocking get(), not select() on the socket: pyroute2 buffers
            # messages it has read, which select would not see. The thread is
            # a daemon thread, so a get() blocked at exit does not hold it up.
            while not self._stop.is_set():
                for message in self._ipr.get():
                    event = self._event_of(message)
                    if event is not None and not self._stop.is_set():
                        try:
                            self.loop.call_soon_threadsafe(self.deliver, event)
                        except RuntimeError:      # the loop closed: the daemon is exiting
                            return
        finally:
            self._ipr.close()

    def _event_of(self, message) -> LinkEvent | None:
        kind = message.get("event")
        if kind not in ("RTM_NEWLINK", "RTM_DELLINK"):
            return None
        index, name = message["index"], message.get_attr("IFLA_IFNAME")
        if kind == "RTM_DELLINK":
            self._names.pop(index, None)
            return LinkEvent("gone", name, index)
        old = self._names.get(index)
        self._names[index] = name
        if old is None:
            return LinkEvent("appeared", name, index)
        if old != name:
            return LinkEvent("renamed", name, index, old)
        return LinkEvent("appeared", name, index)    # state change (up/down): re-checked, usually nothing to do

    def stop(self) -> None:
        self._stop.set()      # seen at the next event; nothing is delivered after the loop closes
        self.deliver = lambda event: None
