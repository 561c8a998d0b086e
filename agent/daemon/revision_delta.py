"""A wire Delta as changes to the datapath's compiled named lists, so that a
revision that only adds and removes list entries is written in place
(agent.datapath.list_delta) instead of re-applying the whole policy.

In controller mode every list of a revision is a datapath named list, the
document's own blocked_sources included: wire key "global/policy" is
ListId("policy"), "tenant-7/feed" is ListId("feed", 7). A wire list is a
set of prefixes that may overlap (10.0.0.0/8 beside 10.1.0.0/16); the
datapath holds its compiled union. Removing a record from the wire list
therefore removes from the union only what no other record of the list
still covers (compiled_change)."""

from __future__ import annotations

import bisect

from agent._prefixes import PrefixSet
from agent.datapath.named_lists import ListId
from agent.wire import PrefixList
from agent.wire.prefixes import ADDRESS_BITS, RECORD_SIZE, PackedRecords


def list_id(key: str) -> ListId:
    """The datapath list of a wire list key ('global/NAME', 'tenant-ID/NAME')."""
    scope, _, name = key.partition("/")
    return ListId(name, None if scope == "global" else int(scope.removeprefix("tenant-")))


def only_list_entries(delta) -> bool:
    """True when `delta` changes nothing but the entries of lists (no
    document key, no tenant, no list dropped whole): the in-place path."""
    return not (delta.document or delta.tenants_set or delta.tenants_removed or delta.lists_removed)


def prefix_listed(prefixes: PrefixList, cidr: str) -> bool:
    """True when `cidr` is one of the records of `prefixes`."""
    record = PrefixList.from_networks([cidr])
    family = 4 if record.v4 else 6
    return PackedRecords(prefixes.block(family), RECORD_SIZE[family]).has(record.block(family))


def _lengths_present(data: bytes, size: int, bits: int) -> list[int]:
    lengths = data[size - 1::size]          # the prefix-length byte of every record (one C-level copy)
    return [n for n in range(bits + 1) if bytes([n]) in lengths]


def compiled_change(new_list: PrefixList, added: PrefixList, removed: PrefixList) -> tuple[PrefixSet, PrefixSet]:
    """(added, removed) to apply, removed first, to the compiled union of
    the old wire list so that it becomes the compiled union of `new_list`
    (the old list with `removed` taken out and `added` put in). A removed
    record covered by a shorter record of the new list removes nothing;
    the new list's records inside a removed one are put back. Costs a few
    bisects per removed record, not a pass over the list."""
    add_records: list[tuple[bytes, int]] = [(r[:-1], r[-1]) for f in (4, 6) for r in added.records(f)]
    remove_records: list[tuple[bytes, int]] = []
    for family in (4, 6):
        if not removed.count(family):
            continue
        size, bits = RECORD_SIZE[family], ADDRESS_BITS[family]
        data = new_list.block(family)
        records = PackedRecords(data, size)
        lengths = _lengths_present(data, size, bits)
        for record in removed.records(family):
            address, length = int.from_bytes(record[:-1], "big"), record[-1]
            covered = any(
                records.has(((address >> (bits - n) << (bits - n)) if n else 0).to_bytes(size - 1, "big") + bytes([n]))
                for n in lengths if n < length)
            if covered:
                continue            # the union still blocks every address of it
            remove_records.append((record[:-1], length))
            last = address | ((1 << (bits - length)) - 1)
            i = bisect.bisect_left(records, record)
            while i < len(records) and int.from_bytes(records[i][:-1], "big") <= last:
                inside = records[i]
                add_records.append((inside[:-1], inside[-1]))   # a finer record of the list: still blocked
                i += 1
    return PrefixSet.from_list(add_records), PrefixSet.from_list(remove_records)


def delta_list_changes(new_lists: dict[str, PrefixList], delta) -> list[tuple[ListId, PrefixSet, PrefixSet]]:
    """The delta's list changes as (ListId, added, removed) for
    agent.datapath.list_delta, against the lists of the revision it makes."""
    out = []
    for change in delta.lists_changed:
        key = change["list"]
        added = PrefixList(change.get("add4", b""), change.get("add6", b""))
        removed = PrefixList(change.get("remove4", b""), change.get("remove6", b""))
        out.append((list_id(key), *compiled_change(new_lists.get(key, PrefixList()), added, removed)))
    return out
