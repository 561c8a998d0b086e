"""Attaching the datapath to interfaces and steering it: attach (adopting
pinned maps), detach, status, and applying a policy to an attached
interface. State lives in the kernel (pinned maps under
/sys/fs/bpf/edgewarden/<ifname>/) and in the last applied policy document
(/run/edgewarden/<ifname>/policy.toml), so no process has to stay up."""

from __future__ import annotations

import contextlib
import enum
import fcntl
import functools
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from agent._libbpf import ffi, lib
from agent.datapath import netfilter
from agent.datapath.apply import ApplyReport, apply_policy_to_maps
from agent._prefixes import PrefixSet
from agent.datapath.named_lists import ListId, ListStore, scope_unions
from agent.datapath.program import PROGRAM_NAME, LoadedProgram, close_maps, ensure_bpffs, open_pinned_maps
from agent.datapath.syscalls import BpfError, obj_get, prog_fd_by_id, prog_info, xdp_attach, xdp_detach, xdp_query
from agent.policy.compile import GLOBAL_TABLES, TENANT_TABLES
from agent.policy.document import load_policy, save_policy
from agent.policy.model import Policy

PROGRAM_PIN = "prog"
POLICY_FILE = "policy.toml"


NETNS_SCOPE_DIR = "netns"
NAMED_NETNS_DIR = Path("/var/run/netns")


@functools.cache
def namespace_scope() -> Path:
    """Where this network namespace's interfaces live under the roots:
    netns/<name> in a namespace made with `ip netns add`, the roots
    themselves anywhere else (the host). bpffs and /run are shared by every
    namespace, and interface names are not: two namespaces may each have an
    eth0, or a namespace may be gone while its pins stay. (Cached: a process
    does not change namespace.)"""
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


class AttachMode(str, enum.Enum):
    NATIVE = "native"
    GENERIC = "generic"
    AUTO = "auto"      # native, else generic


class InterfaceError(RuntimeError):
    """An operator-facing failure: says what is wrong and what to do."""


@dataclass(frozen=True)
class InterfaceStatus:
    ifname: str
    ifindex: int | None       # None: the interface no longer exists in this network namespace
    mode: str                 # native | generic | none | ...
    prog_id: int              # attached XDP program, 0 if none
    ours: bool                # the attached program is edgewarden's pinned one
    revision: int | None      # policy revision in the live maps
    pin_dir: Path

    def as_dict(self) -> dict:
        return {"interface": self.ifname, "ifindex": self.ifindex, "mode": self.mode, "program_id": self.prog_id,
                "edgewarden": self.ours, "policy_revision": self.revision, "pin_dir": str(self.pin_dir)}


def pin_dir_for(ifname: str) -> Path:
    return bpffs_root() / ifname


def policy_path_for(ifname: str) -> Path:
    return state_root() / ifname / POLICY_FILE


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise InterfaceError(f"no interface {ifname!r} in this network namespace "
                             "(use nsenter --net=/var/run/netns/NAME to act inside another)") from None


@contextlib.contextmanager
def _interface_lock(ifname: str) -> Iterator[None]:
    """Serialises attach, detach and policy changes, as xdp-tools does."""
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{ifname}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _mode_flags(mode: AttachMode) -> list[tuple[str, int]]:
    native = ("native", lib.XDP_FLAGS_DRV_MODE)
    generic = ("generic", lib.XDP_FLAGS_SKB_MODE)
    return {AttachMode.NATIVE: [native], AttachMode.GENERIC: [generic], AttachMode.AUTO: [native, generic]}[mode]


def _attached_program_is_ours(ifname: str, prog_id: int) -> bool:
    if prog_id == 0:
        return False
    pin = pin_dir_for(ifname) / PROGRAM_PIN
    if pin.exists():
        fd = obj_get(str(pin))
        try:
            return prog_info(fd).id == prog_id
        finally:
            os.close(fd)
    fd = prog_fd_by_id(prog_id)
    try:
        return prog_info(fd).name == PROGRAM_NAME
    finally:
        os.close(fd)


