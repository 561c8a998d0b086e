"""The per-interface lock that serialises attach, detach and every change of
an interface's policy or lists, across processes (as xdp-tools does): a
change is one locked read-modify-write."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator

from agent.datapath.scope import state_root


def lock_path_for(ifname: str) -> Path:
    return state_root() / f".{ifname}.lock"


@contextlib.contextmanager
def interface_lock(ifname: str) -> Iterator[None]:
    path = lock_path_for(ifname)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
