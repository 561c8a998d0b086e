"""The native cores against their pure-Python references: the C++ block-list
prefix compiler (agent._prefixes, via agent.blocklist.compile_prefixes) and
the Cython per-CPU counter summation (agent._counters.sum_percpu)."""

import bisect
import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent import _counters, _prefixes
from agent.blocklist import compile_prefixes, compile_prefixes_reference
from agent.datapath import abi
from agent.datapath.counters import sum_percpu_reference

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WIDTH = {4: 32, 6: 128}
NET_CLS = {4: ipaddress.IPv4Network, 6: ipaddress.IPv6Network}


# --------------------------------------------------------------------------
# Strategies: prefixes that collide a lot (duplicates, nesting, siblings)


def _net(version: int, addr: int, length: int):
    """A network from a possibly host-bit-carrying address, normalised like the policy does."""
    width = WIDTH[version]
    addr &= (1 << width) - 1
    address = ipaddress.IPv6Address(addr) if version == 6 else ipaddress.IPv4Address(addr)
    return ipaddress.ip_network(f"{address}/{length}", strict=False)


def _lengths(version: int):
    width = WIDTH[version]
    return st.one_of(
        st.integers(0, width),
        st.sampled_from([0, 1, width - 1, width]),  # /0, /32, /128 and their neighbours
        st.integers(max(0, width - 10), width),     # dense region: lots of siblings
    )


@st.composite
def _base_network(draw):
    version = draw(st.sampled_from([4, 6]))
    width = WIDTH[version]
    # Addresses from a few small pools so that prefixes overlap and merge often,
    # plus fully random ones.
    pool = draw(st.sampled_from([0, 1, 2, 3]))
    if pool == 3:
        addr = draw(st.integers(0, (1 << width) - 1))
    else:
        high = [0x0A000000, 0xC0000200, 0xFFFFFF00][pool] if version == 4 else \
            [0x20010DB8 << 96, 0, ((1 << 128) - 1) ^ 0xFFFF][pool]
        addr = high | draw(st.integers(0, 0xFFF))
    return _net(version, addr, draw(_lengths(version)))


@st.composite
def networks(draw):
    """Mixed IPv4/IPv6 lists with duplicates, nested prefixes and mergeable siblings."""
    base = draw(st.lists(_base_network(), max_size=25))
    out = list(base)
    for net in base:
        width = net.max_prefixlen
        kind = draw(st.sampled_from(["none", "dup", "sibling", "child", "parent", "split"]))
        if kind == "dup":
            out.append(net)
        elif kind == "sibling" and net.prefixlen > 0:
            flipped = int(net.network_address) ^ (1 << (width - net.prefixlen))
            out.append(_net(net.version, flipped, net.prefixlen))
        elif kind == "child" and net.prefixlen < width:
            extra = draw(st.integers(1, min(8, width - net.prefixlen)))
            offset = draw(st.integers(0, (1 << extra) - 1)) << (width - net.prefixlen - extra)
            out.append(_net(net.version, int(net.network_address) + offset, net.prefixlen + extra))
        elif kind == "parent" and net.prefixlen > 0:
            out.append(net.supernet(draw(st.integers(1, min(4, net.prefixlen)))))
        elif kind == "split" and net.prefixlen < width:
            # Both halves (or all quarters) of a prefix: they must merge back into it.
            extra = draw(st.integers(1, min(3, width - net.prefixlen)))
            out.extend(net.subnets(prefixlen_diff=extra))
    return draw(st.permutations(out))


# --------------------------------------------------------------------------
# Helpers


def _covered(nets, addr) -> bool:
    return any(addr in n for n in nets if n.version == addr.version)


class _Lookup:
    """Membership in a sorted, non-overlapping prefix list by bisection."""

    def __init__(self, nets):
        self.by_version = {}
        for v in (4, 6):
            fam = [n for n in nets if n.version == v]
            self.by_version[v] = ([int(n.network_address) for n in fam], fam)

    def __contains__(self, addr) -> bool:
        starts, fam = self.by_version[addr.version]
        i = bisect.bisect_right(starts, int(addr)) - 1
        return i >= 0 and addr in fam[i]


