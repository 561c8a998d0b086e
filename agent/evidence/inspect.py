"""`edgewarden evidence list|show|verify DIR`: what was sealed, one file's
manifest entry and pcapng comments, and the integrity check that names
what is wrong (a changed byte, a removed file, a reordered or truncated
manifest)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agent.evidence.manifest import read_entries, verify


def _live_files(directory: Path) -> list[dict]:
    entries, _ = read_entries(directory)
    live = {}
    for e in entries:
        if e.get("action") == "removed":
            live.pop(e.get("file"), None)
        else:
            live[e.get("file")] = e
    return list(live.values())


def main(args) -> int:
    directory = Path(args.dir)
    if not directory.is_dir():
        print(f"edgewarden evidence: {directory} is not a directory", file=sys.stderr)
        return 2
    if args.evidence_command == "list":
        files = _live_files(directory)
        if args.json:
            print(json.dumps({"files": files}, indent=2))
            return 0
        print(f"{directory}: {len(files)} sealed file(s)")
        for e in files:
            print(f"  {e['file']}  {e.get('bytes', 0):>10} B  {e.get('packets') or '?':>6} pkts  "
                  f"tenant {e.get('tenant')}  {e.get('reason')}  sealed {e.get('sealed_at')} by {e.get('node')}")
        return 0
    if args.evidence_command == "show":
        entry = next((e for e in _live_files(directory) if e["file"] == args.file), None)
        if entry is None:
            print(f"edgewarden evidence: {args.file} is not a sealed file in {directory}", file=sys.stderr)
            return 1
        comments = _comments(directory / args.file)
        if args.json:
            print(json.dumps({"entry": entry, **comments}, indent=2))
            return 0
        for key, value in entry.items():
            print(f"{key:>10}: {value}")
        print(f"{'section':>10}: {comments['section_comment']}")
        print(f"{'interfaces':>10}: {', '.join(comments['interfaces'])}")
        print(f"{'packets':>10}: {comments['packets']}")
        return 0
    verdict = verify(directory)
    if args.json:
        print(json.dumps({"ok": verdict.ok, "entries": verdict.entries, "files_checked": verdict.files_checked,
                          "problems": verdict.problems}, indent=2))
    elif verdict.ok:
        print(f"{directory}: OK, {verdict.entries} manifest entries chain, {verdict.files_checked} file(s) match "
              "their seals")
    else:
        print(f"{directory}: {len(verdict.problems)} problem(s)")
        for problem in verdict.problems:
            print(f"  {problem}")
    return 0 if verdict.ok else 1


def _comments(path: Path) -> dict:
    from pcapng import FileScanner, blocks
    section, interfaces, packets = None, [], 0
    with open(path, "rb") as f:
        for block in FileScanner(f):
            if isinstance(block, blocks.SectionHeader):
                section = block.options.get("opt_comment")
            elif isinstance(block, blocks.InterfaceDescription):
                interfaces.append(block.options.get("if_name"))
            elif isinstance(block, blocks.EnhancedPacket):
                packets += 1
    return {"section_comment": section, "interfaces": interfaces, "packets": packets}
