"""Named block lists of one interface, global or per tenant, as loaded by
`edgewarden block load`. Each is kept on disk as a compiled PrefixSet beside
the policy document (so the union can be rebuilt and diffed without the
source files); the block tables enforce the union of every list of a scope
together with the policy's own blocked_sources."""

from __future__ import annotations

import os
import re
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
    """<state dir>/<ifname>/lists/<scope>/<name>.prefixes"""

    SUFFIX = ".prefixes"

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
                    lists[list_id] = PrefixSet.deserialize(path.read_bytes())
                except ValueError as err:
                    raise ValueError(f"stored list {list_id} ({path}) is corrupt: {err}; "
                                     f"load it again or remove it with: edgewarden block unload") from None
        return lists

    def save(self, list_id: ListId, prefixes: PrefixSet) -> None:
        path = self._path(list_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(prefixes.serialize())
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)

    def remove(self, list_id: ListId) -> bool:
        path = self._path(list_id)
        if not path.exists():
            return False
        path.unlink()
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
