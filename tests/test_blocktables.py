"""Source block tables: the IPv4 node encoding held to ipaddress through a
pure-Python copy of the lookup in bpf/blocklist.h; the safety of the order in
which SwappableTable changes a live table in place, checked after every single
write; and the kernel enforcing a block-list change, applied in place or
swapped in whole, exactly as the reference model says."""

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent._libbpf import ffi
from agent._prefixes import EntryTable, PrefixSet
from agent.blocklist import compile_prefixes_reference
from agent.datapath import abi, blocktables
from agent.datapath.abi import VerdictReason
from agent.datapath.blocktables import (
    DELTA_LIMIT,
    SwappableTable,
    blocked_prefixes,
    decode_v6_lpm_key,
    global_v4_entries,
    tenant_v4_entries,
    v4_block_nodes,
    v4_networks_from_nodes,
    v6_lpm_key,
)
from agent.datapath.private import PrivateDatapath
from agent.policy import policy_from_document
from frames import tcp_ipv4_frame, tcp_ipv6_frame
from oracle import Oracle

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

V4, V6 = ipaddress.IPv4Network, ipaddress.IPv6Network

# ==========================================================================
# The lookup of bpf/blocklist.h, in Python

NODE = struct.Struct("=II4Q4Q")   # struct ew_block_node: flags, reserved, full24[4], partial24[4]
assert NODE.size == ffi.sizeof("struct ew_block_node")


def bit_is_set(words, bit: int) -> int:
    return (words[(bit >> 6) & 3] >> (bit & 63)) & 1


def block_node_key(level: int, addr: int) -> int:
    if level == abi.BLOCK_LEVEL_16:
        return (abi.BLOCK_LEVEL_16 << 24) | (addr >> 16)
    return (abi.BLOCK_LEVEL_24 << 24) | (addr >> 8)


def v4_blocked(lookup, addr: int) -> bool:
    """block_nodes_match: `lookup` maps a node key to a packed node or None."""
    n16 = lookup(block_node_key(abi.BLOCK_LEVEL_16, addr))
    if n16 is None:
        return False
    fields = NODE.unpack(n16)
    flags, full24, partial24 = fields[0], fields[2:6], fields[6:10]
    index24 = (addr >> 8) & 0xFF
    if flags & abi.BLOCK_NODE_FULL or bit_is_set(full24, index24):
        return True
    if not bit_is_set(partial24, index24):
        return False
    n24 = lookup(block_node_key(abi.BLOCK_LEVEL_24, addr))
    return n24 is not None and bool(bit_is_set(NODE.unpack(n24)[2:6], addr & 0xFF))


def global_lookup(table: dict[bytes, bytes]):
    return lambda node: table.get(struct.pack("=I", node))


def tenant_lookup(table: dict[bytes, bytes], tenant_id: int):
    key = ffi.new("struct ew_tenant_block_key *")
    key.tenant_id = tenant_id

    def lookup(node):
        key.node = node
        return table.get(bytes(ffi.buffer(key)))
    return lookup


def v6_blocked(table: dict[bytes, bytes], addr: ipaddress.IPv6Address, tenant_id=None) -> bool:
    """An LPM trie lookup: some key's prefix covers the (tenant, address) key."""
    return any(t == tenant_id and addr in n for t, n in map(decode_v6_lpm_key, table))


