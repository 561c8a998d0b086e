# cython: language_level=3, boundscheck=False, wraparound=False
"""Counter aggregation core: sums the per-CPU copies of edgewarden counter
blocks as the kernel returns them from per-CPU maps. agent.datapath.counters
holds the pure-Python reference of the same arithmetic."""

from libc.stdint cimport uint64_t
from libc.string cimport memcpy


def sum_percpu(const unsigned char[::1] raw, Py_ssize_t entries, Py_ssize_t ncpus, Py_ssize_t fields):
    """Sum `ncpus` consecutive blocks of `fields` u64 for each of `entries` entries.

    `raw` is what a per-CPU map lookup (or batch lookup) returns: for each entry,
    one value per possible CPU, each value `fields` native-endian u64s (values
    are 8-byte aligned, so the per-CPU stride is exactly fields * 8). Returns a
    list of `entries` lists of `fields` ints. Sums wrap at 2**64 like the
    kernel's counters do.
    """
    cdef Py_ssize_t stride = fields * 8
    cdef Py_ssize_t e, c, f, base
    cdef uint64_t value
    cdef uint64_t[64] sums
    if fields > 64:
        raise ValueError(f"at most 64 fields per counter block, got {fields}")
    if raw.shape[0] < entries * ncpus * stride:
        raise ValueError(
            f"buffer of {raw.shape[0]} bytes is too short for {entries} entries x "
            f"{ncpus} CPUs x {fields} fields")
    result = []
    for e in range(entries):
        for f in range(fields):
            sums[f] = 0
        for c in range(ncpus):
            base = (e * ncpus + c) * stride
            for f in range(fields):
                memcpy(&value, &raw[base + f * 8], 8)
                sums[f] += value
        result.append([sums[f] for f in range(fields)])
    return result
