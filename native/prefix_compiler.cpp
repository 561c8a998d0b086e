// Block lists, natively: a text parser for operator block-list files and a
// compiled prefix set (PrefixSet) with set algebra, LPM-trie key export and
// a versioned on-disk form.
//
// Compiling normalises prefixes (host bits cleared), drops duplicates and
// covered prefixes and merges siblings into their parent, so the result is
// the smallest prefix set matching exactly the same addresses. That minimal
// set is unique, which is what makes PrefixSet equality and diff() exact.
//
// agent/blocklist.py holds the pure-Python reference (ipaddress) that the
// parser and the compiler must match; the address grammar below is a port of
// ipaddress's (CPython 3.11), so both accept and reject the same strings.
#include <pybind11/pybind11.h>

#include "entry_table.h"
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

using u128 = unsigned __int128;

// --------------------------------------------------------------------------
// Address arithmetic, generic over the family's integer (uint32_t or u128).
// Addresses are integers in host order; bytes on the wire are big endian.

template <class A> constexpr int width_of();
template <> constexpr int width_of<uint32_t>() { return 32; }
template <> constexpr int width_of<u128>() { return 128; }

template <class A> inline A mask_of(int len) {
    constexpr int W = width_of<A>();
    return len == 0 ? A(0) : A(A(~A(0)) << (W - len));
}

inline int ctz_of(uint32_t x) { return x ? __builtin_ctz(x) : 32; }
inline int ctz_of(u128 x) {
    uint64_t lo = static_cast<uint64_t>(x), hi = static_cast<uint64_t>(x >> 64);
    if (lo)
        return __builtin_ctzll(lo);
    return hi ? 64 + __builtin_ctzll(hi) : 128;
}
// Number of significant bits (0 for 0).
inline int bitlen_of(uint32_t x) { return x ? 32 - __builtin_clz(x) : 0; }
inline int bitlen_of(u128 x) {
    uint64_t lo = static_cast<uint64_t>(x), hi = static_cast<uint64_t>(x >> 64);
    if (hi)
        return 128 - __builtin_clzll(hi);
    return lo ? 64 - __builtin_clzll(lo) : 0;
}

template <class A> struct Pfx {
    A addr;       // network address, host bits clear once normalised
    uint8_t len;  // 0..width
};
using P4 = Pfx<uint32_t>;
using P6 = Pfx<u128>;

template <class A> inline bool operator==(const Pfx<A> &a, const Pfx<A> &b) {
    return a.addr == b.addr && a.len == b.len;
}
template <class A> inline bool pfx_less(const Pfx<A> &a, const Pfx<A> &b) {
    return a.addr != b.addr ? a.addr < b.addr : a.len < b.len;
}

template <class A> inline bool covers(const Pfx<A> &outer, const Pfx<A> &inner) {
    return outer.len <= inner.len && (inner.addr & mask_of<A>(outer.len)) == outer.addr;
}

// Two prefixes of one length that differ only in their last bit make their parent.
template <class A> inline bool siblings(const Pfx<A> &a, const Pfx<A> &b) {
    if (a.len != b.len || a.len == 0)
        return false;
    A last_bit = A(A(1) << (width_of<A>() - a.len));
    return (a.addr & last_bit) == 0 && b.addr == (a.addr | last_bit);
}

template <class A> inline A last_address(const Pfx<A> &p) { return p.addr | A(~mask_of<A>(p.len)); }

// The minimal-set pass over normalised prefixes sorted by (address, length),
// in place. Sorted by start address, a prefix can only be covered by the last
// one kept, and a merged parent can only be a sibling of the one before it.
template <class A> void reduce_sorted(std::vector<Pfx<A>> &v) {
    std::size_t kept = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
        const Pfx<A> p = v[i];
        if (kept && covers(v[kept - 1], p))
            continue;
        v[kept++] = p;
        while (kept >= 2 && siblings(v[kept - 2], v[kept - 1])) {
            v[kept - 2].len -= 1;
            --kept;
        }
    }
    v.resize(kept);
}

// LSD radix sort of IPv4 prefixes by the 40-bit key (address, length): much
// faster than a comparison sort for the million-entry lists this is for.
void sort_v4(std::vector<P4> &v) {
    if (v.size() < 4096) {
        std::sort(v.begin(), v.end(), [](const P4 &a, const P4 &b) { return pfx_less(a, b); });
        return;
    }
    std::vector<uint64_t> keys(v.size()), tmp(v.size());
    for (std::size_t i = 0; i < v.size(); ++i)
        keys[i] = (uint64_t(v[i].addr) << 8) | v[i].len;
    // 16 + 16 + 8 bits: three passes.
    const int shifts[3] = {0, 8, 24};
    const int bits[3] = {8, 16, 16};
    std::vector<std::size_t> count(1 << 16);
    for (int pass = 0; pass < 3; ++pass) {
        const int shift = shifts[pass];
        const uint64_t mask = (uint64_t(1) << bits[pass]) - 1;
        std::fill(count.begin(), count.begin() + (mask + 1), 0);
        for (uint64_t k : keys)
            ++count[(k >> shift) & mask];
        // Skip passes where every key has the same digit.
        if (count[(keys[0] >> shift) & mask] == keys.size())
            continue;
        std::size_t sum = 0;
        for (uint64_t d = 0; d <= mask; ++d) {
            std::size_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (uint64_t k : keys)
            tmp[count[(k >> shift) & mask]++] = k;
        keys.swap(tmp);
    }
    for (std::size_t i = 0; i < v.size(); ++i)
        v[i] = P4{static_cast<uint32_t>(keys[i] >> 8), static_cast<uint8_t>(keys[i] & 0xff)};
}

void sort_prefixes(std::vector<P4> &v) { sort_v4(v); }
void sort_prefixes(std::vector<P6> &v) {
    std::sort(v.begin(), v.end(), [](const P6 &a, const P6 &b) { return pfx_less(a, b); });
}

// Normalise (clear host bits), sort and reduce to the minimal set.
template <class A> void compile_in_place(std::vector<Pfx<A>> &v) {
    for (auto &p : v)
        p.addr &= mask_of<A>(p.len);
    sort_prefixes(v);
    reduce_sorted(v);
}

// Minimal prefixes covering exactly [start, end] (start <= end), in order.
template <class A> void add_range(A start, A end, std::vector<Pfx<A>> &out) {
    constexpr int W = width_of<A>();
    for (;;) {
        int k = ctz_of(start);  // alignment of start: block sizes up to 2^k
        const A span = end - start;  // addresses left - 1
        const int fit = span == A(~A(0)) ? W : bitlen_of(A(span + 1)) - 1;
        if (fit < k)
            k = fit;
        out.push_back({start, static_cast<uint8_t>(W - k)});
        if (k == W)
            return;
        const A last = start + A(A(A(1) << k) - 1);
        if (last == end)
            return;
        start = last + 1;
    }
}

// --------------------------------------------------------------------------
// Bytes <-> integers

inline uint32_t load_be32(const unsigned char *p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}
inline void store_be32(unsigned char *p, uint32_t v) {
    p[0] = static_cast<unsigned char>(v >> 24);
    p[1] = static_cast<unsigned char>(v >> 16);
    p[2] = static_cast<unsigned char>(v >> 8);
    p[3] = static_cast<unsigned char>(v);
}
inline u128 load_be128(const unsigned char *p) {
    u128 v = 0;
    for (int i = 0; i < 16; ++i)
        v = (v << 8) | p[i];
    return v;
}
inline void store_be128(unsigned char *p, u128 v) {
    for (int i = 15; i >= 0; --i) {
        p[i] = static_cast<unsigned char>(v);
        v >>= 8;
    }
}
inline void store_le32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; ++i)
        p[i] = static_cast<unsigned char>(v >> (8 * i));
}
inline uint32_t load_le32(const unsigned char *p) {
    return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

// A new bytes object of `size` bytes for the caller to fill before sharing it.
py::bytes new_bytes(std::size_t size, unsigned char *&data) {
    PyObject *obj = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
    if (!obj)
        throw py::error_already_set();
    data = reinterpret_cast<unsigned char *>(PyBytes_AS_STRING(obj));
    return py::reinterpret_steal<py::bytes>(obj);
}

// --------------------------------------------------------------------------
// The compiled prefix set

struct PrefixSet {
    std::vector<P4> v4;  // minimal, sorted by address
    std::vector<P6> v6;

    std::size_t size() const { return v4.size() + v6.size(); }
};
using PrefixSetPtr = std::shared_ptr<PrefixSet>;

const char *const LENGTH_ERROR = "addresses must be 4 (IPv4) or 16 (IPv6) bytes";

std::string prefix_length_error(long long len, int width) {
    return "prefix length " + std::to_string(len) + " is outside 0.." + std::to_string(width);
}

// One (bytes, int) item of a Python list.
void read_entry(PyObject *item, const unsigned char *&raw, Py_ssize_t &size, long long &len) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2)
        throw py::type_error("entries must be (address bytes, prefix length) tuples");
    PyObject *addr = PyTuple_GET_ITEM(item, 0), *plen = PyTuple_GET_ITEM(item, 1);
    if (!PyBytes_Check(addr) || !PyLong_Check(plen))
        throw py::type_error("entries must be (address bytes, prefix length) tuples");
    raw = reinterpret_cast<const unsigned char *>(PyBytes_AS_STRING(addr));
    size = PyBytes_GET_SIZE(addr);
    int overflow = 0;
    len = PyLong_AsLongLongAndOverflow(plen, &overflow);
    if (overflow)
        len = overflow > 0 ? (1LL << 40) : -(1LL << 40);
    else if (len == -1 && PyErr_Occurred())
        throw py::error_already_set();
}