def in_any(networks, address) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def probes(networks, limit=None) -> list:
    """Addresses that decide a prefix set: each prefix's first, last and middle
    address, and the addresses just outside it."""
    result = set()
    for n in networks[:limit]:
        first, last = int(n.network_address), int(n.broadcast_address)
        cls = type(n.network_address)
        for value in (first, last, (first + last) // 2, first - 1, last + 1):
            if 0 <= value < 2 ** n.max_prefixlen:
                result.add(cls(value))
    return sorted(result, key=lambda a: (a.version, a))


# ==========================================================================
# (a) The node encoding against ipaddress

# Prefixes cluster around a few /16s so that they share and split nodes.
_anchors = st.sampled_from([0x0A000000, 0x0A010000, 0x0A02FF00, 0xC6336400, 0xFFFF0000, 0])
_near = st.one_of(st.builds(lambda a, off: (a + off) & 0xFFFFFFFF, _anchors, st.integers(0, 0x2FFFF)),
                  st.integers(0, 2**32 - 1))
# (Shorter prefixes, up to 65536 nodes each, are in test_v4_nodes_examples.)
_v4_length = st.one_of(st.integers(14, 32), st.integers(14, 32), st.integers(22, 32), st.integers(8, 13))
_v4_prefix = st.builds(lambda a, length: V4((a, length), strict=False), _near, _v4_length)


@SETTINGS
@given(prefixes=st.lists(_v4_prefix, max_size=12),
       extra=st.lists(_near.map(ipaddress.IPv4Address), max_size=40))
def test_v4_nodes_block_exactly_the_prefixes(prefixes, extra):
    compiled = compile_prefixes_reference(prefixes)
    nodes = v4_block_nodes(compiled)
    lookup = nodes.get
    for address in probes(compiled) + extra:
        assert v4_blocked(lookup, int(address)) == in_any(compiled, address), address
    assert v4_networks_from_nodes(nodes) == compiled

    # Shape: every partial24 bit points at a level-24 node and every level-24 node is
    # pointed at (nothing unreachable, nothing dangling); reserved fields are zero.
    partial, level24 = set(), set()
    for key, value in nodes.items():
        level, index = key >> 24, key & 0xFFFFFF
        flags, reserved, *words = NODE.unpack(value)
        assert reserved == 0
        if level == abi.BLOCK_LEVEL_16:
            assert index < 1 << 16 and flags in (0, abi.BLOCK_NODE_FULL)
            if flags:
                assert words == [0] * 8   # a full /16 needs no /24 bits
            partial |= {(index << 8) | i for i in range(256) if bit_is_set(words[4:], i)}
            assert not any(bit_is_set(words[:4], i) and bit_is_set(words[4:], i) for i in range(256))
        else:
            assert level == abi.BLOCK_LEVEL_24 and index < 1 << 24
            assert flags == 0 and words[4:] == [0] * 4 and any(words[:4])
            level24.add(index)
    assert partial == level24


V4_EXAMPLES = [
    ["0.0.0.0/0"],
    ["0.0.0.0/1", "192.0.0.0/2"],
    ["255.255.255.255/32", "0.0.0.0/32", "10.0.0.0/15", "10.2.0.0/23", "10.2.3.128/25"],
    [f"10.0.{i}.0/24" for i in range(256)],     # merges into one /16
    [f"10.0.0.{i}/32" for i in range(0, 256, 2)],
]


@pytest.mark.parametrize("prefixes", V4_EXAMPLES)
def test_v4_nodes_examples(prefixes):
    compiled = compile_prefixes_reference(map(ipaddress.ip_network, prefixes))
    nodes = v4_block_nodes(compiled)
    for address in probes(compiled) + [ipaddress.IPv4Address(a) for a in (0x0A000001, 0x0A000101, 0x7FFFFFFF)]:
        assert v4_blocked(nodes.get, int(address)) == in_any(compiled, address), address
    assert v4_networks_from_nodes(nodes) == compiled


_v6_prefix = st.builds(lambda a, length: V6((a, length), strict=False),
                       st.one_of(st.integers(0, 2**128 - 1), st.integers(0, 2**20).map(lambda x: 0x20010DB8 << 96 | x)),
                       st.integers(0, 128))


@SETTINGS
@given(prefix=_v6_prefix, tenant=st.one_of(st.none(), st.integers(1, 2**32 - 1)))
def test_v6_lpm_keys_round_trip(prefix, tenant):
    key = v6_lpm_key(prefix, tenant)
    key_type = "struct ew_lpm_v6_key" if tenant is None else "struct ew_tenant_lpm_v6_key"
    assert len(key) == ffi.sizeof(key_type)
    assert decode_v6_lpm_key(key) == (tenant, prefix)
    s = ffi.from_buffer(key_type + " *", key)
    assert s.prefixlen == prefix.prefixlen + (0 if tenant is None else 32)   # the tenant id is matched in full
    assert bytes(s.addr) == prefix.network_address.packed


# ==========================================================================
# (a') The native encoders compile_policy uses (PrefixSet.v4_block_entries and
# v6_lpm_entries, EntryTables) against the Python reference encodings above.

def _raw(addresses, lengths, width):
    """(address bytes as drawn, host bits and all; prefix length): from_list clears host bits."""
    return st.builds(lambda a, length: (a.to_bytes(width // 8, "big"), length), addresses, lengths)


_raw_v4 = _raw(_near, _v4_length, 32)   # (shorter prefixes: test_native_entries_examples)
_raw_v6 = _raw(st.one_of(st.integers(0, 2**128 - 1), st.integers(0, 2**20).map(lambda x: 0x20010DB8 << 96 | x)),
               st.integers(0, 128), 128)
_tenant_ids = st.one_of(st.none(), st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 0x01020304, 2**32 - 1]))


def network_of(address: bytes, length: int):
    return (V4 if len(address) == 4 else V6)((address, length), strict=False)


def reference_v4_entries(networks, tenant_id):
    nodes = v4_block_nodes([n for n in compile_prefixes_reference(networks) if n.version == 4])
    return global_v4_entries(nodes) if tenant_id is None else tenant_v4_entries(tenant_id, nodes)


def reference_v6_entries(networks, tenant_id, value):
    return {v6_lpm_key(n, tenant_id): value for n in compile_prefixes_reference(networks) if n.version == 6}


def assert_table_holds(table, expected: dict, key_type: str, value_size: int):
    """`table` is an EntryTable of exactly `expected`: its layout, its entries in key
    (byte) order, each key once, and the packed arrays the maps are written from."""
    assert isinstance(table, EntryTable)
    assert (table.key_size, table.value_size) == (ffi.sizeof(key_type), value_size)
    ordered = sorted(expected.items())
    assert len(table) == len(expected)
    assert table.items() == ordered
    assert table.keys_packed() == b"".join(k for k, _ in ordered)
    assert table.values_packed() == b"".join(v for _, v in ordered)


def assert_native_is_reference(raw, tenant_id, value):
    prefixes = PrefixSet.from_list(raw)
    networks = [network_of(a, length) for a, length in raw]
    scope = "g" if tenant_id is None else "t"
    v4, v6 = abi.SWAPPABLE_TABLES[f"ew_{scope}block_v4"], abi.SWAPPABLE_TABLES[f"ew_{scope}block_v6"]
    assert_table_holds(prefixes.v4_block_entries(tenant_id), reference_v4_entries(networks, tenant_id),
                       v4.key_type, ffi.sizeof(v4.value_type))
    assert_table_holds(prefixes.v6_lpm_entries(tenant_id, value), reference_v6_entries(networks, tenant_id, value),
                       v6.key_type, len(value))
    # The default value is none at all.
    assert_table_holds(prefixes.v6_lpm_entries(tenant_id), reference_v6_entries(networks, tenant_id, b""),
                       v6.key_type, 0)
    if tenant_id is None:   # the defaults are the global tables
        assert prefixes.v4_block_entries() == prefixes.v4_block_entries(None)
        assert prefixes.v6_lpm_entries(value=value) == prefixes.v6_lpm_entries(None, value)


@SETTINGS
@given(raw=st.lists(st.one_of(_raw_v4, _raw_v6), max_size=16), tenant_id=_tenant_ids,
       value=st.binary(min_size=1, max_size=16))
def test_native_entries_equal_the_reference_encoding(raw, tenant_id, value):
    assert_native_is_reference(raw, tenant_id, value)


@pytest.mark.parametrize("tenant_id", [None, 0, 0x01020304])
@pytest.mark.parametrize("prefixes", V4_EXAMPLES + [
    ["::/0", "0.0.0.0/0"],
    ["2001:db8::/32", "2001:db8:1::/48", "2001:db8:0:1::5/64", "::1/128", "10.0.0.0/8", "10.1.2.3/31"],
])
def test_native_entries_examples(prefixes, tenant_id):
    """Short prefixes (up to 65536 level-16 nodes each) and merging lists."""
    networks = [ipaddress.ip_network(p, strict=False) for p in prefixes]
    assert_native_is_reference([(n.network_address.packed, n.prefixlen) for n in networks], tenant_id, bytes(8))


@pytest.mark.parametrize("tenant_id,error", [
    (-1, ValueError), (2**32, ValueError), (2**64, ValueError), (True, TypeError), ("1", TypeError), (1.0, TypeError),
])
def test_native_entries_refuse_bad_tenant_ids(tenant_id, error):
    prefixes = PrefixSet.from_list([(bytes(4), 8), (bytes(16), 8)])
    with pytest.raises(error):
        prefixes.v4_block_entries(tenant_id)
    with pytest.raises(error):
        prefixes.v6_lpm_entries(tenant_id, bytes(8))


# ==========================================================================
# EntryTable: the contents of a map as packed, key-sorted arrays; diff, merge


def table_of(entries: dict, key_size: int, value_size: int) -> EntryTable:
    return EntryTable.from_packed(b"".join(entries), b"".join(entries.values()), key_size, value_size)


_layouts = st.sampled_from([(1, 1), (3, 5), (4, 72), (8, 72), (20, 8), (24, 8)])


@st.composite
def table_versions(draw):
    """(key size, value size, old, new): two versions of a map's contents over a small
    key universe, so they share keys, with values from a small pool, so a shared key
    often keeps its value. Entries come in a drawn order, not sorted."""
    key_size, value_size = draw(_layouts)
    values = st.binary(min_size=value_size, max_size=value_size)
    universe = draw(st.lists(st.binary(min_size=key_size, max_size=key_size), min_size=1, max_size=24, unique=True))
    pool = draw(st.lists(values, min_size=1, max_size=3))
    value = st.one_of(st.sampled_from(pool), values)
    old, new = (dict(draw(st.permutations(list(draw(st.dictionaries(st.sampled_from(universe), value)).items()))))
                for _ in range(2))
    return key_size, value_size, old, new


@SETTINGS
@given(versions=table_versions())
def test_entry_table_diff_is_dict_arithmetic(versions):
    key_size, value_size, old, new = versions
    a, b = table_of(old, key_size, value_size), table_of(new, key_size, value_size)
    assert (len(a), len(b)) == (len(old), len(new))
    assert a.items() == sorted(old.items()) and b.items() == sorted(new.items())
    assert EntryTable.from_packed(a.keys_packed(), a.values_packed(), key_size, value_size) == a

    writes, deletes = a.diff(b)
    for part in (writes, deletes):
        assert (part.key_size, part.value_size) == (key_size, value_size)
    assert writes.items() == sorted((k, v) for k, v in new.items() if old.get(k) != v)   # new or changed
    assert deletes.items() == sorted((k, v) for k, v in old.items() if k not in new)      # gone, old values
    deleted = dict(deletes.items())
    assert {k: v for k, v in old.items() if k not in deleted} | dict(writes.items()) == new

    back_writes, back_deletes = b.diff(a)
    assert back_writes.items() == sorted((k, v) for k, v in old.items() if new.get(k) != v)
    assert back_deletes.items() == sorted((k, v) for k, v in new.items() if k not in old)

    for table, entries in ((a, old), (b, new)):
        same_writes, same_deletes = table.diff(table_of(dict(reversed(entries.items())), key_size, value_size))
        assert len(same_writes) == len(same_deletes) == 0
    assert (a == b) == (old == new) and (a != b) == (old != new)


def test_entry_table_diff_refuses_other_layouts():
    for other in (EntryTable(4, 4), EntryTable(8, 8), EntryTable(2, 8)):
        with pytest.raises(ValueError, match="different layouts"):
            EntryTable(4, 8).diff(other)


def test_entry_table_equality_is_layout_and_contents():
    a = EntryTable.from_packed(b"abcd", b"wxyz", 2, 2)
    assert a == EntryTable.from_packed(b"cdab", b"yzwx", 2, 2)      # the same entries in another order
    assert a != EntryTable.from_packed(b"abcd", b"wxyy", 2, 2)      # a value differs
    assert a != EntryTable.from_packed(b"abce", b"wxyz", 2, 2)      # a key differs
    assert a != EntryTable.from_packed(b"ab", b"wx", 2, 2)          # an entry fewer
    assert a != EntryTable.from_packed(b"abcd", b"wxyz", 4, 4)      # the same bytes as one wider entry
    assert EntryTable(4, 8) == EntryTable(4, 8) and len(EntryTable(4, 8)) == 0
    assert EntryTable(4, 8) != EntryTable(4, 4) and EntryTable(4, 8) != EntryTable(8, 8)


@pytest.mark.parametrize("keys,values,key_size,value_size,message", [
    (b"abc", b"wxyz", 2, 2, "whole entries"),        # the last key cut short
    (b"abcd", b"wxy", 2, 2, "whole entries"),        # the last value cut short
    (b"abcd", b"wx", 2, 2, "whole entries"),         # more keys than values
    (b"ab", b"wxyz", 2, 2, "whole entries"),         # more values than keys
    (b"", b"wx", 2, 2, "whole entries"),
    (b"abcd", b"", 2, 2, "whole entries"),
    (b"abcd", b"wxy", 2, 1, "whole entries"),        # whole values, one too many
    (b"abab", b"wxyz", 2, 2, "duplicate key"),
    (b"abab", b"wxwx", 2, 2, "duplicate key"),       # even with the same value
    (b"abcdab", b"uvwxyz", 2, 2, "duplicate key"),   # not next to each other as given
    (b"ab", b"wx", 0, 2, "key size must be positive"),
])
def test_entry_table_from_packed_refuses(keys, values, key_size, value_size, message):
    with pytest.raises(ValueError, match=message):
        EntryTable.from_packed(keys, values, key_size, value_size)


@SETTINGS
@given(layout=_layouts, count=st.integers(0, 6), data=st.data())
def test_entry_table_from_packed_takes_exactly_whole_distinct_entries(layout, count, data):
    key_size, value_size = layout
    keys = data.draw(st.binary(min_size=max(0, count * key_size - 3), max_size=count * key_size + 3))
    values = data.draw(st.binary(min_size=max(0, count * value_size - 3), max_size=count * value_size + 3))
    split = [keys[i:i + key_size] for i in range(0, len(keys), key_size)]
    whole = (len(keys) % key_size == 0 and len(values) % value_size == 0
             and len(keys) // key_size == len(values) // value_size)
    if not whole:
        with pytest.raises(ValueError, match="whole entries"):
            EntryTable.from_packed(keys, values, key_size, value_size)
    elif len(set(split)) != len(split):
        with pytest.raises(ValueError, match="duplicate key"):
            EntryTable.from_packed(keys, values, key_size, value_size)
    else:
        entries = dict(zip(split, (values[i:i + value_size] for i in range(0, len(values), value_size))))
        assert EntryTable.from_packed(keys, values, key_size, value_size).items() == sorted(entries.items())


@SETTINGS
@given(versions=table_versions(), data=st.data())
def test_entry_table_from_batches_is_from_packed_of_their_join(versions, data):
    """Batches of any sizes (empty ones too), as bytes, bytearrays or
    memoryviews, make the table their concatenation makes."""
    key_size, value_size, entries, _ = versions
    keys, values = list(entries), list(entries.values())
    cuts = sorted(data.draw(st.lists(st.integers(0, len(keys)), max_size=4)))
    bounds = [0, *cuts, len(keys)]
    kinds = (bytes, bytearray, lambda b: memoryview(bytes(b)))
    batches = [(data.draw(st.sampled_from(kinds))(b"".join(keys[lo:hi])),
                data.draw(st.sampled_from(kinds))(b"".join(values[lo:hi]))) for lo, hi in zip(bounds, bounds[1:])]
    capacity = data.draw(st.integers(0, 2 * len(keys)))
    table = EntryTable.from_batches(iter(batches), key_size, value_size, capacity)
    assert table == table_of(entries, key_size, value_size)
    assert table.items() == sorted(entries.items())


@pytest.mark.parametrize("batches,message", [
    ([(b"abc", b"wxyz")], "whole entries"),
    ([(b"ab", b"wx"), (b"cd", b"y")], "whole entries"),
    ([(b"ab", b"wx"), (b"ab", b"yz")], "duplicate key"),        # across batches
    ([(b"ab",)], "pair"),
])
def test_entry_table_from_batches_refuses(batches, message):
    with pytest.raises(ValueError, match=message):
        EntryTable.from_batches(batches, 2, 2)


@pytest.mark.parametrize("key_size", [2, 4, 8, 20])
def test_entry_table_sorts_large_shuffled_and_sorted_input_in_place(key_size):
    """Thousands of entries in random order (long permutation cycles), and
    already in order: the bytewise order, each key with its own value."""
    rng = __import__("random").Random(key_size)
    keys = sorted({rng.randbytes(key_size) for _ in range(20_000)})
    value_of = {k: bytes(reversed(k)) + k[:1] for k in keys}
    shuffled = keys[:]
    rng.shuffle(shuffled)
    for order in (shuffled, keys, keys[::-1]):
        table = EntryTable.from_packed(b"".join(order), b"".join(value_of[k] for k in order), key_size, key_size + 1)
        assert table.keys_packed() == b"".join(keys)
        assert table.values_packed() == b"".join(value_of[k] for k in keys)


def test_node_table_read_back_in_several_batches_is_the_compiled_one():
    """More nodes than one batched read returns (65,536): the live table
    read back batch by batch (EntryTable.from_batches) is the compiled table."""
    from agent.datapath.apply import apply_policy_to_maps
    from agent.datapath.compile import GLOBAL_TABLES
    from agent.policy import Policy
    # 50,000 /32s: about 50,000 level-24 nodes and their level-16 nodes.
    rng = __import__("random").Random(5)
    hosts = {(rng.getrandbits(24) << 8) | rng.getrandbits(8) for _ in range(50_000)}
    prefixes = PrefixSet.from_list([(h.to_bytes(4, "big"), 32) for h in hosts])
    compiled = prefixes.v4_block_entries()
    assert len(compiled) > 65536
    with PrivateDatapath() as datapath:
        apply_policy_to_maps(datapath.program.maps, Policy(revision=1), {None: prefixes}, frozenset(GLOBAL_TABLES))
        assert SwappableTable(datapath.program.maps["ew_gblock_v4"]).entries_table() == compiled


def test_a_table_without_values_round_trips_through_its_packed_form():
    """Regression: an EntryTable may have 0-byte values (PrefixSet.v6_lpm_entries makes
    one by default); from_packed must accept its own keys_packed()/values_packed() of
    such a table (with value_size 0 there are no values to count entries by)."""
    table = PrefixSet.from_list([(V6("2001:db8::/32").network_address.packed, 32)]).v6_lpm_entries()
    assert (len(table), table.value_size, table.values_packed()) == (1, 0, b"")
    assert EntryTable.from_packed(table.keys_packed(), table.values_packed(), table.key_size, 0) == table


@SETTINGS
@given(versions=table_versions(), data=st.data())
def test_entry_table_merged_is_the_union_of_disjoint_parts(versions, data):
    key_size, value_size, entries, _ = versions
    count = data.draw(st.integers(1, 4))
    part_of = {k: data.draw(st.integers(0, count - 1)) for k in entries}
    parts = [table_of({k: v for k, v in entries.items() if part_of[k] == i}, key_size, value_size)
             for i in range(count)]
    before = [p.items() for p in parts]
    merged = EntryTable.merged(parts, key_size, value_size)
    assert (merged.key_size, merged.value_size) == (key_size, value_size)
    assert merged.items() == sorted(entries.items())
    assert merged == table_of(entries, key_size, value_size)
    assert EntryTable.merged(parts[::-1], key_size, value_size) == merged
    assert [p.items() for p in parts] == before   # the parts are left as they were


def test_entry_table_merged_refuses_overlaps_and_other_layouts():
    assert EntryTable.merged([], 4, 8) == EntryTable(4, 8)
    one = EntryTable.from_packed(b"abcd", b"wxyz", 2, 2)
    assert EntryTable.merged([one, EntryTable(2, 2)], 2, 2) == one
    with pytest.raises(ValueError, match="duplicate key"):
        EntryTable.merged([one, EntryTable.from_packed(b"cd", b"yz", 2, 2)], 2, 2)   # same key, same value
    with pytest.raises(ValueError, match="duplicate key"):
        EntryTable.merged([one, EntryTable.from_packed(b"ab", b"zz", 2, 2)], 2, 2)
    for layout in ((2, 4), (4, 2)):
        with pytest.raises(ValueError, match="different layouts"):
            EntryTable.merged([one], *layout)
    with pytest.raises(ValueError, match="different layouts"):
        EntryTable.merged([one, EntryTable(2, 4)], 2, 2)


# ==========================================================================
# (c) In-place changes: at every intermediate state of a delta, every address
# blocked by the old and by the new version is blocked (and nothing outside
# either version is). The real SwappableTable.apply and _apply_delta run over a
# stand-in inner table that checks the invariant after each single write.


class CheckedInner:
    """Stands in for a live inner map (a dict); calls `check(state)` after every
    update and delete, as a packet could observe the table at any of those points."""

    def __init__(self, entries, check):
        self.data = dict(entries)
        self.check = check
        self.steps = 0

    def items(self):
        return dict(self.data)

    def items_packed(self):
        return b"".join(self.data), b"".join(self.data.values())

    def packed_batches(self):
        yield self.items_packed()

    @property
    def max_entries(self):
        return len(self.data)

    def lookup(self, key):
        return self.data.get(key)

    def update(self, key, value, flags=0):
        self.data[key] = value
        self._step()

    def delete(self, key):
        found = self.data.pop(key, None) is not None
        self._step()
        return found

    def update_many(self, entries):
        for key, value in entries.items():
            self.update(key, value)

    def delete_many(self, keys):
        for key in keys:
            self.delete(key)

    def _step(self):
        self.steps += 1
        self.check(self.data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class StandInTable(SwappableTable):
    """SwappableTable with the outer map replaced by one fixed inner table; a swap
    (which would bypass the in-place order under test) fails the test."""

    def __init__(self, name, inner):
        self.outer = None
        self.name = name
        self.spec = abi.SWAPPABLE_TABLES[name]
        self._inner = inner

    def inner(self):
        return self._inner

    def _swap_in(self, desired):
        raise AssertionError(f"{self.name}: swapped, the in-place path was expected")


def run_delta(table_name, old_entries, new_entries, blocked_in, probes_by_scope, table_cls=StandInTable):
    """Applies new over old in place, checking every intermediate state.
    blocked_in(state, scope, address) -> bool; probes_by_scope: scope -> [(address, old?, new?)]."""
    violations = []

    def check(state):
        for scope, samples in probes_by_scope.items():
            for address, in_old, in_new in samples:
                blocked = blocked_in(state, scope, address)
                if in_old and in_new and not blocked:
                    violations.append(f"step {inner.steps}: {address} (scope {scope}) blocked by both "
                                      "versions was let through")
                if blocked and not (in_old or in_new):
                    violations.append(f"step {inner.steps}: {address} (scope {scope}) blocked by neither "
                                      "version was blocked")

    inner = CheckedInner(old_entries, check)
    update = table_cls(table_name, inner).apply(new_entries)
    assert not update.swapped
    assert inner.data == new_entries
    assert inner.steps == update.added + update.changed + update.removed
    return violations


def samples_for(old, new, extra=()):
    return [(a, in_any(old, a), in_any(new, a)) for a in sorted(set(probes(old) + probes(new) + list(extra)))]


# Old and new versions of a list: the new one keeps some old prefixes, drops others,
# adds some and splits or widens others, all inside 10.0.0.0/14.
_local = st.integers(0, 2**18 - 1).map(lambda x: 0x0A000000 | x)
_local_prefix = st.builds(lambda a, length: V4((a, length), strict=False), _local, st.integers(14, 32))


@st.composite
def list_versions(draw):
    old = draw(st.lists(_local_prefix, max_size=10))
    new = [n for n in old if draw(st.booleans())]
    for n in old:
        move = draw(st.sampled_from(["none", "none", "split", "widen", "narrow"]))
        if move == "split" and n.prefixlen < 32:
            new += [s for s in n.subnets(1) if draw(st.booleans())]
        elif move == "widen" and n.prefixlen > 14:
            new.append(n.supernet(draw(st.integers(1, min(10, n.prefixlen - 14)))))
        elif move == "narrow" and n.prefixlen < 32:
            new.append(next(n.subnets(draw(st.integers(1, min(10, 32 - n.prefixlen))))))
    new += draw(st.lists(_local_prefix, max_size=4))
    extra = draw(st.lists(_local.map(ipaddress.IPv4Address), max_size=20))
    return compile_prefixes_reference(old), compile_prefixes_reference(new), extra


@SETTINGS
@given(versions=list_versions())
def test_global_v4_delta_never_unblocks_an_address_blocked_by_both(versions):
    old, new, extra = versions
    violations = run_delta(
        "ew_gblock_v4", global_v4_entries(v4_block_nodes(old)), global_v4_entries(v4_block_nodes(new)),
        lambda state, _, address: v4_blocked(global_lookup(state), int(address)),
        {None: samples_for(old, new, extra)})
    assert violations == []


@SETTINGS
@given(one=list_versions(), two=list_versions())
def test_tenant_v4_delta_never_unblocks_an_address_blocked_by_both(one, two):
    old, new, probes_by_tenant = {}, {}, {}
    for tenant_id, (o, n, extra) in ((1, one), (0x01000001, two)):
        old |= tenant_v4_entries(tenant_id, v4_block_nodes(o))
        new |= tenant_v4_entries(tenant_id, v4_block_nodes(n))
        probes_by_tenant[tenant_id] = samples_for(o, n, extra)
    violations = run_delta(
        "ew_tblock_v4", old, new,
        lambda state, tenant_id, address: v4_blocked(tenant_lookup(state, tenant_id), int(address)),
        probes_by_tenant)
    assert violations == []


_local6 = st.integers(0, 2**24 - 1).map(lambda x: ipaddress.IPv6Address((0x20010DB8 << 96) | (x << 80)))
_local6_prefix = st.builds(lambda a, length: V6((a, length), strict=False), _local6, st.integers(32, 64))


@settings(max_examples=60, deadline=None)
@given(old=st.lists(_local6_prefix, max_size=6), new=st.lists(_local6_prefix, max_size=6),
       tenant=st.one_of(st.none(), st.integers(1, 2**32 - 1)))
def test_v6_delta_never_unblocks_an_address_blocked_by_both(old, new, tenant):
    old, new = compile_prefixes_reference(old), compile_prefixes_reference(new + old[:2])
    name = "ew_gblock_v6" if tenant is None else "ew_tblock_v6"
    entries = {n: {v6_lpm_key(p, tenant): bytes(8) for p in prefixes} for n, prefixes in (("old", old), ("new", new))}
    violations = run_delta(name, entries["old"], entries["new"],
                           lambda state, scope, address: v6_blocked(state, address, scope),
                           {tenant: samples_for(old, new)})
    assert violations == []


class NaiveOrderTable(StandInTable):
    """The same delta in the opposite order: coarse nodes written first, removals first."""

    def _apply_delta(self, writes, stale):
        level = lambda key: blocktables.table_key_level(self.name, key)
        for key in sorted(stale, key=level, reverse=True):
            self._inner.delete(key)
        for key, value in sorted(writes, key=lambda kv: level(kv[0])):
            self._inner.update(key, value)


@pytest.mark.parametrize("old,new", [
    (["10.0.0.0/24"], ["10.0.0.0/25"]),              # full /24 bit -> level-24 node
    (["10.0.0.5/32"], ["10.0.0.0/24"]),              # level-24 node -> full /24 bit
    (["10.0.0.5/32", "10.0.1.0/24"], ["10.0.0.0/23"]),
])
def test_the_checker_catches_an_unsafe_order(old, new):
    """The invariant checked above has teeth: applying the same deltas coarse-first
    lets an address blocked by both versions through, and the real order does not."""
    old, new = (compile_prefixes_reference(map(ipaddress.ip_network, v)) for v in (old, new))
    args = ("ew_gblock_v4", global_v4_entries(v4_block_nodes(old)), global_v4_entries(v4_block_nodes(new)),
            lambda state, _, address: v4_blocked(global_lookup(state), int(address)),
            {None: samples_for(old, new)})
    assert run_delta(*args) == []
    assert any("let through" in v for v in run_delta(*args, table_cls=NaiveOrderTable))


# ==========================================================================
# (b) The kernel: a private datapath applies policy A, then B, and must judge
# every probe like the reference does under B, whether the tables were changed
# in place (small change) or swapped whole (more than DELTA_LIMIT entries).

VIPS = {1: ("203.0.113.10", "2001:db8:10::10"), 2: ("203.0.113.20", "2001:db8:20::20")}
UNASSIGNED = ("203.0.113.99", "2001:db8:99::99")


def document(revision, global_sources, tenant_sources: dict[int, list[str]]):
    return {"revision": revision, "global": {"blocked_sources": global_sources},
            "tenants": [{"id": t, "name": f"t{t}", "vips": list(VIPS.get(t, (f"203.0.113.{t}",))),
                         "blocked_sources": sources} for t, sources in tenant_sources.items()]}


A_DOC = document(1, ["192.0.2.0/24", "198.51.100.0/25", "10.0.0.0/8", "100.64.1.7/32", "2001:db8:bad::/48"],
                 {1: ["198.51.100.128/26", "172.16.0.0/12", "100.64.2.0/30", "2001:db8:1::/64"],
                  2: ["172.16.5.0/24", "100.64.3.0/25", "2001:db8:2::/48"]})

# Small: every table changes a little, some prefixes split, widen or move.
B_SMALL_DOC = document(2, ["192.0.2.0/25", "198.51.100.0/24", "10.1.0.0/16", "100.64.1.6/31", "2001:db8:bad::/49"],
                       {1: ["198.51.100.128/27", "172.16.0.0/13", "100.64.2.0/29", "2001:db8:1::/63"],
                        3: ["100.64.3.0/24", "2001:db8:3::/48"]})


def hosts(first: str, count: int, step: int = 0x101) -> list[str]:
    """`count` host routes spread over distinct /24s from `first` on."""
    start = int(ipaddress.IPv4Address(first))
    return [str(ipaddress.IPv4Address(start + i * step)) for i in range(count)]


SPREAD = DELTA_LIMIT + 500
# Large: thousands of host routes (one /24 node each) in the global and a tenant v4
# table, thousands of /128s in the global v6 trie; the tenant v6 trie changes a little.
B_LARGE_DOC = document(
    3, hosts("100.64.0.1", SPREAD) + ["192.0.2.0/24", "10.0.0.0/9"]
    + [f"2001:db8:bad:{i:x}::1/128" for i in range(SPREAD)],
    {1: hosts("172.20.0.3", SPREAD) + ["198.51.100.128/26", "2001:db8:1::/64"],
     2: ["172.16.5.0/25", "2001:db8:2::/47"]})


def judge_probes(datapath, policy, sources, tenants=(1, 2, 3)):
    """Every source to every destination of its family: the kernel against the reference."""
    oracle = Oracle(datapath, policy)
    destinations = [VIPS.get(t, (f"203.0.113.{t}",)) for t in tenants] + [UNASSIGNED]
    reasons = set()
    for source in sources:
        for dst in (d for ds in destinations for d in ds if ipaddress.ip_address(d).version == source.version):
            build = tcp_ipv4_frame if source.version == 4 else tcp_ipv6_frame
            reasons.add(oracle.check(build(str(source), dst, 40000, 443)).reason)
    return reasons


def sources_of(*docs, limit=None):
    nets = []
    for doc in docs:
        nets += [ipaddress.ip_network(s) for s in doc["global"]["blocked_sources"]][:limit]
        for t in doc["tenants"]:
            nets += [ipaddress.ip_network(s) for s in t["blocked_sources"]][:limit]
    return sorted(set(probes(nets)), key=lambda a: (a.version, a))


def spread_sample(doc, every=701):
    """A sample of the thousands of host routes of a large document and their neighbours."""
    nets = [ipaddress.ip_network(s) for s in doc["global"]["blocked_sources"]]
    nets += [ipaddress.ip_network(s) for t in doc["tenants"] for s in t["blocked_sources"]]
    return probes([n for n in nets if n.prefixlen == n.max_prefixlen][::every])


def assert_tables_hold(datapath, policy):
    expected = {(None, n) for n in compile_prefixes_reference(policy.blocked_sources)}
    for t in policy.tenants:
        expected |= {(t.id, n) for n in compile_prefixes_reference(t.blocked_sources)}
    assert set(blocked_prefixes(datapath.program.maps)) == expected


def test_small_change_is_applied_in_place_and_enforced():
    a, b = policy_from_document(A_DOC), policy_from_document(B_SMALL_DOC)
    sources = sources_of(A_DOC, B_SMALL_DOC)
    with PrivateDatapath(a) as datapath:
        judge_probes(datapath, a, sources)
        report = datapath.apply(b)
        assert report.swapped == []
        assert all(report.added[n] + report.removed[n] for n in abi.SWAPPABLE_TABLES), report.summary()
        assert_tables_hold(datapath, b)
        reasons = judge_probes(datapath, b, sources)
        assert {VerdictReason.drop_global_block, VerdictReason.drop_tenant_block,
                VerdictReason.pass_allowed} <= reasons
        # and back
        assert datapath.apply(a).swapped == []
        assert_tables_hold(datapath, a)
        judge_probes(datapath, a, sources)


def test_large_change_is_swapped_in_and_enforced():
    a, large, small = (policy_from_document(d) for d in (A_DOC, B_LARGE_DOC, B_SMALL_DOC))
    # (The reference scans every prefix for each frame: a few hundred frames per version.)
    sources = sources_of(A_DOC) + sources_of(B_LARGE_DOC, limit=6) + spread_sample(B_LARGE_DOC)
    with PrivateDatapath(a) as datapath:
        report = datapath.apply(large)
        assert sorted(report.swapped) == ["ew_gblock_v4", "ew_gblock_v6", "ew_tblock_v4"], report.summary()
        assert report.added["ew_tblock_v6"] + report.removed["ew_tblock_v6"] > 0   # changed in place
        assert_tables_hold(datapath, large)
        reasons = judge_probes(datapath, large, sources)
        assert {VerdictReason.drop_global_block, VerdictReason.drop_tenant_block,
                VerdictReason.pass_allowed} <= reasons

        # A small change on top of the swapped-in tables goes in place.
        fewer = dict(B_LARGE_DOC, revision=4, tenants=[
            dict(t, blocked_sources=t["blocked_sources"][7:] + ["172.31.0.0/16"]) for t in B_LARGE_DOC["tenants"]])
        fewer["global"] = {"blocked_sources": B_LARGE_DOC["global"]["blocked_sources"][5:]}
        fewer_policy = policy_from_document(fewer)
        report = datapath.apply(fewer_policy)
        assert report.swapped == [] and report.removed["ew_tblock_v4"] > 0, report.summary()
        assert_tables_hold(datapath, fewer_policy)
        judge_probes(datapath, fewer_policy, sources + sources_of(fewer, limit=8))

        # Back to a small list: swapped again.
        report = datapath.apply(small)
        assert sorted(report.swapped) == ["ew_gblock_v4", "ew_gblock_v6", "ew_tblock_v4"], report.summary()
        assert_tables_hold(datapath, small)
        judge_probes(datapath, small, sources + sources_of(B_SMALL_DOC), tenants=(1, 2, 3))
