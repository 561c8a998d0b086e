"""Prefix text <-> the native PrefixSet (agent._prefixes): the controller
stores normalised CIDR text and compiles and diffs it natively."""

from __future__ import annotations

import socket
from typing import Iterable

from agent._prefixes import PrefixSet, parse_blocklist


def prefix_set(texts: Iterable[str]) -> PrefixSet:
    """Compile CIDR/address texts with the project's list parser (they are
    already valid: stored only after parsing)."""
    data = "\n".join(texts).encode()
    return parse_blocklist(data).prefixes if data else PrefixSet()


def prefix_texts(prefixes: PrefixSet) -> list[str]:
    """CIDR texts, IPv4 first, then IPv6, sorted by address (the set's order)."""
    v4, v6, ntop = socket.AF_INET, socket.AF_INET6, socket.inet_ntop
    return [f"{ntop(v4 if len(raw) == 4 else v6, raw)}/{length}" for raw, length in prefixes.to_list()]

