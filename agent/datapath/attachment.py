"""Attaching the datapath to interfaces: attach (adopting pinned maps, so
block lists and counters survive a reload), detach and status. State lives
in the kernel (pinned maps) and in the last applied policy document, so no
process has to stay up for enforcement to continue."""

from __future__ import annotations

import enum
import errno
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from agent._libbpf import lib
from agent.datapath import abi, netfilter
from agent.datapath.apply import ApplyReport, live_slots
from agent.datapath.compile import BLOCK_TABLES
from agent.datapath.enforcement import apply_to_maps
from agent.datapath.errors import InterfaceError
from agent.datapath.locking import interface_lock, lock_path_for
from agent.datapath.policy_store import applied_policy
from agent.datapath.program import (
    PROGRAM_NAME, LoadedProgram, close_maps, ensure_bpffs, live_maps, open_pinned_maps, read_revision,
)
from agent.datapath.scope import PROGRAM_PIN, bpffs_root, pin_dir_for, state_dir_for
from agent.datapath.slot_maps import capacity_for, slots_needed
from agent.datapath.syscalls import BpfError, obj_get, prog_fd_by_id, prog_info, xdp_attach, xdp_detach, xdp_query
from agent.policy.model import Policy


class AttachMode(str, enum.Enum):
    NATIVE = "native"
    GENERIC = "generic"
    AUTO = "auto"      # native, else generic


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


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise InterfaceError(f"no interface {ifname!r} in this network namespace "
                             "(use nsenter --net=/var/run/netns/NAME to act inside another)") from None


def _mode_flags(mode: AttachMode) -> list[tuple[str, int]]:
    native = ("native", lib.XDP_FLAGS_DRV_MODE)
    generic = ("generic", lib.XDP_FLAGS_SKB_MODE)
    return {AttachMode.NATIVE: [native], AttachMode.GENERIC: [generic], AttachMode.AUTO: [native, generic]}[mode]


def _attached_program_is_ours(ifname: str, prog_id: int) -> bool:
    if prog_id == 0:
        return False
    fd = _open_pinned_program(ifname, prog_id)
    if fd is not None:
        os.close(fd)
        return True
    if (pin_dir_for(ifname) / PROGRAM_PIN).exists():
        return False
    # Attached but never pinned (an attach interrupted before its pin): only
    # its name can tell, and opening it by id needs CAP_SYS_ADMIN; without,
    # it counts as foreign.
    try:
        fd = prog_fd_by_id(prog_id)
    except BpfError as err:
        if err.errno == errno.EPERM:
            return False
        raise
    try:
        return prog_info(fd).name == PROGRAM_NAME
    finally:
        os.close(fd)


def _open_pinned_program(ifname: str, prog_id: int) -> int | None:
    """An fd of our pinned program if it is program `prog_id`, else None:
    from the pin, never by id (that needs CAP_SYS_ADMIN)."""
    pin = pin_dir_for(ifname) / PROGRAM_PIN
    if not pin.exists():
        return None
    fd = obj_get(str(pin))
    if prog_info(fd).id == prog_id:
        return fd
    os.close(fd)
    return None


def attach(ifname: str, mode: AttachMode = AttachMode.NATIVE, policy: Policy | None = None) -> tuple[InterfaceStatus, ApplyReport | None]:
    """Load the program with maps pinned for `ifname` (adopting pinned maps
    that exist, so block lists and counters survive a reload) and attach it,
    replacing our own earlier program atomically. The counter slots are
    sized for `policy` (agent.datapath.slot_maps), grown if it needs more
    than are pinned."""
    ensure_bpffs(bpffs_root())
    with interface_lock(ifname):
        report = attach_locked(ifname, mode, policy)
    return interface_status(ifname), report


def attach_locked(ifname: str, mode: AttachMode | None, policy: Policy | None,
                  tables: frozenset[str] = frozenset(BLOCK_TABLES)) -> ApplyReport | None:
    """attach() for a caller that holds the interface lock. `mode` None:
    the mode the program runs in now (a reload to grow the slot maps); not
    attached, the maps are grown and nothing is attached. `tables`: the
    block tables the policy's apply rebuilds (all by default)."""
    ifindex = _ifindex(ifname)
    pin_dir = pin_dir_for(ifname)
    current = xdp_query(ifindex)
    if current.prog_id and not _attached_program_is_ours(ifname, current.prog_id):
        raise InterfaceError(f"{ifname} already has a foreign XDP program (id {current.prog_id}); "
                             f"remove it first (ip link set dev {ifname} xdp off)")
    if mode is None and current.prog_id:
        mode = {1: AttachMode.NATIVE, 2: AttachMode.GENERIC}.get(current.attach_mode)
        if mode is None:
            raise InterfaceError(f"{ifname}: our program is attached in mode {current.mode_name}, which a reload "
                                 f"cannot replace; detach and attach it again (edgewarden attach {ifname})")
    pin_dir.mkdir(parents=True, exist_ok=True)
    with LoadedProgram(pin_dir=pin_dir, slots=_slots_for(pin_dir, policy)) as program:
        report = None
        if policy is not None:
            report = apply_to_maps(ifname, program.maps, applied_policy(ifname), policy, tables,
                                   conntrack=program.conntrack)
        if mode is not None:
            _attach_in_mode(ifname, ifindex, program.prog_fd, mode, current.prog_id, current.attach_mode)
            program.pin_program(pin_dir / PROGRAM_PIN)
        program.commit_slot_maps()
    return report


def _slots_for(pin_dir: Path, policy: Policy | None) -> int:
    """Counter slots for `policy` with headroom, given the slots the pinned
    tenants hold (the load never makes fewer than are pinned)."""
    live, limit = {}, abi.MAX_TENANTS
    if (pin_dir / "ew_tenants").exists():
        maps = open_pinned_maps(pin_dir, ("ew_tenants",))
        try:
            live, limit = live_slots(maps), maps["ew_tenants"].max_entries
        finally:
            close_maps(maps)
    return capacity_for(slots_needed(policy, live, limit), limit)


def _attach_in_mode(ifname: str, ifindex: int, prog_fd: int, mode: AttachMode, old_prog_id: int, old_mode: int) -> None:
    errors = []
    for name, flags in _mode_flags(mode):
        old_fd = None
        try:
            # Same mode as the running program: swap atomically, no gap in enforcement.
            same_mode = old_prog_id and {1: "native", 2: "generic"}.get(old_mode) == name
            if same_mode:
                old_fd = _open_pinned_program(ifname, old_prog_id)
                if old_fd is None:
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
    with interface_lock(ifname):
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
        shutil.rmtree(state_dir_for(ifname), ignore_errors=True)
        lock_path_for(ifname).unlink(missing_ok=True)


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