PrefixSetPtr prefix_set_from_list(const py::iterable &entries) {
    auto set = std::make_shared<PrefixSet>();
    py::list items(entries);  // one pass over any iterable
    const Py_ssize_t n = PyList_GET_SIZE(items.ptr());
    for (Py_ssize_t i = 0; i < n; ++i) {
        const unsigned char *raw;
        Py_ssize_t size;
        long long len;
        read_entry(PyList_GET_ITEM(items.ptr(), i), raw, size, len);
        if (size != 4 && size != 16)
            throw py::value_error(LENGTH_ERROR);
        const int width = static_cast<int>(size * 8);
        if (len < 0 || len > width)
            throw py::value_error(prefix_length_error(len, width));
        if (size == 4)
            set->v4.push_back({load_be32(raw), static_cast<uint8_t>(len)});
        else
            set->v6.push_back({load_be128(raw), static_cast<uint8_t>(len)});
    }
    py::gil_scoped_release release;
    compile_in_place(set->v4);
    compile_in_place(set->v6);
    return set;
}

py::list prefix_set_to_list(const PrefixSet &set) {
    PyObject *list = PyList_New(static_cast<Py_ssize_t>(set.size()));
    if (!list)
        throw py::error_already_set();
    py::list out = py::reinterpret_steal<py::list>(list);
    Py_ssize_t i = 0;
    unsigned char buf[16];
    auto add = [&](const unsigned char *bytes, int nbytes, int len) {
        PyObject *b = PyBytes_FromStringAndSize(reinterpret_cast<const char *>(bytes), nbytes);
        PyObject *l = b ? PyLong_FromLong(len) : nullptr;
        PyObject *t = l ? PyTuple_New(2) : nullptr;
        if (!t) {
            Py_XDECREF(b);
            Py_XDECREF(l);
            throw py::error_already_set();
        }
        PyTuple_SET_ITEM(t, 0, b);
        PyTuple_SET_ITEM(t, 1, l);
        PyList_SET_ITEM(list, i++, t);
    };
    for (const P4 &p : set.v4) {
        store_be32(buf, p.addr);
        add(buf, 4, p.len);
    }
    for (const P6 &p : set.v6) {
        store_be128(buf, p.addr);
        add(buf, 16, p.len);
    }
    return out;
}

template <class A> std::vector<Pfx<A>> merged(const std::vector<Pfx<A>> &a, const std::vector<Pfx<A>> &b) {
    std::vector<Pfx<A>> out;
    out.reserve(a.size() + b.size());
    std::merge(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out),
               [](const Pfx<A> &x, const Pfx<A> &y) { return pfx_less(x, y); });
    reduce_sorted(out);
    return out;
}


// Exact entry-level difference of two sorted sets.
template <class A>
void diff_sorted(const std::vector<Pfx<A>> &old_set, const std::vector<Pfx<A>> &new_set,
                 std::vector<Pfx<A>> &added, std::vector<Pfx<A>> &removed) {
    std::size_t i = 0, j = 0;
    while (i < old_set.size() || j < new_set.size()) {
        if (j == new_set.size() || (i < old_set.size() && pfx_less(old_set[i], new_set[j]))) {
            removed.push_back(old_set[i++]);
        } else if (i == old_set.size() || pfx_less(new_set[j], old_set[i])) {
            added.push_back(new_set[j++]);
        } else {
            ++i;
            ++j;
        }
    }
}

std::pair<PrefixSetPtr, PrefixSetPtr> prefix_set_diff(const PrefixSet &self, const PrefixSet &newer) {
    auto added = std::make_shared<PrefixSet>(), removed = std::make_shared<PrefixSet>();
    py::gil_scoped_release release;
    diff_sorted(self.v4, newer.v4, added->v4, removed->v4);
    diff_sorted(self.v6, newer.v6, added->v6, removed->v6);
    return {added, removed};
}

// --------------------------------------------------------------------------
// Incremental set algebra for small changes to large sets (list deltas): the
// cost is a few binary searches per changed entry plus one bulk copy of the
// large set, never a per-entry pass in between.

// Pushes `p` (in sorted order) onto a minimal `out`, as reduce_sorted would.
// True when `p` was kept as it is: neither covered nor merged into a parent.
template <class A> bool push_reduced(std::vector<Pfx<A>> &out, const Pfx<A> &p) {
    if (!out.empty() && covers(out.back(), p))
        return false;
    out.push_back(p);
    bool merged_any = false;
    while (out.size() >= 2 && siblings(out[out.size() - 2], out.back())) {
        out[out.size() - 2].len -= 1;
        out.pop_back();
        merged_any = true;
    }
    return !merged_any;
}

// Union of a large minimal set and a small one: the large one is copied in
// runs between the small one's entries. After a small entry only the large
// entries up to the first one kept as it is need the reduce step: two
// entries of the large set can neither cover nor merge with each other.
template <class A>
std::vector<Pfx<A>> merged_lopsided(const std::vector<Pfx<A>> &big, const std::vector<Pfx<A>> &small) {
    std::vector<Pfx<A>> out;
    out.reserve(big.size() + small.size());
    auto less = [](const Pfx<A> &x, const Pfx<A> &y) { return pfx_less(x, y); };
    std::size_t i = 0;
    bool clean = true;
    for (const Pfx<A> &s : small) {
        const std::size_t k = static_cast<std::size_t>(
            std::lower_bound(big.begin() + static_cast<std::ptrdiff_t>(i), big.end(), s, less) - big.begin());
        while (i < k && !clean)
            clean = push_reduced(out, big[i++]);
        out.insert(out.end(), big.begin() + static_cast<std::ptrdiff_t>(i), big.begin() + static_cast<std::ptrdiff_t>(k));
        i = k;
        push_reduced(out, s);
        clean = false;
    }
    while (i < big.size() && !clean)
        clean = push_reduced(out, big[i++]);
    out.insert(out.end(), big.begin() + static_cast<std::ptrdiff_t>(i), big.end());
    return out;
}

