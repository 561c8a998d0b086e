"""The evidence manifest: an append-only JSON-lines file, one entry per
sealed (or, by retention, removed) file, each carrying the SHA-256 of the
previous entry and its own, so an edited, reordered or removed entry
breaks the chain. MANIFEST.head, replaced atomically after each append,
holds the last entry's number and hash: a manifest cut at a line boundary
no longer reaches it. verify() names every problem it finds."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "MANIFEST.jsonl"
HEAD = "MANIFEST.head"
GENESIS = "0" * 64
EVIDENCE_SUFFIX = ".pcapng"


def _entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Manifest:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / MANIFEST
        self.head_path = self.directory / HEAD
        last = self._read_head()
        self._seq, self._last_hash = (last["seq"], last["hash"]) if last else (0, GENESIS)

    def _read_head(self) -> dict | None:
        try:
            return json.loads(self.head_path.read_text())
        except (OSError, ValueError):
            return None

    def append(self, **fields) -> dict:
        entry = {"seq": self._seq + 1, **fields, "prev": self._last_hash}
        entry["hash"] = _entry_hash(entry)
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp = self.head_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seq": entry["seq"], "hash": entry["hash"]}))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(self.head_path)
        self._seq, self._last_hash = entry["seq"], entry["hash"]
        return entry


def read_entries(directory: Path) -> tuple[list[dict], list[str]]:
    """Entries that parse, and the problems of lines that do not."""
    path = Path(directory) / MANIFEST
    entries, problems = [], []
    if not path.exists():
        sealed_somewhere = any(Path(directory).glob("*" + EVIDENCE_SUFFIX)) or (Path(directory) / HEAD).exists()
        return entries, [f"{path}: the manifest is missing"] if sealed_somewhere else []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif raw:
        problems.append(f"manifest truncated: line {len(lines)} is incomplete (no end of line)")
    for number, line in enumerate(lines, 1):
        try:
            entries.append(json.loads(line))
        except ValueError:
            problems.append(f"manifest line {number} is damaged or truncated (not a JSON entry)")
    return entries, problems


@dataclass
class Verdict:
    entries: int
    files_checked: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(directory: Path) -> Verdict:
    directory = Path(directory)
    entries, problems = read_entries(directory)
    previous, files_checked, listed = GENESIS, 0, {}
    for position, entry in enumerate(entries, 1):
        seq = entry.get("seq")
        name = entry.get("file", "?")
        if seq != position:
            problems.append(f"entry {position} ({name}) is out of order: it says seq {seq}, position {position} "
                            "(manifest entries reordered, inserted or removed)")
        if entry.get("hash") != _entry_hash(entry):
            problems.append(f"entry {position} ({name}) was altered: its hash does not match its content")
        if entry.get("prev") != previous:
            problems.append(f"entry {position} ({name}) does not chain to the entry before it "
                            "(reordered, removed or altered entries)")
        previous = entry.get("hash", "")
        if entry.get("action") == "removed":
            listed.pop(name, None)
            continue
        listed[name] = entry
    for name, entry in listed.items():
        path = directory / name
        if not path.exists():
            problems.append(f"file {name} was removed (sealed at {entry.get('sealed_at')}, not by retention)")
            continue
        files_checked += 1
        actual = file_sha256(path)
        if actual != entry.get("sha256"):
            size = path.stat().st_size
            problems.append(f"file {name} was changed: SHA-256 {actual[:16]}... is not the sealed "
                            f"{str(entry.get('sha256'))[:16]}... ({size} bytes now, {entry.get('bytes')} sealed)")
    head_path = directory / HEAD
    try:
        head = json.loads(head_path.read_text())
    except OSError:
        head = None
        if entries:
            problems.append(f"{HEAD} is missing: the end of the manifest cannot be checked")
    except ValueError:
        head = None
        problems.append(f"{HEAD} is damaged")
    if head is not None:
        if head.get("seq", 0) > len(entries):
            problems.append(f"manifest truncated: {HEAD} says {head.get('seq')} entries, the manifest has "
                            f"{len(entries)}")
        elif entries and head.get("hash") != entries[-1].get("hash") and head.get("seq") == len(entries):
            problems.append("the last manifest entry is not the one sealed last (head hash differs)")
    sealed_names = {e.get("file") for e in entries}
    for path in sorted(directory.glob("*" + EVIDENCE_SUFFIX)):
        if path.name not in sealed_names:
            problems.append(f"file {path.name} is not in the manifest (manifest truncated, or an unsealed file)")
    return Verdict(len(entries), files_checked, problems)
