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


import heapq

from cpython.array cimport array, clone

cdef uint64_t WRAP_HIGH = (<uint64_t>1) << 63
cdef uint64_t WRAP_LOW = (<uint64_t>1) << 62


cdef inline uint64_t counter_delta(uint64_t previous, uint64_t current):
    """Counts since the previous scan. A counter that went down either wrapped
    (it was past 2**63 and is now below 2**62) or was reset (the tenant's slot
    was zeroed): then the new value is all that was counted."""
    if current >= previous:
        return current - previous
    if previous >= WRAP_HIGH and current < WRAP_LOW:
        return current - previous   # modulo 2**64
    return current


cdef class CounterAggregator:
    """Turns successive raw per-CPU counter reads into per-tenant totals and
    per-second rates. agent.datapath.counters.AggregatorReference is the
    plain-Python statement of the same arithmetic."""

    cdef readonly Py_ssize_t fields
    cdef readonly object packet_fields, byte_fields, drop_fields
    cdef dict _previous_index        # tenant id -> row in _previous
    cdef array _previous             # u64 totals of the previous scan
    cdef object _previous_time_ns

    def __init__(self, Py_ssize_t fields, packet_fields, byte_fields, drop_fields):
        if fields > 64:
            raise ValueError(f"at most 64 fields per counter block, got {fields}")
        self.fields = fields
        self.packet_fields = tuple(packet_fields)
        self.byte_fields = tuple(byte_fields)
        self.drop_fields = tuple(drop_fields)
        self._previous_index = {}
        self._previous = array('Q')
        self._previous_time_ns = None

    def scan(self, const unsigned char[::1] raw, tenant_ids, Py_ssize_t ncpus, long long now_ns):
        """Sum one read of len(tenant_ids) entries x ncpus x fields u64s.

        Returns CounterScan: totals (u64) and rates (per second since the
        previous scan; 0 for a tenant not seen before, and for the first scan).
        A row whose id is None (an unused counter slot) is summed but never
        reported or remembered."""
        cdef Py_ssize_t entries = len(tenant_ids)
        cdef Py_ssize_t stride = self.fields * 8
        cdef Py_ssize_t e, c, f, base, prev_row
        cdef uint64_t value
        cdef array totals = clone(array('Q'), entries * self.fields, zero=True)
        cdef array rates = clone(array('d'), entries * self.fields, zero=True)
        cdef uint64_t[:] t = totals
        cdef double[:] r = rates
        cdef uint64_t[:] prev
        cdef double seconds = 0.0
        if raw.shape[0] < entries * ncpus * stride:
            raise ValueError(f"buffer of {raw.shape[0]} bytes is too short for {entries} entries x "
                             f"{ncpus} CPUs x {self.fields} fields")
        for e in range(entries):
            for c in range(ncpus):
                base = (e * ncpus + c) * stride
                for f in range(self.fields):
                    memcpy(&value, &raw[base + f * 8], 8)
                    t[e * self.fields + f] += value
        if self._previous_time_ns is not None and now_ns > self._previous_time_ns:
            seconds = (now_ns - self._previous_time_ns) / 1e9
        if seconds > 0 and len(self._previous) > 0:
            prev = self._previous
            index = self._previous_index
            for e in range(entries):
                row = index.get(tenant_ids[e]) if tenant_ids[e] is not None else None
                if row is None:
                    continue
                prev_row = row
                for f in range(self.fields):
                    r[e * self.fields + f] = counter_delta(prev[prev_row * self.fields + f],
                                                           t[e * self.fields + f]) / seconds
        self._previous = totals
        self._previous_index = {tenant_ids[e]: e for e in range(entries) if tenant_ids[e] is not None}
        self._previous_time_ns = now_ns
        return CounterScan(self, list(tenant_ids), totals, rates, seconds)


cdef class CounterScan:
    """One scan's totals and rates, flat arrays of len(tenant_ids) x fields."""

    cdef readonly list tenant_ids
    cdef readonly array totals
    cdef readonly array rates
    cdef readonly double interval_seconds
    cdef CounterAggregator _aggregator

    def __init__(self, CounterAggregator aggregator, list tenant_ids, array totals, array rates, double seconds):
        self._aggregator = aggregator
        self.tenant_ids = tenant_ids
        self.totals = totals
        self.rates = rates
        self.interval_seconds = seconds

    def row(self, Py_ssize_t index):
        cdef Py_ssize_t n = self._aggregator.fields
        return list(self.totals[index * n:(index + 1) * n]), list(self.rates[index * n:(index + 1) * n])

    def top(self, Py_ssize_t n, str by="packets", bint use_rates=True):
        """The n tenants with the highest packets, bytes or drops (rate or total):
        list of (tenant id, value), highest first, ties by tenant id."""
        cdef tuple fields
        cdef Py_ssize_t e, f, width = self._aggregator.fields
        cdef double score
        cdef double[:] r = self.rates
        cdef uint64_t[:] t = self.totals
        if by == "packets":
            fields = self._aggregator.packet_fields
        elif by == "bytes":
            fields = self._aggregator.byte_fields
        elif by == "drops":
            fields = self._aggregator.drop_fields
        else:
            raise ValueError(f"top by {by!r}: use packets, bytes or drops")
        scores = []
        for e in range(len(self.tenant_ids)):
            if self.tenant_ids[e] is None:
                continue
            if use_rates:
                score = 0
                for f in fields:
                    score += r[e * width + f]
                scores.append((-score, self.tenant_ids[e]))
            else:
                # exact integer sum: u64 totals added as doubles would misorder near-ties
                total = 0
                for f in fields:
                    total += t[e * width + f]
                scores.append((-float(total), self.tenant_ids[e]))
        return [(tenant, -negative) for negative, tenant in heapq.nsmallest(n, scores)]