template <class A> std::vector<Pfx<A>> united(const std::vector<Pfx<A>> &a, const std::vector<Pfx<A>> &b) {
    if (b.size() * 64 < a.size())
        return merged_lopsided(a, b);
    if (a.size() * 64 < b.size())
        return merged_lopsided(b, a);
    return merged(a, b);
}

// The addresses of `self` that are not in `other` (both minimal, so their
// entries are disjoint and their last addresses ascend with their first).
// Runs of `self` before the next entry of `other` are copied in bulk, runs of
// `other` before the next entry of `self` are skipped by binary search. The
// result is minimal without a reduce pass: a piece cut from an entry has its
// parent inside that entry, so it cannot merge with a piece of another.
template <class A> std::vector<Pfx<A>> subtracted(const std::vector<Pfx<A>> &self, const std::vector<Pfx<A>> &other) {
    std::vector<Pfx<A>> out;
    out.reserve(self.size());
    std::size_t i = 0, j = 0;
    const std::size_t n = self.size(), m = other.size();
    while (i < n) {
        if (j == m) {
            out.insert(out.end(), self.begin() + static_cast<std::ptrdiff_t>(i), self.end());
            break;
        }
        const Pfx<A> e = self[i], o = other[j];
        const A e_last = last_address(e);
        if (e_last < o.addr) {
            const std::size_t k = static_cast<std::size_t>(
                std::partition_point(self.begin() + static_cast<std::ptrdiff_t>(i), self.end(),
                                     [&](const Pfx<A> &x) { return last_address(x) < o.addr; }) - self.begin());
            out.insert(out.end(), self.begin() + static_cast<std::ptrdiff_t>(i), self.begin() + static_cast<std::ptrdiff_t>(k));
            i = k;
            continue;
        }
        if (last_address(o) < e.addr) {
            j = static_cast<std::size_t>(
                std::partition_point(other.begin() + static_cast<std::ptrdiff_t>(j), other.end(),
                                     [&](const Pfx<A> &x) { return last_address(x) < e.addr; }) - other.begin());
            continue;
        }
        A cur = e.addr;
        bool consumed = false;
        while (j < m && other[j].addr <= e_last) {
            const Pfx<A> c = other[j];
            if (c.addr > cur)
                add_range(cur, A(c.addr - 1), out);
            const A c_last = last_address(c);
            if (c_last >= e_last) {
                consumed = true;  // c may reach into the next entries of self: keep it
                break;
            }
            cur = A(c_last + 1);
            ++j;
        }
        if (!consumed)
            add_range(cur, e_last, out);
        ++i;
    }
    return out;
}

// The entries of `set` that share an address with the prefix `r`: one entry
// covering r, or the entries inside r. With `clip`, a covering entry is
// given as r itself (the set restricted to r).
template <class A> std::vector<Pfx<A>> overlapping_of(const std::vector<Pfx<A>> &set, Pfx<A> r, bool clip) {
    r.addr &= mask_of<A>(r.len);
    std::vector<Pfx<A>> out;
    auto lo = std::partition_point(set.begin(), set.end(), [&](const Pfx<A> &x) { return x.addr < r.addr; });
    const Pfx<A> *cover = nullptr;
    if (lo != set.begin() && covers(*(lo - 1), r))
        cover = &*(lo - 1);
    else if (lo != set.end() && covers(*lo, r))
        cover = &*lo;
    if (cover) {
        out.push_back(clip ? r : *cover);
        return out;
    }
    const A r_last = last_address(r);
    for (auto it = lo; it != set.end() && it->addr <= r_last; ++it)
        out.push_back(*it);
    return out;
}

// The addresses of `set` inside `regions` (minimal): the clipped entries of
// each region in turn, so a small `regions` costs a binary search each.
template <class A>
std::vector<Pfx<A>> restricted_of(const std::vector<Pfx<A>> &set, const std::vector<Pfx<A>> &regions) {
    std::vector<Pfx<A>> out;
    for (const Pfx<A> &r : regions) {
        std::vector<Pfx<A>> part = overlapping_of(set, r, true);
        out.insert(out.end(), part.begin(), part.end());
    }
    reduce_sorted(out);
    return out;
}

PrefixSetPtr prefix_set_restricted(const PrefixSet &self, const PrefixSet &regions) {
    auto out = std::make_shared<PrefixSet>();
    py::gil_scoped_release release;
    out->v4 = restricted_of(self.v4, regions.v4);
    out->v6 = restricted_of(self.v6, regions.v6);
    return out;
}

PrefixSetPtr prefix_set_subtract(const PrefixSet &self, const PrefixSet &other) {
    auto out = std::make_shared<PrefixSet>();
    py::gil_scoped_release release;
    out->v4 = subtracted(self.v4, other.v4);
    out->v6 = subtracted(self.v6, other.v6);
    return out;
}

PrefixSetPtr prefix_set_overlapping(const PrefixSet &self, const py::bytes &address, int prefixlen, bool clip) {
    const std::string raw = address;
    auto out = std::make_shared<PrefixSet>();
    const auto *bytes = reinterpret_cast<const unsigned char *>(raw.data());
    if (raw.size() == 4) {
        if (prefixlen < 0 || prefixlen > 32)
            throw py::value_error(prefix_length_error(prefixlen, 32));
        out->v4 = overlapping_of(self.v4, P4{load_be32(bytes), static_cast<uint8_t>(prefixlen)}, clip);
    } else if (raw.size() == 16) {
        if (prefixlen < 0 || prefixlen > 128)
            throw py::value_error(prefix_length_error(prefixlen, 128));
        out->v6 = overlapping_of(self.v6, P6{load_be128(bytes), static_cast<uint8_t>(prefixlen)}, clip);
    } else {
        throw py::value_error(LENGTH_ERROR);
    }
    return out;
}

PrefixSetPtr prefix_set_union(const PrefixSetPtr &self, const PrefixSetPtr &other) {
    // A set is immutable, so the union with an empty set is the other set
    // itself, not a copy (a million-prefix list united with a policy that
    // blocks nothing of its own: 8 MB less while its tables are built).
    if (other->v4.empty() && other->v6.empty())
        return self;
    if (self->v4.empty() && self->v6.empty())
        return other;
    auto out = std::make_shared<PrefixSet>();
    py::gil_scoped_release release;
    out->v4 = united(self->v4, other->v4);
    out->v6 = united(self->v6, other->v6);
    return out;
}

bool prefix_set_equal(const PrefixSet &a, const PrefixSet &b) { return a.v4 == b.v4 && a.v6 == b.v6; }

std::size_t prefix_set_hash(const PrefixSet &set) {
    uint64_t h = 1469598103934665603ULL;
    auto mix = [&h](uint64_t v) {
        h ^= v;
        h *= 1099511628211ULL;
    };
    mix(set.v4.size());
    for (const P4 &p : set.v4)
        mix((uint64_t(p.addr) << 8) | p.len);
    mix(set.v6.size());
    for (const P6 &p : set.v6) {
        mix(static_cast<uint64_t>(p.addr >> 64));
        mix(static_cast<uint64_t>(p.addr));
        mix(p.len);
    }
    return static_cast<std::size_t>(h);
}

