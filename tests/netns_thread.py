"""Calls made inside a lab network namespace from the test process: the
callable runs on a fresh thread that joined the namespace (setns(2) moves
only the calling thread), so the sockets it creates, and the threads it
starts, live there. A socket stays in its namespace whichever thread uses
it later, so servers bound this way keep serving from any thread."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from agent.lab.topology import NETNS_DIR

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns_thread(namespace: str, call: Callable[[], T], timeout: float = 60) -> T:
    """call() inside the namespace; its result, or its exception raised here."""
    result: dict = {}

    def run() -> None:
        try:
            fd = os.open(f"{NETNS_DIR}/{namespace}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into {namespace}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            result["value"] = call()
        except BaseException as err:        # handed to the caller's thread
            result["error"] = err

    thread = threading.Thread(target=run, name=f"in-{namespace}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"a call inside {namespace} did not return within {timeout} s")
    if "error" in result:
        raise result["error"]
    return result["value"]
