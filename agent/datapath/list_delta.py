"""Applying a small change (a delta) to one named block list of a live
interface, at a cost proportional to the change, not to the list.

Loading a whole list again (list_updates.replace_named_list) re-reads the
live table and diffs a million entries: about a second. Here the agent keeps
what the tables enforce in memory (ListState, loaded once per interface) and
for a delta (removed, then added):

1. works out the addresses the scope stops blocking: the removed ones that no
   other list of the scope, nor the policy's own blocked_sources, still
   covers;
2. re-derives only the table entries those addresses and the added ones
   touch: for IPv4 the /16 nodes they fall in (with their /24 nodes), from
   the scope's new union restricted to those /16s; for IPv6 the LPM entries
   inside the largest prefix of the old or new union covering each change;
3. writes them in place in the order blocktables uses (finer nodes first
   when writing, coarser first when deleting), between the two hook points
   DeltaHooks.before_writes and DeltaHooks.after_deletes;
4. appends the delta to the list's journal (ListStore.append_delta).

The big IPv4 sets are held as a base plus small added/removed layers
(LayeredSet), so no step copies a million entries; ListState.compact() folds
the layers in (it runs by itself once they hold COMPACT_AT entries). IPv6
sets are small in practice and are kept compiled whole.

A delta that would change whether a scope blocks anything at all (the
config and tenant flags that let the datapath skip empty tables) goes the
full way, through apply_policy_to_maps."""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent._prefixes import PrefixSet
from agent.datapath import abi
from agent.datapath.prefilter import MAP_NAME as PREFILTER_MAP, NodePrefilterUpdate
from agent.datapath.host_bits import MAPS as HOST_BITS_TABLES, follow_writes, sync_host_bits
from agent.datapath.apply import ApplyReport, apply_policy_to_maps
from agent.datapath.blocktables import DELTA_LIMIT, TENANT_KEY_FORMAT, SwappableTable
from agent.datapath.compile import GLOBAL_TABLES, TENANT_TABLES, block_value, prefix_set
from agent.datapath.enforcement import current_policy
from agent.datapath.errors import InterfaceError
from agent.datapath.list_updates import replace_named_list
from agent.datapath.locking import interface_lock
from agent.datapath.named_lists import ListId, ListStore, list_store
from agent.datapath.program import live_maps
from agent.datapath.policy_store import policy_path_for
from agent.datapath.syscalls import BpfMap
from agent.datapath.table_digest import TableDigests, digests_for
from agent.policy.model import Policy

COMPACT_AT = 50_000           # layered entries above which a LayeredSet is folded into its base
JOURNAL_COMPACT_RATIO = 4     # a journal a quarter the size of its list's base is folded into a new base
V4_ALL = (bytes(4), 0)
V6_ALL = (bytes(16), 0)
EMPTY = PrefixSet()


def v4_part(s: PrefixSet) -> PrefixSet:
    return s.overlapping(*V4_ALL, clip=True)


def v6_part(s: PrefixSet) -> PrefixSet:
    return s.overlapping(*V6_ALL, clip=True)


def _span(prefixes: PrefixSet) -> int:
    """Addresses in an IPv4 set (an upper bound on the entries it can cover)."""
    return sum(1 << (32 - length) for _, length in prefixes.to_list())


