"""Prefix text <-> the native PrefixSet (agent._prefixes): the controller
stores normalised CIDR text and compiles and diffs it natively."""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from agent._prefixes import PrefixSet, parse_blocklist


def prefix_set(texts: Iterable[str]) -> PrefixSet:
    """Compile CIDR/address texts with the project's list parser (they are
    already valid: stored only after parsing)."""
    data = "\n".join(texts).encode()
    return parse_blocklist(data).prefixes if data else PrefixSet()


def _v6_text(raw: bytes) -> str:
    # inet_ntop writes IPv4-mapped and -compatible addresses with a dotted quad
    # (::ffff:1.2.3.4); agent.policy's documents are written by ipaddress
    # (::ffff:102:304), and the controller's must be the same text
    text = socket.inet_ntop(socket.AF_INET6, raw)
    return str(ipaddress.IPv6Address(raw)) if "." in text else text


def prefix_texts(prefixes: PrefixSet) -> list[str]:
    """CIDR texts as agent.policy writes them, IPv4 first, then IPv6, sorted
    by address (the set's order)."""
    v4, ntop = socket.AF_INET, socket.inet_ntop
    return [f"{ntop(v4, raw) if len(raw) == 4 else _v6_text(raw)}/{length}" for raw, length in prefixes.to_list()]

