"""Named block lists of one interface, global or per tenant, as loaded by
`edgewarden block load`. Each is kept on disk as a compiled PrefixSet beside
the policy document (so the union can be rebuilt and diffed without the
source files); the block tables enforce the union of every list of a scope
together with the policy's own blocked_sources."""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from agent._prefixes import PrefixSet
from agent.datapath.scope import state_dir_for

LIST_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
POLICY_LIST = "policy"      # reserved: the policy document's own blocked_sources
DEFAULT_LIST = "default"


@dataclass(frozen=True, order=True)
class ListId:
    name: str
    tenant_id: int | None = None      # None: a global list

    @property
    def scope(self) -> str:
        return "global" if self.tenant_id is None else f"tenant-{self.tenant_id}"

    def __str__(self) -> str:
        return f"{self.scope}/{self.name}"


def check_list_name(name: str) -> str:
    if not LIST_NAME.fullmatch(name) or name == POLICY_LIST:
        raise ValueError(f"list name {name!r}: use 1-63 of a-z 0-9 . _ -, starting with a letter or digit "
                         f"({POLICY_LIST!r} is reserved for the policy document's own lists)")
    return name


class ListStore:
    """<state dir>/<ifname>/lists/<scope>/<name>.prefixes, and beside it
    <name>.journal: the deltas applied since (append_delta), so a small
    change to a large list is stored without writing the list again. A
    journal names its base by the base file's checksum (its last 4 bytes)
    and is replayed only onto that base; save() starts a new base."""

    SUFFIX = ".prefixes"
    JOURNAL_SUFFIX = ".journal"
    JOURNAL_RECORD = struct.Struct("<II")    # sizes of the serialised added and removed sets

    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, list_id: ListId) -> Path:
        return self.directory / list_id.scope / (list_id.name + self.SUFFIX)

    def load_all(self) -> dict[ListId, PrefixSet]:
        lists = {}
        if not self.directory.is_dir():
            return lists
        for scope_dir in sorted(self.directory.iterdir()):
            tenant_id = None if scope_dir.name == "global" else int(scope_dir.name.removeprefix("tenant-"))
            for path in sorted(scope_dir.glob("*" + self.SUFFIX)):
                list_id = ListId(path.name[: -len(self.SUFFIX)], tenant_id)
                try:
                    data = path.read_bytes()
                    lists[list_id] = self._replay(path.with_suffix(self.JOURNAL_SUFFIX), data[-4:],
                                                  PrefixSet.deserialize(data))
                except ValueError as err:
                    raise ValueError(f"stored list {list_id} ({path}) is corrupt: {err}; "
                                     f"load it again or remove it with: edgewarden block unload") from None
        return lists

    def _replay(self, journal: Path, base_checksum: bytes, prefixes: PrefixSet) -> PrefixSet:
        """`prefixes` with the journal's deltas applied (removed, then added).
        A torn last record (a crash while appending) is ignored: that delta
        was never reported applied."""
        try:
            data = journal.read_bytes()
        except FileNotFoundError:
            return prefixes
        if data[:4] != base_checksum:
            return prefixes        # written against an older base (a crash between save and unlink)
        at = 4
        while at + self.JOURNAL_RECORD.size <= len(data):
            added_size, removed_size = self.JOURNAL_RECORD.unpack_from(data, at)
            start = at + self.JOURNAL_RECORD.size
            end = start + added_size + removed_size
            if end > len(data):
                break
            added = PrefixSet.deserialize(data[start:start + added_size])
            removed = PrefixSet.deserialize(data[start + added_size:end])
            prefixes = prefixes.subtract(removed).union(added)
            at = end
        return prefixes

    def journal_size(self, list_id: ListId) -> int:
        try:
            return self._path(list_id).with_suffix(self.JOURNAL_SUFFIX).stat().st_size
        except FileNotFoundError:
            return 0

    def append_delta(self, list_id: ListId, added: PrefixSet, removed: PrefixSet) -> None:
        """Record that `removed` was taken out of and then `added` put into the
        stored list (which must exist: save() it first)."""
        path = self._path(list_id)
        journal = path.with_suffix(self.JOURNAL_SUFFIX)
        with open(path, "rb") as base:
            base.seek(-4, os.SEEK_END)
            checksum = base.read(4)
        a, r = added.serialize(), removed.serialize()
        with open(journal, "ab") as out:
            if out.tell() == 0:
                out.write(checksum)
            out.write(self.JOURNAL_RECORD.pack(len(a), len(r)) + a + r)
            out.flush()
            os.fsync(out.fileno())

    def save(self, list_id: ListId, prefixes: PrefixSet) -> None:
        path = self._path(list_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(prefixes.serialize())
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
        path.with_suffix(self.JOURNAL_SUFFIX).unlink(missing_ok=True)

    def remove(self, list_id: ListId) -> bool:
        path = self._path(list_id)
        if not path.exists():
            return False
        path.unlink()
        path.with_suffix(self.JOURNAL_SUFFIX).unlink(missing_ok=True)
        return True


def scope_unions(lists: dict[ListId, PrefixSet]) -> dict[int | None, PrefixSet]:
    """Per scope (None = global), the compiled union of its lists."""
    unions: dict[int | None, PrefixSet] = {}
    for list_id, prefixes in lists.items():
        current = unions.get(list_id.tenant_id)
        unions[list_id.tenant_id] = prefixes if current is None else current.union(prefixes)
    return unions


def list_store(ifname: str) -> ListStore:
    return ListStore(state_dir_for(ifname) / "lists")


def named_list_unions(ifname: str) -> dict[int | None, PrefixSet]:
    return scope_unions(list_store(ifname).load_all())
