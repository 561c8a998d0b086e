"""Loading and unloading one named block list on an interface: the tables
of its scope are rebuilt from the new union and applied (swapped whole for a
large change, a delta for a small one); the list is stored once the kernel
has it."""

from __future__ import annotations

from agent._prefixes import PrefixSet
from agent.datapath.apply import ApplyReport, apply_policy_to_maps
from agent.datapath.compile import GLOBAL_TABLES, TENANT_TABLES
from agent.datapath.enforcement import current_policy
from agent.datapath.errors import InterfaceError
from agent.datapath.locking import interface_lock
from agent.datapath.named_lists import ListId, list_store, scope_unions
from agent.datapath.program import live_maps


def replace_named_list(ifname: str, list_id: ListId, prefixes: PrefixSet | None) -> ApplyReport:
    """Load `prefixes` as `list_id`, or unload it with None."""
    store = list_store(ifname)
    with interface_lock(ifname), live_maps(ifname) as maps:
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
