"""Where an interface's state lives: pinned maps under
/sys/fs/bpf/edgewarden/ and the agent's files under /run/edgewarden/, scoped
by named network namespace (netns/<name>/ under each root) because bpffs
and /run are shared by every namespace and interface names are not."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

NETNS_SCOPE_DIR = "netns"
PROGRAM_PIN = "prog"        # the attached program, pinned beside its maps
NAMED_NETNS_DIR = Path("/var/run/netns")


@functools.cache
def namespace_scope() -> Path:
    """netns/<name> in a namespace made with `ip netns add`, the roots
    themselves anywhere else (the host). Cached: a process does not change
    namespace."""
    own = os.stat("/proc/self/ns/net").st_ino
    if NAMED_NETNS_DIR.is_dir():
        for entry in NAMED_NETNS_DIR.iterdir():
            try:
                if entry.stat().st_ino == own:
                    return namespace_scope_of(entry.name)
            except OSError:
                continue
    return Path()


def namespace_scope_of(netns_name: str) -> Path:
    return Path(NETNS_SCOPE_DIR) / netns_name


def bpffs_base() -> Path:
    return Path(os.environ.get("EDGEWARDEN_BPFFS_ROOT", "/sys/fs/bpf/edgewarden"))


def state_base() -> Path:
    return Path(os.environ.get("EDGEWARDEN_STATE_DIR", "/run/edgewarden"))


def bpffs_root() -> Path:
    return bpffs_base() / namespace_scope()


def state_root() -> Path:
    return state_base() / namespace_scope()


def pin_dir_for(ifname: str) -> Path:
    return bpffs_root() / ifname


def state_dir_for(ifname: str) -> Path:
    return state_root() / ifname


def managed_interfaces() -> list[str]:
    """Interfaces of this network namespace with edgewarden pins."""
    root = bpffs_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != NETNS_SCOPE_DIR)


def forget_namespace(netns_name: str) -> None:
    """Remove the pins and state of a named network namespace (before or
    after it is deleted): its maps stay in the kernel for as long as they
    are pinned, and a new namespace of the same name must not adopt them."""
    for base in (bpffs_base(), state_base()):
        scope = base / namespace_scope_of(netns_name)
        if scope.is_dir():
            shutil.rmtree(scope, ignore_errors=True)
