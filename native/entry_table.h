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

    // Sort by key (bytewise) and reject duplicates: a map holds a key once.
    void seal() {
        const std::size_t n = size();
        std::vector<std::size_t> order(n);
        if (key_size_ <= 8) {
            // Short keys: sort (big-endian integer of the key bytes, index) pairs,
            // the same order as memcmp without an indirect comparison per step.
            std::vector<std::pair<uint64_t, std::size_t>> ranked(n);
            for (std::size_t i = 0; i < n; ++i) {
                uint64_t v = 0;
                for (std::size_t b = 0; b < key_size_; ++b)
                    v = (v << 8) | key(i)[b];
                ranked[i] = {v, i};
            }
            std::sort(ranked.begin(), ranked.end());
            for (std::size_t i = 0; i < n; ++i)
                order[i] = ranked[i].second;
        } else {
            std::iota(order.begin(), order.end(), 0);
            std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return cmp_key(a, b) < 0; });
        }
        std::vector<unsigned char> keys(keys_.size()), values(values_.size());
        for (std::size_t i = 0; i < n; ++i) {
            std::memcpy(&keys[i * key_size_], &keys_[order[i] * key_size_], key_size_);
            std::memcpy(&values[i * value_size_], &values_[order[i] * value_size_], value_size_);
        }
        keys_.swap(keys);
        values_.swap(values);
        for (std::size_t i = 1; i < n; ++i)
            if (std::memcmp(key(i - 1), key(i), key_size_) == 0)
                throw std::invalid_argument("duplicate key in a map's contents");
    }

    static EntryTable from_packed(const std::string &keys, const std::string &values, std::size_t key_size,
                                  std::size_t value_size) {
        EntryTable t(key_size, value_size);
        const std::size_t count = keys.size() / key_size;
        const bool whole_values = value_size ? values.size() == count * value_size : values.empty();
        if (keys.size() % key_size || !whole_values)
            throw std::invalid_argument("packed keys and values do not make whole entries");
        t.keys_.assign(keys.begin(), keys.end());
        t.values_.assign(values.begin(), values.end());
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
        for (const EntryTable *part : parts) {
            if (part->key_size_ != key_size || part->value_size_ != value_size)
                throw std::invalid_argument("cannot merge tables of different layouts");
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
        keys_.insert(keys_.end(), other.keys_.begin(), other.keys_.end());
        values_.insert(values_.end(), other.values_.begin(), other.values_.end());
        seal();
    }

private:
    int cmp_key(std::size_t a, std::size_t b) const { return std::memcmp(key(a), key(b), key_size_); }

    std::size_t key_size_, value_size_;
    std::vector<unsigned char> keys_, values_;
};

inline void register_entry_table(py::module_ &m) {
    py::class_<EntryTable>(m, "EntryTable",
                           "Contents of one BPF map as packed, key-sorted arrays of fixed-size keys and values.")
        .def(py::init<std::size_t, std::size_t>(), py::arg("key_size"), py::arg("value_size"))
        .def_static("from_packed", &EntryTable::from_packed, py::arg("keys"), py::arg("values"),
                    py::arg("key_size"), py::arg("value_size"))
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
