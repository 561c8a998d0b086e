"""Block-list prefix sets: the native compiler (agent._prefixes, C++) and the
pure-Python reference it is held to. Both return the smallest set of
prefixes matching exactly the addresses of the input, sorted."""

from __future__ import annotations

import ipaddress
from typing import Iterable

from agent import _prefixes

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _split_families(networks: Iterable[IPNetwork]) -> tuple[list[IPNetwork], list[IPNetwork]]:
    v4, v6 = [], []
    for net in networks:
        (v4 if net.version == 4 else v6).append(net)
    return v4, v6


def compile_prefixes(networks: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Native: IPv4 prefixes first, then IPv6, each sorted by address."""
    result: list[IPNetwork] = []
    for family, cls in zip(_split_families(networks), (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        if family:
            compiled = _prefixes.compile_prefixes([(n.network_address.packed, n.prefixlen) for n in family])
            result.extend(cls((raw, length)) for raw, length in compiled)
    return result


def compile_prefixes_reference(networks: Iterable[IPNetwork]) -> list[IPNetwork]:
    result: list[IPNetwork] = []
    for family in _split_families(networks):
        result.extend(ipaddress.collapse_addresses(family))
    return result
