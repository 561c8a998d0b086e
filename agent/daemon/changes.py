"""The policy changes an operator makes from the CLI (block, unblock,
suspend, resume), as pure functions of a policy document, so the daemon
applies exactly what the CLI would have."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from agent.policy import Policy, TenantState


class ChangeError(ValueError):
    """The change does not fit the live policy: says why."""


def _tenant(policy: Policy, tenant_id: int):
    tenant = policy.tenant(tenant_id)
    if tenant is None:
        known = ", ".join(f"{t.id} ({t.name})" for t in policy.tenants) or "none"
        raise ChangeError(f"no tenant {tenant_id} in the live policy (tenants: {known})")
    return tenant


def network(text: str):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ChangeError(f"{text!r} is not an IP address or CIDR prefix") from None


def block_add(policy: Policy, cidr: str, tenant_id: int | None) -> Policy:
    net = network(cidr)
    if tenant_id is None:
        return policy if net in policy.blocked_sources else replace(policy, blocked_sources=(*policy.blocked_sources, net))
    tenant = _tenant(policy, tenant_id)
    if net in tenant.blocked_sources:
        return policy
    return policy.replace_tenant(replace(tenant, blocked_sources=(*tenant.blocked_sources, net)))


def block_del(policy: Policy, cidr: str, tenant_id: int | None) -> Policy:
    net = network(cidr)
    if tenant_id is None:
        if net not in policy.blocked_sources:
            raise ChangeError(f"{net} is not on the global block list")
        return replace(policy, blocked_sources=tuple(n for n in policy.blocked_sources if n != net))
    tenant = _tenant(policy, tenant_id)
    if net not in tenant.blocked_sources:
        raise ChangeError(f"{net} is not on tenant {tenant_id}'s block list")
    return policy.replace_tenant(replace(tenant, blocked_sources=tuple(n for n in tenant.blocked_sources if n != net)))


def set_state(policy: Policy, tenant_id: int, state: TenantState) -> Policy:
    tenant = _tenant(policy, tenant_id)
    return policy if tenant.state is state else policy.replace_tenant(replace(tenant, state=state))
