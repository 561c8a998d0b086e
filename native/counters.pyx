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



def add_counts(unsigned char[::1] total, const unsigned char[::1] after, const unsigned char[::1] before):
    """total += after - before, u64 by u64, wrapping at 2**64 like the
    kernel's counters: what one map counted between two reads, added to
    another (agent.datapath.slot_maps, when a growth replaces the map)."""
    cdef Py_ssize_t n = total.shape[0] // 8, i
    cdef uint64_t t, a, b
    if after.shape[0] < n * 8 or before.shape[0] < n * 8:
        raise ValueError(f"counter blocks of {after.shape[0]} and {before.shape[0]} bytes cannot be added "
                         f"to one of {total.shape[0]}")
    with nogil:
        for i in range(n):
            memcpy(&t, &total[i * 8], 8)
            memcpy(&a, &after[i * 8], 8)
            memcpy(&b, &before[i * 8], 8)
            t += a - b
            memcpy(&total[i * 8], &t, 8)


import heapq

from cpython.array cimport array, clone

cdef uint64_t WRAP_HIGH = (<uint64_t>1) << 63
cdef uint64_t WRAP_LOW = (<uint64_t>1) << 62


cdef inline uint64_t counter_delta(uint64_t previous, uint64_t current) nogil:
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
    cdef object _previous_ids        # the row ids of the previous scan

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
        self._previous_ids = None

    def scan(self, const unsigned char[::1] raw, tenant_ids, Py_ssize_t ncpus, long long now_ns):
        """Sum one read of len(tenant_ids) entries x ncpus x fields u64s.

        Returns CounterScan: totals (u64) and rates (per second since the
        previous scan; 0 for a tenant not seen before, and for the first scan).
        A row whose id is None (an unused counter slot) is summed but never
        reported or remembered."""
        cdef Py_ssize_t entries = len(tenant_ids)
        cdef Py_ssize_t width = self.fields
        cdef Py_ssize_t e, c, f, prev_row
        cdef array totals = clone(array('Q'), entries * width, zero=True)
        cdef array rates = clone(array('d'), entries * width, zero=True)
        cdef uint64_t *t = totals.data.as_ulonglongs
        cdef double *r = rates.data.as_doubles
        cdef const uint64_t *prev
        cdef uint64_t *row
        cdef uint64_t value
        cdef const unsigned char *base
        cdef double seconds = 0.0
        cdef bint same_rows
        if raw.shape[0] < entries * ncpus * width * 8:
            raise ValueError(f"buffer of {raw.shape[0]} bytes is too short for {entries} entries x "
                             f"{ncpus} CPUs x {self.fields} fields")
        base = &raw[0] if raw.shape[0] else NULL
        with nogil:
            for e in range(entries):
                row = t + e * width
                for c in range(ncpus):
                    for f in range(width):
                        memcpy(&value, base + ((e * ncpus + c) * width + f) * 8, 8)
                        row[f] += value
        if self._previous_time_ns is not None and now_ns > self._previous_time_ns:
            seconds = (now_ns - self._previous_time_ns) / 1e9
        if seconds > 0 and len(self._previous) > 0:
            prev = self._previous.data.as_ulonglongs
            # The usual case: the same rows as last time, so row e was row e.
            same_rows = tenant_ids is self._previous_ids or tenant_ids == self._previous_ids
            index = self._previous_index
            for e in range(entries):
                if same_rows:
                    if tenant_ids[e] is None:
                        continue
                    prev_row = e
                else:
                    found = index.get(tenant_ids[e]) if tenant_ids[e] is not None else None
                    if found is None:
                        continue
                    prev_row = found
                for f in range(width):
                    r[e * width + f] = counter_delta(prev[prev_row * width + f], t[e * width + f]) / seconds
        self._previous = totals
        if not (tenant_ids is self._previous_ids):
            self._previous_index = {tenant_ids[e]: e for e in range(entries) if tenant_ids[e] is not None}
            self._previous_ids = tenant_ids
        self._previous_time_ns = now_ns
        return CounterScan(self, tenant_ids, totals, rates, seconds)


cdef class CounterScan:
    """One scan's totals and rates, flat arrays of len(tenant_ids) x fields."""

    cdef readonly object tenant_ids
    cdef readonly array totals
    cdef readonly array rates
    cdef readonly double interval_seconds
    cdef CounterAggregator _aggregator

    def __init__(self, CounterAggregator aggregator, tenant_ids, array totals, array rates, double seconds):
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



from libc.stdlib cimport malloc, free


def rates_over(CounterScan scan, groups, scales, limits, overrides=None):
    """Rows of one scan whose rate exceeds a limit: for check g, the sum of
    the rates of the fields in groups[g], times scales[g], against limits[g]
    (0: not checked), or against overrides[tenant id][g] for a tenant with
    limits of its own. Returns [(row, g, value)]. The daemon's per-tenant
    threshold check, so a scan of 100,000 tenants never loops in Python."""
    cdef Py_ssize_t width = scan._aggregator.fields
    cdef Py_ssize_t ngroups = len(groups)
    cdef Py_ssize_t entries = len(scan.tenant_ids)
    cdef Py_ssize_t e, g, k
    cdef double value, limit
    cdef double *r = scan.rates.data.as_doubles
    cdef Py_ssize_t *starts
    cdef Py_ssize_t *flat
    cdef double *c_scales
    cdef double *c_limits
    cdef Py_ssize_t total = sum(len(grp) for grp in groups)
    if len(scales) != ngroups or len(limits) != ngroups:
        raise ValueError("one scale and one limit per group")
    starts = <Py_ssize_t *>malloc((ngroups + 1) * sizeof(Py_ssize_t))
    flat = <Py_ssize_t *>malloc((total + 1) * sizeof(Py_ssize_t))
    c_scales = <double *>malloc((ngroups + 1) * sizeof(double))
    c_limits = <double *>malloc((ngroups + 1) * sizeof(double))
    result = []
    try:
        k = 0
        for g in range(ngroups):
            starts[g] = k
            c_scales[g] = scales[g]
            c_limits[g] = limits[g]
            for f in groups[g]:
                if not 0 <= f < width:
                    raise ValueError(f"field {f} is outside the counter block")
                flat[k] = f
                k += 1
        starts[ngroups] = k
        ids = scan.tenant_ids
        for e in range(entries):
            own = overrides.get(ids[e]) if overrides else None
            for g in range(ngroups):
                value = 0
                for k in range(starts[g], starts[g + 1]):
                    value += r[e * width + flat[k]]
                value *= c_scales[g]
                limit = c_limits[g] if own is None else own[g]
                if limit > 0 and value > limit:
                    if ids[e] is not None:
                        result.append((e, g, value))
    finally:
        free(starts)
        free(flat)
        free(c_scales)
        free(c_limits)
    return result


def column_totals(CounterScan scan):
    """Every field's total over all rows of one scan (unused slots included:
    they are zero), as Python ints: the "all tenants" series of the metrics."""
    cdef Py_ssize_t width = scan._aggregator.fields
    cdef Py_ssize_t entries = len(scan.tenant_ids)
    cdef Py_ssize_t e, f
    cdef uint64_t *t = scan.totals.data.as_ulonglongs
    cdef uint64_t[64] sums
    for f in range(width):
        sums[f] = 0
    with nogil:
        for e in range(entries):
            for f in range(width):
                sums[f] += t[e * width + f]
    return [sums[f] for f in range(width)]
