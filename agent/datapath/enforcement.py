"""Applying policies to an attached interface: the map diff, with the
nftables half of TCP state kept in step around it, and the record of what
was applied. Every change runs under the interface lock, and change_policy
makes read, modify and apply one locked step, so concurrent changers never
lose each other's updates."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable, Iterator

from agent.datapath import netfilter
from agent.datapath.apply import ApplyReport, apply_policy_to_maps, live_slots
from agent.datapath.compile import BLOCK_TABLES, GLOBAL_TABLES, TENANT_TABLES
from agent.datapath.conntrack import require_conntrack
from agent.datapath.errors import InterfaceError
from agent.datapath.locking import interface_lock
from agent.datapath.named_lists import named_list_unions
from agent.datapath.policy_store import applied_policy, record_applied_policy
from agent.datapath.program import live_maps, read_revision
from agent.datapath.slot_maps import slots_needed
from agent.policy.model import Policy


def current_policy(ifname: str) -> Policy:
    """The policy last applied to `ifname`, or an empty one at the live revision if none was."""
    policy = applied_policy(ifname)
    if policy is not None:
        return policy
    with live_maps(ifname) as maps:
        return Policy(revision=read_revision(maps))


@contextlib.contextmanager
def tcp_state_tables(ifname: str, old: Policy | None, new: Policy) -> Iterator[None]:
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


def apply_to_maps(ifname: str, maps, old: Policy | None, new: Policy,
                  tables: frozenset[str] = frozenset(BLOCK_TABLES), conntrack: bool | None = None) -> ApplyReport:
    """Write `new` into `maps` (the caller holds the interface lock) and
    record it; `tables`: the block tables to rebuild (all by default);
    `conntrack`: the program has the conntrack kfuncs (None: the kernel has)."""
    require_conntrack(new, ifname, conntrack)     # before nftables, too, is touched
    with tcp_state_tables(ifname, old, new):
        report = apply_policy_to_maps(maps, new, named_list_unions(ifname), tables, conntrack=conntrack)
    record_applied_policy(ifname, new)
    return report


def apply_policy(ifname: str, policy: Policy) -> ApplyReport:
    with interface_lock(ifname):
        return _apply_locked(ifname, policy)


def change_policy(ifname: str, change: Callable[[Policy], Policy]) -> tuple[Policy, ApplyReport]:
    """Read the live policy, change it and apply the result as the next
    revision, all under the interface lock."""
    with interface_lock(ifname):
        old = current_policy(ifname)
        new = replace(change(old), revision=old.revision + 1)
        return new, _apply_locked(ifname, new)


def _apply_locked(ifname: str, policy: Policy) -> ApplyReport:
    with live_maps(ifname) as maps:
        old = current_policy(ifname)
        tables = tables_changed_by(old, policy)
        needed = slots_needed(policy, live_slots(maps), maps["ew_tenants"].max_entries)
        if needed <= maps["ew_counters"].max_entries:
            return apply_to_maps(ifname, maps, old, policy, tables)
    # More tenants than counter slots: the program is loaded again with more,
    # which carry the counts over (agent.datapath.slot_maps), and it applies the policy.
    from agent.datapath.attachment import attach_locked     # attachment imports this module
    return attach_locked(ifname, None, policy, tables)


def tables_changed_by(old: Policy, new: Policy) -> frozenset[str]:
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
