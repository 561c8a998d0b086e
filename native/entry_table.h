// EntryTable: the contents of one BPF map as two packed arrays (fixed-size
// keys and values, sorted by key), so a million-entry block table is built,
// compared and written without a Python object per entry. diff() gives the
// exact writes and deletions that turn one table into another.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace edgewarden {

namespace py = pybind11;

class EntryTable {
public:
    EntryTable(std::size_t key_size, std::size_t value_size) : key_size_(key_size), value_size_(value_size) {
        if (key_size == 0)
            throw std::invalid_argument("key size must be positive");
    }

    std::size_t key_size() const { return key_size_; }
    std::size_t value_size() const { return value_size_; }
    std::size_t size() const { return key_size_ ? keys_.size() / key_size_ : 0; }

    void append(const void *key, const void *value) {
        const auto *k = static_cast<const unsigned char *>(key);
        const auto *v = static_cast<const unsigned char *>(value);
        keys_.insert(keys_.end(), k, k + key_size_);
        values_.insert(values_.end(), v, v + value_size_);
    }

    // Room for `entries` entries without regrowing (a builder that knows
    // its count appends into exactly that much memory, not up to twice it).
    void reserve(std::size_t entries) {
        keys_.reserve(entries * key_size_);
        values_.reserve(entries * value_size_);
    }