class LayeredSet:
    """A compiled IPv4 set as (base minus `minus`) plus `plus`: a change costs
    work on the small layers only; restricted_to() answers for a few regions
    without materialising the whole set."""

    def __init__(self, base: PrefixSet):
        self.base, self.plus, self.minus = base, EMPTY, EMPTY
        self.minus_span = 0      # addresses in `minus`, at most: how many base entries it can cover

    def change(self, added: PrefixSet, removed: PrefixSet) -> None:
        """Take `removed` out, then put `added` in."""
        self.plus = self.plus.subtract(removed).union(added)
        self.minus = self.minus.union(removed)
        self.minus_span += _span(removed)
        if len(self.plus) + len(self.minus) > COMPACT_AT:
            self.compact()

    def restricted_to(self, regions: PrefixSet) -> PrefixSet:
        part = self.base.restricted_to(regions)
        if len(self.minus):
            part = part.subtract(self.minus.restricted_to(regions))
        if len(self.plus):
            part = part.union(self.plus.restricted_to(regions))
        return part

    def compact(self) -> PrefixSet:
        if len(self.plus) or len(self.minus):
            self.base = self.base.subtract(self.minus).union(self.plus)
            self.plus = self.minus = EMPTY
            self.minus_span = 0
        return self.base

    def surely_not_empty_after(self, removed: PrefixSet) -> bool:
        """True when taking `removed` out certainly leaves something: the
        prefixes removed so far cannot cover as many entries as the base has
        (cheap; False means "work it out", see is_empty_after)."""
        return bool(len(self.plus.subtract(removed))) or \
            self.minus_span + _span(removed) < len(self.base)

    def is_empty_after(self, removed: PrefixSet) -> bool:
        """Exact, and O(set): for the rare delta that may empty a scope."""
        return not len(self.plus.subtract(removed)) and \
            not len(self.base.subtract(self.minus).subtract(removed))

class DualSet:
    """One source of a scope (a named list, the policy's own blocked_sources,
    or their union): IPv4 layered, IPv6 compiled whole."""

    def __init__(self, prefixes: PrefixSet):
        self.v4 = LayeredSet(v4_part(prefixes))
        self.v6 = v6_part(prefixes)

    def change(self, added: PrefixSet, removed: PrefixSet) -> None:
        self.v4.change(v4_part(added), v4_part(removed))
        self.v6 = self.v6.subtract(v6_part(removed)).union(v6_part(added))

    def restricted_to(self, regions: PrefixSet) -> PrefixSet:
        """The addresses of this set inside `regions` (both families)."""
        part = self.v4.restricted_to(v4_part(regions)) if regions.count_v4() else EMPTY
        if regions.count_v6():
            part = part.union(self.v6.restricted_to(regions))
        return part

    def materialise(self) -> PrefixSet:
        return self.v4.compact().union(self.v6)


@dataclass
class ScopeState:
    """What one scope (global, or one tenant) enforces, by source."""
    tenant_id: int | None
    policy_set: PrefixSet
    lists: dict[str, DualSet]
    union: DualSet
    has_v4: bool = False
    has_v6: bool = False

    def others(self, name: str) -> list:
        """Every source of the scope but the list `name`: what still blocks
        an address that list stops blocking."""
        sources = [self.policy_set] if len(self.policy_set) else []
        return sources + [s for n, s in self.lists.items() if n != name]


