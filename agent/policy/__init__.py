"""The policy document and its compilation into datapath map contents."""

from agent.policy.document import (
    PolicyError,
    load_policy,
    policy_from_document,
    policy_to_document,
    policy_to_toml,
    save_policy,
)
from agent.policy.model import Policy, PortRule, Tenant, TenantState, Vip

__all__ = [
    "Policy", "PolicyError", "PortRule", "Tenant", "TenantState", "Vip",
    "load_policy", "policy_from_document", "policy_to_document", "policy_to_toml", "save_policy",
]