    // Sort by key (bytewise) and reject duplicates: a map holds a key once.
    // In place: the entries are permuted where they are (cycle by cycle),
    // so the only scratch is the sort's index, 8 bytes an entry for keys of
    // up to 4 bytes and 16 up to 8 (a million 76-byte block nodes: 8 MB,
    // not a second copy of the table).
    void seal() {
        const std::size_t n = size();
        if (sorted_unique())
            return;
        if (key_size_ <= 4 && n <= UINT32_MAX) {
            // (big-endian integer of the key bytes) << 32 | index: the same
            // order as memcmp, sorted as plain integers.
            std::vector<uint64_t> ranked(n);
            for (std::size_t i = 0; i < n; ++i)
                ranked[i] = key_rank(i) << 32 | i;
            std::sort(ranked.begin(), ranked.end());
            permute(
                [&](std::size_t i) { return static_cast<std::size_t>(ranked[i] & UINT32_MAX); },
                [&](std::size_t i) { ranked[i] = (ranked[i] & ~uint64_t(UINT32_MAX)) | i; });
        } else if (key_size_ <= 8) {
            std::vector<std::pair<uint64_t, std::size_t>> ranked(n);
            for (std::size_t i = 0; i < n; ++i)
                ranked[i] = {key_rank(i), i};
            std::sort(ranked.begin(), ranked.end());
            permute([&](std::size_t i) { return ranked[i].second; }, [&](std::size_t i) { ranked[i].second = i; });
        } else {
            std::vector<std::size_t> order(n);
            std::iota(order.begin(), order.end(), 0);
            std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return cmp_key(a, b) < 0; });
            permute([&](std::size_t i) { return order[i]; }, [&](std::size_t i) { order[i] = i; });
        }
        for (std::size_t i = 1; i < n; ++i)
            if (std::memcmp(key(i - 1), key(i), key_size_) == 0)
                throw std::invalid_argument("duplicate key in a map's contents");
    }

    // From any contiguous buffers (bytes, bytearray, memoryview), copied
    // once into the table and sorted there (no std::string in between).
    static EntryTable from_packed(const py::buffer &keys, const py::buffer &values, std::size_t key_size,
                                  std::size_t value_size) {
        EntryTable t(key_size, value_size);
        const py::buffer_info k = keys.request(), v = values.request();
        const std::size_t key_bytes = static_cast<std::size_t>(k.size * k.itemsize),
                          value_bytes = static_cast<std::size_t>(v.size * v.itemsize);
        if (!contiguous(k) || !contiguous(v))
            throw std::invalid_argument("packed keys and values must be contiguous buffers");
        const std::size_t count = key_bytes / key_size;
        const bool whole_values = value_size ? value_bytes == count * value_size : value_bytes == 0;
        if (key_bytes % key_size || !whole_values)
            throw std::invalid_argument("packed keys and values do not make whole entries");
        const auto *kp = static_cast<const unsigned char *>(k.ptr), *vp = static_cast<const unsigned char *>(v.ptr);
        t.keys_.assign(kp, kp + key_bytes);
        t.values_.assign(vp, vp + value_bytes);
        t.seal();
        return t;
    }

    // From (keys, values) buffer pairs, e.g. a map's batched reads, each
    // copied into the table before the next is taken (so a read buffer may
    // be reused), then sorted in place: a million-entry table read back from
    // the kernel is held once, not as chunks, their join and a copy.
    // `capacity` entries are reserved first (a map's max_entries: address
    // space only, until the entries are written into it).
    static EntryTable from_batches(const py::iterable &batches, std::size_t key_size, std::size_t value_size,
                                   std::size_t capacity) {
        EntryTable t(key_size, value_size);
        t.reserve(capacity);
        for (py::handle item : batches) {
            const auto pair = py::reinterpret_borrow<py::sequence>(item);
            if (py::len(pair) != 2)
                throw std::invalid_argument("a batch is a (keys, values) pair of buffers");
            const py::buffer_info k = py::buffer(pair[0]).request(), v = py::buffer(pair[1]).request();
            const std::size_t key_bytes = static_cast<std::size_t>(k.size * k.itemsize),
                              value_bytes = static_cast<std::size_t>(v.size * v.itemsize);
            if (!contiguous(k) || !contiguous(v))
                throw std::invalid_argument("packed keys and values must be contiguous buffers");
            const std::size_t count = key_bytes / key_size;
            if (key_bytes % key_size || value_bytes != count * value_size)
                throw std::invalid_argument("packed keys and values do not make whole entries");
            const auto *kp = static_cast<const unsigned char *>(k.ptr), *vp = static_cast<const unsigned char *>(v.ptr);
            t.keys_.insert(t.keys_.end(), kp, kp + key_bytes);
            t.values_.insert(t.values_.end(), vp, vp + value_bytes);
        }
        t.seal();
        return t;
    }

    const unsigned char *key(std::size_t i) const { return &keys_[i * key_size_]; }
    const unsigned char *value(std::size_t i) const { return &values_[i * value_size_]; }

    py::bytes keys_packed() const { return py::bytes(reinterpret_cast<const char *>(keys_.data()), keys_.size()); }
    py::bytes values_packed() const {
        return py::bytes(reinterpret_cast<const char *>(values_.data()), values_.size());
    }

    py::list items() const {
        py::list out;
        for (std::size_t i = 0; i < size(); ++i)
            out.append(py::make_tuple(py::bytes(reinterpret_cast<const char *>(key(i)), key_size_),
                                      py::bytes(reinterpret_cast<const char *>(value(i)), value_size_)));
        return out;
    }

    bool operator==(const EntryTable &o) const {
        return key_size_ == o.key_size_ && value_size_ == o.value_size_ && keys_ == o.keys_ && values_ == o.values_;
    }

    // (entries of `newer` that are new or changed, entries of this one whose key `newer` lacks)
    std::pair<EntryTable, EntryTable> diff(const EntryTable &newer) const {
        if (newer.key_size_ != key_size_ || newer.value_size_ != value_size_)
            throw std::invalid_argument("cannot diff tables of different layouts");
        EntryTable writes(key_size_, value_size_), deletes(key_size_, value_size_);
        std::size_t i = 0, j = 0;
        const std::size_t n = size(), m = newer.size();
        while (i < n || j < m) {
            int c = i == n ? 1 : j == m ? -1 : std::memcmp(key(i), newer.key(j), key_size_);
            if (c < 0) {
                deletes.append(key(i), value(i));
                ++i;
            } else if (c > 0) {
                writes.append(newer.key(j), newer.value(j));
                ++j;
            } else {
                if (std::memcmp(value(i), newer.value(j), value_size_) != 0)
                    writes.append(newer.key(j), newer.value(j));
                ++i;
                ++j;
            }
        }
        return {std::move(writes), std::move(deletes)};
    }

    // One table from many with disjoint keys (e.g. one per tenant), sorted once.
    static EntryTable merged(const std::vector<const EntryTable *> &parts, std::size_t key_size,
                             std::size_t value_size) {
        EntryTable out(key_size, value_size);
        std::size_t total = 0;
        for (const EntryTable *part : parts) {
            if (part->key_size_ != key_size || part->value_size_ != value_size)
                throw std::invalid_argument("cannot merge tables of different layouts");
            total += part->size();
        }
        out.reserve(total);
        for (const EntryTable *part : parts) {
            out.keys_.insert(out.keys_.end(), part->keys_.begin(), part->keys_.end());
            out.values_.insert(out.values_.end(), part->values_.begin(), part->values_.end());
        }
        out.seal();
        return out;
    }

    // (added, changed, removed) that diff(newer) would give, without building it.
    std::tuple<std::size_t, std::size_t, std::size_t> diff_counts(const EntryTable &newer) const {
        if (newer.key_size_ != key_size_ || newer.value_size_ != value_size_)
            throw std::invalid_argument("cannot diff tables of different layouts");
        std::size_t added = 0, changed = 0, removed = 0, i = 0, j = 0;
        const std::size_t n = size(), m = newer.size();
        while (i < n || j < m) {
            int c = i == n ? 1 : j == m ? -1 : std::memcmp(key(i), newer.key(j), key_size_);
            if (c < 0) {
                ++removed;
                ++i;
            } else if (c > 0) {
                ++added;
                ++j;
            } else {
                changed += std::memcmp(value(i), newer.value(j), value_size_) != 0;
                ++i;
                ++j;
            }
        }
        return {added, changed, removed};
    }

    // Read-only views of the packed arrays, valid while the table lives:
    // a million-entry table is handed to the kernel without a copy.
    py::memoryview keys_view() const {
        return py::memoryview::from_memory(const_cast<unsigned char *>(keys_.data()),
                                           static_cast<py::ssize_t>(keys_.size()), true);
    }
    py::memoryview values_view() const {
        return py::memoryview::from_memory(const_cast<unsigned char *>(values_.data()),
                                           static_cast<py::ssize_t>(values_.size()), true);
    }

    // Union of tables with disjoint keys (e.g. one per tenant).
    void extend(const EntryTable &other) {
        if (other.key_size_ != key_size_ || other.value_size_ != value_size_)
            throw std::invalid_argument("cannot merge tables of different layouts");
        reserve(size() + other.size());
        keys_.insert(keys_.end(), other.keys_.begin(), other.keys_.end());
        values_.insert(values_.end(), other.values_.begin(), other.values_.end());
        seal();
    }

