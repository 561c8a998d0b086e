"""Whether this host can give the datapath conntrack, and the refusal of a
policy that needs it where it cannot. SYN cookies and SYN-ACK tracking ask
conntrack (through its kfuncs, bpf_xdp_ct_lookup and bpf_ct_release) whether
a segment belongs to a connection; many high-throughput edge servers run
without nf_conntrack. The program loads there all the same (the kfuncs are
weak, bpf/tcp_state.h), and a policy that needs them is refused before
anything is applied."""

from __future__ import annotations

from agent._libbpf import ffi, lib
from agent.policy.model import Policy, SynAckPolicy

CONNTRACK_KFUNCS = ("bpf_xdp_ct_lookup", "bpf_ct_release")


class ConntrackUnavailable(ValueError):
    """A policy needs conntrack and the datapath has none."""


def kernel_has_function(name: str) -> bool:
    """The running kernel (vmlinux or a loaded module) has kernel function
    `name` in its BTF, as libbpf would resolve a kfunc."""
    found = lib.ew_kernel_has_function(name.encode())
    if found < 0:
        raise OSError(-found, f"cannot read the kernel's BTF (/sys/kernel/btf) to look for {name}: "
                              "the datapath needs a kernel built with CONFIG_DEBUG_INFO_BTF")
    return bool(found)


def conntrack_available() -> bool:
    """The kernel has the conntrack kfuncs now: nf_conntrack is built in,
    or its module is loaded. (A program loaded before the module was keeps
    its calls removed: attach again to reload it.)"""
    return all(kernel_has_function(name) for name in CONNTRACK_KFUNCS)


def tenants_needing_conntrack(policy: Policy) -> list[str]:
    """Who asks for SYN cookies or syn_ack = "track", as "id (name): what"."""
    needs = []
    for tenant in policy.tenants:
        wants = [what for what, on in (("syn_cookies", tenant.flood.syn_cookies),
                                       ('syn_ack = "track"', tenant.flood.syn_ack is SynAckPolicy.TRACK)) if on]
        if wants:
            needs.append(f"tenant {tenant.id} ({tenant.name}): {' and '.join(wants)}")
    return needs


def require_conntrack(policy: Policy, where: str, available: bool | None = None) -> None:
    """Refuse `policy` if it needs conntrack and `where` (an interface, a
    loaded program) has none; `available` None: ask the kernel (only when
    the policy needs it). Call before anything is applied."""
    needs = tenants_needing_conntrack(policy)
    if not needs:
        return
    if available is None:
        available = conntrack_available()
    if not available:
        raise ConntrackUnavailable(
            f"{where}: {'; '.join(needs)} need(s) conntrack, and the kernel has no conntrack kfuncs "
            f"({', '.join(CONNTRACK_KFUNCS)}: nf_conntrack is not loaded, or not built); nothing was applied. "
            "Load it (modprobe nf_conntrack) and attach again, or turn those defences off.")


def object_kfuncs(obj) -> list[str]:
    """The kernel functions an opened bpf_object calls."""
    names = []
    while (name := lib.ew_object_kfunc(obj, len(names))) != ffi.NULL:
        names.append(ffi.string(name).decode())
    return names