def attach(ifname: str, mode: AttachMode = AttachMode.NATIVE, policy: Policy | None = None) -> tuple[InterfaceStatus, ApplyReport | None]:
    """Load the program with maps pinned for `ifname` (adopting pinned maps
    that exist, so block lists and counters survive a reload) and attach it,
    replacing our own earlier program atomically."""
    ifindex = _ifindex(ifname)
    pin_dir = pin_dir_for(ifname)
    ensure_bpffs(bpffs_root())
    with _interface_lock(ifname):
        current = xdp_query(ifindex)
        if current.prog_id and not _attached_program_is_ours(ifname, current.prog_id):
            raise InterfaceError(f"{ifname} already has a foreign XDP program (id {current.prog_id}); "
                                 f"remove it first (ip link set dev {ifname} xdp off)")
        pin_dir.mkdir(parents=True, exist_ok=True)
        with LoadedProgram(pin_dir=pin_dir) as program:
            report = None
            if policy is not None:
                with _tcp_state_tables(ifname, _live_policy_or_none(ifname), policy):
                    report = apply_policy_to_maps(program.maps, policy, named_list_unions(ifname))
            _attach_in_mode(ifname, ifindex, program.prog_fd, mode, current.prog_id, current.attach_mode)
            program.pin_program(pin_dir / PROGRAM_PIN)
        if policy is not None:
            save_policy(policy, policy_path_for(ifname))
    return interface_status(ifname), report


@contextlib.contextmanager
def _tcp_state_tables(ifname: str, old: Policy | None, new: Policy) -> Iterator[None]:
    """Around a map update: the netfilter half covers both policies while the
    maps change (a cookie ACK must find synproxy the moment XDP passes it),
    then exactly the new one."""
    before = netfilter.needs_of(old) if old is not None else netfilter.TcpStateNeeds()
    after = netfilter.needs_of(new)
    try:
        netfilter.sync(ifname, before | after)
    except netfilter.NetfilterError as err:
        raise InterfaceError(f"{ifname}: {err}") from None
    yield
    if after != before | after:
        netfilter.sync(ifname, after)


def _live_policy_or_none(ifname: str) -> Policy | None:
    path = policy_path_for(ifname)
    return load_policy(path) if path.exists() else None


def _attach_in_mode(ifname: str, ifindex: int, prog_fd: int, mode: AttachMode, old_prog_id: int, old_mode: int) -> None:
    errors = []
    for name, flags in _mode_flags(mode):
        old_fd = None
        try:
            # Same mode as the running program: swap atomically, no gap in enforcement.
            same_mode = old_prog_id and {1: "native", 2: "generic"}.get(old_mode) == name
            if same_mode:
                old_fd = prog_fd_by_id(old_prog_id)
                xdp_attach(ifindex, prog_fd, flags, replace_prog_fd=old_fd)
            else:
                if old_prog_id:
                    xdp_detach(ifindex, {1: lib.XDP_FLAGS_DRV_MODE, 2: lib.XDP_FLAGS_SKB_MODE}.get(old_mode, 0))
                    old_prog_id = 0
                xdp_attach(ifindex, prog_fd, flags)
            return
        except BpfError as err:
            errors.append(f"{name}: {err.strerror if hasattr(err, 'strerror') else err}")
        finally:
            if old_fd is not None:
                os.close(old_fd)
    hint = " (try --mode generic or --mode auto)" if mode is AttachMode.NATIVE else ""
    raise InterfaceError(f"cannot attach to {ifname}: " + "; ".join(errors) + hint)


def detach(ifname: str, keep_maps: bool = False) -> None:
    """Detach our program and, unless keep_maps, remove its pinned maps and state."""
    with _interface_lock(ifname):
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            ifindex = None   # interface gone: only clean up what we pinned
        if ifindex is not None:
            current = xdp_query(ifindex)
            if current.prog_id:
                if not _attached_program_is_ours(ifname, current.prog_id):
                    raise InterfaceError(f"{ifname} runs a foreign XDP program (id {current.prog_id}); not touching it")
                xdp_detach(ifindex, {1: lib.XDP_FLAGS_DRV_MODE, 2: lib.XDP_FLAGS_SKB_MODE}.get(current.attach_mode, 0))
        pin_dir = pin_dir_for(ifname)
        if keep_maps:
            (pin_dir / PROGRAM_PIN).unlink(missing_ok=True)
            return
        netfilter.remove(ifname)
        if pin_dir.exists():
            for entry in pin_dir.iterdir():
                entry.unlink()
            pin_dir.rmdir()
        shutil.rmtree(state_root() / ifname, ignore_errors=True)
        (state_root() / f".{ifname}.lock").unlink(missing_ok=True)


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