def _fingerprint(paths: list[Path]) -> tuple:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((str(path), st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((str(path), None, None))
    return tuple(out)


class ListState:
    """The named lists and scope unions of one interface in memory, for
    deltas. Load it once (ListState.load) and keep it: it notices a policy
    change or a list loaded some other way (the files' mtimes) and reloads.
    It trusts the live tables to hold what it says (the drift check of the
    controller link is what catches maps changed by hand)."""

    def __init__(self, policy: Policy, lists: dict[ListId, PrefixSet], store: ListStore | None = None,
                 policy_path: Path | None = None):
        self.policy = policy
        self.store = store
        self.policy_path = policy_path
        self.unenforced: dict[ListId, PrefixSet] = {}     # lists of tenants not in the policy
        self.scopes: dict[int | None, ScopeState] = {}
        own = {None: prefix_set(policy.blocked_sources)}
        own.update({t.id: prefix_set(t.blocked_sources) for t in policy.tenants})
        for tenant_id, policy_set in own.items():
            named = {lid.name: s for lid, s in lists.items() if lid.tenant_id == tenant_id}
            union = policy_set
            for s in named.values():
                union = union.union(s)
            self.scopes[tenant_id] = ScopeState(tenant_id, policy_set, {n: DualSet(s) for n, s in named.items()},
                                                DualSet(union), bool(union.count_v4()), bool(union.count_v6()))
        for lid, s in lists.items():
            if lid.tenant_id not in self.scopes:
                self.unenforced[lid] = s
        self._seen = self._current_fingerprint()

    @classmethod
    def load(cls, ifname: str) -> "ListState":
        store = list_store(ifname)
        return cls(current_policy(ifname), store.load_all(), store, policy_path_for(ifname))

    def _files(self) -> list[Path]:
        files = [self.policy_path] if self.policy_path is not None else []
        if self.store is not None and self.store.directory.is_dir():
            files += sorted(p for d in self.store.directory.iterdir() for p in d.iterdir())
        return files

    def _current_fingerprint(self) -> tuple:
        return _fingerprint(self._files()) if self.store is not None else ()

    def is_current(self) -> bool:
        return self._current_fingerprint() == self._seen

    def mark_current(self) -> None:
        self._seen = self._current_fingerprint()

    def list(self, list_id: ListId) -> PrefixSet | None:
        """The list as this state holds it (materialised: a full copy)."""
        scope = self.scopes.get(list_id.tenant_id)
        if scope is None:
            return self.unenforced.get(list_id)
        found = scope.lists.get(list_id.name)
        return None if found is None else found.materialise()

    def named_unions(self) -> dict[int | None, PrefixSet]:
        """Per scope, the union of its named lists (for the full path)."""
        unions: dict[int | None, PrefixSet] = {}
        for tenant_id, scope in self.scopes.items():
            for s in scope.lists.values():
                m = s.materialise()
                unions[tenant_id] = m if tenant_id not in unions else unions[tenant_id].union(m)
        return unions

    def blocked_anywhere(self, regions: PrefixSet) -> PrefixSet:
        """The addresses inside `regions` that some scope (global or any
        tenant) still blocks: for a prefilter that must cover every list,
        to tell which of its bits an after_deletes hook may clear."""
        out = EMPTY
        for scope in self.scopes.values():
            out = out.union(scope.union.restricted_to(regions))
        return out

    def compact(self) -> None:
        """Fold every layer into its base (an idle-time chore: O(list))."""
        for scope in self.scopes.values():
            scope.union.v4.compact()
            for s in scope.lists.values():
                s.v4.compact()


class DeltaHooks(Protocol):
    """Called around the table writes of a delta (for example to keep a
    prefilter that must always cover every list: set its bits before, clear
    them after)."""

    def before_writes(self, maps: dict[str, BpfMap], tenant_id: int | None, blocked: PrefixSet) -> None:
        """`blocked`: addresses the scope is about to block (may be blocked already)."""

    def after_deletes(self, maps: dict[str, BpfMap], tenant_id: int | None, unblocked: PrefixSet,
                      state: ListState) -> None:
        """`unblocked`: addresses the scope no longer blocks (another scope may)."""


@dataclass
class DeltaPlan:
    """The entries one delta writes and deletes, per table."""
    writes: dict[str, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    stale: dict[str, list[bytes]] = field(default_factory=dict)
    counts: dict[str, tuple[int, int, int]] = field(default_factory=dict)   # (added, changed, removed)
    before: dict = field(default_factory=dict)    # per table, the EntryTable of the touched region now...
    after: dict = field(default_factory=dict)     # ...and after the delta (for table_digest.TableDigests.adjust)


def _touched_16s(changed_v4: PrefixSet) -> PrefixSet:
    """The /16s the changed IPv4 prefixes fall in (the block-node granularity)."""
    regions = []
    for address, length in changed_v4.to_list():
        regions.append((address[:2] + b"\0\0", 16) if length > 16 else (address, length))
    return PrefixSet.from_list(regions)


def _v6_regions(changed_v6: PrefixSet, old: PrefixSet, new: PrefixSet) -> PrefixSet:
    """Per changed IPv6 prefix, the largest entry of the old or new union
    covering it, else the prefix: every entry that differs lies inside one."""
    regions = []
    for address, length in changed_v6.to_list():
        best = (address, length)
        for union in (old, new):
            found = union.overlapping(address, length).to_list()
            if len(found) == 1 and found[0][1] < best[1]:
                best = found[0]
        regions.append(best)
    return PrefixSet.from_list(regions)


def _diff(table: str, old, new, plan: DeltaPlan) -> None:
    plan.counts[table] = old.diff_counts(new)
    plan.before[table], plan.after[table] = old, new
    writes, stale = old.diff(new)
    plan.writes[table] = list(writes.items())
    plan.stale[table] = [k for k, _ in stale.items()]


def plan_delta(scope: ScopeState, list_name: str, added: PrefixSet, removed: PrefixSet
               ) -> tuple[DeltaPlan, PrefixSet, PrefixSet]:
    """(plan, removed_effective, changed): the table changes a delta makes,
    the addresses the scope stops blocking, and every prefix that changed.
    Changes no state."""
    # 1. What stops being blocked: removed, less what the other sources cover.
    unblocked = removed.subtract(_covered_by_others(scope, list_name, removed)) if len(removed) else removed
    changed = unblocked.union(added)
    tenant = scope.tenant_id
    g4, g6 = (GLOBAL_TABLES if tenant is None else TENANT_TABLES)
    plan = DeltaPlan()

    # 2. IPv4: the /16 nodes touched, from the old and new union restricted to them.
    if changed.count_v4():
        regions = _touched_16s(v4_part(changed))
        old = scope.union.v4.restricted_to(regions)
        new = old.subtract(v4_part(unblocked)).union(v4_part(added))
        _diff(g4, old.v4_block_entries(tenant), new.v4_block_entries(tenant), plan)

    # 3. IPv6: the LPM entries inside the regions of the changes.
    if changed.count_v6():
        old_all = scope.union.v6
        new_all = old_all.subtract(v6_part(unblocked)).union(v6_part(added))
        regions = _v6_regions(v6_part(changed), old_all, new_all)
        value = block_value()
        _diff(g6, old_all.restricted_to(regions).v6_lpm_entries(tenant, value),
              new_all.restricted_to(regions).v6_lpm_entries(tenant, value), plan)
    return plan, unblocked, changed


# Where the node level sits in a packed v4 node key (its top byte; the key is
# host-endian): a byte read per key instead of an unpack (blocktables.table_key_level).
_TOP_BYTE = struct.pack("=I", 0xFF << 24).index(0xFF)
LEVEL_BYTE = {"ew_gblock_v4": _TOP_BYTE, "ew_tblock_v4": struct.calcsize(TENANT_KEY_FORMAT) - 4 + _TOP_BYTE}


def _write_in_place(bpf_map: BpfMap, table: str, writes, stale) -> None:
    """The safe order of blocktables: finer nodes first when writing, coarser first when deleting."""
    inner = SwappableTable(bpf_map).inner()
    if inner is None:
        raise InterfaceError(f"{table} has no inner table; attach again to recreate it")
    at = LEVEL_BYTE.get(table)
    level = (lambda key: 0) if at is None else (lambda key: key[at])
    with inner:
        for key, value in sorted(writes, key=lambda kv: level(kv[0]), reverse=True):
            inner.update(key, value)
        for key in sorted(stale, key=level):
            inner.delete(key)


def _flags_after(scope: ScopeState, added: PrefixSet, unblocked: PrefixSet) -> tuple[bool, bool]:
    """(blocks any IPv4, blocks any IPv6) for the scope after the delta: the
    flags that let the datapath skip empty tables depend on them."""
    has_v6 = bool(scope.union.v6.subtract(v6_part(unblocked)).union(v6_part(added)).count_v6())
    if added.count_v4():
        return True, has_v6
    if not scope.has_v4 or not unblocked.count_v4():
        return scope.has_v4, has_v6
    gone = v4_part(unblocked)
    layered = scope.union.v4
    return layered.surely_not_empty_after(gone) or not layered.is_empty_after(gone), has_v6


def _flags_change(scope: ScopeState, has_v4: bool, has_v6: bool) -> bool:
    if scope.tenant_id is None:      # ew_config: CONFIG_GLOBAL_V4_BLOCKS, CONFIG_GLOBAL_V6_BLOCKS
        return (has_v4, has_v6) != (scope.has_v4, scope.has_v6)
    return (has_v4 or has_v6) != (scope.has_v4 or scope.has_v6)   # the tenant's source-blocks flag


def apply_delta_to_maps(maps: dict[str, BpfMap], state: ListState, list_id: ListId, added: PrefixSet,
                        removed: PrefixSet, hooks: DeltaHooks | None = None, *,
                        conntrack: bool | None = None, digests: TableDigests | None = None) -> ApplyReport:
    """Apply the delta (take `removed` out of list `list_id`, then put `added`
    in) to `maps`, which hold what `state` says, and update `state`. The list
    store is not touched (apply_list_delta does that). `conntrack`: as for
    apply_policy_to_maps, used only on the full path. `digests`: the tables'
    expected digests, moved by the entries this delta replaces."""
    if digests is None:
        return _apply_delta_to_maps(maps, state, list_id, added, removed, hooks, conntrack, None)
    with digests.writing():
        return _apply_delta_to_maps(maps, state, list_id, added, removed, hooks, conntrack, digests)


def _apply_delta_to_maps(maps, state: ListState, list_id: ListId, added: PrefixSet, removed: PrefixSet,
                         hooks, conntrack, digests: TableDigests | None) -> ApplyReport:
    scope = state.scopes.get(list_id.tenant_id)
    if scope is None:
        raise InterfaceError(f"tenant {list_id.tenant_id} is not in the live policy; "
                             "a list for it would not be enforced")
    report = ApplyReport(state.policy.revision)
    plan, unblocked, _ = plan_delta(scope, list_id.name, added, removed)
    has_v4, has_v6 = _flags_after(scope, added, unblocked)
    if _flags_change(scope, has_v4, has_v6):
        # The whole scope goes the full way (rare: a scope's first or last entry of a family).
        _update_state(scope, list_id.name, added, removed, unblocked, has_v4, has_v6)
        if hooks is not None and len(added):
            hooks.before_writes(maps, scope.tenant_id, added)
        affected = GLOBAL_TABLES if list_id.tenant_id is None else TENANT_TABLES
        report = apply_policy_to_maps(maps, state.policy, state.named_unions(), frozenset(affected),
                                      conntrack=conntrack)
        _after_deletes(hooks, maps, scope, unblocked, added, state)
        if digests is not None:
            digests.reset(maps, affected)     # the scope's tables were rebuilt: read what they hold
        return report
    # Hook point: nothing is written yet.
    if hooks is not None and len(added):
        hooks.before_writes(maps, scope.tenant_id, added)
    # The IPv4 prefilter stays a superset of the tables: widened before, narrowed after;
    # the host bits follow each v4 table once it changed (agent.datapath.host_bits).
    prefilter = NodePrefilterUpdate.for_writes(maps[PREFILTER_MAP], plan.writes, plan.stale)
    if prefilter is not None:
        prefilter.widen()
    followed = [table for table in HOST_BITS_TABLES if table in plan.writes]
    try:
        for table in abi.SWAPPABLE_TABLES:
            if table not in plan.writes:
                continue
            writes, stale = plan.writes[table], plan.stale[table]
            _write_in_place(maps[table], table, writes, stale)
            report.added[table], report.changed[table], report.removed[table] = plan.counts[table]
            if digests is not None:
                digests.adjust(table, plan.before[table], plan.after[table])
    except BaseException:
        sync_host_bits(maps, followed)      # a table may hold part of the delta
        raise
    if prefilter is not None:
        prefilter.narrow()
    for table in followed:
        follow_writes(maps, table, plan.writes[table], plan.stale[table])
    _update_state(scope, list_id.name, added, removed, unblocked, has_v4, has_v6)
    # Hook point: everything is deleted.
    _after_deletes(hooks, maps, scope, unblocked, added, state)
    return report


def _after_deletes(hooks, maps, scope: ScopeState, unblocked: PrefixSet, added: PrefixSet, state) -> None:
    if hooks is None:
        return
    lost = unblocked.subtract(added)
    if len(lost):
        hooks.after_deletes(maps, scope.tenant_id, lost, state)


def _update_state(scope: ScopeState, name: str, added: PrefixSet, removed: PrefixSet,
                  unblocked: PrefixSet, has_v4: bool, has_v6: bool) -> None:
    listed = scope.lists.get(name)
    if listed is None:
        scope.lists[name] = listed = DualSet(EMPTY)
    listed.change(added, removed)
    scope.union.change(added, unblocked)
    scope.has_v4, scope.has_v6 = has_v4, has_v6


def _covered_by_others(scope: ScopeState, name: str, removed: PrefixSet) -> PrefixSet:
    covered = EMPTY
    for source in scope.others(name):
        covered = covered.union(source.restricted_to(removed))
    return covered


def store_delta(store: ListStore, state: ListState, list_id: ListId, added: PrefixSet, removed: PrefixSet) -> None:
    """Append the delta to the list's journal; fold a journal grown to a
    quarter of its list into a new base (an occasional full write)."""
    path = store.directory / list_id.scope / (list_id.name + ListStore.SUFFIX)
    if not path.exists():
        store.save(list_id, state.list(list_id) or EMPTY)
        return
    store.append_delta(list_id, added, removed)
    if store.journal_size(list_id) * JOURNAL_COMPACT_RATIO > max(path.stat().st_size, 1 << 16):
        store.save(list_id, state.list(list_id) or EMPTY)


_states: dict[str, ListState] = {}


def list_state(ifname: str) -> ListState:
    """The ListState of `ifname`, loaded on first use and again when the
    policy or the stored lists changed some other way."""
    state = _states.get(ifname)
    if state is None or not state.is_current():
        state = _states[ifname] = ListState.load(ifname)
    return state


@dataclass
class DeltaApplied:
    """What apply_list_delta did on one interface, and how long each half took."""
    report: ApplyReport
    tables_seconds: float     # the live tables written in place (what enforcement waits for)
    store_seconds: float      # the list store's journal appended (fsync)


def apply_list_delta(ifname: str, list_id: ListId, added: PrefixSet, removed: PrefixSet,
                     hooks: DeltaHooks | None = None) -> DeltaApplied:
    """Take `removed` out of the named list `list_id` of `ifname`, then put
    `added` in, in the live tables and in the list store, under the
    interface lock, keeping the tables' digests (table_digest) exact. The
    list is created if it is not loaded."""
    with interface_lock(ifname), live_maps(ifname) as maps:
        state = list_state(ifname)
        try:
            started = time.perf_counter()
            report = apply_delta_to_maps(maps, state, list_id, added, removed, hooks, digests=digests_for(ifname))
            written = time.perf_counter()
            store_delta(state.store, state, list_id, added, removed)
            stored = time.perf_counter()
        except BaseException:
            _states.pop(ifname, None)     # the tables may hold part of it: reload from the store next time
            digests_for(ifname).forget()
            raise
        state.mark_current()
    return DeltaApplied(report, written - started, stored - written)


@dataclass
class ListLoad:
    """What load_named_list did on one interface."""
    report: ApplyReport
    added: int          # prefixes of the new version not in the stored one
    removed: int        # prefixes of the stored version not in the new one
    as_delta: bool      # True: applied as a delta; False: the list was replaced whole


def load_named_list(ifname: str, list_id: ListId, prefixes: PrefixSet,
                    delta_limit: int = DELTA_LIMIT) -> ListLoad:
    """Make `prefixes` the list `list_id` of `ifname` (edgewarden block load):
    as a delta when it differs from the stored version in at most
    `delta_limit` prefixes, else through replace_named_list. The difference
    is taken under the interface lock, from the compiled sets."""
    with interface_lock(ifname), live_maps(ifname) as maps:
        state = list_state(ifname)
        previous = state.list(list_id)
        if previous is not None and len(previous):
            added, removed = previous.diff(prefixes)
            if len(added) + len(removed) <= delta_limit:
                try:
                    report = apply_delta_to_maps(maps, state, list_id, added, removed)
                    store_delta(state.store, state, list_id, added, removed)
                except BaseException:
                    _states.pop(ifname, None)
                    raise
                state.mark_current()
                return ListLoad(report, len(added), len(removed), True)
        else:
            added, removed = prefixes, PrefixSet()
    # (outside the lock: replace_named_list takes it, and flock is not re-entrant across open files)
    return ListLoad(replace_named_list(ifname, list_id, prefixes), len(added), len(removed), False)
