"""What the daemon enforces, and the one writer of the maps: every change
(first attach, reload, a CLI command through the control socket, a
re-attach after an interface came back, a change of the sampled tenants)
runs in one worker thread, in order, and each interface's change also
takes the datapath's interface lock against other processes. The policy
file is the source of truth: a CLI change is written into it before it is
applied, so a later reload (which reads the file) keeps it."""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import Callable

from agent.daemon import journal
from agent.daemon.config import AgentConfig
from agent.datapath import (
    AttachMode, InterfaceError, apply_policy, attach, detach, interface_status, replace_named_list,
)
from agent.policy import Policy, PolicyError, load_policy, save_policy


@dataclasses.dataclass
class InterfaceState:
    name: str
    attached: bool = False
    mode: str = "none"          # native | generic | none
    ifindex: int | None = None
    error: str | None = None    # why it is not enforced, for STATUS and the log


def _sampled_field_exists() -> bool:
    from agent.policy.model import Tenant
    return "sampled" in {f.name for f in dataclasses.fields(Tenant)}


class Enforcer:
    def __init__(self, config: AgentConfig, policy: Policy):
        self.config = config
        self.policy = policy                      # the policy file's document
        self.incident_tenants: frozenset[int] = frozenset()
        self.interfaces: dict[str, InterfaceState] = {i.name: InterfaceState(i.name) for i in config.interfaces}
        # The one writer: a single worker thread runs every change in order.
        self.writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ew-writer")
        self._can_sample = _sampled_field_exists()

    # -- what is applied ---------------------------------------------------
    def effective_policy(self) -> Policy:
        """The file's policy with the sampled flag on watched tenants and
        tenants under incident (runtime state, never written to the file)."""
        if not self._can_sample or not self.sampled:
            return self.policy
        return replace(self.policy, tenants=tuple(
            replace(t, sampled=True) if t.id in self.sampled else t for t in self.policy.tenants))

    def _mode_of(self, ifname: str) -> AttachMode:
        spec = next(i for i in self.config.interfaces if i.name == ifname)
        return AttachMode(spec.attach_mode)

    # -- runs in the writer thread ----------------------------------------
    def attach_one(self, ifname: str) -> InterfaceState:
        state = self.interfaces[ifname]
        try:
            status, report = attach(ifname, self._mode_of(ifname), self.effective_policy())
        except (InterfaceError, OSError, ValueError) as err:
            state.attached, state.mode, state.error = False, "none", str(err)
            journal.error("interface not enforced", event="interface_error", interface=ifname, error=str(err))
            return state
        state.attached, state.mode, state.ifindex, state.error = True, status.mode, status.ifindex, None
        from agent.datapath.table_digest import digests_for
        digests_for(ifname).forget()     # its tables may be new: nothing is known of them until read back
        journal.info("interface enforced", event="attached", interface=ifname, mode=status.mode,
                     revision=status.revision, changes=report.summary() if report else None)
        return state

    def attach_all(self) -> None:
        for ifname in self.interfaces:
            self.attach_one(ifname)

    def apply_all(self) -> dict[str, str]:
        """Apply the effective policy to every attached interface; an
        interface that fails is reported and the others still get it."""
        results = {}
        policy = self.effective_policy()
        for ifname, state in self.interfaces.items():
            if not state.attached:
                continue
            try:
                results[ifname] = apply_policy(ifname, policy).summary()
            except (InterfaceError, OSError) as err:
                state.attached, state.error = False, str(err)
                results[ifname] = f"failed: {err}"
                journal.error("policy apply failed", event="apply_error", interface=ifname, error=str(err))
        return results

    def reload(self, config: AgentConfig, policy: Policy) -> dict[str, str]:
        """A new config and policy file, both already validated."""
        old_names = set(self.interfaces)
        self.config = config
        self.policy = policy
        new_names = [i.name for i in config.interfaces]
        for ifname in old_names - set(new_names):
            journal.warning("interface no longer configured: left attached and enforcing the last policy",
                            event="interface_unconfigured", interface=ifname)
            del self.interfaces[ifname]
        for ifname in new_names:
            self.interfaces.setdefault(ifname, InterfaceState(ifname))
        results = self.apply_all()
        for ifname, state in self.interfaces.items():
            if not state.attached:
                self.attach_one(ifname)
        return results

    def change_policy(self, change: Callable[[Policy], Policy], what: str) -> dict:
        """A CLI change: into the policy file first (a reload keeps it), then into the maps."""
        try:
            old = load_policy(self.config.policy_file)
        except PolicyError as err:
            # Never overwrite an operator's edit in progress with the running policy.
            raise PolicyError(str(self.config.policy_file), [f"the policy file no longer validates, so the change "
                              f"was not made (revision {self.policy.revision} stays in force); fix the file and "
                              f"reload: {err}"]) from None
        new = change(old)
        if new is old or new == old:
            return {"revision": old.revision, "changed": False, "interfaces": {}}
        # A document that brings its own newer revision keeps it (policy apply);
        # an edit of the live one (block, suspend) becomes the next revision.
        if new.revision <= max(old.revision, self.policy.revision):
            new = replace(new, revision=max(old.revision, self.policy.revision) + 1)
        save_policy(new, self.config.policy_file)
        self.policy = new
        results = self.apply_all()
        journal.info("policy changed through the control socket", event="policy_changed", what=what,
                     revision=new.revision)
        return {"revision": new.revision, "changed": True, "interfaces": results}

    def watched(self) -> frozenset[int]:
        """The watch list: the config's and the policy's (`watch = true` tenants)."""
        return frozenset(self.config.watch_list) | {t.id for t in self.policy.tenants if getattr(t, "watch", False)}

    @property
    def sampled(self) -> frozenset[int]:
        return self.watched() | self.incident_tenants

    def set_incident_tenants(self, tenants: frozenset[int]) -> bool:
        """Tenants under incident get sampled; True if that changed the maps."""
        before = self.sampled
        self.incident_tenants = frozenset(tenants)
        if self.sampled == before:
            return False
        if self._can_sample:
            self.apply_all()
        return True

    def replace_list(self, list_id, prefixes) -> dict[str, str]:
        results = {}
        for ifname, state in self.interfaces.items():
            if state.attached:
                results[ifname] = replace_named_list(ifname, list_id, prefixes).summary()
        _return_freed_memory()
        return results

    # -- controller mode: list deltas in place, and the tables' digests ----------
    def apply_list_deltas(self, changes) -> tuple[dict[str, str], float, float]:
        """Each (ListId, added, removed) written in place on every attached
        interface (agent.datapath.list_delta); (results, seconds writing the
        tables, seconds appending the list journals)."""
        from agent.datapath.list_delta import apply_list_delta
        results, tables, store = {}, 0.0, 0.0
        for ifname, state in self.interfaces.items():
            if not state.attached:
                continue
            writes = 0
            for list_id, added, removed in changes:
                done = apply_list_delta(ifname, list_id, added, removed)
                tables, store, writes = tables + done.tables_seconds, store + done.store_seconds, \
                    writes + done.report.total_writes
            results[ifname] = f"{len(changes)} list(s) changed in place, {writes} table entries written"
        return results, tables, store

    def sync_lists(self, wanted: dict) -> dict[str, str]:
        """Make every attached interface's stored named lists exactly `wanted`
        (ListId -> PrefixSet): lists that differ are replaced, others unloaded."""
        from agent.datapath.named_lists import list_store
        results = {}
        for ifname, state in self.interfaces.items():
            if not state.attached:
                continue
            stored = list_store(ifname).load_all()
            changed = [lid for lid, prefixes in wanted.items() if stored.get(lid) != prefixes]
            for list_id in set(stored) - set(wanted):
                replace_named_list(ifname, list_id, None)
            for list_id in changed:
                replace_named_list(ifname, list_id, wanted[list_id])
            results[ifname] = f"{len(changed)} list(s) loaded, {len(set(stored) - set(wanted))} unloaded"
        _return_freed_memory()
        return results

    def rebuild_block_tables(self) -> None:
        """Every block table of every attached interface rebuilt from the
        applied policy and the stored lists, diffed against what the kernel
        holds: repairs entries changed by hand."""
        from agent.datapath.compile import BLOCK_TABLES
        from agent.datapath.enforcement import apply_to_maps, current_policy
        from agent.datapath.locking import interface_lock
        from agent.datapath.program import live_maps
        for ifname, state in self.interfaces.items():
            if state.attached:
                with interface_lock(ifname), live_maps(ifname) as maps:
                    policy = current_policy(ifname)
                    apply_to_maps(ifname, maps, policy, policy, frozenset(BLOCK_TABLES))

    def tables_written(self) -> None:
        """After a full apply: the tables' digests read back (what they hold
        now is what they should), and the in-memory list state loaded so the
        next delta does not wait for it."""
        from agent.datapath.list_delta import list_state
        from agent.datapath.program import live_maps
        from agent.datapath.table_digest import digests_for
        for ifname, state in self.interfaces.items():
            if state.attached:
                digests = digests_for(ifname)
                with live_maps(ifname) as maps, digests.writing():
                    digests.reset(maps)
                list_state(ifname)

    def record_revision(self) -> None:
        """After a delta went in place: the policy recorded beside each
        interface's pins carries the revision now enforced, so a CLI that
        reads the pins (edgewarden stats, status) shows it. The lists are
        not in that document (they are named lists), so it stays small."""
        from agent.datapath.policy_store import applied_policy, record_applied_policy
        for ifname, state in self.interfaces.items():
            if state.attached:
                recorded = applied_policy(ifname)
                if recorded is not None and recorded.revision != self.policy.revision:
                    record_applied_policy(ifname, replace(recorded, revision=self.policy.revision))

    def tables_unknown(self) -> None:
        """Before a full apply: what the tables should hold is not known until read back."""
        from agent.datapath.table_digest import digests_for
        for ifname in self.interfaces:
            digests = digests_for(ifname)
            with digests.writing():
                digests.forget()

    def check_tables(self) -> dict:
        """Per attached interface, a table_digest.TableCheck (safe outside the writer thread)."""
        from agent.datapath.program import live_maps
        from agent.datapath.table_digest import check_tables, digests_for
        checks = {}
        for ifname, state in list(self.interfaces.items()):
            if state.attached:
                with live_maps(ifname) as maps:
                    checks[ifname] = check_tables(digests_for(ifname), maps)
        return checks

    def interface_gone(self, ifname: str) -> None:
        state = self.interfaces.get(ifname)
        if state is not None and state.attached:
            state.attached, state.error = False, "interface disappeared"
            journal.warning("interface disappeared; it is attached again when it comes back",
                            event="interface_gone", interface=ifname)

    def interface_appeared(self, ifname: str) -> None:
        state = self.interfaces.get(ifname)
        if state is None:
            return
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            return
        if state.attached and state.ifindex == ifindex:
            try:
                if interface_status(ifname).ours:
                    return
            except (InterfaceError, OSError):
                pass
        journal.info("interface (re)appeared: attaching with the current policy", event="interface_back",
                     interface=ifname)
        self.attach_one(ifname)

    def stop(self) -> None:
        if self.config.detach_on_stop:
            for ifname, state in self.interfaces.items():
                if state.attached:
                    try:
                        detach(ifname)
                        journal.info("detached on stop", event="detached", interface=ifname)
                    except (InterfaceError, OSError) as err:
                        journal.error("detach on stop failed", event="detach_error", interface=ifname, error=str(err))
        self.writer.shutdown(wait=True)

    # -- what STATUS says --------------------------------------------------
    def enforced(self) -> list[str]:
        return [n for n, s in self.interfaces.items() if s.attached]

    def status_line(self) -> str:
        parts = [f"revision {self.policy.revision}", f"{len(self.policy.tenants)} tenants"]
        enforced = [f"{n} ({s.mode})" for n, s in self.interfaces.items() if s.attached]
        parts.append("enforcing on " + (", ".join(enforced) if enforced else "no interface"))
        missing = [n for n, s in self.interfaces.items() if not s.attached]
        if missing:
            parts.append("NOT enforced: " + ", ".join(missing))
        return "; ".join(parts)


def _return_freed_memory() -> None:
    """A million-prefix list compiles through a few hundred MB of short-lived
    buffers; give the freed pages back to the system (glibc keeps them)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_policy_file(path: Path) -> Policy:
    return load_policy(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
