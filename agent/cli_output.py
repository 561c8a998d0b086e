"""How every `edgewarden` command prints: one JSON document with --json, for
scripts, or a human rendering of the same document as aligned tables."""

from __future__ import annotations

import json
from typing import Any, Callable


def print_table(headers: list[str], rows: list[list]) -> None:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    for row in [headers, *rows]:
        print("  ".join(str(v).rjust(w) if isinstance(v, int) else str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


def emit(args, document: Any, human: Callable[[Any], None]) -> int:
    """Print `document` as JSON when the command was given --json, else
    through `human`; returns the command's exit code (0)."""
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        human(document)
    return 0