private:
    int cmp_key(std::size_t a, std::size_t b) const { return std::memcmp(key(a), key(b), key_size_); }

    static bool contiguous(const py::buffer_info &b) {
        py::ssize_t stride = b.itemsize;
        for (py::ssize_t d = b.ndim - 1; d >= 0; --d) {
            if (b.shape[d] > 1 && b.strides[d] != stride)
                return false;
            stride *= b.shape[d];
        }
        return true;
    }

    uint64_t key_rank(std::size_t i) const {
        uint64_t v = 0;
        for (std::size_t b = 0; b < key_size_; ++b)
            v = (v << 8) | key(i)[b];
        return v;
    }

    // Already in order with no duplicate (a table read back sorted, or
    // built in key order): nothing to move. Throws on a duplicate it meets.
    bool sorted_unique() const {
        for (std::size_t i = 1; i < size(); ++i) {
            const int c = cmp_key(i - 1, i);
            if (c == 0)
                throw std::invalid_argument("duplicate key in a map's contents");
            if (c > 0)
                return false;
        }
        return true;
    }

    // Entry i takes the entry at source(i), for every i at once, moving each
    // entry once along the permutation's cycles; placed(i) marks i done by
    // making it its own source.
    template <class Source, class Placed>
    void permute(Source source, Placed placed) {
        std::vector<unsigned char> key_tmp(key_size_), value_tmp(value_size_);
        for (std::size_t start = 0; start < size(); ++start) {
            if (source(start) == start)
                continue;
            std::memcpy(key_tmp.data(), &keys_[start * key_size_], key_size_);
            if (value_size_)
                std::memcpy(value_tmp.data(), &values_[start * value_size_], value_size_);
            std::size_t to = start;
            for (;;) {
                const std::size_t from = source(to);
                placed(to);
                if (from == start) {
                    std::memcpy(&keys_[to * key_size_], key_tmp.data(), key_size_);
                    if (value_size_)
                        std::memcpy(&values_[to * value_size_], value_tmp.data(), value_size_);
                    break;
                }
                std::memcpy(&keys_[to * key_size_], &keys_[from * key_size_], key_size_);
                if (value_size_)
                    std::memcpy(&values_[to * value_size_], &values_[from * value_size_], value_size_);
                to = from;
            }
        }
    }

    std::size_t key_size_, value_size_;
    std::vector<unsigned char> keys_, values_;
};

inline void register_entry_table(py::module_ &m) {
    py::class_<EntryTable>(m, "EntryTable",
                           "Contents of one BPF map as packed, key-sorted arrays of fixed-size keys and values.")
        .def(py::init<std::size_t, std::size_t>(), py::arg("key_size"), py::arg("value_size"))
        .def_static("from_packed", &EntryTable::from_packed, py::arg("keys"), py::arg("values"),
                    py::arg("key_size"), py::arg("value_size"))
        .def_static("from_batches", &EntryTable::from_batches, py::arg("batches"), py::arg("key_size"),
                    py::arg("value_size"), py::arg("capacity") = 0,
                    "From an iterable of (keys, values) buffer pairs, each copied before the next is taken; "
                    "`capacity` entries reserved first.")
        .def_property_readonly("key_size", &EntryTable::key_size)
        .def_property_readonly("value_size", &EntryTable::value_size)
        .def("__len__", &EntryTable::size)
        .def("keys_packed", &EntryTable::keys_packed)
        .def("values_packed", &EntryTable::values_packed)
        .def("items", &EntryTable::items, "list of (key, value) bytes: for small tables")
        .def("diff_counts", &EntryTable::diff_counts, py::arg("newer"),
             "(added, changed, removed) of diff(newer), without building it")
        .def("keys_view", &EntryTable::keys_view, py::keep_alive<0, 1>(),
             "read-only memoryview of the packed keys (no copy; keeps the table alive)")
        .def("values_view", &EntryTable::values_view, py::keep_alive<0, 1>(),
             "read-only memoryview of the packed values (no copy; keeps the table alive)")
        .def("diff", &EntryTable::diff, py::arg("newer"),
             "(writes, deletes): entries of newer that are new or changed, and entries of this table "
             "whose keys newer lacks")
        .def("extend", &EntryTable::extend, py::arg("other"))
        .def_static("merged", &EntryTable::merged, py::arg("parts"), py::arg("key_size"), py::arg("value_size"),
                    "One sorted table from tables with disjoint keys.")
        .def("__eq__", &EntryTable::operator==);
}

}  // namespace edgewarden
