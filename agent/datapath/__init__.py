"""The datapath library: load and attach the XDP program, adopt its pinned
maps, apply compiled policies as diffs and read counters. The CLI, the demo
and the daemon are thin shells over it; each job sits in its own module:

- scope: where an interface's pins and state live (per network namespace)
- locking: the per-interface lock every change takes
- attachment: attach (adopting pins), detach, status
- enforcement: policy apply with the nftables half, locked read-modify-write
- list_updates: loading and unloading named block lists
- policy_store: the policy last applied to each interface
"""

from agent.datapath.attachment import AttachMode, InterfaceStatus, attach, detach, interface_status
from agent.datapath.enforcement import apply_policy, change_policy, current_policy
from agent.datapath.errors import InterfaceError
from agent.datapath.list_updates import replace_named_list
from agent.datapath.named_lists import list_store, named_list_unions
from agent.datapath.program import live_maps
from agent.datapath.scope import managed_interfaces

__all__ = [
    "AttachMode", "InterfaceError", "InterfaceStatus", "apply_policy", "attach", "change_policy", "current_policy",
    "detach", "interface_status", "list_store", "live_maps", "managed_interfaces", "named_list_unions",
    "replace_named_list",
]