def read_revision(maps) -> int:
    raw = maps["ew_config"].lookup((0).to_bytes(4, "little"))
    return ffi.from_buffer("struct ew_config *", raw).policy_revision if raw else 0


def interface_status(ifname: str) -> InterfaceStatus:
    pin_dir = pin_dir_for(ifname)
    try:
        ifindex = socket.if_nametoindex(ifname)
    except OSError:
        ifindex = None
    prog_id, mode, ours = 0, "none", False
    if ifindex is not None:
        q = xdp_query(ifindex)
        prog_id, mode = q.prog_id, q.mode_name
        ours = _attached_program_is_ours(ifname, prog_id)
    revision = None
    if pin_dir.is_dir():
        with live_maps(ifname) as maps:
            revision = read_revision(maps)
    return InterfaceStatus(ifname, ifindex, mode, prog_id, ours, revision, pin_dir)


@contextlib.contextmanager
def live_maps(ifname: str):
    pin_dir = pin_dir_for(ifname)
    if not pin_dir.is_dir():
        raise InterfaceError(f"{ifname} is not managed by edgewarden (no {pin_dir}); run: edgewarden attach {ifname}")
    maps = open_pinned_maps(pin_dir)
    try:
        yield maps
    finally:
        close_maps(maps)


def current_policy(ifname: str) -> Policy:
    """The policy last applied to `ifname`, or an empty one if none was."""
    path = policy_path_for(ifname)
    if path.exists():
        return load_policy(path)
    with live_maps(ifname) as maps:
        return Policy(revision=read_revision(maps))


def apply_policy(ifname: str, policy: Policy) -> ApplyReport:
    with _interface_lock(ifname), live_maps(ifname) as maps:
        old = current_policy(ifname)
        with _tcp_state_tables(ifname, old, policy):
            report = apply_policy_to_maps(maps, policy, named_list_unions(ifname), _tables_changed_by(old, policy))
        save_policy(policy, policy_path_for(ifname))
    return report


def _tables_changed_by(old: Policy, new: Policy) -> frozenset[str]:
    """Block tables whose policy lists differ between two documents; named
    lists are unchanged by a policy apply."""
    tables = set()
    if set(old.blocked_sources) != set(new.blocked_sources):
        tables.update(GLOBAL_TABLES)
    old_lists = {t.id: set(t.blocked_sources) for t in old.tenants}
    new_lists = {t.id: set(t.blocked_sources) for t in new.tenants}
    if old_lists != new_lists:
        tables.update(TENANT_TABLES)
    return frozenset(tables)


def list_store(ifname: str) -> ListStore:
    return ListStore(state_root() / ifname / "lists")


def named_list_unions(ifname: str) -> dict[int | None, PrefixSet]:
    return scope_unions(list_store(ifname).load_all())


def replace_named_list(ifname: str, list_id: ListId, prefixes: PrefixSet | None) -> ApplyReport:
    """Load (or, with None, unload) one named list: the tables are rebuilt
    from the new union and applied (swapped whole for a large change, a
    delta for a small one); the list is stored once the kernel has it."""
    store = list_store(ifname)
    with _interface_lock(ifname), live_maps(ifname) as maps:
        lists = store.load_all()
        if prefixes is None:
            if list_id not in lists:
                raise InterfaceError(f"{ifname}: no list {list_id} is loaded")
            del lists[list_id]
        else:
            lists[list_id] = prefixes
        policy = current_policy(ifname)
        if list_id.tenant_id is not None and policy.tenant(list_id.tenant_id) is None:
            raise InterfaceError(f"{ifname}: tenant {list_id.tenant_id} is not in the live policy; "
                                 "a list for it would not be enforced")
        affected = GLOBAL_TABLES if list_id.tenant_id is None else TENANT_TABLES
        report = apply_policy_to_maps(maps, policy, scope_unions(lists), frozenset(affected))
        if prefixes is None:
            store.remove(list_id)
        else:
            store.save(list_id, prefixes)
    return report
