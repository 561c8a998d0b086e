// Block-list prefix compiler: normalises prefixes (host bits cleared), drops
// duplicates and covered prefixes and merges siblings into their parent, so
// the result is the smallest prefix set matching exactly the same addresses.
// agent/blocklist.py holds the pure-Python reference (ipaddress) it must match.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

using u128 = unsigned __int128;

struct Prefix {
    u128 addr;      // left-aligned in `width` bits
    int len;
};

u128 mask_for(int len, int width) {
    if (len == 0)
        return 0;
    u128 all = width == 128 ? ~u128(0) : ((u128(1) << width) - 1);
    return all & ~((u128(1) << (width - len)) - 1) & all;
}

u128 from_bytes(const std::string &raw) {
    u128 v = 0;
    for (unsigned char c : raw)
        v = (v << 8) | c;
    return v;
}

py::bytes to_bytes(u128 v, int width) {
    std::string out(width / 8, '\0');
    for (int i = width / 8 - 1; i >= 0; --i) {
        out[i] = static_cast<char>(v & 0xff);
        v >>= 8;
    }
    return py::bytes(out);
}

bool covers(const Prefix &outer, const Prefix &inner, int width) {
    return outer.len <= inner.len && (inner.addr & mask_for(outer.len, width)) == outer.addr;
}

// Two prefixes of one length that differ only in their last bit make their parent.
bool siblings(const Prefix &a, const Prefix &b, int width) {
    if (a.len != b.len || a.len == 0)
        return false;
    u128 last_bit = u128(1) << (width - a.len);
    return (a.addr & last_bit) == 0 && b.addr == (a.addr | last_bit);
}

std::vector<py::tuple> compile_prefixes(const std::vector<std::pair<std::string, int>> &entries) {
    if (entries.empty())
        return {};
    const std::size_t addr_bytes = entries.front().first.size();
    if (addr_bytes != 4 && addr_bytes != 16)
        throw std::invalid_argument("addresses must be 4 (IPv4) or 16 (IPv6) bytes");
    const int width = static_cast<int>(addr_bytes * 8);

    std::vector<Prefix> prefixes;
    prefixes.reserve(entries.size());
    for (const auto &[raw, len] : entries) {
        if (raw.size() != addr_bytes)
            throw std::invalid_argument("all addresses of one compile must be of one family");
        if (len < 0 || len > width)
            throw std::invalid_argument("prefix length " + std::to_string(len) + " is outside 0.." +
                                        std::to_string(width));
        prefixes.push_back({from_bytes(raw) & mask_for(len, width), len});
    }
    std::sort(prefixes.begin(), prefixes.end(), [](const Prefix &a, const Prefix &b) {
        return a.addr != b.addr ? a.addr < b.addr : a.len < b.len;
    });

    // Sorted by start address, a prefix can only be covered by the last one kept.
    std::vector<Prefix> kept;
    for (const Prefix &p : prefixes) {
        if (!kept.empty() && covers(kept.back(), p, width))
            continue;
        kept.push_back(p);
        while (kept.size() >= 2 && siblings(kept[kept.size() - 2], kept.back(), width)) {
            Prefix parent{kept[kept.size() - 2].addr, kept.back().len - 1};
            kept.pop_back();
            kept.back() = parent;
        }
    }

    std::vector<py::tuple> out;
    out.reserve(kept.size());
    for (const Prefix &p : kept)
        out.push_back(py::make_tuple(to_bytes(p.addr, width), p.len));
    return out;
}

}  // namespace

PYBIND11_MODULE(_prefixes, m) {
    m.doc() = "Block-list prefix compiler (normalise, deduplicate, merge).";
    m.def("compile_prefixes", &compile_prefixes, py::arg("entries"),
          "Smallest prefix set covering exactly the given (address bytes, length) entries, "
          "all of one family, sorted by address.");
}
