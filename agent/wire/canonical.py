"""The canonical encoding that digests and signatures are computed over:
msgpack with every map's keys sorted, so one value has exactly one encoding
on every host and after any msgpack round trip. Built bottom up, each
value encoded once."""

from __future__ import annotations

import msgpack

# One packer for every piece (packb would build one per call); frames.pack's settings.
_PACKER = msgpack.Packer(use_bin_type=True)
pack = _PACKER.pack


def _sort_key(key):
    # keys of one map are all str or all int in this protocol; the type name keeps mixed maps total
    return (type(key).__name__, key)


def _encode(value, unordered_lists: bool) -> bytes:
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: _sort_key(kv[0]))
        return _PACKER.pack_map_header(len(items)) + b"".join(
            pack(k) + _encode(v, unordered_lists) for k, v in items)
    if isinstance(value, (list, tuple)):
        parts = [_encode(v, unordered_lists) for v in value]
        if unordered_lists:
            parts.sort()
        return _PACKER.pack_array_header(len(parts)) + b"".join(parts)
    return pack(value)


def canonical_bytes(value) -> bytes:
    """The canonical encoding of a value (map keys sorted, list order kept)."""
    return _encode(value, False)


def unordered_canonical_bytes(value) -> bytes:
    """The same, with every list's items in canonical order too: for values
    (like the policy document) whose lists are sets."""
    return _encode(value, True)