// --------------------------------------------------------------------------
// LPM trie keys: the kernel's struct bpf_lpm_trie_key layout, prefixlen
// (native endian) then the data matched bit by bit (network order):
//   v6, struct ew_lpm_v6_key        { __u32 prefixlen; __u8 addr[16]; }                    20 bytes
//   v6, struct ew_tenant_lpm_v6_key { __u32 prefixlen; __u8 tenant_id[4]; __u8 addr[16]; } 24 bytes
//   v4, the same with addr[4]                                                       8 / 12 bytes
// With a tenant, prefixlen counts the 32 tenant bits too. The v6 structs are
// in native/include/edgewarden_abi.h; the datapath keeps IPv4 lists in
// two-level node tables (agent/datapath/blocktables.py), so the v4 keys serve
// plain BPF LPM tries.

std::optional<uint32_t> tenant_arg(const py::object &tenant_id) {
    if (tenant_id.is_none())
        return std::nullopt;
    if (!PyLong_Check(tenant_id.ptr()) || PyBool_Check(tenant_id.ptr()))
        throw py::type_error("tenant_id must be an int or None");
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(tenant_id.ptr(), &overflow);
    if (v == -1 && PyErr_Occurred())
        throw py::error_already_set();
    if (overflow || v < 0 || v > 0xffffffffLL)
        throw py::value_error("tenant_id must be in 0..4294967295");
    return static_cast<uint32_t>(v);
}

template <class A>
py::bytes lpm_keys(const std::vector<Pfx<A>> &prefixes, const py::object &tenant_id) {
    constexpr int addr_bytes = width_of<A>() / 8;
    const std::optional<uint32_t> tenant = tenant_arg(tenant_id);
    const std::size_t key_size = 4 + (tenant ? 4 : 0) + addr_bytes;
    unsigned char *out;
    py::bytes result = new_bytes(prefixes.size() * key_size, out);
    py::gil_scoped_release release;  // the bytes object is not shared yet
    unsigned char tenant_be[4];
    if (tenant)
        store_be32(tenant_be, *tenant);
    const uint32_t extra = tenant ? 32 : 0;
    for (const auto &p : prefixes) {
        const uint32_t prefixlen = extra + p.len;
        std::memcpy(out, &prefixlen, 4);  // native endian, like the kernel reads it
        unsigned char *addr = out + 4;
        if (tenant) {
            std::memcpy(addr, tenant_be, 4);
            addr += 4;
        }
        if constexpr (addr_bytes == 4)
            store_be32(addr, p.addr);
        else
            store_be128(addr, p.addr);
        out += key_size;
    }
    return result;
}

// --------------------------------------------------------------------------
// Datapath block tables (see struct ew_block_node in edgewarden_abi.h and
// agent/datapath/blocktables.py, whose v4_block_nodes is the reference).
// IPv4: level-16 nodes say "whole /16" or which /24s are full / have a
// level-24 node; level-24 nodes carry one bit per host. Built in one pass:
// the set is minimal and sorted, so node indexes only grow.

constexpr uint32_t BLOCK_LEVEL_16 = 16, BLOCK_LEVEL_24 = 24, BLOCK_NODE_FULL = 1;

struct BlockNodeValue {
    uint32_t flags = 0;
    uint32_t reserved = 0;
    uint64_t a[4] = {0, 0, 0, 0};  // level 16: full /24s; level 24: hosts
    uint64_t b[4] = {0, 0, 0, 0};  // level 16: /24s with a level-24 node
};
static_assert(sizeof(BlockNodeValue) == 72, "struct ew_block_node is 72 bytes");

inline void set_bits(uint64_t words[4], uint32_t first, uint32_t count) {
    for (uint32_t i = first; i < first + count; ++i)
        words[(i >> 6) & 3] |= uint64_t(1) << (i & 63);
}

// Calls emit(level, index, node) for every node of `set`'s IPv4 prefixes,
// in (level 16 index) order with each /16's level-24 nodes before it.
template <class Emit>
void walk_v4_block_nodes(const PrefixSet &set, Emit &&emit) {
    int64_t cur16 = -1, cur24 = -1;
    BlockNodeValue node16, node24;
    auto flush24 = [&]() {
        if (cur24 >= 0)
            emit(BLOCK_LEVEL_24, static_cast<uint32_t>(cur24), node24);
        cur24 = -1;
        node24 = BlockNodeValue{};
    };
    auto flush16 = [&]() {
        if (cur16 >= 0)
            emit(BLOCK_LEVEL_16, static_cast<uint32_t>(cur16), node16);
        cur16 = -1;
        node16 = BlockNodeValue{};
    };
    for (const P4 &p : set.v4) {
        if (p.len <= 16) {
            flush24();
            flush16();
            BlockNodeValue full;
            full.flags = BLOCK_NODE_FULL;
            const uint32_t first = p.addr >> 16, count = uint32_t(1) << (16 - p.len);
            for (uint32_t i = 0; i < count; ++i)
                emit(BLOCK_LEVEL_16, first + i, full);
            continue;
        }
        const uint32_t index16 = p.addr >> 16, index24 = p.addr >> 8;
        if (int64_t(index16) != cur16) {
            flush24();
            flush16();
            cur16 = index16;
        }
        if (p.len <= 24) {
            set_bits(node16.a, index24 & 0xff, uint32_t(1) << (24 - p.len));
        } else {
            set_bits(node16.b, index24 & 0xff, 1);
            if (int64_t(index24) != cur24) {
                flush24();
                cur24 = index24;
            }
            set_bits(node24.a, p.addr & 0xff, uint32_t(1) << (32 - p.len));
        }
    }
    flush24();
    flush16();
}

// How many nodes walk_v4_block_nodes emits: its flushes, without the bitmaps.
std::size_t count_v4_block_nodes(const PrefixSet &set) {
    std::size_t nodes = 0;
    int64_t cur16 = -1, cur24 = -1;
    for (const P4 &p : set.v4) {
        if (p.len <= 16) {
            nodes += (cur24 >= 0) + (cur16 >= 0) + (std::size_t(1) << (16 - p.len));
            cur16 = cur24 = -1;
            continue;
        }
        const int64_t index16 = p.addr >> 16, index24 = p.addr >> 8;
        if (index16 != cur16) {
            nodes += (cur24 >= 0) + (cur16 >= 0);
            cur24 = -1;
            cur16 = index16;
        }
        if (p.len > 24 && index24 != cur24) {
            nodes += cur24 >= 0;
            cur24 = index24;
        }
    }
    return nodes + (cur24 >= 0) + (cur16 >= 0);
}

edgewarden::EntryTable v4_block_entries(const PrefixSet &set, const py::object &tenant_id) {
    const std::optional<uint32_t> tenant = tenant_arg(tenant_id);
    edgewarden::EntryTable table(tenant ? 8 : 4, sizeof(BlockNodeValue));
    // Counted first, so the table is built in exactly its size (a vector
    // grown by doubling holds up to twice a million 76-byte nodes, and
    // three halves more while it moves).
    const std::size_t nodes = count_v4_block_nodes(set);
    table.reserve(nodes);
    walk_v4_block_nodes(set, [&](uint32_t level, uint32_t index, const BlockNodeValue &value) {
        const uint32_t node = (level << 24) | index;
        if (tenant) {
            const uint32_t key[2] = {*tenant, node};
            table.append(key, &value);
        } else {
            table.append(&node, &value);
        }
    });
    if (table.size() != nodes)
        throw std::logic_error("v4_block_entries: the node count and the nodes built disagree");
    table.seal();
    return table;
}

