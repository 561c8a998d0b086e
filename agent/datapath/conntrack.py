"""Whether the datapath can ask conntrack, and the refusal of a policy that
needs it where it cannot. SYN cookies and SYN-ACK tracking ask conntrack
(its kfuncs bpf_xdp_ct_lookup and bpf_ct_release) whether a segment belongs
to a connection; many high-throughput edge servers run without
nf_conntrack. There the agent loads the datapath built without conntrack
calls (bpf/edgewarden_no_conntrack.bpf.c), and a policy that needs them is
refused before anything is applied."""

from __future__ import annotations

import enum
import functools
import os

from agent._libbpf import ffi, lib
from agent.policy.model import Policy, SynAckPolicy

CONNTRACK_KFUNCS = ("bpf_xdp_ct_lookup", "bpf_ct_release")
CAP_SYS_ADMIN = 21
KERNEL_BTF_DIR = "/sys/kernel/btf"


class ConntrackUnavailable(ValueError):
    """A policy needs conntrack and the datapath has none."""


class KfuncHome(enum.Enum):
    NONE = 0
    VMLINUX = 1
    MODULE = 2


def kernel_function_home(name: str) -> KfuncHome:
    """Where the running kernel has kernel function `name` (its BTF).
    Remembered until the set of loaded modules with BTF changes."""
    try:
        modules = tuple(sorted(os.listdir(KERNEL_BTF_DIR)))
    except OSError:
        modules = ()
    return _kernel_function_home(name, modules)


@functools.lru_cache(maxsize=64)
def _kernel_function_home(name: str, modules: tuple[str, ...]) -> KfuncHome:
    found = lib.ew_kernel_has_function(name.encode())
    if found < 0:
        raise OSError(-found, f"cannot read the kernel's BTF (/sys/kernel/btf) to look for {name}: "
                              "the datapath needs a kernel built with CONFIG_DEBUG_INFO_BTF")
    return KfuncHome(found)


def _effective_capabilities() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("CapEff:")).split()[1], 16)


def conntrack_unusable_reason() -> str | None:
    """Why libbpf could not give the datapath conntrack here, or None if it
    can: the kfuncs are in vmlinux (nf_conntrack built in), or in the loaded
    nf_conntrack module and this process holds CAP_SYS_ADMIN (libbpf finds
    module BTFs by id, which needs it). Asked when a program is loaded."""
    homes = {kernel_function_home(name) for name in CONNTRACK_KFUNCS}
    if homes == {KfuncHome.VMLINUX}:
        return None
    if KfuncHome.NONE in homes:
        return "nf_conntrack is not loaded, or not built (load it: modprobe nf_conntrack, then attach again)"
    if _effective_capabilities() >> CAP_SYS_ADMIN & 1:
        return None
    return ("the conntrack kfuncs are in the nf_conntrack module, and libbpf resolves a module's kfuncs only "
            "with CAP_SYS_ADMIN, which this process does not hold (build nf_conntrack into the kernel, or "
            "grant CAP_SYS_ADMIN)")


def conntrack_available() -> bool:
    return conntrack_unusable_reason() is None


def tenants_needing_conntrack(policy: Policy) -> list[str]:
    """Who asks for SYN cookies or syn_ack = "track", as "tenant id (name): what"."""
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
    reason = conntrack_unusable_reason() if available is None else (None if available else "its program was "
                                                                      "loaded without conntrack")
    if reason is not None:
        raise ConntrackUnavailable(
            f"{where}: {'; '.join(needs)} need(s) conntrack, and the datapath has none: {reason}; "
            "nothing was applied. Turn those defences off, or make conntrack available and attach again.")


def object_kfuncs(path) -> list[str]:
    """The kernel functions a BPF object file calls."""
    out = ffi.new("char[]", 4096)
    count = lib.ew_object_kfuncs(str(path).encode(), out, 4096)
    if count < 0:
        raise OSError(-count, f"reading the BTF of {path}")
    return ffi.string(out).decode().split()