def _probe_addresses(nets, extra_ints, version_of):
    """Edges of every input prefix and their neighbours, plus random addresses."""
    probes = []
    for n in nets:
        top = (1 << n.max_prefixlen) - 1
        lo, hi = int(n.network_address), int(n.broadcast_address)
        for value in (lo, hi, lo - 1, hi + 1, (lo + hi) // 2):
            if 0 <= value <= top:
                probes.append(ipaddress.IPv6Address(value) if n.version == 6 else ipaddress.IPv4Address(value))
    for value, version in zip(extra_ints, version_of):
        probes.append(ipaddress.IPv4Address(value & 0xFFFFFFFF) if version == 4 else ipaddress.IPv6Address(value))
    return probes


# --------------------------------------------------------------------------
# compile_prefixes (native) against the ipaddress reference


@FAST
@given(nets=networks())
@example(nets=[ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("10.0.0.0/8")])
@example(nets=[ipaddress.ip_network("::/0"), ipaddress.ip_network("::/0")])
@example(nets=[ipaddress.ip_network("10.0.0.0/25"), ipaddress.ip_network("10.0.0.128/26"),
               ipaddress.ip_network("10.0.0.192/26"), ipaddress.ip_network("10.0.1.0/24")])
@example(nets=[ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1")])
@example(nets=[ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1"), ipaddress.ip_network("1.2.3.4/32")])
@example(nets=[ipaddress.ip_network("255.255.255.255/32"), ipaddress.ip_network("255.255.255.254/32"),
               ipaddress.ip_network("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"),
               ipaddress.ip_network("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/128")])
def test_compile_prefixes_matches_reference(nets):
    assert compile_prefixes(nets) == compile_prefixes_reference(nets)


@FAST
@given(nets=networks(), extra=st.lists(st.integers(0, 2**128 - 1), max_size=40),
       versions=st.lists(st.sampled_from([4, 6]), min_size=40, max_size=40))
def test_compile_prefixes_is_minimal_disjoint_and_covers_the_same_addresses(nets, extra, versions):
    result = compile_prefixes(nets)

    # Families: IPv4 first, then IPv6; each sorted by address and non-overlapping.
    versions_seen = [n.version for n in result]
    assert versions_seen == sorted(versions_seen)
    for v in (4, 6):
        fam = [n for n in result if n.version == v]
        for a, b in zip(fam, fam[1:]):
            assert int(a.broadcast_address) < int(b.network_address), (a, b)
        # Minimal: with disjoint prefixes, a mergeable set always has a sibling pair.
        present = set(fam)
        for n in fam:
            if n.prefixlen:
                sibling = _net(v, int(n.network_address) ^ (1 << (n.max_prefixlen - n.prefixlen)), n.prefixlen)
                assert sibling not in present, (n, sibling)
    # Host bits are always clear (the constructor would have refused otherwise).
    for n in result:
        assert NET_CLS[n.version]((n.network_address, n.prefixlen)) == n

    lookup = _Lookup(result)
    for addr in _probe_addresses(nets, extra, versions):
        assert (addr in lookup) == _covered(nets, addr), addr


def test_compile_prefixes_empty_and_single_family():
    assert compile_prefixes([]) == []
    assert compile_prefixes([ipaddress.ip_network("2001:db8::/32")]) == [ipaddress.ip_network("2001:db8::/32")]
    assert compile_prefixes([ipaddress.ip_network("192.0.2.7/32")]) == [ipaddress.ip_network("192.0.2.7/32")]


def test_compile_prefixes_mixed_families_v4_first():
    nets = [ipaddress.ip_network(n) for n in ("2001:db8::/33", "10.1.0.0/16", "2001:db8:8000::/33", "10.0.0.0/16")]
    assert compile_prefixes(nets) == [ipaddress.ip_network("10.0.0.0/15"), ipaddress.ip_network("2001:db8::/32")]


def test_compile_prefixes_slash_zero_swallows_everything():
    nets = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "0.0.0.0/0", "255.255.255.255/32", "::1/128", "::/0")]
    assert compile_prefixes(nets) == [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]


# --------------------------------------------------------------------------
# agent._prefixes.compile_prefixes directly: normalisation and argument errors


def test_native_clears_host_bits_and_merges():
    out = _prefixes.compile_prefixes([(bytes([10, 0, 0, 1]), 8), (bytes([11, 255, 255, 255]), 8)])
    assert out == [(bytes([10, 0, 0, 0]), 7)]
    v6 = ipaddress.IPv6Address("2001:db8::ffff").packed
    assert _prefixes.compile_prefixes([(v6, 32)]) == [(ipaddress.IPv6Address("2001:db8::").packed, 32)]
    assert _prefixes.compile_prefixes([]) == []
    assert _prefixes.compile_prefixes([(b"\xff" * 4, 0)]) == [(b"\0" * 4, 0)]
    assert _prefixes.compile_prefixes([(b"\xff" * 16, 128)]) == [(b"\xff" * 16, 128)]


@pytest.mark.parametrize("entries", [
    [(b"\0" * 4, 8), (b"\0" * 16, 8)],          # IPv4 then IPv6
    [(b"\0" * 16, 8), (b"\0" * 4, 8)],          # IPv6 then IPv4
    [(b"\0" * 4, 8), (b"\0" * 4, 9), (b"\0" * 16, 64)],
], ids=["v4-then-v6", "v6-then-v4", "late-v6"])
def test_native_rejects_mixed_families(entries):
    with pytest.raises(ValueError, match="one family"):
        _prefixes.compile_prefixes(entries)


@pytest.mark.parametrize("raw", [b"", b"\0", b"\0" * 3, b"\0" * 5, b"\0" * 8, b"\0" * 15, b"\0" * 17, b"\0" * 32])
def test_native_rejects_bad_address_lengths(raw):
    with pytest.raises(ValueError, match="4 .IPv4. or 16 .IPv6. bytes"):
        _prefixes.compile_prefixes([(raw, 0)])


@pytest.mark.parametrize("raw,length", [
    (b"\0" * 4, -1), (b"\0" * 4, 33), (b"\0" * 4, 128), (b"\0" * 4, 2**31 - 1),
    (b"\0" * 16, -1), (b"\0" * 16, 129), (b"\0" * 16, -(2**31)),
])
def test_native_rejects_bad_prefix_lengths(raw, length):
    with pytest.raises(ValueError, match=f"prefix length {length} is outside 0..{len(raw) * 8}"):
        _prefixes.compile_prefixes([(raw, length)])
    # Also when the bad entry is not the first one.
    with pytest.raises(ValueError, match="prefix length"):
        _prefixes.compile_prefixes([(raw, 0), (raw, length)])


@pytest.mark.parametrize("raw,length", [(b"\0" * 4, 0), (b"\0" * 4, 32), (b"\0" * 16, 0), (b"\0" * 16, 128)])
def test_native_accepts_boundary_prefix_lengths(raw, length):
    assert _prefixes.compile_prefixes([(raw, length)]) == [(raw, length)]


# --------------------------------------------------------------------------
# sum_percpu (Cython) against the reference


U64 = 2**64 - 1
_u64 = st.one_of(st.integers(0, U64), st.integers(U64 - 1000, U64), st.integers(0, 1000),
                 st.sampled_from([0, 1, 2**63, 2**63 - 1, U64]))


@st.composite
def percpu_buffers(draw, max_fields=44):
    entries = draw(st.integers(0, 5))
    ncpus = draw(st.integers(1, 8))
    fields = draw(st.integers(1, max_fields))
    n = entries * ncpus * fields
    if draw(st.booleans()):
        values = draw(st.lists(_u64, min_size=n, max_size=n))
    else:  # mostly huge values: sums wrap around
        values = [draw(st.sampled_from([U64, U64 - 1, 2**63])) for _ in range(n)]
    raw = struct.pack(f"={n}Q", *values)
    trailing = draw(st.binary(max_size=16))   # longer buffers are fine: only the prefix is read
    return raw + trailing, entries, ncpus, fields


@FAST
@given(case=percpu_buffers())
def test_sum_percpu_matches_reference(case):
    raw, entries, ncpus, fields = case
    got = _counters.sum_percpu(raw, entries, ncpus, fields)
    assert got == sum_percpu_reference(raw, entries, ncpus, fields)
    assert len(got) == entries and all(len(row) == fields for row in got)
    assert all(0 <= v <= U64 for row in got for v in row)


def test_sum_percpu_wraps_at_2_64():
    raw = struct.pack("=4Q", U64, 5, U64, 7)  # 1 entry, 2 CPUs, 2 fields
    assert _counters.sum_percpu(raw, 1, 2, 2) == [[U64 - 1, 12]]
    raw = struct.pack("=8Q", *([U64] * 8))    # 1 entry, 8 CPUs, 1 field: 8 * (2**64 - 1) mod 2**64
    assert _counters.sum_percpu(raw, 1, 8, 1) == [[2**64 - 8]]


def test_sum_percpu_layout_entry_major_then_cpu():
    # entry 0: cpu0 [1, 2], cpu1 [10, 20]; entry 1: cpu0 [100, 200], cpu1 [1000, 2000]
    raw = struct.pack("=8Q", 1, 2, 10, 20, 100, 200, 1000, 2000)
    assert _counters.sum_percpu(raw, 2, 2, 2) == [[11, 22], [1100, 2200]]
    assert _counters.sum_percpu(raw, 0, 2, 2) == []
    assert _counters.sum_percpu(b"", 0, 4, 44) == []


def test_sum_percpu_real_counter_block_size_and_64_fields():
    fields = abi.COUNTER_FIELDS
    assert fields == 44
    raw = struct.pack(f"={3 * fields}Q", *range(3 * fields))
    assert _counters.sum_percpu(raw, 1, 3, fields) == sum_percpu_reference(raw, 1, 3, fields)
    raw = struct.pack("=128Q", *range(128))
    assert _counters.sum_percpu(raw, 1, 2, 64) == [[i + (64 + i) for i in range(64)]]


@pytest.mark.parametrize("entries,ncpus,fields", [(1, 1, 1), (1, 2, 44), (3, 8, 44), (2, 1, 64)])
def test_sum_percpu_rejects_short_buffer(entries, ncpus, fields):
    need = entries * ncpus * fields * 8
    with pytest.raises(ValueError, match="too short"):
        _counters.sum_percpu(bytes(need - 1), entries, ncpus, fields)
    with pytest.raises(ValueError, match="too short"):
        _counters.sum_percpu(b"", entries, ncpus, fields)
    assert len(_counters.sum_percpu(bytes(need), entries, ncpus, fields)) == entries


@pytest.mark.parametrize("fields", [65, 100, 1000])
def test_sum_percpu_rejects_more_than_64_fields(fields):
    with pytest.raises(ValueError, match="at most 64 fields"):
        _counters.sum_percpu(bytes(fields * 8), 1, 1, fields)