edgewarden::EntryTable v6_lpm_entries(const PrefixSet &set, const py::object &tenant_id, const std::string &value) {
    const std::optional<uint32_t> tenant = tenant_arg(tenant_id);
    const std::size_t key_size = 4 + (tenant ? 4 : 0) + 16;
    edgewarden::EntryTable table(key_size, value.size());
    table.reserve(set.v6.size());
    unsigned char key[24];
    for (const P6 &p : set.v6) {
        const uint32_t prefixlen = (tenant ? 32 : 0) + p.len;
        std::memcpy(key, &prefixlen, 4);
        unsigned char *addr = key + 4;
        if (tenant) {
            store_be32(addr, *tenant);
            addr += 4;
        }
        store_be128(addr, p.addr);
        table.append(key, value.data());
    }
    table.seal();
    return table;
}

// --------------------------------------------------------------------------
// Serialised form (all integers little endian, addresses big endian):
//   magic "EWPFXSET" | u32 version (1) | u32 count_v4 | u32 count_v6
//   | count_v4 x (addr[4], len) | count_v6 x (addr[16], len)
//   | u32 CRC-32 (zlib's) of everything before it.
// deserialize() accepts only what serialize() writes: a canonical (minimal,
// sorted) set with a matching checksum.

constexpr char MAGIC[8] = {'E', 'W', 'P', 'F', 'X', 'S', 'E', 'T'};
constexpr uint32_t FORMAT_VERSION = 1;
constexpr std::size_t HEADER_SIZE = 20, TRAILER_SIZE = 4, V4_RECORD = 5, V6_RECORD = 17;

struct Crc32Table {
    uint32_t t[8][256];
    Crc32Table() {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k)
                c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; ++i)
            for (int s = 1; s < 8; ++s)
                t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    }
};

