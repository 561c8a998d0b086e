"""The canonical encoding that digests and signatures are computed over:
msgpack with every map's keys sorted, so one value has exactly one encoding
on every host and after any msgpack round trip."""

from __future__ import annotations

from agent.wire.frames import pack


def _normal(value):
    if isinstance(value, dict):
        return {k: _normal(value[k]) for k in sorted(value, key=_sort_key)}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


def _sort_key(key):
    # keys of one map are all str or all int in this protocol; the type name keeps mixed maps total
    return (type(key).__name__, key)


def canonical_bytes(value) -> bytes:
    """The canonical encoding of a value (map keys sorted, list order kept)."""
    return pack(_normal(value))


def unordered(values) -> list:
    """A list's items in canonical order: for lists whose order carries no meaning."""
    return sorted(values, key=canonical_bytes)
