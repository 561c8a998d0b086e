"""The policy document last applied to each interface, kept beside its pins
(/run/edgewarden/<ifname>/policy.toml) so a change is a diff against it and
a restarted agent knows what the maps hold."""

from __future__ import annotations

from pathlib import Path

from agent.datapath.scope import state_dir_for
from agent.policy.document import load_policy, save_policy
from agent.policy.model import Policy

POLICY_FILE = "policy.toml"


def policy_path_for(ifname: str) -> Path:
    return state_dir_for(ifname) / POLICY_FILE


def applied_policy(ifname: str) -> Policy | None:
    path = policy_path_for(ifname)
    return load_policy(path) if path.exists() else None


def record_applied_policy(ifname: str, policy: Policy) -> None:
    save_policy(policy, policy_path_for(ifname))