uint32_t crc32(const unsigned char *p, std::size_t n) {
    static const Crc32Table table;
    const auto &t = table.t;
    uint32_t c = 0xffffffffu;
    while (n >= 8) {  // slicing by 8
        uint32_t lo = c ^ load_le32(p), hi = load_le32(p + 4);
        c = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
            t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = t[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

py::bytes prefix_set_serialize(const PrefixSet &set) {
    if (set.v4.size() > 0xffffffffu || set.v6.size() > 0xffffffffu)
        throw py::value_error("too many prefixes to serialise");
    const std::size_t size = HEADER_SIZE + set.v4.size() * V4_RECORD + set.v6.size() * V6_RECORD + TRAILER_SIZE;
    unsigned char *out;
    py::bytes result = new_bytes(size, out);
    py::gil_scoped_release release;
    unsigned char *p = out;
    std::memcpy(p, MAGIC, 8);
    store_le32(p + 8, FORMAT_VERSION);
    store_le32(p + 12, static_cast<uint32_t>(set.v4.size()));
    store_le32(p + 16, static_cast<uint32_t>(set.v6.size()));
    p += HEADER_SIZE;
    for (const P4 &e : set.v4) {
        store_be32(p, e.addr);
        p[4] = e.len;
        p += V4_RECORD;
    }
    for (const P6 &e : set.v6) {
        store_be128(p, e.addr);
        p[16] = e.len;
        p += V6_RECORD;
    }
    store_le32(p, crc32(out, static_cast<std::size_t>(p - out)));
    return result;
}

// Empty string when canonical, else what is wrong.
template <class A> std::string check_canonical(const std::vector<Pfx<A>> &v, const char *family) {
    constexpr int W = width_of<A>();
    auto where = [&](std::size_t i) { return std::string(family) + " entry " + std::to_string(i) + ": "; };
    for (std::size_t i = 0; i < v.size(); ++i) {
        const auto &p = v[i];
        if (p.len > W)
            return where(i) + "prefix length " + std::to_string(p.len) + " > " + std::to_string(W);
        if (p.addr & A(~mask_of<A>(p.len)))
            return where(i) + "host bits set";
        if (i == 0)
            continue;
        const auto &prev = v[i - 1];
        if (!(last_address(prev) < p.addr))
            return where(i) + "out of order or overlapping the previous entry";
        if (siblings(prev, p))
            return where(i) + "mergeable with the previous entry (not a compiled set)";
    }
    return {};
}

PrefixSetPtr prefix_set_deserialize(const py::buffer &data) {
    py::buffer_info info = data.request();
    if (info.ndim != 1 || info.itemsize != 1)
        throw py::value_error("PrefixSet data must be a flat byte buffer");
    const auto *in = static_cast<const unsigned char *>(info.ptr);
    const std::size_t n = static_cast<std::size_t>(info.size);
    auto set = std::make_shared<PrefixSet>();
    std::string error;
    {
        py::gil_scoped_release release;
        if (n < HEADER_SIZE + TRAILER_SIZE) {
            error = "PrefixSet data too short (" + std::to_string(n) + " bytes)";
        } else if (std::memcmp(in, MAGIC, 8) != 0) {
            error = "not a serialised PrefixSet (bad magic)";
        } else if (load_le32(in + 8) != FORMAT_VERSION) {
            error = "unsupported PrefixSet format version " + std::to_string(load_le32(in + 8));
        } else {
            const uint64_t n4 = load_le32(in + 12), n6 = load_le32(in + 16);
            const uint64_t expected = HEADER_SIZE + n4 * V4_RECORD + n6 * V6_RECORD + TRAILER_SIZE;
            if (expected != n) {
                error = "PrefixSet data is " + std::to_string(n) + " bytes, its header says " +
                        std::to_string(expected) + " (truncated or corrupt)";
            } else if (crc32(in, n - TRAILER_SIZE) != load_le32(in + n - TRAILER_SIZE)) {
                error = "PrefixSet checksum mismatch (corrupt data)";
            } else {
                const unsigned char *p = in + HEADER_SIZE;
                set->v4.resize(n4);
                for (auto &e : set->v4) {
                    e = {load_be32(p), p[4]};
                    p += V4_RECORD;
                }
                set->v6.resize(n6);
                for (auto &e : set->v6) {
                    e = {load_be128(p), p[16]};
                    p += V6_RECORD;
                }
                error = check_canonical(set->v4, "IPv4");
                if (error.empty())
                    error = check_canonical(set->v6, "IPv6");
                if (!error.empty())
                    error = "corrupt PrefixSet data: " + error;
            }
        }
    }
    if (!error.empty())
        throw py::value_error(error);
    return set;
}

// --------------------------------------------------------------------------
// The block-list text parser. One entry per line: an address, a CIDR or an
// address range "a-b"; '#' and ';' start comments; the first token is the
// entry and text after it is ignored, except that a '-' between two tokens
// ("a - b") makes them one range rather than silently dropping the range end.

constexpr std::size_t MAX_LINE_BYTES = 1024;
constexpr std::size_t MAX_TEXT_CHARS = 80;

const char *const R_TOO_LONG = "line longer than 1024 bytes";
const char *const R_NUL = "binary data (NUL byte)";
const char *const R_UTF8 = "binary data (invalid UTF-8)";
const char *const R_ADDRESS = "invalid address";
const char *const R_PREFIX_SYNTAX = "invalid prefix length";
const char *const R_PREFIX_V4 = "prefix length out of range for IPv4 (0-32)";
const char *const R_PREFIX_V6 = "prefix length out of range for IPv6 (0-128)";
const char *const R_RANGE_ORDER = "range end before start";
const char *const R_RANGE_MIXED = "range mixes IPv4 and IPv6";
const char *const R_V6_NOT_ALLOWED = "IPv6 entry in an IPv4-only list";
const char *const R_V4_NOT_ALLOWED = "IPv4 entry in an IPv6-only list";

inline bool is_blank(char c) { return c == ' ' || c == '\t'; }
inline bool is_strip(char c) { return c == ' ' || c == '\t' || c == '\r'; }
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }
struct HexTable {
    int8_t v[256];
    constexpr HexTable() : v() {
        for (int c = 0; c < 256; ++c)
            v[c] = c >= '0' && c <= '9' ? int8_t(c - '0')
                   : c >= 'a' && c <= 'f' ? int8_t(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? int8_t(c - 'A' + 10)
                                          : int8_t(-1);
    }
};
constexpr HexTable HEX;
inline int hex_value(char c) { return HEX.v[static_cast<unsigned char>(c)]; }

// ipaddress.IPv4Address's grammar: four dot-separated decimal octets, each
// 1-3 digits, <= 255, no leading zeros.
bool parse_v4(std::string_view s, uint32_t &out) {
    uint32_t v = 0;
    std::size_t i = 0;
    for (int part = 0; part < 4; ++part) {
        const std::size_t start = i;
        unsigned octet = 0;
        while (i < s.size() && is_digit(s[i])) {
            if (i - start == 3)
                return false;
            octet = octet * 10 + unsigned(s[i] - '0');
            ++i;
        }
        const std::size_t digits = i - start;
        if (digits == 0 || (digits > 1 && s[start] == '0') || octet > 255)
            return false;
        v = (v << 8) | octet;
        if (part < 3) {
            if (i >= s.size() || s[i] != '.')
                return false;
            ++i;
        }
    }
    if (i != s.size())
        return false;
    out = v;
    return true;
}

// ipaddress.IPv6Address's grammar (without scope ids), in one pass: a port
// of IPv6Address._ip_int_from_string, which see. The string splits at ':'
// into at least 3 parts; a last part with a '.' is an IPv4 address standing
// for two parts; at most 9 parts; at most one empty interior part ("::"),
// which must stand for at least one group; an empty first (last) part only
// as part of a leading (trailing) "::"; every other part 1-4 hex digits.
bool parse_v6(std::string_view s, u128 &out) {
    const std::size_t n = s.size();
    if (n == 0)
        return false;
    uint32_t value[9];
    bool empty[9];
    int parts = 0, split_parts;  // after / before replacing an IPv4 suffix
    std::size_t i = 0;
    for (;;) {
        const std::size_t start = i;
        uint32_t v = 0;
        int h;
        while (i < n && (h = hex_value(s[i])) >= 0) {
            v = (v << 4) | uint32_t(h);
            ++i;
        }
        if (i < n && s[i] == '.') {  // an IPv4 suffix: the rest of the string
            uint32_t v4;
            if (parts + 2 > 9 || !parse_v4(s.substr(start), v4))
                return false;
            split_parts = parts + 1;
            value[parts] = v4 >> 16;
            empty[parts++] = false;
            value[parts] = v4 & 0xffff;
            empty[parts++] = false;
            break;
        }
        if (i - start > 4 || parts == 9)
            return false;
        value[parts] = v;
        empty[parts++] = i == start;
        if (i == n) {
            split_parts = parts;
            break;
        }
        if (s[i] != ':')
            return false;
        ++i;
    }
    if (split_parts < 3)
        return false;
    int skip = -1;
    for (int k = 1; k < parts - 1; ++k) {
        if (empty[k]) {
            if (skip >= 0)
                return false;  // more than one "::"
            skip = k;
        }
    }
    int hi, lo, skipped;
    if (skip >= 0) {
        hi = skip;
        lo = parts - skip - 1;
        if (empty[0] && --hi)
            return false;
        if (empty[parts - 1] && --lo)
            return false;
        skipped = 8 - (hi + lo);
        if (skipped < 1)
            return false;
    } else {
        if (parts != 8 || empty[0] || empty[parts - 1])
            return false;
        hi = parts;
        lo = 0;
        skipped = 0;
    }
    // Every part used below is non-empty: the empty ones are the "::" and
    // the leading/trailing halves of it, none of which is in [0, hi) or
    // [parts - lo, parts).
    u128 v = 0;
    for (int k = 0; k < hi; ++k)
        v = (v << 16) | value[k];
    for (int k = 0; k < skipped; ++k)
        v <<= 16;
    for (int k = parts - lo; k < parts; ++k)
        v = (v << 16) | value[k];
    out = v;
    return true;
}

struct Address {
    int family = 0;  // 4 or 6
    uint32_t v4 = 0;
    u128 v6 = 0;
};

bool parse_address(std::string_view s, Address &a) {
    if (s.find(':') != std::string_view::npos) {
        a.family = 6;
        return parse_v6(s, a.v6);
    }
    a.family = 4;
    return parse_v4(s, a.v4);
}

// Strict UTF-8 (as Python decodes it): no overlongs, surrogates or > U+10FFFF.
bool utf8_valid(const unsigned char *s, std::size_t n) {
    std::size_t i = 0;
    while (i < n) {
        const unsigned c = s[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        std::size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c == 0xE0) {
            need = 2;
            lo = 0xA0;
        } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
            need = 2;
        } else if (c == 0xED) {
            need = 2;
            hi = 0x9F;
        } else if (c == 0xF0) {
            need = 3;
            lo = 0x90;
        } else if (c >= 0xF1 && c <= 0xF3) {
            need = 3;
        } else if (c == 0xF4) {
            need = 3;
            hi = 0x8F;
        } else {
            return false;
        }
        if (n - i - 1 < need || s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (std::size_t k = 2; k <= need; ++k)
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
        i += need + 1;
    }
    return true;
}

// The line for a bad-line report: surrounding blanks stripped, bytes outside
// printable ASCII escaped like Python's bytes repr (\t \r \\ \xNN), at most
// 80 characters (cut at 77 plus "...").
std::string line_text(const char *s, std::size_t n) {
    while (n && is_strip(s[0])) {
        ++s;
        --n;
    }
    while (n && is_strip(s[n - 1]))
        --n;
    std::string out;
    std::size_t cut = 0;
    char piece[5];
    for (std::size_t i = 0; i < n; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        std::size_t len;
        if (c == '\\') {
            piece[0] = piece[1] = '\\';
            len = 2;
        } else if (c == '\t' || c == '\r') {
            piece[0] = '\\';
            piece[1] = c == '\t' ? 't' : 'r';
            len = 2;
        } else if (c >= 0x20 && c < 0x7f) {
            piece[0] = static_cast<char>(c);
            len = 1;
        } else {
            static const char digits[] = "0123456789abcdef";
            piece[0] = '\\';
            piece[1] = 'x';
            piece[2] = digits[c >> 4];
            piece[3] = digits[c & 15];
            len = 4;
        }
        if (out.size() + len <= MAX_TEXT_CHARS - 3)
            cut = out.size() + len;
        out.append(piece, len);
        if (out.size() > MAX_TEXT_CHARS) {
            out.resize(cut);
            out += "...";
            return out;
        }
    }
    return out;
}

struct BadLine {
    std::size_t line;
    const char *reason;
    std::string text;
};

struct Parsed {
    std::size_t lines = 0, entries = 0;
    std::vector<P4> v4;
    std::vector<P6> v6;
    std::vector<BadLine> bad;
};

// The entry of a line's content (comment cut, blanks stripped, not empty).
// Returns a view into `content` or into `buf` when a spaced range is joined.
std::string_view entry_token(std::string_view content, std::string &buf) {
    auto token_end = [&](std::size_t from) {
        std::size_t i = from;
        while (i < content.size() && !is_blank(content[i]))
            ++i;
        return i;
    };
    auto skip_blanks = [&](std::size_t from) {
        while (from < content.size() && is_blank(content[from]))
            ++from;
        return from;
    };
    const std::size_t end1 = token_end(0);
    const std::string_view t1 = content.substr(0, end1);
    const std::size_t rest = skip_blanks(end1);
    const std::size_t dash = t1.find('-');
    if (rest < content.size() && dash == t1.size() - 1) {  // "a- b": t1's only '-' ends it
        const std::size_t end2 = token_end(rest);
        buf.assign(t1);
        buf.append(content.substr(rest, end2 - rest));
        return buf;
    }
    if (dash == std::string_view::npos && rest < content.size() && content[rest] == '-') {  // "a -b", "a - b"
        const std::size_t start2 = skip_blanks(rest + 1);
        const std::size_t end2 = token_end(start2);
        buf.assign(t1);
        buf.push_back('-');
        buf.append(content.substr(start2, end2 - start2));
        return buf;
    }
    return t1;
}

const char *family_error(int family, bool allow_v4, bool allow_v6) {
    if (family == 4 && !allow_v4)
        return R_V4_NOT_ALLOWED;
    if (family == 6 && !allow_v6)
        return R_V6_NOT_ALLOWED;
    return nullptr;
}

// Parses one entry into `out`; nullptr on success, else the reason.
const char *parse_entry(std::string_view entry, bool allow_v4, bool allow_v6, Parsed &out) {
    // A CIDR when there is a '/' (so "a/-1" is a bad length), else a range when there is a '-'.
    const std::size_t slash = entry.find('/');
    const std::size_t dash = slash == std::string_view::npos ? entry.find('-') : std::string_view::npos;
    if (dash != std::string_view::npos) {
        Address a, b;
        if (!parse_address(entry.substr(0, dash), a) || !parse_address(entry.substr(dash + 1), b))
            return R_ADDRESS;
        if (a.family != b.family)
            return R_RANGE_MIXED;
        if (const char *e = family_error(a.family, allow_v4, allow_v6))
            return e;
        if (a.family == 4) {
            if (b.v4 < a.v4)
                return R_RANGE_ORDER;
            add_range(a.v4, b.v4, out.v4);
        } else {
            if (b.v6 < a.v6)
                return R_RANGE_ORDER;
            add_range(a.v6, b.v6, out.v6);
        }
        return nullptr;
    }
    Address a;
    if (!parse_address(entry.substr(0, slash), a))
        return R_ADDRESS;
    if (const char *e = family_error(a.family, allow_v4, allow_v6))
        return e;
    const int width = a.family == 4 ? 32 : 128;
    int len = width;
    if (slash != std::string_view::npos) {
        const std::string_view digits = entry.substr(slash + 1);
        if (digits.empty())
            return R_PREFIX_SYNTAX;
        len = 0;
        for (char c : digits) {
            if (!is_digit(c))
                return R_PREFIX_SYNTAX;
            len = std::min(len * 10 + (c - '0'), 1000);  // saturate: only "> width" matters
        }
        if (len > width)
            return a.family == 4 ? R_PREFIX_V4 : R_PREFIX_V6;
    }
    if (a.family == 4)
        out.v4.push_back({a.v4 & mask_of<uint32_t>(len), static_cast<uint8_t>(len)});
    else
        out.v6.push_back({a.v6 & mask_of<u128>(len), static_cast<uint8_t>(len)});
    return nullptr;
}

// Checks and parses one line (without its '\n'); adds to `out`.
void parse_line(const char *s, std::size_t n, std::size_t line_no, bool allow_v4, bool allow_v6, Parsed &out,
                std::string &buf) {
    if (n && s[n - 1] == '\r')
        --n;
    auto bad = [&](const char *reason) { out.bad.push_back({line_no, reason, line_text(s, n)}); };
    if (n > MAX_LINE_BYTES)
        return bad(R_TOO_LONG);
    // One pass: where the comment starts, and whether the line is not plain ASCII.
    std::size_t comment = n;
    bool nul = false, high = false;
    for (std::size_t i = 0; i < n; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '#' || c == ';') {
            if (comment == n)
                comment = i;
        } else if (c == 0) {
            nul = true;
        } else if (c >= 0x80) {
            high = true;
        }
    }
    if (nul)
        return bad(R_NUL);
    if (high && !utf8_valid(reinterpret_cast<const unsigned char *>(s), n))
        return bad(R_UTF8);
    std::size_t b = 0, e = comment;
    while (b < e && is_strip(s[b]))
        ++b;
    while (e > b && is_strip(s[e - 1]))
        --e;
    if (b == e)
        return;  // blank or comment only
    const std::string_view entry = entry_token(std::string_view(s + b, e - b), buf);
    if (const char *reason = parse_entry(entry, allow_v4, allow_v6, out))
        return bad(reason);
    ++out.entries;
}

Parsed parse_text(const char *data, std::size_t n, bool allow_v4, bool allow_v6) {
    Parsed out;
    const char *p = data, *end = data + n;
    if (n >= 3 && std::memcmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3;  // UTF-8 byte order mark
    std::string buf;
    while (p < end) {
        const char *nl = static_cast<const char *>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
        const char *line_end = nl ? nl : end;
        ++out.lines;
        parse_line(p, static_cast<std::size_t>(line_end - p), out.lines, allow_v4, allow_v6, out, buf);
        p = nl ? nl + 1 : end;
    }
    return out;
}

struct ParseResult {
    std::size_t lines;
    std::size_t entries_read;
    py::list bad_lines;  // [(line number, reason, text)]
    PrefixSetPtr prefixes;
};

ParseResult parse_blocklist(const py::buffer &data, bool allow_v4, bool allow_v6) {
    if (!allow_v4 && !allow_v6)
        throw py::value_error("allow_v4 and allow_v6 cannot both be false");
    py::buffer_info info = data.request();
    if (info.ndim != 1 || info.itemsize != 1)
        throw py::value_error("block list data must be a flat byte buffer");
    Parsed parsed;
    auto set = std::make_shared<PrefixSet>();
    {
        py::gil_scoped_release release;
        parsed = parse_text(static_cast<const char *>(info.ptr), static_cast<std::size_t>(info.size), allow_v4,
                            allow_v6);
        set->v4 = std::move(parsed.v4);
        set->v6 = std::move(parsed.v6);
        compile_in_place(set->v4);
        compile_in_place(set->v6);
    }
    py::list bad;
    for (const BadLine &b : parsed.bad)
        bad.append(py::make_tuple(b.line, b.reason, b.text));
    return ParseResult{parsed.lines, parsed.entries, std::move(bad), std::move(set)};
}

// --------------------------------------------------------------------------
// compile_prefixes: the original list-in, list-out API (one family per call).

template <class A>
std::vector<py::tuple> compile_family(const std::vector<std::pair<std::string, int>> &entries) {
    constexpr int width = width_of<A>();
    std::vector<Pfx<A>> prefixes;
    prefixes.reserve(entries.size());
    for (const auto &[raw, len] : entries) {
        if (raw.size() != width / 8)
            throw std::invalid_argument("all addresses of one compile must be of one family");
        if (len < 0 || len > width)
            throw std::invalid_argument(prefix_length_error(len, width));
        const auto *bytes = reinterpret_cast<const unsigned char *>(raw.data());
        if constexpr (width == 32)
            prefixes.push_back({load_be32(bytes), static_cast<uint8_t>(len)});
        else
            prefixes.push_back({load_be128(bytes), static_cast<uint8_t>(len)});
    }
    compile_in_place(prefixes);
    std::vector<py::tuple> out;
    out.reserve(prefixes.size());
    unsigned char buf[16];
    for (const auto &p : prefixes) {
        if constexpr (width == 32)
            store_be32(buf, p.addr);
        else
            store_be128(buf, p.addr);
        out.push_back(py::make_tuple(py::bytes(reinterpret_cast<const char *>(buf), width / 8), int(p.len)));
    }
    return out;
}

std::vector<py::tuple> compile_prefixes(const std::vector<std::pair<std::string, int>> &entries) {
    if (entries.empty())
        return {};
    const std::size_t addr_bytes = entries.front().first.size();
    if (addr_bytes == 4)
        return compile_family<uint32_t>(entries);
    if (addr_bytes == 16)
        return compile_family<u128>(entries);
    throw std::invalid_argument(LENGTH_ERROR);
}

}  // namespace

PYBIND11_MODULE(_prefixes, m) {
    m.doc() = "Block lists: text parser, compiled prefix sets (normalise, deduplicate, merge), LPM key export.";
    m.attr("MAX_LINE_BYTES") = MAX_LINE_BYTES;
    m.attr("FORMAT_VERSION") = FORMAT_VERSION;

    m.def("compile_prefixes", &compile_prefixes, py::arg("entries"),
          "Smallest prefix set covering exactly the given (address bytes, length) entries, "
          "all of one family, sorted by address.");

    edgewarden::register_entry_table(m);
    py::class_<PrefixSet, PrefixSetPtr>(m, "PrefixSet",
                                        "A compiled block list: the minimal, sorted set of IPv4 and IPv6 prefixes "
                                        "matching exactly the addresses of its input. Immutable.")
        .def(py::init([]() { return std::make_shared<PrefixSet>(); }), "The empty set.")
        .def_static("from_list", &prefix_set_from_list, py::arg("entries"),
                    "Compile (address bytes, prefix length) entries of either family (4 or 16 byte "
                    "addresses; host bits are cleared).")
        .def("__len__", &PrefixSet::size)
        .def("count_v4", [](const PrefixSet &s) { return s.v4.size(); }, "Number of IPv4 prefixes.")
        .def("count_v6", [](const PrefixSet &s) { return s.v6.size(); }, "Number of IPv6 prefixes.")
        .def("to_list", &prefix_set_to_list, "[(address bytes, prefix length)]: IPv4 first, then IPv6, sorted.")
        .def("union", &prefix_set_union, py::arg("other"), "The compiled union of both sets.")
        .def("subtract", &prefix_set_subtract, py::arg("other"),
             "The compiled set of the addresses of this set that are not in `other`. A small `other` costs "
             "a binary search per entry and one bulk copy of this set.")
        .def("overlapping", &prefix_set_overlapping, py::arg("address"), py::arg("prefixlen"),
             py::arg("clip") = false,
             "The entries sharing an address with the prefix (address bytes, prefixlen): the one entry "
             "covering it, or the entries inside it. With clip=True a covering entry is given as the prefix "
             "itself, so the result is this set restricted to the prefix. A binary search, not a pass.")
        .def("restricted_to", &prefix_set_restricted, py::arg("regions"),
             "The compiled set of the addresses of this set inside `regions`: a binary search per entry of "
             "`regions`, so a small `regions` costs little whatever the size of this set.")
        .def("diff", &prefix_set_diff, py::arg("newer"),
             "(added, removed): the entries of `newer` not in this set and the entries of this set not in "
             "`newer`; writing `added` to and deleting `removed` from an LPM trie holding this set "
             "turns it into `newer`.")
        .def("__eq__", [](const PrefixSet &a, const PrefixSet &b) { return prefix_set_equal(a, b); },
             py::is_operator())
        .def("__ne__", [](const PrefixSet &a, const PrefixSet &b) { return !prefix_set_equal(a, b); },
             py::is_operator())
        .def("__hash__", &prefix_set_hash)
        .def("__repr__",
             [](const PrefixSet &s) {
                 return "<PrefixSet v4=" + std::to_string(s.v4.size()) + " v6=" + std::to_string(s.v6.size()) + ">";
             })
        .def("lpm_keys_v4", [](const PrefixSet &s, const py::object &t) { return lpm_keys(s.v4, t); },
             py::arg("tenant_id") = py::none(),
             "BPF LPM trie keys for every IPv4 prefix, in order: {u32 prefixlen (native endian); u8 addr[4]} "
             "(8 bytes each) or, with a tenant, {u32 32 + prefixlen; u8 tenant_id[4] (big endian); u8 addr[4]} "
             "(12 bytes each).")
        .def("lpm_keys_v6", [](const PrefixSet &s, const py::object &t) { return lpm_keys(s.v6, t); },
             py::arg("tenant_id") = py::none(),
             "Packed struct ew_lpm_v6_key (20 bytes each) or, with a tenant, struct ew_tenant_lpm_v6_key "
             "(24 bytes each) for every IPv6 prefix, in order.")
        .def("v4_block_entries", &v4_block_entries, py::arg("tenant_id") = py::none(),
             "EntryTable of the IPv4 block-table nodes (struct ew_block_node), keyed by the node key, "
             "or by struct ew_tenant_block_key when tenant_id is given.")
        .def("v6_lpm_entries", &v6_lpm_entries, py::arg("tenant_id") = py::none(), py::arg("value") = py::bytes(),
             "EntryTable of the IPv6 LPM keys (struct ew_lpm_v6_key / ew_tenant_lpm_v6_key) with `value` each.")
        .def("serialize", &prefix_set_serialize, "Versioned, checksummed binary form (see deserialize).")
        .def_static("deserialize", &prefix_set_deserialize, py::arg("data"),
                    "The set serialize() wrote; ValueError if the data is corrupt, truncated or not a "
                    "compiled set.")
        .def(py::pickle([](const PrefixSet &s) { return prefix_set_serialize(s); },
                        [](const py::bytes &b) { return prefix_set_deserialize(b); }));

    py::class_<ParseResult>(m, "ParseResult", "What parse_blocklist found in a block-list file.")
        .def_readonly("lines", &ParseResult::lines, "Lines in the file.")
        .def_readonly("entries_read", &ParseResult::entries_read, "Lines holding a valid entry.")
        .def_readonly("bad_lines", &ParseResult::bad_lines, "[(line number from 1, reason, text)]")
        .def_readonly("prefixes", &ParseResult::prefixes, "The compiled PrefixSet of the valid entries.")
        .def("__repr__", [](const ParseResult &r) {
            return "<ParseResult lines=" + std::to_string(r.lines) + " entries_read=" +
                   std::to_string(r.entries_read) + " bad_lines=" + std::to_string(py::len(r.bad_lines)) + ">";
        });

    m.def("parse_blocklist", &parse_blocklist, py::arg("data"), py::arg("allow_v4") = true,
          py::arg("allow_v6") = true,
          "Parse a block-list file's bytes: one address, CIDR (host bits are cleared) or range a-b per "
          "line, '#' and ';' comments, CRLF and a UTF-8 BOM accepted. Bad lines are reported, not "
          "raised.");
}
